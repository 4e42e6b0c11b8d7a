"""Open a FiftyOne sample in the Gradio editor: a link that carries the image and its current labels.

``editor_link`` (FiftyOne side) exports the sample's labels as a one-image corrections folder inside
the editor's corrections directory and returns
``http://127.0.0.1:7860/?image=<folder>/images/<file>&labels=<folder>&fo_dataset=<name>&fo_sample=<id>``.

``open_from_query`` (Gradio side, called on page load by ``app/ui.py``) opens that image with those
labels as the editable annotation (the model still runs once, for its top-k menus and the
uncertainty view). ``fo_dataset`` / ``fo_sample`` (checked by ``link_origin``) are remembered with the
image and written into the export's ``manifest.json`` (``images[*].fiftyone``), which is how
``app.fiftyone_bridge.edits.pull_edits`` finds the edit's sample; it trusts them no more than a hint
(the image must be the sample's, byte for byte). Only files the app may read are opened: the images it was started with
(``--images`` / ``--dataset``) and anything under its ``--corrections-dir`` (where the link's folder
is); everything else is refused with a message, so a crafted URL cannot read arbitrary files.
This module imports neither FiftyOne nor Gradio at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from app.errors import UserError

from . import EDITED, GT

if TYPE_CHECKING:
    from app.browser_session import BrowserSession, Screen
    from app.workbench import Workbench

__all__ = ["DEFAULT_EDITOR_URL", "editor_link", "editor_url", "link_origin", "open_from_query"]

DEFAULT_EDITOR_URL = os.environ.get("M2F_EDITOR_URL", "http://127.0.0.1:7860")
OPEN_PREFIX = "fiftyone-open-"
MAX_DATASET_NAME = 200
_SAMPLE_ID_RE = re.compile(r"[0-9a-f]{24}")  # a FiftyOne sample id (a MongoDB ObjectId in hex)


def editor_url(base: str, image: str | Path, labels: str | Path | None = None,
               origin: Mapping[str, str] | None = None) -> str:
    """The editor's URL that opens ``image`` (absolute path), with the corrections folder ``labels``;
    ``origin`` ({"dataset", "sample_id"}) names the FiftyOne sample the export belongs to."""
    query = {"image": str(Path(image).resolve())}
    if labels is not None:
        query["labels"] = str(Path(labels).resolve())
    if origin is not None:
        query["fo_dataset"], query["fo_sample"] = str(origin["dataset"]), str(origin["sample_id"])
    return f"{base.rstrip('/')}/?{urlencode(query)}"


def link_origin(params: Mapping[str, str]) -> dict[str, str] | None:
    """The FiftyOne sample a link names (``fo_dataset`` + ``fo_sample``), checked; None when it names none.

    Both or neither; the dataset name printable and at most 200 characters, the sample id 24 hex digits.
    A bad value is a ``UserError`` (the link was edited by hand or cut short).
    """
    name, sample_id = params.get("fo_dataset"), params.get("fo_sample")
    if not name and not sample_id:
        return None
    if not name or not sample_id:
        raise UserError("the link names a FiftyOne dataset without its sample (fo_dataset and fo_sample go together)")
    if len(name) > MAX_DATASET_NAME or not name.isprintable() or not name.strip():
        raise UserError(f"the link's FiftyOne dataset name is not valid: {name[:60]!r}")
    if not _SAMPLE_ID_RE.fullmatch(sample_id):
        raise UserError(f"the link's FiftyOne sample id is not valid: {sample_id[:60]!r} (24 hex digits)")
    return {"dataset": name, "sample_id": sample_id}


def editor_link(sample_view, corrections_dir: str | Path, base_url: str = DEFAULT_EDITOR_URL,
                prefix: str = f"{EDITED},{GT}") -> tuple[str, Path]:
    """Export one sample's ``prefix`` labels for the editor; returns (URL, labels folder).

    By default the labels of its last correction brought back (``edited_*``), else its ground truth.
    The URL names the sample (``fo_dataset``, ``fo_sample``) so that its export can come back.

    The folder is ``<corrections_dir>/fiftyone-open-<dataset>-<sample id>`` (replaced on each call),
    which the editor may read because it is inside its ``--corrections-dir``.
    """
    from . import BridgeError
    from .core import export_view

    if len(sample_view) != 1:
        raise BridgeError(f"select exactly one sample to open in the editor ({len(sample_view)} selected)")
    sample = sample_view.first()
    ds = sample_view._dataset
    name = f"{OPEN_PREFIX}{ds.slug}-{sample.id}"
    folder = export_view(sample_view, Path(corrections_dir).expanduser().resolve() / name, prefix=prefix,
                         overwrite=True)
    origin = {"dataset": ds.name, "sample_id": sample.id}
    return editor_url(base_url, folder / "images" / Path(sample.filepath).name, folder, origin), folder


# --------------------------------------------------------------------------------------------
# Gradio side


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _allowed(wb: Workbench, text: str, what: str, folder: bool = False) -> Path:
    """``text`` as a resolved path the editor may read, else a ``UserError`` naming why."""
    if not text or "\x00" in text:
        raise UserError(f"empty or invalid {what} path")
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise UserError(f"the {what} path must be absolute: {text}")
    path = path.resolve()
    browse = {Path(p).resolve() for p in wb.browse}
    if not (path in browse or _inside(path, wb.corrections_dir.resolve())):
        raise UserError(f"{path} is not one of the app's images nor inside its corrections folder "
                         f"{wb.corrections_dir} (start launch.py with --images, --dataset or --corrections-dir)")
    if folder and not path.is_dir():
        raise UserError(f"{path}: no such labels folder")
    if not folder and not path.is_file():
        raise UserError(f"{path}: no such image")
    return path


def _labels_session(wb: Workbench, image: Path, labels: Path):
    """The editable annotation of ``image`` from a corrections folder, in the model's class ids."""
    import numpy as np

    from app.editing import EditSession
    from m2f_core.data.corrections import CorrectionsDataset
    from m2f_core.images import load_image
    from m2f_core.metrics.model_eval import class_mapping
    from m2f_core.structures import PanopticResult

    ds = CorrectionsDataset(labels)
    if ds.panoptic is None:
        raise UserError(f"{labels}: no panoptic.json, nothing the editor can load")
    record = next((r for r in (ds[i] for i in range(len(ds))) if Path(r.file_name).name == image.name), None)
    if record is None:
        raise UserError(f"{labels}: no labels for {image.name}")
    pan = record.panoptic
    h, w = load_image(image, max_pixels=wb.model.max_pixels).shape[:2]
    if (pan.height, pan.width) != (h, w):
        raise UserError(f"{labels}: labels are {pan.width}x{pan.height}, the image {w}x{h}")
    model = [{"name": n} for n in wb.config.class_names]
    to_model = class_mapping([c["name"] for c in ds.categories], None, model)
    used = sorted({s.category_id for s in pan.segments})
    unknown = [ds.categories[c]["name"] for c in used if to_model[c] < 0]
    if unknown:
        raise UserError(f"the labels use classes the model does not know ({', '.join(unknown[:5])}); "
                         "start the editor with weights trained on the dataset's classes")
    for s in pan.segments:
        s.category_id = int(to_model[s.category_id])
    remapped = PanopticResult(np.asarray(pan.segment_map), pan.segments)
    try:
        return EditSession.from_panoptic(remapped, wb.config, max_history=200)
    except ValueError as e:  # the file's annotation does not hold together
        raise UserError(f"{labels}: {' '.join(str(e).split())}") from e


def open_from_query(wb: Workbench, s: BrowserSession, params: Mapping[str, str]) -> Screen | None:
    """Page-load hook: open ``?image=`` (with ``&labels=`` as its annotation); None without ``image``.

    A refused or unreadable path, or labels that do not fit, give the normal start screen with the
    reason in the status line.
    """
    image_text = params.get("image")
    if not image_text:
        return None
    labels_text = params.get("labels")
    try:
        image = _allowed(wb, image_text, "image")
        labels = _allowed(wb, labels_text, "labels", folder=True) if labels_text else None
        origin = link_origin(params)
        session = _labels_session(wb, image, labels) if labels is not None else None
    except Exception as e:  # noqa: BLE001  (a bad link is a status line; a bug is logged as an internal error)
        screen = wb.start(s)
        screen.status = f"{wb.failure_message(e, 'cannot open the link: ')}\n\n{screen.status}"
        return screen
    with s.lock:
        key = s.workspace.add_image(image)
        if origin is not None:  # the export's manifest names the sample (pull-edits brings the edit back)
            s.workspace.item(key).fiftyone = origin
        if session is not None:
            s.workspace.set_session(key, session)
        s.workspace.open(key)
        s.selected, s.candidates = [], []
    wb.start(s)  # runs the model once on the opened image; a loaded annotation is kept
    s.sync.reset()  # that screen is not shown: the one returned below sends the image
    message = f"opened {image.name}" + (f" with the labels of {labels.name}" if labels is not None else "")
    if origin is not None:
        message += (f" (FiftyOne sample {origin['sample_id']} of {origin['dataset']!r}: export, then pull-edits "
                    "brings the correction back)")
    s.message = message
    return wb.screen(s, message)
