"""The Gradio page: components with stable ``elem_id``s, each event wired to one ``Workbench`` action.

No logic here beyond converting between Gradio values and the plain values of ``app.workbench``:
per-browser state is a ``BrowserSession`` (holding the ``WorkspaceState``) in a ``gr.State``, so
nothing leaks between users; it is created on page load and its uploads are deleted when the
browser session ends.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from .browser_session import BrowserSession, Screen
from .editing import TASKS
from .fiftyone_bridge.editor import open_from_query
from .render import SELECTED_MARK, TABLE_HEADERS
from .workbench import CLICK_MODES, TASK_LABELS, Workbench

__all__ = ["CSS", "build_app", "editor_value", "stroke_mask"]

CSS = """
#status { min-height: 3em; }
#status p { margin: 0.2em 0; }
#canvas img { cursor: crosshair; }
"""

HELP = """**Loop**: open an image → the model runs once → switch task freely → click a segment (or a table row) →
relabel / delete / split, or tick *add clicks to the selection* and merge → paint, erase or add a segment
with the click mode and brush size → *Recover* offers the model's dropped queries at a pixel → undo / redo →
export to a corrections folder → fine-tune on it (held-out images measure the gain) → adopt the new model.
Images without edits then show the new model's prediction; edited ones keep theirs until ⟳ Re-predict."""


def _table(rows: list[list]) -> Any:
    """The segment table; selected rows highlighted (a pandas Styler)."""
    df = pd.DataFrame(rows, columns=TABLE_HEADERS)
    if df.empty:
        return df

    def color(row):
        style = "background-color: #fde68a; color: #111; font-weight: 600" if row["sel"] == SELECTED_MARK else ""
        return [style] * len(row)
    return df.style.apply(color, axis=1).format({"score": "{:.3f}"})


def editor_value(canvas: np.ndarray | None) -> dict | None:
    """An ImageEditor value: the current view as background, no strokes."""
    if canvas is None:
        return None
    return {"background": canvas, "layers": [], "composite": canvas}


def stroke_mask(value: dict | None) -> np.ndarray | None:
    """The painted pixels of an ImageEditor value (alpha of its layers; else composite != background)."""
    if not value:
        return None
    mask = None
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        arr = np.asarray(layer)
        if arr.ndim == 3 and arr.shape[2] == 4:
            painted = arr[..., 3] > 0
            mask = painted if mask is None else (mask | painted)
    if mask is None and value.get("composite") is not None and value.get("background") is not None:
        comp, bg = np.asarray(value["composite"]), np.asarray(value["background"])
        if comp.shape[:2] == bg.shape[:2]:
            mask = (comp[..., :3].astype(np.int16) - bg[..., :3]).any(axis=-1)
    if mask is None or not mask.any():
        return None
    return mask


def build_app(wb: Workbench) -> gr.Blocks:
    """The editor page for one ``Workbench`` (launch it with ``.queue().launch(...)``)."""
    class_choices = [(n, i) for i, n in enumerate(wb.config.class_names)]
    # every render is a PNG in Gradio's cache: every 30 min, delete those older than an hour
    with gr.Blocks(title="Mask2Former workbench", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        state = gr.State(None, delete_callback=wb.close_session)
        header = gr.Markdown(f"## Mask2Former workbench\n{wb.describe()}", elem_id="header")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                image_input = gr.File(label="Image (upload)", file_types=["image"], type="filepath",
                                      elem_id="image-input", height=120)
                examples = gr.Gallery(value=[str(p) for p in wb.examples] or None, label="Examples",
                                      elem_id="examples", columns=3, height=150, allow_preview=False,
                                      visible=bool(wb.examples), interactive=False)
                with gr.Row():
                    prev_btn = gr.Button("◀ Previous", elem_id="prev", size="sm")
                    next_btn = gr.Button("Next ▶", elem_id="next", size="sm")
                position = gr.Markdown("no image", elem_id="position")
                gt = gr.Image(label="Ground truth", elem_id="gt", interactive=False, visible=wb.dataset is not None,
                              format="png")
                gr.Markdown(HELP)
            with gr.Column(scale=3, min_width=420):
                with gr.Row():
                    task = gr.Radio([TASK_LABELS[t] for t in TASKS], value="Panoptic", label="Task", elem_id="task")
                    opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Opacity", elem_id="opacity")
                    with gr.Column(min_width=140):
                        outline = gr.Checkbox(True, label="Outlines", elem_id="outline")
                        uncertainty = gr.Checkbox(False, label="Uncertainty view", elem_id="uncertainty")
                canvas = gr.Image(label="Prediction (click to select / edit)", elem_id="canvas", interactive=False,
                                  format="png", buttons=["download", "fullscreen"], height=600)
                status = gr.Markdown("Upload an image or pick an example.", elem_id="status")
            with gr.Column(scale=2, min_width=320):
                mode = gr.Radio(list(CLICK_MODES), value="Select", label="Click on the image to",
                                elem_id="click-mode")
                multi = gr.Checkbox(False, label="Add clicks to the selection (for merge)", elem_id="multi-select")
                with gr.Row():
                    brush = gr.Slider(1, 200, value=20, step=1, label="Brush size (px)", elem_id="brush")
                    overwrite = gr.Checkbox(False, label="Paint over other segments", elem_id="overwrite")
                with gr.Row():
                    relabel = gr.Dropdown(choices=[], value=None, label="Class of the selection (model's top-5 first)",
                                          elem_id="relabel", interactive=True)
                    new_class = gr.Dropdown(choices=class_choices, value=0, label="Class of a new segment",
                                            elem_id="new-class", interactive=True)
                with gr.Row():
                    delete = gr.Button("Delete", elem_id="delete", size="sm", variant="stop")
                    merge = gr.Button("Merge", elem_id="merge", size="sm")
                    split = gr.Button("Split", elem_id="split", size="sm")
                    undo = gr.Button("↶ Undo", elem_id="undo", size="sm")
                    redo = gr.Button("↷ Redo", elem_id="redo", size="sm")
                    repredict = gr.Button("⟳ Re-predict", elem_id="repredict", size="sm")
                with gr.Accordion("Free-hand brush", open=False) as brush_box:
                    editor = gr.ImageEditor(label="Paint a stroke over the current view", elem_id="brush-editor",
                                            type="numpy", sources=[], transforms=[], layers=False,
                                            brush=gr.Brush(colors=["#ff00ff"], default_color="#ff00ff",
                                                           color_mode="fixed", default_size=12),
                                            eraser=gr.Eraser(default_size=12), format="png", height=360)
                    with gr.Row():
                        brush_load = gr.Button("Load view", elem_id="brush-load", size="sm")
                        brush_paint = gr.Button("Add to selection", elem_id="brush-paint", size="sm")
                        brush_erase = gr.Button("Erase", elem_id="brush-erase", size="sm")
                        brush_new = gr.Button("New segment", elem_id="brush-new", size="sm")
                recover = gr.Gallery(label="Recover: the model's dropped queries at the clicked pixel (pick one)",
                                     elem_id="recover", columns=3, height=170, allow_preview=False,
                                     interactive=False)
                segments = gr.Dataframe(headers=TABLE_HEADERS, value=pd.DataFrame(columns=TABLE_HEADERS),
                                        interactive=False, elem_id="segments", max_height=360, wrap=False)
                with gr.Accordion("Export", open=True):
                    with gr.Row():
                        export_name = gr.Textbox(label="Name", value="mine", elem_id="export-name", max_lines=1)
                        export_btn = gr.Button("Export", elem_id="export", variant="primary")
                    with gr.Row():
                        reviewed_btn = gr.Button("✓ Mark reviewed (or unmark)", elem_id="mark-reviewed", size="sm")
                        export_overwrite = gr.Checkbox(False, label="Replace an existing export",
                                                       elem_id="export-overwrite")
                    include_untouched = gr.Checkbox(False, label="Include untouched images (the model's own output); "
                                                    "by default only edited and reviewed images are exported",
                                                    elem_id="include-untouched")
                    export_file = gr.File(label="Download (zip)", elem_id="export-file", interactive=False)
                with gr.Accordion("Fine-tune on the export, adopt the new model", open=False):
                    with gr.Row():
                        ft_minutes = gr.Number(value=wb.loop.finetune_minutes, minimum=0.1, maximum=24 * 60,
                                               label="Time budget (minutes)", elem_id="finetune-minutes")
                        ft_max_iter = gr.Number(value=wb.loop.finetune_max_iter or 0, precision=0, minimum=0,
                                                maximum=100_000, label="Max iterations (0: automatic)",
                                                elem_id="finetune-max-iter")
                    with gr.Row():
                        ft_btn = gr.Button("Fine-tune", elem_id="finetune")
                        ft_cancel = gr.Button("Cancel", elem_id="finetune-cancel", variant="stop")
                    ft_log = gr.Textbox(label="Progress (held-out validation curve)", elem_id="finetune-log",
                                        lines=6, interactive=False)
                    ft_result = gr.Markdown("", elem_id="finetune-result")
                    with gr.Row():
                        adopt_btn = gr.Button("Adopt this model", elem_id="adopt", variant="primary")
                        adopt_anyway = gr.Checkbox(False, label="Adopt anyway (not better on held-out images)",
                                                   elem_id="adopt-anyway")
                    with gr.Row(visible=wb.dataset is not None):
                        eval_count = gr.Number(value=20, precision=0, minimum=1, maximum=10_000,
                                               label="Dataset images", elem_id="evaluate-count")
                        eval_btn = gr.Button("Evaluate on the dataset", elem_id="evaluate-dataset")
                    eval_out = gr.Markdown("", elem_id="evaluate-result")
                timer = gr.Timer(2.0, active=False)

        view = [state, canvas, segments, status, relabel, recover, gt, position]

        def show(s: BrowserSession, screen: Screen) -> tuple:
            return (s, screen.canvas, _table(screen.rows), screen.status,
                    gr.Dropdown(choices=screen.relabel, value=screen.relabel_value),
                    [(img, cap) for img, cap in screen.candidates] or None,
                    gr.Image(value=screen.ground_truth, visible=screen.ground_truth is not None),
                    screen.position)

        def session(s: BrowserSession | None) -> BrowserSession:
            return s if s is not None else wb.new_session()

        def on_load(s, request: gr.Request):
            s = session(s)
            # a link from FiftyOne: ?image=PATH[&labels=CORRECTIONS_FOLDER] (paths the app may read only)
            query = dict(getattr(request, "query_params", None) or {})
            return show(s, open_from_query(wb, s, query) or wb.start(s))

        def on_upload(s, path):
            s = session(s)
            return show(s, wb.open_upload(s, path))

        def on_example(s, evt: gr.SelectData):
            s = session(s)
            return show(s, wb.open_example(s, evt.index))

        def on_step(delta: int):
            def fn(s):
                s = session(s)
                return show(s, wb.step(s, delta))
            return fn

        def on_task(s, label):
            s = session(s)
            return show(s, wb.set_task(s, str(label).lower()))

        def on_view(s, a, o, u):
            s = session(s)
            return show(s, wb.set_view(s, opacity=a, outline=o, uncertainty=u))

        def on_click(s, click_mode, size, over, many, cls, evt: gr.SelectData):
            s = session(s)
            x, y = evt.index[:2]
            return show(s, wb.click(s, x, y, click_mode, brush_size=size, overwrite=over, multi=many,
                                    new_class=cls))

        def on_row(s, many, evt: gr.SelectData):
            s = session(s)
            row = evt.row_value or []
            sid = row[1] if len(row) > 1 else None
            try:
                sid = int(sid) if sid is not None and sid != "" else None
            except (TypeError, ValueError):
                sid = None
            return show(s, wb.select_segment(s, sid, many))

        def on_relabel(s, cls):
            s = session(s)
            return show(s, wb.relabel(s, cls))

        def simple(method):
            def fn(s):
                s = session(s)
                return show(s, method(s))
            return fn

        def on_recover(s, over, evt: gr.SelectData):
            s = session(s)
            return show(s, wb.recover(s, evt.index, overwrite=over))

        def on_brush_load(s):
            s = session(s)
            return editor_value(wb.screen(s, s.message).canvas)

        def on_brush(op: str):
            def fn(s, value, over, cls):
                s = session(s)
                mask = stroke_mask(value)
                if mask is None:
                    screen = wb.screen(s, "⚠️ nothing painted: draw on the brush image first")
                else:
                    screen = wb.apply_mask(s, mask, op, overwrite=over, new_class=cls)
                return (*show(s, screen), editor_value(screen.canvas))
            return fn

        def on_export(s, name, over, untouched):
            s = session(s)
            screen = wb.export(s, name, over, include_untouched=bool(untouched))
            return (*show(s, screen), screen.export_file)

        def panel() -> tuple:
            v = wb.finetune_view()
            return v.progress, v.result, gr.Timer(active=v.running)

        def on_finetune(s, name, minutes, max_iter):
            s = session(s)
            screen = wb.start_finetune(s, name, float(minutes) if minutes else None,
                                       int(max_iter) if max_iter else None)
            return (*show(s, screen), *panel())

        def on_cancel():
            message = wb.cancel_finetune(wait=False)
            return message, gr.Timer(active=True)  # the timer shows the run ending

        def on_adopt(s, anyway):
            s = session(s)
            screen = wb.adopt(s, anyway=bool(anyway))
            return (*show(s, screen), f"## Mask2Former workbench\n{wb.describe()}")

        def on_evaluate(count):
            return wb.evaluate_on_dataset(int(count) if count else 20)

        quick = {"show_progress": "hidden"}
        demo.load(on_load, [state], view)
        image_input.upload(on_upload, [state, image_input], view)
        examples.select(on_example, [state], view)
        prev_btn.click(on_step(-1), [state], view)
        next_btn.click(on_step(1), [state], view)
        task.change(on_task, [state, task], view, **quick)
        opacity.release(on_view, [state, opacity, outline, uncertainty], view, **quick)
        outline.input(on_view, [state, opacity, outline, uncertainty], view, **quick)
        uncertainty.input(on_view, [state, opacity, outline, uncertainty], view, **quick)
        canvas.select(on_click, [state, mode, brush, overwrite, multi, new_class], view, **quick)
        segments.select(on_row, [state, multi], view, **quick)
        relabel.input(on_relabel, [state, relabel], view, **quick)
        delete.click(simple(wb.delete), [state], view, **quick)
        merge.click(simple(wb.merge), [state], view, **quick)
        split.click(simple(wb.split), [state], view, **quick)
        undo.click(simple(wb.undo), [state], view, **quick)
        redo.click(simple(wb.redo), [state], view, **quick)
        repredict.click(simple(wb.repredict), [state], view)
        recover.select(on_recover, [state, overwrite], view, **quick)
        brush_box.expand(on_brush_load, [state], [editor])
        brush_load.click(on_brush_load, [state], [editor])
        for button, op in ((brush_paint, "paint"), (brush_erase, "erase"), (brush_new, "new")):
            button.click(on_brush(op), [state, editor, overwrite, new_class], [*view, editor], **quick)
        ft_btn.click(on_finetune, [state, export_name, ft_minutes, ft_max_iter], [*view, ft_log, ft_result, timer])
        ft_cancel.click(on_cancel, None, [ft_log, timer])
        timer.tick(panel, None, [ft_log, ft_result, timer], show_progress="hidden")
        adopt_btn.click(on_adopt, [state, adopt_anyway], [*view, header])
        eval_btn.click(on_evaluate, [eval_count], [eval_out])
        reviewed_btn.click(simple(wb.mark_reviewed), [state], view, **quick)
        export_btn.click(on_export, [state, export_name, export_overwrite, include_untouched], [*view, export_file])
    return demo
