"""``FORMAT:PATH`` dataset specs: the one entry point that opens any supported dataset format.

Why a module of its own: the command line (``--dataset``), the app and the FiftyOne bridge name a
dataset by a spec; this module maps each format to its reader and its standard folder layouts
(``layouts``), importing the readers only when asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DatasetError
from .layouts import (
    Found,
    SplitChoice,
    choose_splits,
    find_ade20k,
    find_cityscapes,
    find_coco_instances,
    find_coco_panoptic,
    find_semantic,
)

if TYPE_CHECKING:
    from .records import SegmentationDataset

__all__ = ["FORMATS", "open_dataset", "parse_dataset_spec"]

FORMATS = ("coco_panoptic", "coco_instances", "ade20k", "cityscapes", "semantic", "corrections",
           "cvat", "cvat_xml", "cvat_coco", "label_studio", "labelme")
TOOL_FORMATS = ("cvat", "cvat_xml", "cvat_coco", "label_studio", "labelme")  # annotation tools' exports


def parse_dataset_spec(spec: str) -> tuple[str, Path]:
    """Split ``"FORMAT:PATH"`` into (format, path); FORMAT is one of ``FORMATS``."""
    fmt, sep, path = str(spec).partition(":")
    if not sep or not path:
        raise DatasetError(spec, f"expected FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}")
    if fmt not in FORMATS:
        raise DatasetError(spec, f"unknown dataset format {fmt!r} (known: {', '.join(FORMATS)})")
    return fmt, Path(path).expanduser()


def open_dataset(spec: str, split: str | None = None, purpose: str = "eval", **kwargs: Any) -> SegmentationDataset:
    """Open a dataset from ``"FORMAT:PATH"``; ``kwargs`` go to the reader.

    PATH is a root folder or (COCO formats) an annotation JSON; every standard layout of the format is
    found (``layouts``; drawn in ``docs/datasets.md``), else the ``DatasetError`` names every place
    looked at. ``split`` None picks the default of ``purpose``: the training split (train2017,
    training, train) for ``"train"``, the validation split (val2017, validation, val) for ``"eval"``.
    The dataset's ``split`` is the one read and its ``notes`` say how it was read (split, layout, label
    convention); programs print ``dataset.describe()``.

    - ``coco_panoptic``: the raw COCO download, Detectron2's ``coco/``, ADE20K panoptic
      (``prepare_ade20k_pan_seg.py``), Cityscapes panoptic (``createPanopticImgs``), the synthetic
      generator's ``OUT/{split}/panoptic.json``; or the JSON itself.
    - ``coco_instances``: ``ROOT/annotations/instances_{split}.json``, or the JSON itself.
    - ``ade20k`` (ADEChallengeData2016, labels shifted: 0 = ignore): ``ROOT/images/{split}``,
      ``ROOT/annotations/{split}``; a folder without split folders is read whole.
    - ``cityscapes``: ``ROOT/leftImg8bit/{split}/<city>/`` and ``ROOT/gtFine/{split}/<city>/``.
    - ``semantic``: ``ROOT/images[/{split}]`` and ``ROOT/annotations[/{split}]`` with 0-based PNG class maps
      (255 = ignore); needs ``categories=`` (a list or a shipped name such as ``"ade20k"``). ADE20K's
      1-based labels are refused (use ``ade20k:``), never shifted silently.
    - ``corrections:ROOT`` (``ROOT/{split}`` if split): an exported corrections folder
      (``m2f_core.data.corrections``).
    - annotation tools (``docs/interchange.md``): ``cvat_xml:`` (``annotations.xml`` or its folder),
      ``cvat_coco:`` (CVAT's COCO 1.0 JSON or its folder), ``cvat:`` (either, detected),
      ``label_studio:`` (the JSON export), ``labelme:`` (a JSON or a folder of them); ``categories=``
      and ``label_map=`` match the tools' label names to classes.
    """
    fmt, path = parse_dataset_spec(spec)
    splits = choose_splits(split, purpose)
    if fmt == "coco_panoptic":
        return _open_coco_panoptic(path, splits, purpose, kwargs)
    if fmt == "coco_instances":
        return _open_coco_instances(path, splits, purpose, kwargs)
    if fmt == "ade20k":
        return _open_ade20k(path, splits, purpose, kwargs)
    if fmt == "cityscapes":
        return _open_cityscapes(path, splits, purpose, kwargs)
    if fmt == "corrections":
        from .corrections import CorrectionsDataset

        return CorrectionsDataset(path / split if split else path, **kwargs)
    if fmt in TOOL_FORMATS:
        return _open_tool(fmt, path, kwargs)
    if "categories" not in kwargs:
        raise DatasetError(spec, "the semantic format needs categories= (a list or a shipped name)")
    return _open_semantic(path, splits, purpose, kwargs)


def _found(dataset: SegmentationDataset, found: Found, splits: SplitChoice, purpose: str) -> SegmentationDataset:
    """Record the split and layout found on the dataset (its ``split`` and first ``notes``)."""
    dataset.split = found.split
    where = splits.describe(found.split, purpose) if found.split else "no split folders"
    dataset.notes[:0] = [where, f"layout: {found.layout}"]
    return dataset


def _is_root(path: Path) -> bool:
    """A COCO spec names a root folder unless it names a .json file (a missing root lists where it looked)."""
    return path.is_dir() or path.suffix.lower() != ".json"


def _open_coco_panoptic(path: Path, splits: SplitChoice, purpose: str, kwargs: dict) -> SegmentationDataset:
    from .coco_panoptic import CocoPanoptic

    found = find_coco_panoptic(path, splits) if _is_root(path) else None
    ds = CocoPanoptic(found.paths["json"] if found else path, **kwargs)
    if found:
        if found.layout == "COCO":
            found.layout = "COCO raw download" if ds.png_dir.parent.name == "annotations" else "COCO (Detectron2)"
        _found(ds, found, splits, purpose)
    ds.notes.append(f"annotations {ds.json_file}, PNGs {ds.png_dir}, images {ds.image_dir}")
    if ds.json_file.stem.startswith("cityscapes_panoptic_"):
        ids = "train ids 0..18" if ds.json_file.stem.endswith("_trainId") else "label ids 7..33"
        ds.notes.append(f"category ids: Cityscapes {ids} (cityscapesScripts), classes in train-id order")
    if ds.json_file.stem.startswith("ade20k_panoptic_"):
        ds.notes.append("category ids: ADE20K 0..149 (prepare_ade20k_pan_seg.py), the semantic class ids")
    ds.check_images()
    return ds


def _open_coco_instances(path: Path, splits: SplitChoice, purpose: str, kwargs: dict) -> SegmentationDataset:
    from .coco_instances import CocoInstances

    found = find_coco_instances(path, splits) if _is_root(path) else None
    ds = CocoInstances(found.paths["json"] if found else path, **kwargs)
    if found:
        _found(ds, found, splits, purpose)
    ds.notes.append(f"annotations {ds.json_file}, images {ds.image_dir}")
    ds.check_images()
    return ds


def _open_ade20k(path: Path, splits: SplitChoice, purpose: str, kwargs: dict) -> SegmentationDataset:
    from .ade20k import ADE20KSemantic

    labels = "annotations_detectron2" if kwargs.get("prepared") else "annotations"
    found = find_ade20k(path, splits, labels)
    return _found(ADE20KSemantic(found.paths["root"], split=found.split, **kwargs), found, splits, purpose)


def _open_cityscapes(path: Path, splits: SplitChoice, purpose: str, kwargs: dict) -> SegmentationDataset:
    from .cityscapes import CityscapesDataset

    found = find_cityscapes(path, splits)
    return _found(CityscapesDataset(path, split=found.split, **kwargs), found, splits, purpose)


def _open_semantic(path: Path, splits: SplitChoice, purpose: str, kwargs: dict) -> SegmentationDataset:
    from .semantic import SemanticFolder, refuse_one_based_labels

    found = find_semantic(path, splits)
    ds = SemanticFolder(found.paths["images"], found.paths["labels"], **kwargs)
    refuse_one_based_labels(ds, path)
    return _found(ds, found, splits, purpose)


def _open_tool(fmt: str, path: Path, kwargs: dict) -> SegmentationDataset:
    """An annotation tool's export (``cvat``, ``label_studio``, ``labelme`` modules)."""
    if fmt == "label_studio":
        from .label_studio import label_studio_dataset

        ds = label_studio_dataset(path, **kwargs)
    elif fmt == "labelme":
        from .labelme import labelme_dataset

        ds = labelme_dataset(path, **kwargs)
    else:
        from .cvat import cvat_coco_dataset, cvat_xml_dataset, open_cvat

        if fmt == "cvat_xml" and path.is_dir():
            path = path / "annotations.xml"
        if fmt == "cvat_coco" and path.is_dir():
            found = sorted((path / "annotations").glob("instances_*.json"))
            if len(found) != 1:
                raise DatasetError(path, f"expected one annotations/instances_*.json, found {len(found)} "
                                         "(name the subset's JSON itself)")
            path = found[0]
        reader = {"cvat": open_cvat, "cvat_xml": cvat_xml_dataset, "cvat_coco": cvat_coco_dataset}[fmt]
        ds = reader(path, **kwargs)
    ds.notes.append(f"{fmt} export {ds.source}, images {ds.image_dir}")
    return ds
