"""The Gradio app in a real headless Chromium, driven as a user would (Playwright).

One app process (``launch.py`` on a free port, small crafted weights from ``app_helpers``) serves
every test; each test gets a fresh browser context, i.e. a fresh Gradio session. The expected
segmentation comes from running the same weights here, so clicks target known segments. Waits are
on ``load`` plus selectors / status text, never ``networkidle`` (Gradio keeps a stream open).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from app_helpers import SCENE_SIZE, app_assets
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system Chromium at /usr/bin/chromium"),
    # pytest-playwright 0.10's session fixtures trip a pytest 9 deprecation notice; not ours to fix
    pytest.mark.filterwarnings("ignore::pytest.PytestRemovedIn10Warning"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    return app_assets(tmp_path_factory)


@pytest.fixture(scope="session")
def expected(assets):
    """The prediction the app will show for the test scene (same weights, same machine)."""
    from m2f_core.predictor import Predictor

    pred = Predictor(str(assets["weights"]), device="cpu").predict(str(assets["scene"]))
    return pred


@pytest.fixture(scope="session")
def server(assets, tmp_path_factory):
    """``launch.py`` in a subprocess: yields (url, corrections dir, log file)."""
    yield from _serve(assets, tmp_path_factory)


def _serve(assets, tmp_path_factory, *extra: str):
    """Run ``launch.py`` with the crafted weights until the generator is closed (a fixture's body)."""
    port = _free_port()
    corrections = tmp_path_factory.mktemp("corrections")
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "--weights", str(assets["weights"]),
                                 "--device", "cpu", "--port", str(port), "--no-browser",
                                 "--corrections-dir", str(corrections), "--log-file", str(log.parent / "app.log"),
                                 *extra],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app did not answer within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "corrections": corrections, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------ helpers


def status(page) -> str:
    return page.inner_text("#status")


def wait_status(page, text: str, timeout: float = 60_000) -> str:
    """Wait until the status line contains ``text`` (and no request is pending) and return it."""
    page.wait_for_function(
        """t => { const e = document.querySelector('#status');
                  return e && e.innerText.includes(t) && !e.innerText.includes('processing'); }""",
        arg=text, timeout=timeout)
    return status(page)


def open_app(page, server) -> None:
    page.set_default_timeout(60_000)
    page.goto(server["url"], wait_until="load")
    page.wait_for_selector("#image-input input[type=file]", state="attached")
    wait_status(page, "Upload an image")


def upload(page, path: Path, runs: int = 1) -> str:
    page.set_input_files("#image-input input[type=file]", str(path))
    return wait_status(page, f"model runs: {runs}")


def canvas_src(page) -> str:
    return page.get_attribute("#canvas img", "src")


def canvas_bytes(page) -> bytes:
    return page.request.get(canvas_src(page)).body()


def wait_editor_shows_view(page, timeout_s: float = 60) -> None:
    """Wait until the brush editor's canvas shows the current view: the editor draws its background
    some time after its value arrives, and a stroke drawn before that is lost. The canvas is WebGL,
    so it is read from screenshots: shown means that it holds as many distinct colours as a textured
    scene (the empty editor: white and its tool icons, about 500 colours; with the view, thousands)
    and that the view's four most common colours cover at least a quarter of as much of the canvas
    as they cover of the view (the editor scales the view and letterboxes it in white)."""
    from PIL import Image

    view = np.asarray(Image.open(io.BytesIO(canvas_bytes(page))).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(view, axis=0, return_counts=True)
    top = np.argsort(counts)[-4:]
    dominant, share = colours[top].astype(int), counts[top].sum() / len(view)
    enough = 1500  # measured: about 500 colours empty, 7800 with the example scene
    canvas = page.locator("#brush-editor canvas").first
    deadline = time.monotonic() + timeout_s
    while True:
        shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).reshape(-1, 3).astype(int)
        distinct = len(np.unique(shot, axis=0))
        covered = (np.abs(shot[:, None] - dominant[None]).max(-1) <= 3).any(1).mean()
        if distinct >= enough and covered >= 0.25 * share:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the brush editor did not show the view within {timeout_s} s ({distinct} colours, "
                                 f"{enough} expected; the view's main colours cover {covered:.0%} of it, "
                                 f"{share:.0%} of the view)")
        page.wait_for_timeout(100)  # the poll interval, not a guess at how long drawing takes


def click_pixel(page, x: float, y: float) -> None:
    """Click image pixel (x, y) of the test scene on the canvas (the same geometry Gradio's click uses)."""
    # the new picture may still be loading on a busy machine: its natural size is 0 until it is
    page.wait_for_function("() => { const i = document.querySelector('#canvas img');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    img = page.locator("#canvas img")
    box = img.bounding_box()
    nat_w, nat_h = page.evaluate("() => { const i = document.querySelector('#canvas img');"
                                 " return [i.naturalWidth, i.naturalHeight]; }")
    scale = nat_w / SCENE_SIZE[1]  # the app may show a small image scaled up
    r = min(box["width"] / nat_w, box["height"] / nat_h, 1)
    ox, oy = (box["width"] - nat_w * r) / 2, (box["height"] - nat_h * r) / 2
    page.mouse.click(box["x"] + ox + (x + 0.5) * scale * r, box["y"] + oy + (y + 0.5) * scale * r)


def inner_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``mask`` farthest from its border."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return int(x), int(y)


def table_rows(page) -> list[list[str]]:
    """The segment table's body rows as cell texts."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('#segments .virtual-body [role=row]'))
        .map(r => Array.from(r.querySelectorAll('[role=gridcell]')).map(c => c.innerText.trim()))""")


def choose(page, elem_id: str, label_prefix: str) -> None:
    """Pick the option of a Gradio dropdown whose label starts with ``label_prefix``."""
    page.click(f"#{elem_id} input")
    option = page.locator("[role=option]", has_text=label_prefix).first
    option.click()


def segment_count(st: str) -> int:
    return int(st.split(" segments")[0].rsplit("· ", 1)[1])


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


def test_upload_and_switch_tasks_runs_model_once(page, server, assets):
    open_app(page, server)
    st = upload(page, assets["scene"])
    assert "scene.png 320×256" in st and "Panoptic" in st
    pictures = [canvas_bytes(page)]
    for task in ("Instance", "Semantic", "Panoptic"):
        before = canvas_src(page)
        page.get_by_label(task, exact=True).check()
        page.wait_for_function("s => document.querySelector('#canvas img').src !== s", arg=before)
        st = wait_status(page, task)
        assert "model runs: 1" in st, st  # re-rendered from the cached prediction
        assert "render" in st and "model" in st
        pictures.append(canvas_bytes(page))
    digests = [hashlib.sha1(p).hexdigest() for p in pictures]
    assert len(set(digests[:3])) == 3  # panoptic, instance, semantic all look different
    assert digests[3] == digests[0]  # back to panoptic: the same picture

    before = canvas_src(page)
    page.get_by_label("Uncertainty view").check()
    page.wait_for_function("s => document.querySelector('#canvas img').src !== s", arg=before)
    st = wait_status(page, "(uncertainty)")
    assert "model runs: 1" in st
    assert hashlib.sha1(canvas_bytes(page)).hexdigest() not in digests


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

    page.get_by_label("Recover", exact=True).check()
    click_pixel(page, pick[0], pick[1])
    wait_status(page, "candidates at")
    page.locator("#recover button.thumbnail-item, #recover .thumbnail-item").nth(pick[2]).click()
    st = wait_status(page, "recovered #")
    assert segment_count(st) == n0 + 1

    page.get_by_label("Select", exact=True).check()
    click_pixel(page, *inner_point(void))  # a click on void clears the selection
    wait_status(page, "void: nothing selected")
    page.get_by_label("Add clicks to the selection (for merge)").check()
    for s in things:
        click_pixel(page, *inner_point(pan.segment_map == s.id))
        wait_status(page, f"#{s.id} ")
    st = wait_status(page, f"selected #{things[0].id}")
    assert f"#{things[1].id}" in st
    page.click("#merge")
    st = wait_status(page, f"into #{things[0].id}")
    assert segment_count(st) == n0

    page.click("#delete")
    st = wait_status(page, f"deleted #{things[0].id}")
    assert segment_count(st) == n0 - 1
    for label in ("undid delete", "undid merge", "undid new segment"):
        page.click("#undo")
        st = wait_status(page, label)
    assert segment_count(st) == n0

    page.get_by_label("Add clicks to the selection (for merge)").uncheck()
    click_pixel(page, *inner_point(pan.segment_map == things[1].id))
    wait_status(page, f"selected #{things[1].id} ")
    page.get_by_label("Paint", exact=True).check()
    click_pixel(page, *inner_point(void))  # paints void pixels only (overwrite is off)
    st = wait_status(page, f"into #{things[1].id}")
    painted = int(st.split("painted ")[1].split(" px")[0])
    assert painted > 0
    row = next(r for r in table_rows(page) if r[1] == str(things[1].id))
    assert int(row[5]) == things[1].area + painted and row[6] == "edited"


def test_example_and_free_hand_brush(page, server):
    open_app(page, server)
    page.locator("#examples .thumbnail-item").first.click()
    st = wait_status(page, "opened example scene_00.png")
    assert "model runs: 1" in st
    n0 = segment_count(st)

    page.get_by_label("Paint over other segments").check()
    page.get_by_text("Free-hand brush").click()
    canvas = page.locator("#brush-editor canvas").first
    canvas.wait_for()
    wait_editor_shows_view(page)
    page.locator("#brush-editor button[aria-label='Brush']").click()
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 30, cy)
    page.mouse.down()
    for i in range(15):
        page.mouse.move(cx - 30 + 4 * i, cy + i)
    page.mouse.up()
    page.click("#brush-new")
    st = wait_status(page, "new segment #")
    assert segment_count(st) == n0 + 1
    new_id = int(st.split("new segment #")[1].split()[0])
    row = next(r for r in table_rows(page) if r[1] == str(new_id))
    assert row[2] == "disc" and int(row[5]) > 20 and row[6] == "edited"  # "disc": the default new class
    page.click("#undo")
    st = wait_status(page, "undid new segment")
    assert segment_count(st) == n0


# ------------------------------------------------------------------------------------------ fine-tune, adopt


@pytest.fixture
def loop_server(assets, tmp_path_factory):
    """An app of its own (adopting swaps its model), with a fast trainer recipe (batch 1, no replay)."""
    recipe = tmp_path_factory.mktemp("recipe") / "recipe.json"
    recipe.write_text(json.dumps({"batch_size": 1, "replay": "none", "min_iterations": 1}))
    runs = tmp_path_factory.mktemp("runs")
    yield from _serve(assets, tmp_path_factory, "--runs-dir", str(runs), "--finetune-recipe", str(recipe))


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
