"""Shared by the browser tests: serving the app with ``launch.py`` and helpers that drive its canvas.

The fixtures (``assets``, ``expected``, ``server``) are in ``conftest.py``: one app process
(``launch.py`` on a free port, small crafted weights from ``app_helpers``) serves every browser test
module of the session; each test gets a fresh browser context, i.e. a fresh Gradio session. Waits are
on conditions (status text, the canvas's ``data-*`` attributes such as ``data-rendered``), never on
sleeps or ``networkidle`` (Gradio keeps a stream open).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")

BROWSER_MARKS = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system Chromium at /usr/bin/chromium"),
    # pytest-playwright 0.10's session fixtures trip a pytest 9 deprecation notice; not ours to fix
    pytest.mark.filterwarnings("ignore::pytest.PytestRemovedIn10Warning"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(assets, tmp_path_factory, *extra: str):
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


def canvas_data(page) -> dict:
    """The canvas root's data attributes (task, image, segments, rendered, zoom, offsets, selected, ...)."""
    return page.evaluate("() => ({...document.querySelector('#canvas').dataset})")


def wait_canvas(page, condition: str, arg=None, timeout: float = 60_000) -> dict:
    """Wait until ``condition`` (a JS expression over ``d``, the canvas's dataset, and ``arg``) holds."""
    page.wait_for_function(f"a => {{ const d = document.querySelector('#canvas').dataset; const arg = a; "
                           f"return !!({condition}); }}", arg=arg, timeout=timeout)
    return canvas_data(page)


def rendered(page) -> int:
    return int(canvas_data(page).get("rendered") or 0)


def client_point(page, x: float, y: float) -> tuple[float, float]:
    """The page position of image pixel centre (x, y) under the canvas's current zoom and pan."""
    cx, cy = page.evaluate("([x, y]) => window.m2fCanvas.imageToClient(x, y)", [x + 0.5, y + 0.5])
    return float(cx), float(cy)


def click_pixel(page, x: float, y: float, shift: bool = False) -> None:
    """Click image pixel (x, y) on the canvas (mapping: ``data-zoom`` / ``data-offset-*``, see canvas.js)."""
    wait_canvas(page, "d.image")
    cx, cy = client_point(page, x, y)
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(cx, cy)
    if shift:
        page.keyboard.up("Shift")


def drag_pixels(page, points: list[tuple[float, float]]) -> None:
    """Press at the first image pixel, move through the others, release (a brush or eraser stroke)."""
    wait_canvas(page, "d.image")
    page.mouse.move(*client_point(page, *points[0]))
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(*client_point(page, x, y), steps=2)
    page.mouse.up()


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




# ------------------------------------------------------------------------------------------ canvas helpers


def table_areas(page) -> dict[int, int]:
    """{segment id: area} of the segment table's rows (the table is virtual: rows out of view are missing;
    compare the count with ``data-segments`` where it matters)."""
    return {int(k): int(v) for k, v in page.evaluate(TABLE_AREAS_JS).items()}


TABLE_AREAS_JS = """() => {
    const out = {};
    document.querySelectorAll('#segments .virtual-body [role=row]').forEach(r => {
        const c = Array.from(r.querySelectorAll('[role=gridcell]')).map(x => x.innerText.trim());
        if (c.length > 5 && c[1] !== '') out[c[1]] = c[5];
    });
    return out;
}"""


def hover_pixel(page, x: float, y: float) -> None:
    """Move the mouse over image pixel (x, y)."""
    page.mouse.move(*client_point(page, x, y))


def wheel_at(page, x: float, y: float, delta_y: float) -> None:
    """One wheel step over image pixel (x, y) (negative ``delta_y``: up, zooms in)."""
    hover_pixel(page, x, y)
    page.mouse.wheel(0, delta_y)


def stage_png(page) -> bytes:
    return page.locator("#canvas .m2f-stage").screenshot()


def set_range(page, selector: str, value: float) -> None:
    """Move a range input (a slider) to ``value`` as a drag of its thumb would: its value, then "input"."""
    page.eval_on_selector(selector, "(e, v) => { e.value = String(v); e.dispatchEvent(new Event('input', "
                                    "{bubbles: true})); }", value)
