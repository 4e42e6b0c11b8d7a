"""What the browser's canvas is sent (``app.canvas_sync``), checked by decoding it as the browser does.

A ``Browser`` here plays canvas.js: it keeps the index map it was sent, applies each patch at its box
(after checking ``base`` is the version it holds) and maps indices back to segment ids through the
segment table. After every edit its map must equal the session's, the patch must cover exactly the
pixels that changed, and a segment must keep its index. The edits run through the ``Workbench`` on
the crafted weights and scene of ``app_helpers`` (the model runs once per image).
"""

from __future__ import annotations

import base64
import io
import zlib

import numpy as np
import pytest
from app_helpers import make_test_scene
from PIL import Image

from app.canvas_sync import CanvasSync, encode_photo
from app.editing import EditSession
from app.workbench import Workbench
from m2f_core.structures import PanopticResult, Segment

DTYPES = {"u8": np.uint8, "u16": np.uint16, "u32": np.uint32}


def decode(payload: dict) -> np.ndarray:
    """base64 -> zlib -> little-endian u8/u16/u32 -> (h, w) of the payload's box [x0, y0, w, h]."""
    _, _, w, h = payload["box"]
    raw = zlib.decompress(base64.b64decode(payload["data"]))
    return np.frombuffer(raw, dtype=np.dtype(DTYPES[payload["dtype"]]).newbyteorder("<")).reshape(h, w)


def paste(payload: dict, shape: tuple[int, int]) -> np.ndarray:
    """A crop payload at its box in a zero (H, W) array."""
    x0, y0, w, h = payload["box"]
    out = np.zeros(shape, np.int64)
    out[y0:y0 + h, x0:x0 + w] = decode(payload)
    return out


def changed_box(before: np.ndarray, after: np.ndarray) -> list[int] | None:
    """[x0, y0, w, h] of the pixels that differ (None when none do)."""
    ys, xs = np.nonzero(before != after)
    if ys.size == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


class Browser:
    """What canvas.js holds: the index map, its version, and every index -> segment id it was told."""

    def __init__(self) -> None:
        self.indices: np.ndarray | None = None
        self.version: int | None = None
        self.id_of: dict[int, int] = {}
        self.photo: str | None = None

    def receive(self, canvas: dict) -> None:
        if "image" in canvas:  # a new image: everything it held is gone
            self.photo, self.indices, self.version, self.id_of = canvas["image"]["src"], None, None, {}
        update = canvas["map"]
        if update is not None:
            if update["base"] is None:
                w, h = canvas["size"]
                assert update["box"] == [0, 0, w, h]
                self.indices = decode(update).astype(np.int64)
            else:
                assert update["base"] == self.version, "a patch for another version"
                x0, y0, w, h = update["box"]
                self.indices[y0:y0 + h, x0:x0 + w] = decode(update)
            self.version = update["version"]
        for row in canvas["segments"]:
            assert self.id_of.setdefault(row["i"], row["id"]) == row["id"], "an index changed its segment"

    def ids(self) -> np.ndarray:
        lut = np.zeros(max(self.id_of, default=0) + 1, np.int64)
        for i, sid in self.id_of.items():
            lut[i] = sid
        return lut[self.indices]


@pytest.fixture(scope="module")
def predictor(assets):
    from m2f_core.predictor import Predictor

    return Predictor(str(assets["weights"]), device="cpu")


@pytest.fixture
def wb(predictor, assets, tmp_path):
    second = make_test_scene(tmp_path / "imgs" / "b.png", seed=5, size=(96, 128))
    return Workbench(predictor, tmp_path / "corrections", images=[assets["scene"], second], work_dir=tmp_path / "w")


def inner_point(session, sid: int) -> tuple[int, int]:
    """(x, y): the innermost pixel of segment ``sid``."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(session.segment_map == sid, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return int(x), int(y)


def things_by_area(session) -> list[int]:
    return [seg.id for seg in sorted(session.segments, key=lambda seg: -seg.area) if seg.isthing]


# ------------------------------------------------------------------------------------------ (a) the full map


def test_a_new_image_sends_the_photo_and_the_full_map(wb):
    s = wb.new_session()
    canvas = wb.start(s).canvas
    session = s.workspace.session()
    h, w = session.shape
    assert canvas["size"] == [w, h] and canvas["image"]["src"].startswith("data:image/jpeg;base64,")
    assert canvas["image"]["shown"] == [w, h]  # small: shown at full size
    update = canvas["map"]
    assert update["box"] == [0, 0, w, h] and update["base"] is None and update["version"] == 1
    assert update["dtype"] == "u8"  # a few segments: indices fit in 8 bits
    rows = canvas["segments"]
    assert sorted(r["id"] for r in rows) == [seg.id for seg in session.segments]
    assert sorted(r["i"] for r in rows) == list(range(1, len(rows) + 1))  # indices 1..n, 0 is void
    lut = np.zeros(len(rows) + 1, np.int64)
    for r in rows:
        lut[r["i"]] = r["id"]
    np.testing.assert_array_equal(lut[decode(update)], session.segment_map)
    areas = {seg.id: seg.area for seg in session.segments}
    assert all(r["a"] == areas[r["id"]] for r in rows)
    assert len(canvas["classes"]["names"]) == len(session.class_names)
    # the next screen holds nothing the browser has
    again = wb.screen(s).canvas
    assert again["map"] is None and "image" not in again and "classes" not in again


# ------------------------------------------------------------------------------------------ (b, c) patches


def test_every_edit_sends_the_box_that_changed_and_indices_stay(wb):
    s = wb.new_session()
    browser = Browser()
    browser.receive(wb.start(s).canvas)
    session = s.workspace.session()
    np.testing.assert_array_equal(browser.ids(), session.segment_map)
    h, w = session.shape
    a, b = things_by_area(session)[:2]
    ax, ay = inner_point(session, a)
    bx, by = inner_point(session, b)

    def edit(label, action, changes=True):
        before = session.segment_map.copy()
        old_index = dict(s.sync.index_of)
        version = browser.version
        screen = action()
        assert "⚠️" not in screen.status, (label, screen.status)
        update = screen.canvas["map"]
        box = changed_box(before, session.segment_map)
        if not changes:
            assert box is None and update is None, label
            assert browser.version == version
            return screen
        assert box is not None, f"{label} changed nothing"
        assert update["box"] == box, label  # exactly the changed pixels' bounding box
        assert update["base"] == version and update["version"] == version + 1, label
        browser.receive(screen.canvas)
        np.testing.assert_array_equal(browser.ids(), session.segment_map, err_msg=label)
        index = s.sync.index_of
        assert all(index[k] == v for k, v in old_index.items()), label  # no segment renumbered
        new = set(index) - set(old_index)
        assert {index[k] for k in new} == set(range(len(old_index) + 1, len(index) + 1)), label  # fresh numbers
        assert new == {r["id"] for r in screen.canvas["segments"]} - set(old_index), label
        return screen

    # paint: a stroke from a's centre to b's centre, over the others
    edit("paint", lambda: wb.stroke(s, "brush", [(ax, ay), (bx, by)], 3, ids=[a], overwrite=True))
    # a stroke that adds nothing (inside a, not over others) sends no map
    edit("paint nothing", lambda: wb.stroke(s, "brush", [(ax, ay)], 1, ids=[a]), changes=False)
    edit("select", lambda: wb.select_ids(s, [b]), changes=False)
    edit("erase", lambda: wb.stroke(s, "eraser", [(bx, by), (bx + 5, by)], 4, ids=[b], fill="void"))
    edit("erase to neighbours", lambda: wb.stroke(s, "eraser", [(ax, ay)], 4, ids=[a], fill="neighbour"))
    c, d = things_by_area(session)[2:4]
    edit("delete", lambda: wb.canvas_action(s, "delete", [c]))
    edit("merge", lambda: wb.canvas_action(s, "merge", [a, d]))
    screen = edit("split", lambda: wb.canvas_action(s, "split", [a]))
    assert "split into" in screen.status and len(s.selected) >= 2
    edit("undo", lambda: wb.canvas_action(s, "undo"))
    edit("redo", lambda: wb.canvas_action(s, "redo"))
    edit("undo again", lambda: wb.canvas_action(s, "undo"))
    edit("undo the merge", lambda: wb.canvas_action(s, "undo"))
    index_c = s.sync.index_of[c]
    screen = edit("undo the delete", lambda: wb.canvas_action(s, "undo"))
    assert c in session and [r["i"] for r in screen.canvas["segments"] if r["id"] == c] == [index_c]  # its own
    # recover: the first pixel on a coarse grid that offers a candidate
    found = next(((x, y) for y in range(8, h, 16) for x in range(8, w, 16)
                  if wb.recover_at(s, x, y).canvas["candidates"]), None)
    assert found is not None, "nothing to recover with the test weights"
    screen = edit("recover", lambda: wb.recover(s, 0, overwrite=True))
    assert "recovered" in screen.status and screen.canvas["candidates"] == []
    edit("undo recover", lambda: wb.canvas_action(s, "undo"))
    edit("redo recover", lambda: wb.canvas_action(s, "redo"))
    edit("nothing to redo", lambda: wb.canvas_action(s, "redo"), changes=False)


# ------------------------------------------------------------------------------------------ (d, e) resets


def test_switching_image_and_resync_send_everything_again(wb):
    s = wb.new_session()
    first = wb.start(s).canvas
    session = s.workspace.session()
    a = things_by_area(session)[0]
    deleted = wb.canvas_action(s, "delete", [a]).canvas
    assert deleted["map"]["base"] == 1 and deleted["map"]["version"] == 2
    edited = session.segment_map.copy()

    second = wb.step(s, 1).canvas
    other = s.workspace.session()
    h, w = other.shape
    assert second["key"] != first["key"] and "image" in second and second["image"]["src"] != first["image"]["src"]
    assert second["map"]["base"] is None and second["map"]["version"] == 1 and second["map"]["box"] == [0, 0, w, h]
    browser = Browser()
    browser.receive(second)
    np.testing.assert_array_equal(browser.ids(), other.segment_map)

    back = wb.step(s, -1).canvas  # the first image again: its photo and its (edited) map in full
    assert back["key"] == first["key"] and back["image"]["src"] == first["image"]["src"]
    assert back["map"]["base"] is None and back["map"]["version"] == 1
    browser.receive(back)
    np.testing.assert_array_equal(browser.ids(), edited)
    assert a not in browser.ids()

    assert wb.screen(s).canvas["map"] is None
    full = wb.resync(s).canvas  # the browser lost track: everything again
    assert "image" in full and "classes" in full and full["map"]["base"] is None and full["map"]["version"] == 1
    browser.receive(full)
    np.testing.assert_array_equal(browser.ids(), edited)
    assert wb.screen(s).canvas["map"] is None


# ------------------------------------------------------------------------------------------ (f) large ids


def test_ids_above_the_dense_table_round_trip():
    """COCO-style RGB ids (up to 2**24 - 1) do not fit the dense lookup (2**22): the searchsorted path."""
    seg_map = np.zeros((6, 8), np.int32)
    seg_map[:, :3] = 8_000_000
    seg_map[:, 3:6] = 16_777_215
    seg_map[1:3, 6:] = 5
    segments = [Segment(id=i, category_id=c, isthing=True, score=1.0)
                for i, c in ((5, 0), (8_000_000, 1), (16_777_215, 0))]
    session = EditSession.from_panoptic(PanopticResult(seg_map, segments), [{"name": "a"}, {"name": "b"}])
    sync = CanvasSync()
    ids = [seg.id for seg in session.segments]
    update, new_image = sync.map_update("k", session.segment_map, ids)
    assert new_image and sync.index_of == {5: 1, 8_000_000: 2, 16_777_215: 3}
    expected = np.zeros((6, 8), np.uint16)  # by hand: the indices of the three ids
    expected[:, :3], expected[:, 3:6], expected[1:3, 6:] = 2, 3, 1
    np.testing.assert_array_equal(decode(update), expected)
    # an edit: the 16_777_215 segment loses its last column, a new id (16_777_216 would not fit a PNG)
    session.erase(np.pad(np.ones((6, 1), bool), ((0, 0), (5, 2))), segment_id=16_777_215)
    patch, new_image = sync.map_update("k", session.segment_map, [seg.id for seg in session.segments])
    assert not new_image and patch["box"] == [5, 0, 1, 6] and patch["base"] == 1 and patch["version"] == 2
    np.testing.assert_array_equal(decode(patch), np.zeros((6, 1)))
    assert sync.map_update("k", session.segment_map, ids) == (None, False)


# ------------------------------------------------------------------------------------------ (g) the photo


def test_encode_photo_downscales_a_large_photo():
    yy, xx = np.mgrid[0:3000, 0:4000]
    photo = np.stack([xx * 255 // 4000, yy * 255 // 3000, np.full_like(xx, 128)], -1).astype(np.uint8)
    out = encode_photo(photo)
    assert out["shown"] == [2560, 1920]  # 4000 x 3000 scaled by 2560 / 4000
    head, data = out["src"].split(",", 1)
    assert head == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        assert img.format == "JPEG" and img.size == (2560, 1920)
        shown = np.asarray(img.convert("RGB"), dtype=np.int16)
    assert abs(int(shown[960, 1280, 0]) - 127) <= 4 and abs(int(shown[960, 1280, 2]) - 128) <= 4
    small = encode_photo(photo[:30, :40])
    assert small["shown"] == [40, 30]


def test_the_full_size_photo_is_sent_once_when_asked(predictor, tmp_path):
    """A photo larger than the display copy: zooming in asks for it at full size, once per image."""
    wide = make_test_scene(tmp_path / "wide.png", seed=3, size=(96, 2700))
    wb = Workbench(predictor, tmp_path / "corrections", images=[wide], work_dir=tmp_path / "w")
    s = wb.new_session()
    first = wb.start(s).canvas
    assert first["image"]["shown"] == [2560, 91]  # 2700 x 96 scaled by 2560 / 2700
    assert "photo_full" not in first
    full = wb.set_view(s, full_photo=True).canvas
    assert full["photo_full"]["shown"] == [2700, 96] and full["photo_full"]["key"] == first["key"]
    head, data = full["photo_full"]["src"].split(",", 1)
    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        assert img.size == (2700, 96)
    assert "photo_full" not in wb.screen(s).canvas  # sent once


# ------------------------------------------------------------------------------------------ (h) the wand


def test_wand_preview_and_commit(wb):
    """The preview is the click's region at the threshold, as a crop; Enter makes exactly that a segment.
    (The crafted weights' mask probabilities are alike: the whole image at 0.47, part of it at 0.99.)"""
    s = wb.new_session()
    wb.start(s)
    session = s.workspace.session()
    sid = things_by_area(session)[0]
    x, y = inner_point(session, sid)
    for threshold in (0.47, 0.99):  # the same click, the threshold moved (the wheel)
        canvas = wb.wand(s, x, y, threshold).canvas
        shown = canvas["wand"]
        assert canvas["map"] is None and (shown["x"], shown["y"], shown["threshold"]) == (x, y, threshold)
        (y0, x0, y1, x1), mask = s.wand.crop(threshold)
        assert shown["mask"]["box"] == [x0, y0, x1 - x0, y1 - y0]
        np.testing.assert_array_equal(decode(shown["mask"]), mask.astype(np.uint8))
        assert shown["mask_area"] == int(mask.sum()) > 0 and mask[y - y0, x - x0]
    region = s.wand.region(0.99)
    assert region.sum() == mask.sum() and 0 < region.mean() < 1
    thing = next(c for c, t in enumerate(session.is_thing) if t)
    before = set(s.sync.index_of)
    screen = wb.wand_commit(s, "new", ids=[], overwrite=True, new_class=thing)
    assert "new segment" in screen.status and screen.canvas["wand"] is None and s.wand is None
    new = s.selected[0]
    assert new not in before and session.segment(new).category_id == thing
    np.testing.assert_array_equal(session.segment_map == new, region)
    assert screen.canvas["map"]["box"] == changed_box(np.zeros_like(region), region)
