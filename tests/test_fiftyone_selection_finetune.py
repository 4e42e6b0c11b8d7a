"""Choosing what to correct (rank by uncertainty / uniqueness / mistakenness, tag the top N) and a fine-tune
that says what it does (the form's target and count, the minimum, n / N with time left and the held-out
score, before / after with the held-out samples apart and a clear word when they got worse).

Real MongoDB (fiftyone-db), as tests/test_fiftyone_bridge.py. FiftyOne processes on one machine share one
database service whatever their database folder, so every dataset here has a name of its own and only
those are deleted at the end. Runs of the trainer are not started here (test_fiftyone_bridge.py runs real
ones): a run folder is written as the runner writes it, or the launch is caught before it starts a process.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from fiftyone_helpers import fiftyone_env

pytestmark = [  # FiftyOne's own dependencies (psutil, mongoengine), not our code
    pytest.mark.filterwarnings("ignore:connections\\(\\) is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:No uuidRepresentation is specified:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def fo_env(tmp_path_factory):
    """FiftyOne on a database in a temporary folder (tests/fiftyone_helpers.py)."""
    with fiftyone_env(tmp_path_factory.mktemp("fiftyone_sel")) as env:
        yield env


def _import(fo_env, root: Path, what: str):
    from app.fiftyone_bridge.core import import_dataset

    name = f"selft-{what}-{fo_env.tag}"
    fo_env.made.append(name)
    return import_dataset("corrections", root, name, progress=False)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Six small shifted synthetic scenes (the built-in model's classes), where the model is unsure."""
    from m2f_core.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("sel_scenes")
    generate_dataset(root, 6, seed=11, split="train", domain="shifted", size=(128, 128))
    return root / "train"


@pytest.fixture(scope="module")
def pool(fo_env, scenes):
    """The scenes imported, and the built-in model's predictions (and per-pixel uncertainty) on them."""
    from app.fiftyone_bridge.core import predict_view

    ds = _import(fo_env, scenes, "pool")
    predict_view(ds, device="cpu", progress=False)
    return ds


def _run_main(argv: list[str]) -> tuple[int, str]:
    from app.fiftyone_bridge.__main__ import main

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def _execute(uri: str, ctx: dict):
    """FiftyOne's ``execute_operator`` from a thread with no event loop (see test_fiftyone_bridge.py)."""
    import fiftyone.operators as foo

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(foo.execute_operator, uri, ctx=ctx).result()


# --------------------------------------------------------------------------------------------
# part 4: choose what to correct


def test_rank_by_uncertainty_tags_the_top_n_and_stores_each_score(pool, capsys):
    from app.fiftyone_bridge.selection import RANKINGS_KEY, rank_samples

    ds = pool
    unc = dict(zip(ds.values("id"), ds.values("pred_uncertainty")))
    assert all(0.0 < u < 1.0 for u in unc.values())  # the predictor's mean per-pixel uncertainty
    lowest = min(unc, key=unc.get)
    ds.select(lowest).tag_samples("to-correct")  # a tag left from an earlier ranking
    report = rank_samples(ds, by="uncertainty", top=2)
    expected = sorted(unc, key=unc.get, reverse=True)[:2]
    assert [t["id"] for t in report.top] == expected and report.tagged == 2 and report.samples == 6
    assert sorted(ds.match_tags("to-correct").values("id")) == sorted(expected)  # the old tag is gone
    assert dict(zip(ds.values("id"), ds.values("rank_uncertainty"))) == pytest.approx(unc)
    assert ds.info[RANKINGS_KEY]["uncertainty"]["tagged"] == expected

    code, out = _run_main(["rank", "--name", ds.name, "--by", "uncertainty", "--tag", "fixme", "--top", "3"])
    err = capsys.readouterr().err
    assert code == 0, err
    shown = json.loads(out)
    assert shown["tagged"] == 3 and shown["field"] == "rank_uncertainty" and shown["tag"] == "fixme"
    assert [t["id"] for t in shown["top"]] == sorted(unc, key=unc.get, reverse=True)[:3]
    assert ds.count_sample_tags()["fixme"] == 3 and "tagged 'fixme'" in err
    # the tagged samples are a view the fine-tune takes as it is
    code, _ = _run_main(["rank", "--name", ds.name, "--view-tag", "fixme", "--top", "9", "--tag", "fixme2"])
    assert code == 0 and ds.count_sample_tags()["fixme2"] == 3


def test_rank_says_what_is_missing_in_one_line(fo_env, scenes, pool, capsys):
    from app.fiftyone_bridge import BridgeError
    from app.fiftyone_bridge.selection import rank_samples

    bare = _import(fo_env, scenes, "bare")  # ground truth only, no predictions
    with pytest.raises(BridgeError, match="run the model first"):
        rank_samples(bare, by="uncertainty")
    code, _ = _run_main(["rank", "--name", bare.name])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "predict" in err[0]
    with pytest.raises(BridgeError, match="unknown ranking"):
        rank_samples(pool, by="loss")
    with pytest.raises(BridgeError, match="at least 1"):
        rank_samples(pool, top=0)
    with pytest.raises(SystemExit) as e:
        _run_main(["rank", "--name", pool.name, "--top", "0"])
    assert e.value.code == 2


def test_rank_by_brain_uniqueness_and_mistakenness_offline(pool, monkeypatch):
    """FiftyOne Brain ranks with our backbone's embeddings: its default model (a download) is never loaded."""
    import fiftyone.brain.internal.models as fbm

    from app.fiftyone_bridge.selection import image_embeddings, rank_samples

    def no_download(*args, **kwargs):
        raise AssertionError("FiftyOne Brain tried to load a model")

    monkeypatch.setattr(fbm, "load_model", no_download)
    ds = pool
    emb = image_embeddings(ds.values("filepath")[:2])
    assert emb.shape[0] == 2 and emb.shape[1] > 0 and emb.std() > 0
    for by in ("uniqueness", "mistakenness"):
        report = rank_samples(ds, by=by, top=2, tag=f"by-{by}")
        scores = dict(zip(ds.values("id"), ds.values(f"rank_{by}")))
        assert all(s is not None and 0.0 <= s <= 1.0 for s in scores.values()), scores
        assert [t["id"] for t in report.top] == sorted(scores, key=scores.get, reverse=True)[:2]
        assert ds.count_sample_tags()[f"by-{by}"] == 2


def test_rank_operator_in_the_app(pool, fo_env):
    import fiftyone.operators as foo

    from app.fiftyone_bridge import PLUGIN_NAME
    from app.fiftyone_bridge.core import install_plugin

    install_plugin()
    assert f"{PLUGIN_NAME}/rank_samples" in {op.uri for op in foo.list_operators()}
    ds = pool
    result = _execute(f"{PLUGIN_NAME}/rank_samples", ctx={"dataset": ds, "view": ds.view(),
                                                           "params": {"by": "uncertainty", "top": 2, "tag": "op"}})
    assert result.error is None, result.error
    out = result.result
    assert out["summary"].startswith("2 of 6 samples tagged 'op', highest uncertainty first")
    assert out["field"] == "rank_uncertainty" and ds.count_sample_tags()["op"] == 2


# --------------------------------------------------------------------------------------------
# part 5: the fine-tune form, the minimum, the runner


def _form(ds, view=None, selected=(), params=None):
    """The fine-tune operator's form as the App resolves it (``resolve_type``: FiftyOne's own target input
    included), as {name: property}."""
    from fiftyone.operators.executor import ExecutionContext

    from app.fiftyone_plugin import FineTune

    ctx = ExecutionContext({"dataset_name": ds.name, "view": (view if view is not None else ds.view())._serialize(),
                            "selected": list(selected), "params": dict(params or {})})
    return FineTune().resolve_type(ctx, "inputs").type.properties


def test_form_says_which_samples_and_how_many_the_view_by_default(pool):
    ds = pool
    one = ds.first().id
    form = _form(ds, selected=[one])  # one sample still selected: the target stays the whole dataset
    assert form["view_target"].default == "DATASET"
    assert form["target"].view.label == ("Fine-tune on the whole dataset: 6 samples (selection: 1 sample, not used "
                                         "unless you choose it above)")
    choices = {c.value: c.description for c in form["view_target"].view.choices}
    assert choices["SELECTED_SAMPLES"] == "Only the selected samples (1 sample)"
    assert choices["DATASET"] == "Fine-tune on the whole dataset (6 samples)"
    assert form["plan"].view.label == "Training on 5 of 6 samples, 1 held out to measure the gain"
    assert "confirm_few" not in form and "refused" not in form

    view = ds.limit(4)
    form = _form(ds, view=view, selected=[one])
    assert form["view_target"].default == "CURRENT_VIEW"
    assert form["target"].view.label.startswith("Fine-tune on the current view: 4 samples (selection: 1 sample")
    assert form["plan"].view.label == "Training on 3 of 4 samples, 1 held out to measure the gain"


def test_form_refuses_fewer_than_the_minimum_unless_confirmed(pool):
    ds = pool
    one = ds.first().id
    form = _form(ds, selected=[one], params={"view_target": "SELECTED_SAMPLES"})
    assert form["target"].view.label == "Fine-tune on the selection: 1 sample"
    assert form["plan"].view.label == "Training on 1 sample, none held out"
    assert form["refused"].invalid and type(form["refused"].view).__name__ == "Error"
    assert "Fewer than 4 samples" in form["refused"].view.label
    assert form["confirm_few"].default is False
    form = _form(ds, selected=[one], params={"view_target": "SELECTED_SAMPLES", "confirm_few": True})
    assert "refused" not in form and form["confirm_few"].type.__class__.__name__ == "Boolean"
    form = _form(ds, view=ds.limit(3))
    assert form["refused"].invalid and form["target"].view.label == "Fine-tune on the current view: 3 samples"
    # the minimum follows the run's recipe (--recipe FILE in the trainer options)
    assert "refused" not in _form(ds, view=ds.limit(4))


def test_start_refuses_few_samples_and_uses_the_apps_runner(pool, tmp_path, monkeypatch, capsys):
    """Under the minimum nothing is exported or started unless confirmed; a run starts the app's own command
    (``app.finetune.finetune_command`` through ``FineTuneRun.launch``, the default recipe)."""
    from app.fiftyone_bridge import BridgeError
    from app.fiftyone_bridge.finetune import list_runs, start_finetune
    from app.finetune import FineTuneRun, finetune_command

    ds = pool
    with pytest.raises(BridgeError, match="only 1 sample to fine-tune on, fewer than 4"):
        start_finetune(ds.limit(1), tmp_path / "e1", tmp_path / "r1")
    assert not (tmp_path / "e1").exists() and not (tmp_path / "r1").exists()
    code, _ = _run_main(["finetune", "--name", ds.name, "--limit", "2", "--export-out", str(tmp_path / "e2"),
                         "--run-dir", str(tmp_path / "r2")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and err[0] == "fine-tune: training on 2 samples, none held out"
    assert err[-1].startswith("error: only 2 samples") and "--confirm-few" in err[-1]
    assert not (tmp_path / "e2").exists()

    started = []

    def start(cls, command, run_dir, cwd=None, env=None):  # the launch as the app does it, no process
        started.append(command)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        return cls(run_dir, os.getpid(), command)

    monkeypatch.setattr(FineTuneRun, "start", classmethod(start))
    record = start_finetune(ds.limit(2), tmp_path / "e3", tmp_path / "r3", max_minutes=3, device="cpu",
                            confirm_few=True)
    assert record.n_images == 2 and record.plan == "training on 2 samples, none held out"
    expected = finetune_command("builtin", (tmp_path / "e3").resolve(), (tmp_path / "r3").resolve(), max_minutes=3,
                                device="cpu")
    assert started == [expected] and record.command == expected
    assert expected[1:3] == ["-m", "training.finetune"] and "--recipe" not in expected  # the app's recipe
    assert list_runs(ds)[-1]["run_dir"] == record.run_dir
    code, out = _run_main(["finetune", "--name", ds.name, "--export-out", str(tmp_path / "e4"), "--run-dir",
                           str(tmp_path / "r4"), "--max-minutes", "2", "--device", "cpu"])
    assert code == 0 and json.loads(out)["n_images"] == 6 and "training.finetune" in started[-1]


def test_held_out_samples_never_train():
    """The runner's split: held-out images come from the corrected ones, are never in the training set, and
    the plan the bridge states is that split."""
    from app.fiftyone_bridge.finetune import training_plan
    from training.finetune_data import holdout_split

    for n in range(1, 30):
        train, held, untouched = holdout_split(["edited"] * n, 0.2, 4, seed=0)
        assert not set(train) & set(held) and sorted(train + held) == list(range(n)) and untouched == []
        assert (len(held) >= 1) == (n >= 4)
        if held:
            assert training_plan(n)[0] == f"training on {len(train)} of {n} samples, {len(held)} held out to " \
                                          "measure the gain"
    status = ["edited", "untouched", "reviewed", "edited", "untouched", "edited", "edited"]
    train, held, untouched = holdout_split(status, 0.2, 4, seed=3)
    assert untouched == [1, 4] and not {1, 4} & set(held) and not set(train) & set(held)


# --------------------------------------------------------------------------------------------
# part 5: status and compare, from a run folder as the runner writes it


def _run_folder(ds, tmp_path: Path, name: str, progress: dict, result: dict | None, exit_code: int | None,
                pid: int, exported: list[str], weights: bool = False) -> dict:
    """A run recorded on ``ds`` whose folder holds what the runner writes (progress, result, exit code,
    model/), so that status and compare read it as they read a real one."""
    from app.fiftyone_bridge.finetune import RUNS_KEY, RunRecord

    run = tmp_path / name
    run.mkdir()
    (run / "progress.json").write_text(json.dumps(progress))
    if result is not None:
        (run / "result.json").write_text(json.dumps(result))
    if exit_code is not None:
        (run / "exit_code").write_text(f"{exit_code}\n")
    if weights:
        from m2f_core.checkpoint import load_model, save_model

        save_model(load_model(), run / "model")
    record = RunRecord(run_dir=str(run), pid=pid, command=["python", "-m", "training.finetune"],
                       export_dir=str(tmp_path / "export"), weights="builtin", started="now",
                       n_images=len(exported), plan="training on 4 of 5 samples, 1 held out to measure the gain",
                       sample_ids=exported).to_dict()
    info = ds.info
    info.setdefault(RUNS_KEY, []).append(record)
    ds.info = info
    ds.save()
    return record


def test_status_says_n_of_total_time_left_and_the_held_out_score(pool, tmp_path, capsys):
    from app.fiftyone_bridge import PLUGIN_NAME
    from app.fiftyone_bridge.core import install_plugin
    from app.fiftyone_bridge.finetune import RUNS_KEY, run_status

    ds = pool
    info = ds.info
    info.pop(RUNS_KEY, None)
    ds.info = info
    ds.save()
    curve = [{"iter": 0, "PQ": 16.7}, {"iter": 10, "PQ": 30.2}, {"iter": 20, "PQ": 28.9}]
    running = _run_folder(ds, tmp_path, "running", {"phase": "training", "iteration": 23, "total": 100,
                                                    "eta_s": 95.0, "elapsed_s": 40.0, "val": curve,
                                                    "best": {"iter": 10, "value": 30.2}},
                          None, None, os.getpid(), ds.limit(5).values("id"))  # a live process: running
    st = run_status(running)
    assert st["state"] == "running" and (st["iteration"], st["total"]) == (23, 100) and st["time_left_s"] == 95.0
    assert st["held_out_metric"] == {"metric": "PQ", "start": 16.7, "latest": 28.9, "latest_iter": 20, "kept": 30.2,
                                     "kept_iter": 10}
    assert st["line"] == ("iteration 23 / 100, about 1 min 35 s left; training on 4 of 5 samples, 1 held out to "
                          "measure the gain; held-out PQ 16.7 at the start, 28.9 at iteration 20 (kept: 30.2 at "
                          "iteration 10)")
    assert st["summary"].splitlines()[0] == st["line"]

    result = {"before": {"PQ": 16.7}, "after": {"PQ": 16.7}, "held_out": ["000004.jpg"], "train_images": 4,
              "recommendation": "keep the current model", "best_iteration": 0}
    done = _run_folder(ds, tmp_path, "done", {"phase": "done", "iteration": 40, "total": 40, "eta_s": 0.0,
                                              "val": [{"iter": 0, "PQ": 16.7}, {"iter": 40, "PQ": 12.0}],
                                              "best": {"iter": 0, "value": 16.7}},
                       result, 0, 999999, ds.limit(5).values("id"))
    st = run_status(done)
    assert st["state"] == "finished" and st["time_left_s"] == 0.0
    assert st["line"] == ("iteration 40 / 40, finished; trained on 4 sample(s), 1 held out; held-out PQ 16.7 at the "
                          "start, 12.0 at iteration 40 (kept: the starting weights)")

    code, out = _run_main(["status", "--name", ds.name])
    err = capsys.readouterr().err.splitlines()
    assert code == 0 and [json.loads(out)[i]["line"] for i in (0, 1)] == [run_status(running)["line"], st["line"]]
    assert err == [f"{running['run_dir']}: {run_status(running)['line']}", f"{done['run_dir']}: {st['line']}"]
    install_plugin()
    report = _execute(f"{PLUGIN_NAME}/finetune_status", ctx={"dataset": ds, "view": ds.view(),
                                                             "params": {}}).result["report"]
    assert "about 1 min 35 s left" in report and "held-out PQ 16.7 at the start" in report
    assert "iteration 40 / 40, finished" in report

    few = _run_folder(ds, tmp_path, "few", {"phase": "loading", "iteration": 0, "total": 100}, None, None,
                      os.getpid(), ds.limit(2).values("id"))
    few["plan"] = "training on 2 samples, none held out"
    assert run_status(few)["line"] == ("iteration 0 / 100, time left not known yet; training on 2 samples, none "
                                       "held out; no held-out samples: the gain is not measured")


def test_compare_reports_groups_apart_and_says_when_held_out_got_worse(pool, tmp_path, capsys):
    """Before: the ground truth itself (PQ 100); after: the built-in model on shifted scenes. The held-out
    and unseen samples got worse, and every output says so, apart from the trained-on samples."""
    from app.fiftyone_bridge import PLUGIN_NAME
    from app.fiftyone_bridge.core import install_plugin
    from app.fiftyone_bridge.finetune import compare_finetuned, got_worse

    ds = pool
    for sample in ds.iter_samples(autosave=True):  # "before": the ground truth as predictions
        for kind in ("panoptic", "instances", "semantic"):
            label = sample[f"gt_{kind}"]
            if label is not None:
                label = label.copy()
                for d in getattr(label, "detections", []):
                    d.confidence = 1.0
                sample[f"oracle_{kind}"] = label
    targets = dict(ds.mask_targets)
    targets["oracle_semantic"] = targets["gt_semantic"]
    ds.mask_targets = targets
    ds.save()
    exported = ds.limit(5).values("id")
    held_name = Path(ds.select(exported[4]).first().filepath).name
    result = {"before": {"PQ": 100.0}, "after": {"PQ": 100.0}, "held_out": [held_name], "train_images": 4,
              "recommendation": "adopt"}
    record = _run_folder(ds, tmp_path, "finished", {"phase": "done", "iteration": 2, "total": 2}, result, 0,
                         999999, exported, weights=True)

    out = compare_finetuned(ds, run_dir=record["run_dir"], prefix="ftsel", before="oracle", device="cpu",
                            progress=False)
    groups = out["groups"]
    assert {k: g["samples"] for k, g in groups.items()} == {"trained": 4, "held_out": 1, "unseen": 1}
    assert groups["held_out"]["before"]["panoptic"]["PQ"] == pytest.approx(100.0)
    assert groups["held_out"]["after"]["panoptic"]["PQ"] < 100.0
    assert [line.split(":")[0] for line in out["worse"]] == ["held-out samples (1)", "unseen samples (1)",
                                                             "held-out + unseen (2)"]
    assert out["worse"][0].startswith("held-out samples (1): PQ 100.0 -> ")
    assert ds.info["m2f_comparisons"]["ftsel"]["worse"] == out["worse"]
    assert got_worse({"groups": {"held_out": {"samples": 1, "before": {"panoptic": {"PQ": 50.0}},
                                              "after": {"panoptic": {"PQ": 60.0}}}}}) == []

    # the CLI and the operator on the two samples not trained on (two predictions each, not six)
    not_trained = [exported[4], ds.skip(5).first().id]
    ds.select(not_trained).tag_samples("not-trained")
    code, shown = _run_main(["compare", "--name", ds.name, "--view-tag", "not-trained", "--run-dir", record["run_dir"],
                             "--prefix", "ftsel2", "--before", "oracle", "--device", "cpu"])
    err = capsys.readouterr().err
    shown = json.loads(shown)
    assert code == 0 and shown["worse"] and {"trained", "held_out", "unseen"} <= set(shown)
    assert (shown["trained"]["samples"], shown["held_out"]["samples"], shown["unseen"]["samples"]) == (0, 1, 1)
    assert "warning: got worse on held-out samples (1): PQ 100.0 -> " in err and "keep the current one" in err

    install_plugin()
    from fiftyone.operators.executor import ExecutionContext

    from app.fiftyone_plugin import LoadFinetuned

    res = _execute(f"{PLUGIN_NAME}/load_finetuned", ctx={
        "dataset": ds, "view": ds.select(not_trained), "params": {"run_dir": record["run_dir"], "prefix": "ftsel3",
                                                     "before": "oracle", "device": "cpu"}}).result
    assert res["worse"].startswith("held-out samples (1): PQ 100.0 -> ")
    # what the App passes to resolve_output after execute
    ctx = ExecutionContext({"dataset_name": ds.name, "view": ds.view()._serialize(), "params": {}, "results": res})
    outputs = LoadFinetuned().resolve_output(ctx).type.properties
    assert list(outputs)[0] == "worse" and type(outputs["worse"].view).__name__ == "Error"
    assert "keep the current model" in outputs["worse"].view.label
