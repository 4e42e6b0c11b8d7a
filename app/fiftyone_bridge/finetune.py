"""Fine-tune on a FiftyOne view, follow the run, and measure it on samples it never trained on.

``start_finetune`` exports the view as a corrections folder and starts the project's one few-shot
runner, the same as the Gradio app's (``app.finetune.FineTuneRun.launch``: ``training.finetune``
detached in its own session, so it outlives the App or the command that started it; one process on
the CPU or one GPU, ``torchrun`` over the GPUs when there are several; its log ``<run dir>/train.log``,
its exit status ``<run dir>/exit_code``). The run holds out a fifth of the exported samples to
validate itself (none under four samples), keeps the best weights and stops at its time budget.
Fewer samples than that are refused unless confirmed (``check_enough``): a run that cannot measure
itself must not start by accident. ``run_status`` says iteration n / N, time left and the held-out
score in one line. Each run is recorded in ``dataset.info["m2f_finetune_runs"]`` (run dir, pid, command, export,
weights, the ids of the exported samples).

``compare_finetuned`` predicts with the run's recommended weights and evaluates before / after
separately on the samples the run trained on, on its held-out samples and on the samples it never saw
(not exported). The headline is held-out + unseen: a gain measured on training samples is no gain,
and a held-out or unseen score that fell is said in words (``got_worse``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fiftyone as fo

from app.finetune import FineTuneRun, read_json, recommended_weights

from . import FINETUNED, GT, PRED, BridgeError
from .core import check_prefix, export_view, predict_view

__all__ = ["GROUPS", "RunRecord", "check_enough", "compare_finetuned", "got_worse", "headline", "held_out_metric",
           "list_runs", "min_samples", "progress_line", "run_status", "split_field", "start_finetune", "stop_run",
           "training_plan"]

RUNS_KEY = "m2f_finetune_runs"
COMPARISONS_KEY = "m2f_comparisons"
# the comparison's groups, in the value of the ``<prefix>_split`` sample field
GROUPS = ("trained", "held_out", "unseen")


@dataclass
class RunRecord:
    """One fine-tuning run as stored on the dataset."""

    run_dir: str
    pid: int
    command: list[str]
    export_dir: str
    weights: str
    started: str
    n_images: int
    plan: str
    sample_ids: list[str] = field(default_factory=list)  # the exported samples (the trained and held-out ones)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _recipe(extra: Sequence[str] = ()):
    """The recipe a run will use: ``--recipe FILE`` among the runner's options, else the default."""
    from training.finetune_recipe import FinetuneRecipe

    args = list(extra)
    if "--recipe" in args and args.index("--recipe") + 1 < len(args):
        try:
            return FinetuneRecipe.from_json(args[args.index("--recipe") + 1])
        except (OSError, ValueError, TypeError):  # the runner reports a bad recipe file itself
            pass
    return FinetuneRecipe()


def min_samples(extra: Sequence[str] = ()) -> int:
    """The fewest samples a run starts on without an explicit confirmation: the runner's own threshold for
    holding any out (below it a run cannot measure whether it helps)."""
    return int(_recipe(extra).min_images_for_holdout)


def check_enough(n: int, confirmed: bool = False, extra: Sequence[str] = ()) -> None:
    """Refuse an empty view, and fewer than ``min_samples`` samples unless ``confirmed``: a fine-tune on one
    image left selected by chance must not start unnoticed."""
    if n < 1:
        raise BridgeError("the view is empty: nothing to fine-tune on (choose a view with at least one sample)")
    least = min_samples(extra)
    if n < least and not confirmed:
        noun = "sample" if n == 1 else "samples"
        raise BridgeError(f"only {n} {noun} to fine-tune on, fewer than {least}: nothing can be held out to measure "
                          "the gain; choose a larger view, or confirm (--confirm-few, or the form's checkbox)")


def training_plan(n: int, val: str | None = None, extra: Sequence[str] = ()) -> tuple[str, str | None]:
    """(what a run on ``n`` exported samples does, a warning or None), stated before it starts.

    Uses the runner's own split rule (``training.finetune_data.holdout_split`` with the run's recipe:
    ``--recipe FILE`` in ``extra``, else the default), so the numbers said here are those of the run.
    """
    from training.finetune_data import holdout_split

    if n < 1:
        return "nothing to train on: the view is empty", "the view is empty"
    noun = "sample" if n == 1 else "samples"
    if val:
        return f"training on {n} {noun}, validated on {val}", None
    recipe = _recipe(extra)
    train, held, _ = holdout_split(["edited"] * n, recipe.holdout_fraction, recipe.min_images_for_holdout,
                                   recipe.seed)
    if held:
        return f"training on {len(train)} of {n} {noun}, {len(held)} held out to measure the gain", None
    warning = (f"only {n} {noun}: fewer than {recipe.min_images_for_holdout}, so nothing can be held out and the "
               "run cannot tell whether it helps; measure it afterwards on samples it did not train on (compare)")
    return f"training on {n} {noun}, none held out", warning


def start_finetune(view: fo.Dataset | fo.DatasetView, export_dir: str | Path, run_dir: str | Path,
                   weights: str | None = None, max_minutes: float = 10.0, max_iter: int | None = None,
                   val: str | None = None, device: str | None = None, prefix: str = GT,
                   extra: Sequence[str] = (), overwrite_export: bool = False, confirm_few: bool = False) -> RunRecord:
    """Export the view's ``prefix`` labels to ``export_dir`` and start the few-shot runner on it, detached.

    ``weights`` (default: the weights of the dataset's ``pred`` predictions, else the built-in model)
    are the starting point; ``max_minutes`` is the run's time budget, validation included; ``max_iter``
    caps the iterations (default: from the number of samples). ``extra``: more ``training.finetune``
    options (``--recipe FILE``...). Fewer than ``min_samples()`` samples are refused unless ``confirm_few``.
    Returns at once; the run is recorded on the dataset.
    """
    ds = view._dataset if isinstance(view, fo.DatasetView) else view
    n = len(view)
    check_enough(n, confirm_few, extra)
    if max_minutes <= 0:
        raise BridgeError(f"the time budget must be > 0 minutes, got {max_minutes}")
    run_dir = Path(run_dir).expanduser().resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise BridgeError(f"{run_dir} exists and is not empty: choose another run directory")
    if weights is None:
        weights = ds.info.get("m2f", {}).get("predictions", {}).get(PRED, {}).get("weights")
    plan, _ = training_plan(n, val, extra)
    sample_ids = [str(i) for i in view.values("id")]
    export = export_view(view, export_dir, prefix=prefix, overwrite=overwrite_export).resolve()
    run = FineTuneRun.launch(weights or "builtin", export, run_dir, max_minutes=max_minutes, max_iter=max_iter,
                             val=val, device=device, extra=extra)
    record = RunRecord(run_dir=str(run_dir), pid=run.pid, command=run.command, export_dir=str(export),
                       weights=str(weights or "builtin"), started=time.strftime("%Y-%m-%d %H:%M:%S"), n_images=n,
                       plan=plan, sample_ids=sample_ids)
    info = ds.info
    info.setdefault(RUNS_KEY, []).append(record.to_dict())
    ds.info = info
    ds.save()
    return record


def list_runs(ds: fo.Dataset) -> list[dict[str, Any]]:
    """The runs recorded on a dataset, oldest first."""
    return list(ds.info.get(RUNS_KEY, []))


def _find_run(ds: fo.Dataset, run_dir: str | Path | None) -> dict[str, Any]:
    runs = list_runs(ds)
    if not runs:
        raise BridgeError(f"dataset {ds.name!r} has no fine-tuning run: start one first")
    if run_dir is None:
        return runs[-1]
    wanted = Path(run_dir).expanduser().resolve()
    for record in reversed(runs):
        if Path(record["run_dir"]) == wanted:
            return record
    raise BridgeError(f"{wanted} is not a run recorded on dataset {ds.name!r}: without its record the trained "
                      "samples cannot be told from the others")


def run_status(record: dict[str, Any]) -> dict[str, Any]:
    """What a run folder says: state, iteration n / N, seconds left, the held-out score (start, latest, kept)
    and its curve, the result (before / after on the held-out samples), the recommended weights, and a text
    summary whose first line says all of it."""
    st = FineTuneRun(record["run_dir"], int(record["pid"])).status()
    p = st.progress
    weights = st.weights
    result = st.result
    trained = result.get("train_images") if result else None
    return {"run_dir": str(st.run_dir), "state": st.state, "returncode": st.returncode,
            "phase": p.get("phase"), "iteration": p.get("iteration", 0), "total": p.get("total"),
            "eta_s": p.get("eta_s"), "time_left_s": _time_left(st), "elapsed_s": p.get("elapsed_s"),
            "held_out_metric": held_out_metric(p), "curve": p.get("val") or [],
            "samples": record.get("n_images"), "plan": record.get("plan"), "trained_on": trained,
            "held_out": (result or {}).get("held_out"), "result": result,
            "weights": str(weights) if weights is not None else None,
            "line": progress_line(st, record), "summary": _summary_text(st, record),
            "log_tail": st.log_tail.splitlines()[-5:]}


def held_out_metric(progress: dict[str, Any]) -> dict[str, Any] | None:
    """The held-out score of a run from its ``progress.json``: at the start, at the latest validation and
    of the weights it keeps so far (the runner's selection); None before the first validation."""
    curve = [c for c in progress.get("val") or [] if isinstance(c, dict)]
    key = next((k for k in ("PQ", "AP", "mIoU") if curve and curve[0].get(k) is not None), None)
    if key is None:
        return None
    best = progress.get("best") or {}
    return {"metric": key, "start": curve[0][key], "latest": curve[-1].get(key), "latest_iter": curve[-1].get("iter"),
            "kept": best.get("value"), "kept_iter": best.get("iter")}


def _time_left(st) -> float | None:
    """Seconds left of a running run (None while not known yet), 0 once it ended."""
    return st.progress.get("eta_s") if st.state == "running" else 0.0


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def progress_line(st, record: dict[str, Any]) -> str:
    """One line: iteration n / N, time left, what it trains on, the held-out score (start, latest, kept)."""
    p = st.progress
    parts = [f"iteration {p.get('iteration', 0)} / {p.get('total') or '?'}"]
    if st.state == "running":
        eta = p.get("eta_s")
        parts[0] += f", about {_duration(eta)} left" if eta is not None else ", time left not known yet"
    else:
        parts[0] += f", {st.state}"
    if st.result:
        n_held = len(st.result.get("held_out") or [])
        parts.append(f"trained on {st.result.get('train_images')} sample(s), {n_held} held out")
    elif record.get("plan"):
        parts.append(str(record["plan"]))
    m = held_out_metric(p)
    if m is None:
        nothing_held = "none held out" in str(record.get("plan")) or (st.result and not st.result.get("held_out"))
        parts.append("no held-out samples: the gain is not measured" if nothing_held
                     else "held-out score: not measured yet" if st.state == "running" else "no held-out score")
    else:
        text = f"held-out {m['metric']} {m['start']:.1f} at the start"
        if m["latest_iter"]:
            text += f", {m['latest']:.1f} at iteration {m['latest_iter']}"
        if m["kept"] is not None and m["kept_iter"]:
            text += f" (kept: {m['kept']:.1f} at iteration {m['kept_iter']})"
        elif m["latest_iter"]:
            text += " (kept: the starting weights)"
        parts.append(text)
    return "; ".join(parts)


def _summary_text(st, record: dict[str, Any]) -> str:
    """The progress line, then the runner's summary (state, curve, before / after, the recommendation)."""
    return progress_line(st, record) + "\n" + st.summary()


def stop_run(record: dict[str, Any], timeout: float = 60.0) -> None:
    """Cancel a run: the runner finishes its step and still writes ``model/`` (the best weights so far)
    and ``result.json`` (SIGTERM; SIGKILL after ``timeout`` seconds)."""
    FineTuneRun(record["run_dir"], int(record["pid"])).cancel(timeout=timeout)


# --------------------------------------------------------------------------------------------
# before / after, trained-on samples apart


def split_field(prefix: str) -> str:
    """The sample field saying which group a sample was in for ``prefix``'s comparison."""
    return f"{check_prefix(prefix)}_split"


def _groups(view: fo.Dataset | fo.DatasetView, record: dict[str, Any],
            result: dict[str, Any] | None) -> dict[str, list[str]]:
    """The view's sample ids by group: trained on, held out (exported, in ``result.json``'s held_out),
    unseen (not exported). Without a ``result.json`` every exported sample counts as trained."""
    ids = [str(i) for i in view.values("id")]
    paths = view.values("filepath")
    held_names = set((result or {}).get("held_out") or [])
    exported = set(record.get("sample_ids") or [])
    if not exported:  # a record without ids: match the export's image names, as export_view named them
        images = Path(record["export_dir"]) / "images"
        names = {p.name for p in images.iterdir()} if images.is_dir() else set()
        exported = {i for i, p in zip(ids, paths) if Path(p).name in names}
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    for sample_id, path in zip(ids, paths):
        if sample_id not in exported:
            groups["unseen"].append(sample_id)
        elif Path(path).name in held_names:
            groups["held_out"].append(sample_id)
        else:
            groups["trained"].append(sample_id)
    return groups


def compare_finetuned(view: fo.Dataset | fo.DatasetView, run_dir: str | Path | None = None,
                      prefix: str = FINETUNED, before: str = PRED, device: str | None = None,
                      progress: bool = True, callback=None) -> dict[str, Any]:
    """Predict the view with a run's recommended weights into ``prefix`` fields; evaluate before / after
    per group: ``trained`` (what the run trained on), ``held_out`` (exported, held out by the run) and
    ``unseen`` (not exported).

    The ``headline`` is held-out + unseen together (None, with a ``warning``, when the view holds only
    samples the run trained on); ``worse`` lists, in words, each of held-out, unseen and the headline whose
    score fell (empty when none did): a gain on the trained-on samples never hides it. Each sample's group
    goes into the ``<prefix>_split`` field (filter the App by it); the numbers into
    ``dataset.info["m2f_comparisons"][prefix]``. ``run_dir`` defaults to the dataset's latest recorded run.
    ``before`` is None where the view has no ``before`` predictions.
    """
    from .evaluate import SUMMARY_KEY, evaluate_view

    check_prefix(prefix)
    ds = view._dataset if isinstance(view, fo.DatasetView) else view
    record = _find_run(ds, run_dir)
    run = FineTuneRun(record["run_dir"], int(record["pid"]))
    weights = recommended_weights(run.run_dir)
    if weights is None:
        state = run.status().state
        raise BridgeError(f"{run.run_dir}: no weights yet (the run is {state}; weights are written when it ends or "
                          f"is stopped; see its train.log)")
    result = read_json(run.run_dir / "result.json")
    groups = _groups(view, record, result)

    predict_view(view, weights=str(weights), prefix=prefix, device=device, progress=progress, callback=callback)
    has_before = ds.has_field(f"{before}_panoptic") or ds.has_field(f"{before}_semantic")
    field_name = split_field(prefix)
    if ds.has_sample_field(field_name):
        ds.clear_sample_field(field_name)  # the groups of this comparison only
    else:
        ds.add_sample_field(field_name, fo.StringField)
    out: dict[str, Any] = {"run_dir": str(run.run_dir), "weights": str(weights), "split_field": field_name,
                           "run_result": {k: (result or {}).get(k) for k in ("before", "after", "held_out",
                                                                             "train_images", "recommendation")},
                           "groups": {}, "headline": None, "warning": None}
    for name in GROUPS:
        ids = groups[name]
        if ids:
            ds.select(ids).set_values(field_name, [name] * len(ids))
        out["groups"][name] = _evaluate_group(ds, ids, prefix, before, has_before, progress)
    not_trained = groups["held_out"] + groups["unseen"]
    info = ds.info
    info.get(SUMMARY_KEY, {}).pop(prefix, None)  # never leave a summary that mixes trained samples in
    ds.info = info
    ds.save()
    if not_trained:
        # the stored summary and FiftyOne's evaluation panels: the samples the run did not train on
        sub = ds.select(not_trained)
        after = evaluate_view(sub, pred=prefix, progress=progress)
        out["headline"] = {"group": "held_out + unseen", "samples": len(not_trained),
                           "before": evaluate_view(sub, pred=before, progress=progress, store=False,
                                                   fiftyone_eval=False) if has_before else None,
                           "after": after}
    else:
        out["warning"] = (f"every sample of the view was trained on ({len(groups['trained'])}): before / after on "
                          "them says nothing about new images; compare on samples the run did not train on")
    if groups["trained"] and not_trained:
        out["note"] = (f"{len(groups['trained'])} trained-on sample(s) are reported apart and left out of the "
                       "headline")
    out["worse"] = got_worse(out)
    info = ds.info
    info.setdefault(COMPARISONS_KEY, {})[prefix] = {
        "run_dir": out["run_dir"], "weights": out["weights"], "before": before, "split_field": field_name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "warning": out["warning"], "worse": out["worse"],
        "groups": {name: {"samples": g["samples"], "before": headline(g["before"]), "after": headline(g["after"])}
                   for name, g in out["groups"].items()},
        "headline": None if out["headline"] is None else {
            "group": out["headline"]["group"], "samples": out["headline"]["samples"],
            "before": headline(out["headline"]["before"]), "after": headline(out["headline"]["after"])}}
    ds.info = info
    ds.save()
    return out


def _evaluate_group(ds: fo.Dataset, ids: list[str], prefix: str, before: str, has_before: bool,
                    progress: bool) -> dict[str, Any]:
    """Before / after on one group (its summaries are not stored on the dataset)."""
    from .evaluate import evaluate_view

    if not ids:
        return {"samples": 0, "before": None, "after": None}
    sub = ds.select(ids)
    return {"samples": len(ids),
            "before": evaluate_view(sub, pred=before, progress=progress, store=False, fiftyone_eval=False)
            if has_before else None,
            "after": evaluate_view(sub, pred=prefix, progress=progress, store=False, fiftyone_eval=False)}


_GROUP_WORDS = {"held_out": "held-out samples", "unseen": "unseen samples"}


def got_worse(comparison: dict[str, Any]) -> list[str]:
    """One line per group the run did not train on (held out, unseen, and the two together) whose score fell,
    e.g. ``held-out samples (5): PQ 84.6 -> 78.8 (-5.8)``; the first metric of PQ, mIoU, AP both sides have."""
    rows = [(_GROUP_WORDS[name], comparison["groups"][name]) for name in ("held_out", "unseen")
            if comparison["groups"].get(name, {}).get("samples")]
    top = comparison.get("headline")
    if top is not None and len(rows) > 1:
        rows.append(("held-out + unseen", top))
    lines = []
    for words, group in rows:
        before, after = headline(group.get("before")), headline(group.get("after"))
        key = next((k for k in ("PQ", "mIoU", "AP") if before[k] is not None and after[k] is not None), None)
        if key is not None and after[key] < before[key]:
            lines.append(f"{words} ({group['samples']}): {key} {before[key]:.1f} -> {after[key]:.1f} "
                         f"({after[key] - before[key]:+.1f})")
    return lines


def headline(summary: dict[str, Any] | None) -> dict[str, float | None]:
    """PQ, mIoU and AP of an evaluation summary (None where not evaluated)."""
    if not summary:
        return {"PQ": None, "mIoU": None, "AP": None}
    return {"PQ": summary.get("panoptic", {}).get("PQ"), "mIoU": summary.get("semantic", {}).get("mIoU"),
            "AP": summary.get("instance", {}).get("AP")}
