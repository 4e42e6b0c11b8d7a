"""Records shared by every dataset reader and writer, and the helpers they all use.

One ``Sample`` per image says where the image is and carries its ground truth in the result types of
``m2f_core.structures`` (so predictions and ground truth compare directly): a ``PanopticResult``
whose segments are ``GTSegment`` (a ``Segment`` with an ``iscrowd`` flag), a list of
``InstanceAnnotation`` (possibly overlapping, decoded lazily with pycocotools) and a semantic map
(255 = ignore). Class ids inside records are always CONTIGUOUS: the index into the reader's
``categories`` list, i.e. the model's class index; dataset ids (COCO's 1..200, Cityscapes label
ids) appear only in files and in ``categories[i]["id"]``.

Readers are ``SegmentationDataset`` sequences: ``len(ds)``, ``ds[i] -> Sample``. They read the
annotation files of an item when it is asked for and never load images (``load_image`` does).

``specs.open_dataset("FORMAT:PATH", split=...)`` opens any of the supported formats; see its docstring.

Split by responsibility: this module holds the records and the reader base class; category lists
are in ``categories``, checked JSON / PNG access in ``fileio``, ``FORMAT:PATH`` specs in ``specs``
and crash-safe writes in ``m2f_core.atomic``. Import each name from the module that defines it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from ..structures import PanopticResult, Segment
from .errors import DatasetError

__all__ = [
    "IGNORE_LABEL", "GTSegment", "InstanceAnnotation", "Sample", "SegmentationDataset", "Subset",
    "instances_to_semantic", "panoptic_to_instances", "panoptic_to_semantic",
]

IGNORE_LABEL = 255

# --------------------------------------------------------------------------------------------
# Records


@dataclass
class GTSegment(Segment):
    """A ground-truth panoptic segment: a ``Segment`` (score 1, source "gt") plus COCO's ``iscrowd``."""

    score: float = 1.0
    source: str = "gt"
    iscrowd: bool = False

    def to_dict(self) -> dict:
        return {**super().to_dict(), "iscrowd": self.iscrowd}


@dataclass
class InstanceAnnotation:
    """One (possibly overlapping) instance; ``segmentation`` is kept as stored and decoded on demand.

    ``segmentation`` is one of: COCO polygons (list of flat [x0, y0, x1, y1, ...] lists), a COCO RLE
    dict (compressed ``counts`` str/bytes or uncompressed ``counts`` list) or an (H, W) bool mask.
    ``bbox`` is COCO (x, y, w, h); None = computed from the mask.
    """

    category_id: int
    segmentation: Any
    height: int
    width: int
    iscrowd: bool = False
    bbox: tuple[float, float, float, float] | None = None
    id: int | None = None

    def rle(self) -> dict:
        """Compressed RLE (pycocotools' own form: ``counts`` is bytes)."""
        from pycocotools import mask as mask_util

        seg, h, w = self.segmentation, self.height, self.width
        if isinstance(seg, np.ndarray):
            return mask_util.encode(np.asfortranarray(seg.astype(np.uint8)))
        if isinstance(seg, list):  # polygons, merged into one mask
            return mask_util.merge(mask_util.frPyObjects(seg, h, w))
        if isinstance(seg["counts"], list):  # uncompressed RLE
            return mask_util.frPyObjects(seg, h, w)
        counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
        return {"size": [int(seg["size"][0]), int(seg["size"][1])], "counts": counts}

    def mask(self) -> np.ndarray:
        """(H, W) bool mask."""
        if isinstance(self.segmentation, np.ndarray):
            return self.segmentation.astype(bool)
        from pycocotools import mask as mask_util

        return mask_util.decode(self.rle()).astype(bool)

    @property
    def area(self) -> int:
        if isinstance(self.segmentation, np.ndarray):
            return int(np.count_nonzero(self.segmentation))
        from pycocotools import mask as mask_util

        return int(mask_util.area(self.rle()))

    def box(self) -> tuple[float, float, float, float]:
        """COCO (x, y, w, h): the stored one, else the mask's."""
        if self.bbox is not None:
            return tuple(float(v) for v in self.bbox)  # type: ignore[return-value]
        from pycocotools import mask as mask_util

        return tuple(float(v) for v in mask_util.toBbox(self.rle()))  # type: ignore[return-value]


@dataclass
class Sample:
    """One image of a dataset and whatever ground truth its format has (None = not in this format).

    ``file_name`` is the image path (not opened by the reader); ``annotation_file`` the main label file.
    """

    image_id: int | str
    file_name: Path
    height: int
    width: int
    panoptic: PanopticResult | None = None
    instances: list[InstanceAnnotation] | None = None
    semantic: np.ndarray | None = None
    annotation_file: Path | None = None

    @property
    def crowd_ids(self) -> set[int]:
        """Ids of the crowd segments of ``panoptic`` (excluded from PQ and, by default, from semantics)."""
        if self.panoptic is None:
            return set()
        return {s.id for s in self.panoptic.segments if getattr(s, "iscrowd", False)}

    def semantic_map(self, crowd_ignore: bool = True) -> np.ndarray:
        """(H, W) class map: the stored one, else derived from the panoptic or instance annotation."""
        if self.semantic is not None:
            return self.semantic
        if self.panoptic is not None:
            return panoptic_to_semantic(self.panoptic, crowd_ignore=crowd_ignore)
        if self.instances is not None:
            return instances_to_semantic(self.instances, self.height, self.width, crowd_ignore=crowd_ignore)
        raise DatasetError(self.annotation_file or self.file_name, "no annotation to derive a semantic map from")

    def instance_annotations(self, things_only: bool = True) -> list[InstanceAnnotation]:
        """The stored instances, else the (thing) segments of the panoptic annotation, crowd flagged."""
        if self.instances is not None:
            return self.instances
        if self.panoptic is not None:
            return panoptic_to_instances(self.panoptic, things_only=things_only)
        return []


def _label_dtype(max_class: int) -> type:
    return np.uint8 if max_class < IGNORE_LABEL else np.int32


def panoptic_to_semantic(panoptic: PanopticResult, crowd_ignore: bool = True) -> np.ndarray:
    """(H, W) class map of a panoptic annotation; void (and crowd, if ``crowd_ignore``) -> 255.

    uint8 while every class id is below 255, else int32. Note: Mask2Former's
    ``prepare_coco_semantic_annos_from_panoptic_annos.py`` labels crowd pixels with their class
    (``crowd_ignore=False`` reproduces its ``panoptic_semseg_*`` maps).
    """
    max_cat = max((s.category_id for s in panoptic.segments), default=0)
    lut = np.full(int(panoptic.segment_map.max(initial=0)) + 1, IGNORE_LABEL, dtype=np.int64)
    for s in panoptic.segments:
        if s.id < lut.size and not (crowd_ignore and getattr(s, "iscrowd", False)):
            lut[s.id] = s.category_id
    return lut[panoptic.segment_map].astype(_label_dtype(max_cat))


def instances_to_semantic(instances: list[InstanceAnnotation], height: int, width: int,
                          crowd_ignore: bool = True) -> np.ndarray:
    """(H, W) class map painted from instances in order (later ones on top); background/crowd -> 255."""
    max_cat = max((a.category_id for a in instances), default=0)
    out = np.full((height, width), IGNORE_LABEL, dtype=_label_dtype(max_cat))
    for a in instances:
        if not a.iscrowd:
            out[a.mask()] = a.category_id
    if crowd_ignore:
        for a in instances:
            if a.iscrowd:
                out[a.mask()] = IGNORE_LABEL
    return out


def panoptic_to_instances(panoptic: PanopticResult, things_only: bool = True) -> list[InstanceAnnotation]:
    """One ``InstanceAnnotation`` (bool mask) per segment of the panoptic map (things only by default)."""
    out = []
    for s in panoptic.segments:
        if things_only and not s.isthing:
            continue
        out.append(InstanceAnnotation(category_id=s.category_id, segmentation=panoptic.segment_map == s.id,
                                      height=panoptic.height, width=panoptic.width,
                                      iscrowd=bool(getattr(s, "iscrowd", False)), bbox=s.bbox, id=s.id))
    return out


# --------------------------------------------------------------------------------------------
# Readers


class SegmentationDataset(Sequence):
    """Base of the readers: a category list (contiguous order) and lazily loaded ``Sample`` items."""

    def __init__(self, categories: list[dict], name: str) -> None:
        self.categories = categories
        self.name = name
        self.dataset_id_to_contiguous: dict[int, int] = {c["id"]: i for i, c in enumerate(categories)}
        self.split: str | None = None  # the split read, when opened from a root (``specs.open_dataset``)
        self.notes: list[str] = []  # how it was read (layout, split, label convention), for programs to print

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def contiguous_to_dataset_id(self) -> list[int]:
        return [c["id"] for c in self.categories]

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> Sample:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._load(i) for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} items")
        return self._load(index % n)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} items, {len(self.categories)} categories)"

    def describe(self) -> str:
        """One line for a program to print: the item count, then the notes (split, layout, label convention)."""
        return "; ".join([f"{len(self)} images, {len(self.categories)} classes", *self.notes])


class Subset(SegmentationDataset):
    """Some items of a dataset, in the order given, with the dataset's categories (a held-out split)."""

    def __init__(self, dataset: SegmentationDataset, indices: Sequence[int], name: str | None = None) -> None:
        super().__init__(dataset.categories, name or f"{dataset.name}[{len(indices)}]")
        n = len(dataset)
        bad = [i for i in indices if not 0 <= int(i) < n]
        if bad:
            raise IndexError(f"{dataset.name}: indices {bad[:5]} out of range for {n} items")
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, index: int) -> Sample:
        return self.dataset[self.indices[index]]
