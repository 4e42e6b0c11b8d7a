"""Bounded undo/redo of ``EditSession``: each edit stored as a compressed diff, not a snapshot.

Each edit stores the box of the pixels that changed, that crop of the map before and after
(zlib-compressed), and the table rows before and after for the touched segments. Undo writes the
"before" crop back and restores the rows; redo the "after" ones. A small brush stroke costs a few
hundred bytes whatever the image size. The history keeps at most ``max_history`` entries and
``max_history_bytes`` bytes (oldest dropped first; a single edit larger than the byte cap cannot be
undone and clears the history).

``UndoHistory`` is a mixin of ``EditSession``: it works on the session's ``_map``, ``_segments``,
``_undo``, ``_redo``, ``_history_bytes``, ``_net_edits``, ``max_history`` and ``max_history_bytes``,
which ``EditSession.__init__`` sets up; ``EditSession._commit`` records each edit with ``_push``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from m2f_core.structures import Segment

from .regions import Box

__all__ = ["UndoHistory"]


@dataclass
class _Change:
    """One undoable edit: compressed before/after crops of the map and the touched table rows."""

    label: str
    box: Box | None
    before: bytes
    after: bytes
    rows_before: dict[int, Segment | None]
    rows_after: dict[int, Segment | None]

    @property
    def nbytes(self) -> int:
        return len(self.before) + len(self.after) + 128 * (len(self.rows_before) + len(self.rows_after)) + 128


def _pack(a: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(a, dtype=np.int32).tobytes(), 1)


def _unpack(data: bytes, box: Box) -> np.ndarray:
    y0, x0, y1, x1 = box
    return np.frombuffer(zlib.decompress(data), dtype=np.int32).reshape(y1 - y0, x1 - x0)


class UndoHistory:
    """Undo / redo of an ``EditSession`` (a mixin: the session owns the state, see the module docstring)."""

    def _push(self, change: _Change) -> None:
        self._redo.clear()
        self._net_edits += 1
        if self.max_history == 0 or change.nbytes > self.max_history_bytes:
            self._undo.clear()
            self._history_bytes = 0
            return
        self._undo.append(change)
        self._history_bytes += change.nbytes
        while len(self._undo) > self.max_history or self._history_bytes > self.max_history_bytes:
            self._history_bytes -= self._undo.popleft().nbytes

    def _apply(self, change: _Change, forward: bool) -> None:
        if change.box is not None:
            y0, x0, y1, x1 = change.box
            self._map[y0:y1, x0:x1] = _unpack(change.after if forward else change.before, change.box)
        for sid, seg in (change.rows_after if forward else change.rows_before).items():
            if seg is None:
                self._segments.pop(sid, None)
            else:
                self._segments[sid] = seg

    # ---------------------------------------------------------------------------- history
    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def history_labels(self) -> list[str]:
        """Names of the undoable edits, oldest first."""
        return [c.label for c in self._undo]

    @property
    def history_nbytes(self) -> int:
        """Memory held by the undo and redo stacks (compressed diffs), in bytes."""
        return self._history_bytes + sum(c.nbytes for c in self._redo)

    @property
    def has_edits(self) -> bool:
        """True when the annotation differs from how the session started (counting undos)."""
        return self._net_edits != 0

    @property
    def edit_count(self) -> int:
        """Edits since the session started, undone ones not counted (the export manifest's ``edits``)."""
        return self._net_edits

    def undo(self) -> str | None:
        """Undo the last edit; returns its name (None when there is nothing to undo)."""
        if not self._undo:
            return None
        change = self._undo.pop()
        self._history_bytes -= change.nbytes
        self._apply(change, forward=False)
        self._redo.append(change)
        self._net_edits -= 1
        return change.label

    def redo(self) -> str | None:
        """Redo the last undone edit; returns its name (None when there is nothing to redo)."""
        if not self._redo:
            return None
        change = self._redo.pop()
        self._apply(change, forward=True)
        self._undo.append(change)
        self._history_bytes += change.nbytes
        self._net_edits += 1
        return change.label
