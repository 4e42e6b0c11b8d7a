"""Data-parallel predict and ``evaluate model`` under torchrun (2 CPU processes, gloo) give what one process gives.

The built-in model on six small synthetic scenes: the outputs of two processes must be the same bytes
(JSON, PNGs) and the same metrics as one process; a run killed after its first chunks resumes without
redoing them; another input set is refused while an unfinished run's work folder is there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from m2f_core.data.synthetic.dataset import generate_dataset
from m2f_core.parallel import STOP_AFTER_ENV


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", STOP_AFTER_ENV)}
    return env | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""} | extra


def _python(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, env=_env(**env))


def _torchrun(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Two processes on this machine; ``--standalone`` picks a free port for the rendezvous."""
    return _python("torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", *args, **env)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Six 128x160 synthetic scenes (COCO panoptic): the built-in model's classes."""
    root = tmp_path_factory.mktemp("scenes")
    return generate_dataset(root, 6, seed=3, split="val", size=(128, 160))


@pytest.fixture(scope="module")
def single_predict(scenes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    run = _python("m2f_core.predict", "--out", str(out), str(scenes.parent / "images"))
    assert run.returncode == 0, run.stderr
    return out


def _evaluate(runner, scenes: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    return runner("m2f_core.evaluate", "model", "--format", "coco_panoptic", "--ann", str(scenes), *extra, **env)


def test_predict_two_processes_write_the_same_bytes(scenes, single_predict, tmp_path):
    out = tmp_path / "out"
    run = _torchrun("m2f_core.predict", "--out", str(out), str(scenes.parent / "images"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("6 image(s)") == 1  # rank 0 only
    assert not (out / ".shards").exists()  # merged, then removed
    one, two = _files(single_predict), _files(out)
    assert sorted(one) == sorted(two) and len(one) == 2 + 6 * 5  # 2 JSON, per image 2 maps + 3 overlays
    assert [k for k in one if one[k] != two[k]] == []


def test_evaluate_model_two_processes_same_metrics(scenes):
    one = _evaluate(_python, scenes)
    two = _evaluate(_torchrun, scenes)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    result = json.loads(two.stdout)  # rank 0 printed one JSON object, the others nothing
    assert result == json.loads(one.stdout)
    assert result["images"] == 6 and result["panoptic"]["PQ"] > 0 and result["instance"]["AP"] is not None


def _killed_run(scenes: Path, out: Path) -> dict[str, int]:
    """Predict with every process stopping abruptly after its first chunk; the PNG times of finished images."""
    run = _torchrun("m2f_core.predict", "--out", str(out), str(scenes.parent / "images"), **{STOP_AFTER_ENV: "1"})
    assert run.returncode != 0
    chunks = sorted((out / ".shards").glob("chunk-*.json"))
    assert 1 <= len(chunks) < 6  # a chunk is one image here (six images, two processes)
    done = [r["annotation"]["file_name"] for c in chunks for r in json.loads(c.read_text())]
    return {name: (out / "panoptic" / name).stat().st_mtime_ns for name in done}


def test_killed_predict_resumes_without_redoing_finished_chunks(scenes, single_predict, tmp_path):
    out = tmp_path / "out"
    finished = _killed_run(scenes, out)
    run = _torchrun("m2f_core.predict", "--out", str(out), str(scenes.parent / "images"))
    assert run.returncode == 0, run.stderr
    assert f"resuming: {len(finished)} of 6 chunks done" in run.stderr
    assert {name: (out / "panoptic" / name).stat().st_mtime_ns for name in finished} == finished  # not rewritten
    one, two = _files(single_predict), _files(out)
    assert sorted(one) == sorted(two) and [k for k in one if one[k] != two[k]] == []


def test_other_inputs_are_refused_while_a_run_is_unfinished(scenes, tmp_path):
    out = tmp_path / "out"
    _killed_run(scenes, out)
    images = sorted((scenes.parent / "images").iterdir())[:4]
    run = _torchrun("m2f_core.predict", "--out", str(out), *map(str, images))
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unfinished run with other inputs" in errors[0] and "images" in errors[0]
    assert "remove" in errors[0] and str(out / ".shards") in errors[0]


def test_evaluate_model_resumes_from_its_work_dir(scenes, tmp_path):
    work = tmp_path / "work"
    killed = _evaluate(_torchrun, scenes, "--work-dir", str(work), **{STOP_AFTER_ENV: "1"})
    assert killed.returncode != 0 and list(work.glob("chunk-*.json"))
    resumed = _evaluate(_torchrun, scenes, "--work-dir", str(work))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming:" in resumed.stderr and not work.exists()
    assert json.loads(resumed.stdout) == json.loads(_evaluate(_python, scenes).stdout)


def test_a_failing_rank_fails_the_run_with_its_message(scenes, tmp_path):
    """An image whose size differs from its annotation stops the evaluation on the rank that reads it."""
    import shutil

    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(scenes.parent, root)
    bad = sorted((root / "images").iterdir())[3]  # rank 1's (chunks of one image, every other one)
    Image.open(bad).resize((64, 64)).save(bad)
    run = _evaluate(_torchrun, root / "panoptic.json")
    assert run.returncode != 0 and run.stdout == ""
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rank 1:" in errors[0] and bad.name in errors[0], run.stderr


@pytest.fixture()
def fiftyone_env(tmp_path, monkeypatch):
    """FiftyOne on a fresh database in a temporary folder (as tests/test_fiftyone_bridge.py), no tracking."""
    env = {"FIFTYONE_DATABASE_DIR": str(tmp_path / "db"), "FIFTYONE_DO_NOT_TRACK": "true",
           "FIFTYONE_DATABASE_VALIDATION": "false", "FIFTYONE_SHOW_PROGRESS_BARS": "false"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    fo = pytest.importorskip("fiftyone")
    fo.config.database_dir = env["FIFTYONE_DATABASE_DIR"]
    fo.config.show_progress_bars = False
    yield env
    for name in fo.list_datasets():
        fo.delete_dataset(name)


def _label_values(label) -> list:
    """What a prediction field holds, without FiftyOne's random label ids."""
    import numpy as np

    if label is None or isinstance(label, float):
        return [label]
    if hasattr(label, "detections"):
        return [(d.label, d.bounding_box, d.confidence, np.asarray(d.mask).tobytes()) for d in label.detections]
    return [np.asarray(getattr(label, "mask", None) if hasattr(label, "mask") else label.map).tobytes()]


@pytest.mark.slow  # ~60 s: FiftyOne's database, then two processes that import FiftyOne
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fiftyone_predict_two_processes_same_fields(scenes, fiftyone_env, tmp_path):
    from app.fiftyone_bridge import fields
    from app.fiftyone_bridge.core import import_dataset

    ds = import_dataset("coco_panoptic", scenes, "dp", progress=False)
    single = _python("app.fiftyone_bridge", "predict", "--name", "dp", "--prefix", "one", **fiftyone_env)
    assert single.returncode == 0, single.stderr  # in a process of its own: one thread, as each of the two below
    work = tmp_path / "work"
    run = _torchrun("app.fiftyone_bridge", "predict", "--name", "dp", "--prefix", "two", "--work-dir", str(work),
                    **fiftyone_env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["samples"] == 6 and not work.exists()
    ds.reload()
    one, two = fields("one"), fields("two")
    for sample in ds.iter_samples():
        for kind in ("panoptic", "instances", "semantic", "uncertainty", "uncertainty_map"):
            assert _label_values(sample[two[kind]]) == _label_values(sample[one[kind]]), (sample.filepath, kind)
    assert ds.info["m2f"]["predictions"]["two"]["samples"] == 6


# ------------------------------------------------------------------------------------------ in one process


def test_run_items_saves_chunks_and_resumes_in_one_process(tmp_path):
    """The bookkeeping without torchrun's processes: a failure keeps the finished chunks, a re-run skips them."""
    from m2f_core.parallel import Group, ParallelError, default_chunk_size, run_items

    group, work, calls = Group(launched=True), tmp_path / "work", []
    assert default_chunk_size(10, 1) == 3  # about four chunks per process

    def failing(i: int) -> dict:
        if i == 7:
            raise ValueError("image 7 is broken")
        calls.append(i)
        return {"i": i}

    with pytest.raises(ParallelError, match="rank 0: image 7 is broken"):
        list(run_items(group, 10, failing, work=work, manifest={"images": 10}, progress=False))
    assert sorted(p.name for p in work.glob("chunk-*.json")) == ["chunk-000000.json", "chunk-000001.json"]
    calls.clear()
    records = list(run_items(group, 10, lambda i: calls.append(i) or {"i": i}, work=work, manifest={"images": 10},
                             progress=False))
    assert records == [{"i": i} for i in range(10)] and calls == [6, 7, 8, 9]  # chunks 0-1 (items 0-5) kept
    with pytest.raises(ParallelError, match="differs in: images"):
        run_items(group, 10, lambda i: i, work=work, manifest={"images": 11}, progress=False)


def test_run_items_alone_is_a_plain_loop(tmp_path):
    """Without torchrun: no work folder, the records in order, an exception as it was raised."""
    from m2f_core.parallel import Group, run_items

    assert list(run_items(Group(), 5, lambda i: i * i, progress=False)) == [0, 1, 4, 9, 16]

    def failing(i: int) -> int:
        raise KeyError(i)

    with pytest.raises(KeyError):
        list(run_items(Group(), 3, failing, progress=False))
