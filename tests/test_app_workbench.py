"""The app's actions without a browser: ``app.workbench`` (what each event does) and ``app.render``.

The same crafted weights and scene as the browser tests (``app_helpers``); the model runs in-process.
"""

from __future__ import annotations

import base64
import logging
import zipfile
import zlib

import numpy as np
import pytest
from app_helpers import SCENE_SIZE, make_test_scene

from app.render import SELECTED_MARK, TABLE_HEADERS, relabel_choices, segment_rows
from app.workbench import Workbench, unique_name
from m2f_core.data.corrections import CorrectionsDataset
from m2f_core.data.specs import open_dataset


@pytest.fixture(scope="module")
def predictor(assets):
    from m2f_core.predictor import Predictor

    return Predictor(str(assets["weights"]), device="cpu")


@pytest.fixture
def wb(predictor, tmp_path):
    return Workbench(predictor, tmp_path / "corrections", work_dir=tmp_path / "work")


def opened(wb, assets):
    s = wb.new_session()
    screen = wb.open_upload(s, assets["scene"])
    assert "image" in screen.canvas, screen.status
    return s, screen


def decode(payload: dict) -> np.ndarray:
    """An array of the canvas payload (``app.canvas_sync.index_map_payload``) back to numpy, (h, w) of its box."""
    dtype = {"u8": np.uint8, "u16": np.uint16, "u32": np.uint32}[payload["dtype"]]
    _, _, w, h = payload["box"]
    return np.frombuffer(zlib.decompress(base64.b64decode(payload["data"])), dtype=np.dtype(dtype).newbyteorder("<")
                         ).reshape(h, w)


def thing_point(session, rank: int = 0):
    """(segment id, x, y): an inner pixel of the rank-th largest thing segment."""
    from scipy import ndimage

    things = sorted((seg for seg in session.segments if seg.isthing), key=lambda seg: -seg.area)
    sid = things[rank].id
    dist = ndimage.distance_transform_edt(np.pad(session.segment_map == sid, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return sid, int(x), int(y)


# ------------------------------------------------------------------------------------------ helpers


def test_unique_name():
    assert unique_name("photo", ".png", set()) == "photo.png"
    assert unique_name("photo", ".png", {"photo.png", "photo-2.png"}) == "photo-3.png"
    assert unique_name("../../etc/pass wd", ".png", set()) == "etc_pass_wd.png"
    assert unique_name("", ".png", set()) == "image.png"


def test_render_helpers(predictor, assets):
    from app.editing import EditSession

    pred = predictor.predict(str(assets["scene"]))
    session = EditSession.from_prediction(pred)
    sid = session.segments[0].id
    rows = segment_rows(session, [sid])
    assert len(rows) == len(session.segments) and len(rows[0]) == len(TABLE_HEADERS)
    assert [r[0] for r in rows].count(SELECTED_MARK) == 1 and rows[0][1] == sid
    choices = relabel_choices(session, pred, sid, k=3)
    assert sorted(c for _, c in choices) == list(range(len(session.class_names)))  # every class once
    assert "·" in choices[0][0] and "·" not in choices[-1][0]  # model's top-k first, with probabilities
    top = pred.top_classes(session.model_queries[sid][0], k=1)[0][0]
    assert choices[0][1] == top
    plain = relabel_choices(session, None, sid)
    assert [c for _, c in plain] == list(range(len(session.class_names)))


# ------------------------------------------------------------------------------------------ actions


def test_task_switch_reuses_the_prediction(wb, assets):
    """A task switch re-sends nothing but the task (the browser redraws); the model is not run again.
    The uncertainty is sent once per image, when the view first asks for it."""
    s, screen = opened(wb, assets)
    assert s.model_runs == 1 and wb.model_runs == 1
    first = screen.canvas
    assert first["task"] == "panoptic" and first["map"]["base"] is None and "uncertainty" not in first
    for task in ("instance", "semantic", "panoptic"):
        screen = wb.set_task(s, task)
        canvas = screen.canvas
        assert canvas["task"] == task and canvas["map"] is None and "image" not in canvas  # nothing re-sent
        assert canvas["segments"] == first["segments"]
        assert task.capitalize() in screen.status and "model runs: 1" in screen.status
    assert s.model_runs == 1
    heat = wb.set_view(s, uncertainty=True)
    assert "uncertainty" in heat.status and heat.canvas["show_uncertainty"] and heat.canvas["map"] is None
    shown = decode(heat.canvas["uncertainty"])
    expected = np.round(s.workspace.prediction().uncertainty() * 255).astype(np.uint8)
    assert shown.shape == s.workspace.session().shape and shown.max() > shown.min()
    np.testing.assert_array_equal(shown, expected)
    again = wb.set_task(s, "instance")  # the browser has it: not sent again, still shown
    assert "uncertainty" not in again.canvas and again.canvas["show_uncertainty"]
    assert "uncertainty" not in wb.set_view(s, uncertainty=True).canvas
    assert not wb.set_view(s, uncertainty=False).canvas["show_uncertainty"]
    assert s.model_runs == 1
    assert "⚠️" in wb.set_task(s, "depth").status


def test_bad_upload_is_a_status_message(wb, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    s = wb.new_session()
    screen = wb.open_upload(s, bad)
    assert screen.canvas == {"empty": True} and s.model_runs == 0
    assert "notes.png: not an image" in screen.status and str(tmp_path) not in screen.status


def test_user_error_is_a_plain_one_line_message(wb, assets, caplog):
    """A user's mistake (nothing selected, an unknown class) is its one-line message, and nothing is logged."""
    s, _ = opened(wb, assets)
    caplog.clear()  # opening logs its model run (INFO) when another test has turned the app's logging on
    with caplog.at_level(logging.WARNING, logger="app"):
        first = wb.delete(s).status.split("\n")[0]
        unknown = wb.click(s, 5, 5, "New segment", new_class=999).status.split("\n")[0]
    assert first == "⚠️ select a segment first (click it on the image or in the table)"
    assert unknown.startswith("⚠️ unknown class id 999") and "Internal error" not in unknown
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("error", [KeyError("segment 7"), ValueError("a bug deep in the code")])
def test_internal_error_is_logged_and_named_as_such(predictor, assets, tmp_path, monkeypatch, caplog, error):
    """A failure that is no user's mistake (even a plain ValueError) is logged with its traceback and the
    status says "Internal error" and where the log is; it never reads as a user's mistake."""
    from app.editing import EditSession

    log_path = tmp_path / "app.log"
    wb = Workbench(predictor, tmp_path / "corrections", work_dir=tmp_path / "work", log_path=log_path)
    s, _ = opened(wb, assets)
    sid, x, y = thing_point(s.workspace.session())
    wb.click(s, x, y, "Select")

    def broken(self, segment_id):  # deep in the edit engine: the annotation's own operation fails
        raise error

    monkeypatch.setattr(EditSession, "delete", broken)
    with caplog.at_level(logging.ERROR, logger="app"):
        status = wb.delete(s).status.split("\n")[0]
    assert status.startswith(f"⚠️ Internal error: {type(error).__name__}") and str(log_path) in status
    assert f"⚠️ {error}" not in status  # not dressed as a user's mistake
    assert s.workspace.session().segment(sid)  # nothing changed
    records = [r for r in caplog.records if r.exc_info and r.exc_info[1] is error]
    assert len(records) == 1 and "Traceback" in caplog.text and "in broken" in caplog.text
    # the app goes on: the next action works
    assert wb.undo(s).status.startswith("nothing to undo")


def test_pixel_limit(predictor, assets, tmp_path):
    wb = Workbench(predictor, tmp_path / "c", work_dir=tmp_path / "w", max_pixels=1000)
    s = wb.new_session()
    assert "pixel limit" in wb.open_upload(s, assets["scene"]).status


def test_click_select_relabel_undo_redo(wb, assets):
    s, _ = opened(wb, assets)
    session = s.workspace.session()
    sid, x, y = thing_point(session)
    screen = wb.click(s, x, y, "Select")
    assert s.selected == [sid] and f"selected #{sid}" in screen.status
    assert [r[1] for r in screen.rows if r[0] == SELECTED_MARK] == [sid]
    assert screen.canvas["selected"] == [sid] and screen.canvas["map"] is None  # drawn by the browser
    old = session.segment(sid).category_id
    assert screen.relabel_value == old and screen.relabel[0][1] == old
    new = next(c for c in range(len(session.class_names)) if session.is_thing[c] and c != old)
    screen = wb.relabel(s, new)
    assert session.segment(sid).category_id == new and "relabelled" in screen.status
    assert screen.canvas["map"] is None  # the same id: only its row changes
    assert [r["c"] for r in screen.canvas["segments"] if r["id"] == sid] == [new]
    again = wb.relabel(s, new)  # a repeated event changes nothing and keeps the message
    assert again.status.split("\n")[0] == screen.status.split("\n")[0] and session.history_labels == ["relabel"]
    assert "undid relabel" in wb.undo(s).status and session.segment(sid).category_id == old
    assert "redid relabel" in wb.redo(s).status and session.segment(sid).category_id == new
    assert "nothing to redo" in wb.redo(s).status
    void = np.argwhere(session.segment_map == 0)
    if len(void):
        vy, vx = void[0]
        assert "void" in wb.click(s, vx, vy, "Select").status and s.selected == []


def test_merge_split_delete_paint_erase_new(wb, assets):
    s, _ = opened(wb, assets)
    session = s.workspace.session()
    a, ax, ay = thing_point(session, 0)
    b, bx, by = thing_point(session, 1)
    n = len(session.segments)
    assert "two or more" in wb.merge(s).status or "select a segment" in wb.merge(s).status
    wb.click(s, ax, ay, "Select", multi=True)
    wb.click(s, bx, by, "Select", multi=True)
    assert s.selected == [a, b]
    screen = wb.merge(s)
    assert f"into #{a}" in screen.status and len(session.segments) == n - 1 and s.selected == [a]
    screen = wb.split(s)  # the merged segment is in pieces again
    assert "split into" in screen.status and len(session.segments) >= n
    wb.undo(s)
    area = session.segment(a).area
    void = np.argwhere(session.segment_map == 0)
    vy, vx = void[len(void) // 2]
    screen = wb.click(s, vx, vy, "Paint", brush_size=9)
    assert "painted" in screen.status and session.segment(a).area > area
    screen = wb.click(s, vx, vy, "Erase", brush_size=9)
    assert session.segment(a).area == area
    screen = wb.click(s, vx, vy, "New segment", brush_size=5, new_class=1)
    new_id = s.selected[0]
    assert "new segment" in screen.status and session.segment(new_id).category_id == 1
    assert session.segment(new_id).source == "edited"
    wb.click(s, ax, ay, "Select")
    screen = wb.delete(s)
    assert a not in session and f"deleted #{a}" in screen.status and s.selected == []
    assert "select a segment" in wb.delete(s).status


def test_recover_adds_a_dropped_query(wb, assets):
    s, _ = opened(wb, assets)
    session = s.workspace.session()
    pred = s.workspace.prediction()
    void = session.segment_map == 0
    for y in range(8, SCENE_SIZE[0], 16):
        for x in range(8, SCENE_SIZE[1], 16):
            screen = wb.click(s, x, y, "Recover")
            good = [i for i, c in enumerate(s.candidates) if (c.mask & void).any()]
            if good:
                break
        else:
            continue
        break
    assert good, "nothing to recover with the test weights"
    shown = screen.canvas["candidates"]
    assert len(shown) == len(s.candidates) and [c["index"] for c in shown] == list(range(len(shown)))
    for c, cand in zip(shown, s.candidates):  # each mask as a crop at its box
        x0, y0, w, h = c["mask"]["box"]
        full = np.zeros(session.shape, bool)
        full[y0:y0 + h, x0:x0 + w] = decode(c["mask"]) > 0
        np.testing.assert_array_equal(full, cand.mask)
        assert c["mask_area"] == int(cand.mask.sum()) and c["c"] == cand.category_id
        assert c["s"] == pytest.approx(cand.score, abs=1e-4)
    cand = s.candidates[good[0]]
    n = len(session.segments)
    screen = wb.recover(s, good[0])
    assert "recovered" in screen.status and len(session.segments) == n + 1
    new = session.segment(s.selected[0])
    assert new.category_id == cand.category_id and new.score == pytest.approx(cand.score)
    assert s.candidates == [] and screen.canvas["candidates"] == [] and pred is s.workspace.prediction()
    assert "no such candidate" in wb.recover(s, 0).status
    # its query is in the annotation now: a Recover click at the same pixel does not offer it again
    again = wb.recover_at(s, x, y)
    assert cand.query not in [c.query for c in s.candidates]
    assert len(again.canvas["candidates"]) == len(s.candidates)


def test_export_and_zip(wb, assets, tmp_path):
    s, _ = opened(wb, assets)
    session = s.workspace.session()
    sid, x, y = thing_point(session)
    wb.click(s, x, y, "Select")
    wb.delete(s)
    screen = wb.export(s, "unit")
    assert "exported 1 image" in screen.status and screen.export_file.endswith("unit.zip")
    folder = wb.corrections_dir / "unit"
    sample = CorrectionsDataset(folder)[0]
    np.testing.assert_array_equal(sample.panoptic.segment_map, session.segment_map)
    with zipfile.ZipFile(screen.export_file) as zf:
        assert "unit/panoptic.json" in zf.namelist()
    assert "already exists" in wb.export(s, "unit").status
    assert "exported" in wb.export(s, "unit", overwrite=True).status
    assert "⚠️" in wb.export(s, "../evil").status
    assert "nothing to export" in wb.export(wb.new_session(), "empty").status
    # the annotation tools' files beside it, readable by the project's tool readers (docs/interchange.md)
    screen = wb.export(s, "tools", tools=("cvat_xml", "labelme"), polygons=True)
    assert "also as cvat_xml, labelme polygons" in screen.status
    tool_map = open_dataset(f"cvat_xml:{wb.corrections_dir / 'tools' / 'cvat' / 'annotations.xml'}")[0]
    assert tool_map.panoptic is not None and len(tool_map.panoptic.segments) == len(sample.panoptic.segments)
    assert any((wb.corrections_dir / "tools" / "labelme").glob("*.json"))


def test_browse_images_and_dataset(predictor, assets, tmp_path):
    second = make_test_scene(tmp_path / "imgs" / "b.png", seed=5, size=(200, 240))
    first = make_test_scene(tmp_path / "imgs" / "a.png")
    wb = Workbench(predictor, tmp_path / "corrections", images=[first, second], work_dir=tmp_path / "w",
                   )
    s = wb.new_session()
    screen = wb.start(s)
    assert "image 1 / 2: a.png" in screen.position and s.model_runs == 1
    sid, x, y = thing_point(s.workspace.session())
    wb.click(s, x, y, "Select")
    wb.delete(s)
    screen = wb.step(s, 1)
    assert "image 2 / 2: b.png" in screen.position and s.model_runs == 2
    assert "last image" in wb.step(s, 1).status
    screen = wb.step(s, -1)
    assert sid not in s.workspace.session() and s.model_runs == 2  # edits kept, prediction cached
    wb.export(s, "browse")
    # the export as a dataset: its ground truth can be shown beside the prediction
    ds = open_dataset(f"corrections:{wb.corrections_dir / 'browse'}")
    wb2 = Workbench(predictor, tmp_path / "c2", dataset=ds, work_dir=tmp_path / "w2")
    s2 = wb2.new_session()
    screen = wb2.start(s2)
    assert screen.canvas["has_ground_truth"] and "ground_truth" not in screen.canvas  # sent when asked for


def test_ground_truth_is_sent_once_with_model_classes(predictor, assets, tmp_path):
    maker = Workbench(predictor, tmp_path / "gt", work_dir=tmp_path / "w0")
    s = maker.new_session()
    maker.open_upload(s, assets["scene"])
    sid, x, y = thing_point(s.workspace.session())
    maker.canvas_action(s, "delete", [sid])
    assert "exported 1 image" in maker.export(s, "gt").status
    ds = open_dataset(f"corrections:{tmp_path / 'gt' / 'gt'}")
    wb = Workbench(predictor, tmp_path / "corrections", dataset=ds, work_dir=tmp_path / "w")
    s2 = wb.new_session()
    screen = wb.start(s2)
    assert screen.canvas["has_ground_truth"] and "ground_truth" not in screen.canvas
    screen = wb.set_view(s2, ground_truth=True)
    assert "⚠️" not in screen.status, screen.status
    truth = screen.canvas["ground_truth"]
    w, h = screen.canvas["size"]
    indices = decode(truth["map"])
    assert indices.shape == (h, w) == s2.workspace.session().shape
    expected = ds[0].panoptic  # the exported annotation: the model's with one segment deleted
    assert sid not in expected.segment_map and len(truth["segments"]) == len(expected.segments)
    to_id = np.zeros(int(indices.max()) + 1, np.int64)  # index -> the dataset's segment id
    for seg in truth["segments"]:
        to_id[seg["i"]] = seg["id"]
        assert seg["model_class"] == seg["c"] and 0 <= seg["c"] < len(wb.config.class_names)
    np.testing.assert_array_equal(to_id[indices], expected.segment_map)
    assert {seg["id"]: seg["c"] for seg in truth["segments"]} == {g.id: g.category_id for g in expected.segments}
    assert "ground_truth" not in wb.set_task(s2, "semantic").canvas  # once per image


def test_sessions_are_independent(wb, assets):
    s1, _ = opened(wb, assets)
    s2, _ = opened(wb, assets)
    sid, x, y = thing_point(s1.workspace.session())
    wb.click(s1, x, y, "Select")
    wb.delete(s1)
    assert sid not in s1.workspace.session() and sid in s2.workspace.session()
    assert s1.upload_dir != s2.upload_dir
    wb.close_session(s1)
    assert not s1.upload_dir.exists()


# ------------------------------------------------------------------------------------------ fine-tune, adopt


def _edit_largest(wb, s):
    """Delete the current image's largest segment (an edit of any scene the crafted weights give)."""
    session = s.workspace.session()
    largest = max(session.segments, key=lambda seg: seg.area)
    wb.select_segment(s, largest.id)
    assert "deleted" in wb.delete(s).status
    return largest.id


def _other_weights(assets, folder):
    """The crafted weights with their classes rotated: the same masks, other classes and top-k."""
    import torch

    from m2f_core.checkpoint import load_model, save_model

    model = load_model(assets["weights"])
    head = model.sem_seg_head.predictor.class_embed
    with torch.no_grad():
        k = head.out_features - 1  # keep no-object last
        order = list(range(1, k)) + [0, k]
        head.weight.copy_(head.weight[order])
        head.bias.copy_(head.bias[order])
    save_model(model, folder)
    return folder


@pytest.fixture
def browse_wb(predictor, assets, tmp_path):
    """A workbench over three scenes, started from the crafted weights."""
    paths = [make_test_scene(tmp_path / "imgs" / f"s{i}.png", seed=seed) for i, seed in enumerate((13, 5, 7))]
    return Workbench(predictor, tmp_path / "corrections", images=paths, work_dir=tmp_path / "w",
                     runs_dir=tmp_path / "runs", weights_source=str(assets["weights"]), weights_label="crafted")


def test_adopt_repredicts_untouched_and_keeps_edits(browse_wb, assets, tmp_path):
    """Adopt swaps the model everywhere: images without edits follow it (in every session), edited or
    reviewed ones keep their annotation and the prediction it was made on (the relabel menu never mixes
    the two models), until Re-predict."""
    import json

    wb = browse_wb
    s, other = wb.new_session(), wb.new_session()
    wb.start(other)  # another browser: its first image, untouched
    wb.start(s)
    ws = s.workspace
    a, b, c = ws.keys
    removed = _edit_largest(wb, s)  # a: edited
    wb.step(s, 2)
    wb.mark_reviewed(s)  # c: reviewed, no edits
    wb.step(s, -1)  # b: untouched, current
    old_b = ws.prediction(b)
    assert "predicted by: crafted" in wb.screen(s).status
    run = tmp_path / "runs" / "by-hand"
    _other_weights(assets, run / "model")
    (run / "result.json").write_text(json.dumps({"before": {"PQ": 40.0}, "after": {"PQ": 39.0}, "improved": False,
                                                 "held_out": ["x.png"], "per_class_PQ": {}}))
    screen = wb.adopt(s, run_dir=run)
    assert "⚠️ not better on the held-out images (held-out PQ 40.0 → 39.0)" in screen.status
    assert "Adopt anyway" in screen.status and wb.model.weights_label == "crafted"
    screen = wb.adopt(s, anyway=True, run_dir=run)
    label = str(run / "model")
    assert wb.model_label == label and "adopted runs/by-hand/model" in screen.status
    assert "2 edited or reviewed image(s) keep their annotation" in screen.status
    # the current image (no edits) is predicted again by the new model, its menu reads the new output
    new_b = ws.prediction(b)
    assert new_b is not old_b and ws.predicted_by(b) == label and ws.item(b).weights == label
    assert "predicted by: runs/by-hand/model" in screen.status
    fresh = wb.predictor.predict(str(ws.item(b).path))  # the adopted weights, run again
    session = ws.session(b)
    np.testing.assert_array_equal(session.segment_map, fresh.panoptic().segment_map)
    sid = max(session.segments, key=lambda seg: seg.area).id
    screen = wb.select_segment(s, sid)
    assert screen.relabel == relabel_choices(session, fresh, sid) != relabel_choices(session, old_b, sid)
    # another session's untouched image follows the new model when it is opened again
    assert "(an earlier model: ⟳ Re-predict to use the current one)" in wb.screen(other).status
    # an export that includes untouched images holds the current model's output, never an earlier one's
    assert "exported 1 image" in wb.export(other, "after-adopt", include_untouched=True).status
    manifest = json.loads((wb.corrections_dir / "after-adopt" / "manifest.json").read_text())
    assert [(im["status"], im["weights"]) for im in manifest["images"]] == [("untouched", label)]
    wb.step(other, 1)
    wb.step(other, -1)
    assert other.workspace.predicted_by(a) == label and not other.workspace.session(a).has_edits
    # the reviewed image keeps its annotation and the earlier prediction
    screen = wb.step(s, 1)
    assert ws.predicted_by(c) == "crafted" and ws.item(c).reviewed and "an earlier model" in screen.status
    # the edited image keeps its edits, its old prediction, and a menu from that prediction
    screen = wb.step(s, -2)
    assert ws.current == a and removed not in ws.session(a) and ws.predicted_by(a) == "crafted"
    assert "predicted by: crafted (an earlier model, kept for your edits" in screen.status
    sid = ws.session(a).segments[0].id
    assert wb.select_segment(s, sid).relabel == relabel_choices(ws.session(a), ws.prediction(a), sid)
    # if that prediction leaves the cache, the new model's takes its place without a model ranking
    ws.max_predictions = 1
    ws.set_prediction(b, ws.prediction(b), weights=label)  # evicts a's prediction
    wb.step(s, 1)
    screen = wb.step(s, -1)
    assert ws.predicted_by(a) == label and removed not in ws.session(a) and ws.session(a).model_queries == {}
    assert "no model ranking" in screen.status
    assert "·" not in wb.select_segment(s, sid).relabel[0][0]
    # Re-predict discards the edits and follows the new model
    screen = wb.repredict(s)
    assert "predicted again" in screen.status and not ws.session(a).has_edits
    assert ws.item(a).weights == label and ws.session(a).model_queries
    assert "predicted by: runs/by-hand/model" in screen.status and "earlier" not in screen.status


def test_finetune_panel_texts():
    from app.loop_controller import class_changes, gain_markdown

    per_class = {"disc": {"before": 10.0, "after": 12.5}, "box": {"before": 30.0, "after": 30.4},
                 "sky": {"before": None, "after": 0.0}, "none": {"before": None, "after": None}}
    assert [c[0] for c in class_changes(per_class)] == ["disc", "sky"]
    good = {"before": {"PQ": 20.0, "mIoU": 50.0}, "after": {"PQ": 25.0, "mIoU": 51.0}, "improved": True,
            "recommendation": "adopt", "best_iteration": 40, "held_out": ["a.png", "b.png"], "per_class_PQ": per_class}
    text = gain_markdown(good)
    assert "| PQ | 20.0 | 25.0 |" in text and "2 held-out image(s)" in text and "disc 10.0 → 12.5" in text
    assert "box" not in text and "✅" in text
    bad = gain_markdown({**good, "after": {"PQ": 19.0}, "improved": False, "recommendation": "keep the current model"})
    assert "⚠️ **not better on the held-out images (held-out PQ 20.0 → 19.0)**" in bad and "Adopt anyway" in bad
    assert "not measured" in gain_markdown({"before": {}, "after": {}, "improved": False})
    # better on the held-out images, but it forgot what it handled before: not recommended, and said why
    forgot = gain_markdown({**good, "recommendation": "keep the current model (it forgot what it knew)",
                            "retained": {"on": "24 original synthetic scenes", "before": {"PQ": 70.0},
                                         "after": {"PQ": 60.0}}})
    assert "worse where the model was good" in forgot and "PQ 70.0 -> 60.0" in forgot and "✅" not in forgot


def _four_edited_export(wb, name: str):
    """Open and edit every image of ``wb`` (four scenes), export them."""
    s = wb.new_session()
    wb.start(s)
    for i in range(len(s.workspace)):
        if i:
            wb.step(s, 1)
        _edit_largest(wb, s)
    assert "exported 4 image" in wb.export(s, name).status
    return s


@pytest.fixture
def ft_wb(predictor, assets, tmp_path):
    """Four scenes and a fast trainer recipe (batch 2, no replay): a run of two iterations takes ~5 s on an
    idle 2-core machine (minutes when it is busy)."""
    import json

    paths = [make_test_scene(tmp_path / "imgs" / f"s{i}.png", seed=seed) for i, seed in enumerate((13, 5, 7, 11))]
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"batch_size": 2, "replay": "none", "min_iterations": 1}))
    return Workbench(predictor, tmp_path / "corrections", images=paths, work_dir=tmp_path / "w",
                     runs_dir=tmp_path / "runs", weights_source=str(assets["weights"]), weights_label="crafted",
                     finetune_max_iter=2, finetune_args=["--recipe", str(recipe), "--device", "cpu"])


def _wait(wb, until, timeout: float = 300.0):
    import time

    deadline = time.monotonic() + timeout
    while True:
        view = wb.finetune_view()
        if until(view):
            return view
        assert time.monotonic() < deadline, view.progress
        time.sleep(0.5)


def test_finetune_follow_finish_and_adopt(ft_wb):
    """A real run of two iterations: n / N while it runs, before / after on held-out images when it ends,
    then Adopt (refused without 'anyway' when it did not improve)."""
    wb = ft_wb
    assert "no fine-tuning run yet" in wb.finetune_view().progress
    s = _four_edited_export(wb, "ft")
    assert "press Export first" in wb.start_finetune(s, "nothing").status
    assert "fine-tuning started" in wb.start_finetune(s, "ft", max_minutes=5).status
    assert "already" in wb.start_finetune(s, "ft").status
    assert "still going" in wb.adopt(s).status
    view = _wait(wb, lambda v: "training" in v.progress or not v.running)
    assert "/ 2" in view.progress, view.progress
    view = _wait(wb, lambda v: not v.running)
    assert "finished after 2 iterations" in view.progress and view.adoptable, view.progress
    assert "held-out PQ by iteration: 0:" in view.progress
    assert "1 held-out image(s)" in view.result and "| PQ |" in view.result
    result = wb.loop.finetune_run.status().result
    assert result["iterations"] == 2 and len(result["held_out"]) == 1
    if result["recommendation"] != "adopt":
        assert "⚠️" in view.result and "Adopt anyway" in wb.adopt(s).status
    old = wb.predictor
    screen = wb.adopt(s, anyway=True)
    assert "adopted" in screen.status and wb.predictor is not old
    assert wb.model_label == str(wb.loop.finetune_run.run_dir / "model")
    assert "model: " + wb.model_label in wb.describe()
    # every image was edited: each keeps its edits and the prediction they were made on
    assert "predicted by: crafted (an earlier model, kept for your edits" in wb.screen(s).status
    assert all(s.workspace.item(k).weights == "crafted" for k in s.workspace.keys)


def test_finetune_cancel_leaves_adoptable_weights(ft_wb):
    from m2f_core.checkpoint import load_model

    wb = ft_wb
    wb.loop.finetune_max_iter = 500
    s = _four_edited_export(wb, "cancel")
    assert wb.cancel_finetune() == "no fine-tuning run is going on"
    wb.start_finetune(s, "cancel")
    _wait(wb, lambda v: wb.loop.finetune_run.status().progress.get("iteration", 0) >= 1 or not v.running)
    assert "cancelled" in wb.cancel_finetune()
    view = wb.finetune_view()
    assert not view.running and view.adoptable and "cancelled at iteration" in view.progress, view.progress
    from app.finetune import recommended_weights

    load_model(recommended_weights(wb.loop.finetune_run.run_dir))
    assert "adopted" in wb.adopt(s, anyway=True).status


def test_evaluate_on_the_dataset_side_by_side(predictor, assets, tmp_path):
    """With --dataset: the current model and the run's model on dataset images the run never trained on."""
    import json
    import subprocess

    from app.finetune import FineTuneRun

    paths = [make_test_scene(tmp_path / "imgs" / f"s{i}.png", seed=seed) for i, seed in enumerate((13, 5, 7))]
    maker = Workbench(predictor, tmp_path / "gt", images=paths, work_dir=tmp_path / "w0")
    s = maker.new_session()
    maker.start(s)
    for _ in paths[1:]:
        maker.step(s, 1)
    assert "exported 3 image" in maker.export(s, "gt", include_untouched=True).status
    dataset = open_dataset(f"corrections:{tmp_path / 'gt' / 'gt'}")
    wb = Workbench(predictor, tmp_path / "corrections", dataset=dataset, work_dir=tmp_path / "w",
                   weights_label="crafted")
    assert "fine-tune first" in wb.evaluate_on_dataset()
    run = tmp_path / "runs" / "by-hand"
    _other_weights(assets, run / "model")
    (run / "result.json").write_text(json.dumps({"held_out": ["s1.png"], "init": str(assets["weights"])}))
    (run / "exit_code").write_text("0\n")
    ended = subprocess.Popen(["true"])
    ended.wait()
    wb.loop.finetune_run = FineTuneRun(run, pid=ended.pid)  # a finished run, as the page finds it after a restart
    wb.loop.finetune_export = tmp_path / "export"
    wb.loop.finetune_export.mkdir()
    (wb.loop.finetune_export / "panoptic.json").write_text(json.dumps({"images": [{"file_name": "s0.png"},
                                                                             {"file_name": "s1.png"}]}))
    text = wb.evaluate_on_dataset(limit=5)
    # s0 was trained on; s1 was held out and s2 never exported: both are unseen
    assert "on 2 dataset image(s) the run never trained on | current (crafted) | fine-tuned (runs/by-hand/model) |" \
        in text, text
    assert "| PQ | 100.0 |" in text  # the crafted weights against their own output
