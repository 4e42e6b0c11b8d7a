"""Label text on the overlays and the legend: font size scaled to the image, text on a dark box.

Why a module of its own: the overlays and the legend write class names the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

TEXT_COLOR = (255, 255, 255)
_BOX_OPACITY = 0.6  # the dark box behind label text: image * (1 - 0.6)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def font_metrics(h: int, w: int, font_scale: float | None) -> tuple[float, int]:
    # proportional to the image, so the text keeps its on-screen size when the image is shown at a fixed width
    scale = float(font_scale) if font_scale else max(0.4, (h * w) ** 0.5 / 1300.0)
    return scale, max(1, int(round(scale * 1.6)))


def draw_text(img: np.ndarray, text: str, x: int, y: int, scale: float, thickness: int,
               center: bool = True) -> None:
    """Text on a dark box, in place. ``center``: the box is centred on (x, y), else (x, y) is its top-left;
    either way it is moved to lie inside the image when it fits."""
    h, w = img.shape[:2]
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(1, int(round(2 * scale)))
    bw, bh = tw + 2 * pad, th + base + 2 * pad
    if center:
        bx, by = x - bw // 2, y - bh // 2
    else:
        bx, by = x, y
    bx = max(0, min(bx, w - bw))
    by = max(0, min(by, h - bh))
    ya, yb, xa, xb = max(by, 0), min(by + bh, h), max(bx, 0), min(bx + bw, w)
    if ya >= yb or xa >= xb:
        return
    region = img[ya:yb, xa:xb]
    region[:] = (region.astype(np.float32) * (1.0 - _BOX_OPACITY) + 0.5).astype(np.uint8)
    cv2.putText(img, text, (bx + pad, by + pad + th), FONT, scale, TEXT_COLOR, thickness, cv2.LINE_AA)


def class_name(class_names: Sequence[str] | None, class_id: int) -> str:
    if class_names is not None and 0 <= class_id < len(class_names):
        return str(class_names[class_id])
    return f"class {class_id}"


def label_text(name: str, score: float | None) -> str:
    if score is None:
        return name
    score = float(score)
    return name if not np.isfinite(score) else f"{name} {score:.2f}"
