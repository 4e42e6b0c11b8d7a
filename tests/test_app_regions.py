"""Regions of an edit without a session: polygons and brush strokes rasterized to crops (hand-counted pixels)."""

from __future__ import annotations

import numpy as np
import pytest

from app.regions import polygon_crop, stroke_crop, stroke_mask, tight_box
from m2f_core.structures import mask_bbox


def full(crop, shape):
    out = np.zeros(shape, bool)
    if crop is not None:
        y0, x0, y1, x1 = crop.box
        out[y0:y1, x0:x1] = crop.mask
    return out


def test_polygon_square_and_triangle_include_the_boundary():
    sq = polygon_crop([(2, 3), (6, 3), (6, 7), (2, 7)], (20, 30))
    assert sq.box == (3, 2, 8, 7) and sq.mask.all()  # centres 2..6 x 3..7: 5x5
    tri = full(polygon_crop([(0, 0), (6, 0), (0, 6)], (20, 30)), (20, 30))
    yy, xx = np.mgrid[:20, :30]
    assert np.array_equal(tri, xx + yy <= 6) and tri.sum() == 28


def test_polygon_float_vertices_keep_sub_pixel_precision():
    shape = (10, 10)
    inner = full(polygon_crop([(0.6, 0.6), (3.4, 0.6), (3.4, 3.4), (0.6, 3.4)], shape), shape)
    assert inner.sum() == 9 and inner[1:4, 1:4].all()  # centres 1..3
    # the same vertices rounded would give 1..3 too; a half-pixel more reaches the next centres' edge pixels
    outer = full(polygon_crop([(0.4, 0.4), (3.6, 0.4), (3.6, 3.6), (0.4, 3.6)], shape), shape)
    assert outer.sum() == 25 and outer[:5, :5].all()


def test_polygon_clipped_to_the_image_or_none():
    shape = (10, 12)
    crop = polygon_crop([(-5, -5), (4, -5), (4, 4), (-5, 4)], shape)
    assert crop.box == (0, 0, 5, 5) and crop.mask.all()
    big = polygon_crop([(-100, -100), (100, -100), (100, 100), (-100, 100)], shape)
    assert big.box == (0, 0, 10, 12) and big.mask.all()
    assert polygon_crop([(20, 20), (30, 20), (30, 30)], shape) is None
    assert polygon_crop([(-3.0, 2), (-1.0, 2), (-1.0, 5)], shape) is None


@pytest.mark.parametrize("points, msg", [
    ([(0, 0), (1, 1)], "at least 3"),
    ([(0, 0, 0), (1, 1, 1), (2, 2, 2)], "at least 3"),
    ([(0, 0), (1, float("nan")), (2, 2)], "finite"),
    ([(0, 0), (1, float("inf")), (2, 2)], "finite"),
    ([(0, 0), (1e9, 0), (2, 2)], "within"),
])
def test_polygon_bad_vertices(points, msg):
    with pytest.raises(ValueError, match=msg):
        polygon_crop(points, (10, 10))


def reference_stroke(points, radius, shape):
    """Brute force: every pixel centre against every line segment of the polyline."""
    pts = np.asarray(points, np.float64)
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    out = np.zeros(shape, bool)
    pairs = [(pts[0], pts[0])] if len(pts) == 1 else list(zip(pts[:-1], pts[1:]))
    for a, b in pairs:
        d = b - a
        n2 = float(d @ d)
        t = 0.0 if n2 == 0 else np.clip(((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / n2, 0, 1)
        px, py = a[0] + t * d[0] - xx, a[1] + t * d[1] - yy
        out |= px * px + py * py <= radius * radius + 1e-9
    return out


def test_stroke_matches_brute_force_on_random_polylines():
    rng = np.random.default_rng(7)
    shape = (60, 80)
    for _ in range(40):
        n = int(rng.integers(1, 8))
        pts = [(float(x), float(y)) for x, y in rng.uniform(-10, 90, size=(n, 2))]
        radius = float(rng.choice([0.0, 0.5, 1.0, 2.5, rng.uniform(0, 12)]))
        assert np.array_equal(stroke_mask(pts, radius, shape), reference_stroke(pts, radius, shape)), (pts, radius)
    assert stroke_crop([(200, 200), (300, 300)], 3, shape) is None


def test_tight_box_matches_a_full_scan():
    rng = np.random.default_rng(3)
    for _ in range(30):
        m = np.zeros((90, 120), np.int32)
        for _ in range(int(rng.integers(0, 4))):
            y, x = int(rng.integers(0, 90)), int(rng.integers(0, 120))
            m[y:y + int(rng.integers(1, 40)), x:x + int(rng.integers(1, 40))] = 7
        y0, x0, y1, x1 = box = (int(rng.integers(0, 30)), int(rng.integers(0, 40)), int(rng.integers(50, 91)),
                                int(rng.integers(70, 121)))
        got = tight_box(m, 7, box, block=int(rng.choice([1, 5, 32, 16384])))
        x, y, w, h = mask_bbox(m[y0:y1, x0:x1] == 7)
        want = None if w == 0 else (int(y) + y0, int(x) + x0, int(y + h) + y0, int(x + w) + x0)
        assert got == want, (box, got, want)
