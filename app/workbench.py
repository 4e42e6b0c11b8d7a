"""The editor's actions without a UI: what happens on upload, task switch, click, edit, export.

``Workbench`` is what all users share, composed of parts that own their state:

- ``model``: the ``SharedModel`` (the predictor, the label of its weights, the run counter);
- ``source``: the ``DatasetImages`` of ``--dataset`` (ground truth, dataset ids);
- ``edits``: the ``EditEngine`` (clicks and segment edits of a session's current image);
- ``loop``: the ``LoopController`` (export, fine-tune, adopt, re-predict, measure; the one run).

Itself it holds the image list given on the command line, the examples and the per-session upload
folders. A ``BrowserSession`` is what one browser session owns (its ``WorkspaceState``, the selection,
the recover candidates, its counters). Every action takes a session, runs one part's method under the
session's lock (``_run``) and returns a ``Screen``: everything the page shows, as plain Python values.
The Gradio layer (``app/ui.py``) only maps events to these methods and ``Screen`` fields to
components, so every behaviour here is testable without a browser.

Errors: a user's mistake (a bad image, an edit that cannot apply, a bad export name: ``USER_ERRORS``)
never raises: the ``Screen`` carries its one-line message in ``status`` and nothing changes. Anything
else is a bug: it is logged with its traceback (logger ``app``; ``log_path`` is the file the app logs
to) and the status says "Internal error" and where the log is, never dressed as a user's mistake.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL import Image

from m2f_core.atomic import remove_stale_temporaries
from m2f_core.images import DEFAULT_MAX_PIXELS, ImageError, load_image

from .browser_session import BrowserSession, Screen, milliseconds, short_label, unique_name
from .canvas_sync import (
    candidate_payload,
    class_payload,
    encode_photo,
    ground_truth_payload,
    index_map_payload,
    segment_rows_payload,
    wand_payload,
)
from .dataset_images import DatasetImages
from .edit_engine import CLICK_MODES, EditEngine
from .editing import TASKS
from .errors import UserError, internal_error_message, is_user_error
from .loop_controller import FinetuneView, LoopController
from .render import relabel_choices, segment_rows
from .shared_model import SharedModel
from .state import WorkspaceState

if TYPE_CHECKING:
    from m2f_core.data.records import SegmentationDataset
    from m2f_core.prediction import Prediction
    from m2f_core.predictor import Predictor

    from .editing import EditSession

__all__ = ["CLICK_MODES", "BrowserSession", "Screen", "Workbench", "unique_name"]

log = logging.getLogger("app")
T = TypeVar("T")

TASK_LABELS = {"panoptic": "Panoptic", "instance": "Instance", "semantic": "Semantic"}


def _store_upload(src: Path, rgb: np.ndarray, folder: Path, taken: set[str]) -> Path:
    """Keep an upload as the file its annotation refers to: the file itself when it decodes to ``rgb`` as it
    is (a JPEG or PNG, 8-bit RGB, no EXIF rotation: a copy costs milliseconds, re-encoding a 12-megapixel
    PNG seconds), else ``rgb`` as a PNG (upright, lossless)."""
    try:
        with Image.open(src) as img:
            as_is = (img.format in ("JPEG", "PNG") and img.mode == "RGB" and img.size == (rgb.shape[1], rgb.shape[0])
                     and img.getexif().get(0x0112, 1) == 1)  # 0x0112: EXIF orientation
            suffix = ".jpg" if img.format == "JPEG" else ".png"
    except OSError:
        as_is, suffix = False, ".png"
    target = folder / unique_name(src.stem, suffix if as_is else ".png", taken)
    if as_is:
        shutil.copyfile(src, target)
    else:
        Image.fromarray(rgb).save(target, compress_level=1)
    return target


class Workbench:
    """The shared part of the app, composed of ``model``, ``source``, ``edits`` and ``loop``. Thread-safe."""

    def __init__(self, predictor: Predictor, corrections_dir: str | Path = "datasets/corrections", *,
                 images: Sequence[str | Path] = (), dataset: SegmentationDataset | None = None,
                 dataset_spec: str | None = None, dataset_split: str | None = None,
                 examples: Sequence[str | Path] = (), work_dir: str | Path | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 weights_label: str = "",
                 weights_source: str | None = None, runs_dir: str | Path = "runs", finetune_minutes: float = 10.0,
                 finetune_max_iter: int | None = None, finetune_args: Sequence[str] = (),
                 log_path: str | Path | None = None) -> None:
        remove_stale_temporaries(Path(corrections_dir))  # an export killed mid-write: put the old one back
        self.model = SharedModel(predictor, weights_label, weights_source, max_pixels)
        self.source = DatasetImages(dataset, dataset_spec, dataset_split)
        self.edits = EditEngine(self.model)
        self.loop = LoopController(self.model, corrections_dir, source=self.source, runs_dir=runs_dir,
                                   finetune_minutes=finetune_minutes, finetune_max_iter=finetune_max_iter,
                                   finetune_args=finetune_args)
        self.browse = [Path(p) for p in images] + self.source.paths
        self.examples = [Path(p) for p in examples]
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="m2f-app-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(log_path) if log_path is not None else None  # named by internal errors
        self._session_ids = itertools.count(1)
        self._revisions = itertools.count(1)  # every canvas payload differs, so the page always applies it

    # read-only views of the parts, for the page and for tests
    @property
    def config(self):
        return self.model.config

    @property
    def predictor(self) -> Predictor:
        return self.model.predictor

    @property
    def model_label(self) -> str:
        """The label of the current weights, stored with each prediction ("predicted by")."""
        return self.model.label

    @property
    def model_runs(self) -> int:
        return self.model.runs

    @property
    def corrections_dir(self) -> Path:
        return self.loop.corrections_dir

    @property
    def dataset(self) -> SegmentationDataset | None:
        return self.source.dataset

    # ---------------------------------------------------------------------------- sessions
    def new_session(self) -> BrowserSession:
        """A fresh per-browser state: the command line's images listed, nothing predicted yet."""
        upload_dir = self.work_dir / f"session-{next(self._session_ids)}"
        upload_dir.mkdir(parents=True, exist_ok=True)
        ws = WorkspaceState(session_kwargs={"max_history": 200})
        for path in self.browse:
            ws.add_image(path)
        return BrowserSession(workspace=ws, upload_dir=upload_dir)

    def close_session(self, s: BrowserSession | None) -> None:
        """Forget a session's uploads (called when the browser session ends)."""
        if s is not None:
            shutil.rmtree(s.upload_dir, ignore_errors=True)

    def close(self) -> None:
        """The app stops: a fine-tuning run does not outlive it (it saves its best weights first)."""
        if self.loop.finetune_run is not None:
            self.loop.finetune_run.cancel()

    # ---------------------------------------------------------------------------- the screen
    def screen(self, s: BrowserSession, message: str = "", export_file: str | None = None) -> Screen:
        """What the page shows now; the canvas payload holds only what the browser does not have yet
        (``canvas`` timed as ``render``)."""
        ws = s.workspace
        session = ws.session() if ws.current is not None else None
        pred = ws.prediction() if ws.current is not None else None
        position = self._position(s)
        if session is None or pred is None:
            s.sync.reset()
            return Screen({"empty": True}, [], self._status(s, message), [], None, position, export_file)
        s.selected = [i for i in s.selected if i in session]
        start = time.perf_counter()
        canvas = self._canvas(s, session, pred)
        s.timings["render"] = milliseconds(time.perf_counter() - start)
        primary = s.selected[-1] if s.selected else None
        # the model's ranking only from the prediction the annotation started from (same query numbers)
        ranking = pred if ws.predicted_by() == ws.item().weights else None
        choices = relabel_choices(session, ranking, primary) if primary is not None else []
        value = session.segment(primary).category_id if primary is not None else None
        return Screen(canvas, segment_rows(session, s.selected), self._status(s, message), choices, value,
                      position, export_file)

    def _canvas(self, s: BrowserSession, session: EditSession, pred: Prediction) -> dict:
        """The canvas payload (``app.canvas_sync``): photo and full map for a new image, else what changed."""
        ws, cfg = s.workspace, self.config
        key = str(ws.current)
        segments = session.segments
        map_update, new_image = s.sync.map_update(key, session.segment_map, [seg.id for seg in segments])
        h, w = session.shape
        payload: dict = {"key": key, "name": self._name(s), "size": [w, h], "task": ws.task, "map": map_update,
                         "segments": segment_rows_payload(segments, s.sync.index_of, cfg.colors),
                         "selected": list(s.selected), "selection_seq": s.selection_seq,
                         "rev": next(self._revisions), "show_uncertainty": s.uncertainty,
                         "has_ground_truth": self.source.index(ws.item().path) is not None,
                         "candidates": [candidate_payload(i, c) for i, c in enumerate(s.candidates)],
                         "wand": wand_payload(s.wand, s.wand_threshold) if s.wand is not None else None}
        if new_image:
            s.full_photo = False  # asked for again when the canvas zooms into this image
            payload["image"] = {"key": key, **encode_photo(pred.image)}
            payload["classes"] = class_payload(cfg.class_names, cfg.colors, cfg.is_thing)
        if s.full_photo and "full_photo" not in s.sync.extras and not new_image:
            payload["photo_full"] = {"key": key, **encode_photo(pred.image, display_side=max(h, w))}
            s.sync.extras.add("full_photo")
        if s.uncertainty and "uncertainty" not in s.sync.extras:
            payload["uncertainty"] = index_map_payload(np.round(pred.uncertainty() * 255).astype(np.uint8))
            s.sync.extras.add("uncertainty")
        if s.ground_truth and "ground_truth" not in s.sync.extras:
            payload["ground_truth"] = self._ground_truth(s, (h, w))
            s.sync.extras.add("ground_truth")
        return payload

    def _position(self, s: BrowserSession) -> str:
        ws = s.workspace
        if ws.current is None:
            return "no image"
        return f"image {ws.keys.index(ws.current) + 1} / {len(ws)}: {self._name(s)}"

    def _name(self, s: BrowserSession) -> str:
        item = s.workspace.item()
        return item.path.name if item.path is not None else item.key

    def _status(self, s: BrowserSession, message: str) -> str:
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

    def _predicted_by(self, s: BrowserSession) -> str:
        """Which weights predicted the current image, and what that means for its edits."""
        ws = s.workspace
        item, by = ws.item(), ws.predicted_by()
        text = f"predicted by: {short_label(by or item.weights or '?')}"
        if item.weights and by is not None and by != item.weights:
            text += f" (edits made on the prediction of {short_label(item.weights)}: no model ranking in the " \
                    "relabel menu)"
        elif by is not None and by != self.model.label and item.status == "untouched":
            text += " (an earlier model: ⟳ Re-predict to use the current one)"  # swapped while it was open
        elif by is not None and by != self.model.label:
            text += " (an earlier model, kept for your edits or review: ⟳ Re-predict starts again from the current one)"
        return text

    def _ground_truth(self, s: BrowserSession, shape: tuple[int, int]) -> dict:
        """The dataset's ground truth of the current image for the canvas (``ground_truth_payload``), or
        ``missing`` saying why there is none."""
        if self.dataset is None:
            return {"missing": "no --dataset: no ground truth"}
        index = self.source.index(s.workspace.item().path)
        if index is None:
            return {"missing": "this image is not from the dataset"}
        try:
            sample = self.dataset[index]
        except ValueError as e:
            return {"missing": f"its ground truth cannot be read: {e}"}
        return ground_truth_payload(sample, self.dataset.categories, self.config.class_names, self.config.colors,
                                    shape)

    def failure_message(self, e: Exception, what: str = "", where: str = "") -> str:
        """The status line of a failed action: a user's mistake as its message (``what`` in front:
        "export failed: "), anything else as an internal error, logged with its traceback (``where``: the
        action, for the log)."""
        if is_user_error(e):
            return f"⚠️ {what}{' '.join(str(e).split())}"
        log.error("internal error in %s", where or what.rstrip(": ") or "an action", exc_info=e)
        return f"⚠️ {internal_error_message(e, self.log_path)}"

    def _run(self, s: BrowserSession, action: Callable[[], str | None], *, what: str = "",
             export_file: Callable[[], str | None] | None = None) -> Screen:
        """Run an action under the session lock; a failure becomes the status message (``failure_message``).

        The action returns its message, or None to keep the last one (a view change, a repeated event).
        ``what`` prefixes a failure's message ("export failed: ").
        """
        where = getattr(action, "__qualname__", "")
        with s.lock:
            try:
                message = action()
            except Exception as e:  # noqa: BLE001  (never an exception into the page: a status line)
                message = self.failure_message(e, what, where)
            if message is not None:
                s.message = message
            try:
                return self.screen(s, s.message, export_file=export_file() if export_file is not None else None)
            except Exception as e:  # noqa: BLE001  (a rendering bug: the page still says what happened)
                s.message = self.failure_message(e, where="Workbench.screen")
                s.sync.reset()
                return Screen({"empty": True}, [], s.message, [], None, "", None)

    def _guarded(self, action: Callable[[], T], on_failure: Callable[[str], T], what: str = "") -> T:
        """An action of no session (the fine-tune panel), with ``_run``'s handling of failures."""
        try:
            return action()
        except Exception as e:  # noqa: BLE001
            return on_failure(self.failure_message(e, what, getattr(action, "__qualname__", "")))

    # ---------------------------------------------------------------------------- opening images
    def start(self, s: BrowserSession) -> Screen:
        """Page load: open the first command-line image, if any."""
        def action():
            current = s.workspace.current
            if current is not None and (s.workspace.prediction() is None or self.model.is_outdated(s, current)):
                self._open(s, current, "")
                return "ready"
            return "Upload an image or pick an example." if s.workspace.current is None else ""
        return self._run(s, action)

    def open_upload(self, s: BrowserSession, path: str | Path | None) -> Screen:
        """An uploaded file: decoded (clear message if it is not a usable image), stored, predicted."""
        def action():
            if path is None:
                return None
            src = Path(path)
            try:
                rgb = load_image(src, max_pixels=self.model.max_pixels)
            except ImageError as e:  # name the file as the user knows it, not by its upload path
                raise ImageError(str(e).replace(str(src), src.name)) from None
            digest = hashlib.sha1(rgb.tobytes()).hexdigest()[:16]
            key = f"upload:{digest}"
            if key not in s.workspace:  # the same picture again returns to its edits
                taken = {Path(k).name if i.path is None else i.path.name
                         for k, i in ((k, s.workspace.item(k)) for k in s.workspace.keys)}
                s.workspace.add_image(_store_upload(src, rgb, s.upload_dir, taken), key=key)
            return self._open(s, key, f"opened {src.name}")
        return self._run(s, action)

    def open_example(self, s: BrowserSession, index: int) -> Screen:
        def action():
            if not 0 <= int(index) < len(self.examples):
                raise UserError(f"no example {index}")
            path = self.examples[int(index)]
            key = s.workspace.add_image(path)
            return self._open(s, key, f"opened example {path.name}")
        return self._run(s, action)

    def step(self, s: BrowserSession, delta: int) -> Screen:
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

    def _open(self, s: BrowserSession, key: str, message: str) -> str:
        self.model.open_image(s, key)
        return message

    # ---------------------------------------------------------------------------- view options
    def set_task(self, s: BrowserSession, task: str) -> Screen:
        """Switch task: re-rendered from the cached prediction, the model is not run."""
        def action():
            t = str(task).lower()
            if t not in TASKS:
                raise UserError(f"unknown task {task!r}")
            s.workspace.task = t
            return None
        return self._run(s, action)

    def set_view(self, s: BrowserSession, uncertainty: bool | None = None, ground_truth: bool | None = None,
                 full_photo: bool | None = None) -> Screen:
        """What the canvas may show besides the annotation (its data is sent once per image): the
        uncertainty, the ground truth, the photo at full resolution (zoomed in past the display copy);
        opacity, outlines and labels are the browser's own."""
        def action():
            if full_photo is not None:
                s.full_photo = bool(full_photo)
            if uncertainty is not None:
                s.uncertainty = bool(uncertainty)
            if ground_truth is not None:
                s.ground_truth = bool(ground_truth)
            return None
        return self._run(s, action)

    def resync(self, s: BrowserSession) -> Screen:
        """The browser's canvas lost track (a payload it never got): send it everything again."""
        def action():
            s.sync.reset()
            return None
        return self._run(s, action)

    def describe(self) -> str:
        """One line about the model, for the page header."""
        cfg = self.config
        return (f"model: {self.model.label} · {len(cfg.class_names)} classes · "
                f"device {self.predictor.device} · exports to {self.corrections_dir}")

    def info(self) -> dict:
        """Counters for tests and monitoring."""
        return {"model_runs": self.model.runs, "weights": self.model.weights_label}

    # ---------------------------------------------------------------------------- clicks and edits (``edits``)
    def click(self, s: BrowserSession, x: float, y: float, mode: str = "Select", *, brush_size: float = 10.0,
              overwrite: bool = False, multi: bool = False, new_class: int | None = None) -> Screen:
        """A click at image pixel (x, y), interpreted by ``mode`` (``CLICK_MODES``)."""
        return self._run(s, lambda: self.edits.click(s, x, y, mode, brush_size=brush_size, overwrite=overwrite,
                                                     multi=multi, new_class=new_class))

    def select_segment(self, s: BrowserSession, segment_id: int | None, multi: bool = False) -> Screen:
        """Select by id (a click on the segment table)."""
        return self._run(s, lambda: self.edits.select_segment(s, segment_id, multi))

    def relabel(self, s: BrowserSession, class_id: int | None) -> Screen:
        return self._run(s, lambda: self.edits.relabel(s, class_id))

    def delete(self, s: BrowserSession) -> Screen:
        return self._run(s, lambda: self.edits.delete(s))

    def merge(self, s: BrowserSession) -> Screen:
        return self._run(s, lambda: self.edits.merge(s))

    def split(self, s: BrowserSession, min_area: int = 0) -> Screen:
        return self._run(s, lambda: self.edits.split(s, min_area))

    def fill_holes(self, s: BrowserSession, overwrite: bool = False) -> Screen:
        return self._run(s, lambda: self.edits.fill_holes(s, overwrite))

    def select_ids(self, s: BrowserSession, ids, seq: int | None = None) -> Screen:
        """The selection made on the canvas (shift-click adds), in click order; ``seq`` numbers it."""
        def action():
            if seq is not None:
                s.selection_seq = max(s.selection_seq, int(seq))
            return self.edits.select_ids(s, ids)
        return self._run(s, action)

    def recover_at(self, s: BrowserSession, x: float, y: float) -> Screen:
        return self._run(s, lambda: self.edits.recover_at(s, x, y))

    def stroke(self, s: BrowserSession, tool: str, points, radius: float, *, ids=None, overwrite: bool = False,
               fill: str = "neighbour", new_class: int | None = None) -> Screen:
        """A brush or eraser stroke dragged on the canvas (``ids``: the canvas's selection when it was drawn)."""
        def action():
            if ids is not None:
                self.edits.select_ids(s, ids)
            return self.edits.stroke(s, tool, points, radius, overwrite=overwrite, fill=fill, new_class=new_class)
        return self._run(s, action)

    def polygon(self, s: BrowserSession, points, *, overwrite: bool = False, new_class: int | None = None) -> Screen:
        return self._run(s, lambda: self.edits.polygon(s, points, overwrite=overwrite, new_class=new_class))

    def wand(self, s: BrowserSession, x: float, y: float, threshold: float) -> Screen:
        return self._run(s, lambda: self.edits.wand(s, x, y, threshold))

    def wand_commit(self, s: BrowserSession, mode: str = "new", *, ids=None, overwrite: bool = False,
                    new_class: int | None = None) -> Screen:
        def action():
            if ids is not None:
                self.edits.select_ids(s, ids)
            return self.edits.wand_commit(s, mode, overwrite=overwrite, new_class=new_class)
        return self._run(s, action)

    def canvas_action(self, s: BrowserSession, op: str, ids=None, *, min_area: int = 0,
                      overwrite: bool = False) -> Screen:
        """A keyboard action on the canvas's selection ``ids``: delete, merge, split, fill_holes, undo, redo."""
        ops = {"delete": lambda: self.edits.delete(s), "merge": lambda: self.edits.merge(s),
               "split": lambda: self.edits.split(s, min_area),
               "fill_holes": lambda: self.edits.fill_holes(s, overwrite),
               "undo": lambda: self.edits.undo(s), "redo": lambda: self.edits.redo(s)}

        def action():
            if op not in ops:
                raise UserError(f"unknown action {op!r}")
            if ids is not None and op not in ("undo", "redo"):
                self.edits.select_ids(s, ids)
            return ops[op]()
        return self._run(s, action)

    def undo(self, s: BrowserSession) -> Screen:
        return self._run(s, lambda: self.edits.undo(s))

    def redo(self, s: BrowserSession) -> Screen:
        return self._run(s, lambda: self.edits.redo(s))

    def recover(self, s: BrowserSession, index: int, overwrite: bool = False) -> Screen:
        return self._run(s, lambda: self.edits.recover(s, index, overwrite))

    def apply_mask(self, s: BrowserSession, mask: np.ndarray, op: str, *, overwrite: bool = False,
                   new_class: int | None = None) -> Screen:
        return self._run(s, lambda: self.edits.apply_mask(s, mask, op, overwrite=overwrite, new_class=new_class))

    # ---------------------------------------------------------------------------- the loop (``loop``)
    def mark_reviewed(self, s: BrowserSession, reviewed: bool | None = None) -> Screen:
        return self._run(s, lambda: self.loop.mark_reviewed(s, reviewed))

    def export(self, s: BrowserSession, name: str, overwrite: bool = False, include_untouched: bool = False,
               tools: tuple[str, ...] = (), polygons: bool = False) -> Screen:
        """``LoopController.export``; the ``Screen`` carries the zip (``export_file``) when it worked."""
        zip_path: list[str] = []

        def action() -> str:
            message, path = self.loop.export(s, name, overwrite, include_untouched, tools=tools, polygons=polygons)
            zip_path.append(path)
            return message
        return self._run(s, action, what="export failed: ", export_file=lambda: zip_path[0] if zip_path else None)

    def start_finetune(self, s: BrowserSession, name: str, max_minutes: float | None = None,
                       max_iter: int | None = None) -> Screen:
        return self._run(s, lambda: self.loop.start_finetune(name, max_minutes, max_iter))

    def finetune_view(self) -> FinetuneView:
        return self._guarded(self.loop.finetune_view, lambda message: FinetuneView(message, "", False, False))

    def cancel_finetune(self, wait: bool = True) -> str:
        return self._guarded(lambda: self.loop.cancel_finetune(wait), lambda message: message)

    def adopt(self, s: BrowserSession, anyway: bool = False, run_dir: str | Path | None = None) -> Screen:
        return self._run(s, lambda: self.loop.adopt(s, anyway, run_dir))

    def repredict(self, s: BrowserSession) -> Screen:
        return self._run(s, lambda: self.loop.repredict(s))

    def evaluate_on_dataset(self, limit: int = 20) -> str:
        return self._guarded(lambda: self.loop.evaluate_on_dataset(limit), lambda message: message,
                             what="evaluation failed: ")
