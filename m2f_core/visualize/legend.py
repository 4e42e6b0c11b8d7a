"""Legends: colour swatch + class name per class, alone or appended to a rendered image.

Why a module of its own: a legend is an image of its own (laid out in rows, columns or lines), not
an overlay; it shares only the class colours and the font with the overlays.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .checks import as_rgb
from .colors import Color, class_rgb
from .text import FONT, TEXT_COLOR, class_name, font_metrics

__all__ = ["append_legend", "legend"]


def legend(
    class_ids: Sequence[int],
    class_names: Sequence[str] | None = None,
    colors: Sequence[Color] | None = None,
    *,
    font_scale: float = 0.5,
    max_height: int | None = None,
    max_width: int | None = None,
    background: Color = (32, 32, 32),
) -> np.ndarray:
    """A legend image: one row per class (colour swatch + name), duplicates dropped, order kept.

    ``max_height`` wraps the rows into more columns; ``max_width`` instead lays the entries out left to right
    in as many lines as needed. No class: a (0, 0, 3) array.
    """
    seen: dict[int, None] = {}
    for c in class_ids:
        seen.setdefault(int(c), None)
    ids = list(seen)
    if not ids:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    thick = max(1, int(round(font_scale * 1.6)))
    names = [class_name(class_names, c) for c in ids]
    sizes = [cv2.getTextSize(n, FONT, font_scale, thick) for n in names]
    th = max(s[0][1] + s[1] for s in sizes)
    pad = max(2, int(round(6 * font_scale)))
    row_h = th + 2 * pad
    sw = th  # square swatch as tall as the text
    entry_w = [sw + 2 * pad + s[0][0] + pad for s in sizes]

    # place entries: (x, y) per entry
    pos: list[tuple[int, int]] = []
    if max_width is not None:
        x = y = 0
        for ew in entry_w:
            if x > 0 and x + ew > max_width:
                x, y = 0, y + row_h
            pos.append((x, y))
            x += ew
        width = max(px + ew for (px, _), ew in zip(pos, entry_w))
        height = max(py for _, py in pos) + row_h
    else:
        per_col = len(ids) if not max_height else max(1, max_height // row_h)
        x = 0
        col_w = 0
        for k, ew in enumerate(entry_w):
            if k and k % per_col == 0:
                x += col_w
                col_w = 0
            pos.append((x, (k % per_col) * row_h))
            col_w = max(col_w, ew)
        width = x + col_w
        height = min(len(ids), per_col) * row_h
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)[:3]
    for (x, y), c, n, s in zip(pos, ids, names, sizes):
        cv2.rectangle(out, (x + pad, y + pad), (x + pad + sw - 1, y + pad + th - 1), class_rgb(colors, c), -1)
        cv2.putText(out, n, (x + sw + 2 * pad, y + pad + s[0][1]), FONT, font_scale, TEXT_COLOR, thick,
                    cv2.LINE_AA)
    return out


def append_legend(
    rendered,
    class_ids: Sequence[int],
    class_names: Sequence[str] | None = None,
    colors: Sequence[Color] | None = None,
    side: str = "right",
    *,
    background: Color = (32, 32, 32),
) -> np.ndarray:
    """``rendered`` with a legend strip of ``class_ids`` on its ``"right"`` (columns wrapped to the image height)
    or ``"bottom"`` (entries wrapped to the image width). Font scaled to the image. No class: a copy."""
    img = as_rgb(rendered)
    if side not in ("right", "bottom"):
        raise ValueError(f"side must be 'right' or 'bottom', got {side!r}")
    h, w = img.shape[:2]
    scale, _ = font_metrics(h, w, None)
    if side == "right":
        strip = legend(class_ids, class_names, colors, font_scale=scale, max_height=h, background=background)
        if strip.size == 0:
            return img
        out = np.empty((max(h, strip.shape[0]), w + strip.shape[1], 3), dtype=np.uint8)
        out[:] = np.asarray(background, dtype=np.uint8)[:3]
        out[:h, :w] = img
        out[: strip.shape[0], w:] = strip
        return out
    strip = legend(class_ids, class_names, colors, font_scale=scale, max_width=w, background=background)
    if strip.size == 0:
        return img
    out = np.empty((h + strip.shape[0], max(w, strip.shape[1]), 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)[:3]
    out[:h, :w] = img
    out[h:, : strip.shape[1]] = strip
    return out
