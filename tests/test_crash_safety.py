"""Writes survive ``kill -9``: an export or a checkpoint save killed half-way leaves the previous good
files intact and loadable, and the next write cleans up what the killed one left behind.

A child process does a good write, then starts a second one that stalls at a chosen point (its
write function is wrapped in the child only: no hook in the product code) and signals that it got
there; the test kills it with SIGKILL at that moment, so the kill point is deterministic. Two points
each: in the middle of writing a file, and between the two renames that replace an existing folder.
Resuming a real training run after ``kill -9`` is ``test_training.py::test_kill_and_resume_gives_the_same_weights``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from app.export import ExportError, export_corrections, zip_export
from m2f_core.atomic import remove_stale_temporaries, temp_prefix
from m2f_core.data.corrections import CorrectionsDataset
from m2f_core.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = [{"id": 1, "name": "disc", "isthing": 1}, {"id": 10, "name": "sky", "isthing": 0}]  # as in the child

EXPORT_CHILD = r'''
import os, shutil, sys, time
from pathlib import Path
import numpy as np
from PIL import Image
from app.editing import EditSession
from app.export import export_corrections
from m2f_core import atomic
from m2f_core.data import corrections
from m2f_core.structures import PanopticResult, Segment

out, ready, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
CATEGORIES = [{"id": 1, "name": "disc", "isthing": 1}, {"id": 10, "name": "sky", "isthing": 0}]

def session(shift):
    m = np.ones((30, 40), np.int32)
    m[5 + shift:15 + shift, 5:20] = 2
    return EditSession.from_panoptic(PanopticResult(m, [Segment(1, 1, False, 0.9), Segment(2, 0, True, 0.8)]),
                                     CATEGORIES)

images = []
for i in range(2):
    images.append(out.parent / f"image{i}.png")
    Image.fromarray(np.full((30, 40, 3), 60 * i, np.uint8)).save(images[-1])
export_corrections([(images[0], session(0)), (images[1], session(1))], CATEGORIES, out, "mine")  # the good one
shutil.copytree(out / "mine", out.parent / "good_copy")  # what the test compares with after the kill

def stall():
    ready.touch()
    time.sleep(600)

if mode == "mid-write":  # stall half-way through writing the second semantic PNG of the new export
    real, calls = corrections.write_semantic_png, []
    def write_semantic_png(path, label_map, num_classes=None):
        calls.append(path)
        if len(calls) == 2:
            atomic.atomic_write(path, lambda tmp: (Path(tmp).write_bytes(b"\x89PNG\r\n half"), stall()))
        return real(path, label_map, num_classes=num_classes)
    corrections.write_semantic_png = write_semantic_png
else:  # "swap": stall right after the old export was moved aside, before the new one is renamed in
    real_rename = os.rename
    def rename(src, dst):
        real_rename(src, dst)
        if Path(dst).name.startswith(".mine.old-"):
            stall()
    os.rename = rename
export_corrections([(images[0], session(8)), (images[1], session(9))], CATEGORIES, out, "mine", overwrite=True)
'''

CHECKPOINT_CHILD = r'''
import os, shutil, sys, time
from pathlib import Path
import torch
from m2f_core import build_model, checkpoint, get_preset
from m2f_core.config import BackboneConfig
from training.config import TrainConfig
from training.state import save_checkpoint

run, ready, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = build_model(get_preset("synthetic_small").replace(  # tiny: the saves take milliseconds
    backbone=BackboneConfig(type="resnet", stage_blocks=(1, 1, 1, 1), res2_out_channels=64, stem_out_channels=32),
    conv_dim=64, mask_dim=64, hidden_dim=64, nheads=4, enc_layers=1, dec_layers=3, dim_feedforward=64,
    enc_dim_feedforward=64, num_queries=10))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
cfg = TrainConfig(max_iter=4)

def step():  # a cheap update, so that every checkpoint differs from the previous one
    loss = sum(p.pow(2).mean() for p in model.parameters())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()

def stall():
    ready.touch()
    time.sleep(600)

step()
save_checkpoint(run, model, optimizer, scheduler, None, 2, cfg)
save_checkpoint(run, model, optimizer, scheduler, None, 2, cfg, name="best")
shutil.copytree(run / "checkpoints", run.parent / "good_copy")  # what the test compares with after the kill
step()
if mode == "mid-write":  # stall half-way through writing the weights of iteration 4
    def save_file(state, path, metadata=None):
        Path(path).write_bytes(b"half a safetensors file")
        stall()
    checkpoint.save_file = save_file
    save_checkpoint(run, model, optimizer, scheduler, None, 4, cfg)
else:  # "swap": stall between the two renames that replace "best"
    real_rename = os.rename
    def rename(src, dst):
        real_rename(src, dst)
        if Path(dst).name.startswith(".best.old-"):
            stall()
    os.rename = rename
    save_checkpoint(run, model, optimizer, scheduler, None, 4, cfg, name="best")
'''


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _kill_when_ready(script: str, target: Path, mode: str, tmp_path: Path) -> int:
    """Run the child, wait until it stalls at the kill point, SIGKILL it; returns its pid.

    The child copies its good files to ``tmp_path / "good_copy"`` before the write that is killed.
    """
    child, ready = tmp_path / "child.py", tmp_path / "ready"
    child.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(child), str(target), str(ready), mode], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the child exited with {proc.returncode}: {proc.stdout.read().decode()[-3000:]}")
            assert time.monotonic() < deadline, "the child did not reach the kill point"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()  # reaped: its pid no longer runs
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def _session(shift: int):
    from app.editing import EditSession
    from m2f_core.structures import PanopticResult, Segment

    m = np.ones((30, 40), np.int32)
    m[5 + shift:15 + shift, 5:20] = 2
    return EditSession.from_panoptic(PanopticResult(m, [Segment(1, 1, False, 0.9), Segment(2, 0, True, 0.8)]),
                                     CATEGORIES)


# ------------------------------------------------------------------------------------------ exports


def test_export_killed_mid_write_keeps_the_previous_export(tmp_path):
    out = tmp_path / "corrections"
    pid = _kill_when_ready(EXPORT_CHILD, out, "mid-write", tmp_path)
    before = _files(tmp_path / "good_copy")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["mine"]
    assert _files(out / "mine") == before  # untouched, byte for byte
    ds = CorrectionsDataset(out / "mine")
    assert len(ds) == 2 and ds[0].panoptic.segment_map[5, 5] == 2 and ds[0].panoptic.segment_map[16, 5] == 1
    leftover = _hidden(out)
    assert leftover and all(name.startswith(f".mine.tmp-{pid}-") for name in leftover)
    half = [p for p in (out / leftover[0]).rglob(".*") if p.is_file()]
    assert half and half[0].read_bytes().endswith(b" half")  # the file it was writing when killed
    # the next export cleans what the killed one left (and nothing else)
    export_corrections([(tmp_path / "image0.png", _session(3))], CATEGORIES, out, "next")
    assert _hidden(out) == [] and _files(out / "mine") == before


def test_export_killed_between_the_renames_is_put_back(tmp_path):
    out = tmp_path / "corrections"
    pid = _kill_when_ready(EXPORT_CHILD, out, "swap", tmp_path)
    before = _files(tmp_path / "good_copy")
    assert not (out / "mine").exists()  # killed after moving the old export aside ...
    moved = [n for n in _hidden(out) if n.startswith(f".mine.old-{pid}-")]
    assert len(moved) == 1 and _files(out / moved[0]) == before  # ... where it is intact
    # opening the corrections folder again (the app's start) puts it back; a new export needs consent again
    from app.workbench import Workbench

    Workbench(None, out, work_dir=tmp_path / "work")  # type: ignore[arg-type]  (no model needed for this)
    assert _hidden(out) == [] and _files(out / "mine") == before
    assert len(CorrectionsDataset(out / "mine")) == 2
    with pytest.raises(ExportError, match="already exists"):
        export_corrections([(tmp_path / "image0.png", _session(3))], CATEGORIES, out, "mine")


def test_only_orphaned_temporaries_of_our_pattern_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "corrections"
        (folder / "mine").mkdir(parents=True)
        (folder / "mine" / "panoptic.json").write_text("{}")
        entries = {
            f".mine.tmp-{dead_pid}-abc123_x": "removed",  # a killed export's folder
            f".mine.zip.tmp-{dead_pid}-k9j8h7g6": "removed",  # a killed zip's file
            f".gone.old-{dead_pid}-q1w2e3r4": "restored",  # moved aside, never replaced: put back
            f".mine.old-{dead_pid}-z9x8c7v6": "removed",  # moved aside, replaced: an old version
            f".mine.tmp-{live.pid}-abcdefgh": "kept",  # another running process is writing it
            f".mine.tmp-{os.getpid()}-abcdefgh": "kept",  # this process is writing it
            ".mine.tmp-abcdefgh": "kept",  # not our pattern (no pid)
            ".hidden-notes": "kept",
            "mine.zip.tmp": "kept",
        }
        for name in entries:
            if ".zip." in name or not name.startswith(".mine.tmp"):
                (folder / name).write_text("x")
            else:
                (folder / name).mkdir()
                (folder / name / "panoptic.json").write_text("{}")
        (folder / f".gone.old-{dead_pid}-q1w2e3r4").unlink()
        (folder / f".gone.old-{dead_pid}-q1w2e3r4").mkdir()
        handled = remove_stale_temporaries(folder)
        assert sorted(p.name for p in handled) == sorted(n for n, what in entries.items() if what != "kept")
        for name, what in entries.items():
            assert (folder / name).exists() == (what == "kept"), name
        assert (folder / "gone").is_dir() and (folder / "mine" / "panoptic.json").is_file()
        # zip_export cleans its folder too
        (folder / f".mine.zip.tmp-{dead_pid}-aaaaaaaa").write_text("half a zip")
        zip_export(folder / "mine")
        assert not (folder / f".mine.zip.tmp-{dead_pid}-aaaaaaaa").exists() and (folder / "mine.zip").is_file()
    finally:
        live.kill()
        live.wait()
    assert temp_prefix("mine") == f".mine.tmp-{os.getpid()}-"


# ------------------------------------------------------------------------------------------ checkpoints


def _resume(run: Path) -> dict:
    """What ``training.train --resume`` does: the ``last`` checkpoint into a fresh model and optimiser."""
    from m2f_core import build_model, load_model
    from training.state import last_checkpoint, load_checkpoint

    folder = last_checkpoint(run)
    assert folder is not None
    model = build_model(load_model(folder).config)  # fresh weights, then the checkpoint's
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    state = load_checkpoint(folder, model, optimizer, scheduler, None)
    saved = load_model(folder).state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"]  # AdamW moments restored
    return {"iteration": state["iteration"], "folder": folder, "model": model, "optimizer": optimizer,
            "scheduler": scheduler}


def test_checkpoint_save_killed_mid_write_keeps_the_previous_one(tmp_path):
    from training.config import TrainConfig
    from training.state import save_checkpoint

    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    pid = _kill_when_ready(CHECKPOINT_CHILD, run, "mid-write", tmp_path)
    before = {"iter": _files(tmp_path / "good_copy" / "iter_0000002"),
              "last": (tmp_path / "good_copy" / "last").read_text()}
    assert (ckpts / "last").read_text() == before["last"] == "iter_0000002\n"
    assert _files(ckpts / "iter_0000002") == before["iter"]
    assert not (ckpts / "iter_0000004").exists()
    leftover = _hidden(ckpts)
    assert leftover and all(n.startswith(f".iter_0000004.tmp-{pid}-") for n in leftover)
    resumed = _resume(run)
    assert resumed["iteration"] == 2 and resumed["folder"].name == "iter_0000002"
    # the resumed run's next save cleans the killed one's leftovers
    save_checkpoint(run, resumed["model"], resumed["optimizer"], resumed["scheduler"], None, 4, TrainConfig())
    assert _hidden(ckpts) == [] and (ckpts / "last").read_text() == "iter_0000004\n"
    assert _resume(run)["iteration"] == 4
    # a trainer state damaged on disk later (not by our writes) is a one-line error, not a traceback
    state = ckpts / "iter_0000004" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="trainer_state.pt: not a readable trainer state") as err:
        _resume(run)
    assert "\n" not in str(err.value)


def test_checkpoint_replace_killed_between_the_renames_is_put_back(tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    pid = _kill_when_ready(CHECKPOINT_CHILD, run, "swap", tmp_path)
    before = _files(tmp_path / "good_copy" / "best")
    assert not (ckpts / "best").exists()
    moved = [n for n in _hidden(ckpts) if n.startswith(f".best.old-{pid}-")]
    assert len(moved) == 1 and _files(ckpts / moved[0]) == before
    assert _resume(run)["iteration"] == 2  # resuming does not need "best"
    remove_stale_temporaries(ckpts)  # what the next save_checkpoint does first
    assert _hidden(ckpts) == [] and _files(ckpts / "best") == before
