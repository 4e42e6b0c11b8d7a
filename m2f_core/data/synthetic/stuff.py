"""Stuff of the synthetic scenes: the background layout (bands or a warped Voronoi) and one texture per class.

Why a module of its own: stuff tiles the whole background with irregular borders, each class with a
texture of its own (sky, grass, water, brick wall, road); things are drawn on top (``things``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .pixels import fractal_noise, hsv_color, white_noise

# --------------------------------------------------------------------------------------------
# Stuff: layout and textures (float32 RGB, about [0, 1]; ``region`` is where the texture will show)


def stuff_layout(rng: np.random.Generator, h: int, w: int, classes: list[str]) -> np.ndarray:
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
            line = (cut + amp * fractal_noise(rng, 1, w, rng.uniform(2.0, 5.0), octaves=4)[0]
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
    wy = ys + np.float32(amp) * fractal_noise(rng, h, w, cells)
    wx = xs + np.float32(amp) * fractal_noise(rng, h, w, cells)
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
    top = hsv_color(rng.uniform(0.56, 0.64), rng.uniform(0.55, 0.8), rng.uniform(0.7, 0.9))
    bottom = hsv_color(rng.uniform(0.52, 0.6), rng.uniform(0.15, 0.35), rng.uniform(0.9, 1.0))
    n = fractal_noise(rng, h, w, rng.uniform(3.0, 6.0), octaves=4)
    cloud = np.clip((n - np.float32(rng.uniform(-0.1, 0.4))) * np.float32(rng.uniform(2.0, 4.0)), 0, 1)
    cloud *= np.float32(rng.uniform(0.6, 0.95))
    white = np.float32(rng.uniform(0.9, 1.0))
    return cv2.merge([(a + (b - a) * t) * (1 - cloud) + white * cloud for a, b in zip(top, bottom)])


def _tex_grass(rng: np.random.Generator, h: int, w: int, region: np.ndarray) -> np.ndarray:
    base = hsv_color(rng.uniform(0.24, 0.33), rng.uniform(0.6, 0.85), rng.uniform(0.45, 0.65))
    patches = fractal_noise(rng, h, w, rng.uniform(4.0, 8.0))
    blades = cv2.resize(white_noise(rng, max(2, h // 5), w), (w, h), interpolation=cv2.INTER_LINEAR)
    shade = 1 + 0.18 * patches + 0.2 * blades + 0.08 * white_noise(rng, h, w)
    return cv2.merge([shade * base[0] + 0.05 * patches, shade * base[1], shade * base[2]])  # yellowish patches


def _tex_water(rng: np.random.Generator, h: int, w: int, region: np.ndarray) -> np.ndarray:
    base = hsv_color(rng.uniform(0.55, 0.62), rng.uniform(0.6, 0.9), rng.uniform(0.45, 0.7))
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    ky = np.float32(2 * math.pi / rng.uniform(6.0, 12.0))
    kx = np.float32(2 * math.pi / rng.uniform(20.0, 50.0))
    swing = np.float32(rng.uniform(1.0, 2.5)) * np.sin(kx * xs + np.float32(rng.uniform(0, 2 * math.pi)))
    wave = np.sin(ky * ys + swing + 1.5 * fractal_noise(rng, h, w, rng.uniform(3.0, 6.0)))
    glint = np.clip((wave - 0.8) * 5.0, 0, 1) * np.float32(rng.uniform(0.25, 0.45))
    shade = 1 + 0.18 * wave + 0.1 * fractal_noise(rng, h, w, 3.0)
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
    fine = white_noise(rng, h, w)
    is_mortar = ((ys - rowf) < np.float32(mortar / bh)) | ((u - colf) < np.float32(mortar / bw))
    grey = rng.uniform(0.65, 0.8)
    jitter = np.take(table, row * ncol + col)  # one value per brick
    shade = np.where(is_mortar, np.float32(grey) + 0.03 * fine, 1 + 0.12 * jitter + 0.05 * fine)
    brick = hsv_color(rng.uniform(0.0, 0.06), rng.uniform(0.55, 0.8), rng.uniform(0.5, 0.75))
    return cv2.merge([np.where(is_mortar, np.float32(m), np.float32(c)) * shade
                      for c, m in zip(brick, (1.0, 0.97, 0.92))])


def _tex_road(rng: np.random.Generator, h: int, w: int, region: np.ndarray) -> np.ndarray:
    grey = np.float32(rng.uniform(0.25, 0.42))
    fine = cv2.GaussianBlur(white_noise(rng, h, w), (3, 3), 0.7)
    shade = grey * (1 + 0.1 * fractal_noise(rng, h, w, 4.0)) + 0.05 * fine
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


STUFF_TEXTURES = {"sky": _tex_sky, "grass": _tex_grass, "water": _tex_water, "brick wall": _tex_brick,
                   "road": _tex_road}
