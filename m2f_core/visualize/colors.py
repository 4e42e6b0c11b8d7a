"""Colours of the overlays: one colour per class, and a stable per-segment colour for things.

Why a module of its own: the colour rules are the part of the rendering that other code must agree
with (a segment keeps its colour across re-renders; the legend shows the class colours), so they
are kept apart from the drawing.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

from ..config import default_color as _config_default_color

__all__ = ["Color", "default_color", "segment_color"]

Color = Sequence[int]


def default_color(class_id: int) -> tuple[int, int, int]:
    """The config's default colour of a class; used when ``colors`` is missing."""
    return tuple(_config_default_color(class_id))


def class_rgb(colors: Sequence[Color] | None, class_id: int) -> tuple[int, int, int]:
    if colors is not None and 0 <= class_id < len(colors):
        c = colors[class_id]
        return (int(c[0]), int(c[1]), int(c[2]))
    return default_color(class_id)


def _hash32(x: int) -> int:
    """A well mixed 32-bit hash of an integer (lowbias32); the same on every run and platform."""
    m = 0xFFFFFFFF
    x = (int(x) * 0x9E3779B1 + 0x7F4A7C15) & m
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    x ^= x >> 16
    return x


def _reflect(v: float, lo: float, hi: float) -> float:
    if v > hi:
        v = 2 * hi - v
    if v < lo:
        v = 2 * lo - v
    return min(max(v, lo), hi)


def segment_color(class_color: Color, segment_id: int, isthing: bool = True) -> tuple[int, int, int]:
    """Colour of one segment: the class colour for stuff; for a thing, the class colour jittered in HSV by a
    hash of ``segment_id`` (hue +-0.05, saturation and value +-0.3). Depends on nothing else, so it is stable."""
    r, g, b = (int(class_color[0]), int(class_color[1]), int(class_color[2]))
    if not isthing:
        return (r, g, b)
    hsh = _hash32(segment_id)
    jh, js, jv = ((hsh >> s) & 0xFF for s in (0, 8, 16))
    h, s, v = colorsys.rgb_to_hsv(r / 255.0, g / 255.0, b / 255.0)
    h = (h + (jh / 255.0 - 0.5) * 0.1) % 1.0
    s = _reflect(s + (js / 255.0 - 0.5) * 0.6, 0.0, 1.0) if s > 0.05 else s
    v = _reflect(v + (jv / 255.0 - 0.5) * 0.6, 0.15, 1.0)
    r2, g2, b2 = colorsys.hsv_to_rgb(h, s, v)
    return (int(round(r2 * 255)), int(round(g2 * 255)), int(round(b2 * 255)))
