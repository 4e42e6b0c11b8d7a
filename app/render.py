"""What the editor shows, as pure functions: the canvas overlay, the segment table, the relabel menu.

Numpy in, numpy / plain lists out; no Gradio. The canvas always shows the editable annotation
(``EditSession``) as the chosen task sees it, so an edit is visible in all three views; the
uncertainty view shows the model's own hesitation (``Prediction.uncertainty``) instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from m2f_core.visualize import draw_instances, draw_panoptic, draw_semantic, draw_uncertainty

from .editing import EditSession

if TYPE_CHECKING:
    from m2f_core.config import Mask2FormerConfig
    from m2f_core.prediction import Prediction
    from m2f_core.structures import Candidate

__all__ = ["TABLE_HEADERS", "candidate_preview", "display_scale", "relabel_choices", "render_canvas",
           "render_ground_truth", "segment_rows"]

TABLE_HEADERS = ["sel", "id", "class", "kind", "score", "area", "source"]
SELECTED_MARK = "●"
HIGHLIGHT_COLOR = (255, 255, 255)
DIM = 0.45


def display_scale(shape: tuple[int, int], max_side: int = 0, min_side: int = 0) -> float:
    """Factor from image pixels to displayed pixels: a longest side above ``max_side`` is scaled down to it,
    one below ``min_side`` up to it (the browser never upscales, and click positions must stay exact)."""
    side = max(shape)
    if side <= 0:
        return 1.0
    if max_side > 0 and side > max_side:
        return max_side / side
    if min_side > 0 and side < min_side:
        return min_side / side
    return 1.0


def _rescale(out: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return out
    h, w = out.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(out, size, interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_NEAREST)


def _highlight(out: np.ndarray, seg_map: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """Dim everything outside the segments ``ids`` and outline each of them in white (in place)."""
    ids = [int(i) for i in ids]
    if not ids:
        return out
    sel = np.isin(seg_map, ids)
    if not sel.any():
        return out
    m = sel.view(np.uint8)
    cv2.copyTo(cv2.convertScaleAbs(out, alpha=DIM), 1 - m, out)
    width = max(2, int(round(max(seg_map.shape) / 250)))
    kernel = np.ones((2 * width + 1, 2 * width + 1), dtype=np.uint8)
    for sid in ids:  # one outline per segment, so two touching selected segments stay distinguishable
        one = (seg_map == sid).view(np.uint8)
        inner = cv2.erode(one, kernel, borderType=cv2.BORDER_REPLICATE)
        out[one > inner] = HIGHLIGHT_COLOR
    return out


def render_canvas(image: np.ndarray, session: EditSession, task: str, config: Mask2FormerConfig, *,
                  opacity: float = 0.5, outline: bool = True, selected: Sequence[int] = (),
                  uncertainty: np.ndarray | None = None, max_side: int = 0, min_side: int = 0) -> np.ndarray:
    """The overlay of ``session`` as ``task`` sees it, the selection highlighted, scaled by ``display_scale``.

    ``uncertainty`` (an (H, W) map) replaces the overlay by a heat map (the selection still outlined).
    """
    names, colors = config.class_names, config.colors
    if uncertainty is not None:
        out = draw_uncertainty(image, uncertainty, alpha=opacity, vmin=0.0, vmax=1.0)
    elif task == "panoptic":
        out = draw_panoptic(image, session.panoptic_result(), names, colors, session.is_thing, alpha=opacity,
                            outline=outline)
    elif task == "instance":
        out = draw_instances(image, session.instance_view(), names, colors, score_threshold=0.0, alpha=opacity,
                             outline=outline, boxes=True)
    elif task == "semantic":
        out = draw_semantic(image, session.semantic_view().label_map, names, colors, alpha=opacity,
                            outline=outline)
    else:
        raise ValueError(f"unknown task {task!r}")
    if out is image:
        out = out.copy()
    _highlight(out, session.segment_map, selected)
    return _rescale(out, display_scale(out.shape[:2], max_side, min_side))


def render_ground_truth(image: np.ndarray, panoptic, semantic: np.ndarray | None, class_names: Sequence[str],
                        colors: Sequence[Sequence[int]] | None, is_thing: Sequence[bool] | None,
                        opacity: float = 0.5, max_side: int = 0, min_side: int = 0) -> np.ndarray | None:
    """A dataset's ground truth drawn like a prediction (panoptic if it has one, else semantic); None if none."""
    if panoptic is not None:
        out = draw_panoptic(image, panoptic, class_names, colors, is_thing, alpha=opacity)
    elif semantic is not None:
        out = draw_semantic(image, semantic, class_names, colors, alpha=opacity)
    else:
        return None
    return _rescale(out, display_scale(out.shape[:2], max_side, min_side))


def segment_rows(session: EditSession, selected: Sequence[int] = ()) -> list[list]:
    """One row per segment: ``TABLE_HEADERS`` (selection mark, id, class, thing/stuff, score, area, source)."""
    chosen = {int(i) for i in selected}
    rows = []
    for s in session.segments:
        rows.append([SELECTED_MARK if s.id in chosen else "", s.id, session.class_names[s.category_id],
                     "thing" if s.isthing else "stuff", round(float(s.score), 3), int(s.area), s.source])
    return rows


def relabel_choices(session: EditSession, prediction: Prediction | None, segment_id: int | None,
                    k: int = 5) -> list[tuple[str, int]]:
    """(label, class id) for a relabel menu: the model's top-k classes for the segment first, then the rest.

    The top-k come from the queries behind the segment (``session.model_queries``; a merged stuff segment
    sums its queries' class probabilities); an edited segment or a dropped prediction gives no top-k.
    """
    names = session.class_names
    top: list[tuple[int, float]] = []
    queries = session.model_queries.get(int(segment_id), []) if segment_id is not None else []
    if prediction is not None and queries:
        totals: dict[int, float] = {}
        for q in queries:
            for c, p in prediction.top_classes(q, k=min(k, len(names))):
                totals[c] = totals.get(c, 0.0) + p / len(queries)
        top = sorted(totals.items(), key=lambda cp: -cp[1])[:k]
    seen = {c for c, _ in top}
    out = [(f"{names[c]} · {p:.2f}", c) for c, p in top]
    out += [(names[c], c) for c in range(len(names)) if c not in seen]
    return out


def candidate_preview(image: np.ndarray, candidate: Candidate, color: Sequence[int], max_side: int = 256,
                      ) -> np.ndarray:
    """A small picture of a recoverable query: its mask filled over the image, the rest dimmed."""
    mask = np.asarray(candidate.mask, dtype=bool)
    out = cv2.convertScaleAbs(image, alpha=DIM)
    fill = np.empty_like(image)
    fill[:] = np.asarray(color, dtype=np.uint8)[:3]
    blended = cv2.addWeighted(image, 0.45, fill, 0.55, 0.0)
    cv2.copyTo(blended, mask.view(np.uint8), out)
    return _rescale(out, display_scale(out.shape[:2], max_side))
