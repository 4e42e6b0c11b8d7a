"""What one browser session of the editor holds: its images, their edit sessions and cached predictions.

Pure Python and no globals: each Gradio session gets its own ``WorkspaceState`` (``gr.State``), so
two people never see each other's edits. The ``EditSession`` of an image lives as long as the
workspace, so edits survive switching task and moving to another image and back. Predictions
(raw network outputs, the expensive part) are kept for the most recent images only
(``max_predictions``, least recently used dropped first): they can be recomputed, edits cannot.

Which weights predicted what: each cached prediction carries the label of the weights that made it
(``predicted_by``) and each image the label of the weights behind its annotation (``ImageItem.weights``).
They differ only for an edited image whose old prediction left the cache after the model was swapped;
its ``model_queries`` (query numbers of the old model) are then cleared, so a relabel menu never reads
one model's query numbers against another model's output.

What an export takes (``export_items``): each image's ``ImageItem.status`` is "edited" (its edit session
changed the annotation), "reviewed" (the user marked the model's output as right) or "untouched" (the
model's own output, nobody looked at it); untouched images are exported only when asked for.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .editing import TASKS, EditSession
from .errors import UserError

if TYPE_CHECKING:
    from m2f_core.prediction import Prediction
    from m2f_core.structures import InstanceResult, PanopticResult, SemanticResult

__all__ = ["STATUSES", "ImageItem", "WorkspaceState"]

STATUSES = ("edited", "reviewed", "untouched")  # the words of the export manifest (read by training.finetune)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ImageItem:
    """One image of the workspace: where it is and its editable annotation (None until predicted/loaded)."""

    key: str
    path: Path | None
    session: EditSession | None = None
    weights: str = ""  # the weights whose prediction the annotation started from ("predicted by")
    reviewed: bool = False  # the user marked the annotation as right (cleared when it is predicted again)
    opened: str = ""  # ISO time the image first got an annotation (the export manifest's ``opened``)
    # where the image came from outside the app, e.g. {"dataset": ..., "sample_id": ...} of a FiftyOne sample
    # opened by a link (the export manifest's ``fiftyone``, so the bridge can bring the edit back)
    fiftyone: dict[str, str] | None = None

    @property
    def status(self) -> str:
        """How an export names it: "edited" (any net edit), "reviewed" (marked by the user) or "untouched"."""
        if self.session is not None and self.session.has_edits:
            return "edited"
        return "reviewed" if self.reviewed else "untouched"


class WorkspaceState:
    """Images (in the order added), the current image and task, an edit session per image."""

    def __init__(self, task: str = "panoptic", object_mask_threshold: float | None = None,
                 overlap_threshold: float | None = None, max_predictions: int = 8,
                 session_kwargs: dict[str, Any] | None = None) -> None:
        self._items: dict[str, ImageItem] = {}
        self._predictions: OrderedDict[str, Prediction] = OrderedDict()
        self._predicted_by: dict[str, str] = {}  # key -> label of the weights of the cached prediction
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
                raise UserError("no image is open")
            return self.current
        if key not in self._items:
            raise UserError(f"no image {key!r} in this workspace")
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
        self._predicted_by.pop(key, None)
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
            raise UserError(f"unknown task {task!r} (one of {', '.join(TASKS)})")
        self._task = task

    # ---------------------------------------------------------------------------- predictions and sessions
    def set_prediction(self, key: str, prediction: Prediction, weights: str = "") -> EditSession:
        """Cache an image's prediction (made by the weights labelled ``weights``); start its edit session
        from it unless one exists (edits are kept).

        An existing session started from other weights keeps its edits but loses its ``model_queries``:
        they number the other model's queries, not this prediction's.
        """
        key = self._key(key)
        self._predictions[key] = prediction
        self._predicted_by[key] = weights
        self._predictions.move_to_end(key)
        while len(self._predictions) > self.max_predictions:
            dropped, _ = self._predictions.popitem(last=False)
            self._predicted_by.pop(dropped, None)
        item = self._items[key]
        if item.session is None:
            item.session = EditSession.from_prediction(prediction, self.object_mask_threshold,
                                                       self.overlap_threshold, **self.session_kwargs)
            item.weights = weights
            item.opened = item.opened or _now()
        elif item.weights != weights:
            item.session.model_queries = {}
        return item.session

    def predicted_by(self, key: str | None = None) -> str | None:
        """The label of the weights of the cached prediction (None when nothing is cached)."""
        key = self._key(key)
        return self._predicted_by.get(key) if key in self._predictions else None

    def discard(self, key: str | None = None) -> None:
        """Forget an image's annotation and cached prediction: it is predicted again when next opened."""
        key = self._key(key)
        self._predictions.pop(key, None)
        self._predicted_by.pop(key, None)
        item = self._items[key]
        item.session, item.weights, item.reviewed = None, "", False

    def prediction(self, key: str | None = None) -> Prediction | None:
        """The cached prediction (None if never predicted or dropped from the cache: predict again)."""
        key = self._key(key)
        pred = self._predictions.get(key)
        if pred is not None:
            self._predictions.move_to_end(key)
        return pred

    def set_session(self, key: str, session: EditSession) -> None:
        """Use ``session`` (e.g. ``EditSession.from_panoptic`` of ground truth) as the image's annotation
        (not a model's: ``ImageItem.weights`` is empty)."""
        item = self._items[self._key(key)]
        item.session, item.weights, item.reviewed = session, "", False
        item.opened = item.opened or _now()

    def session(self, key: str | None = None) -> EditSession | None:
        return self._items[self._key(key)].session

    def reset_session(self, key: str | None = None) -> EditSession:
        """Throw the edits away and start again from the cached prediction (with the current thresholds)."""
        key = self._key(key)
        pred = self._predictions.get(key)
        if pred is None:
            raise UserError(f"no prediction cached for {key!r}: predict the image again first")
        session = EditSession.from_prediction(pred, self.object_mask_threshold, self.overlap_threshold,
                                              **self.session_kwargs)
        self._items[key].session = session
        self._items[key].weights = self._predicted_by.get(key, "")
        self._items[key].reviewed = False
        return session

    def mark_reviewed(self, key: str | None = None, reviewed: bool = True) -> ImageItem:
        """Mark an annotated image as checked by the user: exported as "reviewed" even without edits."""
        item = self._items[self._key(key)]
        if item.session is None:
            raise UserError(f"{item.key}: not predicted yet, nothing to review")
        item.reviewed = bool(reviewed)
        return item

    def current_view(self) -> PanopticResult | InstanceResult | SemanticResult | None:
        """The current image's annotation as the current task sees it (None before it is predicted)."""
        if self.current is None:
            return None
        session = self._items[self.current].session
        return None if session is None else session.view(self.task)

    def export_items(self, include_untouched: bool = False) -> list[ImageItem]:
        """The annotated images to export, in workspace order: the edited and reviewed ones, and the
        untouched ones (the model's own output) only with ``include_untouched``, so that an export holds
        corrections unless asked otherwise."""
        return [item for item in self._items.values()
                if item.session is not None and item.path is not None
                and (include_untouched or item.status != "untouched")]
