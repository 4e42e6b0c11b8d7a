"""Server-side speed of the annotation edits on a big photo (``app.editing.EditSession``, in-process).

    .venv/bin/python tools/edit_timing.py                    # 4000x3000, 60 shapes, median of 5
    .venv/bin/python tools/edit_timing.py --size 2000x1500 --runs 9

Why: the canvas sends each brush drag, eraser drag or click as one edit, so every edit (and its
undo / redo) must stay well under a frame budget on photos of 12 megapixels (target: 40 ms).
The annotation is synthetic: two stuff classes fill the image (top and bottom half), 60 random
filled circles and rectangles of four thing classes (and some stuff patches) lie on them. Each
operation runs on the same annotation (it is undone, redone and undone again between runs).
Reported per operation: the median wall time of the edit (and its CPU time in this thread: on shared
cores the wall time spreads with the load), of its undo and of its redo, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # app and m2f_core from this checkout
    sys.path.insert(0, str(REPO))

from app.editing import EditSession  # noqa: E402
from m2f_core.structures import PanopticResult, Segment  # noqa: E402

CATEGORIES = [{"name": n, "isthing": t} for n, t in
              (("person", 1), ("car", 1), ("dog", 1), ("chair", 1), ("sky", 0), ("grass", 0), ("road", 0))]
THINGS, SKY, GRASS, ROAD = (0, 1, 2, 3), 4, 5, 6


def build_session(h: int, w: int, shapes: int, seed: int) -> EditSession:
    """Stuff halves plus ``shapes`` random filled circles / rectangles (things; every 6th a road patch)."""
    rng = np.random.default_rng(seed)
    seg_map = np.ones((h, w), np.int32)  # (H, W): sky (id 1) on top, grass (id 2) below
    seg_map[h // 2:] = 2
    segs = [Segment(1, SKY, False, 1.0), Segment(2, GRASS, False, 1.0), Segment(3, ROAD, False, 1.0)]
    yy, xx = np.ogrid[:h, :w]
    next_id = 4
    for i in range(shapes):
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        r = int(rng.integers(h // 40, h // 8))
        if i % 2:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= int(r * rng.uniform(0.5, 1.5)))
        if i % 6 == 5:
            seg_map[mask] = 3  # a road patch: the one road segment
            continue
        seg_map[mask] = next_id
        segs.append(Segment(next_id, int(rng.choice(THINGS)), True, 0.9))
        next_id += 1
    present = set(np.unique(seg_map).tolist())
    pan = PanopticResult(seg_map, [s for s in segs if s.id in present])
    return EditSession.from_panoptic(pan, CATEGORIES)


def stroke(h: int, w: int, n: int = 60, length: float = 800.0) -> list[tuple[float, float]]:
    """A wavy ``n``-point drag of about ``length`` px across the middle of the image."""
    t = np.linspace(0.0, 1.0, n)
    xs = w / 2 - length / 2 + length * t
    ys = h / 2 + 40.0 * np.sin(t * 6 * np.pi)
    return [(float(x), float(y)) for x, y in zip(xs, ys)]


def largest(s: EditSession, things: bool) -> list[int]:
    """Segment ids, largest first (things or stuff)."""
    return [g.id for g in sorted(s.segments, key=lambda g: -g.area) if g.isthing == things]


def ms(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and this thread's CPU time of ``fn()``, in ms (CPU time: less spread on shared cores)."""
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return (time.perf_counter() - w0) * 1000.0, (time.thread_time() - c0) * 1000.0


def time_op(s: EditSession, op: Callable[[], object], runs: int) -> tuple[float, float, float, float]:
    """Median ms of the edit (wall, CPU), its undo and its redo (wall); the annotation is left as it was."""
    edit, cpu, undo, redo = [], [], [], []
    for _ in range(runs):
        n = len(s.history_labels)
        wall, c = ms(op)
        if len(s.history_labels) == n:
            raise RuntimeError("the operation changed nothing: its undo cannot be timed")
        edit.append(wall)
        cpu.append(c)
        undo.append(ms(s.undo)[0])
        redo.append(ms(s.redo)[0])
        s.undo()
    return (statistics.median(edit), statistics.median(cpu), statistics.median(undo), statistics.median(redo))


def operations(s: EditSession) -> dict[str, Callable[[], object]]:
    h, w = s.shape
    pts = stroke(h, w)
    big_things = largest(s, things=True)
    thing = big_things[0]
    cls = s.segment(thing).category_id
    other_cls = next(c for c in THINGS if c != cls)
    return {
        "paint stroke (r=20, 60 pts)": lambda: s.paint(thing, pts, radius=20, overwrite_others=True),
        "erase stroke fill=void": lambda: s.erase(pts, radius=20),
        "erase stroke fill=neighbour": lambda: s.erase(pts, radius=20, fill="neighbour"),
        "delete largest thing": lambda: s.delete(thing),
        "merge two largest things": lambda: s.merge(big_things[:2]),
        "relabel thing (table only)": lambda: s.relabel(thing, other_cls),
        "relabel thing into stuff": lambda: s.relabel(thing, SKY),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of the synthetic photo")
    p.add_argument("--shapes", type=int, default=60, help="random circles / rectangles")
    p.add_argument("--runs", type=int, default=5, help="runs per operation (median reported)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    t0 = time.perf_counter()
    s = build_session(h, w, args.shapes, args.seed)
    print(f"{w}x{h}, {len(s.segments)} segments, built in {time.perf_counter() - t0:.1f} s; "
          f"median of {args.runs} runs, ms")
    print(f"{'operation':<30} {'edit':>8} {'edit cpu':>8} {'undo':>8} {'redo':>8}")
    for name, op in operations(s).items():
        e, c, u, r = time_op(s, op, args.runs)
        print(f"{name:<30} {e:8.1f} {c:8.1f} {u:8.1f} {r:8.1f}")


if __name__ == "__main__":
    main()
