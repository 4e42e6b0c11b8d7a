"""Fine-tune on a FiftyOne view: export it, start the trainer detached, record the run on the dataset.

The trainer runs in its own session (``start_new_session=True``), so it outlives the App or CLI that
started it; its output goes to ``<run dir>/train.log`` and its exit status to ``<run dir>/exit_code``
(written by a one-line ``sh`` wrapper, so the state is known even after the starter is gone). With
CUDA it is ``torchrun --nproc_per_node=<GPUs> -m training.train``, else ``python -m training.train``
on the CPU. Each run is recorded in ``dataset.info["m2f_finetune_runs"]`` (run dir, pid, command,
export, weights); ``run_status`` reads its ``metrics.jsonl`` and newest checkpoint for progress.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fiftyone as fo

from app.finetune import finetune_command, latest_checkpoint, read_metrics

from . import FINETUNED, GT, PRED, BridgeError
from .core import check_prefix, export_view, predict_view

__all__ = ["RunRecord", "compare_finetuned", "headline", "list_runs", "run_status", "start_finetune", "stop_run",
           "trainer_command"]

RUNS_KEY = "m2f_finetune_runs"
REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_NAME, EXIT_NAME = "train.log", "exit_code"


@dataclass
class RunRecord:
    """One fine-tuning run as stored on the dataset."""

    run_dir: str
    pid: int
    command: list[str]
    export_dir: str
    weights: str
    started: str
    gpus: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install means: no GPU for us
        return 0


def trainer_command(weights: str | None, export_dir: Path, run_dir: Path, max_iter: int, batch_size: int,
                    gpus: int, extra: Sequence[str] = ()) -> list[str]:
    """The trainer's command line: ``torchrun`` over the GPUs when there are any, one CPU process otherwise."""
    cmd = finetune_command(weights or "builtin", export_dir, run_dir, max_iter=max_iter, batch_size=batch_size,
                           device="cuda" if gpus else "cpu", extra=extra)
    if gpus:
        torchrun = Path(sys.executable).parent / "torchrun"
        head = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
        # cmd[:3] is "python -m training.train"
        cmd = head + [f"--nproc_per_node={gpus}", "-m", "training.train"] + cmd[3:]
    return cmd


def start_finetune(view: fo.Dataset | fo.DatasetView, export_dir: str | Path, run_dir: str | Path,
                   weights: str | None = None, max_iter: int = 200, batch_size: int = 2, prefix: str = GT,
                   extra: Sequence[str] = (), overwrite_export: bool = False) -> RunRecord:
    """Export the view's ``prefix`` labels to ``export_dir`` and start the trainer on it, detached.

    ``weights`` (default: the weights of the dataset's ``pred`` predictions, else the built-in model)
    are the starting point. Returns at once; the run is recorded on the dataset.
    """
    ds = view._dataset if isinstance(view, fo.DatasetView) else view
    run_dir = Path(run_dir).expanduser().resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise BridgeError(f"{run_dir} exists and is not empty: choose another run directory")
    if weights is None:
        weights = ds.info.get("m2f", {}).get("predictions", {}).get(PRED, {}).get("weights")
    export = export_view(view, export_dir, prefix=prefix, overwrite=overwrite_export).resolve()
    gpus = _gpu_count()
    cmd = trainer_command(weights, export, run_dir, max_iter, batch_size, gpus, extra)
    run_dir.mkdir(parents=True, exist_ok=True)
    exit_file = run_dir / EXIT_NAME
    # "$@" is the trainer; its status lands in exit_code (written atomically) whoever is still around
    wrapper = ["/bin/sh", "-c", '"$@"; code=$?; echo $code > "$0.tmp" && mv "$0.tmp" "$0"; exit $code',
               str(exit_file), *cmd]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    with open(run_dir / LOG_NAME, "ab") as log:
        proc = subprocess.Popen(wrapper, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it when it ends while we are alive
    record = RunRecord(run_dir=str(run_dir), pid=proc.pid, command=cmd, export_dir=str(export),
                       weights=str(weights or "builtin"), started=time.strftime("%Y-%m-%d %H:%M:%S"), gpus=gpus)
    info = ds.info
    info.setdefault(RUNS_KEY, []).append(record.to_dict())
    ds.info = info
    ds.save()
    return record


def list_runs(ds: fo.Dataset) -> list[dict[str, Any]]:
    """The runs recorded on a dataset, oldest first."""
    return list(ds.info.get(RUNS_KEY, []))


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, ended but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def run_status(record: dict[str, Any], metrics: int = 5) -> dict[str, Any]:
    """State of a run: ``running`` / ``finished`` / ``failed`` / ``stopped``, exit code, last metrics,
    newest checkpoint and the end of its log."""
    run_dir = Path(record["run_dir"])
    exit_file = run_dir / EXIT_NAME
    code = None
    if exit_file.is_file():
        try:
            code = int(exit_file.read_text().strip())
        except ValueError:
            code = None
    if code is not None:
        state = "finished" if code == 0 else "failed"
    else:
        state = "running" if _alive(int(record["pid"])) else "stopped"
    log = run_dir / LOG_NAME
    tail = log.read_bytes()[-2000:].decode("utf-8", "replace").strip().splitlines()[-5:] if log.is_file() else []
    ckpt = latest_checkpoint(run_dir)
    return {"run_dir": str(run_dir), "state": state, "returncode": code, "metrics": read_metrics(run_dir, metrics),
            "checkpoint": str(ckpt) if ckpt is not None else None, "log_tail": tail}


def stop_run(record: dict[str, Any], timeout: float = 10.0) -> None:
    """Stop a running trainer (SIGTERM to its process group, then SIGKILL)."""
    import signal

    pid = int(record["pid"])
    if not _alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


def compare_finetuned(view: fo.Dataset | fo.DatasetView, run_dir: str | Path | None = None,
                      prefix: str = FINETUNED, before: str = PRED, device: str | None = None,
                      progress: bool = True, callback=None) -> dict[str, Any]:
    """Predict the view with a run's newest checkpoint into ``prefix`` fields, evaluate before and after.

    ``run_dir`` defaults to the dataset's latest recorded run. Returns ``{"checkpoint", "before",
    "after"}`` (``before`` is None when the view has no ``before`` predictions).
    """
    from .evaluate import evaluate_view

    check_prefix(prefix)
    ds = view._dataset if isinstance(view, fo.DatasetView) else view
    if run_dir is None:
        runs = list_runs(ds)
        if not runs:
            raise BridgeError(f"dataset {ds.name!r} has no fine-tuning run: start one first")
        run_dir = runs[-1]["run_dir"]
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise BridgeError(f"{run_dir}: no checkpoint yet (the run is still starting, or it failed: see its "
                          f"{LOG_NAME})")
    predict_view(view, weights=str(ckpt), prefix=prefix, device=device, progress=progress, callback=callback)
    after = evaluate_view(view, pred=prefix, progress=progress)
    before_summary = evaluate_view(view, pred=before, progress=progress) if ds.has_field(f"{before}_panoptic") \
        or ds.has_field(f"{before}_semantic") else None
    return {"checkpoint": str(ckpt), "before": before_summary, "after": after}


def headline(summary: dict[str, Any] | None) -> dict[str, float | None]:
    """PQ, mIoU and AP of an evaluation summary (None where not evaluated)."""
    if not summary:
        return {"PQ": None, "mIoU": None, "AP": None}
    return {"PQ": summary.get("panoptic", {}).get("PQ"), "mIoU": summary.get("semantic", {}).get("mIoU"),
            "AP": summary.get("instance", {}).get("AP")}
