"""The editor's canvas actions: clicks (select, paint, erase, new segment, recover) and segment edits.

Why a module of its own: these actions turn a click or a painted mask into one ``EditSession``
operation, with its selection rules and messages; opening images, rendering the ``Screen`` and
running an action under the session lock stay in ``app.workbench``. ``EditActions`` is a mixin of
``Workbench`` and relies on its ``_run``, ``_prediction``, ``max_side`` and ``min_side``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from .render import display_scale
from .workbench_session import EditorSession, Screen, _ms

__all__ = ["CLICK_MODES", "EditActions"]

CLICK_MODES = ("Select", "Paint", "Erase", "New segment", "Recover")


class EditActions:
    """Clicks and edits of ``Workbench`` (a mixin, see the module docstring)."""

    # ---------------------------------------------------------------------------- clicks
    def _session(self, s: EditorSession):
        session = s.workspace.session() if s.workspace.current is not None else None
        if session is None:
            raise ValueError("no image open: upload one or pick an example")
        return session

    def _to_image(self, s: EditorSession, x: float, y: float) -> tuple[int, int]:
        """Displayed canvas pixel -> image pixel (the canvas may be scaled down)."""
        session = self._session(s)
        h, w = session.shape
        scale = display_scale((h, w), self.max_side, self.min_side)
        xi, yi = int(float(x) / scale), int(float(y) / scale)
        return min(max(xi, 0), w - 1), min(max(yi, 0), h - 1)

    def click(self, s: EditorSession, x: float, y: float, mode: str = "Select", *, brush_size: float = 10.0,
              overwrite: bool = False, multi: bool = False, new_class: int | None = None) -> Screen:
        """A click on the canvas at displayed pixel (x, y), interpreted by ``mode`` (``CLICK_MODES``)."""
        def action():
            session = self._session(s)
            xi, yi = self._to_image(s, x, y)
            radius = max(0.0, float(brush_size) / 2.0)
            if mode == "Select":
                return self._select(s, session.select(xi, yi), multi)
            if mode == "Recover":
                pred = self._prediction(s)
                s.candidates = pred.candidates_at(xi, yi, k=6)
                if not s.candidates:
                    return f"no dropped query of the model covers ({xi}, {yi})"
                return f"{len(s.candidates)} candidates at ({xi}, {yi}): pick one to add it"
            if mode == "Paint":
                if not s.selected:
                    raise ValueError("select a segment to paint on (or use 'New segment')")
                sid = s.selected[-1]
                n = self._timed(s, lambda: session.paint(sid, [(xi, yi)], radius=radius, overwrite_others=overwrite))
                return f"painted {n} px into #{sid}"
            if mode == "Erase":
                target = s.selected[-1] if s.selected and not overwrite else None
                n = self._timed(s, lambda: session.erase([(xi, yi)], radius=radius, segment_id=target))
                return f"erased {n} px" + (f" of #{target}" if target is not None else "")
            if mode == "New segment":
                if new_class is None:
                    raise ValueError("choose the new segment's class first")
                sid = self._timed(s, lambda: session.new_segment([(xi, yi)], int(new_class),
                                                                 overwrite_others=overwrite, radius=radius))
                s.selected = [sid]
                return f"new segment #{sid} ({session.class_names[session.segment(sid).category_id]}); " \
                       "switch to Paint to grow it"
            raise ValueError(f"unknown click mode {mode!r}")
        return self._run(s, action)

    def _select(self, s: EditorSession, sid: int | None, multi: bool) -> str:
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

    def select_segment(self, s: EditorSession, segment_id: int | None, multi: bool = False) -> Screen:
        """Select by id (a click on the segment table)."""
        def action():
            session = self._session(s)
            if segment_id is None:
                return None
            sid = int(segment_id)
            if sid not in session:
                raise ValueError(f"no segment #{sid}")
            return self._select(s, sid, multi)
        return self._run(s, action)

    # ---------------------------------------------------------------------------- edits
    def _timed(self, s: EditorSession, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        s.timings["edit"] = _ms(time.perf_counter() - start)
        return out

    def _require_selection(self, s: EditorSession) -> list[int]:
        if not s.selected:
            raise ValueError("select a segment first (click it on the image or in the table)")
        return list(s.selected)

    def relabel(self, s: EditorSession, class_id: int | None) -> Screen:
        """Give the selected segments class ``class_id`` (stuff joins its class's segment)."""
        def action():
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
        return self._run(s, action)

    def delete(self, s: EditorSession) -> Screen:
        def action():
            session = self._session(s)
            ids = self._require_selection(s)
            self._timed(s, lambda: [session.delete(i) for i in ids])
            s.selected = []
            return f"deleted {', '.join(f'#{i}' for i in ids)}"
        return self._run(s, action)

    def merge(self, s: EditorSession) -> Screen:
        def action():
            session = self._session(s)
            ids = self._require_selection(s)
            if len(ids) < 2:
                raise ValueError("merge needs two or more selected segments: tick 'add clicks to the selection' "
                                 "and click them (the first one keeps its class)")
            first = self._timed(s, lambda: session.merge(ids))
            s.selected = [first]
            return f"merged {', '.join(f'#{i}' for i in ids)} into #{first}"
        return self._run(s, action)

    def split(self, s: EditorSession) -> Screen:
        def action():
            session = self._session(s)
            ids = self._require_selection(s)
            parts = self._timed(s, lambda: [p for i in ids for p in session.split(i)])
            s.selected = parts
            return f"split into {len(parts)} segments" if len(parts) > len(ids) else "already one connected piece"
        return self._run(s, action)

    def undo(self, s: EditorSession) -> Screen:
        def action():
            label = self._timed(s, self._session(s).undo)
            return f"undid {label}" if label else "nothing to undo"
        return self._run(s, action)

    def redo(self, s: EditorSession) -> Screen:
        def action():
            label = self._timed(s, self._session(s).redo)
            return f"redid {label}" if label else "nothing to redo"
        return self._run(s, action)

    def recover(self, s: EditorSession, index: int, overwrite: bool = False) -> Screen:
        """Add candidate ``index`` (from a Recover click) as a new segment."""
        def action():
            session = self._session(s)
            if not 0 <= int(index) < len(s.candidates):
                raise ValueError("no such candidate: click the image in Recover mode first")
            cand = s.candidates[int(index)]
            sid = self._timed(s, lambda: session.recover(cand, overwrite_others=overwrite))
            s.candidates = []
            s.selected = [sid]
            return f"recovered #{sid} ({session.class_names[cand.category_id]} {cand.score:.2f})"
        return self._run(s, action)

    def apply_mask(self, s: EditorSession, mask: np.ndarray, op: str, *, overwrite: bool = False,
                   new_class: int | None = None) -> Screen:
        """A painted (H, W) mask (the brush layer): ``op`` "paint" (into the selected segment), "erase" or "new"."""
        def action():
            session = self._session(s)
            m = np.asarray(mask, dtype=bool)
            if m.shape != session.shape:  # the layer comes at display size when the canvas is scaled
                h, w = session.shape
                m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
            if not m.any():
                raise ValueError("nothing painted: draw on the brush layer first")
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
                    raise ValueError("choose the new segment's class first")
                sid = self._timed(s, lambda: session.new_segment(m, int(new_class), overwrite_others=overwrite))
                s.selected = [sid]
                return f"new segment #{sid}"
            raise ValueError(f"unknown brush operation {op!r}")
        return self._run(s, action)
