"""Evaluate saved predictions: ``python -m m2f_core.evaluate {panoptic,semantic,instance} ...``.

Each subcommand prints one JSON object on stdout (percent values, ``null`` where undefined, plus per-class
tables); a progress bar goes to stderr when it is a terminal. A bad input prints one ``error: ...`` line on stderr
and exits with code 2.

    python -m m2f_core.evaluate panoptic --gt-json panoptic_val2017.json --gt-dir panoptic_val2017 \\
        --pred-json predictions.json --pred-dir predictions
    python -m m2f_core.evaluate panoptic --gt-json SOURCE/panoptic.json --gt-dir SOURCE/panoptic \\
        --pred-json EXPORT/panoptic.json --pred-dir EXPORT/panoptic --only-predicted   # an app export
    python -m m2f_core.evaluate semantic --gt-dir annotations/validation --pred-dir preds --num-classes 150
    python -m m2f_core.evaluate instance --gt-json instances_val2017.json --pred-json coco_instances_results.json
    python -m m2f_core.evaluate model --weights W --format coco_panoptic --ann panoptic_val2017.json --images val2017

A new subcommand is one ``_add_<name>(subparsers)`` function that registers its arguments and sets
``func`` to a function ``(args) -> dict``, called from ``build_parser``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from m2f_core.cli import Parser, positive_int, program_name
from m2f_core.metrics import MetricInputError, mask_ap_compute, pq_compute, sem_seg_compute

PROG = program_name("python -m m2f_core.evaluate")


def run_panoptic(args: argparse.Namespace) -> dict[str, Any]:
    """PQ/SQ/RQ of COCO panoptic predictions."""
    return pq_compute(args.gt_json, args.gt_dir, args.pred_json, args.pred_dir, progress=True,
                      only_predicted=args.only_predicted, engine=args.engine)


def run_semantic(args: argparse.Namespace) -> dict[str, Any]:
    """mIoU/fwIoU/mACC/pACC of semantic label PNGs."""
    return sem_seg_compute(args.gt_dir, args.pred_dir, args.num_classes, args.ignore_index, progress=True,
                           engine=args.engine)


def run_instance(args: argparse.Namespace) -> dict[str, Any]:
    """COCO mask AP of instance results."""
    return mask_ap_compute(args.gt_json, args.pred_json, engine=args.engine)


def run_model(args: argparse.Namespace) -> dict[str, Any]:
    """Run a model on a dataset and report PQ, mask AP and mIoU from one forward pass per image."""
    from m2f_core import parallel
    from m2f_core.data.errors import DatasetError
    from m2f_core.data.specs import open_dataset
    from m2f_core.errors import CheckpointError
    from m2f_core.images import ImageError
    from m2f_core.metrics.model_eval import evaluate_model
    from m2f_core.predictor import Predictor
    from m2f_core.runtime import tune_process

    tune_process()  # a program: keep freed activation memory in the heap (runtime.py)
    kwargs = {}
    if args.images:
        kwargs["image_dir"] = args.images
    try:
        group = parallel.init()  # under torchrun: the images are split over the processes (docs/data_parallel.md)
        # on every rank; a mistake shared by all (a bad path, bad weights) is printed once, by rank 0
        dataset = group.each(lambda: open_dataset(f"{args.format}:{args.ann}", split=args.split, **kwargs))
        if parallel.is_main_process():
            print(f"dataset {args.format}:{args.ann}: {dataset.describe()}", file=sys.stderr)
        predictor = group.each(lambda: Predictor(args.weights, device=parallel.device_for(group, args.device),
                                                 config=args.config))
        result = evaluate_model(predictor, dataset, limit=args.limit, group=group, work=args.work_dir,
                                inputs=_model_inputs(args))
    except parallel.ParallelError as e:  # shared by every rank: rank 0 prints it
        if not parallel.is_main_process():
            raise SystemExit(2) from None
        raise MetricInputError(str(e)) from None
    except (CheckpointError, DatasetError, ImageError, ValueError, OSError) as e:
        raise MetricInputError(str(e)) from None
    if result is None:  # another rank of a torchrun run: rank 0 prints the result
        return None
    result["weights"] = str(args.weights or "builtin")
    result["dataset"] = f"{args.format}:{args.ann}"
    return result


def _model_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """What a resumed ``evaluate model`` must share with the killed run (its ``--work-dir`` manifest)."""
    from pathlib import Path

    from m2f_core.parallel import weights_fingerprint

    return {"format": args.format, "ann": weights_fingerprint(args.ann) if Path(args.ann).is_file() else
            str(Path(args.ann).resolve()), "images": args.images and str(Path(args.images).resolve()),
            "split": args.split, "limit": args.limit, "weights": weights_fingerprint(args.weights)}


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="run a model on a dataset: PQ, mask AP and mIoU in one pass",
                       description="Run the predictor once per image of a dataset and report every metric the "
                                   "dataset's annotations allow (panoptic: PQ; instances or panoptic: mask AP; "
                                   "always: mIoU, fwIoU, mACC, pACC).")
    p.add_argument("--weights", default=None,
                   help="weights: our folder, HF folder or id, .pkl, .pth (default: the built-in model)")
    p.add_argument("--format", required=True,
                   choices=["coco_panoptic", "coco_instances", "ade20k", "cityscapes", "semantic", "corrections"])
    p.add_argument("--ann", required=True, help="annotation JSON (COCO formats) or dataset root folder")
    p.add_argument("--images", default=None, help="image folder (default: derived from --ann)")
    p.add_argument("--split", default=None, help="split in a dataset root (default: val2017, val or validation)")
    p.add_argument("--config", default=None, help="preset or config JSON for a .pkl/.pth")
    p.add_argument("--device", default=None, help="cpu, cuda... (default: cuda if available)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="evaluate only the first N images")
    p.add_argument("--work-dir", default=None,
                   help="under torchrun: keep each finished chunk of images here, so that a killed run resumes "
                        "(a folder every process can write; removed at the end)")
    p.set_defaults(func=run_model)


def _add_panoptic(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("panoptic", help="panoptic quality (PQ, SQ, RQ), panopticapi rules",
                       description="Panoptic quality of COCO panoptic predictions (JSON + PNG folder), the "
                                   "cocodataset/panopticapi algorithm. Categories come from the ground-truth JSON.")
    p.add_argument("--gt-json", required=True, help="COCO panoptic ground-truth JSON")
    p.add_argument("--gt-dir", required=True, help="folder of the ground-truth PNGs")
    p.add_argument("--pred-json", required=True, help="COCO panoptic prediction JSON (same image ids)")
    p.add_argument("--pred-dir", required=True, help="folder of the predicted PNGs")
    p.add_argument("--only-predicted", action="store_true",
                   help="evaluate only the ground-truth images that have a prediction (e.g. an app export of some "
                        "images of the dataset); the output's 'images' says how many")
    p.add_argument("--engine", choices=("hotcoco", "reference"), default="hotcoco",
                   help="hotcoco (default, Rust, parallel) or reference (pure Python, the test oracle); same numbers")
    p.set_defaults(func=run_panoptic)


def _add_semantic(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("semantic", help="semantic segmentation (mIoU, fwIoU, mACC, pACC), detectron2 rules",
                       description="Semantic metrics of label PNGs: every *.png under --gt-dir needs a prediction "
                                   "with the same relative path under --pred-dir.")
    p.add_argument("--gt-dir", required=True, help="folder of ground-truth label PNGs (class ids)")
    p.add_argument("--pred-dir", required=True, help="folder of predicted label PNGs (same relative names)")
    p.add_argument("--num-classes", required=True, type=int, help="number of classes (ids 0..N-1)")
    p.add_argument("--ignore-index", type=int, default=255, help="ground-truth label to ignore (default 255)")
    p.add_argument("--engine", choices=("hotcoco", "reference"), default="hotcoco",
                   help="hotcoco (default, Rust, parallel) or reference (numpy, the test oracle); same numbers")
    p.set_defaults(func=run_semantic)


def _add_instance(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("instance", help="instance segmentation mask AP (COCOeval segm)",
                       description="COCO mask AP (AP, AP50, AP75, APs, APm, APl, per class) of RLE results.")
    p.add_argument("--gt-json", required=True, help="COCO instance ground-truth JSON")
    p.add_argument("--pred-json", required=True, help="results JSON: list of {image_id, category_id, "
                                                      "segmentation (RLE), score}")
    p.add_argument("--engine", choices=("hotcoco", "pycocotools"), default="hotcoco",
                   help="COCOeval of hotcoco (default, Rust) or of pycocotools (the reference); same numbers")
    p.set_defaults(func=run_instance)


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser; each subcommand sets ``func(args) -> dict``."""
    parser = Parser(prog=PROG, description="Evaluate saved Mask2Former predictions; prints one JSON object.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    _add_panoptic(sub)
    _add_semantic(sub)
    _add_instance(sub)
    _add_model(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0, or 2 on a bad input)."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except MetricInputError as e:
        message = str(e).replace("\r", " ").replace("\n", " ")  # always one line
        print(f"error: {message}", file=sys.stderr)
        return 2
    if result is None:  # another rank of a torchrun run: rank 0 prints the result
        return 0
    print(json.dumps(result, indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
