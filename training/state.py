"""Training checkpoints: the model in our own format plus the trainer state, written atomically.

    RUN_DIR/checkpoints/iter_0000500/{model.safetensors, config.json, trainer_state.pt, train_config.json}
    RUN_DIR/checkpoints/last          (a one-line file naming the newest complete checkpoint)
    RUN_DIR/checkpoints/best          (the best by the evaluation metric, when evaluating)

A checkpoint folder is written under a temporary name (``.iter_0000500.tmp-<pid>-*``) and renamed
when complete, and ``last`` is replaced atomically after that: a run killed at any moment leaves the
previous checkpoint usable. The next save removes what a killed run left behind (and puts back a
checkpoint that was moved aside to be replaced, if the kill came between the two renames).
``trainer_state.pt`` holds only tensors and plain containers and is read with weights_only=True.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2f_core.atomic import atomic_write, make_temp_dir, remove_stale_temporaries, replace_dir
from m2f_core.checkpoint import load_model, save_model
from m2f_core.errors import CheckpointError, first_line

from .config import TrainConfig

STATE_NAME = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    """Every RNG the loop may touch, as tensors and ints (loadable with weights_only=True)."""
    py_version, py_state, _ = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(py_state, dtype=torch.int64), "python_version": int(py_version),
        "numpy": torch.from_numpy(np_keys.astype(np.int64)), "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss), "numpy_gauss": float(np_gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer, scheduler, scaler, iteration: int,
                    train_cfg: TrainConfig, extra: dict | None = None, name: str | None = None,
                    keep: int = 3) -> Path:
    """Write a complete checkpoint folder atomically and point ``last`` at it."""
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(ckpt_root)  # left by a run killed while saving
    name = name or f"iter_{iteration:07d}"
    final = ckpt_root / name
    tmp = make_temp_dir(ckpt_root, name)
    try:
        save_model(model, tmp)
        state = {"iteration": iteration, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else {}, "rng": rng_state(),
                 "extra": extra or {}}
        atomic_write(tmp / STATE_NAME, lambda p: torch.save(state, p))
        train_cfg.to_json(tmp / "train_config.json")
        _fsync_dir(tmp)
        replace_dir(tmp, final)
        _fsync_dir(ckpt_root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if name.startswith("iter_"):
        atomic_write(ckpt_root / "last", lambda p: Path(p).write_text(name + "\n"))
        _prune(ckpt_root, keep)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(ckpt_root: Path, keep: int) -> None:
    """Keep the newest ``keep`` iteration checkpoints (``best`` is never pruned)."""
    iters = sorted(p for p in ckpt_root.glob("iter_*") if p.is_dir())
    for old in iters[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "last"
    if not pointer.exists():
        return None
    folder = run_dir / "checkpoints" / pointer.read_text().strip()
    return folder if (folder / STATE_NAME).exists() else None


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scheduler, scaler) -> dict[str, Any]:
    """Restore model, optimiser, scheduler, scaler and RNG; returns the saved state (iteration, extra)."""
    weights = load_model(folder)
    model.load_state_dict(weights.state_dict())
    try:
        state = torch.load(folder / STATE_NAME, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # damaged on disk after it was written
        raise CheckpointError(f"{folder / STATE_NAME}: not a readable trainer state ({first_line(e)}); "
                              "resume from an earlier checkpoint") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state
