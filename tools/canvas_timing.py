"""Reaction times of the app's canvas, measured in the page, from the input event to the repaint.

Starts ``launch.py`` (built-in model unless ``--weights``), opens it in Chromium (Playwright, Debian's
``/usr/bin/chromium``) and, for each photo size, uploads a photo and times what an annotator does:
hover, opacity, selection, labels, task switch (all drawn in the page), a brush stroke, relabel,
delete, merge, undo (a server round trip: the edit, then the patch of the map drawn), and the upload
itself (to the first paint, against the model's own time from the status line).

How a time is taken: a capturing listener records ``performance.now()`` of the last input event
(pointer, key, input, change) and an observer records the time of every repaint (``data-rendered``
grows); a reaction is the first repaint after the event that shows its effect (for a server action:
a repaint whose map version or status changed). Numbers are medians over ``--repeat`` tries.

    python tools/canvas_timing.py                     # 640x480, 1920x1080, 4000x3000; markdown table
    python tools/canvas_timing.py --sizes 640x480 --repeat 3 --json docs/canvas_timing.json

Never run it while something else loads the machine: the app and the browser share its cores.
"""

# ruff: noqa: B023  (each lambda runs at once, inside the loop step that defines its variables)
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "data" / "real" / "ade20k_full_csail" / "dataset" / "ADE20K_2021_17_01" / \
    "images" / "ADE" / "training" / "urban" / "street" / "ADE_train_00016900.jpg"
SIZES = ("640x480", "1920x1080", "4000x3000")
SERVER_ACTIONS = ("brush stroke", "delete", "merge")  # sent by the canvas itself (trigger -> answer)

RECORDER = """() => {
  if (window.__timing) return;
  const T = window.__timing = {input: 0, renders: []};
  for (const type of ['pointerdown', 'pointerup', 'keydown', 'input', 'change', 'wheel', 'pointermove']) {
    window.addEventListener(type, () => { T.input = performance.now(); }, true);  // before the page's own
  }
  const root = document.querySelector('#canvas');
  new MutationObserver(() => {
    const d = root.dataset;
    T.renders.push({t: performance.now(), rendered: +d.rendered, version: +d.version, task: d.task,
                    image: d.image, selected: d.selected, hover: d.hover,
                    status: (document.querySelector('#status') || {}).innerText || ''});
  }).observe(root, {attributes: true, attributeFilter: ['data-rendered']});
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_photos(folder: Path, sizes: list[str]) -> list[Path]:
    """The same real street photo at each size (resized; an upscale for 4000x3000)."""
    rgb = Image.open(PHOTO).convert("RGB")
    out = []
    for size in sizes:
        w, h = (int(v) for v in size.split("x"))
        path = folder / f"street_{w}x{h}.jpg"
        rgb.resize((w, h), Image.LANCZOS).save(path, quality=92)
        out.append(path)
    return out


def serve(port: int, weights: str | None, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "launch.py"), "--no-browser", "--port", str(port), "--device", "cpu",
           "--log-file", str(log.with_suffix(".app.log"))]
    if weights:
        cmd += ["--weights", weights]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the app did not start within 240 s")


class Page:
    """The app page with the recorder installed; each ``react`` call times one action."""

    def __init__(self, page) -> None:
        self.page = page

    def data(self) -> dict:
        return self.page.evaluate("() => ({...document.querySelector('#canvas').dataset})")

    def react(self, act, done: str, timeout_ms: float = 60_000) -> float:
        """Run ``act()`` and return ms from its input event to the first repaint whose record satisfies
        ``done`` (a JS expression over ``r``, the repaint record, and ``b``, the state before)."""
        before = self.page.evaluate("() => { const T = window.__timing; T.renders = []; T.input = 0; "
                                    "const d = document.querySelector('#canvas').dataset; "
                                    "return {version: +d.version, task: d.task, image: d.image, selected: d.selected, "
                                    "hover: d.hover, status: document.querySelector('#status').innerText}; }")
        act()
        try:
            self.page.wait_for_function(f"b => window.__timing.renders.some(r => {done})", arg=before,
                                        timeout=timeout_ms)
        except Exception as e:
            raise RuntimeError(f"no repaint satisfied {done!r} (before: {before}; now: {self.data()}, status "
                               f"{self.page.inner_text('#status')!r})") from e
        return float(self.page.evaluate(f"b => {{ const T = window.__timing; "
                                        f"const r = T.renders.find(r => {done}); return r.t - T.input; }}", before))

    def point(self, x: float, y: float) -> tuple[float, float]:
        return tuple(self.page.evaluate("([x, y]) => window.m2fCanvas.imageToClient(x, y)", [x, y]))


def segment_points(page) -> list[tuple[int, int, int, int]]:
    """(id, x, y, area) of the largest segments: a pixel near each bbox centre that lies inside it."""
    return page.evaluate("""() => {
      const S = window.m2fCanvas.state, out = [];
      for (const s of [...S.segs].sort((a, b) => b.a - a.a).slice(0, 12)) {
        const [bx, by, bw, bh] = s.b;
        for (let k = 0; k < 200; k++) {
          const x = Math.floor(bx + bw * (0.5 + 0.4 * Math.cos(k) * k / 200));
          const y = Math.floor(by + bh * (0.5 + 0.4 * Math.sin(k) * k / 200));
          if (S.ids[y * S.W + x] === s.i) { out.push([s.id, x, y, s.a]); break; }
        }
      }
      return out;
    }""")


def wait_status(page, text: str) -> None:
    """Wait for the status line to say ``text`` and for the canvas to have drawn what came with it."""
    try:
        page.wait_for_function("t => document.querySelector('#status').innerText.includes(t)", arg=text,
                               timeout=60_000)
        page.evaluate("() => window.m2fCanvas.settled()")
    except Exception as e:
        state = page.evaluate("() => ({...document.querySelector('#canvas').dataset, "
                              "focus: document.activeElement && document.activeElement.outerHTML.slice(0, 120)})")
        raise RuntimeError(f"status never said {text!r}: {page.inner_text('#status')!r}; canvas {state}") from e


def measure(page, photo: Path, repeat: int) -> dict[str, list[float]]:
    p = Page(page)
    times: dict[str, list[float]] = {}

    def add(name: str, ms: float) -> None:
        times.setdefault(name, []).append(round(ms, 1))
        if name in SERVER_ACTIONS:  # how much of it was the wait for the server's answer
            answer = page.evaluate("() => (window.m2fCanvas.state.lastAnswer || {}).server")
            if answer is not None:
                times.setdefault(f"{name}: server answer", []).append(round(float(answer), 1))

    # upload: the file input's change event -> the first paint of the new image
    name = photo.name  # stored as a PNG of the same stem
    ms = p.react(lambda: page.set_input_files("#image-input input[type=file]", str(photo)),
                 f"(r.image || '').startsWith({json.dumps(photo.stem)})", timeout_ms=300_000)
    add("upload to first paint", ms)
    wait_status(page, "model runs")
    status = page.inner_text("#status")
    model = re.search(r"model (\d+) ms", status)
    add("model (status line)", float(model.group(1)) if model else float("nan"))
    points = segment_points(page)
    if len(points) < 3:
        raise RuntimeError(f"{name}: the model found {len(points)} segments; need 3 for the timings")
    stage = page.locator("#canvas .m2f-stage").bounding_box()
    for i in range(repeat):
        a, b = points[i % 2], points[2 + i % max(1, len(points) - 2)]
        page.mouse.move(stage["x"] + 2, stage["y"] + 2)
        add("hover", p.react(lambda: page.mouse.move(*p.point(a[1] + 0.5, a[2] + 0.5)),
                             f"r.hover === '{a[0]}'"))
        value = "0.8" if i % 2 == 0 else "0.3"
        add("opacity", p.react(lambda: page.evaluate(
            "v => { const e = document.querySelector('#opacity'); e.value = v; "
            "e.dispatchEvent(new Event('input', {bubbles: true})); }", value), "true"))
        add("select (click)", p.react(lambda: page.mouse.click(*p.point(b[1] + 0.5, b[2] + 0.5)),
                                      f"r.selected === '{b[0]}'"))
        add("labels toggle", p.react(lambda: page.keyboard.press("l"), "true"))
        task = "instance" if i % 2 == 0 else "panoptic"
        add("task switch", p.react(lambda: page.keyboard.press("2" if task == "instance" else "1"),
                                   f"r.task === '{task}'"))
        wait_status(page, f"{task.capitalize()}")
    page.keyboard.press("1")
    wait_status(page, "Panoptic")
    page.check("#overwrite")  # strokes take pixels of other segments: every stroke changes the map
    for i in range(repeat):
        a = points[i % len(points)]
        page.mouse.click(*p.point(a[1] + 0.5, a[2] + 0.5))
        wait_status(page, f"selected #{a[0]} ")
        page.keyboard.press("Escape")  # nothing selected: the stroke makes a new segment (over the others)
        page.keyboard.press("b")
        start = p.point(a[1] + 0.5, a[2] + 0.5)
        span = 120 * float(p.data()["zoom"])  # 120 image pixels

        def stroke():
            page.mouse.move(*start)
            page.mouse.down()
            for k in range(1, 13):
                page.mouse.move(start[0] + span * k / 12, start[1] + span * 0.3 * np.sin(k / 2))
            page.mouse.up()
        add("brush stroke", p.react(stroke, "r.version > b.version"))
        page.keyboard.press("s")
        add("undo", p.react(lambda: page.keyboard.press("Control+z"), "r.status.includes('undid')"))
        page.mouse.click(*p.point(a[1] + 0.5, a[2] + 0.5))
        wait_status(page, f"selected #{a[0]} ")
        page.click("#relabel input")
        option = page.locator("[role=option]").nth(1 + i % 3)
        add("relabel", p.react(lambda: option.click(), "r.status.includes('relabelled') || r.status !== b.status"))
        page.click("#position")  # the dropdown lets the focus go (keys go to the canvas again)
        page.keyboard.press("Control+z")  # the relabel may have merged stuff: back to the model's segments
        wait_status(page, "undid relabel")
        page.mouse.click(*p.point(a[1] + 0.5, a[2] + 0.5))
        wait_status(page, f"selected #{a[0]} ")
        add("delete", p.react(lambda: page.keyboard.press("Delete"), "r.version > b.version"))
        add("undo", p.react(lambda: page.keyboard.press("Control+z"), "r.version > b.version"))
        c, d = points[0], points[1]
        page.mouse.click(*p.point(c[1] + 0.5, c[2] + 0.5))
        wait_status(page, f"selected #{c[0]} ")
        page.keyboard.down("Shift")
        page.mouse.click(*p.point(d[1] + 0.5, d[2] + 0.5))
        page.keyboard.up("Shift")
        wait_status(page, f"#{d[0]} ")
        add("merge", p.react(lambda: page.keyboard.press("m"), "r.version > b.version || r.status.includes('merge')"))
        page.keyboard.press("Control+z")
        wait_status(page, "undid")
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), help="photo sizes WxH")
    ap.add_argument("--repeat", type=int, default=5, help="tries per action (the median is reported)")
    ap.add_argument("--weights", default=None, help="weights for launch.py (default: the built-in model)")
    ap.add_argument("--viewport", default="1440x1000", help="browser window WxH")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw times here")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="canvas-timing-"))
    photos = make_photos(work, args.sizes)
    port = free_port()
    proc = serve(port, args.weights, work / "server.log")
    results: dict[str, dict[str, list[float]]] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--no-sandbox", "--disable-dev-shm-usage"])
            vw, vh = (int(v) for v in args.viewport.split("x"))
            for photo in photos:
                page = browser.new_page(viewport={"width": vw, "height": vh})
                page.set_default_timeout(120_000)
                page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
                page.wait_for_selector("#canvas .m2f-stage")
                wait_status(page, "Upload")
                page.evaluate(RECORDER)
                size = photo.stem.split("_")[1]
                results[size] = measure(page, photo, args.repeat)
                page.close()
                print(f"{size}: done", file=sys.stderr)
            browser.close()
    finally:
        proc.terminate()
        proc.wait()
    actions = list(next(iter(results.values())))
    print("| action (ms, median) | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for action in actions:
        cells = [f"{statistics.median(results[s][action]):.0f}" if results[s].get(action) else "–" for s in results]
        print(f"| {action} | " + " | ".join(cells) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({"viewport": args.viewport, "repeat": args.repeat, "times_ms": results},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
