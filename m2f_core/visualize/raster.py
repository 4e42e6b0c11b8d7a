"""Vectorised building blocks of the overlays: segment-map indexing, borders, fills, boxes, label anchors.

Why a module of its own: these functions keep rendering free of per-segment loops (a colour lookup
table indexed by the segment map, borders from the map and its shifted copies); the overlays in
``overlays`` only combine them.
"""

from __future__ import annotations

import cv2
import numpy as np


def compact_index(label_map: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Map each pixel of ``label_map`` to 1 + the position of its value in ``ids``; 0 when it is not in ``ids``."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0 or label_map.size == 0:
        return np.zeros(label_map.shape, dtype=np.int32)
    lo, hi = int(label_map.min()), int(label_map.max())
    if hi < (1 << 20):  # direct lookup table: the fast path
        if lo < -1:
            label_map = np.maximum(label_map, -1)
        lut = np.zeros(hi + 2, dtype=np.int32)  # lut[-1] (negative ids) stays 0
        ok = (ids >= 0) & (ids <= hi)
        lut[ids[ok]] = np.flatnonzero(ok) + 1
        return lut[label_map]
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    where = np.searchsorted(sorted_ids, label_map)
    where_c = np.minimum(where, len(sorted_ids) - 1)
    hit = sorted_ids[where_c] == label_map
    return np.where(hit, order[where_c] + 1, 0).astype(np.int32)


def border_mask(idx: np.ndarray) -> np.ndarray:
    """Pixels with a non-zero index that have a 4-neighbour with a different index."""
    b = np.zeros(idx.shape, dtype=bool)
    d = idx[:, 1:] != idx[:, :-1]
    b[:, 1:] |= d
    b[:, :-1] |= d
    d = idx[1:, :] != idx[:-1, :]
    b[1:, :] |= d
    b[:-1, :] |= d
    b &= idx > 0
    return b


def _gather_rgb(lut: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``lut[idx]`` as a contiguous (H, W, 3) uint8 image (a packed 32-bit gather: ~10x faster than fancy
    indexing of the (n, 3) table)."""
    lut4 = np.zeros((len(lut), 4), dtype=np.uint8)
    lut4[:, :3] = lut
    packed = lut4.view(np.uint32).ravel()[idx]
    return cv2.cvtColor(packed.view(np.uint8).reshape(*idx.shape, 4), cv2.COLOR_RGBA2RGB)


def blend_fill(image: np.ndarray, idx: np.ndarray, lut: np.ndarray, alpha: float, outline: bool) -> np.ndarray:
    """Alpha-blend ``lut[idx]`` over ``image`` where ``idx > 0``; opaque outlines; void untouched."""
    out = image.copy()
    fg = idx > 0
    if not fg.any():
        return out
    col = _gather_rgb(lut, idx)
    blended = cv2.addWeighted(image, 1.0 - alpha, col, alpha, 0.0)
    cv2.copyTo(blended, fg.view(np.uint8), out)
    if outline:
        cv2.copyTo(col, border_mask(idx).view(np.uint8), out)
    return out


def bboxes(idx: np.ndarray, n: int) -> np.ndarray:
    """(n + 1, 4) int boxes ``y0, y1, x0, x1`` (exclusive ends) of each index; ``-1`` rows for absent ones.

    A region's extreme pixels lie on its boundary (image edges included), so only boundary pixels are reduced.
    """
    h, w = idx.shape
    edge = np.zeros(idx.shape, dtype=bool)
    d = idx[:, 1:] != idx[:, :-1]
    edge[:, 1:] |= d
    edge[:, :-1] |= d
    d = idx[1:, :] != idx[:-1, :]
    edge[1:, :] |= d
    edge[:-1, :] |= d
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    ys, xs = np.nonzero(edge)
    labs = idx[ys, xs]
    y0 = np.full(n + 1, h, dtype=np.int64)
    x0 = np.full(n + 1, w, dtype=np.int64)
    y1 = np.full(n + 1, -1, dtype=np.int64)
    x1 = np.full(n + 1, -1, dtype=np.int64)
    np.minimum.at(y0, labs, ys)
    np.minimum.at(x0, labs, xs)
    np.maximum.at(y1, labs, ys)
    np.maximum.at(x1, labs, xs)
    out = np.stack([y0, y1 + 1, x0, x1 + 1], axis=1)
    out[y1 < 0] = -1
    return out


def label_anchor(mask: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> tuple[int, int]:
    """(x, y) of the pixel of ``mask`` (within the given box; ``mask`` may be that crop already) farthest from
    its border and the image edges."""
    crop = np.zeros((y1 - y0 + 2, x1 - x0 + 2), dtype=np.uint8)
    crop[1:-1, 1:-1] = mask if mask.shape == (y1 - y0, x1 - x0) else mask[y0:y1, x0:x1]
    dist = cv2.distanceTransform(crop, cv2.DIST_L2, 3)
    k = int(np.argmax(dist))
    cy, cx = divmod(k, crop.shape[1])
    return (x0 + cx - 1, y0 + cy - 1)
