"""Open a source dataset with the project's readers, without importing FiftyOne (bad input fails fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m2f_core.data.records import SegmentationDataset
from m2f_core.data.specs import open_dataset

from . import BridgeError

IMPORT_FORMATS = ("coco_panoptic", "coco_instances", "ade20k", "cityscapes", "semantic", "corrections")


def open_source(fmt: str, path: str | Path, split: str | None = None, image_dir: str | Path | None = None,
                class_list: str | None = None) -> SegmentationDataset:
    """The project's reader of a dataset (``DatasetError`` with a one-line message on bad input)."""
    if fmt not in IMPORT_FORMATS:
        raise BridgeError(f"unknown format {fmt!r} (one of {', '.join(IMPORT_FORMATS)})")
    kwargs: dict[str, Any] = {}
    if image_dir is not None:
        kwargs["image_dir"] = Path(image_dir).expanduser()
    if class_list is not None:
        kwargs["categories"] = class_list
    reader = open_dataset(f"{fmt}:{Path(path).expanduser()}", split=split, **kwargs)
    if len(reader) == 0:
        raise BridgeError(f"{path}: the dataset has no images")
    return reader
