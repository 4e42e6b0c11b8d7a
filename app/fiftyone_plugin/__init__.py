"""FiftyOne plugin ``@m2f/workbench``: the bridge's actions as operators in the App (press ``` ` ``` to list them).

- ``run_model``: predictions of the model (panoptic, instance, semantic, uncertainty) on the target view;
- ``evaluate``: per-sample and dataset PQ / mIoU / mask AP (sort the grid by ``pred_pq`` to see the worst);
- ``open_in_editor``: a link that opens the selected sample, with its labels, in the Gradio editor;
- ``finetune``: export the view (the whole view unless the selection is chosen; the number of samples is
  said before starting) and start the few-shot runner ``training.finetune`` detached, with a time budget;
- ``finetune_status``: iteration n / N, time left, the held-out curve and before / after of each run;
- ``pull_edits``: what was saved in the Gradio editor for samples opened from here, back as ``edited_*``
  fields (tagged ``edited``, with who / when);
- ``load_finetuned``: predictions of a run's recommended weights into new fields, before / after on the
  samples it trained on, its held-out samples and the unseen ones apart (the headline: not trained on;
  in red when the held-out or unseen samples got worse);
- ``rank_samples``: choose what to correct: rank by the model's uncertainty (or FiftyOne Brain's
  uniqueness / mistakenness) and tag the top N (``app.fiftyone_bridge.selection``).

Thin on purpose: every operator calls ``app.fiftyone_bridge``. Install with
``python -m app.fiftyone_bridge plugin`` (a link in FiftyOne's plugins folder; the App command does it).
Settings: ``M2F_EDITOR_URL`` (default http://127.0.0.1:7860), ``M2F_CORRECTIONS_DIR`` (default
``./datasets/corrections``, the editor's ``--corrections-dir``), ``M2F_RUNS_DIR`` (``./runs``); the current
folder is the one the bridge's ``app`` command ran in (``app.workspace``, shared with the CLI).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import fiftyone.operators as foo
import fiftyone.operators.types as types

# The App server runs from fiftyone/server, which has an app.py of its own: our repository goes first.
_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path[:1]:
    sys.path.insert(0, str(_REPO))

from app.fiftyone_bridge import EDITED, FINETUNED, GT, PRED  # noqa: E402
from app.workspace import corrections_dir, runs_dir  # noqa: E402

logger = logging.getLogger(__name__)


def _setting(name: str, default: Path | str) -> str:
    return os.environ.get(name) or str(default)


def editor_url() -> str:
    return _setting("M2F_EDITOR_URL", "http://127.0.0.1:7860")


def _progress(ctx, label: str):
    def report(done: int, total: int) -> None:
        ctx.set_progress(progress=done / max(total, 1), label=f"{label} {done}/{total}")
    return report


def _headline(summary: dict | None) -> str:
    from app.fiftyone_bridge.finetune import headline

    h = headline(summary)
    return ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in h.items())


def _count(n: int) -> str:
    return f"{n} sample{'' if n == 1 else 's'}"


_TARGET_WORDS = {"DATASET": "the whole dataset", "CURRENT_VIEW": "the current view", "BASE_VIEW": "the base view",
                 "SELECTED_SAMPLES": "the selection", "DATASET_VIEW": "the dataset"}


def _target_text(ctx, default: str, n: int, n_selected: int) -> str:
    """``Fine-tune on the current view: 6 samples (selection: 1 sample, not used)``: which samples, how many."""
    chosen = ctx.request_params.get("view_target") or ctx.params.get("view_target") or default
    text = f"Fine-tune on {_TARGET_WORDS.get(chosen, str(chosen).lower())}: {_count(n)}"
    if n_selected and chosen != "SELECTED_SAMPLES":
        text += f" (selection: {_count(n_selected)}, not used unless you choose it above)"
    return text


def _trainer_args(ctx) -> list[str]:
    import shlex

    return shlex.split(ctx.params.get("trainer_args") or "")


def _before_after(group: dict) -> str:
    n = group["samples"]
    return f"{n} sample{'' if n == 1 else 's'}: before {_headline(group['before'])}; after {_headline(group['after'])}"


class RunModel(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="run_model", label="Mask2Former: run the model on the view",
                                  allow_immediate_execution=True, allow_delegated_execution=True, dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx)
        last = ctx.dataset.info.get("m2f", {}).get("predictions", {}).get(PRED, {}).get("weights", "")
        inputs.str("weights", label="Weights", default="" if last == "builtin" else last,
                   description="our folder, .pkl, .pth, Hugging Face folder or id; empty = the built-in model")
        inputs.str("prefix", label="Field prefix", default=PRED)
        inputs.str("device", label="Device", default="", description="cpu, cuda (empty: cuda if available)")
        return types.Property(inputs, view=types.View(label="Run Mask2Former"))

    def execute(self, ctx):
        from app.fiftyone_bridge.core import predict_view

        report = predict_view(ctx.target_view(), weights=ctx.params.get("weights") or None,
                              prefix=ctx.params.get("prefix") or PRED, device=ctx.params.get("device") or None,
                              progress=False, callback=_progress(ctx, "predict"))
        ctx.trigger("reload_dataset")
        return report.to_dict()

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("samples", label="Samples predicted")
        outputs.list("fields", types.String(), label="Fields written")
        outputs.list("unmapped_classes", types.String(), label="Model classes the dataset does not have")
        outputs.list("errors", types.String(), label="Samples that failed")
        return types.Property(outputs)


class Evaluate(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="evaluate", label="Mask2Former: evaluate predictions (PQ, mIoU, mask AP)",
                                  allow_immediate_execution=True, allow_delegated_execution=True, dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str("pred", label="Prediction prefix", default=PRED)
        inputs.str("gt", label="Ground-truth prefix", default=GT)
        return types.Property(inputs, view=types.View(label="Evaluate"))

    def execute(self, ctx):
        from app.fiftyone_bridge.evaluate import evaluate_view

        pred, gt = ctx.params.get("pred") or PRED, ctx.params.get("gt") or GT
        summary = evaluate_view(ctx.target_view(), pred=pred, gt=gt, progress=False,
                                callback=_progress(ctx, "evaluate"))
        ctx.trigger("reload_dataset")
        sem = summary.get("semantic", {})
        pan = summary.get("panoptic", {})
        key = pan.get("fiftyone_eval_key")
        return {"summary": _headline(summary), "miou_fiftyone": sem.get("mIoU_fiftyone"),
                "mAP_fiftyone": summary.get("instance", {}).get("mAP_fiftyone"),
                "panoptic": ", ".join(f"{k} {pan[k]:.2f}" if pan.get(k) is not None else f"{k} -"
                                      for k in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ")) if pan else "-",
                "eval_key": key or "-",
                "segments": f"every segment of {pred}_panoptic and {gt}_panoptic has {key} = tp / fp / fn (crowd, "
                            f"ignored), {key}_id, {key}_iou (filter the labels by them); saved views "
                            f"'{key} false negatives', '{key} wrong class'..." if key else "-",
                "sort_by": f"{pred}_pq (ascending: worst first), {pred}_miou, {pred}_ap"}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="PQ / mIoU / mask AP (COCO AP: hotcoco)")
        outputs.str("panoptic", label="Panoptic quality (%): all, things, stuff")
        outputs.str("eval_key", label="PQ evaluation key (Model Evaluation panel, load_evaluation_results)")
        outputs.str("segments", label="Per-segment results")
        outputs.float("miou_fiftyone", label="mIoU from FiftyOne's confusion matrix")
        outputs.float("mAP_fiftyone", label="FiftyOne mask mAP")
        outputs.str("sort_by", label="Per-sample fields")
        return types.Property(outputs)


class OpenInEditor(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="open_in_editor", label="Mask2Former: open the selected sample in the editor",
                                  dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        n = len(ctx.selected) if ctx.selected else (1 if ctx.current_sample else 0)
        if n != 1:
            prop = inputs.str("msg", label=f"Select exactly one sample ({n} selected)", view=types.Warning())
            prop.invalid = True
        inputs.str("labels", label="Labels to edit (prefix)", default=f"{EDITED},{GT}",
                   description="edited,gt: the sample's earlier correction if it has one, else the ground truth")
        inputs.str("editor_url", label="Editor URL", default=editor_url())
        inputs.str("corrections_dir", label="The editor's --corrections-dir", default=str(corrections_dir()))
        return types.Property(inputs, view=types.View(label="Open in the Gradio editor"))

    def execute(self, ctx):
        from app.fiftyone_bridge.editor import editor_link

        ids = list(ctx.selected) or ([ctx.current_sample] if ctx.current_sample else [])
        url, folder = editor_link(ctx.dataset.select(ids), ctx.params.get("corrections_dir") or corrections_dir(),
                                  base_url=ctx.params.get("editor_url") or editor_url(),
                                  prefix=ctx.params.get("labels") or GT)
        return {"url": url, "labels": str(folder)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        url = (ctx.results or {}).get("url")
        outputs.str("url", label="Open in the editor", view=types.LinkView(href=url, label=url))
        outputs.str("labels", label="Labels folder")
        return types.Property(outputs)


class FineTune(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="finetune", label="Mask2Former: fine-tune on the view", dynamic=True)

    def resolve_input(self, ctx):
        from app.fiftyone_bridge.finetune import min_samples, training_plan

        inputs = types.Object()
        n_view, n_selected = len(ctx.view), len(ctx.selected or [])
        target = inputs.view_target(ctx, action_description="Fine-tune on",
                                    dataset_description=f"Fine-tune on the whole dataset ({_count(len(ctx.dataset))})",
                                    current_view_description=f"Fine-tune on the current view ({_count(n_view)})",
                                    selected_samples_description=f"Only the selected samples ({_count(n_selected)})")
        # the whole view unless the user picks the selection (FiftyOne defaults to the most selective choice)
        available = target.options.available_values()
        target.default = next((t for t in ("CURRENT_VIEW", "DATASET", "BASE_VIEW") if t in available), target.default)
        n = len(ctx.target_view())  # the chosen target; before a choice, the current view or the dataset
        inputs.str("target", label=_target_text(ctx, target.default, n, n_selected), view=types.Notice())
        val = ctx.params.get("val") or None
        extra = _trainer_args(ctx)
        plan, warning = training_plan(n, val, extra)
        if n == 0:
            prop = inputs.str("plan", label="The target view is empty: nothing to fine-tune on", view=types.Error())
            prop.invalid = True
        elif warning:
            inputs.str("plan", label=plan[0].upper() + plan[1:], description=warning, view=types.Warning())
        else:
            inputs.str("plan", label=plan[0].upper() + plan[1:], view=types.Notice())
        least = min_samples(extra)
        if 0 < n < least:  # refused unless confirmed: one sample left selected must not train unnoticed
            inputs.bool("confirm_few", label=f"Fine-tune on {_count(n)} anyway", default=False,
                        description=f"fewer than {least}: the run cannot measure whether it helps")
            if not ctx.params.get("confirm_few"):
                prop = inputs.str("refused", label=f"Fewer than {least} samples: tick the box above to fine-tune on "
                                  f"{_count(n)}, or choose a larger view", view=types.Error())
                prop.invalid = True
        inputs.str("name", label="Export / run name", default=f"{ctx.dataset.slug}-finetune")
        inputs.str("weights", label="Starting weights", default="",
                   description="empty: the weights of the 'pred' predictions, else the built-in model")
        inputs.float("max_minutes", label="Time budget (minutes)", default=10.0, min=0.1,
                     description="validation included; the run keeps its best weights and may stop earlier")
        inputs.int("max_iter", label="At most N iterations", default=0, min=0,
                   description="0: from the number of samples")
        inputs.str("val", label="Validation data (FORMAT:PATH)", default="",
                   description="empty: a fifth of the samples is held out (none under 4 samples)")
        inputs.str("device", label="Device", default="", description="cpu, cuda (empty: cuda if available)")
        inputs.str("labels", label="Labels to train on (prefix)", default=f"{EDITED},{GT}",
                   description="edited,gt: the editor's corrections where a sample has them, else the ground truth")
        inputs.str("trainer_args", label="More training.finetune options", default="",
                   description="e.g. --recipe recipe.json")
        inputs.str("corrections_dir", label="Export folder root", default=str(corrections_dir()))
        inputs.str("runs_dir", label="Runs folder", default=str(runs_dir()))
        return types.Property(inputs, view=types.View(label="Fine-tune"))

    def execute(self, ctx):
        from app.export import sanitize_name
        from app.fiftyone_bridge.finetune import start_finetune, training_plan

        name = sanitize_name(ctx.params.get("name") or f"{ctx.dataset.slug}-finetune")
        view = ctx.target_view()
        val = ctx.params.get("val") or None
        extra = _trainer_args(ctx)
        _, warning = training_plan(len(view), val, extra)
        record = start_finetune(view, Path(ctx.params.get("corrections_dir") or corrections_dir()) / name,
                                Path(ctx.params.get("runs_dir") or runs_dir()) / name,
                                weights=ctx.params.get("weights") or None,
                                max_minutes=float(ctx.params.get("max_minutes") or 10.0),
                                max_iter=int(ctx.params.get("max_iter") or 0) or None, val=val,
                                device=ctx.params.get("device") or None, prefix=ctx.params.get("labels") or GT,
                                extra=extra, overwrite_export=True, confirm_few=bool(ctx.params.get("confirm_few")))
        return {"plan": record.plan, "warning": warning or "", "samples": record.n_images, "run_dir": record.run_dir,
                "pid": record.pid, "command": " ".join(record.command), "export": record.export_dir}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("plan", label="Plan")
        if (ctx.results or {}).get("warning"):
            outputs.str("warning", label="Warning", view=types.Warning())
        outputs.int("samples", label="Samples exported")
        outputs.str("run_dir", label="Run directory (progress: the finetune_status operator)")
        outputs.int("pid", label="Process id")
        outputs.str("command", label="Command")
        outputs.str("export", label="Exported training data")
        return types.Property(outputs)


class FineTuneStatus(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="finetune_status", label="Mask2Former: fine-tuning progress")

    def execute(self, ctx):
        from app.fiftyone_bridge.finetune import list_runs, run_status

        blocks = []
        for record in reversed(list_runs(ctx.dataset)):
            st = run_status(record)
            lines = [f"**{st['run_dir']}**: {st['state']} ({record.get('n_images', '?')} samples exported)"]
            lines += [f"- {line}" for line in st["summary"].splitlines() if line.strip()]
            lines.append(f"- weights: {st['weights'] or 'none yet'}")
            blocks.append("\n".join(lines))
        return {"report": "\n\n".join(blocks) or "no fine-tuning run recorded on this dataset"}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("report", label="Runs", view=types.MarkdownView())
        return types.Property(outputs)


class LoadFinetuned(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="load_finetuned", label="Mask2Former: predictions of the fine-tuned model",
                                  allow_immediate_execution=True, allow_delegated_execution=True, dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str("run_dir", label="Run directory", default="", description="empty: the latest run")
        inputs.str("prefix", label="Field prefix", default=FINETUNED)
        inputs.str("before", label="Compare with (prefix)", default=PRED)
        return types.Property(inputs, view=types.View(label="Load fine-tuned predictions"))

    def execute(self, ctx):
        from app.fiftyone_bridge.finetune import compare_finetuned

        result = compare_finetuned(ctx.target_view(), run_dir=ctx.params.get("run_dir") or None,
                                   prefix=ctx.params.get("prefix") or FINETUNED,
                                   before=ctx.params.get("before") or PRED, progress=False,
                                   callback=_progress(ctx, "predict"))
        ctx.trigger("reload_dataset")
        top = result["headline"]
        out = {"weights": result["weights"], "split_field": result["split_field"], "warning": result["warning"] or "",
               "headline": "-" if top is None else _before_after(top), "worse": "; ".join(result["worse"])}
        for name, group in result["groups"].items():
            out[name] = _before_after(group) if group["samples"] else "none"
        return out

    def resolve_output(self, ctx):
        outputs = types.Object()
        if (ctx.results or {}).get("worse"):  # in red, first: a gain on the trained-on samples must not hide it
            outputs.str("worse", label="Worse where it did not train: keep the current model",
                        view=types.Error(label="Worse where it did not train: keep the current model",
                                         description=ctx.results["worse"]))
        if (ctx.results or {}).get("warning"):
            outputs.str("warning", label="Warning", view=types.Warning())
        outputs.str("headline", label="Samples it did not train on (held out + unseen)")
        outputs.str("unseen", label="Unseen (not exported)")
        outputs.str("held_out", label="Held out by the run")
        outputs.str("trained", label="Trained on (not a measure of the gain)")
        outputs.str("split_field", label="Filter by this field (trained / held_out / unseen)")
        outputs.str("weights", label="Weights")
        return types.Property(outputs)


class PullEdits(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="pull_edits", label="Mask2Former: bring back the editor's corrections",
                                  dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.str("corrections_dir", label="The editor's --corrections-dir", default=str(corrections_dir()),
                   description="its exports of samples opened from this dataset go into edited_* fields, "
                               "the samples tagged 'edited'")
        return types.Property(inputs, view=types.View(label="Bring back the editor's corrections"))

    def execute(self, ctx):
        from app.fiftyone_bridge.edits import pull_edits

        report = pull_edits(ctx.dataset, ctx.params.get("corrections_dir") or corrections_dir())
        if report.imported:
            ctx.trigger("reload_dataset")
        replaced = sum(1 for r in report.imported if r["replaced"])
        return {"imported": len(report.imported), "replaced": replaced, "unchanged": report.unchanged,
                "kept_newer": report.kept_newer, "refused": report.refused,
                "filter": f"tag '{EDITED}'; fields {EDITED}_panoptic, {EDITED}_by, {EDITED}_at"}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("imported", label="Samples brought back")
        outputs.int("replaced", label="Of which replaced an older edit")
        outputs.int("unchanged", label="Already up to date")
        outputs.int("kept_newer", label="Kept (the sample's edit is newer)")
        outputs.list("refused", types.String(), label="Refused (not the sample's image, unknown class...)")
        outputs.str("filter", label="Find them by")
        return types.Property(outputs)


class RankSamples(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="rank_samples", label="Mask2Former: choose what to correct (rank and tag)",
                                  allow_immediate_execution=True, allow_delegated_execution=True, dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Rank")
        n = len(ctx.target_view())
        inputs.enum("by", ["uncertainty", "uniqueness", "mistakenness"], label="Rank by", default="uncertainty",
                    view=types.RadioGroup(),
                    description="uncertainty: of the model's predictions (run the model first); uniqueness: "
                                "FiftyOne Brain on the model's backbone embeddings; mistakenness: FiftyOne Brain, "
                                "predictions against the ground truth")
        inputs.int("top", label="Tag the top N", default=min(8, max(n, 1)), min=1,
                   description=f"of the {_count(n)} ranked")
        inputs.str("tag", label="Tag", default="to-correct", description="taken off the view's other samples")
        inputs.str("prefix", label="Predictions (prefix)", default=PRED)
        return types.Property(inputs, view=types.View(label="Choose what to correct"))

    def execute(self, ctx):
        from app.fiftyone_bridge.selection import rank_samples

        report = rank_samples(ctx.target_view(), by=ctx.params.get("by") or "uncertainty",
                              top=int(ctx.params.get("top") or 8), tag=ctx.params.get("tag") or "to-correct",
                              prefix=ctx.params.get("prefix") or PRED, callback=_progress(ctx, "embed"))
        ctx.trigger("reload_dataset")
        top = ", ".join(f"{t['file']} ({t['score']:.3f})" for t in report.top)
        return {"summary": f"{report.tagged} of {_count(report.samples)} tagged '{report.tag}', highest "
                           f"{report.by} first: {top}", "field": report.field, "tag": report.tag, "note": report.note}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("summary", label="Tagged for correction")
        outputs.str("field", label="Score per sample (sort by it, highest first)")
        outputs.str("tag", label="Filter by this tag, correct, then fine-tune on it")
        if (ctx.results or {}).get("note"):
            outputs.str("note", label="Note", view=types.Warning())
        return types.Property(outputs)


def _one_line(e: BaseException) -> str:
    from app.fiftyone_bridge import BridgeError
    from m2f_core.metrics import MetricInputError

    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (BridgeError, MetricInputError, FileNotFoundError)):
        return text  # a user-facing problem: its message says it
    return f"{type(e).__name__}: {text} (the traceback is in the App server's log)"


def guard(cls: type[foo.Operator]) -> type[foo.Operator]:
    """An operator whose failure is one line in the App (an ``error`` output and a notification) and whose
    traceback goes to the log, instead of a traceback in the operator's panel."""
    if getattr(cls, "_m2f_guarded", False):  # registered again: wrapped once only
        return cls
    execute, resolve_output = cls.execute, cls.resolve_output

    @functools.wraps(execute)
    def guarded_execute(self, ctx):
        try:
            return execute(self, ctx)
        except Exception as e:
            message = _one_line(e)
            logger.error("%s failed: %s", self.uri, message, exc_info=True)
            ctx.ops.notify(message, variant="error")
            return {"error": message}

    @functools.wraps(resolve_output)
    def guarded_output(self, ctx):
        if (ctx.results or {}).get("error"):
            outputs = types.Object()
            outputs.str("error", label="Error", view=types.Error())
            return types.Property(outputs)
        return resolve_output(self, ctx)

    cls.execute, cls.resolve_output, cls._m2f_guarded = guarded_execute, guarded_output, True
    return cls


def register(p):
    for cls in (RunModel, Evaluate, OpenInEditor, FineTune, FineTuneStatus, LoadFinetuned, PullEdits, RankSamples):
        p.register(guard(cls))
