"""Round trips with annotation tools: import their exports as a corrections folder, export ours to them.

    python -m m2f_core.data.interchange import --from cvat_xml:annotations.xml --to datasets/corrections/cvat1
    python -m m2f_core.data.interchange export --from corrections:datasets/corrections/mine \\
        --to label_studio:prelabels.json --polygons --max-iou-loss 0.01

``import`` reads a tool's export (``cvat_xml:``, ``cvat_coco:``, ``cvat:``, ``label_studio:``,
``labelme:``) and writes a corrections folder (``corrections:DIR`` trains as it is), atomically.
``export`` reads any dataset spec (``corrections:``, ``coco_panoptic:OUT/panoptic.json`` from
``m2f_core.predict``, ``coco_instances:``, or a tool format) and writes a tool's format: masks by
default, polygons with ``--polygons`` within ``--max-iou-loss`` (the IoU reached is printed).
Labels are matched to ``--classes`` by name (``--map LABEL=NAME`` renames); an unknown label is an
error, never dropped. See ``docs/interchange.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from ..atomic import make_temp_dir, remove_stale_temporaries, replace_dir
from ..cli import Parser
from .annotation_tools import ExportReport
from .categories import normalize_categories, shipped_categories
from .errors import DatasetError
from .records import SegmentationDataset
from .specs import TOOL_FORMATS, open_dataset, parse_dataset_spec

__all__ = ["EXPORT_FORMATS", "export_dataset", "import_dataset", "main"]

EXPORT_FORMATS = ("cvat_xml", "cvat_coco", "label_studio", "labelme")


def load_classes(text: str | None) -> list[dict] | None:
    """``--classes``: a shipped class list name (coco_panoptic, ade20k, ...) or a JSON file of categories."""
    if text is None:
        return None
    path = Path(text)
    if path.suffix.lower() == ".json" or path.is_file():
        from .fileio import read_json

        data = read_json(path)
        raw = data.get("categories") if isinstance(data, dict) else data
        return normalize_categories(raw, path)
    return shipped_categories(text)


def open_source(spec: str, classes: list[dict] | None = None, label_map: dict[str, str] | None = None,
                images: str | Path | None = None, ls_source: str = "annotations") -> SegmentationDataset:
    """The dataset of ``--from``: tool formats get the label rules' options, others open as they are."""
    fmt, _ = parse_dataset_spec(spec)
    kwargs: dict[str, Any] = {}
    if classes is not None:
        kwargs["categories"] = classes
    if images is not None:
        if fmt not in (*TOOL_FORMATS, "coco_panoptic", "coco_instances") or fmt == "labelme":
            raise DatasetError(spec, f"--images does not apply to {fmt} (its files say where the images are)")
        kwargs["image_dir"] = Path(images)
    if fmt in TOOL_FORMATS:
        if label_map:
            kwargs["label_map"] = label_map
        if fmt == "label_studio":
            kwargs["source"] = ls_source
    elif label_map:
        raise DatasetError(spec, "--map applies to the annotation tools' formats only")
    return open_dataset(spec, **kwargs)


def _items(dataset: SegmentationDataset, label: str, progress: bool):
    from tqdm import tqdm

    return (dataset[i] for i in tqdm(range(len(dataset)), desc=label, unit="img", disable=not progress))


def import_dataset(dataset: SegmentationDataset, out: str | Path, overwrite: bool = False,
                   progress: bool = False) -> Path:
    """Write ``dataset`` as the corrections folder ``out`` (built beside it, renamed in when complete)."""
    from .corrections import write_corrections

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent)
    if out.exists() and not overwrite:
        raise DatasetError(out, "already exists (pass --overwrite to replace it)")
    samples = list(_items(dataset, "import", progress))
    if not samples:
        raise DatasetError(dataset.name, "no annotated image to import")
    tmp = make_temp_dir(out.parent, out.name)
    try:
        write_corrections(tmp, samples, dataset.categories, semantic=len(dataset.categories) <= 255)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_dataset(dataset: SegmentationDataset, target: str, polygons: bool = False, max_iou_loss: float = 0.01,
                   as_predictions: bool = True, image_url_prefix: str = "/data/local-files/?d=",
                   copy_images: bool = True, progress: bool = False) -> ExportReport:
    """Write ``dataset`` to ``target`` = ``FORMAT:PATH`` with FORMAT one of ``EXPORT_FORMATS``."""
    fmt, sep, path_text = target.partition(":")
    if not sep or not path_text or fmt not in EXPORT_FORMATS:
        raise DatasetError(target, f"expected FORMAT:PATH with FORMAT one of {', '.join(EXPORT_FORMATS)}")
    path = Path(path_text).expanduser()
    samples = _items(dataset, "export", progress)
    cats = dataset.categories
    if fmt == "labelme":
        from .labelme import write_labelme

        return write_labelme(path, samples, cats, max_iou_loss=max_iou_loss, copy_images=copy_images)
    if fmt == "label_studio":
        from .label_studio import write_label_studio

        return write_label_studio(path, samples, cats, polygons=polygons, max_iou_loss=max_iou_loss,
                                  as_predictions=as_predictions, image_url_prefix=image_url_prefix)
    from .cvat import write_cvat_coco, write_cvat_xml

    writer = write_cvat_xml if fmt == "cvat_xml" else write_cvat_coco
    return writer(path, samples, cats, polygons=polygons, max_iou_loss=max_iou_loss)


def _label_map(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        label, sep, name = item.partition("=")
        if not sep or not label or not name:
            raise DatasetError("--map", f"expected LABEL=NAME, got {item!r}")
        out[label] = name
    return out


def _loss(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _parser() -> Parser:
    prog = "python -m m2f_core.data.interchange"
    parser = Parser(prog=prog, description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    tools = ", ".join(f"{f}:" for f in TOOL_FORMATS)
    for name, help_text in (("import", "a tool's export -> a corrections folder (trainable as corrections:DIR)"),
                            ("export", "any dataset spec -> a tool's format (pre-labels or annotations)")):
        p = sub.add_parser(name, help=help_text)
        if name == "import":
            p.add_argument("--from", dest="source", required=True, help=f"the tool's export: {tools}PATH")
            p.add_argument("--to", dest="target", required=True, type=Path, help="the corrections folder to write")
            p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
            p.add_argument("--ls-source", choices=("annotations", "predictions"), default="annotations",
                           help="Label Studio: read annotations (default) or predictions")
        else:
            p.add_argument("--from", dest="source", required=True,
                           help="corrections:DIR, coco_panoptic:OUT/panoptic.json (predictions), coco_instances:, "
                                f"or a tool's export ({tools}PATH)")
            p.add_argument("--to", dest="target", required=True,
                           help=f"FORMAT:PATH with FORMAT one of {', '.join(EXPORT_FORMATS)}")
            p.add_argument("--polygons", action="store_true",
                           help="polygons instead of masks (LabelMe always writes polygons)")
            p.add_argument("--max-iou-loss", type=_loss, default=0.01,
                           help="polygons keep IoU >= 1 - this with the mask (default 0.01)")
            p.add_argument("--ls-as", choices=("predictions", "annotations"), default="predictions",
                           help="Label Studio: write pre-labels (default) or annotations")
            p.add_argument("--ls-source", choices=("annotations", "predictions"), default="annotations",
                           help="Label Studio as the source: read annotations (default) or predictions")
            p.add_argument("--image-url-prefix", default="/data/local-files/?d=",
                           help="Label Studio: data.image = this + the image name (default %(default)s)")
            p.add_argument("--no-copy-images", action="store_true", help="LabelMe: refer to the images, do not copy")
        p.add_argument("--images", default=None,
                       help="the image folder (default: the source's own layout; predictions of m2f_core.predict "
                            "need it)")
        p.add_argument("--classes", default=None,
                       help="categories to match labels to: a shipped list (coco_panoptic, ade20k...) or a JSON file")
        p.add_argument("--map", action="append", default=[], metavar="LABEL=NAME", help="rename a tool label")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")  # skipped shapes and tasks
    try:
        classes = load_classes(args.classes)
        label_map = _label_map(args.map)
        if args.command == "import":
            fmt, _ = parse_dataset_spec(args.source)
            if fmt not in TOOL_FORMATS:
                raise DatasetError(args.source, f"import reads a tool's export ({', '.join(TOOL_FORMATS)}); "
                                                "other formats train as they are")
            ds = open_source(args.source, classes, label_map, args.images, args.ls_source)
            out = import_dataset(ds, args.target, args.overwrite, progress=True)
            print(json.dumps({"corrections": str(out), "images": len(ds), "classes": len(ds.categories),
                              "train_with": f"corrections:{out}"}))
            return 0
        ds = open_source(args.source, classes, label_map, args.images, args.ls_source)
        report = export_dataset(ds, args.target, args.polygons, args.max_iou_loss, args.ls_as == "predictions",
                                args.image_url_prefix, not args.no_copy_images, progress=True)
        print(report.summary())
        return 0
    except (DatasetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
