"""The Gradio app in a real headless Chromium, driven as a user would (Playwright): launch, upload, the
task switch, the side panel's actions, export, fine-tune and adopt. The canvas's tools and shortcuts
are in ``test_app_canvas.py``; the server and helpers in ``browser_helpers.py``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from app_helpers import SCENE_SIZE
from browser_helpers import (
    BROWSER_MARKS,
    REPO,
    canvas_data,
    choose,
    click_pixel,
    inner_point,
    open_app,
    segment_count,
    serve,
    table_rows,
    upload,
    wait_canvas,
    wait_status,
)

pytestmark = BROWSER_MARKS


# ------------------------------------------------------------------------------------------ launch.py


def test_launch_help():
    out = subprocess.run([sys.executable, str(REPO / "launch.py"), "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for flag in ("--weights", "--device", "--host", "--port", "--share", "--images", "--dataset",
                 "--corrections-dir", "--no-browser"):
        assert flag in out.stdout
    assert "127.0.0.1" in out.stdout


def test_launch_bad_weights_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "launch.py"), "--weights", str(tmp_path / "missing"),
                          "--no-browser"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("launch.py: error:")


# ------------------------------------------------------------------------------------------ the page


def stage_png(page) -> bytes:
    return page.locator("#canvas .m2f-stage").screenshot()


def test_upload_and_switch_tasks_runs_model_once(page, server, assets):
    open_app(page, server)
    st = upload(page, assets["scene"])
    assert "scene.png 320×256" in st and "Panoptic" in st
    d = wait_canvas(page, "d.image === 'scene.png' && d.task === 'panoptic'")
    pictures = [stage_png(page)]
    for key, task in (("2", "instance"), ("3", "semantic"), ("1", "panoptic")):
        before = int(d["rendered"])
        page.keyboard.press(key)  # drawn in the page at once, then the server follows
        d = wait_canvas(page, "d.task === arg.task && +d.rendered > arg.before", {"task": task, "before": before})
        st = wait_status(page, task.capitalize())
        assert "model runs: 1" in st, st  # nothing predicted again
        assert page.locator(f"#task input[value={task.capitalize()}]").is_checked()
        pictures.append(stage_png(page))
    digests = [hashlib.sha1(p).hexdigest() for p in pictures]
    assert len(set(digests[:3])) == 3  # panoptic, instance, semantic all look different
    assert digests[3] == digests[0]  # back to panoptic: the same picture

    page.keyboard.press("u")  # the uncertainty view: its map is sent once, with a colour bar
    wait_canvas(page, "d.view === 'uncertainty'")
    st = wait_status(page, "(uncertainty)")
    assert "model runs: 1" in st
    assert page.locator("#canvas .m2f-colorbar").is_visible()
    assert hashlib.sha1(stage_png(page)).hexdigest() not in digests


def test_bad_image_gets_a_clear_message(page, server, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    open_app(page, server)
    page.set_input_files("#image-input input[type=file]", str(bad))
    st = wait_status(page, "broken.png")
    assert "not an image" in st
    assert "model runs: 0" in st


def test_select_relabel_undo_redo_export(page, server, assets, expected):
    from pycocotools.coco import COCO

    from m2f_core.data.corrections import CorrectionsDataset

    pan = expected.panoptic()
    target = max((s for s in pan.segments if s.isthing), key=lambda s: s.area)
    names = expected.config.class_names
    old_name = names[target.category_id]
    new_class = next(c for c in range(len(names)) if expected.config.is_thing[c] and c != target.category_id)
    new_name = names[new_class]

    open_app(page, server)
    upload(page, assets["scene"])
    x, y = inner_point(pan.segment_map == target.id)
    click_pixel(page, x, y)
    wait_status(page, f"selected #{target.id} {old_name}")
    rows = table_rows(page)
    marked = [r for r in rows if r and r[0] == "●"]
    assert len(marked) == 1 and marked[0][1] == str(target.id) and marked[0][2] == old_name

    choose(page, "relabel", new_name)
    wait_status(page, f"relabelled #{target.id} → {new_name}")
    row = next(r for r in table_rows(page) if r[1] == str(target.id))
    assert row[2] == new_name and row[6] == "edited"

    page.click("#undo")
    wait_status(page, "undid relabel")
    row = next(r for r in table_rows(page) if r[1] == str(target.id))
    assert row[2] == old_name and row[6] == "model"
    page.click("#redo")
    wait_status(page, "redid relabel")
    assert next(r for r in table_rows(page) if r[1] == str(target.id))[2] == new_name

    first = table_rows(page)[0]  # a click on a table row selects that segment
    page.click('#segments [data-testid="cell-0-2"]')
    wait_status(page, f"selected #{first[1]} {first[2]}")
    assert [r[1] for r in table_rows(page) if r[0] == "●"] == [first[1]]

    page.fill("#export-name textarea, #export-name input", "ui-test")
    page.click("#export")
    wait_status(page, "exported 1 image")
    page.wait_for_selector("#export-file a")
    assert "ui-test.zip" in (page.get_attribute("#export-file a", "href") or "")

    folder = server["corrections"] / "ui-test"
    assert (server["corrections"] / "ui-test.zip").is_file()
    sample = CorrectionsDataset(folder)[0]
    got = {s.id: s for s in sample.panoptic.segments}
    assert got[target.id].category_id == new_class
    np.testing.assert_array_equal(sample.panoptic.segment_map, pan.segment_map)
    coco = COCO(str(folder / "instances.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    cat_ids = {c["name"]: c["id"] for c in json.loads((folder / "instances.json").read_text())["categories"]}
    relabelled = [a for a in anns if int(a["area"]) == target.area]
    assert relabelled and relabelled[0]["category_id"] == cat_ids[new_name]
    np.testing.assert_array_equal(coco.annToMask(relabelled[0]).astype(bool), pan.segment_map == target.id)

    # the same correction for an annotation tool: Label Studio pre-labels beside the export
    page.get_by_text("Export options").click()
    page.locator("#export-tools").get_by_label("Label Studio").check()
    page.fill("#export-name textarea, #export-name input", "ui-tools")
    page.click("#export")
    wait_status(page, "also as label_studio")
    tasks = json.loads((server["corrections"] / "ui-tools" / "label_studio.json").read_text())
    assert len(tasks) == 1 and len(tasks[0]["annotations"][0]["result"]) >= len(sample.panoptic.segments)


def test_recover_paint_merge_delete(page, server, assets, expected):
    pan = expected.panoptic()
    void = pan.segment_map == 0
    pick = None
    for yy in range(8, SCENE_SIZE[0], 16):  # a pixel where a dropped query would add void pixels
        for xx in range(8, SCENE_SIZE[1], 16):
            cands = expected.candidates_at(xx, yy, k=6)
            good = [i for i, c in enumerate(cands) if (c.mask & void).any()]
            if good:
                pick = (xx, yy, good[0])
                break
        if pick:
            break
    assert pick is not None, "the test weights give nothing to recover"
    things = sorted((s for s in pan.segments if s.isthing), key=lambda s: -s.area)[:2]

    open_app(page, server)
    st = upload(page, assets["scene"])
    n0 = segment_count(st)

    page.keyboard.press("r")
    click_pixel(page, pick[0], pick[1])
    wait_status(page, "candidates at")
    wait_canvas(page, "+d.candidates > 0")
    page.locator("#recover .m2f-candidate").nth(pick[2]).click()
    st = wait_status(page, "recovered #")
    assert segment_count(st) == n0 + 1
    click_pixel(page, pick[0], pick[1])  # the same pixel again: the recovered query is not offered twice
    st = wait_status(page, f"({pick[0]}, {pick[1]})")
    offered = int(canvas_data(page)["candidates"])
    assert offered == len(expected.candidates_at(pick[0], pick[1], k=6)) - 1, st

    page.keyboard.press("Escape")
    page.keyboard.press("s")
    for s in things:  # shift-click adds to the selection
        click_pixel(page, *inner_point(pan.segment_map == s.id), shift=True)
    wait_canvas(page, "d.selected === arg", f"{things[0].id},{things[1].id}")
    st = wait_status(page, f", #{things[1].id} ")  # the status follows the canvas (both selected)
    assert f"selected #{things[0].id} " in st
    page.keyboard.press("m")
    st = wait_status(page, f"into #{things[0].id}")
    assert segment_count(st) == n0

    page.keyboard.press("Delete")
    st = wait_status(page, f"deleted #{things[0].id}")
    assert segment_count(st) == n0 - 1
    for _ in range(3):  # pressed before the first answer comes back: none of the three may be dropped
        page.keyboard.press("Control+z")
    st = wait_status(page, "undid new segment")
    assert segment_count(st) == n0
    page.keyboard.press("Control+Shift+z")
    st = wait_status(page, "redid new segment")
    page.keyboard.press("Control+y")
    st = wait_status(page, "redid merge")
    assert segment_count(st) == n0


# ------------------------------------------------------------------------------------------ fine-tune, adopt


@pytest.fixture
def loop_server(assets, tmp_path_factory):
    """An app of its own (adopting swaps its model), with a fast trainer recipe (batch 1, no replay)."""
    recipe = tmp_path_factory.mktemp("recipe") / "recipe.json"
    recipe.write_text(json.dumps({"batch_size": 1, "replay": "none", "min_iterations": 1}))
    runs = tmp_path_factory.mktemp("runs")
    yield from serve(assets, tmp_path_factory, "--runs-dir", str(runs), "--finetune-recipe", str(recipe))


@pytest.mark.slow
def test_adopt_repredicts_untouched_and_keeps_edited(page, loop_server, assets, expected):
    """Export an edit, fine-tune one iteration, adopt: the untouched image is predicted again by the new
    weights ("predicted by" changes), the edited one keeps its edits until Re-predict."""
    pan = expected.panoptic()
    target = max(pan.segments, key=lambda s: s.area)
    open_app(page, loop_server)
    st = upload(page, assets["scene"])
    n0 = segment_count(st)
    assert "predicted by: " in st and "app_assets/weights" in st
    click_pixel(page, *inner_point(pan.segment_map == target.id))
    wait_status(page, f"selected #{target.id}")
    page.click("#delete")
    wait_status(page, f"deleted #{target.id}")
    page.fill("#export-name textarea, #export-name input", "adopt-ui")
    page.click("#export")
    wait_status(page, "exported 1 image")

    page.get_by_text("Fine-tune on the export, adopt the new model").click()
    page.fill("#finetune-max-iter input", "1")
    page.click("#finetune")
    wait_status(page, "fine-tuning started")
    page.wait_for_function("() => (document.querySelector('#finetune-log textarea') || {}).value"
                           "?.includes('finished')", timeout=540_000)
    assert "not measured" in page.inner_text("#finetune-result")  # one image: nothing held out

    page.locator("#examples .thumbnail-item").first.click()  # a second image, untouched
    st = wait_status(page, "opened example scene_00.png")
    assert "model runs: 2" in st and "app_assets/weights" in st
    page.click("#adopt")
    wait_status(page, "Adopt anyway")  # not validated: refused without the tick
    page.get_by_label("Adopt anyway (not better on held-out images)").check()
    page.click("#adopt")
    st = wait_status(page, "adopted")
    assert "predicted by: " in st and "adopt-ui/model" in st.split("predicted by: ")[1], st
    assert "model runs: 3" in st  # the untouched current image, predicted again
    assert "adopt-ui/model" in page.inner_text("#header")

    page.click("#prev")
    st = wait_status(page, "an earlier model")
    assert segment_count(st) == n0 - 1 and "app_assets/weights" in st  # the edited image: edits kept
    page.click("#repredict")
    st = wait_status(page, "predicted again")
    assert "adopt-ui/model" in st.split("predicted by: ")[1] and "model runs: 4" in st
