"""The editor's canvas actions: clicks (select, paint, erase, new segment, recover) and segment edits.

``EditEngine`` turns a click or a painted mask into one ``EditSession`` operation of the browser
session's current image, with its selection rules, and returns the message for the status line. A
user's mistake (nothing selected, no class chosen...) raises ``UserError``. It owns only the canvas
geometry (``max_side`` / ``min_side``: how the canvas is scaled for display) and asks the
``SharedModel`` for the current prediction (Recover). Running an action under the session lock and
rendering the ``Screen`` are the ``Workbench``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from .browser_session import BrowserSession, milliseconds
from .errors import UserError
from .render import display_scale
from .shared_model import SharedModel

__all__ = ["CLICK_MODES", "EditEngine"]

CLICK_MODES = ("Select", "Paint", "Erase", "New segment", "Recover")


class EditEngine:
    """Clicks and segment edits of a browser session's current image; each returns the status message."""

    def __init__(self, model: SharedModel, max_side: int = 1600, min_side: int = 640) -> None:
        self.model = model
        self.max_side = int(max_side)
        self.min_side = int(min_side)

    # ---------------------------------------------------------------------------- clicks
    def _session(self, s: BrowserSession):
        session = s.workspace.session() if s.workspace.current is not None else None
        if session is None:
            raise UserError("no image open: upload one or pick an example")
        return session

    def _to_image(self, s: BrowserSession, x: float, y: float) -> tuple[int, int]:
        """Displayed canvas pixel -> image pixel (the canvas may be scaled down)."""
        session = self._session(s)
        h, w = session.shape
        scale = display_scale((h, w), self.max_side, self.min_side)
        xi, yi = int(float(x) / scale), int(float(y) / scale)
        return min(max(xi, 0), w - 1), min(max(yi, 0), h - 1)

    def click(self, s: BrowserSession, x: float, y: float, mode: str = "Select", *, brush_size: float = 10.0,
              overwrite: bool = False, multi: bool = False, new_class: int | None = None) -> str | None:
        """A click on the canvas at displayed pixel (x, y), interpreted by ``mode`` (``CLICK_MODES``)."""
        session = self._session(s)
        xi, yi = self._to_image(s, x, y)
        radius = max(0.0, float(brush_size) / 2.0)
        if mode == "Select":
            return self._select(s, session.select(xi, yi), multi)
        if mode == "Recover":
            pred = self.model.prediction(s)
            s.candidates = pred.candidates_at(xi, yi, k=6)
            if not s.candidates:
                return f"no dropped query of the model covers ({xi}, {yi})"
            return f"{len(s.candidates)} candidates at ({xi}, {yi}): pick one to add it"
        if mode == "Paint":
            if not s.selected:
                raise UserError("select a segment to paint on (or use 'New segment')")
            sid = s.selected[-1]
            n = self._timed(s, lambda: session.paint(sid, [(xi, yi)], radius=radius, overwrite_others=overwrite))
            return f"painted {n} px into #{sid}"
        if mode == "Erase":
            target = s.selected[-1] if s.selected and not overwrite else None
            n = self._timed(s, lambda: session.erase([(xi, yi)], radius=radius, segment_id=target))
            return f"erased {n} px" + (f" of #{target}" if target is not None else "")
        if mode == "New segment":
            if new_class is None:
                raise UserError("choose the new segment's class first")
            sid = self._timed(s, lambda: session.new_segment([(xi, yi)], int(new_class),
                                                             overwrite_others=overwrite, radius=radius))
            s.selected = [sid]
            return f"new segment #{sid} ({session.class_names[session.segment(sid).category_id]}); " \
                   "switch to Paint to grow it"
        raise UserError(f"unknown click mode {mode!r}")

    def _select(self, s: BrowserSession, sid: int | None, multi: bool) -> str:
        if sid is None:
            if not multi:
                s.selected = []
            return "void: nothing selected" if not multi else ""
        if multi:
            if sid in s.selected:
                s.selected.remove(sid)
            else:
                s.selected.append(sid)
        else:
            s.selected = [sid]
        return ""

    def select_segment(self, s: BrowserSession, segment_id: int | None, multi: bool = False) -> str | None:
        """Select by id (a click on the segment table)."""
        session = self._session(s)
        if segment_id is None:
            return None
        sid = int(segment_id)
        if sid not in session:
            raise UserError(f"no segment #{sid}")
        return self._select(s, sid, multi)

    # ---------------------------------------------------------------------------- edits
    def _timed(self, s: BrowserSession, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        s.timings["edit"] = milliseconds(time.perf_counter() - start)
        return out

    def _require_selection(self, s: BrowserSession) -> list[int]:
        if not s.selected:
            raise UserError("select a segment first (click it on the image or in the table)")
        return list(s.selected)

    def relabel(self, s: BrowserSession, class_id: int | None) -> str | None:
        """Give the selected segments class ``class_id`` (stuff joins its class's segment)."""
        session = self._session(s)
        ids = self._require_selection(s)
        if class_id is None:
            return None
        cat = int(class_id)
        if all(session.segment(i).category_id == cat for i in ids):
            return None  # already that class (the dropdown may fire twice)
        new_ids = self._timed(s, lambda: [session.relabel(i, cat) for i in ids])
        s.selected = list(dict.fromkeys(new_ids))
        return f"relabelled {', '.join(f'#{i}' for i in ids)} → {session.class_names[cat]}"

    def delete(self, s: BrowserSession) -> str | None:
        session = self._session(s)
        ids = self._require_selection(s)
        self._timed(s, lambda: [session.delete(i) for i in ids])
        s.selected = []
        return f"deleted {', '.join(f'#{i}' for i in ids)}"

    def merge(self, s: BrowserSession) -> str | None:
        session = self._session(s)
        ids = self._require_selection(s)
        if len(ids) < 2:
            raise UserError("merge needs two or more selected segments: tick 'add clicks to the selection' "
                             "and click them (the first one keeps its class)")
        first = self._timed(s, lambda: session.merge(ids))
        s.selected = [first]
        return f"merged {', '.join(f'#{i}' for i in ids)} into #{first}"

    def split(self, s: BrowserSession) -> str | None:
        session = self._session(s)
        ids = self._require_selection(s)
        parts = self._timed(s, lambda: [p for i in ids for p in session.split(i)])
        s.selected = parts
        return f"split into {len(parts)} segments" if len(parts) > len(ids) else "already one connected piece"

    def undo(self, s: BrowserSession) -> str | None:
        label = self._timed(s, self._session(s).undo)
        return f"undid {label}" if label else "nothing to undo"

    def redo(self, s: BrowserSession) -> str | None:
        label = self._timed(s, self._session(s).redo)
        return f"redid {label}" if label else "nothing to redo"

    def recover(self, s: BrowserSession, index: int, overwrite: bool = False) -> str | None:
        """Add candidate ``index`` (from a Recover click) as a new segment."""
        session = self._session(s)
        if not 0 <= int(index) < len(s.candidates):
            raise UserError("no such candidate: click the image in Recover mode first")
        cand = s.candidates[int(index)]
        sid = self._timed(s, lambda: session.recover(cand, overwrite_others=overwrite))
        s.candidates = []
        s.selected = [sid]
        return f"recovered #{sid} ({session.class_names[cand.category_id]} {cand.score:.2f})"

    def apply_mask(self, s: BrowserSession, mask: np.ndarray, op: str, *, overwrite: bool = False,
                   new_class: int | None = None) -> str | None:
        """A painted (H, W) mask (the brush layer): ``op`` "paint" (into the selected segment), "erase" or "new"."""
        session = self._session(s)
        m = np.asarray(mask, dtype=bool)
        if m.shape != session.shape:  # the layer comes at display size when the canvas is scaled
            h, w = session.shape
            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
        if not m.any():
            raise UserError("nothing painted: draw on the brush layer first")
        if op == "paint":
            sid = self._require_selection(s)[-1]
            n = self._timed(s, lambda: session.paint(sid, m, overwrite_others=overwrite))
            return f"painted {n} px into #{sid}"
        if op == "erase":
            target = s.selected[-1] if s.selected and not overwrite else None
            n = self._timed(s, lambda: session.erase(m, segment_id=target))
            return f"erased {n} px"
        if op == "new":
            if new_class is None:
                raise UserError("choose the new segment's class first")
            sid = self._timed(s, lambda: session.new_segment(m, int(new_class), overwrite_others=overwrite))
            s.selected = [sid]
            return f"new segment #{sid}"
        raise UserError(f"unknown brush operation {op!r}")
