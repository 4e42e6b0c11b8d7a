"""Regions of an edit: a brush stroke, a polygon or a full-size mask reduced to a crop, and crop boxes.

Why a module of its own: every edit of ``EditSession`` touches only a box of the segment map, so
strokes and masks are turned into crops here once, and the box arithmetic that keeps edits and
their history proportional to the changed area (not to the image) lives in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from m2f_core.structures import Segment

__all__ = ["Box", "Crop", "Polygon", "polygon_crop", "segment_box", "stroke_crop", "stroke_mask", "tight_box",
           "union_box"]

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive ends)
POLYGON_SHIFT = 8  # cv2.fillPoly fixed-point bits: float vertices kept to 1/256 px
MAX_POLYGON_COORD = 1_000_000  # farther vertices would overflow cv2's fixed-point int32 coordinates


@dataclass
class Crop:
    """A boolean mask restricted to its box, so that a stroke never costs a full-size array."""

    y0: int
    x0: int
    mask: np.ndarray

    @property
    def box(self) -> Box:
        return self.y0, self.x0, self.y0 + self.mask.shape[0], self.x0 + self.mask.shape[1]


def stroke_crop(points: Sequence[tuple[float, float]], radius: float, shape: tuple[int, int]) -> Crop | None:
    """Pixels whose centre lies within ``radius`` of the polyline through ``points`` (x, y), inside the image."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError("a stroke must be a non-empty list of (x, y) points")
    if not np.isfinite(pts).all():
        raise ValueError("stroke points must be finite numbers")
    radius = float(radius)
    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"brush radius must be >= 0, got {radius}")
    h, w = shape
    x0 = max(int(np.floor(pts[:, 0].min() - radius)), 0)
    x1 = min(int(np.ceil(pts[:, 0].max() + radius)) + 1, w)
    y0 = max(int(np.floor(pts[:, 1].min() - radius)), 0)
    y1 = min(int(np.ceil(pts[:, 1].max() + radius)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)  # (ch, cw) the stroke's box inside the image
    r2 = radius * radius + 1e-9
    reach = radius + 1.0  # a pixel centre within radius of ab lies in ab's box grown by this (with margin)
    starts = pts if len(pts) == 1 else pts[:-1]
    ends = pts if len(pts) == 1 else pts[1:]
    for (ax, ay), (bx, by) in zip(starts, ends):  # distance from each pixel centre to segment ab
        # only ab's own box (+ radius) can be within reach: O(points x radius x length), not x crop area
        sy0 = max(int(np.floor(min(ay, by) - reach)), y0)
        sy1 = min(int(np.ceil(max(ay, by) + reach)) + 1, y1)
        sx0 = max(int(np.floor(min(ax, bx) - reach)), x0)
        sx1 = min(int(np.ceil(max(ax, bx) + reach)) + 1, x1)
        if sy0 >= sy1 or sx0 >= sx1:
            continue
        ys = np.arange(sy0, sy1, dtype=np.float64)[:, None]  # (sh, 1)
        xs = np.arange(sx0, sx1, dtype=np.float64)[None, :]  # (1, sw)
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        if length2 == 0:
            t: float | np.ndarray = 0.0
        else:
            t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / length2, 0.0, 1.0)  # (sh, sw)
        px, py = ax + t * dx - xs, ay + t * dy - ys
        mask[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] |= px * px + py * py <= r2
    return Crop(y0, x0, mask)


@dataclass(frozen=True)
class Polygon:
    """A polygon region for ``EditSession`` edits: its (x, y) vertices in image pixels (explicit, so a
    vertex list is never mistaken for a brush stroke)."""

    points: Sequence[tuple[float, float]]


def polygon_crop(points: Sequence[tuple[float, float]], shape: tuple[int, int]) -> Crop | None:
    """The filled polygon through ``points`` (x, y; at least 3, finite), clipped to the image (None: no pixel).

    Rasterized by ``cv2.fillPoly`` with pixel centres at integer coordinates: a pixel is in when its
    centre is inside the polygon or on cv2's rasterization of an edge (so the boundary is included:
    the square (0, 0)-(4, 4) covers 5x5 pixels). Float vertices are not rounded: they are passed at
    1/256-px precision (``shift=8``), so a sub-pixel drag moves the edge pixels it should.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise ValueError("a polygon needs at least 3 (x, y) vertices")
    if not np.isfinite(pts).all():
        raise ValueError("polygon vertices must be finite numbers")
    if np.abs(pts).max() > MAX_POLYGON_COORD:
        raise ValueError(f"polygon vertices must lie within {MAX_POLYGON_COORD} px of the image")
    h, w = shape
    x0 = max(int(np.floor(pts[:, 0].min())), 0)
    x1 = min(int(np.ceil(pts[:, 0].max())) + 1, w)
    y0 = max(int(np.floor(pts[:, 1].min())), 0)
    y1 = min(int(np.ceil(pts[:, 1].max())) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)  # (ch, cw) the vertices' box inside the image
    fixed = np.round((pts - (x0, y0)) * (1 << POLYGON_SHIFT)).astype(np.int32)  # (n, 2) crop coordinates
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=POLYGON_SHIFT)
    if not mask.any():
        return None
    return Crop(y0, x0, mask.view(bool))


def stroke_mask(points: Sequence[tuple[float, float]], radius: float, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of a brush stroke: pixels within ``radius`` of the polyline (x, y) points."""
    out = np.zeros(shape, dtype=bool)
    crop = stroke_crop(points, radius, shape)
    if crop is not None:
        y0, x0, y1, x1 = crop.box
        out[y0:y1, x0:x1] = crop.mask
    return out


def union_box(a: Box | None, b: Box | None) -> Box | None:
    """The smallest box holding both (None counts as empty)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def tight_box(seg_map: np.ndarray, value: int, box: Box, block: int = 16384) -> Box | None:
    """The smallest box holding the pixels equal to ``value`` inside ``box`` (None: none there).

    Scans inward from each side in strips of about ``block`` pixels (whole rows / columns) and stops
    at the first that holds ``value``: after an edit a big segment's box rarely moves, so this reads a few thin strips
    instead of the whole box (a stuff segment's can be half of a 12-megapixel photo).
    """
    y0, x0, y1, x1 = box
    inside = seg_map[y0:y1, x0:x1]  # (bh, bw)
    top = _first_hit(inside, value, block, axis=0)
    if top is None:
        return None
    bottom = _first_hit(inside[::-1], value, block, axis=0)
    rows = inside[top:inside.shape[0] - bottom]  # between the first and the last row holding it
    left = _first_hit(rows, value, block, axis=1)
    right = _first_hit(rows[:, ::-1], value, block, axis=1)
    assert bottom is not None and left is not None and right is not None
    return y0 + top, x0 + left, y1 - bottom, x1 - right


def _first_hit(a: np.ndarray, value: int, block: int, axis: int) -> int | None:
    """The index of the first row (axis 0) or column (axis 1) of ``a`` holding ``value``, read in strips."""
    step = max(1, block // max(1, a.shape[1 - axis]))  # rows / columns per strip of about ``block`` pixels
    for start in range(0, a.shape[axis], step):
        strip = a[start:start + step] if axis == 0 else a[:, start:start + step]
        hit = (strip == value).any(axis=1 - axis)
        if hit.any():
            return start + int(np.argmax(hit))
    return None


def segment_box(seg: Segment) -> Box | None:
    """The segment's bbox as a crop box (None when it has no pixels)."""
    if seg.area <= 0:
        return None
    x, y, w, h = (int(v) for v in seg.bbox)
    return y, x, y + h, x + w
