"""What the side panel shows, as pure functions: the segment table and the relabel menu.

Plain lists out; no Gradio. The canvas draws itself in the browser from what ``app.canvas_sync`` sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .editing import EditSession

if TYPE_CHECKING:
    from m2f_core.prediction import Prediction

__all__ = ["SELECTED_MARK", "TABLE_HEADERS", "relabel_choices", "segment_rows"]

TABLE_HEADERS = ["sel", "id", "class", "kind", "score", "area", "source"]
SELECTED_MARK = "●"


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
