"""The edit operations of ``EditSession``: relabel, paint, erase, new segment, recover, delete, merge, split.

Why a module of its own: each operation only decides which pixels and rows change (and applies the
stuff / thing rules of ``app.editing``); ``EditSession._commit`` is the one writer that applies the
change, keeps areas and boxes exact and records the history. ``EditOperations`` is a mixin of
``EditSession`` and relies on its validation helpers (``_require_segment``, ``_check_class``,
``_region``, ``_stuff_segment``, ``_fresh_id``, ``_segments_box``) and on ``_commit``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from m2f_core.structures import Segment

from .regions import _seg_box

if TYPE_CHECKING:
    from m2f_core.structures import Candidate

__all__ = ["EditOperations"]


class EditOperations:
    """The edits of an ``EditSession`` (a mixin: the session owns the state, see the module docstring)."""

    def relabel(self, segment_id: int, category_id: int) -> int:
        """Give a segment another class; ``isthing`` follows the class. Returns the id now holding the pixels.

        Relabelling to a stuff class that already has a segment merges into that segment (the COCO
        rule: one segment per stuff class), whose id is returned.
        """
        sid = self._require_segment(segment_id)
        cat = self._check_class(category_id)
        seg = self._segments[sid]
        if seg.category_id == cat:
            return sid
        target = self._stuff_segment(cat, exclude=[sid])
        if target is None:
            self._commit("relabel", None, None,
                         {sid: dataclasses.replace(seg, category_id=cat, isthing=self.is_thing[cat])})
            return sid
        box = _seg_box(seg)
        assert box is not None
        y0, x0, y1, x1 = box
        crop = self._map[y0:y1, x0:x1].copy()
        crop[crop == sid] = target
        self._commit("relabel", box, crop)
        return target

    def paint(self, segment_id: int, region: Any, radius: float = 5.0, overwrite_others: bool = False) -> int:
        """Add the pixels of ``region`` (an (H, W) bool mask or a stroke [(x, y), ...] of ``radius``) to a segment.

        With ``overwrite_others=False`` only void pixels change. Returns the number of pixels changed.
        """
        sid = self._require_segment(segment_id)
        crop = self._region(region, radius)
        if crop is None:
            return 0
        y0, x0, y1, x1 = crop.box
        values = self._map[y0:y1, x0:x1].copy()
        sel = crop.mask if overwrite_others else crop.mask & (values == 0)
        values[sel] = sid
        return self._commit("paint", crop.box, values)

    def erase(self, region: Any, radius: float = 5.0, segment_id: int | None = None) -> int:
        """Make the pixels of ``region`` void (only those of ``segment_id`` if given). Returns pixels changed."""
        sid = None if segment_id is None else self._require_segment(segment_id)
        crop = self._region(region, radius)
        if crop is None:
            return 0
        y0, x0, y1, x1 = crop.box
        values = self._map[y0:y1, x0:x1].copy()
        values[crop.mask & ((values != 0) if sid is None else (values == sid))] = 0
        return self._commit("erase", crop.box, values)

    def new_segment(self, region: Any, category_id: int, overwrite_others: bool = False, score: float = 1.0,
                    radius: float = 5.0) -> int:
        """Create a segment of class ``category_id`` from ``region``; returns its (fresh) id.

        Only void pixels are taken unless ``overwrite_others``. For a stuff class that already has a
        segment, the pixels are added to it and its id is returned (one segment per stuff class).
        """
        cat = self._check_class(category_id)
        crop = self._region(region, radius)
        if crop is None:
            raise ValueError("the new segment's mask is empty")
        target = self._stuff_segment(cat)
        y0, x0, y1, x1 = crop.box
        values = self._map[y0:y1, x0:x1].copy()
        sel = crop.mask if overwrite_others else crop.mask & (values == 0)
        if target is not None:
            sel &= values != target
        if not sel.any():
            raise ValueError("the mask adds no pixels (it covers no void pixel; use overwrite_others=True "
                             "to take pixels from other segments)")
        if target is not None:
            values[sel] = target
            self._commit("new segment", crop.box, values)
            return target
        sid = self._fresh_id()
        values[sel] = sid
        row = Segment(id=sid, category_id=cat, isthing=self.is_thing[cat], score=float(score), source="edited")
        self._commit("new segment", crop.box, values, {sid: row})
        return sid

    def recover(self, candidate: Candidate, overwrite_others: bool = False) -> int:
        """Add a query the post-processing dropped (``Prediction.candidates_at``) as a new segment.

        Same rules as ``new_segment`` (void pixels only unless ``overwrite_others``; stuff merges);
        the segment keeps the candidate's class and score.
        """
        return self.new_segment(np.asarray(candidate.mask), candidate.category_id, overwrite_others=overwrite_others,
                                score=float(candidate.score))

    def delete(self, segment_id: int) -> None:
        """Remove a segment: its pixels become void."""
        sid = self._require_segment(segment_id)
        box = _seg_box(self._segments[sid])
        assert box is not None
        y0, x0, y1, x1 = box
        values = self._map[y0:y1, x0:x1].copy()
        values[values == sid] = 0
        self._commit("delete", box, values)

    def merge(self, segment_ids: Sequence[int]) -> int:
        """Merge segments into the FIRST one, which keeps its id, class and score; returns that id.

        The classes may differ: the result takes the first's class (a merge is "these pixels are
        that object"). If that class is stuff, any other segment of it joins too (one per class).
        """
        ids = [self._require_segment(s) for s in segment_ids]
        if len(set(ids)) < 2:
            raise ValueError("merge needs at least two different segment ids")
        first = ids[0]
        others = set(ids[1:]) - {first}
        cat = self._segments[first].category_id
        if not self.is_thing[cat]:
            others |= {s.id for s in self._segments.values() if s.category_id == cat and s.id != first}
        box = self._segments_box(others)
        assert box is not None
        y0, x0, y1, x1 = box
        values = self._map[y0:y1, x0:x1].copy()
        values[np.isin(values, list(others))] = first
        self._commit("merge", box, values, {first: self._segments[first]})
        return first

    def split(self, segment_id: int) -> list[int]:
        """Split a thing segment into its 8-connected components; returns their ids (the largest keeps the id).

        Other components get fresh ids in scan order (top to bottom, left to right) and the
        original's class and score. Stuff is one segment per class, so splitting it is refused.
        """
        sid = self._require_segment(segment_id)
        seg = self._segments[sid]
        if not seg.isthing:
            raise ValueError(f"segment {sid} is stuff ({self.class_names[seg.category_id]}): stuff is one segment "
                             "per class and cannot be split (erase or relabel parts instead)")
        box = _seg_box(seg)
        assert box is not None
        y0, x0, y1, x1 = box
        values = self._map[y0:y1, x0:x1].copy()
        labels, n = ndimage.label(values == sid, structure=np.ones((3, 3), dtype=bool))
        if n <= 1:
            return [sid]
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        keep = int(np.argmax(sizes)) + 1
        out, rows = [sid], {}
        for comp in range(1, n + 1):
            if comp == keep:
                continue
            new_id = self._fresh_id()
            values[labels == comp] = new_id
            rows[new_id] = dataclasses.replace(seg, id=new_id, area=0, bbox=(0.0, 0.0, 0.0, 0.0))
            out.append(new_id)
        self._commit("split", box, values, rows)
        return out
