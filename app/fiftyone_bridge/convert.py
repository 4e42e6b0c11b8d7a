"""Our records and results <-> FiftyOne labels, both ways and without loss. No database needed.

Class ids inside our records are contiguous (index into the dataset's ``categories``). In FiftyOne
a detection's ``label`` is the class name, and reading back goes by name first (so a relabel in
the App or an annotation tool is honoured), then by the ``category_id`` attribute (the dataset id).

Masks: a ``Detection`` holds the crop of its mask inside its box (relative coordinates); the box
corners are whole pixels, so ``full_mask`` puts the crop back exactly. A ``Segmentation`` holds
class + 1 (0 = void / ignore), uint8 below 255 classes, uint16 above.
"""

from __future__ import annotations

from collections.abc import Sequence

import fiftyone as fo
import numpy as np

from m2f_core.data.records import IGNORE_LABEL, GTSegment, InstanceAnnotation
from m2f_core.structures import InstanceResult, PanopticResult, Segment

from . import BridgeError

__all__ = [
    "ClassIndex", "detections_to_instance_annotations", "detections_to_instance_result", "detections_to_panoptic",
    "full_mask", "instance_annotations_to_detections", "instance_result_to_detections", "mask_targets",
    "panoptic_to_detections", "segmentation_to_semantic", "semantic_to_panoptic", "semantic_to_segmentation",
]


class ClassIndex:
    """Name / dataset id -> contiguous index of a category list (names compared case-insensitively)."""

    def __init__(self, categories: Sequence[dict]) -> None:
        self.categories = list(categories)
        self.by_name: dict[str, int] = {}
        for i, c in enumerate(self.categories):
            self.by_name.setdefault(_key(c["name"]), i)
        self.by_id = {int(c["id"]): i for i, c in enumerate(self.categories)}

    def __len__(self) -> int:
        return len(self.categories)

    def index(self, label: str | None, category_id: int | None = None) -> int:
        """Contiguous index of a detection's class, -1 when neither its label nor its id is known."""
        if label is not None and _key(label) in self.by_name:
            return self.by_name[_key(label)]
        if category_id is not None and int(category_id) in self.by_id:
            return self.by_id[int(category_id)]
        return -1

    def name(self, index: int) -> str:
        return str(self.categories[index]["name"])

    def isthing(self, index: int) -> bool:
        return bool(self.categories[index].get("isthing", True))


def _key(name: str) -> str:
    return str(name).strip().lower()


def mask_targets(categories: Sequence[dict]) -> dict[int, str]:
    """FiftyOne ``mask_targets`` of our semantic ``Segmentation``: value ``i + 1`` is class ``i``."""
    return {i + 1: str(c["name"]) for i, c in enumerate(categories)}


# --------------------------------------------------------------------------------------------
# masks


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) exclusive box of the True pixels, None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _detection(mask: np.ndarray, label: str, **attributes) -> fo.Detection | None:
    """A ``Detection`` of a full-size bool mask (crop + relative box); None for an empty mask."""
    box = _box(mask)
    if box is None:
        return None
    y0, x0, y1, x1 = box
    h, w = mask.shape
    return fo.Detection(label=label, bounding_box=[x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h],
                        mask=np.ascontiguousarray(mask[y0:y1, x0:x1]), **attributes)


def full_mask(det: fo.Detection, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a detection: its crop put back in its box (the box alone without a mask)."""
    out = np.zeros((height, width), dtype=bool)
    x, y, w, h = det.bounding_box
    x0, y0 = int(round(x * width)), int(round(y * height))
    if det.has_mask:
        crop = np.asarray(det.get_mask())
        if crop.ndim == 3:
            crop = crop[..., 0]
        crop = crop.astype(bool)
    else:  # a box drawn in an annotation tool: the box is the mask
        crop = np.ones((max(1, int(round(h * height))), max(1, int(round(w * width)))), dtype=bool)
    ch, cw = crop.shape
    y1, x1 = min(height, y0 + ch), min(width, x0 + cw)
    if y1 > max(y0, 0) and x1 > max(x0, 0):
        out[max(y0, 0):y1, max(x0, 0):x1] = crop[max(0, -y0):y1 - y0, max(0, -x0):x1 - x0]
    return out


# --------------------------------------------------------------------------------------------
# panoptic


def panoptic_to_detections(panoptic: PanopticResult, classes: ClassIndex, names: Sequence[str] | None = None,
                           mapping: np.ndarray | None = None, scores: bool = False) -> fo.Detections:
    """One detection per segment with pixels (things and stuff), in segment order.

    Ground truth: ``category_id`` of the segments are contiguous dataset ids. A prediction passes
    the model's ``names`` and ``mapping`` (model class -> dataset index, -1 = the dataset has no such
    class: the detection keeps the model's name and ``category_id`` None) and ``scores=True``.
    """
    seg_map = panoptic.segment_map
    dets = []
    for s in panoptic.segments:
        cls = int(s.category_id) if mapping is None else int(mapping[s.category_id])
        label = classes.name(cls) if cls >= 0 else str(names[s.category_id] if names else s.category_id)
        attrs = {"segment_id": int(s.id), "isthing": bool(s.isthing), "iscrowd": bool(getattr(s, "iscrowd", False)),
                 "category_id": int(classes.categories[cls]["id"]) if cls >= 0 else None}
        if scores:
            attrs["confidence"] = float(s.score)
        mask = seg_map == s.id
        det = _detection(mask, label, area=int(np.count_nonzero(mask)), **attrs)
        if det is not None:
            dets.append(det)
    return fo.Detections(detections=dets)


def detections_to_panoptic(dets: fo.Detections | None, classes: ClassIndex, height: int, width: int,
                           gt: bool = True, where: str = "sample") -> PanopticResult:
    """The segment-id map and segments of a panoptic ``Detections`` field (``GTSegment`` when ``gt``).

    A detection without ``segment_id`` (drawn in an annotation tool) gets a fresh id; where masks
    overlap the later detection wins. A class the dataset does not know is an error for ground
    truth and void for a prediction (as ``m2f_core.metrics.model_eval`` treats unmapped classes).
    """
    seg_map = np.zeros((height, width), dtype=np.int32)
    segments: list[Segment] = []
    used: set[int] = set()
    items = list(dets.detections) if dets is not None else []
    next_id = max([int(d["segment_id"]) for d in items if _attr(d, "segment_id") is not None] + [0]) + 1
    for d in items:
        cls = classes.index(d.label, _attr(d, "category_id"))
        if cls < 0:
            if gt:
                raise BridgeError(f"{where}: unknown class {d.label!r} (not in the dataset's categories)")
            continue
        sid = _attr(d, "segment_id")
        if sid is None or int(sid) in used or not 0 < int(sid) < 256**3:
            sid, next_id = next_id, next_id + 1
        sid = int(sid)
        used.add(sid)
        seg_map[full_mask(d, height, width)] = sid
        isthing = classes.isthing(cls)
        if gt:
            segments.append(GTSegment(id=sid, category_id=cls, isthing=isthing,
                                      iscrowd=bool(_attr(d, "iscrowd") or False)))
        else:
            conf = d.confidence if d.confidence is not None else 1.0
            segments.append(Segment(id=sid, category_id=cls, isthing=isthing, score=float(conf)))
    present = set(np.unique(seg_map).tolist())
    pan = PanopticResult(seg_map, [s for s in segments if s.id in present])  # fully covered by a later one
    return pan.update_stats()


def _attr(det: fo.Detection, name: str):
    """A custom attribute of a detection, None when absent."""
    try:
        return det[name]
    except (KeyError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------
# instances


def instance_annotations_to_detections(annotations: Sequence[InstanceAnnotation],
                                       classes: ClassIndex) -> fo.Detections:
    """Ground-truth instances (possibly overlapping), ``iscrowd`` kept for COCO-style evaluation."""
    dets = []
    for a in annotations:
        cls = a.category_id
        det = _detection(a.mask(), classes.name(cls), category_id=int(classes.categories[cls]["id"]),
                         iscrowd=bool(a.iscrowd), isthing=classes.isthing(cls), area=int(a.area))
        if det is not None:
            dets.append(det)
    return fo.Detections(detections=dets)


def instance_result_to_detections(result: InstanceResult, classes: ClassIndex, names: Sequence[str],
                                  mapping: np.ndarray) -> fo.Detections:
    """Predicted instances with ``confidence``; labels in the dataset's names where the model's class maps."""
    dets = []
    for mask, score, label in zip(result.masks, result.scores, result.labels):
        cls = int(mapping[int(label)])
        det = _detection(mask, classes.name(cls) if cls >= 0 else str(names[int(label)]), confidence=float(score),
                         category_id=int(classes.categories[cls]["id"]) if cls >= 0 else None)
        if det is not None:
            dets.append(det)
    return fo.Detections(detections=dets)


def detections_to_instance_annotations(dets: fo.Detections | None, classes: ClassIndex, height: int, width: int,
                                       where: str = "sample") -> list[InstanceAnnotation]:
    """Ground-truth instances of a ``Detections`` field (an unknown class is an error)."""
    out = []
    for d in (dets.detections if dets is not None else []):
        cls = classes.index(d.label, _attr(d, "category_id"))
        if cls < 0:
            raise BridgeError(f"{where}: unknown class {d.label!r} (not in the dataset's categories)")
        out.append(InstanceAnnotation(category_id=cls, segmentation=full_mask(d, height, width), height=height,
                                      width=width, iscrowd=bool(_attr(d, "iscrowd") or False)))
    return out


def detections_to_instance_result(dets: fo.Detections | None, classes: ClassIndex, height: int,
                                  width: int) -> InstanceResult:
    """Predicted instances (classes the dataset does not know are left out; no confidence = 1)."""
    masks, scores, labels = [], [], []
    for d in (dets.detections if dets is not None else []):
        cls = classes.index(d.label, _attr(d, "category_id"))
        if cls < 0:
            continue
        masks.append(full_mask(d, height, width))
        scores.append(1.0 if d.confidence is None else float(d.confidence))
        labels.append(cls)
    stack = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    boxes = np.array([_xyxy(m) for m in masks], dtype=np.float32).reshape(-1, 4)
    return InstanceResult(stack, boxes, np.asarray(scores, np.float32), np.asarray(labels, np.int64))


def _xyxy(mask: np.ndarray) -> tuple[float, float, float, float]:
    box = _box(mask)
    return (0.0, 0.0, 0.0, 0.0) if box is None else (box[1], box[0], box[3], box[2])


# --------------------------------------------------------------------------------------------
# semantic


def semantic_to_segmentation(label_map: np.ndarray, num_classes: int) -> fo.Segmentation:
    """A class map (255 = ignore, or negative = no class) as a ``Segmentation`` of class + 1 (0 = void)."""
    labels = np.asarray(label_map).astype(np.int64)
    valid = (labels >= 0) & (labels < num_classes) & (labels != IGNORE_LABEL)
    dtype = np.uint8 if num_classes < 255 else np.uint16
    return fo.Segmentation(mask=np.where(valid, labels + 1, 0).astype(dtype))


def segmentation_to_semantic(seg: fo.Segmentation | None, num_classes: int, where: str = "sample") -> np.ndarray | None:
    """The class map of a ``Segmentation`` (void -> 255); None when the field is empty."""
    if seg is None or not seg.has_mask:
        return None
    values = np.asarray(seg.get_mask())
    if values.ndim == 3:
        raise BridgeError(f"{where}: RGB segmentation masks are not supported (expected class + 1 values)")
    values = values.astype(np.int64)
    if values.size and int(values.max()) > num_classes:
        raise BridgeError(f"{where}: segmentation value {int(values.max())} is above the {num_classes} classes")
    dtype = np.uint8 if num_classes < 255 else np.int32
    return np.where(values == 0, IGNORE_LABEL, values - 1).astype(dtype)


def semantic_to_panoptic(label_map: np.ndarray, classes: ClassIndex) -> PanopticResult:
    """One segment per class present (id = class + 1), for exporting a semantic-only annotation."""
    labels = np.asarray(label_map).astype(np.int64)
    valid = (labels >= 0) & (labels < len(classes)) & (labels != IGNORE_LABEL)
    seg_map = np.where(valid, labels + 1, 0).astype(np.int32)
    segments = [GTSegment(id=int(c) + 1, category_id=int(c), isthing=classes.isthing(int(c)))
                for c in np.unique(labels[valid]).tolist()]
    return PanopticResult(seg_map, segments).update_stats()
