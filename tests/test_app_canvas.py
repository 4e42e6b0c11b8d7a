"""The canvas's tools and shortcuts in a real headless Chromium (Playwright), driven as a user would:
brush and eraser drags, zoom and pan, the polygon, the magic wand, the keyboard, hover, opacity and
the ground-truth view (an app of its own, started with a dataset).

Each test checks real effects: the status line, the segment table, the canvas's ``data-*`` attributes
(see app/assets/canvas.js), and ``expected`` (the same model's prediction of the test scene).
Waits are on conditions, never sleeps. Helpers and the app server: ``browser_helpers.py``.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from browser_helpers import (
    BROWSER_MARKS,
    TABLE_AREAS_JS,
    canvas_data,
    click_pixel,
    client_point,
    drag_pixels,
    hover_pixel,
    inner_point,
    open_app,
    rendered,
    segment_count,
    serve,
    set_range,
    stage_png,
    status,
    table_areas,
    table_rows,
    upload,
    wait_canvas,
    wait_status,
    wheel_at,
)
from PIL import Image
from scipy import ndimage

from app.regions import stroke_mask
from app.wand import wand_click

pytestmark = BROWSER_MARKS



@pytest.fixture
def pan(expected):
    return expected.panoptic()


@pytest.fixture
def largest_thing(pan):
    return max((s for s in pan.segments if s.isthing), key=lambda s: s.area)


def opened(page, server, assets) -> str:
    open_app(page, server)
    st = upload(page, assets["scene"])
    wait_canvas(page, "d.image === 'scene.png'")
    return st


def select(page, pan, segment) -> None:
    """Click the segment's inner point (Select tool) and wait for the server to confirm."""
    click_pixel(page, *inner_point(pan.segment_map == segment.id))
    wait_canvas(page, "d.selected === arg", str(segment.id))
    wait_status(page, f"selected #{segment.id}")


def press_tool(page, key: str, tool: str) -> None:
    page.keyboard.press(key)
    wait_canvas(page, "d.tool === arg", tool)


def segments_in(st: str) -> int:
    """The segment count of the status line (its last line: the message above may say "segments" too)."""
    return segment_count(st.rsplit("\n", 1)[-1])


def number(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in {text!r}"
    return int(m.group(1))


def painted(st: str) -> tuple[int, int]:
    m = re.search(r"painted (\d+) px into #(\d+)", st)
    assert m, st
    return int(m.group(1)), int(m.group(2))


def assert_void(pan, x0, y0, x1, y1) -> None:
    assert (pan.segment_map[y0:y1 + 1, x0:x1 + 1] == 0).all(), "the test scene changed: pick another void area"


def stroke_pixels(pan, points, radius) -> int:
    """How many void pixels of ``expected`` a stroke through ``points`` covers (what a paint adds)."""
    return int((stroke_mask(points, radius, pan.segment_map.shape) & (pan.segment_map == 0)).sum())


def all_areas(page) -> dict[int, int]:
    """Every segment's area from the table (all its rows are in view: checked against ``data-segments``)."""
    areas = table_areas(page)
    assert len(areas) == int(canvas_data(page)["segments"]), "the table shows fewer rows than segments"
    return areas


def wait_row(page, sid: int) -> dict[int, int]:
    """Wait until the table has a row for segment ``sid``; the table's areas."""
    page.wait_for_function("sid => Array.from(document.querySelectorAll('#segments .virtual-body [role=row]'))"
                           ".some(r => r.querySelectorAll('[role=gridcell]')[1]?.innerText.trim() === String(sid))",
                           arg=sid)
    return table_areas(page)


def wait_table_change(page, before: dict[int, int]) -> dict[int, int]:
    """Wait until the table's areas differ from ``before``; all of them."""
    page.wait_for_function(f"""before => {{ const now = ({TABLE_AREAS_JS})();
        return Object.keys(now).length !== Object.keys(before).length
            || Object.entries(now).some(([k, v]) => before[k] !== v); }}""",
                           arg={str(k): str(v) for k, v in before.items()})
    return all_areas(page)


def wait_areas(page, sid: int, area: int) -> dict[int, int]:
    """Wait until the table shows segment ``sid`` with ``area`` (the table follows the status line)."""
    page.wait_for_function(
        """([sid, area]) => Array.from(document.querySelectorAll('#segments .virtual-body [role=row]')).some(r => {
               const c = Array.from(r.querySelectorAll('[role=gridcell]')).map(x => x.innerText.trim());
               return c[1] === String(sid) && c[5] === String(area); })""", arg=[sid, area])
    return table_areas(page)


# ------------------------------------------------------------------------------------------ brush and eraser


def test_brush_drag_paints_into_the_selection_and_undoes(page, server, assets, pan, largest_thing):
    target = largest_thing
    y, xs = 38, list(range(180, 291, 10))
    assert_void(pan, 170, y - 12, 300, y + 12)
    opened(page, server, assets)
    select(page, pan, target)
    before = all_areas(page)
    press_tool(page, "b", "brush")
    drag_pixels(page, [(x, y) for x in xs])
    n, sid = painted(wait_status(page, "painted"))
    assert sid == target.id
    dab = stroke_pixels(pan, [(xs[0], y)], 10)  # brush 20: radius 10
    assert n > 5 * dab, (n, dab)  # a drag, not one dab
    assert n == stroke_pixels(pan, [(xs[0], y), (xs[-1], y)], 10)
    after = wait_areas(page, target.id, before[target.id] + n)
    assert {k: v for k, v in after.items() if k != target.id} == {k: v for k, v in before.items() if k != target.id}

    page.keyboard.press("Control+z")
    wait_status(page, "undid paint")
    assert wait_areas(page, target.id, before[target.id]) == before


def test_brush_new_segment_and_eraser_fills(page, server, assets, pan):
    y, x0, x1 = 30, 180, 260
    assert_void(pan, x0 - 10, y - 10, x1 + 10, y + 10)
    st = opened(page, server, assets)
    n0 = segments_in(st)
    press_tool(page, "b", "brush")
    drag_pixels(page, [(x, y) for x in range(x0, x1 + 1, 10)])
    st = wait_status(page, "new segment #")
    sid = number(r"new segment #(\d+)", st)
    assert "(disc)" in st and segments_in(st) == n0 + 1  # the default class of a new segment
    area = stroke_pixels(pan, [(x0, y), (x1, y)], 10)
    wait_areas(page, sid, area)
    row = next(r for r in table_rows(page) if r[1] == str(sid))
    assert row[2] == "disc" and row[3] == "thing"
    wait_canvas(page, "d.selected === arg", str(sid))  # the new segment is selected

    page.keyboard.press("Escape")  # nothing selected: the eraser takes whatever is under it
    wait_canvas(page, "d.selected === ''")
    press_tool(page, "e", "eraser")
    assert page.input_value("#erase-fill") == "neighbour"
    before = all_areas(page)
    x, y0, y1 = 260, 186, 210  # across the boundary of the big ring (#2) and the one below it (#13)
    assert pan.segment_map[y0, x] != pan.segment_map[y1, x] and pan.segment_map[[y0, y1], x].all()
    drag_pixels(page, [(x, yy) for yy in range(y0, y1 + 1, 4)])
    st = wait_status(page, "erased")
    assert "(to the neighbours)" in st
    n = number(r"erased (\d+) px", st)
    assert n > 0
    after = wait_table_change(page, before)  # pixels moved from one segment to another ...
    assert sum(after.values()) == sum(before.values())  # ... and none became void

    page.select_option("#erase-fill", "void")
    x, y0, y1 = 60, 184, 204
    assert pan.segment_map[y0, x] != pan.segment_map[y1, x] and pan.segment_map[[y0, y1], x].all()
    drag_pixels(page, [(x, yy) for yy in range(y0, y1 + 1, 4)])
    st = wait_status(page, "(to void)")
    n = number(r"erased (\d+) px", st)
    assert n > 0
    voided = wait_table_change(page, after)
    assert sum(voided.values()) == sum(after.values()) - n


# ------------------------------------------------------------------------------------------ zoom and pan


def test_wheel_zoom_keeps_the_pixel_under_the_cursor_and_paints_there(page, server, assets, pan, largest_thing):
    px, py = 230, 40
    assert_void(pan, px - 8, py - 8, px + 8, py + 8)
    opened(page, server, assets)
    select(page, pan, largest_thing)
    fit_zoom = float(canvas_data(page)["zoom"])
    start = client_point(page, px, py)
    for _ in range(3):
        r = rendered(page)
        wheel_at(page, px, py, -100)
        wait_canvas(page, "+d.rendered > arg", r)
    zoom = float(canvas_data(page)["zoom"])
    assert zoom == pytest.approx(fit_zoom * 1.2 ** 3, rel=1e-3)
    now = client_point(page, px, py)
    assert abs(now[0] - start[0]) < 1 and abs(now[1] - start[1]) < 1, (start, now)

    for _ in range(3):  # 20 -> 16 -> 13 -> 10
        page.keyboard.press("[")
    assert page.input_value("#brush") == "10" and page.inner_text("#canvas .m2f-brush-value") == "10"
    press_tool(page, "b", "brush")
    page.mouse.click(*client_point(page, px, py))  # one dab of radius 5 at (px, py)
    n, sid = painted(wait_status(page, "painted"))
    assert sid == largest_thing.id
    assert n == stroke_pixels(pan, [(px, py)], 5) == 81  # ~ pi * 5^2
    wait_areas(page, sid, largest_thing.area + n)
    for dx, dy in ((1, 0), (0, -4), (-4, 0), (3, 3)):  # inside the dab: the painted segment
        hover_pixel(page, px + dx, py + dy)
        wait_canvas(page, "d.hover === arg", str(sid))
    for dx, dy in ((6, 0), (0, -6), (-6, 0), (0, 6)):  # just outside: still void
        hover_pixel(page, px + dx, py + dy)
        wait_canvas(page, "d.hover === ''")

    page.keyboard.press("f")
    wait_canvas(page, "Math.abs(+d.zoom - arg) < 1e-6", fit_zoom)
    page.keyboard.press("0")
    wait_canvas(page, "+d.zoom === 1")


def test_pan_by_space_middle_and_select_drags(page, server, assets, pan, largest_thing):
    opened(page, server, assets)

    def offsets():
        d = canvas_data(page)
        return float(d["offsetX"]), float(d["offsetY"])

    def drag(x, y, dx, dy, button="left"):
        cx, cy = client_point(page, x, y)
        page.mouse.move(cx, cy)
        page.mouse.down(button=button)
        page.mouse.move(cx + dx, cy + dy, steps=5)
        page.mouse.up(button=button)

    def expect_moved(before, dx, dy):
        wait_canvas(page, "Math.abs(+d.offsetX - arg[0]) < 0.01 && Math.abs(+d.offsetY - arg[1]) < 0.01",
                    [before[0] + dx, before[1] + dy])

    o = offsets()
    page.keyboard.down(" ")
    drag(230, 40, 60, 40)
    page.keyboard.up(" ")
    expect_moved(o, 60, 40)

    o = offsets()
    drag(230, 40, -30, 25, button="middle")
    expect_moved(o, -30, 25)

    o = offsets()
    x, y = inner_point(pan.segment_map == largest_thing.id)
    drag(x, y, -40, -20)  # the Select tool: a drag that starts on a segment pans, it does not select
    expect_moved(o, -40, -20)
    assert canvas_data(page)["selected"] == ""

    o = offsets()
    click_pixel(page, x, y)  # a click without moving selects
    wait_canvas(page, "d.selected === arg", str(largest_thing.id))
    wait_status(page, f"selected #{largest_thing.id}")
    assert offsets() == o


# ------------------------------------------------------------------------------------------ polygon, wand


def shoelace(points) -> float:
    xs, ys = np.array(points, dtype=float).T
    return abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))) / 2


def test_polygon_closed_by_enter_and_by_double_click(page, server, assets, pan):
    first = [(180, 12), (290, 12), (290, 36), (180, 36)]
    second = [(180, 42), (290, 42), (290, 64), (180, 64)]  # wide: its boundary pixels stay within 10 %
    assert_void(pan, 180, 12, 290, 64)
    st = opened(page, server, assets)
    n0 = segments_in(st)
    press_tool(page, "p", "polygon")
    for x, y in first:
        click_pixel(page, x, y)
    page.keyboard.press("Enter")
    st = wait_status(page, "new segment #")
    sid = number(r"new segment #(\d+)", st)
    assert segments_in(st) == n0 + 1
    assert wait_row(page, sid)[sid] == pytest.approx(shoelace(first), rel=0.1)

    for x, y in second[:-1]:
        click_pixel(page, x, y)
    page.mouse.dblclick(*client_point(page, *second[-1]))  # its two clicks add one vertex
    st = wait_status(page, f"new segment #{sid + 1}")
    assert segments_in(st) == n0 + 2
    assert wait_row(page, sid + 1)[sid + 1] == pytest.approx(shoelace(second), rel=0.1)


def test_wand_preview_threshold_commit_and_cancel(page, server, assets, expected, pan, largest_thing):
    x, y = inner_point(pan.segment_map == largest_thing.id)
    st = opened(page, server, assets)
    n0 = segments_in(st)
    fit_zoom = float(canvas_data(page)["zoom"])
    press_tool(page, "w", "wand")
    assert page.locator("#wand-threshold").is_visible()
    click_pixel(page, x, y)

    def area_at(threshold: str) -> int:
        st = wait_status(page, f"px at threshold {threshold}")
        assert f"wand at ({x}, {y})" in st
        area = number(r"\): (\d+) px at threshold", st)
        wait_canvas(page, "+d.wandArea === arg", area)
        assert float(page.input_value("#wand-threshold")) == pytest.approx(float(threshold))
        return area

    assert area_at("0.50") > 0
    # the crafted weights' embeddings are alike: the region shrinks only above 0.9
    set_range(page, "#wand-threshold", 0.89)
    low = area_at("0.89")
    for _ in range(5):  # wheel up: a higher threshold, 0.02 a step (quicker than the server answers)
        wheel_at(page, x, y, -100)
    high = area_at("0.99")
    for _ in range(2):
        wheel_at(page, x, y, 100)
    middle = area_at("0.95")
    assert high <= middle <= low and high < low, (high, middle, low)
    assert float(canvas_data(page)["zoom"]) == fit_zoom  # the wheel set the threshold, it did not zoom

    page.keyboard.press("Enter")  # a new segment of the region's void pixels (not "over others")
    st = wait_status(page, "new segment #")
    sid = number(r"new segment #(\d+)", st)
    assert segments_in(st) == n0 + 1 and "(disc)" in st
    wait_canvas(page, "d.wandArea === '0'")
    region = wand_click(expected, x, y).region(0.95)
    assert wait_row(page, sid)[sid] == int((region & (pan.segment_map == 0)).sum())

    click_pixel(page, *inner_point(pan.segment_map == 12))  # another preview, then Escape cancels it
    wait_status(page, "wand at")
    wait_canvas(page, "+d.wandArea > 0")
    page.keyboard.press("Escape")
    wait_canvas(page, "d.wandArea === '0'")
    page.keyboard.press("Enter")  # nothing to commit any more
    assert segments_in(status(page)) == n0 + 1


# ------------------------------------------------------------------------------------------ keyboard


def test_keys_switch_task_tool_brush_and_views(page, server, assets):
    opened(page, server, assets)
    for key, task in (("2", "instance"), ("3", "semantic"), ("1", "panoptic")):
        page.keyboard.press(key)
        wait_canvas(page, "d.task === arg", task)
        wait_status(page, task.capitalize())
        assert page.locator(f"#task input[value={task.capitalize()}]").is_checked()
    for key, tool in (("b", "brush"), ("e", "eraser"), ("p", "polygon"), ("w", "wand"), ("r", "recover"),
                      ("s", "select")):
        press_tool(page, key, tool)
        assert page.get_attribute(f"#canvas button[data-tool={tool}]", "class") == "active"

    page.keyboard.press("]")  # brush 20 -> 26 -> 21 (image pixels)
    assert page.input_value("#brush") == "26"
    page.keyboard.press("[")
    assert page.input_value("#brush") == "21" and page.inner_text("#canvas .m2f-brush-value") == "21"

    st = status(page)  # outlines and labels are drawn in the page: no server round trip
    for key, box in (("o", "#outline"), ("l", "#labels")):
        on = page.is_checked(box)
        r = rendered(page)
        page.keyboard.press(key)
        wait_canvas(page, "+d.rendered > arg", r)
        assert page.is_checked(box) != on
        page.keyboard.press(key)
        assert page.is_checked(box) == on
    assert status(page) == st

    help_box = page.locator("#canvas .m2f-help")
    assert not help_box.is_visible()
    page.keyboard.press("?")
    assert help_box.is_visible() and "Keyboard" in help_box.inner_text()
    page.keyboard.press("?")
    assert not help_box.is_visible()

    page.keyboard.press("u")  # the uncertainty view, its colour bar; U again goes back
    wait_canvas(page, "d.view === 'uncertainty'")
    wait_status(page, "(uncertainty)")
    assert page.locator("#canvas .m2f-colorbar").is_visible() and page.is_checked("#uncertainty")
    page.keyboard.press("u")
    wait_canvas(page, "d.view === 'annotation'")
    page.wait_for_function("() => !document.querySelector('#status').innerText.includes('(uncertainty)')")
    assert not page.locator("#canvas .m2f-colorbar").is_visible()


def test_keys_go_to_previous_and_next_image(page, server, assets):
    opened(page, server, assets)
    page.locator("#examples .thumbnail-item").first.click()
    wait_status(page, "opened example scene_00.png")
    wait_canvas(page, "d.image === 'scene_00.png'")
    for key, name in (("a", "scene.png"), ("d", "scene_00.png"), ("ArrowLeft", "scene.png"),
                      ("ArrowRight", "scene_00.png")):
        page.keyboard.press(key)
        wait_canvas(page, "d.image === arg", name)
        page.wait_for_function("n => document.querySelector('#position').innerText.includes(n)", arg=name)
    assert "image 2 / 2" in page.inner_text("#position")


def test_keys_edit_the_selection_and_export(page, server, assets, pan, largest_thing):
    st = opened(page, server, assets)
    n0 = segments_in(st)
    target = largest_thing
    x, y = inner_point(pan.segment_map == target.id)

    # H fills holes: first whatever the prediction has, then a hole erased to void in the middle
    select(page, pan, target)
    page.keyboard.press("h")
    wait_status(page, "holes")
    area = int(table_areas(page)[target.id])
    press_tool(page, "e", "eraser")
    page.select_option("#erase-fill", "void")
    click_pixel(page, x, y)  # one dab of radius 10, only the selected segment's pixels
    st = wait_status(page, "(to void)")
    n = number(rf"erased (\d+) px of #{target.id}", st)
    assert n == int(stroke_mask([(x, y)], 10, pan.segment_map.shape).sum())  # all inside the segment
    wait_areas(page, target.id, area - n)
    page.keyboard.press("h")
    wait_status(page, f"filled {n} px of holes")
    wait_areas(page, target.id, area)

    # X splits a segment in pieces, M merges them back, Delete deletes it
    press_tool(page, "s", "select")
    pieces = max((s for s in pan.segments if s.isthing and s.id != target.id),
                 key=lambda s: ndimage.label(pan.segment_map == s.id)[1])
    select(page, pan, pieces)
    page.keyboard.press("x")
    st = wait_status(page, "split into")
    k = number(r"split into (\d+) segments", st)
    assert k > 1 and segments_in(st) == n0 + k - 1
    wait_canvas(page, "d.selected.split(',').length === arg", k)
    page.keyboard.press("m")
    st = wait_status(page, "merged")
    assert segments_in(st) == n0
    merged = number(r"into #(\d+)", st)
    wait_canvas(page, "d.selected === arg", str(merged))
    page.keyboard.press("Delete")
    st = wait_status(page, f"deleted #{merged}")
    assert segments_in(st) == n0 - 1 and "export status: edited" in st

    # Ctrl+S exports (not while typing in a text box)
    name_box = page.locator("#export-name textarea, #export-name input").first
    name_box.fill("canvas-keys")
    name_box.blur()
    page.keyboard.press("Control+s")
    wait_status(page, "exported 1 image")
    assert (server["corrections"] / "canvas-keys" / "panoptic.json").is_file()


# ------------------------------------------------------------------------------------------ hover, opacity


def test_hover_shows_the_segment_under_the_cursor(page, server, assets, expected, pan):
    opened(page, server, assets)
    info = page.locator("#canvas .m2f-info")
    for seg in sorted(pan.segments, key=lambda s: -s.area)[:3]:
        hover_pixel(page, *inner_point(pan.segment_map == seg.id))
        wait_canvas(page, "d.hover === arg", str(seg.id))
        name = expected.config.class_names[seg.category_id]
        text = info.inner_text()
        assert info.is_visible() and text.startswith(f"#{seg.id} {name}") and text.endswith(f"· {seg.area} px")
        assert ("thing" if seg.isthing else "stuff") in text
    hover_pixel(page, 230, 40)  # void
    wait_canvas(page, "d.hover === ''")
    assert not info.is_visible()
    page.mouse.move(1, 1)  # off the canvas
    wait_canvas(page, "d.hover === ''")


def test_opacity_slider_redraws_in_the_page(page, server, assets):
    opened(page, server, assets)
    page.mouse.move(1, 1)
    st, r, before = status(page), rendered(page), stage_png(page)
    slider = page.locator("#opacity")
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.95, box["y"] + box["height"] / 2)  # near the right end
    assert float(slider.input_value()) >= 0.9
    wait_canvas(page, "+d.rendered > arg", r)
    assert stage_png(page) != before
    assert status(page) == st  # no server round trip


# ------------------------------------------------------------------------------------------ ground truth


@pytest.fixture(scope="module")
def relabelled(expected):
    """The thing the ground truth gives another class: the largest one of a class other than disc."""
    pan = expected.panoptic()
    return max((s for s in pan.segments if s.isthing and s.category_id != 0), key=lambda s: s.area)


@pytest.fixture(scope="module")
def gt_server(assets, expected, relabelled, tmp_path_factory):
    """An app with ``--dataset``: the test scene, its ground truth the prediction with ``relabelled`` a disc."""
    from app.editing import EditSession
    from app.export import export_corrections

    session = EditSession.from_prediction(expected)
    session.relabel(relabelled.id, 0)
    folder = export_corrections([(assets["scene"], session)], expected.config, tmp_path_factory.mktemp("gt"),
                                "truth")
    yield from serve(assets, tmp_path_factory, "--dataset", f"corrections:{folder}")


def red_pixels(png: bytes) -> np.ndarray:
    """(y, x) of the screenshot's pixels of the ground-truth difference outline (255, 32, 32)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return np.argwhere((np.abs(rgb - np.array([255, 32, 32])) <= 2).all(axis=-1))


def test_ground_truth_view_outlines_the_differences(page, gt_server, expected, relabelled):
    pan = expected.panoptic()
    page.set_default_timeout(60_000)
    page.goto(gt_server["url"], wait_until="load")
    st = wait_status(page, "model runs: 1")  # the dataset's first image opens with the page
    wait_canvas(page, "d.image === 'scene.png' && d.view === 'annotation'")
    assert page.locator("#canvas .m2f-gt-toggle").is_visible()
    page.mouse.move(1, 1)
    off = red_pixels(stage_png(page))

    page.keyboard.press("g")
    d = wait_canvas(page, "d.view === 'ground-truth'")
    assert page.is_checked("#gt") and d["segments"] == str(len(pan.segments))
    page.wait_for_function("s => document.querySelector('#status').innerText !== s", arg=st)
    st = wait_status(page, "model runs: 1")
    assert "⚠️" not in st
    on = red_pixels(stage_png(page))

    # where the red pixels lie in the image: next to the relabelled segment's border
    d = canvas_data(page)
    z, ox, oy = float(d["zoom"]), float(d["offsetX"]), float(d["offsetY"])
    target = pan.segment_map == relabelled.id
    border = ndimage.binary_dilation(target, iterations=2) & ~ndimage.binary_erosion(target, iterations=2)
    ix = np.floor((on[:, 1] + 0.5 - ox) / z).astype(int)
    iy = np.floor((on[:, 0] + 0.5 - oy) / z).astype(int)
    inside = (ix >= 0) & (iy >= 0) & (ix < target.shape[1]) & (iy < target.shape[0])
    near = np.zeros(len(on), bool)
    near[inside] = border[iy[inside], ix[inside]]
    assert near.sum() > 100 and near.sum() > 10 * len(off), (near.sum(), len(off))
    assert (~near).sum() <= len(off) + 5, ((~near).sum(), len(off))

    page.keyboard.press("g")
    wait_canvas(page, "d.view === 'annotation'")
    assert len(red_pixels(stage_png(page))) == len(off)
