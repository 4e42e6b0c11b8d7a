"""Fine-tuning from the app: the trainer in a background process, its progress read from its run folder.

``FineTuneJob.start`` runs ``python -m training.train --init <current weights> --train
corrections:<export> --out <run dir>`` as a child process (its own process group, output to
``<run dir>.log``); ``status()`` reads the tail of ``metrics.jsonl`` and of the log without blocking;
``latest_checkpoint`` finds the weights to reload (``checkpoints/last`` names the newest).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FineTuneJob", "JobStatus", "finetune_command", "latest_checkpoint", "read_metrics"]


def finetune_command(init: str, export_dir: str | Path, out_dir: str | Path, *, max_iter: int = 200,
                     batch_size: int = 2, device: str | None = None, python: str = sys.executable,
                     extra: Sequence[str] = ()) -> list[str]:
    """The trainer's command line for fine-tuning ``init`` on one corrections export."""
    cmd = [python, "-m", "training.train", "--init", str(init), "--train", f"corrections:{export_dir}",
           "--out", str(out_dir), "--max-iter", str(int(max_iter)), "--batch-size", str(int(batch_size)),
           "--checkpoint-period", str(max(1, int(max_iter) // 4)), "--log-period", "1", "--num-workers", "0",
           "--no-progress"]
    if device:
        cmd += ["--device", str(device)]
    return cmd + list(extra)


def read_metrics(run_dir: str | Path, last: int = 5) -> list[dict]:
    """The last ``last`` records of ``run_dir/metrics.jsonl`` (a partly written line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        lines = f.read().decode("utf-8", "replace").splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out[-last:]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest loadable checkpoint folder of a run (``checkpoints/last``, else the highest ``iter_*``)."""
    ckpts = Path(run_dir) / "checkpoints"
    pointer = ckpts / "last"
    if pointer.is_file():
        folder = ckpts / pointer.read_text().strip()
        if (folder / "model.safetensors").is_file():
            return folder
    found = sorted(p for p in ckpts.glob("iter_*") if (p / "model.safetensors").is_file())
    return found[-1] if found else None


@dataclass
class JobStatus:
    running: bool
    returncode: int | None
    metrics: list[dict]
    log_tail: str

    def summary(self) -> str:
        """A few lines for the page: state, the last metrics, the end of the log on failure."""
        if self.running:
            head = "fine-tuning: running"
        elif self.returncode == 0:
            head = "fine-tuning: finished, press Reload to use the new weights"
        else:
            head = f"fine-tuning: failed (exit {self.returncode})"
        lines = [head]
        for m in self.metrics:
            keys = [k for k in ("loss", "loss_ce", "loss_mask", "loss_dice", "lr") if k in m]
            lines.append(f"iter {m.get('iter', '?')}: " + ", ".join(f"{k} {m[k]:.4g}" for k in keys))
        if self.returncode not in (None, 0) and self.log_tail:
            lines.append(self.log_tail)
        return "\n".join(lines)


class FineTuneJob:
    """One trainer process and its run folder."""

    def __init__(self, process: subprocess.Popen, run_dir: Path, log_path: Path, command: list[str]) -> None:
        self.process = process
        self.run_dir = run_dir
        self.log_path = log_path
        self.command = command

    @classmethod
    def start(cls, command: list[str], run_dir: str | Path, cwd: str | Path | None = None,
              env: dict[str, str] | None = None) -> FineTuneJob:
        run_dir = Path(run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ValueError(f"{run_dir} already exists: choose another export name or delete that run")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log_path = run_dir.parent / f"{run_dir.name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(process, run_dir, log_path, command)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def status(self, metrics: int = 5) -> JobStatus:
        code = self.process.poll()
        tail = ""
        if self.log_path.is_file():
            text = self.log_path.read_bytes()[-4000:].decode("utf-8", "replace").strip().splitlines()
            tail = "\n".join(text[-6:])
        return JobStatus(code is None, code, read_metrics(self.run_dir, metrics), tail)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the trainer (SIGTERM to its process group, SIGKILL after ``timeout``)."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
