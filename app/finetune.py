"""The one fine-tuning runner of the app and the FiftyOne bridge: ``training.finetune`` in a detached process.

``FineTuneRun.launch`` (the Gradio app's Fine-tune button and the bridge's ``start_finetune`` alike)
builds the command with ``finetune_command`` and starts it with ``FineTuneRun.start``:

- one process, ``python -m training.finetune --train corrections:<export> --out <run dir> --init
  <weights>``, on the CPU or on the one GPU there is;
- ``torchrun --nproc_per_node=N -m training.finetune ...`` (as ``python -m torch.distributed.run``, the
  same interpreter) when the run is for CUDA and more than one GPU is visible
  (``torch.cuda.device_count() > 1``): DDP, N the largest process count up to the GPU count that
  divides the recipe's batch size (``ddp_processes``).

The command runs in its own session (``start_new_session=True``: it outlives the page or the
command that started it, and a cancel reaches its whole process group). A one-line ``sh`` wrapper
writes the exit status to ``<run dir>/exit_code`` (atomically), so a run's state is known to
whoever looks later, from the run folder alone:

- ``<run dir>/progress.json``: phase, iteration / total, seconds left, the validation curve;
- ``<run dir>/result.json``: before / after on the held-out images, per class, the recommendation;
- ``<run dir>/model/``: the recommended weights (what Reload / "adopt" loads);
- ``<run dir>/train.log``: the trainer's output.

``FineTuneRun.cancel`` sends SIGTERM: the trainer finishes its step, saves a checkpoint, writes
``model/`` and ``result.json`` from the best weights so far and exits with 130 (under ``torchrun``,
which passes the signal on to its processes and then exits non-zero itself, the trainer's
``progress.json`` phase "cancelled" says it). ``RunStatus`` reads all of it back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["FineTuneRun", "RunStatus", "ddp_processes", "finetune_command", "gpu_count", "read_json", "read_metrics",
           "recommended_weights", "result_text", "retained_text"]

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG_NAME, EXIT_NAME = "train.log", "exit_code"
CANCELLED = 130


def gpu_count() -> int:
    """How many CUDA GPUs this process sees (0 without CUDA)."""
    import torch

    return int(torch.cuda.device_count())


def ddp_processes(gpus: int, batch_size: int) -> int:
    """Processes of a DDP run on ``gpus`` GPUs: the most, up to ``gpus``, that split the batch evenly."""
    return max([n for n in range(1, max(1, int(gpus)) + 1) if int(batch_size) % n == 0], default=1)


def _recipe_batch_size(extra: Sequence[str]) -> int:
    """The batch size of the recipe the run will use (``--recipe FILE`` in ``extra``, else the default)."""
    from training.finetune_recipe import FinetuneRecipe

    args = list(extra)
    if "--recipe" in args and args.index("--recipe") + 1 < len(args):
        try:
            return FinetuneRecipe.from_json(args[args.index("--recipe") + 1]).batch_size
        except (OSError, ValueError):  # the trainer reports a bad recipe file itself
            pass
    return FinetuneRecipe().batch_size


def finetune_command(init: str | None, train_dir: str | Path, run_dir: str | Path, *, max_minutes: float = 10.0,
                     max_iter: int | None = None, val: str | None = None, device: str | None = None,
                     python: str = sys.executable, extra: Sequence[str] = ()) -> list[str]:
    """The few-shot fine-tune's command line for one corrections export: ``torchrun`` over the GPUs when the
    run is for CUDA (``device`` None or ``cuda...``) and more than one GPU is visible, else one process."""
    processes = 1
    if device is None or str(device).startswith("cuda"):
        gpus = gpu_count()
        processes = ddp_processes(gpus, _recipe_batch_size(extra)) if gpus > 1 else 1
    if processes > 1:  # torchrun, from the same interpreter; each process takes its GPU (its local rank)
        launcher = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        device = "cuda"
    else:
        launcher = [python]
    cmd = [*launcher, "-m", "training.finetune", "--train", f"corrections:{train_dir}", "--out", str(run_dir),
           "--init", str(init or "builtin"), "--max-minutes", f"{float(max_minutes):g}"]
    if max_iter:
        cmd += ["--max-iter", str(int(max_iter))]
    if val:
        cmd += ["--val", str(val)]
    if device:
        cmd += ["--device", str(device)]
    return cmd + list(extra)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object written atomically by the trainer, or None (absent, or not a JSON object)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


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


def recommended_weights(run_dir: str | Path) -> Path | None:
    """The weights a run recommends (``model/``), else its newest checkpoint (a run that was killed)."""
    run_dir = Path(run_dir)
    if (run_dir / "model" / "model.safetensors").is_file():
        return run_dir / "model"
    ckpts = run_dir / "checkpoints"
    pointer = ckpts / "last"
    if pointer.is_file():
        folder = ckpts / pointer.read_text().strip()
        if (folder / "model.safetensors").is_file():
            return folder
    found = sorted(p for p in ckpts.glob("iter_*") if (p / "model.safetensors").is_file())
    return found[-1] if found else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


@dataclass
class RunStatus:
    """What a run folder says about its run."""

    run_dir: Path
    state: str  # "running", "finished", "cancelled", "failed", "stopped" (died without an exit status)
    returncode: int | None
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    log_tail: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def weights(self) -> Path | None:
        return recommended_weights(self.run_dir)

    def summary(self) -> str:
        """A few lines for the page: state, n / N and time left, the validation curve, the result."""
        p = self.progress
        it, total = p.get("iteration", 0), p.get("total") or "?"
        lines = []
        if self.state == "running":
            phase = p.get("phase", "starting")
            head = f"fine-tuning: {phase}, iteration {it} / {total}"
            if p.get("eta_s") is not None and phase in ("training", "validating"):
                head += f", about {_duration(p['eta_s'])} left"
            lines.append(head + f" ({_duration(p.get('elapsed_s'))} so far)")
        elif self.state == "finished":
            lines.append(f"fine-tuning: finished after {it} iterations in {_duration(p.get('elapsed_s'))}")
        elif self.state == "cancelled":
            lines.append(f"fine-tuning: cancelled at iteration {it}; the best weights so far are kept")
        elif self.state == "failed":
            lines.append(f"fine-tuning: failed (exit {self.returncode})")
        else:
            lines.append("fine-tuning: stopped without finishing (killed?)")
        curve = p.get("val") or []
        if curve:
            key = "PQ" if "PQ" in curve[0] else next((k for k in ("AP", "mIoU") if k in curve[0]), None)
            if key:
                points = ", ".join(f"{c['iter']}: {c[key]:.1f}" for c in curve[-8:] if c.get(key) is not None)
                lines.append(f"held-out {key} by iteration: {points}")
        if self.result:
            lines.append(result_text(self.result))
        if self.state in ("failed", "stopped") and self.log_tail:
            lines.append(self.log_tail)
        return "\n".join(lines)


def result_text(result: dict[str, Any]) -> str:
    """Before / after on the held-out images, and what the run recommends, in words."""
    before, after = result.get("before") or {}, result.get("after") or {}
    if not before:
        return "no held-out images (too few corrections): the gain was not measured"
    parts = []
    for key in ("PQ", "PQ_th", "PQ_st", "mIoU", "AP"):
        if before.get(key) is not None and after.get(key) is not None:
            parts.append(f"{key} {before[key]:.1f} -> {after[key]:.1f}")
    where = result.get("validation") or "held-out images"
    text = f"on {where} ({len(result.get('held_out') or []) or 'all'} images): " + ", ".join(parts)
    kept = retained_text(result)
    if kept:
        text += f"\n{kept}"
    if result.get("recommendation") == "adopt":
        text += f"\nrecommended: adopt (best at iteration {result.get('best_iteration')})"
    elif result.get("improved"):
        text += "\n⚠️ better on the held-out images but worse where the model was good: keep the current model"
    else:
        text += "\n⚠️ no improvement on held-out images: keep the current model"
    return text


def retained_text(result: dict[str, Any]) -> str:
    """``on 24 original synthetic scenes (what the model already handled): PQ 71.0 -> 70.2``, or ''."""
    kept = result.get("retained") or {}
    before, after = kept.get("before") or {}, kept.get("after") or {}
    for key in ("PQ", "AP", "mIoU"):
        if before.get(key) is not None and after.get(key) is not None:
            return f"on {kept.get('on')} (what the model already handled): {key} {before[key]:.1f} -> {after[key]:.1f}"
    return ""


class FineTuneRun:
    """One detached trainer process and its run folder (rebuilt from ``run_dir`` and ``pid`` alone)."""

    def __init__(self, run_dir: str | Path, pid: int, command: list[str] | None = None,
                 process: subprocess.Popen | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.pid = int(pid)
        self.command = list(command or [])
        self._process = process

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_NAME

    @classmethod
    def launch(cls, init: str | None, train_dir: str | Path, run_dir: str | Path, *, max_minutes: float = 10.0,
               max_iter: int | None = None, val: str | None = None, device: str | None = None,
               extra: Sequence[str] = ()) -> FineTuneRun:
        """Fine-tune ``init`` on the corrections export ``train_dir`` into ``run_dir``, detached
        (``finetune_command``'s options); returns at once."""
        cmd = finetune_command(init, train_dir, run_dir, max_minutes=max_minutes, max_iter=max_iter, val=val,
                               device=device, extra=extra)
        return cls.start(cmd, run_dir)

    @classmethod
    def start(cls, command: list[str], run_dir: str | Path, cwd: str | Path | None = None,
              env: dict[str, str] | None = None) -> FineTuneRun:
        """Start ``command`` detached; its output goes to ``run_dir/train.log``, its status to ``exit_code``."""
        run_dir = Path(run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"{run_dir} already exists: choose another name or delete that run")
        run_dir.mkdir(parents=True, exist_ok=True)
        exit_file = run_dir / EXIT_NAME
        # the shell ignores SIGTERM / SIGINT so that it survives a cancel and records the trainer's exit status
        # (the trainer installs its own handlers)
        wrapper = ["/bin/sh", "-c", 'trap "" TERM INT; "$@"; code=$?; echo $code > "$0.tmp" && mv "$0.tmp" "$0"; '
                   'exit $code',
                   str(exit_file), *command]
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        with open(run_dir / LOG_NAME, "ab") as log:
            proc = subprocess.Popen(wrapper, cwd=cwd or REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        threading.Thread(target=proc.wait, daemon=True).start()  # reap it when it ends while we are alive
        return cls(run_dir, proc.pid, command, proc)

    def alive(self) -> bool:
        """Whether the process runs (a zombie, ended but not yet reaped, does not count)."""
        if self._process is not None:
            return self._process.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return True

    @property
    def running(self) -> bool:
        return self.status().running

    def returncode(self) -> int | None:
        exit_file = self.run_dir / EXIT_NAME
        try:
            return int(exit_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def status(self) -> RunStatus:
        code = self.returncode()
        if code is None:
            state = "running" if self.alive() else "stopped"
            if state == "stopped":  # the wrapper may have just written it
                code = self.returncode()
                state = "stopped" if code is None else state
        progress = read_json(self.run_dir / "progress.json") or {}
        if code is not None:
            # torchrun exits non-zero when its processes were stopped: the trainer's own word counts
            cancelled = code == CANCELLED or (code != 0 and progress.get("phase") == "cancelled")
            state = "finished" if code == 0 else "cancelled" if cancelled else "failed"
        tail = ""
        if self.log_path.is_file():
            text = self.log_path.read_bytes()[-4000:].decode("utf-8", "replace").strip().splitlines()
            tail = "\n".join(text[-6:])
        return RunStatus(self.run_dir, state, code, progress, read_json(self.run_dir / "result.json"), tail)

    def cancel(self, timeout: float = 60.0) -> None:
        """Ask the trainer to stop (SIGTERM: it saves and writes its outputs), SIGKILL after ``timeout``."""
        if not self.alive():
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.2)
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
