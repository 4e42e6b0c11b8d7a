"""Few-shot fine-tuning (``training.finetune``): the held-out split, validation before / after, the best
weights kept, early stopping, the time budget, cancel, and the shifted synthetic domain it is measured on.

The runs are real (the built-in model on a few synthetic scenes), kept to a few iterations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from app.finetune import FineTuneRun, finetune_command, recommended_weights
from m2f_core.checkpoint import load_model
from m2f_core.data.synthetic import generate_dataset, generate_scene, scene_rng
from training.finetune import main
from training.finetune_data import holdout_split, image_status, read_manifest

FAST = {"batch_size": 1, "eval_period": 2, "replay_images": 4, "retain_images": 4, "min_iterations": 1}


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> Path:
    """Six shifted scenes as a corrections folder, with a manifest: five edited, one untouched."""
    root = tmp_path_factory.mktemp("shifted")
    generate_dataset(root, 6, seed=5, split="train", domain="shifted", size=(128, 128))
    folder = root / "train"
    names = sorted(p.name for p in (folder / "images").iterdir())
    images = [{"file_name": n, "status": "untouched" if i == 5 else "edited"} for i, n in enumerate(names)]
    (folder / "manifest.json").write_text(json.dumps({"images": images}))
    return folder


def _recipe(tmp_path: Path, **changes) -> str:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({**FAST, **changes}))
    return str(path)


def _run(capsys, argv: list[str]) -> tuple[int, dict]:
    code = main([*argv, "--max-minutes", "60"])  # a busy machine must not turn a test into a time-limited run
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    if "--no-progress" not in argv:  # the progress lines on stderr: start, before, each validation
        assert "fine-tune:" in captured.err and "before: PQ" in captured.err and "iter 2/" in captured.err
    return code, json.loads(out[-1]) if out else {}


def test_holdout_split_uses_corrected_images_only():
    status = ["edited"] * 8 + ["untouched"] * 4 + ["reviewed"] * 2
    train, held, untouched = holdout_split(status, 0.2, 4, seed=0)
    assert untouched == list(range(8, 12))
    assert len(held) == 2 and not set(held) & set(untouched)  # a fifth of the 10 corrected ones
    assert sorted(train + held) == [i for i in range(14) if status[i] != "untouched"]
    assert holdout_split(status, 0.2, 4, seed=0) == (train, held, untouched)  # deterministic
    # too few corrected images: nothing is held out
    assert holdout_split(["edited"] * 3, 0.2, 4, seed=0) == ([0, 1, 2], [], [])
    # one image at least
    assert len(holdout_split(["edited"] * 4, 0.1, 4, seed=0)[1]) == 1


def test_manifest_statuses(shifted):
    from m2f_core.data.specs import open_dataset

    data = open_dataset(f"corrections:{shifted}")
    status = image_status(data, read_manifest(shifted))
    assert status.count("untouched") == 1 and status.count("edited") == 5
    assert image_status(data, None) == ["edited"] * 6  # no manifest: every image is a correction


def test_finetune_run_writes_model_result_and_progress(shifted, tmp_path, capsys):
    out = tmp_path / "run"
    code, line = _run(capsys, ["--train", f"corrections:{shifted}", "--out", str(out), "--max-iter", "4",
                               "--recipe", _recipe(tmp_path)])
    assert code == 0
    assert set(line) >= {"before", "after", "iterations", "seconds"}
    assert line["iterations"] == 4 and line["stopped"] == "max_iter"
    assert line["before"]["PQ"] is not None and line["after"]["PQ"] >= line["before"]["PQ"]
    result = json.loads((out / "result.json").read_text())
    assert result["train_images"] == 4 and len(result["held_out"]) == 1  # 5 edited: 1 held out, untouched unused
    untouched = json.loads((shifted / "manifest.json").read_text())["images"][5]["file_name"]
    assert untouched not in result["held_out"]
    assert [c["iter"] for c in result["curve"]] == [0, 2, 4]
    assert result["replay"].startswith("synthetic")  # the built-in model replays its own kind of data
    # what the start handled (original scenes) is validated too, before and at each validation
    assert result["retained"]["before"]["PQ"] is not None and all("retained" in c for c in result["curve"])
    progress = json.loads((out / "progress.json").read_text())
    assert progress["phase"] == "done" and progress["iteration"] == progress["total"] == 4
    model = load_model(out / "model")
    assert model.config.class_names == load_model().config.class_names
    # the recommended weights are those of the best validation (the start when nothing improved)
    best = result["best_iteration"]
    assert best in (0, 2, 4) and result["improved"] == (best > 0)
    # a finished run folder is not overwritten
    assert main(["--train", f"corrections:{shifted}", "--out", str(out), "--max-iter", "1"]) == 2


def test_early_stop_keeps_the_starting_weights(shifted, tmp_path, capsys):
    out = tmp_path / "run"
    # an improvement of 1000 points never happens: stop at the first validation, keep the start
    code, line = _run(capsys, ["--train", f"corrections:{shifted}", "--out", str(out), "--max-iter", "50",
                               "--recipe", _recipe(tmp_path, patience=1, min_delta=1000.0), "--no-progress"])
    assert code == 0 and line["stopped"] == "early_stop" and line["iterations"] == 2
    assert line["recommendation"] == "keep the current model" and line["after"] == line["before"]
    start, kept = load_model().state_dict(), load_model(out / "model").state_dict()
    assert all(torch.equal(start[k], kept[k]) for k in start)
    last = recommended_weights(out)
    assert last == out / "model"
    assert (out / "checkpoints" / "last").is_file()  # the moved-on weights are kept as a checkpoint too


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["--train", f"corrections:{tmp_path / 'nothing'}", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert main(["--train", "corrections:x", "--out", str(tmp_path / "r"), "--max-minutes", "0"]) == 2


def test_cancel_stops_cleanly_with_loadable_weights(shifted, tmp_path):
    run_dir = tmp_path / "run"
    cmd = finetune_command(None, shifted, run_dir, max_iter=400, device="cpu",
                           extra=["--recipe", _recipe(tmp_path, eval_period=1000)])
    run = FineTuneRun.start(cmd, run_dir)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = run.status()
        assert st.state == "running", st.summary()
        if st.progress.get("phase") == "training" and st.progress.get("iteration", 0) >= 2:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the run did not start training in time")
    assert "iteration" in st.summary() and "/ 400" in st.summary()
    run.cancel(timeout=60)
    st = run.status()
    assert st.state == "cancelled" and st.returncode == 130, st.summary()
    assert st.result is not None and st.result["stopped"] == "cancelled"
    assert st.result["iterations"] < 400
    load_model(recommended_weights(run_dir))
    load_model(run_dir / "checkpoints" / (run_dir / "checkpoints" / "last").read_text().strip())


def test_original_domain_unchanged_and_shifted_differs():
    a = generate_scene(scene_rng(3, "train", 0), 96, 96)
    b = generate_scene(scene_rng(3, "train", 0), 96, 96, domain="original")
    assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2]))
    image, seg, segments = generate_scene(scene_rng(3, "train", 0), 96, 96, domain="shifted")
    assert image.shape == (96, 96, 3) and seg.min() >= 1 and len(segments) == len(np.unique(seg))
    assert not np.array_equal(image, a[0])
    with pytest.raises(ValueError, match="unknown synthetic domain"):
        generate_scene(scene_rng(3, "train", 0), 96, 96, domain="night")


def test_selection_bounds_what_the_model_forgets(tmp_path):
    """The best weights: the best held-out score among validations that kept the retained score within
    ``retain_tolerance`` of the start; without a tolerance, the best held-out score. Scores are scripted
    (the selection rule, not the model, is under test); each validation's weights are told apart."""
    from training.finetune_recipe import FinetuneRecipe
    from training.finetune_validation import Validator

    # iteration: (held-out PQ, retained PQ)
    script = {0: (20.0, 70.0), 10: (30.0, 69.5), 20: (45.0, 66.0), 30: (40.0, 69.2), 40: (40.05, 69.9)}
    model = torch.nn.Linear(1, 1)

    def run(tolerance):
        state = {"it": 0, "calls": 0}

        def evaluate(m, dataset, device):
            held, kept = script[state["it"]]
            value = held if dataset == "val" else kept
            return {"panoptic": {"PQ": value, "PQ_th": value, "PQ_st": value, "SQ": 80.0, "RQ": 50.0, "per_class": {}}}

        recipe = FinetuneRecipe(retain_tolerance=tolerance, patience=10)
        with open(tmp_path / "m.jsonl", "w") as f:
            v = Validator(model, "val", "retain", "cpu", recipe, f, evaluate=evaluate)
            for it in script:
                state["it"] = it
                with torch.no_grad():
                    model.weight.fill_(it)  # the weights of this validation
                v.validate(it)
        return v

    free = run(None)
    assert free.best["iteration"] == 20 and free.best_state["weight"].item() == 20  # the best held-out score
    bounded = run(1.0)
    # 20 lost 4 points of retained PQ; 30 is within 1 point but 40 is no better than 30 by min_delta (0.1)
    assert bounded.best["iteration"] == 30 and bounded.best_state["weight"].item() == 30
    assert bounded.best["retained"]["PQ"] == 69.2 and [c["iter"] for c in bounded.curve] == list(script)
    # early stopping reads the held-out score alone: 20 was its top (selected or not); 30 and 40 did not beat it
    assert bounded.bad_evals == 2 and free.bad_evals == 2


# ------------------------------------------------------------------------------------------------
# The one runner (app.finetune): which command, and what its run folder says


def test_runner_uses_torchrun_only_over_several_gpus(tmp_path, monkeypatch):
    """More than one CUDA GPU: ``torchrun --nproc_per_node=N -m training.finetune``, on CUDA; otherwise (a CPU
    run, one GPU, none) one plain ``python -m training.finetune``. No GPU needed: the count is faked."""
    def command(gpus: int, **kwargs) -> list[str]:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        return finetune_command("builtin", tmp_path / "export", tmp_path / "run", python="PY", **kwargs)

    plain = ["PY", "-m", "training.finetune", "--train"]
    assert command(4)[:6] == ["PY", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert command(4)[6] == "training.finetune" and command(4)[command(4).index("--device") + 1] == "cuda"
    ddp = command(2, device="cuda:1")  # DDP puts each process on its own GPU (its local rank)
    assert "--nproc_per_node=2" in ddp and ddp[ddp.index("--device") + 1] == "cuda"
    assert command(3)[4] == "--nproc_per_node=2"  # the default batch (4) splits evenly over 2 of the 3
    six = tmp_path / "six.json"
    six.write_text(json.dumps({"batch_size": 6}))
    assert command(4, extra=["--recipe", str(six)])[4] == "--nproc_per_node=3"  # the recipe's batch decides
    assert command(8, device="cpu")[:4] == plain  # asked for the CPU
    assert command(1, device="cuda")[:4] == plain and command(1)[:4] == plain
    assert command(0)[:4] == plain and "--device" not in command(0)


def test_status_reads_a_cancel_under_torchrun(tmp_path):
    """torchrun exits non-zero when its processes were stopped: the trainer's progress says 'cancelled'."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "exit_code").write_text("1\n")
    run = FineTuneRun(run_dir, pid=1)
    assert run.status().state == "failed"
    (run_dir / "progress.json").write_text(json.dumps({"phase": "cancelled", "iteration": 3}))
    assert run.status().state == "cancelled"
    (run_dir / "exit_code").write_text("0\n")
    assert run.status().state == "finished"


@pytest.mark.slow
def test_ddp_run_on_two_cpu_processes(shifted, tmp_path):
    """``torchrun --nproc_per_node=2`` (gloo on CPU): the processes train in step, process 0 alone writes
    the run folder, and the run ends finished with loadable weights."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    recipe = _recipe(tmp_path, batch_size=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "training.finetune", "--train", f"corrections:{shifted}", "--out", str(run_dir), "--device", "cpu",
           "--max-iter", "3", "--max-minutes", "60", "--recipe", recipe, "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # the result line of process 0 only
    result = json.loads((run_dir / "result.json").read_text())
    assert result["iterations"] == 3 and result["stopped"] == "max_iter"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 3
    load_model(recommended_weights(run_dir))
