"""Bounded undo/redo of ``EditSession``: each edit stored as a compressed diff, not a snapshot.

A ``Change`` holds the box of the pixels that changed, that crop of the map before and after
(zlib-compressed), and the table rows before and after for the touched segments. A small brush
stroke costs a few hundred bytes whatever the image size.

``UndoHistory`` owns the undo and redo stacks and their byte count, and nothing else: it never
touches an annotation. ``undo()`` hands back the change to revert and ``redo()`` the one to apply
again; the ``EditSession`` applies it to its own map and table (``Change.crop`` / ``Change.rows`` say
what to write). The history keeps at most ``max_entries`` changes and ``max_bytes`` bytes (oldest
dropped first; a single change larger than the byte cap cannot be undone and clears the history).
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from m2f_core.structures import Segment

from .regions import Box

__all__ = ["Change", "UndoHistory"]


_NARROW = {1: np.uint8, 2: np.uint16, 4: np.int32}  # bytes per id -> dtype


def _pack(a: np.ndarray) -> bytes:
    """zlib of the crop in the narrowest dtype its ids fit (segment ids are mostly small: compressing
    a quarter or half of the bytes is what makes a big delete or merge cheap), after a 1-byte size tag."""
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    size = 4 if lo < 0 or hi >= 1 << 16 else 2 if hi >= 1 << 8 else 1
    data = np.ascontiguousarray(a, dtype=_NARROW[size]).tobytes()
    return bytes([size]) + zlib.compress(data, 1)


def _unpack(packed: bytes, shape: tuple[int, int]) -> np.ndarray:
    """The int32 crop ``_pack`` stored."""
    narrow = np.frombuffer(zlib.decompress(packed[1:]), dtype=_NARROW[packed[0]]).reshape(shape)
    return narrow.astype(np.int32)


@dataclass(frozen=True)
class Change:
    """One undoable edit: compressed before/after crops of the map and the touched table rows."""

    label: str
    box: Box | None  # y0, x0, y1, x1 of the changed pixels; None when only table rows changed
    before: bytes
    after: bytes
    rows_before: dict[int, Segment | None]  # None: the row did not exist
    rows_after: dict[int, Segment | None]
    # the model queries recorded per segment id (``EditSession.model_queries``) before and after; None: no entry
    queries_before: dict[int, tuple[int, ...] | None] = field(default_factory=dict)
    queries_after: dict[int, tuple[int, ...] | None] = field(default_factory=dict)
    queries_epoch: int = 0  # which ``model_queries`` they belong to (a new model's replace the old ones)

    @classmethod
    def of(cls, label: str, box: Box | None, old_crop: np.ndarray | None, new_crop: np.ndarray | None,
           rows_before: dict[int, Segment | None], rows_after: dict[int, Segment | None],
           queries_before: dict[int, tuple[int, ...] | None] | None = None,
           queries_after: dict[int, tuple[int, ...] | None] | None = None, queries_epoch: int = 0) -> Change:
        """Record an edit from the map crop (inside ``box``) before and after it, and the rows it touched."""
        return cls(label, box, _pack(old_crop) if old_crop is not None else b"",
                   _pack(new_crop) if new_crop is not None else b"", dict(rows_before), dict(rows_after),
                   dict(queries_before or {}), dict(queries_after or {}), int(queries_epoch))

    @property
    def nbytes(self) -> int:
        return (len(self.before) + len(self.after) + 128 * (len(self.rows_before) + len(self.rows_after))
                + 64 * (len(self.queries_before) + len(self.queries_after)) + 128)

    def crop(self, forward: bool) -> np.ndarray | None:
        """The map inside ``box`` after the edit (``forward``) or before it; None when no pixel changed."""
        if self.box is None:
            return None
        y0, x0, y1, x1 = self.box
        return _unpack(self.after if forward else self.before, (y1 - y0, x1 - x0))

    def rows(self, forward: bool) -> dict[int, Segment | None]:
        """The touched rows after the edit (``forward``) or before it (None: no such row)."""
        return dict(self.rows_after if forward else self.rows_before)

    def queries(self, forward: bool) -> dict[int, tuple[int, ...] | None]:
        """The touched ``model_queries`` entries after the edit (``forward``) or before it (None: no entry)."""
        return dict(self.queries_after if forward else self.queries_before)


class UndoHistory:
    """The undo and redo stacks of one annotation (it owns them; the annotation applies what it returns)."""

    def __init__(self, max_entries: int = 200, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("history limits must be >= 0")
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._undo: deque[Change] = deque()
        self._redo: list[Change] = []
        self._undo_bytes = 0
        self._net_edits = 0  # edits recorded minus edits undone

    def record(self, change: Change) -> None:
        """A new edit: undoable (within the bounds); the redo stack is cleared."""
        self._redo.clear()
        self._net_edits += 1
        if self.max_entries == 0 or change.nbytes > self.max_bytes:
            self._undo.clear()
            self._undo_bytes = 0
            return
        self._undo.append(change)
        self._undo_bytes += change.nbytes
        while len(self._undo) > self.max_entries or self._undo_bytes > self.max_bytes:
            self._undo_bytes -= self._undo.popleft().nbytes

    def undo(self) -> Change | None:
        """The last edit, moved to the redo stack, for the caller to revert (None: nothing to undo)."""
        if not self._undo:
            return None
        change = self._undo.pop()
        self._undo_bytes -= change.nbytes
        self._redo.append(change)
        self._net_edits -= 1
        return change

    def redo(self) -> Change | None:
        """The last undone edit, moved back to the undo stack, for the caller to apply again (None: none)."""
        if not self._redo:
            return None
        change = self._redo.pop()
        self._undo.append(change)
        self._undo_bytes += change.nbytes
        self._net_edits += 1
        return change

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def labels(self) -> list[str]:
        """Names of the undoable edits, oldest first."""
        return [c.label for c in self._undo]

    @property
    def nbytes(self) -> int:
        """Memory held by the undo and redo stacks (compressed diffs), in bytes."""
        return self._undo_bytes + sum(c.nbytes for c in self._redo)

    @property
    def net_edits(self) -> int:
        """Edits recorded, undone ones not counted (0: the annotation is as it started)."""
        return self._net_edits
