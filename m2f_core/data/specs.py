"""``FORMAT:PATH`` dataset specs: the one entry point that opens any supported dataset format.

Why a module of its own: the command line (``--dataset``), the app and the FiftyOne bridge name a
dataset by a spec; this module maps each format to its reader and Detectron2's folder conventions,
importing the readers only when asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DatasetError

if TYPE_CHECKING:
    from .records import SegmentationDataset

__all__ = ["FORMATS", "open_dataset", "parse_dataset_spec"]

FORMATS = ("coco_panoptic", "coco_instances", "ade20k", "cityscapes", "semantic", "corrections")


def parse_dataset_spec(spec: str) -> tuple[str, Path]:
    """Split ``"FORMAT:PATH"`` into (format, path); FORMAT is one of ``FORMATS``."""
    fmt, sep, path = str(spec).partition(":")
    if not sep or not path:
        raise DatasetError(spec, f"expected FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}")
    if fmt not in FORMATS:
        raise DatasetError(spec, f"unknown dataset format {fmt!r} (known: {', '.join(FORMATS)})")
    return fmt, Path(path).expanduser()


def open_dataset(spec: str, split: str | None = None, **kwargs: Any) -> SegmentationDataset:
    """Open a dataset from ``"FORMAT:PATH"``; ``kwargs`` go to the reader.

    Conventions (Detectron2's ``datasets/`` layout when PATH is a folder):

    - ``coco_panoptic:FILE.json``: PNGs in ``FILE/`` next to it (or ``../FILE/`` when the JSON is in
      ``annotations/``). ``coco_panoptic:ROOT``: ``ROOT/annotations/panoptic_{split}.json``,
      PNGs ``ROOT/panoptic_{split}/``, images ``ROOT/{split}/``; split defaults to ``val2017``.
    - ``coco_instances:FILE.json`` (images relative to the JSON's folder, or ``ROOT/{split}/`` when
      the JSON is ``ROOT/annotations/instances_{split}.json``). ``coco_instances:ROOT``:
      ``ROOT/annotations/instances_{split}.json``; split defaults to ``val2017``.
    - ``ade20k:ROOT`` (ADEChallengeData2016): ``ROOT/images/{split}``, ``ROOT/annotations/{split}``;
      split defaults to ``validation``; ``split=""`` reads ``ROOT/images`` and ``ROOT/annotations``.
    - ``cityscapes:ROOT``: ``ROOT/leftImg8bit/{split}/<city>/`` and ``ROOT/gtFine/{split}/<city>/``;
      split defaults to ``val``; ``split=""`` searches all of ``leftImg8bit/``.
    - ``semantic:ROOT``: ``ROOT/images[/{split}]`` and ``ROOT/annotations[/{split}]`` with PNG class
      maps (255 = ignore); needs ``categories=`` (a list or a shipped name such as ``"ade20k"``).
    - ``corrections:ROOT`` (``ROOT/{split}`` if split): an exported corrections folder
      (``m2f_core.data.corrections``).
    """
    fmt, path = parse_dataset_spec(spec)
    if fmt == "coco_panoptic":
        from .coco_panoptic import CocoPanoptic

        if path.is_dir():
            split = split or "val2017"
            kwargs.setdefault("image_dir", path / split)
            kwargs.setdefault("png_dir", path / f"panoptic_{split}")
            path = path / "annotations" / f"panoptic_{split}.json"
        return CocoPanoptic(path, **kwargs)
    if fmt == "coco_instances":
        from .coco_instances import CocoInstances

        if path.is_dir():
            split = split or "val2017"
            kwargs.setdefault("image_dir", path / split)
            path = path / "annotations" / f"instances_{split}.json"
        return CocoInstances(path, **kwargs)
    if fmt == "ade20k":
        from .ade20k import ADE20KSemantic

        return ADE20KSemantic(path, split="validation" if split is None else split, **kwargs)
    if fmt == "cityscapes":
        from .cityscapes import CityscapesDataset

        return CityscapesDataset(path, split="val" if split is None else split, **kwargs)
    if fmt == "corrections":
        from .corrections import CorrectionsDataset

        return CorrectionsDataset(path / split if split else path, **kwargs)
    from .semantic import SemanticFolder

    if "categories" not in kwargs:
        raise DatasetError(spec, "the semantic format needs categories= (a list or a shipped name)")
    sub = split or ""
    return SemanticFolder(path / "images" / sub, path / "annotations" / sub, **kwargs)
