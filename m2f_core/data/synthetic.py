"""Synthetic panoptic scenes written as a COCO panoptic dataset (offline training data for the built-in model).

    python -m m2f_core.data.synthetic --out datasets/synthetic --train 2000 --val 200 --seed 0 [--size 256x256]

writes, for each split with images::

    OUT/<split>/images/000000.jpg ...      the photos (JPEG quality 92, or PNG with --image-format png)
    OUT/<split>/panoptic/000000.png ...    segment ids, id = R + 256 G + 256^2 B (no void pixels)
    OUT/<split>/panoptic.json              COCO panoptic: images, annotations (segments_info), categories

Read a split back with ``synthetic_dataset(OUT, "train")`` (a ``CocoPanoptic`` whose ``image_dir`` is
``OUT/<split>/images``; ``CocoPanoptic(OUT/<split>/panoptic.json)`` alone would look for the images
next to the JSON).

A scene: 2-4 *stuff* regions (``STUFF_NAMES``: sky, grass, water, brick wall, road, each with its own
texture and at most one segment per image) tile the background with irregular borders (a horizon-like
stack of bands displaced by smoothed noise, or a warped Voronoi partition); 2-8 *things*
(``THING_NAMES``: disc, box, triangle, star, ring with a real hole, thin bar) of random size (12% small,
10-20 px; the others 36 px to half the scene), rotation, colour (a hue band per class, as real object
classes have typical colours) and texture (flat, stripes, dots, gradient; sometimes an outline) are
painted in a random depth order, often in touching / overlapping groups of one class, some cut by the
image border. The ground truth keeps the visible part of each instance; instances left with fewer than
``MIN_AREA`` visible pixels (or under 10% of their in-image area) are removed before the image is
painted, and a stuff class left with fewer than ``STUFF_MIN_AREA`` visible pixels is given to its
neighbours, so every segment has at least ``MIN_AREA`` pixels and the image is painted from the final
segment map. Mild global photometric jitter (brightness, contrast, colour cast, blur, noise) follows.

Image ``i`` of a split depends only on ``(seed, split, i)``: the same seed gives byte-identical files,
whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import io
import math
import multiprocessing
import re
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from ..cli import Parser, parse_size
from ..structures import PanopticResult
from .coco import CocoPanoptic, write_coco_panoptic
from .errors import DatasetError
from .records import GTSegment, Sample, atomic_write_bytes

PROG = "python -m m2f_core.data.synthetic"

THING_NAMES = ("disc", "box", "triangle", "star", "ring", "bar")
STUFF_NAMES = ("sky", "grass", "water", "brick wall", "road")

# Dataset ids 1..11: things first, then stuff. The contiguous class index is ``id - 1``.
CATEGORIES: list[dict] = [
    {"id": 1, "name": "disc", "isthing": True, "color": [220, 20, 60]},
    {"id": 2, "name": "box", "isthing": True, "color": [255, 140, 0]},
    {"id": 3, "name": "triangle", "isthing": True, "color": [240, 220, 30]},
    {"id": 4, "name": "star", "isthing": True, "color": [160, 40, 220]},
    {"id": 5, "name": "ring", "isthing": True, "color": [0, 200, 200]},
    {"id": 6, "name": "bar", "isthing": True, "color": [255, 60, 170]},
    {"id": 7, "name": "sky", "isthing": False, "color": [135, 190, 250]},
    {"id": 8, "name": "grass", "isthing": False, "color": [70, 170, 70]},
    {"id": 9, "name": "water", "isthing": False, "color": [30, 80, 170]},
    {"id": 10, "name": "brick wall", "isthing": False, "color": [170, 85, 55]},
    {"id": 11, "name": "road", "isthing": False, "color": [115, 115, 115]},
]
_CLASS = {c["name"]: i for i, c in enumerate(CATEGORIES)}  # name -> contiguous index

MIN_AREA = 16  # every segment has at least this many pixels
STUFF_MIN_AREA = 64  # a stuff class shows at least this many pixels or is given to its neighbours
MIN_VISIBLE_FRACTION = 0.1  # an instance must show at least this share of its in-image area
# Each thing class has its own hue band, as real object classes have typical colours: shape alone,
# under random colours and textures, was not learnt by the small model in a CPU budget (v2, v3a)
THING_HUES = {name: i / len(THING_NAMES) for i, name in enumerate(THING_NAMES)}
THING_HUE_BAND = 0.04  # +- hue around the class's (gaps of 0.087 between classes)
SMALL_FRACTION = 0.12  # share of things drawn 10-20 px wide (at 256 px); the others 36 px to half the scene
DEFAULT_SIZE = (256, 256)
JPEG_QUALITY = 92
_MIN_SIDE, _MAX_SIDE = 32, 4096
_SHAPE_MIN_SIZE = {"disc": 8.0, "box": 8.0, "triangle": 10.0, "star": 14.0, "ring": 12.0, "bar": 14.0}
_SUB = 16  # cv2 drawing with 4 fractional bits


# --------------------------------------------------------------------------------------------
# Noise helpers


_BANK = 512  # side of the fixed pixel-noise tile


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed (2 * _BANK, 2 * _BANK) tile of N(0, 1) float32 pixel noise (periodic, same in every process)."""
    tile = np.random.default_rng(0x5EED).standard_normal((_BANK, _BANK), dtype=np.float32)
    return np.tile(tile, (2, 2))


def _white(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 N(0, 1) pixel noise: a random window of the fixed tile (a view; read only)."""
    oy, ox = int(rng.integers(_BANK)), int(rng.integers(_BANK))
    bank = _noise_bank()
    if h > _BANK or w > _BANK:
        bank = np.tile(bank, (-(-(oy + h) // (2 * _BANK)), -(-(ox + w) // (2 * _BANK))))
    return bank[oy:oy + h, ox:ox + w]


def _fractal(rng: np.random.Generator, h: int, w: int, cells: float, octaves: int = 3) -> np.ndarray:
    """(h, w) float32 smooth noise of about unit scale: ``octaves`` bicubic-upsampled random grids, each
    twice as fine and half as strong as the one before (``cells`` grid cells along the longer side first).

    Summed at a quarter of the resolution, then upsampled once.
    """
    ch, cw = max(2, -(-h // 4)), max(2, -(-w // 4))
    out = np.zeros((ch, cw), np.float32)
    amp, total, side = 1.0, 0.0, max(h, w)
    for k in range(octaves):
        c = cells * 2**k
        grid = rng.standard_normal((max(2, round(c * h / side) + 1), max(2, round(c * w / side) + 1)),
                                   dtype=np.float32)
        out += np.float32(amp) * cv2.resize(grid, (cw, ch), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out *= np.float32(1 / total)
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


# (h, w, 3) arrays are built channel by channel with cv2.merge: numpy broadcasting over a last axis of 3 is
# several times slower.


def _tint(shade: np.ndarray, color: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32 = (h, w) shade times an RGB colour."""
    return cv2.merge([shade * np.float32(c) for c in color])


def _mix(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32 blend ``c0 (1 - t) + c1 t`` of two RGB colours by an (h, w) weight (or bool mask)."""
    t = t.astype(np.float32, copy=False)
    return cv2.merge([np.float32(a) + np.float32(b - a) * t for a, b in zip(c0, c1)])


def _paste(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> None:
    """``dst[mask] = src[mask]`` in place for (h, w, 3) float32 arrays and an (h, w) bool mask (dst may be a view)."""
    out = cv2.copyTo(src, np.ascontiguousarray(mask).view(np.uint8), dst)
    if out is not dst:  # cv2 could not write in place
        np.copyto(dst, src, where=mask[..., None])


# --------------------------------------------------------------------------------------------
# Stuff: layout and textures (float32 RGB, about [0, 1]; ``region`` is where the texture will show)


def _stuff_layout(rng: np.random.Generator, h: int, w: int, classes: list[str]) -> np.ndarray:
    """(h, w) int32 index into ``classes``: horizon-like bands (top to bottom) or a warped Voronoi partition."""
    n = len(classes)
    s = min(h, w)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    if rng.random() < 0.55:
        cuts = np.cumsum(rng.dirichlet(np.full(n, 4.0)))[:-1] * h
        layout = np.zeros((h, w), np.int32)
        for cut in cuts:
            amp = h * rng.uniform(0.03, 0.1)
            line = (cut + amp * _fractal(rng, 1, w, rng.uniform(2.0, 5.0), octaves=4)[0]
                    + rng.uniform(-0.12, 0.12) * (xs[0] - w / 2))
            layout += ys >= line[None, :]
        return layout
    # warped power diagram; sky keeps to the top
    sy = rng.uniform(0.1, 0.9, n) * h
    sx = rng.uniform(0.1, 0.9, n) * w
    if "sky" in classes:
        sy[classes.index("sky")] = rng.uniform(0.0, 0.25) * h
    weight = rng.uniform(-0.04, 0.04, n) * s * s
    amp = s * rng.uniform(0.06, 0.14)
    cells = rng.uniform(2.0, 4.0)
    wy = ys + np.float32(amp) * _fractal(rng, h, w, cells)
    wx = xs + np.float32(amp) * _fractal(rng, h, w, cells)
    best = np.full((h, w), np.inf, np.float32)
    layout = np.zeros((h, w), np.int32)
    for k in range(n):
        d = (wy - np.float32(sy[k])) ** 2 + (wx - np.float32(sx[k])) ** 2 - np.float32(weight[k])
        closer = d < best
        best[closer] = d[closer]
        layout[closer] = k
    return layout


def _tex_sky(rng: np.random.Generator, h: int, w: int, region: np.ndarray) -> np.ndarray:
    t = (np.arange(h, dtype=np.float32) / max(h - 1, 1))[:, None]
    top = _hsv(rng.uniform(0.56, 0.64), rng.uniform(0.55, 0.8), rng.uniform(0.7, 0.9))
    bottom = _hsv(rng.uniform(0.52, 0.6), rng.uniform(0.15, 0.35), rng.uniform(0.9, 1.0))
    n = _fractal(rng, h, w, rng.uniform(3.0, 6.0), octaves=4)
    cloud = np.clip((n - np.float32(rng.uniform(-0.1, 0.4))) * np.float32(rng.uniform(2.0, 4.0)), 0, 1)
    cloud *= np.float32(rng.uniform(0.6, 0.95))
    white = np.float32(rng.uniform(0.9, 1.0))
    return cv2.merge([(a + (b - a) * t) * (1 - cloud) + white * cloud for a, b in zip(top, bottom)])


def _tex_grass(rng: np.random.Generator, h: int, w: int, region: np.ndarray) -> np.ndarray:
    base = _hsv(rng.uniform(0.24, 0.33), rng.uniform(0.6, 0.85), rng.uniform(0.45, 0.65))
    patches = _fractal(rng, h, w, rng.uniform(4.0, 8.0))
    blades = cv2.resize(_white(rng, max(2, h // 5), w), (w, h), interpolation=cv2.INTER_LINEAR)
    shade = 1 + 0.18 * patches + 0.2 * blades + 0.08 * _white(rng, h, w)
    return cv2.merge([shade * base[0] + 0.05 * patches, shade * base[1], shade * base[2]])  # yellowish patches


def _tex_water(rng: np.random.Generator, h: int, w: int, region: np.ndarray) -> np.ndarray:
    base = _hsv(rng.uniform(0.55, 0.62), rng.uniform(0.6, 0.9), rng.uniform(0.45, 0.7))
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    ky = np.float32(2 * math.pi / rng.uniform(6.0, 12.0))
    kx = np.float32(2 * math.pi / rng.uniform(20.0, 50.0))
    swing = np.float32(rng.uniform(1.0, 2.5)) * np.sin(kx * xs + np.float32(rng.uniform(0, 2 * math.pi)))
    wave = np.sin(ky * ys + swing + 1.5 * _fractal(rng, h, w, rng.uniform(3.0, 6.0)))
    glint = np.clip((wave - 0.8) * 5.0, 0, 1) * np.float32(rng.uniform(0.25, 0.45))
    shade = 1 + 0.18 * wave + 0.1 * _fractal(rng, h, w, 3.0)
    return cv2.merge([shade * c + glint for c in base])


def _tex_brick(rng: np.random.Generator, h: int, w: int, region: np.ndarray) -> np.ndarray:
    scale = max(1.0, min(h, w) / 256)
    bh = rng.uniform(8.0, 14.0) * scale
    bw = bh * rng.uniform(1.8, 2.6)
    mortar = rng.uniform(1.0, 2.2) * scale
    # brick coordinates (float floor / multiply: numpy's float // and % are slow)
    ys = (np.arange(h, dtype=np.float32)[:, None] + np.float32(rng.uniform(0, bh))) * np.float32(1 / bh)
    rowf = np.floor(ys)
    row = rowf.astype(np.int32)
    xs = np.arange(w, dtype=np.float32)[None, :] + np.float32(rng.uniform(0, bw))
    u = (xs + (row % 2).astype(np.float32) * np.float32(bw / 2)) * np.float32(1 / bw)
    colf = np.floor(u)
    col = colf.astype(np.int32)
    ncol = int(col.max()) + 1
    table = rng.standard_normal((int(row.max()) + 1) * ncol, dtype=np.float32)
    fine = _white(rng, h, w)
    is_mortar = ((ys - rowf) < np.float32(mortar / bh)) | ((u - colf) < np.float32(mortar / bw))
    grey = rng.uniform(0.65, 0.8)
    jitter = np.take(table, row * ncol + col)  # one value per brick
    shade = np.where(is_mortar, np.float32(grey) + 0.03 * fine, 1 + 0.12 * jitter + 0.05 * fine)
    brick = _hsv(rng.uniform(0.0, 0.06), rng.uniform(0.55, 0.8), rng.uniform(0.5, 0.75))
    return cv2.merge([np.where(is_mortar, np.float32(m), np.float32(c)) * shade
                      for c, m in zip(brick, (1.0, 0.97, 0.92))])


def _tex_road(rng: np.random.Generator, h: int, w: int, region: np.ndarray) -> np.ndarray:
    grey = np.float32(rng.uniform(0.25, 0.42))
    fine = cv2.GaussianBlur(_white(rng, h, w), (3, 3), 0.7)
    shade = grey * (1 + 0.1 * _fractal(rng, h, w, 4.0)) + 0.05 * fine
    # a dashed lane marking through a random point of the road
    where = np.flatnonzero(region)
    cy, cx = divmod(int(where[int(rng.integers(where.size))]), w) if where.size else (h / 2, w / 2)
    theta = rng.uniform(-0.5, 0.5) + (math.pi / 2 if rng.random() < 0.3 else 0.0)
    c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    ys = np.arange(h, dtype=np.float32)[:, None] - np.float32(cy)
    xs = np.arange(w, dtype=np.float32)[None, :] - np.float32(cx)
    scale = max(1.0, min(h, w) / 256)
    dash = rng.uniform(10.0, 20.0) * scale
    period = dash * rng.uniform(1.6, 2.4)
    along = (xs * c + ys * s) * np.float32(1 / period)
    lane = (np.abs(ys * c - xs * s) < rng.uniform(1.2, 2.2) * scale) & ((along - np.floor(along)) < dash / period)
    paint = np.array([0.92, 0.92, 0.88] if rng.random() < 0.6 else [0.95, 0.8, 0.2], np.float32)
    return cv2.merge([np.where(lane, p, shade * c) for p, c in zip(paint, (1.0, 1.0, 1.03))])


_STUFF_TEXTURES = {"sky": _tex_sky, "grass": _tex_grass, "water": _tex_water, "brick wall": _tex_brick,
                   "road": _tex_road}


# --------------------------------------------------------------------------------------------
# Things: shapes and textures


@dataclass
class _Thing:
    kind: str
    cy: float
    cx: float
    size: float  # diameter / length in pixels
    angle: float  # radians
    aspect: float  # box / bar width over length, ring inner over outer radius, star inner over outer
    corner_jitter: np.ndarray | None = None  # triangle: (3, 2) radius factors and angle offsets
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # y0, y1, x0, x1 of ``mask`` in the image
    mask: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))  # whole shape, inside the image
    area: int = 0  # pixels of ``mask``


def _polygon(t: _Thing) -> np.ndarray:
    """(k, 2) x, y vertices of a polygonal shape, rotated and placed."""
    r = t.size / 2
    if t.kind in ("box", "bar"):
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * [r, r * t.aspect]
    else:
        if t.kind == "triangle":
            assert t.corner_jitter is not None
            angles = np.arange(3) * (2 * math.pi / 3) + t.corner_jitter[:, 1]
            radii = r * t.corner_jitter[:, 0]
        else:  # star
            angles = np.arange(10) * (math.pi / 5)
            radii = np.where(np.arange(10) % 2 == 0, r, r * t.aspect)
        pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    c, s = math.cos(t.angle), math.sin(t.angle)
    return pts @ np.array([[c, s], [-s, c]]) + [t.cx, t.cy]


def _shape_mask(t: _Thing, h: int, w: int) -> np.ndarray:
    """(h, w) bool mask of the whole shape (drawn with sub-pixel precision, no anti-aliasing)."""
    m = np.zeros((h, w), np.uint8)
    if t.kind in ("disc", "ring"):
        center = (round(t.cx * _SUB), round(t.cy * _SUB))
        cv2.circle(m, center, round(t.size / 2 * _SUB), 1, -1, cv2.LINE_8, 4)
        if t.kind == "ring":  # a real hole
            cv2.circle(m, center, round(t.size / 2 * t.aspect * _SUB), 0, -1, cv2.LINE_8, 4)
    else:
        pts = np.round(_polygon(t) * _SUB).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(m, [pts], 1, cv2.LINE_8, 4)
    return m.view(bool)


def _random_size(rng: np.random.Generator, kind: str, s: int) -> float:
    scale = max(1.0, s / 256)
    lo = _SHAPE_MIN_SIZE[kind]
    if kind == "bar":
        return rng.uniform(max(lo, 0.12 * s), 0.6 * s)
    if rng.random() < SMALL_FRACTION:  # small object
        return max(lo, rng.uniform(10.0, 20.0) * scale)
    # large enough to tell the shapes apart after training-time downscaling (v2 trained on a median
    # visible area of 409 px and never learnt to classify a thing)
    return math.exp(rng.uniform(math.log(max(lo, 36.0 * scale)), math.log(0.5 * s)))


def _new_thing(rng: np.random.Generator, kind: str, cy: float, cx: float, size: float) -> _Thing:
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "box":
        aspect = rng.uniform(0.5, 1.0)
    elif kind == "bar":
        aspect = max(rng.uniform(0.08, 0.2), 3.0 / size)
    elif kind == "ring":
        aspect = min(rng.uniform(0.45, 0.7), 1 - 4.0 / size)
    elif kind == "star":
        aspect = rng.uniform(0.38, 0.52)
    else:
        aspect = 1.0
    jitter = None
    if kind == "triangle":
        jitter = np.stack([rng.uniform(0.85, 1.15, 3), rng.uniform(-0.25, 0.25, 3)], axis=1)
    return _Thing(kind, cy, cx, size, angle, aspect, jitter)


def _place_things(rng: np.random.Generator, h: int, w: int) -> list[_Thing]:
    """2-8 instances, back to front; often a group of one class touching or overlapping."""
    s = min(h, w)
    count = int(rng.integers(2, 9))
    things: list[_Thing] = []
    while len(things) < count:
        kind = THING_NAMES[int(rng.integers(len(THING_NAMES)))]
        size = _random_size(rng, kind, s)
        cy = rng.uniform(0.0, 1.0) * h
        cx = rng.uniform(0.0, 1.0) * w
        group = [_new_thing(rng, kind, cy, cx, size)]
        if rng.random() < 0.4 and count - len(things) >= 2:  # a group of the same class
            for _ in range(int(rng.integers(1, min(3, count - len(things) - 1) + 1))):
                prev = group[int(rng.integers(len(group)))]
                size2 = max(_SHAPE_MIN_SIZE[kind], prev.size * rng.uniform(0.7, 1.3))
                reach = (prev.size + size2) / 2 * rng.uniform(0.55, 1.0)
                if kind == "bar":
                    reach = (prev.size * prev.aspect + size2 * 0.15) / 2 * rng.uniform(0.8, 2.0)
                a = rng.uniform(0, 2 * math.pi)
                group.append(_new_thing(rng, kind, prev.cy + reach * math.sin(a), prev.cx + reach * math.cos(a),
                                        size2))
        things.extend(group)
    things = things[:count]
    return [things[i] for i in rng.permutation(len(things))]  # random depth order


def _thing_colors(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A main colour in the class's hue band (``THING_HUE_BAND`` around ``THING_HUES[kind]``) and a
    second colour, a darker or lighter shade of the same hue, for the two-colour textures."""
    hue = (THING_HUES[kind] + rng.uniform(-THING_HUE_BAND, THING_HUE_BAND)) % 1.0
    sat, val = rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.0)
    c1 = _hsv(hue, sat, val)
    if rng.random() < 0.5:
        c2 = _hsv(hue, rng.uniform(0.3, 1.0) * sat, val * rng.uniform(0.35, 0.6))
    else:
        c2 = _hsv(hue, sat * rng.uniform(0.25, 0.5), min(1.0, val * rng.uniform(1.1, 1.5)))
    return c1, c2


def _thing_texture(rng: np.random.Generator, shape: tuple[int, int], y0: int, x0: int, t: _Thing) -> np.ndarray:
    """(h, w, 3) texture of an instance over its crop (image coordinates offset by y0, x0)."""
    h, w = shape
    c1, c2 = _thing_colors(rng, t.kind)
    style = ("flat", "stripes", "dots", "gradient")[int(rng.integers(4))]
    ys = np.arange(h, dtype=np.float32)[:, None] + (y0 - t.cy)
    xs = np.arange(w, dtype=np.float32)[None, :] + (x0 - t.cx)
    a = rng.uniform(0, math.pi)
    u = xs * math.cos(a) + ys * math.sin(a)
    if style == "flat":
        shade = 1 + 0.05 * rng.standard_normal() * u / max(t.size, 1.0)
        return _tint(np.broadcast_to(shade, (h, w)), c1)
    if style == "stripes":
        period = rng.uniform(4.0, 10.0)
        return _mix((u % period) < period * rng.uniform(0.35, 0.65), c2, c1)
    if style == "dots":
        v = -xs * math.sin(a) + ys * math.cos(a)
        step = rng.uniform(5.0, 10.0)
        du = (u % step) - step / 2
        dv = (v % step) - step / 2
        return _mix(du * du + dv * dv < (step * rng.uniform(0.22, 0.35)) ** 2, c1, c2)
    return _mix(np.clip(u / max(t.size, 1.0) + 0.5, 0, 1), c1, c2)


# --------------------------------------------------------------------------------------------
# Scene


def _crop_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the True pixels of ``mask`` grown by one pixel (inside the image); None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, h), max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, w)


def _compose(layout: np.ndarray, things: list[_Thing], n_stuff: int) -> np.ndarray:
    """Segment map: stuff k -> id k + 1, thing i (back to front, later on top) -> id n_stuff + 1 + i."""
    seg = layout + 1
    for i, t in enumerate(things):
        y0, y1, x0, x1 = t.box
        seg[y0:y1, x0:x1][t.mask] = n_stuff + 1 + i
    return seg


def _give_to_neighbours(layout: np.ndarray, label: int) -> None:
    """Replace ``label`` in ``layout`` by the nearest other label (in place)."""
    region = layout == label
    idx = ndimage.distance_transform_edt(region, return_distances=False, return_indices=True)
    layout[region] = layout[idx[0][region], idx[1][region]]


def _photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Contrast, brightness and colour cast, sometimes a slight blur and pixel noise; to uint8."""
    contrast = rng.uniform(0.8, 1.2)
    brightness = rng.uniform(-0.1, 0.1)
    cast = rng.uniform(0.94, 1.06, 3)
    affine = np.zeros((3, 4), np.float32)  # per channel: 255 (contrast cast x + (0.5 - 0.5 contrast + brightness) cast)
    affine[:, :3] = np.diag(255 * contrast * cast)
    affine[:, 3] = 255 * (0.5 - 0.5 * contrast + brightness) * cast
    img = cv2.transform(img, affine)
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
    if rng.random() < 0.6:
        img += cv2.cvtColor(np.float32(255 * rng.uniform(0.005, 0.03)) * _white(rng, *img.shape[:2]),
                            cv2.COLOR_GRAY2RGB)
    np.clip(img, 0, 255, out=img)
    img += 0.5
    return img.astype(np.uint8)


def generate_scene(rng: np.random.Generator, height: int = DEFAULT_SIZE[0],
                   width: int = DEFAULT_SIZE[1]) -> tuple[np.ndarray, np.ndarray, list[GTSegment]]:
    """One random scene: ``(image (H, W, 3) uint8 RGB, segment_map (H, W) int32, segments)``.

    ``segments`` are ``GTSegment`` with CONTIGUOUS ``category_id`` (index into ``CATEGORIES``; the
    dataset id is ``CATEGORIES[category_id]["id"]``), ``area`` and ``bbox`` set; stuff first, then
    things back to front. Ids are 1..N, every pixel has one (no void) and every segment has at least
    ``MIN_AREA`` pixels. The result depends only on the state of ``rng``.
    """
    h, w = int(height), int(width)
    if h < _MIN_SIDE or w < _MIN_SIDE:
        raise ValueError(f"scene size {h}x{w} is below the minimum {_MIN_SIDE}x{_MIN_SIDE}")
    n_stuff = int(rng.integers(2, 5))
    stuff = [STUFF_NAMES[i] for i in rng.choice(len(STUFF_NAMES), n_stuff, replace=False)]
    if "sky" in stuff:  # sky on top of the band layout
        stuff.remove("sky")
        stuff.insert(0, "sky")
    layout = _stuff_layout(rng, h, w, stuff)
    things = []
    for t in _place_things(rng, h, w):
        full = _shape_mask(t, h, w)
        box = _crop_box(full)
        if box is None:
            continue
        t.box, t.mask = box, full[box[0]:box[1], box[2]:box[3]]
        t.area = int(np.count_nonzero(t.mask))
        if t.area >= MIN_AREA:
            things.append(t)

    while True:  # drop (nearly) hidden things, give tiny stuff regions to their neighbours; terminates
        seg = _compose(layout, things, n_stuff)
        area = np.bincount(seg.ravel(), minlength=n_stuff + len(things) + 1)
        small = [i for i, t in enumerate(things)
                 if area[n_stuff + 1 + i] < max(MIN_AREA, MIN_VISIBLE_FRACTION * t.area)]
        if small:
            drop = min(small, key=lambda i: (area[n_stuff + 1 + i], i))
            del things[drop]
            continue
        tiny = [k for k in range(n_stuff) if 0 < area[k + 1] < STUFF_MIN_AREA]
        if not tiny:
            break
        if (layout != tiny[0]).any():
            _give_to_neighbours(layout, tiny[0])
        else:  # the only stuff, nearly all covered: remove the front thing
            things.pop()

    # paint from the final map; ids renumbered 1..N in listing order
    img = np.empty((h, w, 3), np.float32)
    lut = np.zeros(n_stuff + len(things) + 1, np.int32)
    segments: list[GTSegment] = []
    for k, name in enumerate(stuff):
        if not area[k + 1]:
            continue
        region = seg == k + 1
        _paste(img, _STUFF_TEXTURES[name](rng, h, w, region), region)
        segments.append(GTSegment(id=len(segments) + 1, category_id=_CLASS[name], isthing=False))
        lut[k + 1] = len(segments)
    for i, t in enumerate(things):
        y0, y1, x0, x1 = t.box
        visible = seg[y0:y1, x0:x1] == n_stuff + 1 + i
        tex = _thing_texture(rng, t.mask.shape, y0, x0, t)
        if rng.random() < 0.35:  # outline along the shape's own border (not along the image border)
            width_px = 1 + int(rng.random() < 0.4 and t.size > 24)
            inner = cv2.erode(t.mask.view(np.uint8), np.ones((3, 3), np.uint8), iterations=width_px)
            edge = t.mask & ~inner.view(bool)
            tex[edge] = tex[edge] * 0.35 if rng.random() < 0.75 else tex[edge] * 0.4 + 0.6
        _paste(img[y0:y1, x0:x1], tex, visible)
        segments.append(GTSegment(id=len(segments) + 1, category_id=_CLASS[t.kind], isthing=True))
        lut[n_stuff + 1 + i] = len(segments)
    image = _photometric(rng, img)
    result = PanopticResult(lut[seg], segments).update_stats()
    return image, result.segment_map, result.segments


# --------------------------------------------------------------------------------------------
# Dataset


def _split_key(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: depends only on (seed, split, index)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _split_key(split), int(index)]))


def _encode_image(image: np.ndarray, image_format: str) -> bytes:
    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(image).save(buf, format="PNG")
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _make_image(job: tuple[int, int, str, int, int, str, str]) -> tuple[int, np.ndarray, list[GTSegment]]:
    """Generate image ``index`` and write its photo; returns (index, segment map, segments)."""
    index, seed, split, h, w, image_format, image_dir = job
    image, seg, segments = generate_scene(scene_rng(seed, split, index), h, w)
    atomic_write_bytes(Path(image_dir) / f"{index:06d}.{image_format}", _encode_image(image, image_format))
    return index, seg, segments


def _worker_init() -> None:
    cv2.setNumThreads(1)


def generate_dataset(out_dir: str | Path, num_images: int, seed: int = 0, split: str = "train",
                     size: tuple[int, int] = DEFAULT_SIZE, image_format: str = "jpg", workers: int = 1,
                     progress: bool = False) -> Path:
    """Write ``num_images`` scenes as ``out_dir/<split>/{images/, panoptic/, panoptic.json}``; returns the JSON.

    Every file is written atomically (the JSON last). ``workers`` > 1 generates in that many processes;
    the files are the same whatever ``workers`` is.
    """
    h, w = (int(v) for v in size)
    if h < _MIN_SIDE or w < _MIN_SIDE or h > _MAX_SIDE or w > _MAX_SIDE:
        raise ValueError(f"image size {h}x{w} outside {_MIN_SIDE}..{_MAX_SIDE} per side")
    if num_images < 0:
        raise ValueError(f"number of images must be >= 0, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image format must be 'jpg' or 'png', got {image_format!r}")
    if not split or not re.fullmatch(r"[A-Za-z0-9_.-]+", split) or split in (".", ".."):
        raise ValueError(f"split must be a plain folder name, got {split!r}")
    root = Path(out_dir) / split
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(i, int(seed), split, h, w, image_format, str(image_dir)) for i in range(int(num_images))]

    def samples(results: Iterator[tuple[int, np.ndarray, list[GTSegment]]]) -> Iterator[Sample]:
        from tqdm import tqdm

        for index, seg, segments in tqdm(results, total=len(jobs), desc=f"synthetic {split}", unit="img",
                                         file=sys.stderr, disable=None if progress else True):
            yield Sample(image_id=index, file_name=image_dir / f"{index:06d}.{image_format}", height=h, width=w,
                         panoptic=PanopticResult(seg, segments))

    json_file = root / "panoptic.json"
    if workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ctx.Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
            write_coco_panoptic(json_file, samples(pool.imap(_make_image, jobs, chunksize=4)), CATEGORIES)
    else:
        write_coco_panoptic(json_file, samples(map(_make_image, jobs)), CATEGORIES)
    return json_file


def synthetic_dataset(out_dir: str | Path, split: str = "train") -> CocoPanoptic:
    """Read a split written by ``generate_dataset`` (a ``CocoPanoptic`` with the right image folder)."""
    root = Path(out_dir) / split
    return CocoPanoptic(root / "panoptic.json", png_dir=root / "panoptic", image_dir=root / "images")


# --------------------------------------------------------------------------------------------
# CLI


def _size(text: str) -> tuple[int, int]:
    h, w = parse_size(text, multiple=1)
    if not (_MIN_SIDE <= h <= _MAX_SIDE and _MIN_SIDE <= w <= _MAX_SIDE):
        raise argparse.ArgumentTypeError(f"size {h}x{w}: each side must be in {_MIN_SIDE}..{_MAX_SIDE}")
    return h, w


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _positive(text: str) -> int:
    n = _count(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Write a synthetic COCO panoptic dataset (stuff textures + overlapping "
                                       "shapes) to OUT/train and OUT/val; the same seed gives identical files.")
    p.add_argument("--out", required=True, type=Path, help="output folder (gets train/ and val/)")
    p.add_argument("--train", type=_count, default=1000, metavar="N", help="training images (default 1000)")
    p.add_argument("--val", type=_count, default=100, metavar="M", help="validation images (default 100)")
    p.add_argument("--seed", type=_count, default=0, metavar="S", help="random seed >= 0 (default 0)")
    p.add_argument("--size", type=_size, default=DEFAULT_SIZE, metavar="HxW",
                   help=f"image size, e.g. 256x256 or 256 (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg",
                   help=f"photo format (default jpg, quality {JPEG_QUALITY})")
    p.add_argument("--workers", type=_positive, default=1, metavar="K",
                   help="processes (default 1; the output does not depend on it)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.train == 0 and args.val == 0:
        parser.error("nothing to generate (--train and --val are both 0)")
    cv2.setNumThreads(1)
    try:
        if args.out.exists() and not args.out.is_dir():
            raise DatasetError(args.out, "exists and is not a folder")
        for split, n in (("train", args.train), ("val", args.val)):
            if n:
                path = generate_dataset(args.out, n, args.seed, split, args.size, args.image_format, args.workers,
                                        progress=True)
                print(f"{split}: {n} images -> {path}")
    except (DatasetError, OSError, ValueError) as e:
        message = " ".join(str(e).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
