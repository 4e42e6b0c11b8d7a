"""The app's actions without a browser: ``app.workbench`` (what each event does) and ``app.render``.

The same crafted weights and scene as the browser tests (``app_helpers``); the model runs in-process.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from app_helpers import SCENE_SIZE, app_assets, make_test_scene

from app.render import (
    SELECTED_MARK,
    TABLE_HEADERS,
    display_scale,
    relabel_choices,
    render_canvas,
    segment_rows,
)
from app.workbench import Workbench, unique_name
from m2f_core.data.corrections import CorrectionsDataset
from m2f_core.data.records import open_dataset


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return app_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(assets):
    from m2f_core.predictor import Predictor

    return Predictor(str(assets["weights"]), device="cpu")


@pytest.fixture
def wb(predictor, tmp_path):
    return Workbench(predictor, tmp_path / "corrections", work_dir=tmp_path / "work", min_side=0)


def opened(wb, assets):
    s = wb.new_session()
    screen = wb.open_upload(s, assets["scene"])
    assert screen.canvas is not None, screen.status
    return s, screen


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


def test_display_scale():
    assert display_scale((256, 320), 1600, 640) == 2.0
    assert display_scale((4000, 3000), 1600, 640) == 0.4
    assert display_scale((800, 600), 1600, 640) == 1.0
    assert display_scale((256, 320)) == 1.0


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
    a = render_canvas(pred.image, session, "panoptic", pred.config)
    b = render_canvas(pred.image, session, "panoptic", pred.config, selected=[sid])
    assert a.shape == pred.image.shape and not np.array_equal(a, b)
    big = render_canvas(pred.image, session, "semantic", pred.config, min_side=640)
    assert big.shape == (512, 640, 3)


# ------------------------------------------------------------------------------------------ actions


def test_task_switch_reuses_the_prediction(wb, assets):
    s, screen = opened(wb, assets)
    assert s.model_runs == 1 and wb.model_runs == 1
    pictures = [screen.canvas]
    for task in ("instance", "semantic", "panoptic"):
        screen = wb.set_task(s, task)
        pictures.append(screen.canvas)
        assert task.capitalize() in screen.status and "model runs: 1" in screen.status
    assert s.model_runs == 1
    assert not np.array_equal(pictures[0], pictures[1]) and not np.array_equal(pictures[1], pictures[2])
    assert np.array_equal(pictures[0], pictures[3])
    heat = wb.set_view(s, uncertainty=True)
    assert "uncertainty" in heat.status and not np.array_equal(heat.canvas, pictures[0])
    assert "⚠️" in wb.set_task(s, "depth").status


def test_bad_upload_is_a_status_message(wb, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    s = wb.new_session()
    screen = wb.open_upload(s, bad)
    assert screen.canvas is None and s.model_runs == 0
    assert "notes.png: not an image" in screen.status and str(tmp_path) not in screen.status


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
    old = session.segment(sid).category_id
    assert screen.relabel_value == old and screen.relabel[0][1] == old
    new = next(c for c in range(len(session.class_names)) if session.is_thing[c] and c != old)
    screen = wb.relabel(s, new)
    assert session.segment(sid).category_id == new and "relabelled" in screen.status
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
    assert len(screen.candidates) == len(s.candidates)
    assert screen.candidates[0][0].ndim == 3 and isinstance(screen.candidates[0][1], str)
    cand = s.candidates[good[0]]
    n = len(session.segments)
    screen = wb.recover(s, good[0])
    assert "recovered" in screen.status and len(session.segments) == n + 1
    new = session.segment(s.selected[0])
    assert new.category_id == cand.category_id and new.score == pytest.approx(cand.score)
    assert s.candidates == [] and pred is s.workspace.prediction()
    assert "no such candidate" in wb.recover(s, 0).status


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


def test_browse_images_and_dataset(predictor, assets, tmp_path):
    second = make_test_scene(tmp_path / "imgs" / "b.png", seed=5, size=(200, 240))
    first = make_test_scene(tmp_path / "imgs" / "a.png")
    wb = Workbench(predictor, tmp_path / "corrections", images=[first, second], work_dir=tmp_path / "w",
                   min_side=0)  # display pixels = image pixels, as thing_point gives
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
    # the export as a dataset: ground truth shown beside the prediction
    ds = open_dataset(f"corrections:{wb.corrections_dir / 'browse'}")
    wb2 = Workbench(predictor, tmp_path / "c2", dataset=ds, work_dir=tmp_path / "w2", min_side=0)
    s2 = wb2.new_session()
    screen = wb2.start(s2)
    assert screen.ground_truth is not None and screen.ground_truth.shape == screen.canvas.shape


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


# ------------------------------------------------------------------------------------------ brush layer, fine-tune


def test_stroke_mask_from_editor_value():
    from app.ui import editor_value, stroke_mask

    canvas = np.zeros((6, 8, 3), np.uint8)
    assert editor_value(None) is None and stroke_mask(None) is None
    value = editor_value(canvas)
    assert stroke_mask(value) is None  # nothing painted
    layer = np.zeros((6, 8, 4), np.uint8)
    layer[2:4, 3:5, 3] = 255
    mask = stroke_mask({**value, "layers": [layer]})
    assert mask.shape == (6, 8) and mask.sum() == 4 and mask[2, 3]
    comp = canvas.copy()
    comp[0, 0] = (255, 0, 255)
    assert stroke_mask({"background": canvas, "layers": [], "composite": comp}).sum() == 1


def test_finetune_job_with_a_stand_in_trainer(tmp_path):
    import sys

    from app.finetune import FineTuneJob, finetune_command, latest_checkpoint, read_metrics

    cmd = finetune_command("builtin", tmp_path / "exp", tmp_path / "runs" / "a", max_iter=8, device="cpu")
    assert cmd[1:3] == ["-m", "training.train"] and "corrections:" + str(tmp_path / "exp") in cmd
    assert cmd[cmd.index("--max-iter") + 1] == "8" and cmd[cmd.index("--device") + 1] == "cpu"
    run = tmp_path / "runs" / "a"
    script = (  # writes two metric lines, a half line and a checkpoint, like the trainer
        "import json, pathlib, sys; r = pathlib.Path(sys.argv[1]);"
        "(r / 'checkpoints/iter_0000002').mkdir(parents=True);"
        "(r / 'checkpoints/iter_0000002/model.safetensors').write_bytes(b'x');"
        "(r / 'checkpoints/last').write_text('iter_0000002');"
        "f = open(r / 'metrics.jsonl', 'w');"
        "[f.write(json.dumps({'iter': i, 'loss': 1.0 / i}) + '\\n') for i in (1, 2)];"
        "f.write('{\"iter\": 3, \"lo'); print('done')")
    job = FineTuneJob.start([sys.executable, "-c", script, str(run)], run)
    job.process.wait(timeout=60)
    st = job.status()
    assert not st.running and st.returncode == 0 and [m["iter"] for m in st.metrics] == [1, 2]
    assert "finished" in st.summary() and "iter 2: loss 0.5" in st.summary()
    assert latest_checkpoint(run) == run / "checkpoints" / "iter_0000002"
    assert read_metrics(tmp_path / "nothing") == [] and latest_checkpoint(tmp_path / "nothing") is None
    with pytest.raises(ValueError, match="already exists"):
        FineTuneJob.start([sys.executable, "-c", "pass"], run)
    failing = FineTuneJob.start([sys.executable, "-c", "import sys; print('bad data'); sys.exit(3)"], tmp_path / "b")
    failing.process.wait(timeout=60)
    assert "failed (exit 3)" in failing.status().summary() and "bad data" in failing.status().summary()
    slow = FineTuneJob.start([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "c")
    assert slow.running
    slow.stop()
    assert not slow.running


@pytest.mark.slow
def test_finetune_and_reload_for_real(predictor, assets, tmp_path):
    """Two trainer iterations on an export, then the new weights swapped in (before / after shown)."""
    import time

    wb = Workbench(predictor, tmp_path / "corrections", work_dir=tmp_path / "w", runs_dir=tmp_path / "runs",
                   weights_source=str(assets["weights"]), finetune_iters=2, finetune_batch=1)
    s, _ = opened(wb, assets)
    assert "press Export first" in wb.start_finetune(s, "ft").status
    wb.export(s, "ft")
    assert "fine-tuning started" in wb.start_finetune(s, "ft").status
    assert "already" in wb.start_finetune(s, "ft").status
    deadline = time.monotonic() + 600
    while wb.finetune_status()[1]:
        assert time.monotonic() < deadline
        time.sleep(1)
    text, _ = wb.finetune_status()
    assert "finished" in text and "iter 2" in text, text
    old = wb.predictor
    screen = wb.reload(s)
    assert "reloaded weights" in screen.status and wb.predictor is not old
    assert [cap.split()[-1] for _, cap in screen.compare] == ["before", "after"]
