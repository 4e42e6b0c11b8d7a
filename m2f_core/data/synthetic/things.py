"""Things of the synthetic scenes: shapes (disc, box, triangle, star, ring, bar), placement, colours, textures.

Why a module of its own: an instance's geometry (sub-pixel masks, sizes, groups of one class in a
random depth order) and its appearance (a hue band per class, four texture styles) are decided here;
``scene`` composes them with the stuff layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .constants import DRAW_SUBPIXELS, SHAPE_MIN_SIZE, SMALL_FRACTION, THING_HUE_BAND, THING_HUES, THING_NAMES
from .domain import Domain
from .pixels import hsv_color, mix, tint

# --------------------------------------------------------------------------------------------
# Things: shapes and textures


@dataclass
class Thing:
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


def _polygon(t: Thing) -> np.ndarray:
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


def shape_mask(t: Thing, h: int, w: int) -> np.ndarray:
    """(h, w) bool mask of the whole shape (drawn with sub-pixel precision, no anti-aliasing)."""
    m = np.zeros((h, w), np.uint8)
    if t.kind in ("disc", "ring"):
        center = (round(t.cx * DRAW_SUBPIXELS), round(t.cy * DRAW_SUBPIXELS))
        cv2.circle(m, center, round(t.size / 2 * DRAW_SUBPIXELS), 1, -1, cv2.LINE_8, 4)
        if t.kind == "ring":  # a real hole
            cv2.circle(m, center, round(t.size / 2 * t.aspect * DRAW_SUBPIXELS), 0, -1, cv2.LINE_8, 4)
    else:
        pts = np.round(_polygon(t) * DRAW_SUBPIXELS).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(m, [pts], 1, cv2.LINE_8, 4)
    return m.view(bool)


def _random_size(rng: np.random.Generator, kind: str, s: int, domain: Domain) -> float:
    scale = max(1.0, s / 256)
    lo = SHAPE_MIN_SIZE[kind]
    if kind == "bar":
        return rng.uniform(max(lo, 0.12 * s), 0.6 * s)
    if rng.random() < SMALL_FRACTION:  # small object
        return max(lo, rng.uniform(10.0, 20.0) * scale)
    # large enough to tell the shapes apart after training-time downscaling (v2 trained on a median
    # visible area of 409 px and never learnt to classify a thing)
    size = math.exp(rng.uniform(math.log(max(lo, 36.0 * scale)), math.log(0.5 * s)))
    return size if domain.thing_size_scale == 1.0 else max(lo, size * domain.thing_size_scale)


def _new_thing(rng: np.random.Generator, kind: str, cy: float, cx: float, size: float) -> Thing:
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
    return Thing(kind, cy, cx, size, angle, aspect, jitter)


def place_things(rng: np.random.Generator, h: int, w: int, domain: Domain) -> list[Thing]:
    """2-8 instances, back to front; often a group of one class touching or overlapping."""
    s = min(h, w)
    count = int(rng.integers(2, 9))
    things: list[Thing] = []
    while len(things) < count:
        kind = THING_NAMES[int(rng.integers(len(THING_NAMES)))]
        size = _random_size(rng, kind, s, domain)
        cy = rng.uniform(0.0, 1.0) * h
        cx = rng.uniform(0.0, 1.0) * w
        group = [_new_thing(rng, kind, cy, cx, size)]
        if rng.random() < 0.4 and count - len(things) >= 2:  # a group of the same class
            for _ in range(int(rng.integers(1, min(3, count - len(things) - 1) + 1))):
                prev = group[int(rng.integers(len(group)))]
                size2 = max(SHAPE_MIN_SIZE[kind], prev.size * rng.uniform(0.7, 1.3))
                reach = (prev.size + size2) / 2 * rng.uniform(0.55, 1.0)
                if kind == "bar":
                    reach = (prev.size * prev.aspect + size2 * 0.15) / 2 * rng.uniform(0.8, 2.0)
                a = rng.uniform(0, 2 * math.pi)
                group.append(_new_thing(rng, kind, prev.cy + reach * math.sin(a), prev.cx + reach * math.cos(a),
                                        size2))
        things.extend(group)
    things = things[:count]
    return [things[i] for i in rng.permutation(len(things))]  # random depth order


def _thing_colors(rng: np.random.Generator, kind: str, domain: Domain) -> tuple[np.ndarray, np.ndarray]:
    """A main colour in the class's hue band (``THING_HUE_BAND`` around ``THING_HUES[kind]``) and a
    second colour, a darker or lighter shade of the same hue, for the two-colour textures."""
    hue = (THING_HUES[kind] + rng.uniform(-THING_HUE_BAND, THING_HUE_BAND)) % 1.0
    sat, val = rng.uniform(0.5, 1.0), rng.uniform(*domain.thing_value)
    c1 = hsv_color(hue, sat, val)
    if rng.random() < 0.5:
        c2 = hsv_color(hue, rng.uniform(0.3, 1.0) * sat, val * rng.uniform(0.35, 0.6))
    else:
        c2 = hsv_color(hue, sat * rng.uniform(0.25, 0.5), min(1.0, val * rng.uniform(1.1, 1.5)))
    return c1, c2


def thing_texture(rng: np.random.Generator, shape: tuple[int, int], y0: int, x0: int, t: Thing,
                   domain: Domain) -> np.ndarray:
    """(h, w, 3) texture of an instance over its crop (image coordinates offset by y0, x0)."""
    h, w = shape
    c1, c2 = _thing_colors(rng, t.kind, domain)
    style = ("flat", "stripes", "dots", "gradient")[int(rng.integers(4))]
    ys = np.arange(h, dtype=np.float32)[:, None] + (y0 - t.cy)
    xs = np.arange(w, dtype=np.float32)[None, :] + (x0 - t.cx)
    a = rng.uniform(0, math.pi)
    u = xs * math.cos(a) + ys * math.sin(a)
    if style == "flat":
        shade = 1 + 0.05 * rng.standard_normal() * u / max(t.size, 1.0)
        return tint(np.broadcast_to(shade, (h, w)), c1)
    if style == "stripes":
        period = rng.uniform(4.0, 10.0)
        return mix((u % period) < period * rng.uniform(0.35, 0.65), c2, c1)
    if style == "dots":
        v = -xs * math.sin(a) + ys * math.cos(a)
        step = rng.uniform(5.0, 10.0)
        du = (u % step) - step / 2
        dv = (v % step) - step / 2
        return mix(du * du + dv * dv < (step * rng.uniform(0.22, 0.35)) ** 2, c1, c2)
    return mix(np.clip(u / max(t.size, 1.0) + 0.5, 0, 1), c1, c2)
