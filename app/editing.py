"""The editable annotation of one image: a panoptic segment map plus its segment table, with undo/redo.

Why panoptic: one non-overlapping id map is the single source of truth; the instance and semantic
views are projections of it (``instance_view``, ``semantic_view``), so an edit can never leave the
three tasks disagreeing, and overlapping objects can never be lost on export.

Rules (each documented where it applies):

- Ids. A new segment gets a fresh id from a counter that only grows during the session (undo does
  not rewind it), so an id is never reused, even after a delete or an undo: a history entry, a
  selection in the UI or ``model_queries`` can never come to mean another segment.
- Stuff. COCO has at most one segment per stuff class per image. An edit that would create a second
  segment of a stuff class (``relabel``, ``new_segment``/``recover``, ``merge``) merges into the
  existing one instead (the lowest id of that class keeps its id); ``split`` refuses stuff.
- Every segment an edit touches (its pixels or its row) gets ``source="edited"``; a segment left
  with no pixels is removed from the table. Areas and boxes are kept exact incrementally (only the
  changed region and the touched segments' old boxes are scanned).
- Errors. A bad argument (unknown class, absent id, mask of the wrong shape, ...) raises a
  ``UserError`` (a ``ValueError``) with a one-line message before anything changes.

The session owns its state (the map, the table, the id counter) and is its only writer: every edit
operation decides which pixels and rows change and hands them to ``_commit``, which applies them,
keeps areas and boxes exact and records the change in the session's ``UndoHistory``
(``app.history``: compressed diffs, bounded; the history returns the change to undo or redo and the
session applies it). ``app.regions`` turns strokes and masks into crops and does the box arithmetic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from m2f_core.structures import InstanceResult, PanopticResult, Segment, SemanticResult, segment_stats

from .errors import UserError
from .history import Change, UndoHistory
from .regions import Box, Crop, Polygon, polygon_crop, segment_box, stroke_crop, stroke_mask, tight_box, union_box

if TYPE_CHECKING:
    from m2f_core.prediction import Prediction
    from m2f_core.structures import Candidate

__all__ = ["EditSession", "Polygon", "stroke_mask", "TASKS"]

TASKS = ("panoptic", "instance", "semantic")
MAX_SEGMENT_ID = 256**3 - 1  # the largest id a COCO panoptic PNG can hold
IGNORE_LABEL = 255
ERASE_FILLS = ("void", "neighbour")  # what erased pixels become (EditSession.erase)


# --------------------------------------------------------------------------------------------
# the session


def _id_counts(values: np.ndarray) -> dict[int, int]:
    """Pixels per non-zero id in a 1-D array of ids (a bincount when the ids are small, as they usually are)."""
    if values.size == 0:
        return {}
    top = int(values.max())
    if top < 1 << 20:
        counts = np.bincount(values, minlength=top + 1)
        ids = np.flatnonzero(counts)
        return {int(i): int(counts[i]) for i in ids if i != 0}
    vals, counts = np.unique(values, return_counts=True)
    return {int(v): int(c) for v, c in zip(vals, counts) if v != 0}


class EditSession:
    """The editable panoptic annotation of ONE image, with a bounded undo/redo history.

    Build it with ``from_prediction`` (the model's panoptic result) or ``from_panoptic`` (ground
    truth or a previous export). Class ids are the model's contiguous ids; ``is_thing[c]`` decides
    whether class ``c`` is a thing (one segment per object) or stuff (one segment per class).
    ``stats_known``: the rows' areas and boxes are exact for the map (a prediction's), so the
    one-pass recount of a 12-megapixel map (a third of a second) is skipped.
    """

    def __init__(self, panoptic: PanopticResult, is_thing: Sequence[bool], class_names: Sequence[str] | None = None,
                 max_history: int = 200, max_history_bytes: int = 64 * 1024 * 1024,
                 model_queries: dict[int, list[int]] | None = None, stats_known: bool = False) -> None:
        self.is_thing = [bool(v) for v in is_thing]
        if not self.is_thing:
            raise ValueError("the class list is empty")
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.is_thing))]
        if len(names) != len(self.is_thing):
            raise ValueError(f"{len(names)} class names for {len(self.is_thing)} thing/stuff flags")
        self.class_names = names
        self.history = UndoHistory(max_history, max_history_bytes)  # owns the undo / redo stacks
        seg_map = np.asarray(panoptic.segment_map)
        if seg_map.ndim != 2 or seg_map.dtype.kind not in "iu":
            raise ValueError(f"the segment map must be an (H, W) integer array, got {seg_map.dtype} {seg_map.shape}")
        self._map = np.array(seg_map, dtype=np.int32)  # own copy
        self._segments: dict[int, Segment] = {}
        for s in panoptic.segments:
            if s.id in self._segments:
                raise ValueError(f"duplicate segment id {s.id}")
            if not 0 < s.id <= MAX_SEGMENT_ID:
                raise ValueError(f"segment id {s.id} outside 1..{MAX_SEGMENT_ID}")
            self._check_class(s.category_id)
            self._segments[s.id] = dataclasses.replace(s, isthing=self.is_thing[s.category_id])
        if stats_known:  # the rows' areas and boxes are exact already (a prediction's): keep those with pixels
            self._segments = {i: seg for i, seg in self._segments.items() if seg.area > 0}
        else:
            self._recompute_all_stats()
        self._next_id = max(self._segments, default=0) + 1
        self._queries_epoch = 0
        self.model_queries = dict(model_queries or {})

    # ---------------------------------------------------------------------------- construction
    @classmethod
    def from_prediction(cls, pred: Prediction, object_mask_threshold: float | None = None,
                        overlap_threshold: float | None = None, **kwargs: Any) -> EditSession:
        """Start from the model's panoptic result (segments ``source="model"``).

        ``model_queries`` keeps, per original segment id, the queries behind it (for a relabel
        menu from ``Prediction.top_classes``); ids are never reused, so it cannot go stale.
        """
        pan = pred.panoptic(object_mask_threshold, overlap_threshold)
        queries = pred.segment_queries(object_mask_threshold, overlap_threshold)
        cfg = pred.config
        # its areas and boxes come from the same pass over the map (``PanopticResult.update_stats``)
        return cls(pan, cfg.is_thing, cfg.class_names, model_queries={k: list(v) for k, v in queries.items()},
                   stats_known=True, **kwargs)

    @classmethod
    def from_panoptic(cls, panoptic: PanopticResult, classes: Any, **kwargs: Any) -> EditSession:
        """Start from a panoptic annotation (ground truth, an export read back).

        ``classes``: a ``Mask2FormerConfig`` or a category list (dicts with ``name`` and ``isthing``,
        in contiguous order). Segment rows are kept as given (a ``GTSegment`` keeps ``iscrowd``
        and ``source="gt"``); ``isthing`` follows the class list; areas and boxes are recomputed.
        """
        if hasattr(classes, "is_thing") and hasattr(classes, "class_names"):
            return cls(panoptic, classes.is_thing, classes.class_names, **kwargs)
        cats = list(classes)
        return cls(panoptic, [bool(c.get("isthing", True)) for c in cats],
                   [str(c.get("name", i)) for i, c in enumerate(cats)], **kwargs)

    def _recompute_all_stats(self) -> None:
        """Areas and boxes of every segment from the map in one pass; ids without a row are an error."""
        stats = segment_stats(self._map)
        orphans = sorted(set(stats) - set(self._segments) - {0})
        if orphans:
            raise ValueError(f"the segment map has ids {orphans[:6]} with no segment row")
        for sid in list(self._segments):
            area, sl = stats.get(sid, (0, None))
            if area == 0:  # a row without pixels is dropped: it cannot be exported or edited
                del self._segments[sid]
                continue
            ys, xs = sl
            bbox = (float(xs.start), float(ys.start), float(xs.stop - xs.start), float(ys.stop - ys.start))
            self._segments[sid] = dataclasses.replace(self._segments[sid], area=area, bbox=bbox)

    # ---------------------------------------------------------------------------- model queries
    @property
    def model_queries(self) -> dict[int, list[int]]:
        """Per segment id, the model's queries behind it (from the prediction, and each ``recover``)."""
        return self._model_queries

    @model_queries.setter
    def model_queries(self, value: dict[int, list[int]]) -> None:
        """Replace them (another model's output): undo/redo then leave them alone, old query numbers
        would mean other queries of the new model."""
        self._model_queries = {int(k): list(v) for k, v in dict(value).items()}
        self._queries_epoch += 1

    def used_queries(self) -> set[int]:
        """Every query behind a segment, so that ``recover`` is never offered one already in the annotation."""
        return {int(q) for qs in self._model_queries.values() for q in qs}

    # ---------------------------------------------------------------------------- read access
    @property
    def shape(self) -> tuple[int, int]:
        return int(self._map.shape[0]), int(self._map.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.is_thing)

    @property
    def segment_map(self) -> np.ndarray:
        """The live (H, W) int32 map, read-only: change it only through the edit operations."""
        view = self._map.view()
        view.flags.writeable = False
        return view

    @property
    def segments(self) -> list[Segment]:
        """Copies of the segment rows, sorted by id."""
        return [dataclasses.replace(self._segments[i]) for i in sorted(self._segments)]

    def segment(self, segment_id: int) -> Segment:
        """A copy of one segment's row."""
        return dataclasses.replace(self._segments[self._require_segment(segment_id)])

    def __contains__(self, segment_id: object) -> bool:
        return segment_id in self._segments

    def select(self, x: int, y: int) -> int | None:
        """The id of the segment under pixel (x, y), or None on void."""
        h, w = self.shape
        if not (0 <= int(x) < w and 0 <= int(y) < h):
            raise UserError(f"pixel ({x}, {y}) is outside the {w}x{h} image")
        sid = int(self._map[int(y), int(x)])
        return sid or None

    # ---------------------------------------------------------------------------- views
    def panoptic_result(self) -> PanopticResult:
        """A copy of the annotation (map and rows sorted by id)."""
        return PanopticResult(self._map.copy(), self.segments)

    def instance_view(self) -> InstanceResult:
        """Things as instances: one mask per thing segment (in id order), its box (xyxy), score and class."""
        things = [s for s in self.segments if s.isthing]
        h, w = self.shape
        masks = np.zeros((len(things), h, w), dtype=bool)
        boxes = np.zeros((len(things), 4), dtype=np.float32)
        for i, s in enumerate(things):
            y0, x0, y1, x1 = segment_box(s) or (0, 0, 0, 0)
            masks[i, y0:y1, x0:x1] = self._map[y0:y1, x0:x1] == s.id
            boxes[i] = (x0, y0, x1, y1)
        return InstanceResult(masks, boxes, np.array([s.score for s in things], dtype=np.float32),
                              np.array([s.category_id for s in things], dtype=np.int64))

    def semantic_view(self) -> SemanticResult:
        """(H, W) class map; void -> 255."""
        lut = np.full(int(self._map.max(initial=0)) + 1, IGNORE_LABEL, dtype=np.int64)
        for s in self._segments.values():
            lut[s.id] = s.category_id
        return SemanticResult(lut[self._map])

    def view(self, task: str) -> PanopticResult | InstanceResult | SemanticResult:
        """The annotation as ``task`` ("panoptic", "instance" or "semantic") sees it."""
        if task == "panoptic":
            return self.panoptic_result()
        if task == "instance":
            return self.instance_view()
        if task == "semantic":
            return self.semantic_view()
        raise ValueError(f"unknown task {task!r} (one of {', '.join(TASKS)})")

    # ---------------------------------------------------------------------------- edit operations
    # Each decides which pixels and rows change (with the stuff / thing rules above); ``_commit`` applies it.
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
        box = segment_box(seg)
        assert box is not None
        y0, x0, y1, x1 = box
        crop = self._map[y0:y1, x0:x1].copy()
        crop[crop == sid] = target
        self._commit("relabel", box, crop)
        return target

    def paint(self, segment_id: int, region: Any, radius: float = 5.0, overwrite_others: bool = False) -> int:
        """Add the pixels of ``region`` (an (H, W) bool mask, a stroke [(x, y), ...] of ``radius`` or a ``Polygon``)
        to a segment.

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

    def erase(self, region: Any, radius: float = 5.0, segment_id: int | None = None, fill: str = "void") -> int:
        """Take the pixels of ``region`` from their segments (only those of ``segment_id`` if given).

        ``fill="void"`` makes them void. ``fill="neighbour"`` gives each erased pixel to the segment
        of the nearest (Euclidean) non-void pixel that is not erased, looking in a window of
        ``max(8, ceil(2 * radius))`` pixels around the region's box (a brush that erases a wrong
        boundary lets the neighbours grow into the gap instead of leaving a hole); with
        ``segment_id`` the nearest OTHER segment. Pixels with no such neighbour in the window become
        void. One history entry. Returns the number of pixels changed.
        """
        if fill not in ERASE_FILLS:
            raise UserError(f"unknown erase fill {fill!r} (one of {', '.join(ERASE_FILLS)})")
        sid = None if segment_id is None else self._require_segment(segment_id)
        crop = self._region(region, radius)
        if crop is None:
            return 0
        if fill == "neighbour":
            return self._erase_to_neighbours(crop, sid, max(8, math.ceil(2 * float(radius))))
        y0, x0, y1, x1 = crop.box
        values = self._map[y0:y1, x0:x1].copy()
        values[crop.mask & ((values != 0) if sid is None else (values == sid))] = 0
        return self._commit("erase", crop.box, values)

    def _erase_to_neighbours(self, crop: Crop, sid: int | None, margin: int) -> int:
        """``erase(fill="neighbour")``: the erased pixels take the nearest kept pixel's segment (EDT on a window)."""
        h, w = self.shape
        y0, x0, y1, x1 = crop.box
        box = (max(y0 - margin, 0), max(x0 - margin, 0), min(y1 + margin, h), min(x1 + margin, w))
        wy0, wx0, wy1, wx1 = box
        values = self._map[wy0:wy1, wx0:wx1].copy()  # (wh, ww) the window
        erased = np.zeros(values.shape, dtype=bool)
        inner = values[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
        erased[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0] = crop.mask & ((inner != 0) if sid is None else (inner == sid))
        if not erased.any():
            return 0
        source = (values != 0) & ~erased  # possible neighbours: kept, non-void pixels ...
        if sid is not None:
            source &= values != sid  # ... of another segment
        if source.any():
            iy, ix = ndimage.distance_transform_edt(~source, return_distances=False, return_indices=True)
            values[erased] = values[iy[erased], ix[erased]]
        else:
            values[erased] = 0
        return self._commit("erase", box, values)

    def new_segment(self, region: Any, category_id: int, overwrite_others: bool = False, score: float = 1.0,
                    radius: float = 5.0) -> int:
        """Create a segment of class ``category_id`` from ``region``; returns its (fresh) id.

        Only void pixels are taken unless ``overwrite_others``. For a stuff class that already has a
        segment, the pixels are added to it and its id is returned (one segment per stuff class).
        """
        return self._add_segment(region, category_id, overwrite_others, score, radius)

    def recover(self, candidate: Candidate, overwrite_others: bool = False) -> int:
        """Add a query the post-processing dropped (``Prediction.candidates_at``) as a new segment.

        Same rules as ``new_segment`` (void pixels only unless ``overwrite_others``; stuff merges);
        the segment keeps the candidate's class and score, and ``model_queries`` records its query
        (appended to the list of a stuff segment it merges into; undone with the edit), so
        ``used_queries`` keeps it from being offered again and the relabel menu can read its classes.
        """
        return self._add_segment(np.asarray(candidate.mask), candidate.category_id, overwrite_others,
                                 float(candidate.score), 5.0, query=int(candidate.query))

    def _add_segment(self, region: Any, category_id: int, overwrite_others: bool, score: float, radius: float,
                     query: int | None = None) -> int:
        """``new_segment`` / ``recover``: the pixels go to a fresh id or to the class's stuff segment."""
        cat = self._check_class(category_id)
        crop = self._region(region, radius)
        if crop is None:
            raise UserError("the new segment's mask is empty")
        target = self._stuff_segment(cat)
        y0, x0, y1, x1 = crop.box
        values = self._map[y0:y1, x0:x1].copy()
        sel = crop.mask if overwrite_others else crop.mask & (values == 0)
        if target is not None:
            sel &= values != target
        if not sel.any():
            raise UserError("the mask adds no pixels (it covers no void pixel; use overwrite_others=True "
                             "to take pixels from other segments)")
        sid = target if target is not None else self._fresh_id()
        values[sel] = sid
        rows = {} if target is not None else {
            sid: Segment(id=sid, category_id=cat, isthing=self.is_thing[cat], score=float(score), source="edited")}
        queries = None
        if query is not None and query not in self._model_queries.get(sid, []):
            queries = {sid: [*self._model_queries.get(sid, []), query]}
        self._commit("new segment", crop.box, values, rows, queries)
        return sid

    def delete(self, segment_id: int) -> None:
        """Remove a segment: its pixels become void."""
        sid = self._require_segment(segment_id)
        box = segment_box(self._segments[sid])
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
            raise UserError("merge needs at least two different segment ids")
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

    def split(self, segment_id: int, min_area: int = 0) -> list[int]:
        """Split a thing segment into its 8-connected components; returns their ids (the largest keeps the id).

        Other components get fresh ids in scan order (top to bottom, left to right) and the
        original's class and score. Components smaller than ``min_area`` pixels are not split off:
        they stay with the original id (so brush specks do not become objects of their own; 0 splits
        every component). Stuff is one segment per class, so splitting it is refused.
        """
        sid = self._require_segment(segment_id)
        if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 0:
            raise UserError(f"min_area must be an integer >= 0, got {min_area!r}")
        seg = self._segments[sid]
        if not seg.isthing:
            raise UserError(f"segment {sid} is stuff ({self.class_names[seg.category_id]}): stuff is one segment "
                             "per class and cannot be split (erase or relabel parts instead)")
        box = segment_box(seg)
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
            if comp == keep or sizes[comp - 1] < min_area:
                continue
            new_id = self._fresh_id()
            values[labels == comp] = new_id
            rows[new_id] = dataclasses.replace(seg, id=new_id, area=0, bbox=(0.0, 0.0, 0.0, 0.0))
            out.append(new_id)
        if not rows:
            return [sid]
        self._commit("split", box, values, rows)
        return out

    def fill_holes(self, segment_id: int, overwrite_others: bool = False) -> int:
        """Fill the holes of a segment: the pixels it encloses (``binary_fill_holes`` on its box).

        A hole is a region of other pixels that is not 4-connected to the outside of the segment's
        box, so a ring closed only diagonally still counts as closed. Only void holes are filled
        unless ``overwrite_others``: then enclosed pixels of other segments are taken too (a segment
        left empty is removed). Returns the pixels changed (0, and no history entry, when none).
        """
        sid = self._require_segment(segment_id)
        box = segment_box(self._segments[sid])
        assert box is not None
        y0, x0, y1, x1 = box
        values = self._map[y0:y1, x0:x1].copy()  # (bh, bw) the segment's box
        own = values == sid
        holes = ndimage.binary_fill_holes(own) & ~own
        if not overwrite_others:
            holes &= values == 0
        if not holes.any():
            return 0
        values[holes] = sid
        return self._commit("fill holes", box, values)

    # ---------------------------------------------------------------------------- validation
    def _check_class(self, category_id: int) -> int:
        if isinstance(category_id, bool) or not isinstance(category_id, (int, np.integer)):
            raise UserError(f"class id must be an integer, got {category_id!r}")
        if not 0 <= int(category_id) < len(self.is_thing):
            raise UserError(f"unknown class id {category_id} (the model has classes 0..{len(self.is_thing) - 1})")
        return int(category_id)

    def _require_segment(self, segment_id: int) -> int:
        if isinstance(segment_id, bool) or not isinstance(segment_id, (int, np.integer)) \
                or int(segment_id) not in self._segments:
            raise UserError(f"no segment with id {segment_id!r} in this image")
        return int(segment_id)

    def _region(self, region: Any, radius: float) -> Crop | None:
        """A full-size mask, a stroke [(x, y), ...] or a ``Polygon`` as a crop (None when it covers no pixel)."""
        if isinstance(region, np.ndarray):
            if region.shape != self.shape:
                h, w = self.shape
                raise UserError(f"mask has shape {region.shape}, the image is {w}x{h} (expected ({h}, {w}))")
            mask = region.astype(bool, copy=False)
            ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if ys.size == 0:
                return None
            return Crop(int(ys[0]), int(xs[0]), mask[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1].copy())
        if isinstance(region, (list, tuple, Polygon)):
            try:
                if isinstance(region, Polygon):
                    crop = polygon_crop(region.points, self.shape)
                else:
                    crop = stroke_crop(region, radius, self.shape)
            except ValueError as e:  # a bad stroke or polygon is the user's mistake
                raise UserError(str(e)) from e
            if crop is None or not crop.mask.any():
                return None
            return crop
        raise UserError(f"expected an (H, W) bool mask, a stroke [(x, y), ...] or a Polygon, "
                        f"got {type(region).__name__}")

    def _stuff_segment(self, category_id: int, exclude: Iterable[int] = ()) -> int | None:
        """The existing segment of stuff class ``category_id`` (lowest id), ignoring ``exclude``."""
        if self.is_thing[category_id]:
            return None
        skip = set(exclude)
        ids = [s.id for s in self._segments.values() if s.category_id == category_id and s.id not in skip]
        return min(ids) if ids else None

    def _fresh_id(self) -> int:
        if self._next_id > MAX_SEGMENT_ID:
            raise UserError(f"no segment ids left (a panoptic PNG holds ids up to {MAX_SEGMENT_ID})")
        sid = self._next_id
        self._next_id += 1
        return sid

    def _segments_box(self, ids: Iterable[int]) -> Box | None:
        box = None
        for sid in ids:
            box = union_box(box, segment_box(self._segments[sid]))
        return box

    # ---------------------------------------------------------------------------- the one writer
    def _commit(self, label: str, box: Box | None, new_crop: np.ndarray | None,
                rows: dict[int, Segment] | None = None, queries: dict[int, list[int]] | None = None) -> int:
        """Apply new map values inside ``box``, new table rows and ``model_queries`` entries; record the diff.

        Returns changed pixels.

        Every edit goes through here, so history, ``source="edited"``, areas and boxes are handled
        once. Nothing is changed if nothing would change (no history entry either).
        """
        rows = dict(rows or {})
        old_c = new_c = None
        changed_box: Box | None = None
        n_changed = 0
        removed: dict[int, int] = {}
        added: dict[int, int] = {}
        if box is not None and new_crop is not None:
            y0, x0, y1, x1 = box
            old_full = self._map[y0:y1, x0:x1]
            diff = old_full != new_crop
            n_changed = int(np.count_nonzero(diff))
            if n_changed:
                ys, xs = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
                cy0, cy1, cx0, cx1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
                changed_box = (y0 + cy0, x0 + cx0, y0 + cy1, x0 + cx1)
                old_c = old_full[cy0:cy1, cx0:cx1].copy()
                new_c = np.ascontiguousarray(new_crop[cy0:cy1, cx0:cx1], dtype=np.int32)
                d = diff[cy0:cy1, cx0:cx1]
                removed, added = _id_counts(old_c[d]), _id_counts(new_c[d])
        touched = set(removed) | set(added) | set(rows)
        unknown = set(added) - set(self._segments) - set(rows)
        if unknown:  # an internal error, never a user's: every painted id needs a row
            raise AssertionError(f"pixels assigned to ids {sorted(unknown)} without a row")
        if changed_box is not None:
            y0, x0, y1, x1 = changed_box
            self._map[y0:y1, x0:x1] = new_c
        rows_before: dict[int, Segment | None] = {}
        rows_after: dict[int, Segment | None] = {}
        for sid in sorted(touched):
            old = self._segments.get(sid)
            base = rows.get(sid, old)
            assert base is not None
            area = (old.area if old is not None else 0) + added.get(sid, 0) - removed.get(sid, 0)
            if area <= 0:
                new = None
            elif sid in added or sid in removed:
                assert changed_box is not None
                tight = self._new_box(sid, old, changed_box, sid in removed)
                ty0, tx0, ty1, tx1 = tight
                new = dataclasses.replace(base, id=sid, area=area, source="edited",
                                          bbox=(float(tx0), float(ty0), float(tx1 - tx0), float(ty1 - ty0)))
            else:
                new = dataclasses.replace(base, id=sid, area=old.area if old else 0,
                                          bbox=old.bbox if old else (0.0, 0.0, 0.0, 0.0), source="edited")
                if new.area == 0:
                    new = None
            if new == old and sid not in added and sid not in removed:
                continue
            rows_before[sid], rows_after[sid] = old, new
        if changed_box is None and not rows_after:
            return 0
        for sid, seg in rows_after.items():
            if seg is None:
                self._segments.pop(sid, None)
            else:
                self._segments[sid] = seg
        q_before = {sid: self._queries_of(sid) for sid in queries or {}}
        q_after = {sid: tuple(int(q) for q in qs) for sid, qs in (queries or {}).items()}
        self._set_queries(q_after)
        self.history.record(Change.of(label, changed_box, old_c, new_c, rows_before, rows_after,
                                      q_before, q_after, self._queries_epoch))
        return n_changed

    def _new_box(self, sid: int, old: Segment | None, changed_box: Box, lost: bool) -> Box:
        """The box of ``sid`` after an edit inside ``changed_box`` (the map already written).

        A segment that only gained pixels keeps its old box grown by its pixels in the changed box
        (no scan of a big segment's box); one that lost pixels is re-scanned from the sides inward.
        """
        old_box = segment_box(old) if old is not None else None
        if lost or old_box is None:
            region = union_box(old_box, changed_box)
            assert region is not None
            tight = tight_box(self._map, sid, region)
        else:
            tight = union_box(old_box, tight_box(self._map, sid, changed_box))
        assert tight is not None
        return tight

    def _queries_of(self, segment_id: int) -> tuple[int, ...] | None:
        qs = self._model_queries.get(segment_id)
        return None if qs is None else tuple(qs)

    def _set_queries(self, entries: dict[int, tuple[int, ...] | None]) -> None:
        for sid, qs in entries.items():
            if qs is None:
                self._model_queries.pop(sid, None)
            else:
                self._model_queries[sid] = list(qs)

    # ---------------------------------------------------------------------------- undo / redo
    def _apply(self, change: Change, forward: bool) -> None:
        """Write a recorded change back (``forward``: as it was made; else reverted)."""
        crop = change.crop(forward)
        if crop is not None and change.box is not None:
            y0, x0, y1, x1 = change.box
            self._map[y0:y1, x0:x1] = crop
        for sid, seg in change.rows(forward).items():
            if seg is None:
                self._segments.pop(sid, None)
            else:
                self._segments[sid] = seg
        if change.queries_epoch == self._queries_epoch:  # else they were another model's: leave the new ones
            self._set_queries(change.queries(forward))

    def undo(self) -> str | None:
        """Undo the last edit; returns its name (None when there is nothing to undo)."""
        change = self.history.undo()
        if change is None:
            return None
        self._apply(change, forward=False)
        return change.label

    def redo(self) -> str | None:
        """Redo the last undone edit; returns its name (None when there is nothing to redo)."""
        change = self.history.redo()
        if change is None:
            return None
        self._apply(change, forward=True)
        return change.label

    @property
    def can_undo(self) -> bool:
        return self.history.can_undo

    @property
    def can_redo(self) -> bool:
        return self.history.can_redo

    @property
    def history_labels(self) -> list[str]:
        """Names of the undoable edits, oldest first."""
        return self.history.labels

    @property
    def history_nbytes(self) -> int:
        """Memory held by the undo and redo stacks (compressed diffs), in bytes."""
        return self.history.nbytes

    @property
    def has_edits(self) -> bool:
        """True when the annotation differs from how the session started (counting undos)."""
        return self.history.net_edits != 0

    @property
    def edit_count(self) -> int:
        """Edits since the session started, undone ones not counted (the export manifest's ``edits``)."""
        return self.history.net_edits
