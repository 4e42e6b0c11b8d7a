"""Rendering of results as RGB overlays: pure functions, numpy/PIL/cv2 in, ``(H, W, 3)`` uint8 RGB out.

Used by the predict CLI and the Gradio editor. Nothing here modifies its inputs.

Colours. A class has one colour (``colors[class_id]`` of the config, or the config's default palette).
Stuff segments are drawn in their class colour; thing segments in a colour derived from the class colour
and the segment id only (:func:`segment_color`), so a segment keeps its colour when the result is
re-rendered after an unrelated edit, and two things of one class differ.

Fills are ``round(image * (1 - alpha) + colour * alpha)``; void (id 0, or an id missing from the segment
table) keeps the image's pixels. Outlines are the pixels of a segment that touch another segment or void
(4-neighbourhood), drawn opaque in the segment's colour: 1 px on each side of a border between two
segments. Labels ("class score") sit at the point of the segment farthest from its border, white on a
dark box, with a font scaled to the image size.

Everything is vectorised (a colour lookup table indexed by the segment map, borders from the map and its
shifted copies); the only loops over segments draw labels.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

from .config import default_color as _config_default_color
from .structures import InstanceResult, PanopticResult, SemanticResult

__all__ = [
    "append_legend",
    "default_color",
    "draw_instances",
    "draw_panoptic",
    "draw_semantic",
    "draw_uncertainty",
    "legend",
    "segment_color",
]

Color = Sequence[int]

_HIGHLIGHT_COLOR = (255, 255, 255)
_TEXT_COLOR = (255, 255, 255)
_BOX_OPACITY = 0.6  # the dark box behind label text: image * (1 - 0.6)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


# --------------------------------------------------------------------------------------------
# colours


def default_color(class_id: int) -> tuple[int, int, int]:
    """The config's default colour of a class; used when ``colors`` is missing."""
    return tuple(_config_default_color(class_id))


def _class_color(colors: Sequence[Color] | None, class_id: int) -> tuple[int, int, int]:
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


# --------------------------------------------------------------------------------------------
# input checks


def _as_rgb(image) -> np.ndarray:
    """(H, W, 3) uint8 from an RGB/RGBA/grayscale array or PIL image; a contiguous copy."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        elif np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr).copy()


def _check_size(image: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if tuple(image.shape[:2]) != tuple(shape[:2]):
        raise ValueError(
            f"the image is {image.shape[0]}x{image.shape[1]} (HxW) but the {what} is {shape[0]}x{shape[1]}; "
            "render the result on the image it was predicted for (or resize one of them first)"
        )


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha


# --------------------------------------------------------------------------------------------
# vectorised building blocks


def _compact_index(label_map: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Map each pixel of ``label_map`` to 1 + the position of its value in ``ids``; 0 when it is not in ``ids``."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0 or label_map.size == 0:
        return np.zeros(label_map.shape, dtype=np.int32)
    lo, hi = int(label_map.min()), int(label_map.max())
    if hi < (1 << 20):  # direct lookup table: the fast path
        if lo < -1:
            label_map = np.maximum(label_map, -1)
        lut = np.zeros(hi + 2, dtype=np.int32)  # lut[-1] (negative ids) stays 0
        ok = (ids >= 0) & (ids <= hi)
        lut[ids[ok]] = np.flatnonzero(ok) + 1
        return lut[label_map]
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    where = np.searchsorted(sorted_ids, label_map)
    where_c = np.minimum(where, len(sorted_ids) - 1)
    hit = sorted_ids[where_c] == label_map
    return np.where(hit, order[where_c] + 1, 0).astype(np.int32)


def _borders(idx: np.ndarray) -> np.ndarray:
    """Pixels with a non-zero index that have a 4-neighbour with a different index."""
    b = np.zeros(idx.shape, dtype=bool)
    d = idx[:, 1:] != idx[:, :-1]
    b[:, 1:] |= d
    b[:, :-1] |= d
    d = idx[1:, :] != idx[:-1, :]
    b[1:, :] |= d
    b[:-1, :] |= d
    b &= idx > 0
    return b


def _gather_rgb(lut: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``lut[idx]`` as a contiguous (H, W, 3) uint8 image (a packed 32-bit gather: ~10x faster than fancy
    indexing of the (n, 3) table)."""
    lut4 = np.zeros((len(lut), 4), dtype=np.uint8)
    lut4[:, :3] = lut
    packed = lut4.view(np.uint32).ravel()[idx]
    return cv2.cvtColor(packed.view(np.uint8).reshape(*idx.shape, 4), cv2.COLOR_RGBA2RGB)


def _fill(image: np.ndarray, idx: np.ndarray, lut: np.ndarray, alpha: float, outline: bool) -> np.ndarray:
    """Alpha-blend ``lut[idx]`` over ``image`` where ``idx > 0``; opaque outlines; void untouched."""
    out = image.copy()
    fg = idx > 0
    if not fg.any():
        return out
    col = _gather_rgb(lut, idx)
    blended = cv2.addWeighted(image, 1.0 - alpha, col, alpha, 0.0)
    cv2.copyTo(blended, fg.view(np.uint8), out)
    if outline:
        cv2.copyTo(col, _borders(idx).view(np.uint8), out)
    return out


def _bboxes(idx: np.ndarray, n: int) -> np.ndarray:
    """(n + 1, 4) int boxes ``y0, y1, x0, x1`` (exclusive ends) of each index; ``-1`` rows for absent ones.

    A region's extreme pixels lie on its boundary (image edges included), so only boundary pixels are reduced.
    """
    h, w = idx.shape
    edge = np.zeros(idx.shape, dtype=bool)
    d = idx[:, 1:] != idx[:, :-1]
    edge[:, 1:] |= d
    edge[:, :-1] |= d
    d = idx[1:, :] != idx[:-1, :]
    edge[1:, :] |= d
    edge[:-1, :] |= d
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    ys, xs = np.nonzero(edge)
    labs = idx[ys, xs]
    y0 = np.full(n + 1, h, dtype=np.int64)
    x0 = np.full(n + 1, w, dtype=np.int64)
    y1 = np.full(n + 1, -1, dtype=np.int64)
    x1 = np.full(n + 1, -1, dtype=np.int64)
    np.minimum.at(y0, labs, ys)
    np.minimum.at(x0, labs, xs)
    np.maximum.at(y1, labs, ys)
    np.maximum.at(x1, labs, xs)
    out = np.stack([y0, y1 + 1, x0, x1 + 1], axis=1)
    out[y1 < 0] = -1
    return out


def _anchor(mask: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> tuple[int, int]:
    """(x, y) of the pixel of ``mask`` (within the given box; ``mask`` may be that crop already) farthest from
    its border and the image edges."""
    crop = np.zeros((y1 - y0 + 2, x1 - x0 + 2), dtype=np.uint8)
    crop[1:-1, 1:-1] = mask if mask.shape == (y1 - y0, x1 - x0) else mask[y0:y1, x0:x1]
    dist = cv2.distanceTransform(crop, cv2.DIST_L2, 3)
    k = int(np.argmax(dist))
    cy, cx = divmod(k, crop.shape[1])
    return (x0 + cx - 1, y0 + cy - 1)


def _font(h: int, w: int, font_scale: float | None) -> tuple[float, int]:
    # proportional to the image, so the text keeps its on-screen size when the image is shown at a fixed width
    scale = float(font_scale) if font_scale else max(0.4, (h * w) ** 0.5 / 1300.0)
    return scale, max(1, int(round(scale * 1.6)))


def _draw_text(img: np.ndarray, text: str, x: int, y: int, scale: float, thickness: int,
               center: bool = True) -> None:
    """Text on a dark box, in place. ``center``: the box is centred on (x, y), else (x, y) is its top-left;
    either way it is moved to lie inside the image when it fits."""
    h, w = img.shape[:2]
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
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
    cv2.putText(img, text, (bx + pad, by + pad + th), _FONT, scale, _TEXT_COLOR, thickness, cv2.LINE_AA)


def _class_name(class_names: Sequence[str] | None, class_id: int) -> str:
    if class_names is not None and 0 <= class_id < len(class_names):
        return str(class_names[class_id])
    return f"class {class_id}"


def _label_text(name: str, score: float | None) -> str:
    if score is None:
        return name
    score = float(score)
    return name if not np.isfinite(score) else f"{name} {score:.2f}"


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
    img = _as_rgb(image)
    seg_map = np.asarray(result.segment_map)
    _check_size(img, seg_map.shape, "segment map")
    alpha = _check_alpha(alpha)
    segments = list(result.segments)
    if not segments:
        return img

    ids = np.array([s.id for s in segments], dtype=np.int64)
    idx = _compact_index(seg_map, ids)
    lut = np.zeros((len(segments) + 1, 3), dtype=np.uint8)
    for i, s in enumerate(segments):
        thing = bool(is_thing[s.category_id]) if is_thing is not None and 0 <= s.category_id < len(is_thing) \
            else bool(s.isthing)
        lut[i + 1] = segment_color(_class_color(colors, s.category_id), s.id, thing)
    out = _fill(img, idx, lut, alpha, outline)

    boxes = None
    sel = None
    if highlight is not None:
        hits = np.flatnonzero(ids == int(highlight))
        sel = int(hits[-1]) + 1 if hits.size else None  # a duplicated id's pixels go to its last entry
    if labels or sel is not None:
        boxes = _bboxes(idx, len(segments))
    scale, thick = _font(*img.shape[:2], font_scale)
    label_pos: dict[int, tuple[int, int]] = {}
    if labels:
        for i, s in enumerate(segments):
            y0, y1, x0, x1 = boxes[i + 1]
            if y0 < 0:
                continue
            label_pos[i + 1] = _anchor(idx[y0:y1, x0:x1] == i + 1, y0, y1, x0, x1)
            x, y = label_pos[i + 1]
            _draw_text(out, _label_text(_class_name(class_names, s.category_id), s.score), x, y, scale, thick)

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
            _draw_text(out, _label_text(_class_name(class_names, s.category_id), s.score), x, y, scale, thick)
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
    img = _as_rgb(image)
    alpha = _check_alpha(alpha)
    masks = np.ascontiguousarray(result.masks, dtype=bool)
    if masks.ndim == 3:
        _check_size(img, masks.shape[1:], "instance masks")
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
    scale, thick = _font(h, w, font_scale)
    line = max(1, int(round(max(h, w) / 400)))
    out = img
    drawn: list[tuple[int, tuple[int, int, int], tuple[int, int, int, int]]] = []
    for i in order:
        m = masks[i].view(np.uint8)
        x0, y0, bw, bh = cv2.boundingRect(m)
        if bw == 0 or bh == 0:
            continue
        y1, x1 = y0 + bh, x0 + bw
        color = segment_color(_class_color(colors, int(result.labels[i])), int(i) + 1, True)
        region = out[y0:y1, x0:x1]
        paint = np.empty_like(region)
        paint[:] = color
        cv2.copyTo(cv2.addWeighted(region, 1.0 - alpha, paint, alpha, 0.0), m[y0:y1, x0:x1], region)
        drawn.append((int(i), color, (y0, y1, x0, x1)))
    for i, color, (y0, y1, x0, x1) in drawn:
        if outline:  # mask pixels with an in-image 4-neighbour outside the mask (box grown by 1, clipped)
            ya, yb, xa, xb = max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)
            b = _borders(masks[i, ya:yb, xa:xb].view(np.int8))
            out[ya:yb, xa:xb][b] = color
        if boxes:
            bx0, by0, bx1, by1 = (int(round(v)) for v in result.boxes[i])
            cv2.rectangle(out, (bx0, by0), (bx1 - 1, by1 - 1), color, line)
    if labels:
        for i, _color, (y0, y1, x0, x1) in drawn:
            text = _label_text(_class_name(class_names, int(result.labels[i])), float(scores[i]))
            if boxes:
                bx0, by0 = int(round(result.boxes[i][0])), int(round(result.boxes[i][1]))
                _draw_text(out, text, bx0, by0, scale, thick, center=False)
            else:
                x, y = _anchor(masks[i], y0, y1, x0, x1)
                _draw_text(out, text, x, y, scale, thick)
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
    img = _as_rgb(image)
    if isinstance(label_map, SemanticResult):
        label_map = label_map.label_map
    lm = np.asarray(label_map)
    if lm.ndim != 2:
        raise ValueError(f"label_map must be (H, W), got shape {lm.shape}")
    _check_size(img, lm.shape, "label map")
    alpha = _check_alpha(alpha)
    if lm.dtype.kind not in "iu":
        lm = lm.astype(np.int64)
    present = _present(lm, ignore_value)
    if present.size == 0:
        return img
    idx = _compact_index(lm, present)
    lut = np.zeros((len(present) + 1, 3), dtype=np.uint8)
    for k, c in enumerate(present.tolist()):
        lut[k + 1] = _class_color(colors, c)
    out = _fill(img, idx, lut, alpha, outline)
    if labels:
        scale, thick = _font(*img.shape[:2], font_scale)
        boxes = _bboxes(idx, len(present))
        for k, c in enumerate(present.tolist()):
            y0, y1, x0, x1 = boxes[k + 1]
            if y0 < 0:
                continue
            x, y = _anchor(idx[y0:y1, x0:x1] == k + 1, y0, y1, x0, x1)
            _draw_text(out, _class_name(class_names, c), x, y, scale, thick)
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
    img = _as_rgb(image)
    u = np.asarray(uncertainty_map, dtype=np.float32)
    if u.ndim == 3 and u.shape[0] == 1:
        u = u[0]
    if u.ndim != 2:
        raise ValueError(f"uncertainty_map must be (H, W), got shape {u.shape}")
    _check_size(img, u.shape, "uncertainty map")
    alpha = _check_alpha(alpha)
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


# --------------------------------------------------------------------------------------------
# legend


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
    names = [_class_name(class_names, c) for c in ids]
    sizes = [cv2.getTextSize(n, _FONT, font_scale, thick) for n in names]
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
        cv2.rectangle(out, (x + pad, y + pad), (x + pad + sw - 1, y + pad + th - 1), _class_color(colors, c), -1)
        cv2.putText(out, n, (x + sw + 2 * pad, y + pad + s[0][1]), _FONT, font_scale, _TEXT_COLOR, thick,
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
    img = _as_rgb(rendered)
    if side not in ("right", "bottom"):
        raise ValueError(f"side must be 'right' or 'bottom', got {side!r}")
    h, w = img.shape[:2]
    scale, _ = _font(h, w, None)
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
