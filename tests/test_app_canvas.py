"""The canvas's tools and shortcuts in a real headless Chromium (Playwright), driven as a user would:
brush and eraser drags, zoom and pan, the polygon, the magic wand, the keyboard, hover, opacity and
the ground-truth view (an app of its own, started with a dataset).

Each test checks real effects: the status line, the segment table, the canvas's ``data-*`` attributes
(see app/assets/canvas.js), and ``expected`` (the same model's prediction of the test scene).
Waits are on conditions, never sleeps. Helpers and the app server: ``browser_helpers.py``.
"""

from __future__ import annotations

import json
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
    set_range,
    status,
    table_areas,
    table_rows,
    upload,
    wait_canvas,
    wait_status,
    wheel_at,
)

from app.regions import stroke_mask
from app.wand import wand_click

pytestmark = BROWSER_MARKS

# rows 8..67, columns 170..300 of the test scene are void in ``expected`` (checked where used)
VOID_BOX = (170, 8, 300, 67)  # x0, y0, x1, y1 (inclusive)


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
    page.wait_for_function(f"before => JSON.stringify(({TABLE_AREAS_JS})()) !== before",
                           arg=json.dumps({str(k): str(v) for k, v in before.items()}))
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
    n0 = segment_count(st)
    press_tool(page, "b", "brush")
    drag_pixels(page, [(x, y) for x in range(x0, x1 + 1, 10)])
    st = wait_status(page, "new segment #")
    sid = number(r"new segment #(\d+)", st)
    assert "(disc)" in st and segment_count(st) == n0 + 1  # the default class of a new segment
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
    second = [(180, 44), (290, 44), (235, 64)]
    assert_void(pan, 180, 12, 290, 64)
    st = opened(page, server, assets)
    n0 = segment_count(st)
    press_tool(page, "p", "polygon")
    for x, y in first:
        click_pixel(page, x, y)
    page.keyboard.press("Enter")
    st = wait_status(page, "new segment #")
    sid = number(r"new segment #(\d+)", st)
    assert segment_count(st) == n0 + 1
    assert wait_row(page, sid)[sid] == pytest.approx(shoelace(first), rel=0.1)

    for x, y in second[:-1]:
        click_pixel(page, x, y)
    page.mouse.dblclick(*client_point(page, *second[-1]))  # its two clicks add one vertex
    st = wait_status(page, f"new segment #{sid + 1}")
    assert segment_count(st) == n0 + 2
    assert wait_row(page, sid + 1)[sid + 1] == pytest.approx(shoelace(second), rel=0.1)


def test_wand_preview_threshold_commit_and_cancel(page, server, assets, expected, pan, largest_thing):
    x, y = inner_point(pan.segment_map == largest_thing.id)
    st = opened(page, server, assets)
    n0 = segment_count(st)
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
    assert segment_count(st) == n0 + 1 and "(disc)" in st
    wait_canvas(page, "d.wandArea === '0'")
    region = wand_click(expected, x, y).region(0.95)
    assert wait_row(page, sid)[sid] == int((region & (pan.segment_map == 0)).sum())

    click_pixel(page, *inner_point(pan.segment_map == 12))  # another preview, then Escape cancels it
    wait_status(page, "wand at")
    wait_canvas(page, "+d.wandArea > 0")
    page.keyboard.press("Escape")
    wait_canvas(page, "d.wandArea === '0'")
    page.keyboard.press("Enter")  # nothing to commit any more
    assert segment_count(status(page)) == n0 + 1
