"""The closed loop's app actions: export the corrections, fine-tune on them, adopt the new model, measure.

``LoopController`` owns what these actions share beyond one browser session: the corrections folder,
the runs folder, the fine-tuning settings and the app's one fine-tuning run (``FineTuneRun``, the
runner of ``app.finetune``) with the export it trains on. It swaps the ``SharedModel``'s predictor
when a run is adopted and reads the ``DatasetImages`` (dataset ids kept by an export, images unseen by
a run). Each session action returns the status message; a user's mistake raises ``UserError``. The
panel's texts are pure functions at the end of the module.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2f_core.metrics import MetricInputError
from m2f_core.metrics.model_eval import HEADLINE, headline, per_class_pq

from .browser_session import BrowserSession, short_label, unique_name
from .dataset_images import DatasetImages
from .errors import USER_ERRORS, UserError
from .export import ExportItem, export_corrections, sanitize_name, zip_export
from .finetune import FineTuneRun, read_json, recommended_weights, retained_text
from .shared_model import SharedModel

__all__ = ["FinetuneView", "LoopController", "class_changes", "comparison_markdown", "gain_markdown"]


log = logging.getLogger("app")


class LoopController:
    """Export, fine-tune, adopt, re-predict and measure; owns the app's one fine-tuning run. Thread-safe."""

    def __init__(self, model: SharedModel, corrections_dir: str | Path, *, source: DatasetImages | None = None,
                 runs_dir: str | Path = "runs", finetune_minutes: float = 10.0, finetune_max_iter: int | None = None,
                 finetune_args: Sequence[str] = ()) -> None:
        self.model = model
        self.source = source if source is not None else DatasetImages()
        self.corrections_dir = Path(corrections_dir)
        self.runs_dir = Path(runs_dir)
        self.finetune_minutes = float(finetune_minutes)
        self.finetune_max_iter = finetune_max_iter
        self.finetune_args = list(finetune_args)  # more trainer options (e.g. --recipe FILE)
        self.finetune_run: FineTuneRun | None = None  # the app's one fine-tuning run (the last started)
        self.finetune_export: Path | None = None  # the export it trains on
        self._job_lock = threading.Lock()

    # ---------------------------------------------------------------------------- export
    def mark_reviewed(self, s: BrowserSession, reviewed: bool | None = None) -> str:
        """Mark the current image as checked (its annotation is right as it is), so that the default export
        takes it although it has no edits; ``None`` toggles the mark."""
        ws = s.workspace
        if ws.current is None or ws.session() is None:
            raise UserError("no image open: upload one or pick an example")
        item = ws.item()
        item = ws.mark_reviewed(ws.current, not item.reviewed if reviewed is None else reviewed)
        name = item.path.name if item.path is not None else item.key
        if not item.reviewed:
            return f"{name}: no longer marked reviewed"
        if item.status == "edited":
            return f"{name}: marked reviewed (it is exported as edited: it has edits)"
        return f"{name}: marked reviewed, exported as it is"

    def export(self, s: BrowserSession, name: str, overwrite: bool = False,
               include_untouched: bool = False, tools: tuple[str, ...] = (), polygons: bool = False) -> tuple[str, str]:
        """Write ``<corrections dir>/<name>/`` (with ``manifest.json``) and a zip of it; returns the message
        and the zip's path.

        The edited and reviewed images by default; the untouched ones (the model's own output) only with
        ``include_untouched``. Images of ``--dataset`` keep their id and file name, so the export
        evaluates against the dataset's ground truth (``python -m m2f_core.evaluate panoptic``). ``tools``
        also writes the annotation tools' files (``app.export.TOOL_LAYOUT``), as polygons with ``polygons``.
        A failure to write (disk full, no permission) is reported as such, with the cause.
        """
        clean = sanitize_name(name)
        ws = s.workspace
        if include_untouched:  # untouched images predicted by earlier weights: the current model's output
            for key in [k for k in ws.keys if self.model.is_outdated(s, k)]:
                ws.discard(key)
                self.model.predict(s, key)
        chosen = ws.export_items(include_untouched=include_untouched)
        if not chosen:
            if not ws.export_items(include_untouched=True):
                raise UserError("nothing to export: open an image first")
            raise UserError("nothing to export: no image is edited or marked reviewed (edit one, press "
                            "'Mark reviewed', or tick 'Include untouched images' to export the model's own "
                            "output)")
        src = self.source
        items = [ExportItem(it.path, it.session, it.status, src.source_id(it.path),
                            it.weights or None, it.opened or None, it.fiftyone) for it in chosen]
        source = src.spec if src.dataset is not None else None
        manifest = {"source": source, "source_split": src.split if source else None,
                    "weights": self.model.label, "weights_source": self.model.weights_source}
        try:
            folder = export_corrections(items, self.model.config, self.corrections_dir, clean, overwrite=overwrite,
                                        manifest=manifest, reserved_ids=src.ids, tools=tools, polygons=polygons)
            zip_path = str(zip_export(folder))
        except OSError as e:  # the disk, not the user and not a bug: say what the system said
            log.warning("export %s failed", clean, exc_info=True)
            raise UserError(f"cannot write the export: {e}") from e
        counts = {st: sum(it.status == st for it in items) for st in ("edited", "reviewed", "untouched")}
        detail = ", ".join(f"{n} {st}" for st, n in counts.items() if n)
        left = len(ws.export_items(include_untouched=True)) - len(items)
        message = (f"exported {len(items)} image(s) ({detail}) to {folder}"
                   + (f"; {left} untouched image(s) left out" if left else "")
                   + (f"; also as {', '.join(tools)}" + (" polygons" if polygons else "") if tools else ""))
        return message, zip_path

    # ---------------------------------------------------------------------------- fine-tune, follow, cancel
    def start_finetune(self, name: str, max_minutes: float | None = None, max_iter: int | None = None) -> str:
        """Start ``training.finetune`` on the export ``name`` from the current weights (one run at a time)."""
        clean = sanitize_name(name)
        export_dir = self.corrections_dir / clean
        if not (export_dir / "panoptic.json").is_file():
            raise UserError(f"no export {export_dir}: press Export first")
        minutes = float(max_minutes) if max_minutes else self.finetune_minutes
        if minutes <= 0:
            raise UserError(f"the time budget must be > 0 minutes, got {minutes:g}")
        with self._job_lock:
            running = self.finetune_run
            if running is not None and running.status().running:
                raise UserError(f"a fine-tuning run is going on already ({running.run_dir}): wait or cancel it")
            taken = {p.name for p in self.runs_dir.glob("*")} if self.runs_dir.is_dir() else set()
            run_dir = self.runs_dir / unique_name(clean, "", taken)
            self.finetune_run = FineTuneRun.launch(
                self.model.weights_source or "builtin", export_dir.resolve(), run_dir.resolve(), max_minutes=minutes,
                max_iter=max_iter or self.finetune_max_iter, device=str(self.model.predictor.device),
                extra=self.finetune_args)
            self.finetune_export = export_dir.resolve()
            log.info("fine-tuning: %s", " ".join(self.finetune_run.command))
        return f"fine-tuning started: {run_dir} (at most {minutes:g} min; log {self.finetune_run.log_path})"

    def finetune_view(self) -> FinetuneView:
        """The fine-tune panel: progress (n / N, time left, validation curve), then the measured gain."""
        run = self.finetune_run
        if run is None:
            return FinetuneView("no fine-tuning run yet: export, then press Fine-tune", "", False, False)
        st = run.status()
        weights = None if st.running else st.weights
        result = ""
        if not st.running:
            if st.result is not None:
                result = gain_markdown(st.result)
            elif weights is not None:
                result = "⚠️ the run ended without a result (killed?): its last checkpoint was never validated"
        return FinetuneView(f"{run.run_dir}\n{st.summary()}", result, st.running, weights is not None)

    def cancel_finetune(self, wait: bool = True) -> str:
        """Stop the run: the trainer ends its step and writes the best weights so far, which stay adoptable.
        ``wait=False`` returns at once (the page's timer shows the run ending)."""
        run = self.finetune_run
        if run is None or not run.alive():
            return "no fine-tuning run is going on"
        if wait:
            run.cancel()
            return f"cancelled {run.run_dir}: the best weights so far can be adopted"
        threading.Thread(target=run.cancel, daemon=True).start()
        return f"cancelling {run.run_dir}: the trainer ends its step and saves the best weights so far"

    # ---------------------------------------------------------------------------- adopt the run's model
    def adopt(self, s: BrowserSession, anyway: bool = False, run_dir: str | Path | None = None) -> str:
        """Swap in the run's recommended weights (``recommended_weights``) for every session.

        Refused, with the numbers, when the run did not measure an improvement on its held-out images,
        unless ``anyway``. Images without edits follow the new model (the current one is predicted again
        now, the others when opened: ``SharedModel.open_image``); edited images keep their edits and the
        prediction they were made on until Re-predict.
        """
        from m2f_core.predictor import Predictor

        run = self.finetune_run
        folder = Path(run_dir) if run_dir is not None else (run.run_dir if run is not None else None)
        if folder is None:
            raise UserError("nothing to adopt: fine-tune first")
        if run is not None and folder == run.run_dir and run.status().running:
            raise UserError("the fine-tuning run is still going: wait for it, or Cancel it (the best weights "
                            "so far stay adoptable)")
        weights = recommended_weights(folder)
        if weights is None:
            raise UserError(f"{folder}: no weights to adopt")
        result = read_json(folder / "result.json")
        if not anyway and (result or {}).get("recommendation") != "adopt":
            raise UserError(f"{not_better_reason(result)}: tick 'Adopt anyway' to use it all the same")
        current = self.model.predictor
        new = Predictor(str(weights), device=current.device, backend=getattr(current, "backend", "torch"))
        if new.config.class_names != self.model.config.class_names:
            raise UserError(f"{weights}: its classes differ from the current model's")
        self.model.swap(new, str(weights))
        ws = s.workspace
        again = [k for k in ws.keys if self.model.is_outdated(s, k)]
        kept = [k for k in ws.keys if ws.item(k).session is not None and ws.item(k).status != "untouched"]
        if ws.current is not None:
            self.model.open_image(s, ws.current)
        message = f"adopted {short_label(str(weights))}"
        if result and result.get("before"):
            message += f" ({headline_text(result)})"
        if again:
            message += f"; {len(again)} image(s) without edits predicted again by it (the others when opened)"
        if kept:
            message += f"; {len(kept)} edited or reviewed image(s) keep their annotation and the earlier " \
                       "prediction (⟳ Re-predict discards the edits)"
        return message

    def repredict(self, s: BrowserSession) -> str:
        """Discard the current image's edits and predict it with the current model (not undoable)."""
        ws = s.workspace
        if ws.current is None or ws.session() is None:
            raise UserError("no image open: upload one or pick an example")
        if ws.predicted_by() == self.model.label:
            ws.reset_session()  # the cached prediction is the current model's: no need to run it
        else:
            ws.discard(ws.current)
            self.model.predict(s, ws.current)
        s.selected, s.candidates = [], []
        return f"predicted again by {short_label(self.model.label)} (edits discarded)"

    # ---------------------------------------------------------------------------- measure on the dataset
    def evaluate_on_dataset(self, limit: int = 20) -> str:
        """The current model and the run's model side by side on up to ``limit`` images of ``--dataset``
        that the run did not train on (not in its export, or held out). Markdown for the page."""
        from m2f_core.data.records import Subset
        from m2f_core.metrics.model_eval import class_mapping, evaluate_model
        from m2f_core.predictor import Predictor

        if self.source.dataset is None:
            return "⚠️ no ground truth: start the app with --dataset FORMAT:PATH to evaluate on it"
        cfg = self.model.config
        ids = cfg.dataset_ids if cfg.dataset != "custom" else None  # as evaluate_model matches the classes
        if (class_mapping(cfg.class_names, ids, self.source.dataset.categories) < 0).all():
            return "⚠️ no class of the model is in the dataset: nothing to evaluate"
        run = self.finetune_run
        st = run.status() if run is not None else None
        if st is None or st.running or st.weights is None:
            return "⚠️ no weights to evaluate: fine-tune first and wait for the run to end (or cancel it)"
        trained = set(export_image_names(self.finetune_export)) - set((st.result or {}).get("held_out") or [])
        unseen = self.source.indices_except(trained)
        if not unseen:
            return "⚠️ every dataset image was trained on: nothing unseen to evaluate on"
        subset = Subset(self.source.dataset, unseen[:max(1, int(limit))], name="unseen")
        device = self.model.predictor.device
        try:
            run_model = Predictor(str(st.weights), device=device)
            if self.model.weights_source == str(st.weights):  # adopted: compare with the weights the run started from
                init = (st.result or {}).get("init") or "builtin"
                base_label = f"start ({short_label(init)})"
                before = evaluate_model(Predictor(init, device=device), subset, progress=False)
            else:
                base_label = f"current ({short_label(self.model.label)})"
                before = self.model.use(lambda predictor: evaluate_model(predictor, subset, progress=False))
            after = evaluate_model(run_model, subset, progress=False)
        except (*USER_ERRORS, MetricInputError) as e:  # unreadable weights or dataset files: a one-line reason
            return f"⚠️ evaluation failed: {' '.join(str(e).split())}"
        except OSError as e:  # the disk, not a bug: say what the system said (and log it)
            log.warning("evaluation failed", exc_info=True)
            return f"⚠️ evaluation failed: {' '.join(str(e).split())}"
        return comparison_markdown(headline(before), headline(after), _per_class(before, after),
                                   f"{len(subset)} dataset image(s) the run never trained on",
                                   (base_label, f"fine-tuned ({short_label(str(st.weights))})"))


@dataclass
class FinetuneView:
    """What the fine-tune panel shows (plain values, read by the Gradio layer)."""

    progress: str  # the run folder, state, n / N, time left, the validation curve (``RunStatus.summary``)
    result: str  # Markdown: before / after on the held-out images, the classes that moved, the recommendation
    running: bool
    adoptable: bool  # the run ended and left weights (finished, or cancelled with the best weights so far)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def class_changes(per_class: dict[str, dict[str, float | None]], min_points: float = 1.0,
                  ) -> list[tuple[str, float | None, float | None]]:
    """(class, before, after) of the classes whose PQ moved by ``min_points`` or more (or appeared / vanished),
    largest change first."""
    out = []
    for name, ba in per_class.items():
        b, a = ba.get("before"), ba.get("after")
        if b is None and a is None:
            continue
        if b is None or a is None or abs(a - b) >= min_points:
            out.append((name, b, a))
    return sorted(out, key=lambda c: -abs((c[2] or 0.0) - (c[1] or 0.0)))


def comparison_markdown(before: dict[str, float | None], after: dict[str, float | None],
                        per_class: dict[str, dict[str, float | None]], where: str,
                        labels: tuple[str, str] = ("before", "after"), min_points: float = 1.0) -> str:
    """A before / after table of the headline metrics and the classes whose PQ moved by ``min_points``."""
    rows = [f"| on {where} | {labels[0]} | {labels[1]} |", "|---|---:|---:|"]
    for key in HEADLINE:
        if before.get(key) is not None or after.get(key) is not None:
            rows.append(f"| {key} | {_fmt(before.get(key))} | {_fmt(after.get(key))} |")
    moved = class_changes(per_class, min_points)
    if moved:
        rows.append("")
        rows.append(f"PQ by class (moved by {min_points:g}+ points): " + ", ".join(
            f"{name} {_fmt(b)} → {_fmt(a)}" for name, b, a in moved[:12]))
    return "\n".join(rows)


def not_better_reason(result: dict[str, Any] | None) -> str:
    """Why a run's model is not recommended, in words (with its numbers)."""
    if result is None:
        return "not validated: the run ended without a result"
    if not result.get("before"):
        return "not measured: too few corrected images to hold any out (4 or more are needed)"
    if result.get("improved"):
        return f"better on the held-out images ({headline_text(result)}) but worse where the model was good " \
               f"({retained_text(result)})"
    return f"not better on the held-out images ({headline_text(result)})"


def headline_text(result: dict[str, Any]) -> str:
    """``PQ 30.1 → 31.4`` (the first headline metric the run measured)."""
    before, after = result.get("before") or {}, result.get("after") or {}
    for key in ("PQ", "AP", "mIoU"):
        if before.get(key) is not None and after.get(key) is not None:
            return f"held-out {key} {before[key]:.1f} → {after[key]:.1f}"
    return "not measured"


def gain_markdown(result: dict[str, Any]) -> str:
    """The run's measured gain for the panel: the table, and adopt or a clear warning."""
    if not result.get("before"):
        return f"⚠️ {not_better_reason(result)}: adopting it is a blind bet (tick *Adopt anyway*)"
    held = len(result.get("held_out") or [])
    table = comparison_markdown(result.get("before") or {}, result.get("after") or {},
                                result.get("per_class_PQ") or {}, f"{held} held-out image(s)")
    kept = retained_text(result)
    if kept:
        table += f"\n\n{kept[0].upper()}{kept[1:]}"
    if result.get("recommendation") == "adopt":
        verdict = f"✅ better on the held-out images (best at iteration {result.get('best_iteration')}): adopt it"
    else:
        verdict = f"⚠️ **{not_better_reason(result)}**: keep the current model, or tick *Adopt anyway*"
    return f"{table}\n\n{verdict}"


def export_image_names(export_dir: Path | None) -> list[str]:
    """The image file names of a corrections export (its ``panoptic.json``); [] when unreadable."""
    data = read_json(export_dir / "panoptic.json") if export_dir is not None else None
    return [Path(str(im.get("file_name", ""))).name for im in (data or {}).get("images", []) if isinstance(im, dict)]


def _per_class(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    b, a = per_class_pq(before), per_class_pq(after)
    return {name: {"before": b.get(name), "after": a.get(name)} for name in sorted(set(b) | set(a))}
