"""The editor's actions without a UI: what happens on upload, task switch, click, edit, export.

``Workbench`` holds what all users share (the model, the image list given on the command line, the
export folder); ``EditorSession`` is what one browser session owns (its ``WorkspaceState``, the
selection, the recover candidates, its counters). Every action takes a session, changes it through
``EditSession`` / ``WorkspaceState`` and returns a ``Screen``: everything the page shows, as plain
Python values. The Gradio layer (``app/ui.py``) only maps events to these methods and ``Screen``
fields to components, so every behaviour here is testable without a browser.

User mistakes (a bad image, an edit that cannot apply, a bad export name) never raise: the
``Screen`` carries the one-line message in ``status`` and nothing changes.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from m2f_core.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from m2f_core.data.records import remove_stale_temporaries

from .editing import TASKS
from .export import export_corrections, sanitize_name, zip_export
from .finetune import FineTuneJob, finetune_command, latest_checkpoint
from .render import candidate_preview, display_scale, relabel_choices, render_canvas, render_ground_truth, segment_rows
from .state import WorkspaceState

if TYPE_CHECKING:
    from m2f_core.data.records import SegmentationDataset
    from m2f_core.prediction import Prediction
    from m2f_core.predictor import Predictor
    from m2f_core.structures import Candidate

__all__ = ["CLICK_MODES", "EditorSession", "Screen", "Workbench", "unique_name"]

log = logging.getLogger("app")

CLICK_MODES = ("Select", "Paint", "Erase", "New segment", "Recover")
TASK_LABELS = {"panoptic": "Panoptic", "instance": "Instance", "semantic": "Semantic"}


@dataclass
class Screen:
    """Everything the page shows after an action (plain values; ``None`` canvas = no image open)."""

    canvas: np.ndarray | None
    rows: list[list]
    status: str
    relabel: list[tuple[str, int]]
    relabel_value: int | None
    candidates: list[tuple[np.ndarray, str]]
    ground_truth: np.ndarray | None
    position: str
    export_file: str | None = None
    compare: list[tuple[np.ndarray, str]] = field(default_factory=list)  # before / after a reload


@dataclass
class EditorSession:
    """What one browser session owns. Created per session by ``Workbench.new_session``."""

    workspace: WorkspaceState
    upload_dir: Path
    selected: list[int] = field(default_factory=list)  # in click order; the first keeps its class on merge
    candidates: list[Candidate] = field(default_factory=list)
    opacity: float = 0.5
    outline: bool = True
    uncertainty: bool = False
    model_runs: int = 0
    message: str = ""  # the last action's message (an action that changes nothing keeps it)
    timings: dict[str, float] = field(default_factory=dict)  # ms of the last model run / render / edit
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __deepcopy__(self, memo):  # gr.State deep-copies its default; a session is never shared or copied
        return self


def unique_name(stem: str, suffix: str, taken: set[str]) -> str:
    """``stem + suffix``, or ``stem-2 + suffix``, ``stem-3`` ... whichever is not in ``taken``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._") or "image"
    safe = safe[:80]
    for n in itertools.count(1):
        name = f"{safe}{'' if n == 1 else f'-{n}'}{suffix}"
        if name not in taken:
            return name
    raise AssertionError("unreachable")


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


class Workbench:
    """The shared part of the app: the model and the command line's images. Thread-safe."""

    def __init__(self, predictor: Predictor, corrections_dir: str | Path = "datasets/corrections", *,
                 images: Sequence[str | Path] = (), dataset: SegmentationDataset | None = None,
                 examples: Sequence[str | Path] = (), work_dir: str | Path | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = 1600, min_side: int = 640,
                 weights_label: str = "",
                 weights_source: str | None = None, runs_dir: str | Path = "runs", finetune_iters: int = 200,
                 finetune_batch: int = 2) -> None:
        self.predictor = predictor
        self.corrections_dir = Path(corrections_dir)
        remove_stale_temporaries(self.corrections_dir)  # an export killed mid-write: put the old one back
        self.dataset = dataset
        self._gt_index: dict[str, int] = {}
        browse = [Path(p) for p in images]
        if dataset is not None:
            for i in range(len(dataset)):
                path = Path(dataset[i].file_name)
                self._gt_index[str(path)] = i
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
        self.finetune_iters = int(finetune_iters)
        self.finetune_batch = int(finetune_batch)
        self.job: FineTuneJob | None = None
        self._job_lock = threading.Lock()
        self.model_runs = 0  # all sessions together
        self._model_lock = threading.Lock()
        self._session_ids = itertools.count(1)

    @property
    def config(self):
        return self.predictor.config

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
        with self._model_lock:
            pred = self.predictor.predict(rgb)
            self.model_runs += 1
        s.model_runs += 1
        s.timings["model"] = _ms(pred.timings.get("model", 0.0) + pred.timings.get("preprocess", 0.0))
        log.info("model run %d: %s %dx%d in %.0f ms", self.model_runs, item.path.name if item.path else key,
                 rgb.shape[1], rgb.shape[0], s.timings["model"])
        s.workspace.set_prediction(key, pred)
        return pred

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
        choices = relabel_choices(session, pred, primary) if primary is not None else []
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
            if s.workspace.current is not None and s.workspace.prediction() is None:
                self._predict(s, s.workspace.current)
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

    # ---------------------------------------------------------------------------- clicks
    def _session(self, s: EditorSession):
        session = s.workspace.session() if s.workspace.current is not None else None
        if session is None:
            raise ValueError("no image open: upload one or pick an example")
        return session

    def _to_image(self, s: EditorSession, x: float, y: float) -> tuple[int, int]:
        """Displayed canvas pixel -> image pixel (the canvas may be scaled down)."""
        session = self._session(s)
        h, w = session.shape
        scale = display_scale((h, w), self.max_side, self.min_side)
        xi, yi = int(float(x) / scale), int(float(y) / scale)
        return min(max(xi, 0), w - 1), min(max(yi, 0), h - 1)

    def click(self, s: EditorSession, x: float, y: float, mode: str = "Select", *, brush_size: float = 10.0,
              overwrite: bool = False, multi: bool = False, new_class: int | None = None) -> Screen:
        """A click on the canvas at displayed pixel (x, y), interpreted by ``mode`` (``CLICK_MODES``)."""
        def action():
            session = self._session(s)
            xi, yi = self._to_image(s, x, y)
            radius = max(0.0, float(brush_size) / 2.0)
            if mode == "Select":
                return self._select(s, session.select(xi, yi), multi)
            if mode == "Recover":
                pred = self._prediction(s)
                s.candidates = pred.candidates_at(xi, yi, k=6)
                if not s.candidates:
                    return f"no dropped query of the model covers ({xi}, {yi})"
                return f"{len(s.candidates)} candidates at ({xi}, {yi}): pick one to add it"
            if mode == "Paint":
                if not s.selected:
                    raise ValueError("select a segment to paint on (or use 'New segment')")
                sid = s.selected[-1]
                n = self._timed(s, lambda: session.paint(sid, [(xi, yi)], radius=radius, overwrite_others=overwrite))
                return f"painted {n} px into #{sid}"
            if mode == "Erase":
                target = s.selected[-1] if s.selected and not overwrite else None
                n = self._timed(s, lambda: session.erase([(xi, yi)], radius=radius, segment_id=target))
                return f"erased {n} px" + (f" of #{target}" if target is not None else "")
            if mode == "New segment":
                if new_class is None:
                    raise ValueError("choose the new segment's class first")
                sid = self._timed(s, lambda: session.new_segment([(xi, yi)], int(new_class),
                                                                 overwrite_others=overwrite, radius=radius))
                s.selected = [sid]
                return f"new segment #{sid} ({session.class_names[session.segment(sid).category_id]}); " \
                       "switch to Paint to grow it"
            raise ValueError(f"unknown click mode {mode!r}")
        return self._run(s, action)

    def _select(self, s: EditorSession, sid: int | None, multi: bool) -> str:
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

    def select_segment(self, s: EditorSession, segment_id: int | None, multi: bool = False) -> Screen:
        """Select by id (a click on the segment table)."""
        def action():
            session = self._session(s)
            if segment_id is None:
                return None
            sid = int(segment_id)
            if sid not in session:
                raise ValueError(f"no segment #{sid}")
            return self._select(s, sid, multi)
        return self._run(s, action)

    # ---------------------------------------------------------------------------- edits
    def _timed(self, s: EditorSession, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        s.timings["edit"] = _ms(time.perf_counter() - start)
        return out

    def _require_selection(self, s: EditorSession) -> list[int]:
        if not s.selected:
            raise ValueError("select a segment first (click it on the image or in the table)")
        return list(s.selected)

    def relabel(self, s: EditorSession, class_id: int | None) -> Screen:
        """Give the selected segments class ``class_id`` (stuff joins its class's segment)."""
        def action():
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
        return self._run(s, action)

    def delete(self, s: EditorSession) -> Screen:
        def action():
            session = self._session(s)
            ids = self._require_selection(s)
            self._timed(s, lambda: [session.delete(i) for i in ids])
            s.selected = []
            return f"deleted {', '.join(f'#{i}' for i in ids)}"
        return self._run(s, action)

    def merge(self, s: EditorSession) -> Screen:
        def action():
            session = self._session(s)
            ids = self._require_selection(s)
            if len(ids) < 2:
                raise ValueError("merge needs two or more selected segments: tick 'add clicks to the selection' "
                                 "and click them (the first one keeps its class)")
            first = self._timed(s, lambda: session.merge(ids))
            s.selected = [first]
            return f"merged {', '.join(f'#{i}' for i in ids)} into #{first}"
        return self._run(s, action)

    def split(self, s: EditorSession) -> Screen:
        def action():
            session = self._session(s)
            ids = self._require_selection(s)
            parts = self._timed(s, lambda: [p for i in ids for p in session.split(i)])
            s.selected = parts
            return f"split into {len(parts)} segments" if len(parts) > len(ids) else "already one connected piece"
        return self._run(s, action)

    def undo(self, s: EditorSession) -> Screen:
        def action():
            label = self._timed(s, self._session(s).undo)
            return f"undid {label}" if label else "nothing to undo"
        return self._run(s, action)

    def redo(self, s: EditorSession) -> Screen:
        def action():
            label = self._timed(s, self._session(s).redo)
            return f"redid {label}" if label else "nothing to redo"
        return self._run(s, action)

    def recover(self, s: EditorSession, index: int, overwrite: bool = False) -> Screen:
        """Add candidate ``index`` (from a Recover click) as a new segment."""
        def action():
            session = self._session(s)
            if not 0 <= int(index) < len(s.candidates):
                raise ValueError("no such candidate: click the image in Recover mode first")
            cand = s.candidates[int(index)]
            sid = self._timed(s, lambda: session.recover(cand, overwrite_others=overwrite))
            s.candidates = []
            s.selected = [sid]
            return f"recovered #{sid} ({session.class_names[cand.category_id]} {cand.score:.2f})"
        return self._run(s, action)

    def apply_mask(self, s: EditorSession, mask: np.ndarray, op: str, *, overwrite: bool = False,
                   new_class: int | None = None) -> Screen:
        """A painted (H, W) mask (the brush layer): ``op`` "paint" (into the selected segment), "erase" or "new"."""
        def action():
            session = self._session(s)
            m = np.asarray(mask, dtype=bool)
            if m.shape != session.shape:  # the layer comes at display size when the canvas is scaled
                h, w = session.shape
                m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
            if not m.any():
                raise ValueError("nothing painted: draw on the brush layer first")
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
                    raise ValueError("choose the new segment's class first")
                sid = self._timed(s, lambda: session.new_segment(m, int(new_class), overwrite_others=overwrite))
                s.selected = [sid]
                return f"new segment #{sid}"
            raise ValueError(f"unknown brush operation {op!r}")
        return self._run(s, action)

    # ---------------------------------------------------------------------------- export
    def export(self, s: EditorSession, name: str, overwrite: bool = False, only_edited: bool = False) -> Screen:
        """Write ``<corrections dir>/<name>/`` from the session's annotated images, and a zip of it."""
        zip_path: list[str] = []

        def action():
            clean = sanitize_name(name)
            items = s.workspace.export_items(only_edited=only_edited)
            if not items:
                raise ValueError("nothing to export: no edited image" if only_edited else
                                 "nothing to export: open an image first")
            folder = export_corrections(items, self.config, self.corrections_dir, clean, overwrite=overwrite)
            zip_path.append(str(zip_export(folder)))
            return f"exported {len(items)} image(s) to {folder}"
        with s.lock:
            try:
                message = action()
            except (ValueError, OSError) as e:
                message = f"⚠️ export failed: {e}"
            return self.screen(s, message, export_file=zip_path[0] if zip_path else None)

    # ---------------------------------------------------------------------------- fine-tune and reload
    def start_finetune(self, s: EditorSession, name: str, max_iter: int | None = None) -> Screen:
        """Start the trainer on the export ``name`` from the current weights (one job at a time)."""
        def action():
            clean = sanitize_name(name)
            export_dir = self.corrections_dir / clean
            if not (export_dir / "panoptic.json").is_file():
                raise ValueError(f"no export {export_dir}: press Export first")
            with self._job_lock:
                if self.job is not None and self.job.running:
                    raise ValueError(f"a fine-tuning run is going on already ({self.job.run_dir})")
                taken = {p.name for p in self.runs_dir.glob("*")} if self.runs_dir.is_dir() else set()
                run_dir = self.runs_dir / unique_name(clean, "", taken)
                cmd = finetune_command(self.weights_source or "builtin", export_dir.resolve(), run_dir.resolve(),
                                       max_iter=max_iter or self.finetune_iters, batch_size=self.finetune_batch,
                                       device=str(self.predictor.device))
                self.job = FineTuneJob.start(cmd, run_dir)
                log.info("fine-tuning: %s", " ".join(cmd))
            return f"fine-tuning started: {run_dir} (log {self.job.log_path})"
        return self._run(s, action)

    def finetune_status(self) -> tuple[str, bool]:
        """(text for the page, whether the job is still running)."""
        job = self.job
        if job is None:
            return "no fine-tuning run yet: export, then press Fine-tune", False
        st = job.status()
        return f"{job.run_dir}\n{st.summary()}", st.running

    def reload(self, s: EditorSession, run_dir: str | Path | None = None) -> Screen:
        """Swap in the newest checkpoint of the last run (or ``run_dir``); show before / after on this
        session's annotated images (their cached predictions against the new model's)."""
        compare: list[tuple[np.ndarray, str]] = []

        def action():
            from m2f_core.predictor import Predictor
            from m2f_core.visualize import draw_panoptic

            folder = Path(run_dir) if run_dir is not None else (self.job.run_dir if self.job is not None else None)
            if folder is None:
                raise ValueError("nothing to reload: fine-tune first")
            if self.job is not None and self.job.running and run_dir is None:
                raise ValueError("the fine-tuning run is still going: wait for it to finish")
            ckpt = latest_checkpoint(folder)
            if ckpt is None:
                raise ValueError(f"{folder}: no checkpoint yet")
            backend = getattr(self.predictor, "backend", "torch")
            new = Predictor(str(ckpt), device=self.predictor.device, backend=backend)
            if new.config.class_names != self.config.class_names:
                raise ValueError(f"{ckpt}: its classes differ from the current model's")
            ws = s.workspace
            shown = 0
            for key in ws.keys:
                old = ws.prediction(key)
                if old is None or shown >= 4:
                    continue
                with self._model_lock:
                    fresh = new.predict(old.image)
                    self.model_runs += 1
                s.model_runs += 1
                cfg = self.config
                name = ws.item(key).path.name if ws.item(key).path is not None else key
                for tag, pred in (("before", old), ("after", fresh)):
                    compare.append((draw_panoptic(pred.image, pred.panoptic(), cfg.class_names, cfg.colors,
                                                  cfg.is_thing), f"{name} {tag}"))
                ws.set_prediction(key, fresh)  # edits are kept; top-k menus now come from the new model
                shown += 1
            with self._model_lock:
                self.predictor = new
                self.weights_source = str(ckpt)
                self.weights_label = str(ckpt)
            return f"reloaded weights from {ckpt}"
        screen = self._run(s, action)
        screen.compare = compare
        return screen

    def describe(self) -> str:
        """One line about the model, for the page header."""
        cfg = self.config
        return (f"model: {self.weights_label or cfg.name} · {len(cfg.class_names)} classes · "
                f"device {self.predictor.device} · exports to {self.corrections_dir}")

    def info(self) -> dict:
        """Counters for tests and monitoring."""
        return {"model_runs": self.model_runs, "weights": self.weights_label}
