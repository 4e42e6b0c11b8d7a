"""The model every browser session shares: one predictor, the label of its weights, a run counter.

``SharedModel`` owns the predictor and swaps it (``swap``, after a fine-tuning run is adopted) under
its lock, together with its label, so that a prediction and the label stored with it always match.

Which model predicted an image: every prediction is made under the label of the current weights
(``label``), and the status line shows it ("predicted by: ..."). An image without edits always shows
the current model's prediction: opened after the model was swapped, it is predicted again
(``open_image``). An edited image keeps its edits and the prediction they were made on until the
user chooses Re-predict (``LoopController.repredict``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from m2f_core.images import DEFAULT_MAX_PIXELS, load_image

from .browser_session import BrowserSession, milliseconds

if TYPE_CHECKING:
    from m2f_core.prediction import Prediction
    from m2f_core.predictor import Predictor

__all__ = ["SharedModel"]

log = logging.getLogger("app")
T = TypeVar("T")


class SharedModel:
    """The predictor all sessions use, the label of its weights and how many times it ran. Thread-safe."""

    def __init__(self, predictor: Predictor, weights_label: str = "", weights_source: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.predictor = predictor
        self.weights_label = weights_label
        self.weights_source = weights_source  # what ``--init`` of a fine-tuning run starts from
        self.max_pixels = int(max_pixels)
        self.runs = 0  # all sessions together
        self._lock = threading.Lock()  # the predictor and its label are swapped together under it

    @property
    def config(self):
        return self.predictor.config

    @property
    def label(self) -> str:
        """The label of the current weights, stored with each prediction ("predicted by")."""
        return self.weights_label or self.config.name

    def predict(self, s: BrowserSession, key: str) -> Prediction:
        """Run the model once on an image (decoded with the pixel limit) and cache the result in the session."""
        item = s.workspace.item(key)
        rgb = load_image(item.path, max_pixels=self.max_pixels)
        with self._lock:
            pred = self.predictor.predict(rgb)
            label = self.label
            self.runs += 1
        s.model_runs += 1
        s.timings["model"] = milliseconds(pred.timings.get("model", 0.0) + pred.timings.get("preprocess", 0.0))
        log.info("model run %d: %s %dx%d in %.0f ms", self.runs, item.path.name if item.path else key,
                 rgb.shape[1], rgb.shape[0], s.timings["model"])
        s.workspace.set_prediction(key, pred, weights=label)
        return pred

    def is_outdated(self, s: BrowserSession, key: str) -> bool:
        """An untouched image (no edits, not marked reviewed) predicted by other weights than the current
        ones: predict it again. Loaded labels (``weights`` empty) are never replaced."""
        item = s.workspace.item(key)
        return (item.session is not None and bool(item.weights) and item.weights != self.label
                and item.status == "untouched")

    def prediction(self, s: BrowserSession) -> Prediction | None:
        """The current image's prediction, recomputed if it fell out of the cache (edits are kept)."""
        ws = s.workspace
        if ws.current is None:
            return None
        pred = ws.prediction()
        if pred is None:
            pred = self.predict(s, ws.current)
        return pred

    def open_image(self, s: BrowserSession, key: str) -> None:
        """Make ``key`` the session's current image (selection cleared), predicted by the current model
        unless it has edits or a review mark (those keep the prediction they were made on)."""
        ws = s.workspace
        ws.open(key)
        s.selected, s.candidates = [], []
        if self.is_outdated(s, key):  # the model was swapped since: its untouched annotation follows the model
            ws.discard(key)
        if ws.prediction() is None:
            self.predict(s, key)

    def swap(self, predictor: Predictor, label: str) -> None:
        """Use ``predictor`` (weights ``label``, also the source of later fine-tuning runs) from now on."""
        with self._lock:
            self.predictor = predictor
            self.weights_source = self.weights_label = label

    def use(self, fn: Callable[[Predictor], T]) -> T:
        """``fn(predictor)`` with the model to itself (no swap or prediction meanwhile)."""
        with self._lock:
            return fn(self.predictor)
