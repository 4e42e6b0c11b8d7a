"""Pixel helpers of the synthetic scenes: fixed white noise, smooth fractal noise, float32 RGB mixing.

Why a module of its own: the stuff and thing textures and the photometric jitter are all built from
these few vectorised primitives (cv2 per channel, several times faster than numpy broadcasting).
"""

from __future__ import annotations

import colorsys
import functools

import cv2
import numpy as np

# --------------------------------------------------------------------------------------------
# Noise helpers


_BANK = 512  # side of the fixed pixel-noise tile


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed (2 * _BANK, 2 * _BANK) tile of N(0, 1) float32 pixel noise (periodic, same in every process)."""
    tile = np.random.default_rng(0x5EED).standard_normal((_BANK, _BANK), dtype=np.float32)
    return np.tile(tile, (2, 2))


def white_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 N(0, 1) pixel noise: a random window of the fixed tile (a view; read only)."""
    oy, ox = int(rng.integers(_BANK)), int(rng.integers(_BANK))
    bank = _noise_bank()
    if h > _BANK or w > _BANK:
        bank = np.tile(bank, (-(-(oy + h) // (2 * _BANK)), -(-(ox + w) // (2 * _BANK))))
    return bank[oy:oy + h, ox:ox + w]


def fractal_noise(rng: np.random.Generator, h: int, w: int, cells: float, octaves: int = 3) -> np.ndarray:
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


def hsv_color(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


# (h, w, 3) arrays are built channel by channel with cv2.merge: numpy broadcasting over a last axis of 3 is
# several times slower.


def tint(shade: np.ndarray, color: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32 = (h, w) shade times an RGB colour."""
    return cv2.merge([shade * np.float32(c) for c in color])


def mix(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32 blend ``c0 (1 - t) + c1 t`` of two RGB colours by an (h, w) weight (or bool mask)."""
    t = t.astype(np.float32, copy=False)
    return cv2.merge([np.float32(a) + np.float32(b - a) * t for a, b in zip(c0, c1)])


def paste(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> None:
    """``dst[mask] = src[mask]`` in place for (h, w, 3) float32 arrays and an (h, w) bool mask (dst may be a view)."""
    out = cv2.copyTo(src, np.ascontiguousarray(mask).view(np.uint8), dst)
    if out is not dst:  # cv2 could not write in place
        np.copyto(dst, src, where=mask[..., None])
