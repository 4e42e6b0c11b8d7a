"""The editor's canvas actions: clicks (select, paint, erase, new segment, recover) and segment edits.

``EditEngine`` turns a click or a painted mask into one ``EditSession`` operation of the browser
session's current image, with its selection rules, and returns the message for the status line. A
user's mistake (nothing selected, no class chosen...) raises ``UserError``. Coordinates are image
pixels (the canvas converts its own zoom and pan). It asks the ``SharedModel`` for the current
prediction (Recover, the magic wand). Running an action under the session lock and rendering the
``Screen`` are the ``Workbench``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from .browser_session import BrowserSession, milliseconds
from .errors import UserError
from .regions import Polygon
from .shared_model import SharedModel
from .wand import wand_click

__all__ = ["CLICK_MODES", "ERASE_FILLS", "EditEngine"]

CLICK_MODES = ("Select", "Paint", "Erase", "New segment", "Recover")
ERASE_FILLS = ("neighbour", "void")  # where erased pixels go


class EditEngine:
    """Clicks and segment edits of a browser session's current image; each returns the status message."""

    def __init__(self, model: SharedModel) -> None:
        self.model = model

    # ---------------------------------------------------------------------------- clicks
    def _session(self, s: BrowserSession):
        session = s.workspace.session() if s.workspace.current is not None else None
        if session is None:
            raise UserError("no image open: upload one or pick an example")
        return session

    def _to_image(self, s: BrowserSession, x: float, y: float) -> tuple[int, int]:
        """An image pixel from the canvas, clamped to the image (a click on the border lands inside)."""
        h, w = self._session(s).shape
        try:
            xi, yi = int(float(x)), int(float(y))
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"not a pixel: ({x!r}, {y!r})") from None
        return min(max(xi, 0), w - 1), min(max(yi, 0), h - 1)

    def _points(self, points: Any, at_least: int = 1) -> list[tuple[float, float]]:
        """(x, y) image points sent by the canvas, checked (a list of pairs of finite numbers)."""
        try:
            pts = [(float(p[0]), float(p[1])) for p in points]
        except (TypeError, ValueError, IndexError, KeyError):
            raise UserError("the canvas sent malformed points") from None
        if len(pts) < at_least or not np.isfinite(np.asarray(pts)).all():
            raise UserError(f"need at least {at_least} finite point(s), got {len(pts)}")
        return pts

    def click(self, s: BrowserSession, x: float, y: float, mode: str = "Select", *, brush_size: float = 10.0,
              overwrite: bool = False, multi: bool = False, new_class: int | None = None) -> str | None:
        """A click at image pixel (x, y), interpreted by ``mode`` (``CLICK_MODES``): one dab for the brush modes."""
        session = self._session(s)
        xi, yi = self._to_image(s, x, y)
        radius = max(0.0, float(brush_size) / 2.0)
        if mode == "Select":
            return self._select(s, session.select(xi, yi), multi)
        if mode == "Recover":
            return self.recover_at(s, xi, yi)
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

    def recover_at(self, s: BrowserSession, x: float, y: float) -> str:
        """Offer the model's dropped queries covering pixel (x, y), except those already recovered."""
        session = self._session(s)
        xi, yi = self._to_image(s, x, y)
        pred = self.model.prediction(s)
        used = session.used_queries()
        s.candidates = [c for c in pred.candidates_at(xi, yi, k=6 + len(used)) if c.query not in used][:6]
        if not s.candidates:
            return f"no dropped query of the model covers ({xi}, {yi})"
        return f"{len(s.candidates)} candidates at ({xi}, {yi}): hover one to see it, click to add it"

    def select_ids(self, s: BrowserSession, ids: Any) -> str | None:
        """The selection made on the canvas (in click order); ids no longer in the image are dropped."""
        session = self._session(s)
        chosen = []
        for i in ids or []:
            try:
                sid = int(i)
            except (TypeError, ValueError):
                continue
            if sid in session and sid not in chosen:
                chosen.append(sid)
        if chosen == s.selected:
            return None
        s.selected = chosen
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

    def split(self, s: BrowserSession, min_area: int = 0) -> str | None:
        """Split each selected thing into its connected pieces; pieces under ``min_area`` px stay with it."""
        session = self._session(s)
        ids = self._require_selection(s)
        area = max(0, int(min_area or 0))
        parts = self._timed(s, lambda: [p for i in ids for p in session.split(i, min_area=area)])
        s.selected = parts
        return f"split into {len(parts)} segments" if len(parts) > len(ids) else "already one connected piece"

    def fill_holes(self, s: BrowserSession, overwrite: bool = False) -> str | None:
        """Fill the holes of the selected segments (void ones; with ``overwrite`` also other segments inside)."""
        session = self._session(s)
        ids = self._require_selection(s)
        n = self._timed(s, lambda: sum(session.fill_holes(i, overwrite_others=overwrite) for i in ids))
        return f"filled {n} px of holes" if n else "no holes to fill"

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
        s.candidates = []  # its query is now used: a later Recover does not offer it again
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

    # ---------------------------------------------------------------------------- canvas tools
    def stroke(self, s: BrowserSession, tool: str, points: Any, radius: float, *, overwrite: bool = False,
               fill: str = "neighbour", new_class: int | None = None) -> str | None:
        """A dragged brush or eraser stroke (image points, ``radius`` in image pixels).

        The brush paints into the last selected segment, or makes a new segment of ``new_class`` when
        nothing is selected (as in CVAT); the eraser erases the last selected segment only (everything
        under it with ``overwrite`` or no selection) and gives the pixels to the neighbouring segment
        (``fill="neighbour"``) or to void.
        """
        session = self._session(s)
        pts = self._points(points)
        r = float(radius)
        if not np.isfinite(r) or r < 0:
            raise UserError(f"brush radius must be a number >= 0, got {radius!r}")
        if tool == "brush":
            if s.selected:
                sid = s.selected[-1]
                n = self._timed(s, lambda: session.paint(sid, pts, radius=r, overwrite_others=overwrite))
                return f"painted {n} px into #{sid}" if n else "the stroke added no pixel (tick 'over others' " \
                                                                "to take pixels from other segments)"
            return self._new_segment(s, pts, new_class, overwrite, radius=r)
        if tool == "eraser":
            if fill not in ERASE_FILLS:
                raise UserError(f"unknown erase fill {fill!r} (one of {', '.join(ERASE_FILLS)})")
            target = s.selected[-1] if s.selected and not overwrite else None
            n = self._timed(s, lambda: session.erase(pts, radius=r, segment_id=target, fill=fill))
            to = "the neighbours" if fill == "neighbour" else "void"
            return f"erased {n} px" + (f" of #{target}" if target is not None else "") + f" (to {to})"
        raise UserError(f"unknown stroke tool {tool!r}")

    def polygon(self, s: BrowserSession, points: Any, *, overwrite: bool = False,
                new_class: int | None = None) -> str | None:
        """A closed polygon (image vertices): a new segment of ``new_class``."""
        self._session(s)
        pts = self._points(points, at_least=3)
        return self._new_segment(s, Polygon(pts), new_class, overwrite)

    def wand(self, s: BrowserSession, x: float, y: float, threshold: float) -> str | None:
        """Preview the magic wand's region at (x, y): pixels whose mask embedding agrees with the click's."""
        self._session(s)
        xi, yi = self._to_image(s, x, y)
        t = float(threshold)
        if not np.isfinite(t):
            raise UserError(f"the wand threshold must be a number, got {threshold!r}")
        if s.wand is None or (s.wand.x, s.wand.y) != (xi, yi):
            pred = self.model.prediction(s)
            s.wand = self._timed(s, lambda: wand_click(pred, xi, yi))
        s.wand_threshold = min(1.0, max(0.0, t))
        area = int(s.wand.crop(s.wand_threshold)[1].sum())  # the payload's crop reuses it (no full-size mask)
        return f"wand at ({xi}, {yi}): {area} px at threshold {s.wand_threshold:.2f} (wheel to change; Enter adds " \
               "it as a new segment, Shift+Enter into the selection)"

    def wand_commit(self, s: BrowserSession, mode: str = "new", *, overwrite: bool = False,
                    new_class: int | None = None) -> str | None:
        """The wand's region as a new segment of ``new_class`` (``mode="new"``) or into the selection ("add")."""
        session = self._session(s)
        if s.wand is None:
            raise UserError("click the image with the wand first")
        region = s.wand.region(s.wand_threshold)
        if mode == "add":
            sid = self._require_selection(s)[-1]
            n = self._timed(s, lambda: session.paint(sid, region, overwrite_others=overwrite))
            s.wand = None
            return f"added {n} px to #{sid}"
        if mode != "new":
            raise UserError(f"unknown wand mode {mode!r}")
        message = self._new_segment(s, region, new_class, overwrite)
        s.wand = None
        return message

    def _new_segment(self, s: BrowserSession, region: Any, new_class: int | None, overwrite: bool,
                     radius: float = 5.0) -> str:
        session = self._session(s)
        if new_class is None:
            raise UserError("choose the new segment's class first")
        sid = self._timed(s, lambda: session.new_segment(region, int(new_class), overwrite_others=overwrite,
                                                         radius=radius))
        s.selected = [sid]
        return f"new segment #{sid} ({session.class_names[session.segment(sid).category_id]})"
