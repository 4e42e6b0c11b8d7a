"""The overlays: panoptic, instance and semantic results and uncertainty maps drawn over an image.

Why a module of its own: these are the public drawing functions; colours (``colors``), input checks
(``checks``), the vectorised building blocks (``raster``) and label text (``text``) live apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..structures import InstanceResult, PanopticResult, SemanticResult
from .checks import as_rgb, check_alpha, check_size
from .colors import Color, class_rgb, segment_color
from .raster import bboxes, blend_fill, border_mask, compact_index, label_anchor
from .text import class_name, draw_text, font_metrics, label_text

__all__ = ["draw_instances", "draw_panoptic", "draw_semantic", "draw_uncertainty"]

_HIGHLIGHT_COLOR = (255, 255, 255)


# --------------------------------------------------------------------------------------------
# panoptic


def draw_panoptic(
    image,
    result: PanopticResult,
    class_names: Sequence[str] | None = None,
    colors: Sequence[Color] | None = None,
    is_thing: Sequence[bool] | None = None,
    alpha: float = 0.5,
    outline: bool = True,
    labels: bool = True,
    highlight: int | None = None,
    *,
    dim: float = 0.4,
    font_scale: float | None = None,
) -> np.ndarray:
    """Overlay of a panoptic result on ``image`` (same H x W, else ValueError).

    ``colors`` / ``is_thing`` are the config's per-class lists (``is_thing`` None: each segment's ``isthing``).
    ``highlight``: the id of a selected segment, drawn with a thick white outline (inside the segment) and its
    label on top, while every pixel outside it is dimmed (multiplied by ``dim``); an id that is not in the
    result is ignored. With no segment present the image is returned unchanged (as a copy).
    """
    img = as_rgb(image)
    seg_map = np.asarray(result.segment_map)
    check_size(img, seg_map.shape, "segment map")
    alpha = check_alpha(alpha)
    segments = list(result.segments)
    if not segments:
        return img

    ids = np.array([s.id for s in segments], dtype=np.int64)
    idx = compact_index(seg_map, ids)
    lut = np.zeros((len(segments) + 1, 3), dtype=np.uint8)
    for i, s in enumerate(segments):
        thing = bool(is_thing[s.category_id]) if is_thing is not None and 0 <= s.category_id < len(is_thing) \
            else bool(s.isthing)
        lut[i + 1] = segment_color(class_rgb(colors, s.category_id), s.id, thing)
    out = blend_fill(img, idx, lut, alpha, outline)

    boxes = None
    sel = None
    if highlight is not None:
        hits = np.flatnonzero(ids == int(highlight))
        sel = int(hits[-1]) + 1 if hits.size else None  # a duplicated id's pixels go to its last entry
    if labels or sel is not None:
        boxes = bboxes(idx, len(segments))
    scale, thick = font_metrics(*img.shape[:2], font_scale)
    label_pos: dict[int, tuple[int, int]] = {}
    if labels:
        for i, s in enumerate(segments):
            y0, y1, x0, x1 = boxes[i + 1]
            if y0 < 0:
                continue
            label_pos[i + 1] = label_anchor(idx[y0:y1, x0:x1] == i + 1, y0, y1, x0, x1)
            x, y = label_pos[i + 1]
            draw_text(out, label_text(class_name(class_names, s.category_id), s.score), x, y, scale, thick)

    if sel is not None and boxes[sel, 0] >= 0:
        mask = (idx == sel).view(np.uint8)
        cv2.copyTo(cv2.convertScaleAbs(out, alpha=float(dim)), 1 - mask, out)  # rounds like round(x * dim)
        width = max(2, int(round(max(img.shape[:2]) / 200)))
        kernel = np.ones((2 * width + 1, 2 * width + 1), dtype=np.uint8)
        inner = cv2.erode(mask, kernel, borderType=cv2.BORDER_REPLICATE)
        out[(mask > inner)] = _HIGHLIGHT_COLOR
        if labels:
            s = segments[sel - 1]
            x, y = label_pos[sel]
            draw_text(out, label_text(class_name(class_names, s.category_id), s.score), x, y, scale, thick)
    return out


# --------------------------------------------------------------------------------------------
# instances


def draw_instances(
    image,
    result: InstanceResult,
    class_names: Sequence[str] | None = None,
    colors: Sequence[Color] | None = None,
    score_threshold: float = 0.5,
    alpha: float = 0.5,
    outline: bool = True,
    boxes: bool = True,
    labels: bool = True,
    *,
    font_scale: float | None = None,
) -> np.ndarray:
    """Overlay of possibly overlapping instances with ``score >= score_threshold``.

    Masks are alpha-blended one after the other in increasing score order, so the best instance is on top and
    overlaps mix colours. Instance ``i`` (its index in ``result``) is coloured ``segment_color(class colour,
    i + 1)``. Outlines, boxes and "class score" labels (at the box's top-left corner, or at the mask's
    innermost point without boxes) are drawn after all fills, also in score order.
    """
    img = as_rgb(image)
    alpha = check_alpha(alpha)
    masks = np.ascontiguousarray(result.masks, dtype=bool)
    if masks.ndim == 3:
        check_size(img, masks.shape[1:], "instance masks")
    if len(result) == 0:
        return img
    if masks.ndim != 3:
        raise ValueError(f"instance masks must be (N, H, W), got shape {masks.shape}")
    scores = np.asarray(result.scores, dtype=np.float32)
    keep = np.flatnonzero(scores >= score_threshold)
    if keep.size == 0:
        return img
    order = keep[np.argsort(scores[keep], kind="stable")]  # ascending: best drawn last, on top
    h, w = img.shape[:2]
    scale, thick = font_metrics(h, w, font_scale)
    line = max(1, int(round(max(h, w) / 400)))
    out = img
    drawn: list[tuple[int, tuple[int, int, int], tuple[int, int, int, int]]] = []
    for i in order:
        m = masks[i].view(np.uint8)
        x0, y0, bw, bh = cv2.boundingRect(m)
        if bw == 0 or bh == 0:
            continue
        y1, x1 = y0 + bh, x0 + bw
        color = segment_color(class_rgb(colors, int(result.labels[i])), int(i) + 1, True)
        region = out[y0:y1, x0:x1]
        paint = np.empty_like(region)
        paint[:] = color
        cv2.copyTo(cv2.addWeighted(region, 1.0 - alpha, paint, alpha, 0.0), m[y0:y1, x0:x1], region)
        drawn.append((int(i), color, (y0, y1, x0, x1)))
    for i, color, (y0, y1, x0, x1) in drawn:
        if outline:  # mask pixels with an in-image 4-neighbour outside the mask (box grown by 1, clipped)
            ya, yb, xa, xb = max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)
            b = border_mask(masks[i, ya:yb, xa:xb].view(np.int8))
            out[ya:yb, xa:xb][b] = color
        if boxes:
            bx0, by0, bx1, by1 = (int(round(v)) for v in result.boxes[i])
            cv2.rectangle(out, (bx0, by0), (bx1 - 1, by1 - 1), color, line)
    if labels:
        for i, _color, (y0, y1, x0, x1) in drawn:
            text = label_text(class_name(class_names, int(result.labels[i])), float(scores[i]))
            if boxes:
                bx0, by0 = int(round(result.boxes[i][0])), int(round(result.boxes[i][1]))
                draw_text(out, text, bx0, by0, scale, thick, center=False)
            else:
                x, y = label_anchor(masks[i], y0, y1, x0, x1)
                draw_text(out, text, x, y, scale, thick)
    return out


# --------------------------------------------------------------------------------------------
# semantic


def draw_semantic(
    image,
    label_map,
    class_names: Sequence[str] | None = None,
    colors: Sequence[Color] | None = None,
    ignore_value: int = 255,
    alpha: float = 0.5,
    outline: bool = True,
    labels: bool = True,
    *,
    font_scale: float | None = None,
) -> np.ndarray:
    """Overlay of a (H, W) class map (or a ``SemanticResult``) in class colours; ``ignore_value`` and negative
    ids are left as the image. One label (the class name) per class present, at its innermost point."""
    img = as_rgb(image)
    if isinstance(label_map, SemanticResult):
        label_map = label_map.label_map
    lm = np.asarray(label_map)
    if lm.ndim != 2:
        raise ValueError(f"label_map must be (H, W), got shape {lm.shape}")
    check_size(img, lm.shape, "label map")
    alpha = check_alpha(alpha)
    if lm.dtype.kind not in "iu":
        lm = lm.astype(np.int64)
    present = _present(lm, ignore_value)
    if present.size == 0:
        return img
    idx = compact_index(lm, present)
    lut = np.zeros((len(present) + 1, 3), dtype=np.uint8)
    for k, c in enumerate(present.tolist()):
        lut[k + 1] = class_rgb(colors, c)
    out = blend_fill(img, idx, lut, alpha, outline)
    if labels:
        scale, thick = font_metrics(*img.shape[:2], font_scale)
        boxes = bboxes(idx, len(present))
        for k, c in enumerate(present.tolist()):
            y0, y1, x0, x1 = boxes[k + 1]
            if y0 < 0:
                continue
            x, y = label_anchor(idx[y0:y1, x0:x1] == k + 1, y0, y1, x0, x1)
            draw_text(out, class_name(class_names, c), x, y, scale, thick)
    return out


def _present(lm: np.ndarray, ignore_value: int) -> np.ndarray:
    """Sorted class ids (>= 0, not ``ignore_value``) present in a map, without sorting every pixel."""
    if lm.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(lm.min()), int(lm.max())
    if hi < 0:
        return np.zeros(0, dtype=np.int64)
    if hi < (1 << 20):
        shifted = np.maximum(lm, -1) + 1 if lo < 0 else lm  # negative ids all counted in bin 0, then dropped
        counts = np.bincount(shifted.ravel())
        ids = np.flatnonzero(counts[1:]) if lo < 0 else np.flatnonzero(counts)
    else:
        ids = np.unique(lm[lm >= 0])
    return ids[ids != ignore_value].astype(np.int64)


# --------------------------------------------------------------------------------------------
# uncertainty


def draw_uncertainty(
    image,
    uncertainty_map,
    alpha: float = 0.5,
    colormap: int = cv2.COLORMAP_INFERNO,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Heat map of a (H, W) float map blended over the image (``alpha`` on the heat map).

    The map is scaled to [0, 1] by ``vmin``/``vmax`` (default: its own finite min and max; a constant map is 0);
    NaN counts as 0. ``colormap`` is any ``cv2.COLORMAP_*``.
    """
    img = as_rgb(image)
    u = np.asarray(uncertainty_map, dtype=np.float32)
    if u.ndim == 3 and u.shape[0] == 1:
        u = u[0]
    if u.ndim != 2:
        raise ValueError(f"uncertainty_map must be (H, W), got shape {u.shape}")
    check_size(img, u.shape, "uncertainty map")
    alpha = check_alpha(alpha)
    if u.size == 0:
        return img
    finite = np.isfinite(u)
    lo = float(vmin) if vmin is not None else (float(u[finite].min()) if finite.any() else 0.0)
    hi = float(vmax) if vmax is not None else (float(u[finite].max()) if finite.any() else 1.0)
    span = hi - lo
    norm = (np.where(finite, u, lo) - lo) / span if span > 0 else np.zeros_like(u)
    gray = (np.clip(norm, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(gray, colormap), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(img, 1.0 - alpha, heat, alpha, 0.0)
