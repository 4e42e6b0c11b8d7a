"""FiftyOne bridge CLI: import a dataset, predict, evaluate, browse in the App, export, fine-tune.

    python -m app.fiftyone_bridge import --format coco_panoptic --path datasets/coco --name coco-val
    python -m app.fiftyone_bridge predict --name coco-val --weights model_final_94dc52.pkl
    python -m app.fiftyone_bridge evaluate --name coco-val
    python -m app.fiftyone_bridge app --name coco-val --port 5151
    python -m app.fiftyone_bridge pull-edits --name coco-val          # what was saved in the Gradio editor
    python -m app.fiftyone_bridge export --name coco-val --view-tag fixed --out datasets/corrections/fixed
    python -m app.fiftyone_bridge rank --name coco-val --by uncertainty --tag to-correct --top 8
    python -m app.fiftyone_bridge finetune --name coco-val --view-tag fixed --max-minutes 10
    python -m app.fiftyone_bridge status --name coco-val
    python -m app.fiftyone_bridge compare --name coco-val

Datasets are persistent FiftyOne datasets in FiftyOne's database (``FIFTYONE_DATABASE_DIR``). A bad
input prints one ``error: ...`` line on stderr and exits with code 2 (never a traceback; set
``M2F_DEBUG=1`` to see one for an unexpected failure).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from m2f_core.cli import Parser, positive_int, program_name

from . import EDITED, FINETUNED, GT, PRED, BridgeError

PROG = program_name("python -m app.fiftyone_bridge")
LABELS = f"{EDITED},{GT}"  # the labels exported / trained on: the editor's corrections first


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=1, default=str, allow_nan=False))


def _view(args: argparse.Namespace):
    from .core import load_dataset, select

    ds = load_dataset(args.name)
    return ds, select(ds, tag=getattr(args, "view_tag", None), saved_view=getattr(args, "saved_view", None),
                      limit=getattr(args, "limit", None))


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without the per-class tables."""
    out = {}
    for key, value in summary.items():
        out[key] = {k: v for k, v in value.items() if k != "per_class"} if isinstance(value, dict) else value
    return out


# --------------------------------------------------------------------------------------------
# commands


def cmd_import(args: argparse.Namespace) -> int:
    from .sources import open_source

    reader = open_source(args.format, args.path, args.split, args.images, args.classes)  # fails before FiftyOne
    from .core import import_dataset

    ds = import_dataset(args.format, args.path, args.name, split=reader.split, image_dir=args.images,
                        class_list=args.classes, overwrite=args.overwrite, reader=reader)
    print(f"imported {args.format}:{args.path}: {reader.describe()}", file=sys.stderr)
    info = ds.info["m2f"]
    _print({"dataset": ds.name, "samples": len(ds), "classes": len(info["categories"]),
            "ground_truth": info["ground_truth"], "fields": sorted(ds.get_field_schema())})
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from m2f_core.runtime import tune_process

    from .core import predict_view

    tune_process()  # a program: keep freed activation memory in the heap (m2f_core/runtime.py)
    if "WORLD_SIZE" in os.environ:  # torchrun: the samples are split over the processes (docs/data_parallel.md)
        return _predict_parallel(args)
    _, view = _view(args)
    report = predict_view(view, weights=args.weights, prefix=args.prefix, device=args.device, config=args.config)
    _print(report.to_dict())
    for line in report.errors:
        print(f"error: {line}", file=sys.stderr)
    return 1 if report.errors else 0


def _predict_parallel(args: argparse.Namespace) -> int:
    """``predict`` in one process of a torchrun run: rank 0 reads the view and writes the dataset, prints."""
    import re

    from m2f_core import parallel

    from .core import predict_view_parallel

    group = parallel.init()
    work = Path(args.work_dir or ".m2f-predict-" + re.sub(r"[^A-Za-z0-9_.-]", "_", f"{args.name}-{args.prefix}"))
    try:
        report = predict_view_parallel(group, lambda: _view(args)[1], work, weights=args.weights,
                                       prefix=args.prefix, device=args.device, config=args.config)
        code = 0
        if report is not None:
            _print(report.to_dict())
            for line in report.errors:
                print(f"error: {line}", file=sys.stderr)
            code = 1 if report.errors else 0
        return parallel.finish(group, code)
    except parallel.ParallelError as e:  # shared by every rank: rank 0 prints it
        if not group.is_main:
            return 2
        raise BridgeError(str(e)) from None
    finally:
        parallel.close()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_view

    _, view = _view(args)
    summary = evaluate_view(view, pred=args.pred, gt=args.gt)
    _print(summary if args.per_class else _brief(summary))
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    import signal

    import fiftyone as fo

    from app.workspace import workspace_env

    from .core import THRESHOLD_VIEW, install_plugin, load_dataset

    ds = load_dataset(args.name)
    os.environ.update(workspace_env())  # the App server (working folder: FiftyOne's) writes where this CLI would
    link = install_plugin()  # the operators are there when the App starts
    print(f"plugin: {link}", file=sys.stderr)
    # opens on the saved view that hides low-scored predicted instances (the dataset's App defaults)
    view = ds.load_saved_view(THRESHOLD_VIEW) if ds.has_saved_view(THRESHOLD_VIEW) else None
    session = fo.launch_app(ds, view=view, port=args.port, address=args.host, remote=True, auto=False)
    print(f"FiftyOne App: {session.url} (Ctrl-C to stop)", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` closes the App like Ctrl-C
    try:
        session.wait(-1)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .core import export_view

    _, view = _view(args)
    out = export_view(view, args.out, prefix=args.labels, overwrite=args.overwrite)
    _print({"export": str(out), "samples": len(view), "train": f"corrections:{out}"})
    return 0


def cmd_pull_edits(args: argparse.Namespace) -> int:
    from app.workspace import corrections_dir

    from .core import load_dataset
    from .edits import pull_edits

    report = pull_edits(load_dataset(args.name), args.corrections_dir or corrections_dir())
    _print(report.to_dict())
    for line in report.refused:
        print(f"refused: {line}", file=sys.stderr)
    return 1 if report.refused else 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from app.workspace import corrections_dir, runs_dir

    from .finetune import check_enough, start_finetune, training_plan

    ds, view = _view(args)
    extra = shlex.split(args.trainer_args or "")
    plan, warning = training_plan(len(view), args.val, extra)
    if len(view):  # said before anything is exported or started (an empty view is refused below)
        print(f"fine-tune: {plan}", file=sys.stderr)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    check_enough(len(view), args.confirm_few, extra)  # fewer than the minimum: only when confirmed
    name = args.view_tag or ds.slug
    export = Path(args.export_out) if args.export_out else corrections_dir() / name
    run_dir = Path(args.run_dir) if args.run_dir else runs_dir() / f"fiftyone-{name}"
    record = start_finetune(view, export, run_dir, weights=args.weights, max_minutes=args.max_minutes,
                            max_iter=args.max_iter, val=args.val, device=args.device, prefix=args.labels,
                            extra=extra, overwrite_export=args.overwrite, confirm_few=args.confirm_few)
    out = {k: v for k, v in record.to_dict().items() if k != "sample_ids"}
    _print(out | {"warning": warning, "progress": f"{PROG} status --name {args.name}"})
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .core import load_dataset
    from .finetune import list_runs, run_status

    ds = load_dataset(args.name)
    statuses = [run_status(r) | {"pid": r["pid"], "command": " ".join(r["command"])} for r in list_runs(ds)]
    for st in statuses:  # n / N, time left and the held-out score, one line per run
        print(f"{st['run_dir']}: {st['line']}", file=sys.stderr)
    _print(statuses)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .finetune import compare_finetuned, headline

    _, view = _view(args)
    result = compare_finetuned(view, run_dir=args.run_dir, prefix=args.prefix, before=args.before,
                               device=args.device)
    top = result["headline"]
    out = {"weights": result["weights"],
           "headline": None if top is None else {"samples": top["samples"], "group": top["group"],
                                                 "before": headline(top["before"]), "after": headline(top["after"])}}
    for name, group in result["groups"].items():
        out[name] = {"samples": group["samples"], "before": headline(group["before"]),
                     "after": headline(group["after"])}
    out["split_field"] = result["split_field"]
    out["worse"] = result["worse"]
    for line in result["worse"]:  # never hidden behind a gain on the trained-on samples
        print(f"warning: got worse on {line}: the fine-tuned model is worse where it was not trained; "
              "keep the current one", file=sys.stderr)
    if result["warning"]:
        out["warning"] = result["warning"]
        print(f"warning: {result['warning']}", file=sys.stderr)
    _print(out)
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from .selection import rank_samples

    _, view = _view(args)
    report = rank_samples(view, by=args.by, top=args.top, tag=args.tag, prefix=args.prefix, gt=args.gt,
                          weights=args.weights, device=args.device)
    print(f"rank: the {report.tagged} of {report.samples} samples of highest {report.by} tagged '{report.tag}' "
          f"(scores in {report.field})", file=sys.stderr)
    _print(report.to_dict())
    return 0


def cmd_plugin(args: argparse.Namespace) -> int:
    from .core import install_plugin

    print(install_plugin(args.plugins_dir))
    return 0


# --------------------------------------------------------------------------------------------
# parser


def _add_view_args(p: argparse.ArgumentParser, tag_help: str = "only the samples with this tag") -> None:
    p.add_argument("--name", required=True, help="FiftyOne dataset name")
    p.add_argument("--view-tag", default=None, help=tag_help)
    p.add_argument("--saved-view", "--view", dest="saved_view", default=None,
                   help="a saved view of the dataset (save one in the App)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N samples")


def build_parser() -> argparse.ArgumentParser:
    from .sources import IMPORT_FORMATS

    parser = Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("import", help="create a persistent FiftyOne dataset from a dataset on disk")
    p.add_argument("--format", required=True, choices=IMPORT_FORMATS)
    p.add_argument("--path", required=True, help="annotation JSON (COCO formats) or dataset root folder")
    p.add_argument("--name", required=True, help="name of the FiftyOne dataset to create")
    p.add_argument("--split", default=None, help="split in a dataset root (default: val2017, val or validation)")
    p.add_argument("--images", default=None, help="image folder (COCO formats; default: derived from --path)")
    p.add_argument("--classes", default=None, help="a shipped class list (ade20k, cityscapes, coco_panoptic...) "
                   "for the semantic format, or to override the file's")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset of that name")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("predict", help="run the model once per sample: panoptic, instance, semantic, uncertainty")
    _add_view_args(p)
    p.add_argument("--weights", default=None, help="our folder, HF folder or id, .pkl, .pth (default: built-in)")
    p.add_argument("--config", default=None, help="preset or config JSON for a .pkl/.pth")
    p.add_argument("--device", default=None, help="cpu, cuda... (default: cuda if available)")
    p.add_argument("--prefix", default=PRED, help=f"field prefix of the predictions (default {PRED})")
    p.add_argument("--work-dir", default=None,
                   help="under torchrun: where the processes keep their finished chunks, so that a killed run "
                        "resumes (default .m2f-predict-<name>-<prefix> here; shared by every node)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="per-sample and dataset PQ, mIoU and mask AP")
    _add_view_args(p)
    p.add_argument("--pred", default=PRED, help=f"prediction prefix (default {PRED})")
    p.add_argument("--gt", default=GT, help=f"ground-truth prefix (default {GT})")
    p.add_argument("--per-class", action="store_true", help="print the per-class tables too")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("app", help="launch the FiftyOne App on the dataset (our plugin included)")
    p.add_argument("--name", required=True, help="FiftyOne dataset name")
    p.add_argument("--port", type=int, default=5151, help="port (default 5151)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("export", help="write a view as a corrections folder the trainer reads")
    _add_view_args(p, tag_help="export the samples with this tag")
    p.add_argument("--out", required=True, help="the folder to write, e.g. datasets/corrections/<name>")
    p.add_argument("--labels", default=LABELS, help=f"which labels to export: a prefix or a preference list "
                   f"(default {LABELS}: the editor's corrections where a sample has them, else {GT})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("pull-edits", help="bring back what was saved in the Gradio editor: edited_* fields, "
                       "tag 'edited', who / when (idempotent)")
    p.add_argument("--name", required=True, help="FiftyOne dataset name")
    p.add_argument("--corrections-dir", default=None, help="the editor's --corrections-dir (default "
                   "$M2F_CORRECTIONS_DIR, else ./datasets/corrections)")
    p.set_defaults(func=cmd_pull_edits)

    p = sub.add_parser("finetune", help="export a view and start few-shot fine-tuning on it in a detached process")
    _add_view_args(p, tag_help="fine-tune on the samples with this tag (default: the whole dataset)")
    p.add_argument("--weights", default=None, help="starting weights (default: those of the 'pred' predictions)")
    p.add_argument("--export-out", default=None, help="export folder (default $M2F_CORRECTIONS_DIR/<tag or name>, "
                   "else ./datasets/corrections/<tag or name>)")
    p.add_argument("--run-dir", default=None, help="run directory (default $M2F_RUNS_DIR/fiftyone-<tag or name>, "
                   "else ./runs/fiftyone-<tag or name>)")
    p.add_argument("--max-minutes", type=float, default=10.0, help="time budget, validation included (default 10)")
    p.add_argument("--max-iter", type=int, default=None, help="at most N iterations (default: from the samples)")
    p.add_argument("--val", default=None, help="validation data FORMAT:PATH (default: hold out a fifth of the view)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available; one process)")
    p.add_argument("--labels", default=LABELS, help=f"which labels to train on: a prefix or a preference list "
                   f"(default {LABELS}: the editor's corrections where a sample has them, else {GT})")
    p.add_argument("--trainer-args", default=None, help="more training.finetune options, e.g. '--recipe r.json'")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.add_argument("--confirm-few", action="store_true",
                   help="train even on fewer samples than can be held out (4 by default): the run cannot measure "
                        "whether it helps")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("status", help="progress of the fine-tuning runs recorded on a dataset")
    p.add_argument("--name", required=True, help="FiftyOne dataset name")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("compare", help="predict with a run's weights; before / after on trained, held-out and "
                       "unseen samples apart")
    _add_view_args(p)
    p.add_argument("--run-dir", default=None, help="run directory (default: the dataset's latest run)")
    p.add_argument("--prefix", default=FINETUNED, help=f"field prefix of the new predictions (default {FINETUNED})")
    p.add_argument("--before", default=PRED, help=f"prefix of the predictions to compare with (default {PRED})")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("rank", help="rank samples by the model's uncertainty (or Brain's uniqueness / "
                       "mistakenness) and tag the top N for correction")
    _add_view_args(p)
    p.add_argument("--by", default="uncertainty", choices=("uncertainty", "uniqueness", "mistakenness"),
                   help="uncertainty (of the predictions; default), uniqueness (Brain, on the model's backbone "
                        "embeddings) or mistakenness (Brain: predictions against the ground truth)")
    p.add_argument("--top", type=positive_int, default=8, metavar="N", help="tag the N highest (default 8)")
    p.add_argument("--tag", default="to-correct", help="the tag (default to-correct; replaced on the view)")
    p.add_argument("--prefix", default=PRED, help=f"the predictions ranked (default {PRED})")
    p.add_argument("--gt", default=GT, help=f"the ground truth, for mistakenness (default {GT})")
    p.add_argument("--weights", default=None, help="the model embedding the images, for uniqueness (default: the "
                   "predictions' weights)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("plugin", help="install the FiftyOne plugin (a link in FiftyOne's plugins folder)")
    p.add_argument("--plugins-dir", default=None, help="default: FIFTYONE_PLUGINS_DIR or ~/fiftyone/__plugins__")
    p.set_defaults(func=cmd_plugin)
    return parser


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0; 1 when some samples failed; 2 on a bad input)."""
    args = build_parser().parse_args(argv)
    from m2f_core.errors import CheckpointError
    from m2f_core.metrics import MetricInputError

    try:
        return args.func(args)
    except (BridgeError, MetricInputError, CheckpointError, ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # FiftyOne / MongoDB failures: one line, the traceback on request
        if os.environ.get("M2F_DEBUG"):
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {_one_line(e)} (set M2F_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
