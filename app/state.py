"""What one browser session of the editor holds: its images, their edit sessions and cached predictions.

Pure Python and no globals: each Gradio session gets its own ``WorkspaceState`` (``gr.State``), so
two people never see each other's edits. The ``EditSession`` of an image lives as long as the
workspace, so edits survive switching task and moving to another image and back. Predictions
(raw network outputs, the expensive part) are kept for the most recent images only
(``max_predictions``, least recently used dropped first): they can be recomputed, edits cannot.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .editing import TASKS, EditSession

if TYPE_CHECKING:
    from m2f_core.prediction import Prediction
    from m2f_core.structures import InstanceResult, PanopticResult, SemanticResult

__all__ = ["ImageItem", "WorkspaceState"]


@dataclass
class ImageItem:
    """One image of the workspace: where it is and its editable annotation (None until predicted/loaded)."""

    key: str
    path: Path | None
    session: EditSession | None = None


class WorkspaceState:
    """Images (in the order added), the current image and task, an edit session per image."""

    def __init__(self, task: str = "panoptic", object_mask_threshold: float | None = None,
                 overlap_threshold: float | None = None, max_predictions: int = 8,
                 session_kwargs: dict[str, Any] | None = None) -> None:
        self._items: dict[str, ImageItem] = {}
        self._predictions: OrderedDict[str, Prediction] = OrderedDict()
        self.max_predictions = max(1, int(max_predictions))
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.session_kwargs = dict(session_kwargs or {})
        self.current: str | None = None
        self._task = "panoptic"
        self.task = task

    # ---------------------------------------------------------------------------- images
    @property
    def keys(self) -> list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def item(self, key: str | None = None) -> ImageItem:
        key = self._key(key)
        return self._items[key]

    def _key(self, key: str | None) -> str:
        if key is None:
            if self.current is None:
                raise ValueError("no image is open")
            return self.current
        if key not in self._items:
            raise ValueError(f"no image {key!r} in this workspace")
        return key

    def add_image(self, path: str | Path | None = None, key: str | None = None) -> str:
        """Add an image (once: adding the same key again keeps its edits); it becomes current if none is."""
        if key is None:
            if path is None:
                raise ValueError("an image needs a path or a key")
            key = str(path)
        if key not in self._items:
            self._items[key] = ImageItem(key, None if path is None else Path(path))
        if self.current is None:
            self.current = key
        return key

    def remove_image(self, key: str) -> None:
        """Forget an image and its edits; the current image moves to a neighbour."""
        key = self._key(key)
        keys = self.keys
        i = keys.index(key)
        del self._items[key]
        self._predictions.pop(key, None)
        if self.current == key:
            rest = self.keys
            self.current = rest[min(i, len(rest) - 1)] if rest else None

    def open(self, key: str) -> ImageItem:
        """Make ``key`` the current image (its edits, if any, are still there)."""
        self.current = self._key(key)
        return self._items[self.current]

    def step(self, delta: int) -> str | None:
        """Move ``delta`` images forward (negative: back), clamped to the list; returns the current key."""
        if not self._items:
            return None
        keys = self.keys
        i = keys.index(self.current) if self.current in self._items else 0
        self.current = keys[max(0, min(len(keys) - 1, i + int(delta)))]
        return self.current

    # ---------------------------------------------------------------------------- task
    @property
    def task(self) -> str:
        return self._task

    @task.setter
    def task(self, task: str) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r} (one of {', '.join(TASKS)})")
        self._task = task

    # ---------------------------------------------------------------------------- predictions and sessions
    def set_prediction(self, key: str, prediction: Prediction) -> EditSession:
        """Cache an image's prediction; start its edit session from it unless one exists (edits are kept)."""
        key = self._key(key)
        self._predictions[key] = prediction
        self._predictions.move_to_end(key)
        while len(self._predictions) > self.max_predictions:
            self._predictions.popitem(last=False)
        item = self._items[key]
        if item.session is None:
            item.session = EditSession.from_prediction(prediction, self.object_mask_threshold,
                                                       self.overlap_threshold, **self.session_kwargs)
        return item.session

    def prediction(self, key: str | None = None) -> Prediction | None:
        """The cached prediction (None if never predicted or dropped from the cache: predict again)."""
        key = self._key(key)
        pred = self._predictions.get(key)
        if pred is not None:
            self._predictions.move_to_end(key)
        return pred

    def set_session(self, key: str, session: EditSession) -> None:
        """Use ``session`` (e.g. ``EditSession.from_panoptic`` of ground truth) as the image's annotation."""
        self._items[self._key(key)].session = session

    def session(self, key: str | None = None) -> EditSession | None:
        return self._items[self._key(key)].session

    def reset_session(self, key: str | None = None) -> EditSession:
        """Throw the edits away and start again from the cached prediction (with the current thresholds)."""
        key = self._key(key)
        pred = self._predictions.get(key)
        if pred is None:
            raise ValueError(f"no prediction cached for {key!r}: predict the image again first")
        session = EditSession.from_prediction(pred, self.object_mask_threshold, self.overlap_threshold,
                                              **self.session_kwargs)
        self._items[key].session = session
        return session

    def current_view(self) -> PanopticResult | InstanceResult | SemanticResult | None:
        """The current image's annotation as the current task sees it (None before it is predicted)."""
        if self.current is None:
            return None
        session = self._items[self.current].session
        return None if session is None else session.view(self.task)

    def export_items(self, only_edited: bool = False) -> list[tuple[Path, EditSession]]:
        """(image path, session) of the images that have an annotation, in workspace order, for the exporter."""
        out = []
        for item in self._items.values():
            if item.session is None or item.path is None or (only_edited and not item.session.has_edits):
                continue
            out.append((item.path, item.session))
        return out
