"""The Gradio page: components with stable ``elem_id``s, each event wired to one ``Workbench`` action.

No logic here beyond converting between Gradio values and the plain values of ``app.workbench``:
per-browser state is a ``BrowserSession`` (holding the ``WorkspaceState``) in a ``gr.State``, so
nothing leaks between users; it is created on page load and its uploads are deleted when the
browser session ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from .browser_session import BrowserSession, Screen
from .editing import TASKS
from .fiftyone_bridge.editor import open_from_query
from .render import SELECTED_MARK, TABLE_HEADERS
from .workbench import TASK_LABELS, Workbench

__all__ = ["CSS", "build_app"]

ASSETS = Path(__file__).parent / "assets"
CANVAS_HTML = (ASSETS / "canvas.html").read_text(encoding="utf-8")
CANVAS_JS = (ASSETS / "canvas.js").read_text(encoding="utf-8")
CANVAS_CSS = (ASSETS / "canvas.css").read_text(encoding="utf-8")

CSS = """
#header h2 { margin: 0; font-size: 1.2em; }
#header p { margin: 0; font-size: 0.85em; opacity: 0.8; }
#status { min-height: 2.4em; font-size: 0.9em; }
#status p { margin: 0.1em 0; }
#side { max-height: calc(100vh - 70px); overflow-y: auto; flex-wrap: nowrap; }
#side > * { flex-shrink: 0; }
""" + CANVAS_CSS

HELP = """**Loop**: open an image → the model runs once → switch task (1 / 2 / 3) → select on the canvas (click;
shift-click adds) → relabel, delete, merge, split, or paint with the brush / eraser / polygon / magic wand →
*Recover* offers the model's dropped queries → undo / redo → export → fine-tune on the export (held-out images
measure the gain) → adopt the new model. Press **?** on the canvas for every shortcut."""


def _table(rows: list[list]) -> Any:
    """The segment table; selected rows highlighted (a pandas Styler)."""
    df = pd.DataFrame(rows, columns=TABLE_HEADERS)
    if df.empty:
        return df

    def color(row):
        style = "background-color: #fde68a; color: #111; font-weight: 600" if row["sel"] == SELECTED_MARK else ""
        return [style] * len(row)
    return df.style.apply(color, axis=1).format({"score": "{:.3f}"})


def _data(evt: gr.EventData) -> dict:
    """The payload a canvas event was triggered with (``trigger(name, data)`` in canvas.js)."""
    data = getattr(evt, "_data", None)
    return data if isinstance(data, dict) else {}


def build_app(wb: Workbench) -> gr.Blocks:
    """The editor page for one ``Workbench`` (launch it with ``.queue().launch(...)``)."""
    class_choices = [(n, i) for i, n in enumerate(wb.config.class_names)]
    with gr.Blocks(title="Mask2Former workbench", analytics_enabled=False, fill_width=True) as demo:
        state = gr.State(None, delete_callback=wb.close_session)
        header = gr.Markdown(f"## Mask2Former workbench\n{wb.describe()}", elem_id="header")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=640):
                canvas = gr.HTML({"empty": True}, html_template=CANVAS_HTML, js_on_load=CANVAS_JS, elem_id="canvas",
                                 apply_default_css=False)
                status = gr.Markdown("Upload an image or pick an example.", elem_id="status")
            with gr.Column(scale=2, min_width=340, elem_id="side"):
                task = gr.Radio([TASK_LABELS[t] for t in TASKS], value="Panoptic", label="Task (1 / 2 / 3)",
                                elem_id="task")
                with gr.Row():
                    relabel = gr.Dropdown(choices=[], value=None, label="Class of the selection (model's top-5 first)",
                                          elem_id="relabel", interactive=True)
                    new_class = gr.Dropdown(choices=class_choices, value=0, label="Class of a new segment",
                                            elem_id="new-class", interactive=True)
                with gr.Row():
                    delete = gr.Button("Delete", elem_id="delete", size="sm", variant="stop")
                    merge = gr.Button("Merge (M)", elem_id="merge", size="sm")
                    split = gr.Button("Split (X)", elem_id="split", size="sm")
                    fill_holes = gr.Button("Fill holes (H)", elem_id="fill-holes", size="sm")
                with gr.Row():
                    undo = gr.Button("↶ Undo", elem_id="undo", size="sm")
                    redo = gr.Button("↷ Redo", elem_id="redo", size="sm")
                    repredict = gr.Button("⟳ Re-predict", elem_id="repredict", size="sm")
                    min_area = gr.Number(0, precision=0, minimum=0, label="Split: min piece (px)",
                                         elem_id="split-min-area", min_width=80)
                with gr.Row():
                    prev_btn = gr.Button("◀ Previous (A)", elem_id="prev", size="sm")
                    next_btn = gr.Button("Next (D) ▶", elem_id="next", size="sm")
                    export_name = gr.Textbox(label="Export name", value="mine", elem_id="export-name", max_lines=1,
                                             min_width=100)
                    export_btn = gr.Button("Export (Ctrl+S)", elem_id="export", variant="primary", size="sm")
                export_file = gr.File(label="Download the last export (zip)", elem_id="export-file",
                                      interactive=False, height=60)
                position = gr.Markdown("no image", elem_id="position")
                segments = gr.Dataframe(headers=TABLE_HEADERS, value=pd.DataFrame(columns=TABLE_HEADERS),
                                        interactive=False, elem_id="segments", max_height=300, wrap=False)
                with gr.Accordion("Images", open=True):
                    image_input = gr.File(label="Image (upload)", file_types=["image"], type="filepath",
                                          elem_id="image-input", height=90)
                    examples = gr.Gallery(value=[str(p) for p in wb.examples] or None, label="Examples",
                                          elem_id="examples", columns=6, height=90, allow_preview=False,
                                          visible=bool(wb.examples), interactive=False)
                with gr.Accordion("Export options", open=False):
                    with gr.Row():
                        reviewed_btn = gr.Button("✓ Mark reviewed (or unmark)", elem_id="mark-reviewed", size="sm")
                        export_overwrite = gr.Checkbox(False, label="Replace an existing export",
                                                       elem_id="export-overwrite")
                    include_untouched = gr.Checkbox(False, label="Include untouched images (the model's own output); "
                                                    "by default only edited and reviewed images are exported",
                                                    elem_id="include-untouched")
                    with gr.Row():
                        export_tools = gr.CheckboxGroup(
                            [("CVAT XML 1.1", "cvat_xml"), ("CVAT COCO 1.0", "cvat_coco"),
                             ("Label Studio", "label_studio"), ("LabelMe", "labelme")], value=[],
                            label="Also write for annotation tools (docs/interchange.md)", elem_id="export-tools")
                        export_polygons = gr.Checkbox(False, label="as polygons (IoU loss <= 1 %)",
                                                      elem_id="export-polygons")
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
                gr.Markdown(HELP)
                timer = gr.Timer(2.0, active=False)

        view = [state, canvas, segments, status, relabel, position]

        def show(s: BrowserSession, screen: Screen) -> tuple:
            return (s, screen.canvas, _table(screen.rows), screen.status,
                    gr.Dropdown(choices=screen.relabel, value=screen.relabel_value), screen.position)

        def session(s: BrowserSession | None) -> BrowserSession:
            return s if s is not None else wb.new_session()

        def on_load(s, request: gr.Request):
            s = session(s)
            s.sync.reset()  # a reloaded page holds nothing yet
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

        def on_row(s, evt: gr.SelectData):
            s = session(s)
            row = evt.row_value or []
            sid = row[1] if len(row) > 1 else None
            try:
                sid = int(sid) if sid is not None and sid != "" else None
            except (TypeError, ValueError):
                sid = None
            return show(s, wb.select_segment(s, sid, False))

        def on_relabel(s, cls):
            s = session(s)
            return show(s, wb.relabel(s, cls))

        def simple(method):
            def fn(s):
                s = session(s)
                return show(s, method(s))
            return fn

        def on_split(s, area):
            s = session(s)
            return show(s, wb.split(s, int(area or 0)))

        # canvas events: each carries its data (``trigger(name, data)`` in canvas.js)
        def on_pick(s, evt: gr.EventData):
            s = session(s)
            d = _data(evt)
            seq = d.get("seq")
            return show(s, wb.select_ids(s, d.get("ids") or [], int(seq) if isinstance(seq, (int, float)) else None))

        def on_stroke(s, cls, evt: gr.EventData):
            s, d = session(s), _data(evt)
            return show(s, wb.stroke(s, str(d.get("tool", "")), d.get("points") or [], d.get("radius", 0),
                                     ids=d.get("ids"), overwrite=bool(d.get("overwrite")),
                                     fill=str(d.get("fill", "neighbour")), new_class=cls))

        def on_polygon(s, cls, evt: gr.EventData):
            s, d = session(s), _data(evt)
            return show(s, wb.polygon(s, d.get("points") or [], overwrite=bool(d.get("overwrite")), new_class=cls))

        def on_wand(s, evt: gr.EventData):
            s, d = session(s), _data(evt)
            return show(s, wb.wand(s, d.get("x", 0), d.get("y", 0), d.get("threshold", 0.5)))

        def on_wand_commit(s, cls, evt: gr.EventData):
            s, d = session(s), _data(evt)
            return show(s, wb.wand_commit(s, str(d.get("mode", "new")), ids=d.get("ids"),
                                          overwrite=bool(d.get("overwrite")), new_class=cls))

        def on_recover_at(s, evt: gr.EventData):
            s, d = session(s), _data(evt)
            return show(s, wb.recover_at(s, d.get("x", 0), d.get("y", 0)))

        def on_recover(s, evt: gr.EventData):
            s, d = session(s), _data(evt)
            return show(s, wb.recover(s, int(d.get("index", -1)), overwrite=bool(d.get("overwrite"))))

        def on_action(s, area, evt: gr.EventData):
            s, d = session(s), _data(evt)
            return show(s, wb.canvas_action(s, str(d.get("op", "")), d.get("ids"), min_area=int(area or 0),
                                            overwrite=bool(d.get("overwrite"))))

        def on_view(s, evt: gr.EventData):
            s, d = session(s), _data(evt)
            return show(s, wb.set_view(s, uncertainty=d.get("uncertainty"), ground_truth=d.get("ground_truth"),
                                       full_photo=d.get("full_photo")))

        def on_resync(s):
            s = session(s)
            return show(s, wb.resync(s))

        def on_export(s, name, over, untouched, tools, polygons):
            s = session(s)
            screen = wb.export(s, name, over, include_untouched=bool(untouched), tools=tuple(tools or ()),
                               polygons=bool(polygons))
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

        # edits of one session run in the order they were made: one queue ("edit") for all of them, and
        # none is dropped while another is pending (Gradio's default "once" would drop a second Ctrl+Z,
        # stroke or shift-click made before the first one's answer came back)
        edit = {"show_progress": "hidden", "concurrency_id": "edit", "concurrency_limit": 1,
                "trigger_mode": "multiple"}
        demo.load(on_load, [state], view)
        image_input.upload(on_upload, [state, image_input], view)
        examples.select(on_example, [state], view)
        prev_btn.click(on_step(-1), [state], view)
        next_btn.click(on_step(1), [state], view)
        task.change(on_task, [state, task], view, **edit)
        segments.select(on_row, [state], view, **edit)
        relabel.input(on_relabel, [state, relabel], view, **edit)
        delete.click(simple(wb.delete), [state], view, **edit)
        merge.click(simple(wb.merge), [state], view, **edit)
        split.click(on_split, [state, min_area], view, **edit)
        fill_holes.click(simple(wb.fill_holes), [state], view, **edit)
        undo.click(simple(wb.undo), [state], view, **edit)
        redo.click(simple(wb.redo), [state], view, **edit)
        repredict.click(simple(wb.repredict), [state], view)
        canvas.pick(on_pick, [state], view, **edit)
        canvas.stroke(on_stroke, [state, new_class], view, **edit)
        canvas.polygon(on_polygon, [state, new_class], view, **edit)
        canvas.wand(on_wand, [state], view, **edit)
        canvas.wand_commit(on_wand_commit, [state, new_class], view, **edit)
        canvas.recover_at(on_recover_at, [state], view, **edit)
        canvas.recover(on_recover, [state], view, **edit)
        canvas.action(on_action, [state, min_area], view, **edit)
        canvas.view(on_view, [state], view, **edit)
        canvas.resync(on_resync, [state], view, **edit)
        ft_btn.click(on_finetune, [state, export_name, ft_minutes, ft_max_iter], [*view, ft_log, ft_result, timer])
        ft_cancel.click(on_cancel, None, [ft_log, timer])
        timer.tick(panel, None, [ft_log, ft_result, timer], show_progress="hidden")
        adopt_btn.click(on_adopt, [state, adopt_anyway], [*view, header])
        eval_btn.click(on_evaluate, [eval_count], [eval_out])
        reviewed_btn.click(simple(wb.mark_reviewed), [state], view, **edit)
        export_btn.click(on_export, [state, export_name, export_overwrite, include_untouched, export_tools,
                                     export_polygons], [*view, export_file])
    return demo
