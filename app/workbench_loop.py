"""The closed loop's app actions: export the corrections, fine-tune on them, reload the new weights.

Why a module of its own: these actions reach outside the editing session (the corrections folder,
a trainer subprocess, a new ``Predictor``) and share the one fine-tuning job of the app.
``LoopActions`` is a mixin of ``Workbench`` and relies on its ``_run``, ``screen``, ``config``,
``predictor``, ``corrections_dir``, ``runs_dir``, ``job`` and locks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .export import export_corrections, sanitize_name, zip_export
from .finetune import FineTuneJob, finetune_command, latest_checkpoint
from .workbench_session import EditorSession, Screen, unique_name

__all__ = ["LoopActions"]

log = logging.getLogger("app")


class LoopActions:
    """Export, fine-tune and reload of ``Workbench`` (a mixin, see the module docstring)."""

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
