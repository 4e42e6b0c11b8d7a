"""The editor's core without a UI: edit operations, undo/redo, views, the workspace and atomic exports.

A hand-made 40x50 panoptic map (exact areas and boxes known) drives the operations; synthetic
network outputs (as in test_predictor.py) drive the model-side entry points (from_prediction,
recover); exports are read back with CorrectionsDataset and with pycocotools.
"""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.editing import EditSession, Polygon, stroke_mask
from app.export import ExportError, export_corrections, sanitize_name, zip_export
from app.state import WorkspaceState
from m2f_core.config import Mask2FormerConfig
from m2f_core.data.corrections import CorrectionsDataset
from m2f_core.prediction import Prediction
from m2f_core.structures import PanopticResult, Segment, mask_bbox

NAMES = ["disc", "box", "sky", "grass"]
IS_THING = [True, True, False, False]
CATEGORIES = [{"id": 1, "name": "disc", "isthing": 1}, {"id": 2, "name": "box", "isthing": 1},
              {"id": 10, "name": "sky", "isthing": 0}, {"id": 11, "name": "grass", "isthing": 0}]
DISC, BOX, SKY, GRASS = range(4)
H, W = 40, 50


def base_panoptic() -> PanopticResult:
    """sky (id 1) rows 0-9; box (id 3) rows 15-24 x cols 10-21 under the disc (id 2) rows 12-19 x cols 5-14;
    grass (id 5) rows 30-39; the rest void."""
    m = np.zeros((H, W), np.int32)
    m[0:10, :] = 1
    m[15:25, 10:22] = 3
    m[12:20, 5:15] = 2
    m[30:40, :] = 5
    segs = [Segment(1, SKY, False, 0.9), Segment(2, DISC, True, 0.95), Segment(3, BOX, True, 0.85),
            Segment(5, GRASS, False, 0.8)]
    return PanopticResult(m, segs)


def new_session(**kw) -> EditSession:
    return EditSession.from_panoptic(base_panoptic(), CATEGORIES, **kw)


def rect(y0: int, y1: int, x0: int, x1: int, shape=(H, W)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def snapshot(s: EditSession) -> tuple[bytes, tuple]:
    return s.segment_map.tobytes(), tuple(json.dumps(seg.to_dict(), sort_keys=True) for seg in s.segments)


def stats(s: EditSession) -> dict[int, tuple]:
    return {seg.id: (seg.area, seg.bbox, seg.category_id, seg.isthing, seg.source) for seg in s.segments}


def check_consistent(s: EditSession) -> None:
    """Rows match the map exactly: every id has a row, areas and boxes as a full recomputation gives them."""
    m = s.segment_map
    ids = set(np.unique(m).tolist()) - {0}
    assert ids == {seg.id for seg in s.segments}
    for seg in s.segments:
        mask = m == seg.id
        assert seg.area == int(mask.sum()) and seg.bbox == mask_bbox(mask), seg
        assert seg.isthing == IS_THING[seg.category_id]
    stuff = [seg.category_id for seg in s.segments if not seg.isthing]
    assert len(stuff) == len(set(stuff)), "two segments of one stuff class"


# --------------------------------------------------------------------------------------------
# operations


def test_construction_select_and_exact_stats():
    s = new_session()
    assert stats(s) == {1: (500, (0.0, 0.0, 50.0, 10.0), SKY, False, "model"),
                        2: (80, (5.0, 12.0, 10.0, 8.0), DISC, True, "model"),
                        3: (95, (10.0, 15.0, 12.0, 10.0), BOX, True, "model"),
                        5: (500, (0.0, 30.0, 50.0, 10.0), GRASS, False, "model")}
    assert (s.select(0, 0), s.select(7, 13), s.select(20, 20), s.select(0, 11)) == (1, 2, 3, None)
    with pytest.raises(ValueError, match="outside the 50x40 image"):
        s.select(50, 0)
    assert not s.can_undo and not s.can_redo and not s.has_edits
    bad = base_panoptic()
    bad.segments = bad.segments[:-1]  # id 5 in the map, no row
    with pytest.raises(ValueError, match=r"ids \[5\] with no segment row"):
        EditSession.from_panoptic(bad, CATEGORIES)
    bad = base_panoptic()
    bad.segments[0].category_id = 9
    with pytest.raises(ValueError, match="unknown class id 9"):
        EditSession.from_panoptic(bad, CATEGORIES)


def test_paint_mask_only_void_then_overwrite():
    s = new_session()
    mask = rect(8, 14, 0, 5)  # rows 8-9 are sky (10 px), rows 10-13 void (20 px)
    assert s.paint(2, mask) == 20
    assert stats(s)[2] == (100, (0.0, 10.0, 15.0, 10.0), DISC, True, "edited")
    assert stats(s)[1][4] == "model" and stats(s)[1][0] == 500  # untouched segment stays "model"
    assert s.paint(2, mask, overwrite_others=True) == 10
    assert stats(s)[2] == (110, (0.0, 8.0, 15.0, 12.0), DISC, True, "edited")
    assert stats(s)[1] == (490, (0.0, 0.0, 50.0, 10.0), SKY, False, "edited")
    assert s.paint(2, mask) == 0 and s.history_labels == ["paint", "paint"]  # no change, no history
    check_consistent(s)


def test_brush_strokes_are_exact_discs_and_capsules():
    s = new_session()
    assert s.paint(3, [(30, 27)], radius=2) == 13  # x^2 + y^2 <= 4: 13 pixels, all void
    assert stats(s)[3] == (108, (10.0, 15.0, 23.0, 15.0), BOX, True, "edited")
    assert s.select(30, 25) == 3 and s.select(30, 29) == 3 and s.select(31, 26) == 3 and s.select(31, 25) is None
    line = stroke_mask([(0, 0), (4, 0)], 0, (H, W))
    assert line.sum() == 5 and line[0, :5].all()
    capsule = stroke_mask([(10, 20), (20, 20)], 1, (H, W))
    assert capsule.sum() == 11 * 3 + 2 and capsule[20, 9] and capsule[20, 21] and not capsule[19, 9]
    assert s.paint(3, [(100, 100)], radius=2) == 0  # entirely outside: nothing
    edge = stroke_mask([(0, 0)], 2, (H, W))  # clipped at the border
    assert edge.sum() == 6
    check_consistent(s)


def test_erase_everything_or_one_segment():
    s = new_session()
    assert s.erase(rect(0, 5, 0, 50)) == 250
    assert stats(s)[1] == (250, (0.0, 5.0, 50.0, 5.0), SKY, False, "edited")
    assert s.erase(rect(12, 16, 0, 50), segment_id=2) == 40  # only the disc's pixels, the box keeps its
    assert stats(s)[2] == (40, (5.0, 16.0, 10.0, 4.0), DISC, True, "edited")
    assert stats(s)[3][0] == 95 and stats(s)[3][4] == "model"
    s.erase(rect(0, 40, 0, 50), segment_id=2)
    assert 2 not in s  # no pixels left: the row goes
    check_consistent(s)


def test_erase_fill_neighbour_gives_pixels_to_the_nearest_segment():
    s = new_session()
    strip = s.new_segment(rect(10, 12, 0, 50), BOX)  # rows 10-11: the void gap between the sky and the disc
    before = snapshot(s)
    assert s.erase(rect(10, 12, 0, 50), fill="neighbour") == 100  # the strip (rows 10-11)
    # row 10: the sky (row 9) is 1 px away; row 11: the disc (row 12, cols 5-14) is nearer than the sky
    # (2 px) where within sqrt(2): cols 4-15
    assert strip not in s and s.history_labels == ["new segment", "erase"]
    m = s.segment_map
    assert (m[10] == 1).all() and (m[11, 4:16] == 2).all() and (m[11, :4] == 1).all() and (m[11, 16:] == 1).all()
    assert stats(s)[1] == (588, (0.0, 0.0, 50.0, 12.0), SKY, False, "edited")
    assert stats(s)[2] == (92, (4.0, 11.0, 12.0, 9.0), DISC, True, "edited")
    check_consistent(s)
    after = snapshot(s)
    s.undo()
    assert snapshot(s) == before
    s.redo()
    assert snapshot(s) == after


def test_erase_fill_neighbour_of_one_segment_goes_to_other_segments_or_void():
    s = new_session()
    assert s.erase(rect(0, 40, 0, 50), segment_id=2, fill="neighbour") == 80  # the whole disc
    m = s.segment_map
    assert 2 not in s and (m[12:20, 5:15] != 0).all()
    # hand-checked: (12, 5) sky 3 px vs box 9.4; (13, 5) sky 4 vs 8.6; (19, 5) box (20, 10) 5.1 vs sky 10
    assert (m[12, 5], m[13, 5], m[19, 5], m[14, 14], m[19, 14]) == (1, 1, 3, 3, 3)
    ref = new_session().segment_map
    src = np.argwhere((ref != 0) & (ref != 2))
    src = src[(src[:, 0] >= 2) & (src[:, 0] < 30) & (src[:, 1] < 25)]  # the window: the disc's box + 10 px
    for y, x in np.argwhere(ref == 2):  # each pixel took a segment at the minimal distance
        d2 = ((src - (y, x)) ** 2).sum(axis=1)
        assert m[y, x] in {int(ref[tuple(p)]) for p in src[d2 == d2.min()]}
    check_consistent(s)
    island = s.new_segment(rect(19, 21, 40, 45), BOX)  # 9 px from the grass, 9 from the sky: beyond the window
    assert s.erase(rect(19, 21, 40, 45), segment_id=island, radius=0, fill="neighbour") == 10
    assert island not in s and (s.segment_map[19:21, 40:45] == 0).all()
    assert s.erase(rect(19, 21, 40, 45), fill="neighbour") == 0  # nothing to erase: no entry
    assert s.history_labels == ["erase", "new segment", "erase"]
    with pytest.raises(ValueError, match="unknown erase fill 'blur'"):
        s.erase(rect(0, 5, 0, 5), fill="blur")
    check_consistent(s)


def test_polygons_create_paint_and_erase():
    s = new_session()
    tri = s.new_segment(Polygon([(30, 11), (36, 11), (30, 17)]), BOX)  # x + y <= 47 from (30, 11): 28 px, all void
    assert stats(s)[tri] == (28, (30.0, 11.0, 7.0, 7.0), BOX, True, "edited")
    assert s.select(36, 11) == tri and s.select(30, 17) == tri and s.select(36, 12) is None
    assert s.paint(tri, Polygon([(30.0, 20.0), (34.0, 20.0), (34.0, 24.0), (30.0, 24.0)])) == 25
    assert stats(s)[tri] == (53, (30.0, 11.0, 7.0, 14.0), BOX, True, "edited")
    before = snapshot(s)
    assert s.erase(Polygon([(-5, -5), (60, -5), (60, 3), (-5, 3)]), segment_id=1) == 200  # sky rows 0-3, clipped
    assert stats(s)[1] == (300, (0.0, 4.0, 50.0, 6.0), SKY, False, "edited")
    s.undo()
    assert snapshot(s) == before
    assert s.paint(tri, Polygon([(100, 100), (120, 100), (110, 120)])) == 0  # outside the image
    for bad, msg in ((Polygon([(0, 0), (5, 5)]), "at least 3"), (Polygon([(0, 0), (5, np.nan), (1, 4)]), "finite")):
        with pytest.raises(ValueError, match=msg) as err:
            s.paint(tri, bad)
        assert err.type.__name__ == "UserError"
    assert snapshot(s) == before
    check_consistent(s)


def test_new_segment_ids_are_never_reused_and_stuff_merges():
    s = new_session()
    a = s.new_segment(rect(26, 29, 40, 45), BOX)
    assert a == 6 and stats(s)[6] == (15, (40.0, 26.0, 5.0, 3.0), BOX, True, "edited")
    assert s.segment(a).score == 1.0
    s.delete(a)
    b = s.new_segment(rect(26, 29, 40, 45), BOX)
    assert b == 7
    s.undo()  # removes 7
    s.undo()  # brings 6 back
    assert 6 in s and 7 not in s
    assert s.new_segment(rect(26, 28, 0, 3), DISC) == 8  # 7 is not reused either (after the undo)
    g = s.new_segment(rect(26, 28, 0, 50), GRASS)  # grass exists: its pixels join segment 5
    assert g == 5 and stats(s)[5][:2] == (500 + 100 - 6 - 10, (0.0, 26.0, 50.0, 14.0))
    assert [seg.id for seg in s.segments if seg.category_id == GRASS] == [5]
    before = snapshot(s)
    with pytest.raises(ValueError, match="adds no pixels"):
        s.new_segment(rect(0, 5, 0, 5), BOX)  # all sky, not overwriting
    with pytest.raises(ValueError, match="empty"):
        s.new_segment(np.zeros((H, W), bool), BOX)
    assert snapshot(s) == before
    c = s.new_segment(rect(0, 5, 0, 5), BOX, overwrite_others=True)
    assert stats(s)[c][0] == 25 and stats(s)[1][0] == 475
    check_consistent(s)


def test_relabel_thing_and_stuff_rule():
    s = new_session()
    assert s.relabel(3, DISC) == 3
    assert stats(s)[3] == (95, (10.0, 15.0, 12.0, 10.0), DISC, True, "edited")
    assert s.relabel(2, SKY) == 1  # sky exists: the disc's pixels join it (one segment per stuff class)
    assert 2 not in s and stats(s)[1] == (580, (0.0, 0.0, 50.0, 20.0), SKY, False, "edited")
    s.delete(5)
    assert s.relabel(3, GRASS) == 3  # no grass left: the segment itself becomes stuff
    assert stats(s)[3][2:4] == (GRASS, False)
    assert s.relabel(3, GRASS) == 3 and s.history_labels == ["relabel", "relabel", "delete", "relabel"]
    check_consistent(s)
    s.undo()
    assert stats(s)[3][2:4] == (DISC, True)


def test_delete_merge_split():
    s = new_session()
    s.delete(2)
    assert 2 not in s and s.select(7, 13) is None and stats(s)[3][0] == 95
    s.undo()
    assert s.merge([3, 2]) == 3  # the first's class (box) and id
    assert 2 not in s and stats(s)[3] == (175, (5.0, 12.0, 17.0, 13.0), BOX, True, "edited")
    for bad, msg in (([3], "at least two"), ([3, 3], "at least two"), ([3, 99], "no segment with id 99")):
        with pytest.raises(ValueError, match=msg):
            s.merge(bad)
    s.undo()
    # split: cut the disc in two with a vertical gap (cols 9-10) -> left 4x8 and right 4x8 (tie: scan order)
    s.erase(rect(0, 40, 9, 11), segment_id=2)
    ids = s.split(2)
    assert ids == [2, 6]
    assert stats(s)[2] == (32, (5.0, 12.0, 4.0, 8.0), DISC, True, "edited")
    assert stats(s)[6] == (32, (11.0, 12.0, 4.0, 8.0), DISC, True, "edited") and s.segment(6).score == 0.95
    diag = np.zeros((H, W), bool)
    diag[26, 40] = diag[27, 41] = True  # touching diagonally: one 8-connected component
    d = s.new_segment(diag, BOX)
    assert s.split(d) == [d]
    with pytest.raises(ValueError, match="stuff .* cannot be split"):
        s.split(1)
    check_consistent(s)


def test_split_leaves_pieces_under_min_area_with_the_original():
    s = new_session()
    s.erase(rect(0, 40, 9, 11), segment_id=2)  # left piece cols 5-8 (32 px), right piece cols 11-14
    s.erase(rect(0, 40, 13, 15), segment_id=2)  # right piece now cols 11-12 (16 px)
    s.paint(2, rect(26, 27, 40, 41))  # a 1-px speck far away
    labels = s.history_labels
    assert s.split(2, min_area=33) == [2] and s.history_labels == labels  # nothing big enough: no entry
    ids = s.split(2, min_area=2)
    assert ids == [2, 6] and s.history_labels == labels + ["split"]
    assert stats(s)[2] == (33, (5.0, 12.0, 36.0, 15.0), DISC, True, "edited")  # the speck stays with 2
    assert stats(s)[6] == (16, (11.0, 12.0, 2.0, 8.0), DISC, True, "edited")
    check_consistent(s)
    s.undo()
    assert s.split(2) == [2, 7, 8]  # the default splits every piece (ids never reused)
    with pytest.raises(ValueError, match="min_area must be an integer >= 0"):
        s.split(7, min_area=-1)
    check_consistent(s)


def test_fill_holes_void_then_other_segments():
    s = ring_session()  # ring id 6 around (20, 40): 9 < d2 <= 49; its hole d2 <= 9 is 29 void px
    ring = stats(s)[6]
    s.new_segment(rect(19, 22, 39, 42), DISC)  # id 7: 9 px inside the hole
    before = snapshot(s)
    assert s.fill_holes(6) == 20  # void only: the disc inside keeps its pixels
    assert stats(s)[6][:2] == (ring[0] + 20, ring[1]) and stats(s)[7][0] == 9
    assert s.fill_holes(6) == 0 and s.history_labels == ["new segment", "new segment", "fill holes"]
    assert s.fill_holes(6, overwrite_others=True) == 9
    assert 7 not in s and stats(s)[6][:2] == (149, (33.0, 13.0, 15.0, 15.0))  # the full disc d2 <= 49
    check_consistent(s)
    s.undo()
    s.undo()
    assert snapshot(s) == before
    diamond = np.zeros((H, W), bool)  # |dy| + |dx| == 2 around (25, 30): closed only diagonally
    yy, xx = np.mgrid[:H, :W]
    diamond[np.abs(yy - 25) + np.abs(xx - 30) == 2] = True
    d = s.new_segment(diamond, BOX)
    assert s.fill_holes(d) == 5 and stats(s)[d][0] == 13
    assert s.fill_holes(1) == 0  # the sky has no holes
    check_consistent(s)


def test_merge_into_stuff_takes_every_segment_of_that_class():
    pan = base_panoptic()
    pan.segment_map[26:29, 0:5] = 7  # a second sky segment (ground truth may have one): merged along
    pan.segments.append(Segment(7, SKY, False, 0.5))
    s = EditSession.from_panoptic(pan, CATEGORIES)
    assert s.merge([1, 3]) == 1
    assert 3 not in s and 7 not in s and stats(s)[1][0] == 500 + 95 + 15
    check_consistent(s)


def test_bad_arguments_change_nothing():
    s = new_session()
    s.paint(2, rect(10, 12, 5, 15))
    before, labels = snapshot(s), s.history_labels
    calls = [
        (lambda: s.paint(2, np.zeros((39, 50), bool)), "shape"),
        (lambda: s.paint(99, rect(0, 1, 0, 1)), "no segment with id 99"),
        (lambda: s.paint(2, "mask"), "expected an"),
        (lambda: s.paint(2, [(1,)]), "stroke"),
        (lambda: s.paint(2, [(1, 1)], radius=-1), "radius"),
        (lambda: s.relabel(2, 4), "unknown class id 4"),
        (lambda: s.relabel(2, -1), "unknown class id -1"),
        (lambda: s.relabel(2, True), "must be an integer"),
        (lambda: s.new_segment(rect(26, 28, 0, 5), 7), "unknown class id 7"),
        (lambda: s.erase(rect(0, 1, 0, 1), segment_id=4), "no segment with id 4"),
        (lambda: s.delete(4), "no segment with id 4"),
        (lambda: s.split(99), "no segment"),
        (lambda: s.merge([2, 3, 98]), "no segment with id 98"),
    ]
    for call, msg in calls:
        with pytest.raises(ValueError, match=msg) as err:
            call()
        assert "\n" not in str(err.value)
        assert snapshot(s) == before and s.history_labels == labels and not s.can_redo


# --------------------------------------------------------------------------------------------
# history


def random_op(s: EditSession, rng: random.Random) -> None:
    """One random edit (may raise ValueError, e.g. a new segment that covers no void pixel)."""
    ids = [seg.id for seg in s.segments]
    things = [seg.id for seg in s.segments if seg.isthing]
    kind = rng.choice(["paint", "paint_mask", "erase", "new", "delete", "merge", "split", "fill_holes", "relabel"])
    if not ids:
        kind = "new"

    def stroke():
        return [(rng.uniform(-3, W + 3), rng.uniform(-3, H + 3)) for _ in range(rng.randint(1, 4))]

    def box_mask():
        y0, x0 = rng.randrange(H), rng.randrange(W)
        return rect(y0, y0 + rng.randint(1, 15), x0, x0 + rng.randint(1, 15))

    if kind == "paint":
        s.paint(rng.choice(ids), stroke(), radius=rng.uniform(0, 4), overwrite_others=rng.random() < 0.5)
    elif kind == "paint_mask":
        s.paint(rng.choice(ids), box_mask(), overwrite_others=rng.random() < 0.5)
    elif kind == "erase":
        s.erase(stroke(), radius=rng.uniform(0, 5), segment_id=rng.choice([None, rng.choice(ids)]),
                fill=rng.choice(["void", "neighbour"]))
    elif kind == "new":
        s.new_segment(box_mask(), rng.randrange(4), overwrite_others=rng.random() < 0.5)
    elif kind == "delete":
        s.delete(rng.choice(ids))
    elif kind == "merge":
        s.merge(rng.sample(ids, min(len(ids), rng.randint(2, 3))))
    elif kind == "split":
        if things:
            s.split(rng.choice(things), min_area=rng.choice([0, 0, 5]))
    elif kind == "fill_holes":
        s.fill_holes(rng.choice(ids), overwrite_others=rng.random() < 0.5)
    else:
        s.relabel(rng.choice(ids), rng.randrange(4))


def test_undo_all_then_redo_all_after_random_edits():
    rng = random.Random(1234)
    s = new_session(max_history=1000)
    states = [snapshot(s)]
    while len(states) < 51:
        n = len(s.history_labels)
        before = snapshot(s)
        try:
            random_op(s, rng)
        except ValueError:
            assert snapshot(s) == before and len(s.history_labels) == n
            continue
        if len(s.history_labels) == n:  # a no-op (nothing changed) records nothing
            assert snapshot(s) == before
            continue
        check_consistent(s)
        states.append(snapshot(s))
    assert len(set(states)) > 40
    for i in range(50, 0, -1):
        assert s.undo() is not None
        assert snapshot(s) == states[i - 1]
    assert s.undo() is None and not s.has_edits
    assert snapshot(s) == states[0] == snapshot(new_session())
    for i in range(1, 51):
        assert s.redo() is not None
        assert snapshot(s) == states[i]
    assert s.redo() is None and s.has_edits
    check_consistent(s)
    # ids stay fresh after all that: a new segment never takes an id seen during the session
    seen = {int(v) for st in states for v in np.frombuffer(st[0], np.int32)}
    s.erase(rect(0, 3, 0, 3))
    assert s.new_segment(rect(0, 3, 0, 3), BOX) not in seen


def test_an_edit_after_undo_clears_redo():
    s = new_session()
    s.paint(2, [(20, 30)], radius=1)
    s.undo()
    assert s.can_redo and not s.can_undo
    s.erase([(0, 0)], radius=1)
    assert not s.can_redo and s.can_undo and s.history_labels == ["erase"]


def test_history_is_small_diffs_and_bounded():
    big = np.zeros((400, 500), np.int32)
    big[:200] = 1
    big[250:300, 100:200] = 2
    s = EditSession.from_panoptic(PanopticResult(big, [Segment(1, SKY, False, 1.0), Segment(2, BOX, True, 1.0)]),
                                  CATEGORIES, max_history=5)
    s.paint(2, [(150, 240), (160, 245)], radius=3)
    assert 0 < s.history_nbytes < big.nbytes / 100  # a few hundred bytes, not a copy of the map
    for i in range(9):
        s.paint(2, [(20 + 10 * i, 350)], radius=2)
    assert len(s.history_labels) == 5
    for _ in range(5):
        assert s.undo() == "paint"
    assert s.undo() is None and not s.can_undo
    tiny = EditSession.from_panoptic(PanopticResult(big, [Segment(1, SKY, False, 1.0), Segment(2, BOX, True, 1.0)]),
                                     CATEGORIES, max_history_bytes=2000)
    for i in range(20):
        tiny.paint(2, [(20 + 10 * i, 350)], radius=2)
    assert tiny.history_nbytes <= 2000 and 0 < len(tiny.history_labels) < 20


# --------------------------------------------------------------------------------------------
# views


def test_instance_view_keeps_overlapped_objects_separate():
    s = new_session()
    s.paint(3, rect(12, 20, 10, 15), overwrite_others=True)  # the box now covers the disc's right part
    s.relabel(3, DISC)  # two things of one class stay two instances
    ins = s.instance_view()
    assert len(ins) == 2 and ins.labels.tolist() == [DISC, DISC]
    disc, box = ins.masks
    assert disc.sum() == 80 - 40 and box.sum() == 95 + 40 and not (disc & box).any()
    assert np.array_equal(disc, s.segment_map == 2) and np.array_equal(box, s.segment_map == 3)
    assert ins.boxes[0].tolist() == [5, 12, 10, 20] and np.allclose(ins.scores, [0.95, 0.85])
    sem = s.semantic_view().label_map
    assert sem[0, 0] == SKY and sem[35, 0] == GRASS and sem[13, 6] == DISC and sem[11, 0] == 255
    pan = s.view("panoptic")
    assert isinstance(pan, PanopticResult) and np.array_equal(pan.segment_map, s.segment_map)
    pan.segment_map[:] = 0  # a copy: the session is unaffected
    assert s.select(0, 0) == 1
    with pytest.raises(ValueError, match="unknown task"):
        s.view("depth")


# --------------------------------------------------------------------------------------------
# from a Prediction (synthetic network outputs, as in test_predictor.py)


def synthetic_prediction() -> Prediction:
    logits = torch.full((6, 5), -5.0)
    masks = torch.full((6, 16, 20), -7.3)
    logits[0, DISC] = 8
    masks[0, 2:7, 2:8] = 8
    logits[1, DISC] = 8
    masks[1, 9:14, 12:18] = 8
    logits[2, SKY] = 8
    masks[2, :8, :] = 8
    logits[3, SKY] = 7
    masks[3, 8:10, :] = 8
    logits[4, GRASS] = 1.2  # p ~ 0.55 < 0.8: dropped by post-processing, covers the bottom
    logits[4, 4] = 1.0
    masks[4, 10:, :] = 8
    logits[5, 4] = 9
    masks[5] = 8
    config = Mask2FormerConfig(name="test", class_names=NAMES, is_thing=IS_THING, num_queries=6)
    return Prediction(np.zeros((60, 75, 3), np.uint8), logits, masks, (64, 80), (60, 75), config).prepare()


def test_from_prediction_and_recover_a_dropped_query():
    pred = synthetic_prediction()
    s = EditSession.from_prediction(pred)
    pan = pred.panoptic()
    assert np.array_equal(s.segment_map, pan.segment_map) and all(seg.source == "model" for seg in s.segments)
    assert sorted(seg.category_id for seg in s.segments) == [DISC, DISC, SKY]
    assert sorted(len(q) for q in s.model_queries.values()) == [1, 1, 2]  # sky came from two queries
    disc2 = s.select(60, 45)
    disc2_mask = s.segment_map == disc2
    cand = pred.candidates_at(5, 55)[0]
    assert cand.category_id == GRASS
    void_before = s.segment_map == 0
    gid = s.recover(cand)
    got = s.segment_map == gid
    assert np.array_equal(got, cand.mask & void_before)  # void pixels only
    assert np.array_equal(s.segment_map == disc2, disc2_mask)  # the disc keeps every pixel
    assert s.segment(gid).source == "edited" and s.segment(gid).score == pytest.approx(cand.score)
    check_consistent(s)
    s.undo()
    assert np.array_equal(s.segment_map, pan.segment_map)


def test_recover_records_its_query_so_it_is_not_offered_again():
    from m2f_core.structures import Candidate

    pred = synthetic_prediction()
    s = EditSession.from_prediction(pred)
    sky = s.select(0, 0)
    assert s.used_queries() == {0, 1, 2, 3} and sorted(s.model_queries[sky]) == [2, 3]
    cand = pred.candidates_at(5, 55)[0]
    assert cand.query == 4 and cand.query not in s.used_queries()
    gid = s.recover(cand)
    assert s.model_queries[gid] == [4] and s.used_queries() == {0, 1, 2, 3, 4}
    s.undo()
    assert gid not in s.model_queries and s.used_queries() == {0, 1, 2, 3}
    s.redo()
    assert s.model_queries[gid] == [4]
    s.undo()
    # a stuff candidate whose class has a segment merges into it: the query joins that segment's list
    sky_queries = list(s.model_queries[sky])
    mask = np.zeros(s.shape, bool)
    mask[50:53, 0:4] = True
    assert s.segment_map[50:53, 0:4].max() == 0
    assert s.recover(Candidate(query=5, category_id=SKY, score=0.4, mask=mask)) == sky
    assert s.model_queries[sky] == sky_queries + [5] and 5 in s.used_queries()
    check_consistent(s)
    s.undo()
    assert s.model_queries[sky] == sky_queries and 5 not in s.used_queries()
    s.redo()
    s.model_queries = {}  # another model's output: the old query numbers are dropped ...
    s.undo()  # ... and undo / redo leave the new (empty) ones alone
    assert s.model_queries == {} and s.used_queries() == set()
    s.redo()
    assert s.model_queries == {}


def test_workspace_keeps_edits_across_tasks_and_images():
    ws = WorkspaceState(max_predictions=1)
    a, b = ws.add_image("a.png"), ws.add_image("b.png")
    assert ws.current == a and ws.current_view() is None
    ws.set_prediction(a, synthetic_prediction())
    sa = ws.session()
    sid = sa.select(60, 45)
    sa.delete(sid)
    ws.task = "instance"
    assert len(ws.current_view()) == 1  # one disc left
    ws.task = "semantic"
    assert ws.current_view().label_map[45, 60] == 255
    with pytest.raises(ValueError, match="unknown task"):
        ws.task = "depth"
    assert ws.step(1) == b
    ws.set_prediction(b, synthetic_prediction())  # evicts a's prediction (max_predictions=1), not a's edits
    assert len(ws.session().segments) == 3
    ws.open(a)
    assert ws.prediction() is None and ws.session() is sa and sid not in sa and sa.has_edits
    ws.set_prediction(a, synthetic_prediction())  # predicting again keeps the edits
    assert ws.session() is sa
    assert [item.path.name for item in ws.export_items()] == ["a.png"]  # b is untouched
    assert [item.path.name for item in ws.export_items(include_untouched=True)] == ["a.png", "b.png"]
    assert ws.mark_reviewed(b).status == "reviewed" and ws.item(a).status == "edited"
    assert [item.path.name for item in ws.export_items()] == ["a.png", "b.png"]
    assert ws.item(a).opened and ws.session(a).edit_count == 1
    assert len(ws.reset_session().segments) == 3
    with pytest.raises(ValueError, match="no image"):
        ws.open("c.png")
    other = WorkspaceState()
    assert len(other) == 0 and other.current is None  # nothing shared between workspaces


def test_workspace_records_which_weights_predicted_what():
    """A prediction keeps its weights label; an edited image predicted again by other weights keeps its
    edits but not the old model's query numbers (the relabel menu would read them against the new output)."""
    ws = WorkspaceState()
    a = ws.add_image("a.png")
    ws.set_prediction(a, synthetic_prediction(), weights="old")
    item = ws.item(a)
    assert ws.predicted_by(a) == "old" and item.weights == "old" and ws.session().model_queries
    ws.session().delete(ws.session().segments[0].id)
    ws.set_prediction(a, synthetic_prediction(), weights="old")  # the same weights: queries still valid
    assert ws.session().model_queries
    ws.set_prediction(a, synthetic_prediction(), weights="new")
    assert ws.predicted_by(a) == "new" and item.weights == "old" and ws.session().has_edits
    assert ws.session().model_queries == {}
    ws.reset_session()  # starting again from the cached prediction: the annotation is the new model's
    assert item.weights == "new" and ws.session().model_queries and not ws.session().has_edits
    ws.discard(a)
    assert ws.session() is None and ws.prediction() is None and ws.predicted_by() is None and item.weights == ""


# --------------------------------------------------------------------------------------------
# export


def ring_session() -> EditSession:
    """The base annotation plus a ring (a thing with a hole) in the void on the right."""
    s = new_session()
    yy, xx = np.mgrid[:H, :W]
    d2 = (yy - 20) ** 2 + (xx - 40) ** 2
    s.new_segment((d2 <= 49) & (d2 > 9), BOX)
    return s


@pytest.fixture()
def images(tmp_path) -> list[Path]:
    out = []
    for name in ("one.png", "two.png"):
        p = tmp_path / "src" / name
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((H, W, 3), len(out) * 50, np.uint8)).save(p)
        out.append(p)
    return out


def test_export_reads_back_with_corrections_dataset_and_pycocotools(tmp_path, images):
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO

    s1, s2 = ring_session(), new_session()
    s2.delete(2)
    ring = s1.segment_map == 6
    assert not ring[20, 40] and ring[20, 45]
    root = export_corrections([(images[0], s1), (images[1], s2)], CATEGORIES, tmp_path / "corrections", "mine")
    assert root == tmp_path / "corrections" / "mine"
    assert sorted(p.name for p in (tmp_path / "corrections").iterdir()) == ["mine"]  # no temporary left
    ds = CorrectionsDataset(root)
    assert len(ds) == 2 and ds.class_names == NAMES
    for sample, s in zip(ds, (s1, s2)):
        assert np.array_equal(sample.panoptic.segment_map, s.segment_map)
        assert {g.id: g.category_id for g in sample.panoptic.segments} == {g.id: g.category_id for g in s.segments}
        things = {g.id for g in s.segments if g.isthing}
        assert len(sample.instances) == len(things)
        for ann in sample.instances:
            assert any(np.array_equal(ann.mask(), s.segment_map == t) for t in things)
        assert np.array_equal(sample.semantic, s.semantic_view().label_map.astype(np.uint8))
    sem = np.array(Image.open(root / "semantic" / "one.png"))
    assert sem.dtype == np.uint8 and sem[0, 0] == SKY and sem[11, 0] == 255 and sem[20, 45] == BOX
    coco = COCO(str(root / "instances.json"))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    masks = {(a["category_id"], int(a["area"])): mask_util.decode(a["segmentation"]).astype(bool) for a in anns}
    assert np.array_equal(masks[(2, int(ring.sum()))], ring)  # the hole survives (RLE, not polygons)
    assert np.array_equal(masks[(1, 80)], s1.segment_map == 2)
    edits = json.loads((root / "edits.json").read_text())
    assert {e["id"]: e["source"] for e in edits["images"][0]["segments"]}[6] == "edited"
    zpath = zip_export(root)
    assert zpath == tmp_path / "corrections" / "mine.zip"
    with zipfile.ZipFile(zpath) as zf:
        files = sorted(p.relative_to(root.parent).as_posix() for p in root.rglob("*") if p.is_file())
        assert sorted(zf.namelist()) == files
        assert zf.read("mine/panoptic.json") == (root / "panoptic.json").read_bytes()


def test_export_names_and_no_overwrite(tmp_path, images):
    assert sanitize_name(" ok-name_1.v2 ") == "ok-name_1.v2"
    for bad, msg in (("", "empty"), ("../evil", "'/'"), ("a/b", "'/'"), ("/etc/cron.d", "'/'"),
                     ("C:\\x", "characters"), ("a\\b", "characters"),
                     ("x" * 101, "at most 100"), (".hidden", "start with '.'"), ("a..b", r"'\.\.'"),
                     ("caf\u00e9", "characters")):
        with pytest.raises(ExportError, match=msg):
            export_corrections([(images[0], new_session())], CATEGORIES, tmp_path / "out", bad)
    assert not (tmp_path / "out").exists()
    root = export_corrections([(images[0], new_session())], CATEGORIES, tmp_path / "out", "v1")
    first = (root / "panoptic.json").read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        export_corrections([(images[0], ring_session())], CATEGORIES, tmp_path / "out", "v1")
    assert (root / "panoptic.json").read_bytes() == first
    export_corrections([(images[0], ring_session())], CATEGORIES, tmp_path / "out", "v1", overwrite=True)
    assert (root / "panoptic.json").read_bytes() != first
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v1"]
    with pytest.raises(ExportError, match="image is 50x40, its annotation 60x40"):
        export_corrections([(images[0], EditSession.from_panoptic(PanopticResult(np.zeros((40, 60), np.int32)),
                                                                  CATEGORIES))], CATEGORIES, tmp_path / "out", "v2")
    with pytest.raises(ExportError, match="nothing to export"):
        export_corrections([], CATEGORIES, tmp_path / "out", "v2")


def test_crash_mid_export_leaves_no_partial_folder(tmp_path, images, monkeypatch):
    import m2f_core.data.corrections as corrections

    out = tmp_path / "out"
    root = export_corrections([(images[0], new_session())], CATEGORIES, out, "v1")
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    real = corrections.write_semantic_png
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(corrections, "write_semantic_png", crash_on_second)
    sessions = [(images[0], ring_session()), (images[1], ring_session())]
    with pytest.raises(OSError, match="simulated"):
        export_corrections(sessions, CATEGORIES, out, "v1", overwrite=True)
    calls.clear()
    with pytest.raises(OSError, match="simulated"):
        export_corrections(sessions, CATEGORIES, out, "fresh")
    assert sorted(p.name for p in out.iterdir()) == ["v1"]  # no "fresh", no hidden temporary
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
