"""The editor's actions without a UI: what happens on upload, task switch, click, edit, export.

``Workbench`` holds what all users share (the model, the image list given on the command line, the
export folder); ``EditorSession`` is what one browser session owns (its ``WorkspaceState``, the
selection, the recover candidates, its counters). Every action takes a session, changes it through
``EditSession`` / ``WorkspaceState`` and returns a ``Screen``: everything the page shows, as plain
Python values. The Gradio layer (``app/ui.py``) only maps events to these methods and ``Screen``
fields to components, so every behaviour here is testable without a browser.

User mistakes (a bad image, an edit that cannot apply, a bad export name) never raise: the
``Screen`` carries the one-line message in ``status`` and nothing changes.

Split by responsibility: this module holds the shared state, sessions, model runs, the ``Screen``
rendering, opening images and view options; ``app.workbench_edits`` the clicks and edits;
``app.workbench_loop`` export, fine-tune and adopting its model; ``app.workbench_session`` the
``EditorSession`` and ``Screen`` records.

Which model predicted an image: every prediction is made under the label of the current weights
(``model_label``), and the status line shows it ("predicted by: ..."). An image without edits always
shows the current model's prediction: opened after the model was swapped, it is predicted again
(``_open``). An edited image keeps its edits and the prediction they were made on until the user
chooses Re-predict (``LoopActions.repredict``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from m2f_core.atomic import remove_stale_temporaries
from m2f_core.images import DEFAULT_MAX_PIXELS, ImageError, load_image

from .editing import TASKS
from .finetune import FineTuneRun
from .render import candidate_preview, relabel_choices, render_canvas, render_ground_truth, segment_rows
from .state import WorkspaceState
from .workbench_edits import CLICK_MODES, EditActions
from .workbench_loop import LoopActions
from .workbench_session import EditorSession, Screen, _ms, short_label, unique_name

if TYPE_CHECKING:
    from m2f_core.data.records import SegmentationDataset
    from m2f_core.prediction import Prediction
    from m2f_core.predictor import Predictor

__all__ = ["CLICK_MODES", "EditorSession", "Screen", "Workbench", "unique_name"]

log = logging.getLogger("app")

TASK_LABELS = {"panoptic": "Panoptic", "instance": "Instance", "semantic": "Semantic"}


class Workbench(EditActions, LoopActions):
    """The shared part of the app: the model and the command line's images. Thread-safe."""

    def __init__(self, predictor: Predictor, corrections_dir: str | Path = "datasets/corrections", *,
                 images: Sequence[str | Path] = (), dataset: SegmentationDataset | None = None,
                 dataset_spec: str | None = None, dataset_split: str | None = None,
                 examples: Sequence[str | Path] = (), work_dir: str | Path | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = 1600, min_side: int = 640,
                 weights_label: str = "",
                 weights_source: str | None = None, runs_dir: str | Path = "runs", finetune_minutes: float = 10.0,
                 finetune_max_iter: int | None = None, finetune_args: Sequence[str] = ()) -> None:
        self.predictor = predictor
        self.corrections_dir = Path(corrections_dir)
        remove_stale_temporaries(self.corrections_dir)  # an export killed mid-write: put the old one back
        self.dataset = dataset
        self.dataset_spec = dataset_spec  # "FORMAT:PATH" of ``dataset`` (the export manifest's ``source``)
        self.dataset_split = dataset_split
        self._gt_index: dict[str, int] = {}
        self._source_ids: dict[str, int | str] = {}  # image path -> its id in the dataset (kept by exports)
        browse = [Path(p) for p in images]
        if dataset is not None:
            for i in range(len(dataset)):
                sample = dataset[i]
                path = Path(sample.file_name)
                self._gt_index[str(path)] = i
                self._source_ids[str(path)] = sample.image_id
                browse.append(path)
        self.browse = browse
        self.examples = [Path(p) for p in examples]
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="m2f-app-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.max_pixels = int(max_pixels)
        self.max_side = int(max_side)
        self.min_side = int(min_side)
        self.weights_label = weights_label
        self.weights_source = weights_source
        self.runs_dir = Path(runs_dir)
        self.finetune_minutes = float(finetune_minutes)
        self.finetune_max_iter = finetune_max_iter
        self.finetune_args = list(finetune_args)  # more trainer options (e.g. --recipe FILE)
        self.finetune_run: FineTuneRun | None = None  # the app's one fine-tuning run (the last started)
        self.finetune_export: Path | None = None  # the export it trains on
        self._job_lock = threading.Lock()
        self.model_runs = 0  # all sessions together
        self._model_lock = threading.Lock()
        self._session_ids = itertools.count(1)

    @property
    def config(self):
        return self.predictor.config

    @property
    def model_label(self) -> str:
        """The label of the current weights, stored with each prediction ("predicted by")."""
        return self.weights_label or self.config.name

    # ---------------------------------------------------------------------------- sessions
    def new_session(self) -> EditorSession:
        """A fresh per-browser state: the command line's images listed, nothing predicted yet."""
        upload_dir = self.work_dir / f"session-{next(self._session_ids)}"
        upload_dir.mkdir(parents=True, exist_ok=True)
        ws = WorkspaceState(session_kwargs={"max_history": 200})
        for path in self.browse:
            ws.add_image(path)
        return EditorSession(workspace=ws, upload_dir=upload_dir)

    def close_session(self, s: EditorSession | None) -> None:
        """Forget a session's uploads (called when the browser session ends)."""
        if s is not None:
            shutil.rmtree(s.upload_dir, ignore_errors=True)

    # ---------------------------------------------------------------------------- model
    def _predict(self, s: EditorSession, key: str) -> Prediction:
        """Run the model once on an image (decoded with the pixel limit) and cache the result."""
        item = s.workspace.item(key)
        rgb = load_image(item.path, max_pixels=self.max_pixels)
        with self._model_lock:  # the predictor and its label are swapped together under this lock
            pred = self.predictor.predict(rgb)
            label = self.model_label
            self.model_runs += 1
        s.model_runs += 1
        s.timings["model"] = _ms(pred.timings.get("model", 0.0) + pred.timings.get("preprocess", 0.0))
        log.info("model run %d: %s %dx%d in %.0f ms", self.model_runs, item.path.name if item.path else key,
                 rgb.shape[1], rgb.shape[0], s.timings["model"])
        s.workspace.set_prediction(key, pred, weights=label)
        return pred

    def _outdated(self, s: EditorSession, key: str) -> bool:
        """An untouched image (no edits, not marked reviewed) predicted by other weights than the current
        ones: predict it again. Loaded labels (``weights`` empty) are never replaced."""
        item = s.workspace.item(key)
        return (item.session is not None and bool(item.weights) and item.weights != self.model_label
                and item.status == "untouched")

    def _prediction(self, s: EditorSession) -> Prediction | None:
        """The current image's prediction, recomputed if it fell out of the cache (edits are kept)."""
        ws = s.workspace
        if ws.current is None:
            return None
        pred = ws.prediction()
        if pred is None:
            pred = self._predict(s, ws.current)
        return pred

    # ---------------------------------------------------------------------------- the screen
    def screen(self, s: EditorSession, message: str = "", export_file: str | None = None) -> Screen:
        """Render the current state (canvas timed as ``render``)."""
        ws = s.workspace
        session = ws.session() if ws.current is not None else None
        pred = ws.prediction() if ws.current is not None else None
        position = self._position(s)
        if session is None or pred is None:
            return Screen(None, [], self._status(s, message), [], None, [], None, position, export_file)
        s.selected = [i for i in s.selected if i in session]
        start = time.perf_counter()
        canvas = render_canvas(pred.image, session, ws.task, self.config, opacity=s.opacity, outline=s.outline,
                               selected=s.selected, uncertainty=pred.uncertainty() if s.uncertainty else None,
                               max_side=self.max_side, min_side=self.min_side)
        s.timings["render"] = _ms(time.perf_counter() - start)
        primary = s.selected[-1] if s.selected else None
        # the model's ranking only from the prediction the annotation started from (same query numbers)
        ranking = pred if ws.predicted_by() == ws.item().weights else None
        choices = relabel_choices(session, ranking, primary) if primary is not None else []
        value = session.segment(primary).category_id if primary is not None else None
        color = self.config.colors
        cands = [(candidate_preview(pred.image, c, color[c.category_id] if c.category_id < len(color) else (255, 0, 0)),
                  f"{self.config.class_names[c.category_id]} {c.score:.2f}") for c in s.candidates]
        return Screen(canvas, segment_rows(session, s.selected), self._status(s, message), choices, value, cands,
                      self._ground_truth(s, pred), position, export_file)

    def _position(self, s: EditorSession) -> str:
        ws = s.workspace
        if ws.current is None:
            return "no image"
        return f"image {ws.keys.index(ws.current) + 1} / {len(ws)}: {self._name(s)}"

    def _name(self, s: EditorSession) -> str:
        item = s.workspace.item()
        return item.path.name if item.path is not None else item.key

    def _status(self, s: EditorSession, message: str) -> str:
        ws = s.workspace
        parts = []
        if ws.current is not None and ws.session() is not None:
            session = ws.session()
            h, w = session.shape
            parts.append(f"{self._name(s)} {w}×{h}")
            parts.append(TASK_LABELS[ws.task] + (" (uncertainty)" if s.uncertainty else ""))
            parts.append(f"{len(session.segments)} segments")
            if s.selected:
                sel = ", ".join(f"#{i} {session.class_names[session.segment(i).category_id]}" for i in s.selected)
                parts.append(f"selected {sel}")
            parts.append(self._predicted_by(s))
            parts.append(f"export status: {ws.item().status}")
        t = s.timings
        if "model" in t:
            parts.append(f"model {t['model']:.0f} ms")
        parts.append(f"model runs: {s.model_runs}")
        if "edit" in t:
            parts.append(f"edit {t['edit']:.1f} ms")
        if "render" in t:
            parts.append(f"render {t['render']:.1f} ms")
        line = " · ".join(parts)
        return f"{message}\n\n{line}" if message else line

    def _predicted_by(self, s: EditorSession) -> str:
        """Which weights predicted the current image, and what that means for its edits."""
        ws = s.workspace
        item, by = ws.item(), ws.predicted_by()
        text = f"predicted by: {short_label(by or item.weights or '?')}"
        if item.weights and by is not None and by != item.weights:
            text += f" (edits made on the prediction of {short_label(item.weights)}: no model ranking in the " \
                    "relabel menu)"
        elif by is not None and by != self.model_label and item.status == "untouched":
            text += " (an earlier model: ⟳ Re-predict to use the current one)"  # swapped while it was open
        elif by is not None and by != self.model_label:
            text += " (an earlier model, kept for your edits or review: ⟳ Re-predict starts again from the current one)"
        return text

    def _ground_truth(self, s: EditorSession, pred: Prediction) -> np.ndarray | None:
        if self.dataset is None:
            return None
        item = s.workspace.item()
        index = self._gt_index.get(str(item.path))
        if index is None:
            return None
        try:
            sample = self.dataset[index]
        except ValueError:
            return None
        cats = self.dataset.categories
        names = [c["name"] for c in cats]
        colors = [c.get("color") for c in cats] if all(c.get("color") for c in cats) else None
        is_thing = [bool(c.get("isthing", True)) for c in cats]
        if sample.panoptic is not None and sample.panoptic.segment_map.shape != pred.image.shape[:2]:
            return None
        return render_ground_truth(pred.image, sample.panoptic, sample.semantic, names, colors, is_thing,
                                   s.opacity, self.max_side, self.min_side)

    def _run(self, s: EditorSession, action: Callable[[], str | None]) -> Screen:
        """Run an action under the session lock; a ValueError becomes the status message.

        The action returns its message, or None to keep the last one (a view change, a repeated event).
        """
        with s.lock:
            try:
                message = action()
            except ValueError as e:
                message = f"⚠️ {e}"
            if message is not None:
                s.message = message
            return self.screen(s, s.message)

    # ---------------------------------------------------------------------------- opening images
    def start(self, s: EditorSession) -> Screen:
        """Page load: open the first command-line image, if any."""
        def action():
            current = s.workspace.current
            if current is not None and (s.workspace.prediction() is None or self._outdated(s, current)):
                self._open(s, current, "")
                return "ready"
            return "Upload an image or pick an example." if s.workspace.current is None else ""
        return self._run(s, action)

    def open_upload(self, s: EditorSession, path: str | Path | None) -> Screen:
        """An uploaded file: decoded (clear message if it is not a usable image), stored, predicted."""
        def action():
            if path is None:
                return None
            src = Path(path)
            try:
                rgb = load_image(src, max_pixels=self.max_pixels)
            except ImageError as e:  # name the file as the user knows it, not by its upload path
                raise ImageError(str(e).replace(str(src), src.name)) from None
            digest = hashlib.sha1(rgb.tobytes()).hexdigest()[:16]
            key = f"upload:{digest}"
            if key not in s.workspace:  # the same picture again returns to its edits
                taken = {Path(k).name if i.path is None else i.path.name
                         for k, i in ((k, s.workspace.item(k)) for k in s.workspace.keys)}
                target = s.upload_dir / unique_name(src.stem, ".png", taken)
                Image.fromarray(rgb).save(target)  # upright, lossless: what the annotation refers to
                s.workspace.add_image(target, key=key)
            return self._open(s, key, f"opened {src.name}")
        return self._run(s, action)

    def open_example(self, s: EditorSession, index: int) -> Screen:
        def action():
            if not 0 <= int(index) < len(self.examples):
                raise ValueError(f"no example {index}")
            path = self.examples[int(index)]
            key = s.workspace.add_image(path)
            return self._open(s, key, f"opened example {path.name}")
        return self._run(s, action)

    def step(self, s: EditorSession, delta: int) -> Screen:
        """Next / previous image of the workspace (uploads and command-line images, in order)."""
        def action():
            before = s.workspace.current
            key = s.workspace.step(delta)
            if key is None:
                return "no images: upload one or start the app with --images DIR"
            if key == before and s.workspace.prediction() is not None:
                return "first image" if delta < 0 else "last image"
            return self._open(s, key, "")
        return self._run(s, action)

    def _open(self, s: EditorSession, key: str, message: str) -> str:
        ws = s.workspace
        ws.open(key)
        s.selected, s.candidates = [], []
        if self._outdated(s, key):  # the model was swapped since: its untouched annotation follows the model
            ws.discard(key)
        if ws.prediction() is None:
            self._predict(s, key)
        return message

    # ---------------------------------------------------------------------------- view options
    def set_task(self, s: EditorSession, task: str) -> Screen:
        """Switch task: re-rendered from the cached prediction, the model is not run."""
        def action():
            t = str(task).lower()
            if t not in TASKS:
                raise ValueError(f"unknown task {task!r}")
            s.workspace.task = t
            return None
        return self._run(s, action)

    def set_view(self, s: EditorSession, opacity: float | None = None, outline: bool | None = None,
                 uncertainty: bool | None = None) -> Screen:
        def action():
            if opacity is not None:
                s.opacity = float(min(1.0, max(0.0, opacity)))
            if outline is not None:
                s.outline = bool(outline)
            if uncertainty is not None:
                s.uncertainty = bool(uncertainty)
            return None
        return self._run(s, action)

    def describe(self) -> str:
        """One line about the model, for the page header."""
        cfg = self.config
        return (f"model: {self.weights_label or cfg.name} · {len(cfg.class_names)} classes · "
                f"device {self.predictor.device} · exports to {self.corrections_dir}")

    def info(self) -> dict:
        """Counters for tests and monitoring."""
        return {"model_runs": self.model_runs, "weights": self.weights_label}
