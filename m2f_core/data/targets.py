"""Mask2Former training targets: (labels int64 (N,), masks bool (N, H, W)) from an augmented annotation.

As the official dataset mappers: panoptic = one mask per non-crowd segment (things and stuff,
``MaskFormerPanopticDatasetMapper`` / ``COCOPanopticNewBaselineDatasetMapper``); instance = one mask
per non-crowd instance (``COCOInstanceNewBaselineDatasetMapper``); semantic = one mask per class
present, ignore excluded (``MaskFormerSemanticDatasetMapper``). Unlike the panoptic mappers, masks
left empty by a crop are dropped here (they can only be matched to a prediction of nothing and
make the dice loss degenerate), as Detectron2's ``filter_empty_instances`` does for instances.

``class_map`` is an optional lookup array: model class of each dataset class, -1 = not trained
(the mask is dropped; in a semantic map its pixels become ignore).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

Targets = tuple[np.ndarray, np.ndarray]


def _empty(height: int, width: int) -> Targets:
    return np.zeros(0, dtype=np.int64), np.zeros((0, height, width), dtype=bool)


def _map_labels(labels: np.ndarray, class_map: np.ndarray | None) -> np.ndarray:
    """Labels through ``class_map`` (-1 for classes outside it)."""
    if class_map is None:
        return labels.astype(np.int64)
    inside = (labels >= 0) & (labels < len(class_map))
    out = np.full(labels.shape, -1, dtype=np.int64)
    out[inside] = class_map[labels[inside]]
    return out


def _finish(labels: Sequence[int], masks: list[np.ndarray], height: int, width: int,
            class_map: np.ndarray | None) -> Targets:
    if not masks:
        return _empty(height, width)
    lab = _map_labels(np.asarray(labels, dtype=np.int64), class_map)
    stack = np.stack(masks).astype(bool, copy=False)
    keep = (lab >= 0) & stack.any(axis=(1, 2))
    return lab[keep], stack[keep]


def _field(segment: object, key: str, default: object = None) -> object:
    return segment.get(key, default) if isinstance(segment, dict) else getattr(segment, key, default)


def panoptic_targets(segment_map: np.ndarray, segments: Iterable, class_map: np.ndarray | None = None) -> Targets:
    """One mask per non-crowd segment of an (H, W) id map (0 = void); crowd and empty segments dropped.

    ``segments``: objects with ``id``, ``category_id`` and optionally ``iscrowd`` (``GTSegment``) or
    dicts with those keys (COCO ``segments_info``). Masks are disjoint because the map is.
    """
    h, w = segment_map.shape[:2]
    labels, masks = [], []
    for s in segments:
        if _field(s, "iscrowd", False):
            continue
        labels.append(int(_field(s, "category_id")))
        masks.append(segment_map == int(_field(s, "id")))
    return _finish(labels, masks, h, w, class_map)


def instance_targets(masks: np.ndarray, category_ids: Sequence[int], iscrowd: Sequence[bool] | None = None,
                     class_map: np.ndarray | None = None) -> Targets:
    """(N, H, W) instance masks (possibly overlapping) -> targets; crowd and empty masks dropped."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or len(masks) != len(category_ids):
        raise ValueError(f"expected (N, H, W) masks for {len(category_ids)} categories, got {masks.shape}")
    crowd = np.zeros(len(masks), bool) if iscrowd is None else np.asarray(iscrowd, dtype=bool)
    keep = ~crowd
    return _finish(np.asarray(category_ids, np.int64)[keep], list(masks[keep]), masks.shape[1], masks.shape[2],
                   class_map)


def semantic_targets(label_map: np.ndarray, ignore_value: int = 255, class_map: np.ndarray | None = None) -> Targets:
    """One mask per class present in an (H, W) class map, ``ignore_value`` excluded, classes ascending.

    With ``class_map`` the map is translated first, so dataset classes sent to the same model class
    share one mask and unmapped classes are ignored.
    """
    h, w = label_map.shape[:2]
    labels = np.asarray(label_map).astype(np.int64)
    if class_map is not None:
        mapped = _map_labels(labels, class_map)
        labels = np.where((labels == ignore_value) | (mapped < 0), ignore_value, mapped)
    classes = np.unique(labels)
    classes = classes[classes != ignore_value]
    if classes.size == 0:
        return _empty(h, w)
    masks = labels[None] == classes[:, None, None]
    return classes.astype(np.int64), masks
