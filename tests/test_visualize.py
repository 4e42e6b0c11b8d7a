"""Rendering of results (m2f_core.visualize): colours, blending, outlines, highlight, labels, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from m2f_core.structures import InstanceResult, PanopticResult, Segment, SemanticResult
from m2f_core.visualize import (
    append_legend,
    draw_instances,
    draw_panoptic,
    draw_semantic,
    draw_uncertainty,
    legend,
    segment_color,
)

NAMES = ["person", "car", "sky", "grass"]
COLORS = [[220, 20, 60], [0, 0, 142], [70, 130, 180], [152, 251, 152]]
IS_THING = [True, True, False, False]


def _image(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _scene(h: int = 64, w: int = 96) -> PanopticResult:
    """sky (stuff, id 7) on top, grass (stuff, id 9) at the bottom, two persons (things 3, 4), void on the right."""
    m = np.zeros((h, w), dtype=np.int32)
    m[: h // 2, : w - 20] = 7
    m[h // 2 :, : w - 20] = 9
    m[10:30, 10:30] = 3
    m[34:54, 40:60] = 4
    segs = [
        Segment(7, 2, False, 0.97),
        Segment(9, 3, False, 0.91),
        Segment(3, 0, True, 0.88),
        Segment(4, 0, True, 0.75),
    ]
    return PanopticResult(m, segs).update_stats()


def _interior(mask: np.ndarray, r: int = 2) -> np.ndarray:
    """Pixels of ``mask`` whose (2r+1)^2 neighbourhood lies inside the mask."""
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return out


def _blend(img: np.ndarray, color, alpha: float) -> np.ndarray:
    return img.astype(np.float64) * (1 - alpha) + np.asarray(color, np.float64) * alpha


def _true_borders(m: np.ndarray) -> np.ndarray:
    b = np.zeros(m.shape, dtype=bool)
    d = m[:, 1:] != m[:, :-1]
    b[:, 1:] |= d
    b[:, :-1] |= d
    d = m[1:] != m[:-1]
    b[1:] |= d
    b[:-1] |= d
    return b


def _render(img, res, **kw):
    return draw_panoptic(img, res, NAMES, COLORS, IS_THING, **kw)


# -- panoptic ---------------------------------------------------------------------------------


def test_output_shape_dtype_and_input_untouched():
    img = _image()
    before = img.copy()
    out = _render(img, _scene())
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(img, before)
    assert not np.array_equal(out, img)


def test_void_pixels_equal_the_image():
    img, res = _image(), _scene()
    out = _render(img, res, labels=False)  # label boxes may overflow their segment
    void = res.segment_map == 0
    assert void.any()
    assert np.array_equal(out[void], img[void])


def test_ids_missing_from_the_table_are_void():
    img, res = _image(), _scene()
    res.segment_map[0:5, 80:90] = 42  # in the map, not in the segment table
    out = _render(img, res, labels=False)
    assert np.array_equal(out[0:5, 80:90], img[0:5, 80:90])


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
def test_stuff_pixels_are_the_alpha_blend_with_the_class_colour(alpha):
    img, res = _image(), _scene()
    out = _render(img, res, alpha=alpha, labels=False)
    for seg_id, cls in [(7, 2), (9, 3)]:
        inner = _interior(res.segment_map == seg_id)
        assert inner.sum() > 100
        expected = _blend(img[inner], COLORS[cls], alpha)
        assert np.abs(out[inner].astype(np.float64) - expected).max() <= 1.0


def test_things_of_one_class_get_different_colours_derived_from_the_class_colour():
    img = np.zeros((64, 96, 3), dtype=np.uint8)
    res = _scene()
    out = _render(img, res, alpha=1.0, outline=False, labels=False)
    c3 = out[20, 20]
    c4 = out[44, 50]
    assert not np.array_equal(c3, c4)
    assert tuple(c3) == segment_color(COLORS[0], 3, True)
    assert tuple(c4) == segment_color(COLORS[0], 4, True)
    # many ids of one class: mostly distinct and all still close in hue to the class colour (red-ish)
    cols = {segment_color(COLORS[0], i, True) for i in range(1, 51)}
    assert len(cols) == 50
    assert all(r >= g and r >= b for r, g, b in cols)


def test_stuff_colour_is_the_class_colour_and_segment_color_is_deterministic():
    assert segment_color(COLORS[2], 123, False) == tuple(COLORS[2])
    assert segment_color(COLORS[0], 17, True) == segment_color(COLORS[0], 17, True)


def test_is_thing_argument_overrides_segment_flags():
    img = np.zeros((64, 96, 3), dtype=np.uint8)
    res = _scene()
    out = draw_panoptic(img, res, NAMES, COLORS, is_thing=[False] * 4, alpha=1.0, outline=False, labels=False)
    assert tuple(out[20, 20]) == tuple(COLORS[0]) == tuple(out[44, 50])


def test_colours_are_stable_when_an_unrelated_segment_is_removed():
    img, res = _image(), _scene()
    out = _render(img, res, labels=False)
    edited = PanopticResult(np.where(res.segment_map == 4, 9, res.segment_map),
                            [s for s in res.segments if s.id != 4])
    out2 = _render(img, edited, labels=False)
    for seg_id in (3, 7):
        m = res.segment_map == seg_id
        assert np.array_equal(out[m], out2[m])
    # and also when the segment order in the table changes
    shuffled = PanopticResult(res.segment_map, list(reversed(res.segments)))
    assert np.array_equal(out, _render(img, shuffled, labels=False))


def test_outline_pixels_lie_on_segment_borders_only():
    img, res = _image(), _scene()
    plain = _render(img, res, labels=False, outline=False)
    lined = _render(img, res, labels=False, outline=True)
    changed = np.any(plain != lined, axis=-1)
    borders = _true_borders(res.segment_map) & (res.segment_map > 0)
    assert changed.any()
    assert not (changed & ~borders).any()
    # outlines are opaque in the segment colour: a person's border pixel equals its colour
    c3 = segment_color(COLORS[0], 3, True)
    assert tuple(lined[10, 20]) == c3
    # most border pixels are drawn (1 px on each side of a border, not a thick band)
    assert (changed & borders).sum() >= 0.9 * borders.sum()


def test_highlight_changes_only_what_it_should():
    img, res = _image(), _scene()
    normal = _render(img, res, labels=False)
    hi = _render(img, res, labels=False, highlight=3)
    sel = res.segment_map == 3
    # outside the selected segment: the normal rendering, dimmed
    dimmed = (normal.astype(np.float32) * 0.4 + 0.5).astype(np.uint8)
    assert np.array_equal(hi[~sel], dimmed[~sel])
    # the selected segment: a thick white band along its border, its inside unchanged
    inner = _interior(sel, 2)  # the band is 2 px wide at this size
    assert inner.any()
    assert np.array_equal(hi[inner], normal[inner])
    band = sel & ~inner
    assert np.all(hi[band] == 255)
    # an id that is not there is ignored
    assert np.array_equal(_render(img, res, labels=False, highlight=999), normal)


def test_highlight_with_labels_keeps_the_outside_a_dimmed_copy():
    img, res = _image(), _scene()
    normal = _render(img, res)
    hi = _render(img, res, highlight=4)
    y0, x0, y1, x1 = 34, 40, 54, 60
    far = np.ones(res.segment_map.shape, dtype=bool)
    far[y0 - 12 : y1 + 12, x0 - 40 : x1 + 40] = False  # the selected label may overflow its segment
    dimmed = (normal.astype(np.float32) * 0.4 + 0.5).astype(np.uint8)
    assert np.array_equal(hi[far], dimmed[far])


def test_labels_draw_inside_each_segment_bbox():
    img, res = _image(), _scene()
    plain = _render(img, res, labels=False)
    labelled = _render(img, res, labels=True)
    changed = np.any(plain != labelled, axis=-1)
    for s in res.segments:
        x, y, w, h = (int(v) for v in s.bbox)
        assert changed[y : y + h, x : x + w].any(), s
    # void far from any segment stays untouched
    assert np.array_equal(labelled[:, -4:], img[:, -4:])


def test_label_text_scales_with_the_image():
    small_img = np.zeros((64, 64, 3), np.uint8)
    big_img = np.zeros((1280, 1280, 3), np.uint8)
    small = PanopticResult(np.ones((64, 64), np.int32), [Segment(1, 2, False, 0.9)])
    big = PanopticResult(np.ones((1280, 1280), np.int32), [Segment(1, 2, False, 0.9)])
    d_small = np.any(draw_panoptic(small_img, small, NAMES, COLORS, labels=True)
                     != draw_panoptic(small_img, small, NAMES, COLORS, labels=False), axis=-1)
    d_big = np.any(draw_panoptic(big_img, big, NAMES, COLORS, labels=True)
                   != draw_panoptic(big_img, big, NAMES, COLORS, labels=False), axis=-1)
    assert d_big.sum() > 4 * d_small.sum() > 0


def test_empty_result_returns_the_image():
    img = _image()
    for res in (PanopticResult(np.zeros((64, 96), np.int32), []),
                PanopticResult(np.zeros((64, 96), np.int32), [Segment(5, 0, True, 0.9)])):
        out = _render(img, res, highlight=5)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.array_equal(out, img)


def test_mismatched_sizes_raise():
    img = _image(64, 96)
    with pytest.raises(ValueError, match="64x96"):
        _render(img, _scene(32, 48))
    with pytest.raises(ValueError):
        draw_semantic(img, np.zeros((64, 95), np.int64), NAMES, COLORS)
    with pytest.raises(ValueError):
        draw_uncertainty(img, np.zeros((63, 96), np.float32))
    inst = InstanceResult(np.ones((1, 10, 10), bool), [[0, 0, 10, 10]], [0.9], [0])
    with pytest.raises(ValueError):
        draw_instances(img, inst, NAMES, COLORS)


@pytest.mark.parametrize("shape", [(1, 1), (1, 50), (50, 1), (2, 3)])
def test_tiny_and_thin_images(shape):
    img = _image(*shape)
    m = np.zeros(shape, np.int32)
    m.flat[0] = 1
    if m.size > 1:
        m.flat[-1] = 2
    res = PanopticResult(m, [Segment(1, 0, True, 0.9), Segment(2, 2, False, 0.8)])
    for kw in ({}, {"highlight": 1}, {"labels": False}):
        out = _render(img, res, **kw)
        assert out.shape == img.shape and out.dtype == np.uint8

    def check_fill(out, colour_of, m=m):
        """Void untouched; a segment pixel with an in-image 4-neighbour of another id is its colour
        (the outline), any other segment pixel the 50 % blend of the image and its colour."""
        border = _true_borders(m)
        for y, x in np.ndindex(*shape):
            if m[y, x] == 0:
                assert np.array_equal(out[y, x], img[y, x])
            elif border[y, x]:
                assert tuple(out[y, x]) == colour_of[m[y, x]]
            else:
                assert np.abs(out[y, x] - _blend(img[y, x], colour_of[m[y, x]], 0.5)).max() <= 1

    # segment 1 is a thing (its colour jittered by its id), segment 2 stuff (the class colour)
    pan_colours = {1: segment_color(COLORS[0], 1, True), 2: tuple(COLORS[2])}
    plain = _render(img, res, labels=False)
    check_fill(plain, pan_colours)
    lit = _render(img, res, labels=False, highlight=1)
    outside = m != 1  # dimmed to 40 %; the selected segment keeps its pixels or gets the white outline
    assert np.all(np.abs(lit[outside].astype(float) - plain[outside] * 0.4) <= 0.5 + 1e-9)
    assert all(tuple(lit[y, x]) in {tuple(plain[y, x]), (255, 255, 255)} for y, x in zip(*np.nonzero(m == 1)))
    sem = draw_semantic(img, m.astype(np.int64) - 1, NAMES, COLORS, ignore_value=-1, labels=False)
    check_fill(sem, {1: tuple(COLORS[0]), 2: tuple(COLORS[1])})  # class c = id - 1, no jitter
    u = np.random.default_rng(0).random(shape)
    heat = draw_uncertainty(img, u)
    # inferno: the lowest value is (0, 0, 4), the highest (252, 255, 164); a 1x1 map is constant, so 0
    lo, hi = np.unravel_index(np.argmin(u), shape), np.unravel_index(np.argmax(u), shape)
    assert np.abs(heat[lo] - _blend(img[lo], (0, 0, 4), 0.5)).max() <= 1
    if m.size > 1:
        assert np.abs(heat[hi] - _blend(img[hi], (252, 255, 164), 0.5)).max() <= 1
    inst = InstanceResult(m[None] == 1, [[0, 0, 1, 1]], [0.9], [1])
    assert draw_instances(img, inst, NAMES, COLORS).shape == img.shape
    bare = draw_instances(img, inst, NAMES, COLORS, boxes=False, labels=False)
    check_fill(bare, {1: segment_color(COLORS[1], 1, True)}, (m == 1).astype(np.int32))  # colour of instance i:
    # segment_color(its class colour, i + 1); the pixel of segment 2 is not in the mask and stays the image


def test_grayscale_and_other_input_forms():
    gray = np.random.default_rng(1).integers(0, 256, (64, 96), dtype=np.uint8)
    gray3 = np.repeat(gray[:, :, None], 3, axis=2)
    res = _scene()
    out3 = _render(gray3, res)
    assert out3.shape == (64, 96, 3)
    assert np.array_equal(_render(gray, res), out3)
    rgba = np.concatenate([gray3, np.full((64, 96, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(_render(rgba, res), out3)
    from PIL import Image

    assert np.array_equal(_render(Image.fromarray(gray3), res), out3)


def test_large_segment_ids_use_the_searchsorted_path():
    img, res = _image(), _scene()
    big = {7: 7 + (1 << 24), 9: 9 + (1 << 24), 3: 3, 4: 4}
    m = res.segment_map.copy()
    for old, new in big.items():
        m[res.segment_map == old] = new
    segs = [Segment(big[s.id], s.category_id, s.isthing, s.score) for s in res.segments]
    out = _render(img, PanopticResult(m, segs), labels=False)
    ref = _render(img, res, labels=False)
    for seg_id in (3, 4):  # thing colours depend on the id; stuff ones do not
        mask = res.segment_map == seg_id
        assert np.array_equal(out[mask], ref[mask])
    stuff = np.isin(res.segment_map, [0, 7, 9])
    assert np.array_equal(out[stuff], ref[stuff])


def test_bad_alpha_raises():
    with pytest.raises(ValueError, match="alpha"):
        _render(_image(), _scene(), alpha=1.5)


# -- instances --------------------------------------------------------------------------------


def _instances(h: int = 64, w: int = 96) -> InstanceResult:
    masks = np.zeros((3, h, w), bool)
    masks[0, 10:40, 10:40] = True
    masks[1, 25:55, 25:55] = True  # overlaps 0
    masks[2, 5:15, 70:90] = True  # below the threshold
    boxes = [[10, 10, 40, 40], [25, 25, 55, 55], [70, 5, 90, 15]]
    return InstanceResult(masks, boxes, [0.6, 0.9, 0.2], [0, 0, 1])


def test_instances_blend_in_score_order():
    img = _image()
    res = _instances()
    out = draw_instances(img, res, NAMES, COLORS, alpha=0.5, outline=False, boxes=False, labels=False)
    assert out.shape == img.shape and out.dtype == np.uint8
    c0 = segment_color(COLORS[0], 1, True)
    c1 = segment_color(COLORS[0], 2, True)
    assert c0 != c1
    # only instance 0
    assert np.abs(out[15, 15].astype(float) - _blend(img[15, 15], c0, 0.5)).max() <= 1
    # overlap: 0 (lower score) first, then 1 on top
    exp = _blend(_blend(img[30, 30], c0, 0.5), c1, 0.5)
    assert np.abs(out[30, 30].astype(float) - exp).max() <= 1
    # below the threshold / outside every mask: the image
    assert np.array_equal(out[5:15, 70:90], img[5:15, 70:90])
    assert np.array_equal(out[60:, :], img[60:, :])


def test_instances_boxes_outlines_labels_and_empty():
    img = _image()
    res = _instances()
    plain = draw_instances(img, res, NAMES, COLORS, outline=False, boxes=False, labels=False)
    lined = draw_instances(img, res, NAMES, COLORS, outline=True, boxes=False, labels=False)
    changed = np.any(plain != lined, axis=-1)
    allowed = _true_borders(res.masks[0]) & res.masks[0] | _true_borders(res.masks[1]) & res.masks[1]
    assert changed.any() and not (changed & ~allowed).any()
    boxed = draw_instances(img, res, NAMES, COLORS, outline=False, boxes=True, labels=False)
    assert np.any(boxed[25, 25:55] != plain[25, 25:55])
    labelled = draw_instances(img, res, NAMES, COLORS, outline=False, boxes=False, labels=True)
    assert np.any(labelled[10:40, 10:40] != plain[10:40, 10:40])
    empty = InstanceResult(np.zeros((0, 64, 96), bool), np.zeros((0, 4)), [], [])
    assert np.array_equal(draw_instances(img, empty, NAMES, COLORS), img)
    assert np.array_equal(draw_instances(img, res, NAMES, COLORS, score_threshold=0.95), img)


# -- semantic, uncertainty, legend ------------------------------------------------------------


def test_semantic_overlay():
    img = _image()
    lm = np.full((64, 96), 255, np.int64)
    lm[:32, :60] = 2
    lm[32:, :60] = 3
    out = draw_semantic(img, lm, NAMES, COLORS, labels=False)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out[:, 60:], img[:, 60:])
    inner = _interior(lm == 2)
    assert np.abs(out[inner].astype(float) - _blend(img[inner], COLORS[2], 0.5)).max() <= 1
    labelled = draw_semantic(img, SemanticResult(lm), NAMES, COLORS, labels=True)
    assert np.any(labelled[:32, :60] != out[:32, :60]) and np.any(labelled[32:, :60] != out[32:, :60])
    assert np.array_equal(draw_semantic(img, np.full((64, 96), 255), NAMES, COLORS), img)


def test_uncertainty_heat_map():
    img = _image()
    u = np.zeros((64, 96), np.float32)
    u[:, 48:] = 1.0
    out = draw_uncertainty(img, u, alpha=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    # inferno's ends, by hand: 0 -> (0, 0, 4), 1 -> (252, 255, 164), blended half and half with the image
    assert np.abs(out[:, :48] - _blend(img[:, :48], (0, 0, 4), 0.5)).max() <= 1
    assert np.abs(out[:, 48:] - _blend(img[:, 48:], (252, 255, 164), 0.5)).max() <= 1
    assert np.array_equal(draw_uncertainty(img, u, alpha=0.0), img)
    # NaN counts as 0: an all-NaN map is the coldest colour everywhere, and NaN beside real values is their minimum
    const = draw_uncertainty(img, np.full((64, 96), np.nan, np.float32))
    assert np.abs(const - _blend(img, (0, 0, 4), 0.5)).max() <= 1
    holes = u.copy()
    holes[:, 90:] = np.nan
    holes[0, 0] = 0.5
    mixed = draw_uncertainty(img, holes)
    assert np.abs(mixed[:, 90:] - _blend(img[:, 90:], (0, 0, 4), 0.5)).max() <= 1
    assert np.array_equal(mixed[:, 48:90], out[:, 48:90])


def test_legend_and_append_legend():
    lg = legend([2, 0, 2], NAMES, COLORS)
    assert lg.dtype == np.uint8 and lg.ndim == 3 and lg.shape[0] > 0 and lg.shape[1] > 0
    assert legend([], NAMES, COLORS).shape == (0, 0, 3)
    # swatch colours appear in the legend
    for c in (COLORS[0], COLORS[2]):
        assert np.all(lg == np.asarray(c, np.uint8), axis=-1).any()
    img = _image()
    right = append_legend(img, [0, 1, 2, 3], NAMES, COLORS, side="right")
    assert right.shape[0] == img.shape[0] and right.shape[1] > img.shape[1]
    assert np.array_equal(right[:, : img.shape[1]], img)
    bottom = append_legend(img, [0, 1, 2, 3], NAMES, COLORS, side="bottom")
    assert bottom.shape[1] == img.shape[1] and bottom.shape[0] > img.shape[0]
    assert np.array_equal(bottom[: img.shape[0]], img)
    assert np.array_equal(append_legend(img, [], NAMES, COLORS), img)
    with pytest.raises(ValueError):
        append_legend(img, [0], NAMES, COLORS, side="left")
