"""Export edited annotations as a corrections folder (what ``training.train --train corrections:DIR`` reads).

Pure functions: sessions in, files out. ``out_root/<name>/`` is written by
``m2f_core.data.corrections.write_corrections`` (COCO panoptic PNG + JSON, COCO instances with
compressed RLE, semantic PNGs, copies of the images) plus ``edits.json`` (each segment's
``source`` and score, for review tools; the trainer ignores it).

Evaluable against its source: an ``ExportItem`` of a dataset image keeps that image's id
(``source_image_id``) and its file name, so ``python -m m2f_core.evaluate panoptic`` pairs the export
with the source's ground truth; other images (uploads) get fresh ids above every id of the source
(``reserved_ids``). Given ``manifest=``, ``manifest.json`` says where the export came from (``source``,
``weights``, ``user``, ``created``) and, per image, its ids, status ("edited", "reviewed", "untouched"),
number of edits, the weights that predicted it, when it was opened and the FiftyOne sample it came from
(``fiftyone``: dataset and sample id, for ``python -m app.fiftyone_bridge pull-edits``); ``training.finetune`` reads
``images[*].file_name`` and ``images[*].status`` from it.

For the annotation tools, ``tools=`` adds their files to the same folder (``TOOL_LAYOUT``; see
``docs/interchange.md``): CVAT XML and COCO, Label Studio pre-labels and LabelMe, masks or polygons
within ``max_iou_loss``, so a correction can be reviewed or continued in the tool a team uses.

Atomic at the folder level: everything is written into a hidden temporary sibling
(``.<name>.tmp-<pid>-*``) that is renamed to ``<name>`` only when complete, so a reader or a crash
never sees a half-written export. An existing export is replaced only with ``overwrite=True``
(the old folder is moved aside as ``.<name>.old-<pid>-*``, the new one renamed in, then the old
one deleted; if the second rename fails the old one is put back). A process killed mid-export
leaves only such hidden entries, never a partial ``<name>``; the next export into the same folder
removes them (``remove_stale_temporaries``: only entries of a process that no longer runs), and
puts a moved-aside export back if the kill came between the two renames.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import threading
import zipfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from m2f_core.atomic import atomic_write, atomic_write_json, make_temp_dir, remove_stale_temporaries, replace_dir
from m2f_core.data.categories import categories_from_config, normalize_categories
from m2f_core.data.corrections import write_corrections
from m2f_core.data.fileio import image_size
from m2f_core.data.records import Sample

from .editing import EditSession
from .errors import UserError
from .state import STATUSES

__all__ = ["MANIFEST_NAME", "TOOL_LAYOUT", "ExportError", "ExportItem", "export_corrections", "export_user",
           "sanitize_name", "zip_export"]

MANIFEST_NAME = "manifest.json"
# where each annotation tool's files go inside an export folder (``tools=``)
TOOL_LAYOUT = {"cvat_xml": "cvat/annotations.xml", "cvat_coco": "cvat_coco/annotations/instances_default.json",
               "label_studio": "label_studio.json", "labelme": "labelme"}

MAX_NAME_LENGTH = 100
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_SWAP_LOCK = threading.Lock()  # two sessions replacing the same export take turns


class ExportError(UserError):
    """A user-facing export problem; ``str(err)`` is one line."""


def sanitize_name(name: str) -> str:
    """Check an export name: letters, digits, ``-``, ``_``, ``.``; not empty, no ``..``, no leading dot."""
    if not isinstance(name, str):
        raise ExportError(f"export name must be text, got {type(name).__name__}")
    name = name.strip()
    if not name:
        raise ExportError("export name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ExportError(f"export name is {len(name)} characters long (at most {MAX_NAME_LENGTH})")
    if not _NAME_RE.fullmatch(name):
        bad = sorted({c for c in name if not _NAME_RE.fullmatch(c)})
        raise ExportError(f"export name {name!r} has characters {''.join(bad)!r}: use letters, digits, '-', '_', '.'")
    if ".." in name or name.startswith("."):
        raise ExportError(f"export name {name!r} may not start with '.' or contain '..'")
    return name


@dataclass
class ExportItem:
    """One image to export and its provenance (what ``manifest.json`` records about it)."""

    path: Path
    session: EditSession
    status: str = "edited"  # "edited", "reviewed" or "untouched" (app.state.STATUSES)
    source_image_id: int | str | None = None  # its id in the dataset it came from (None: an upload)
    weights: str | None = None  # the weights whose prediction the annotation started from
    opened: str | None = None  # ISO time the image was first opened
    fiftyone: dict[str, str] | None = None  # the FiftyOne sample it was opened from ({"dataset", "sample_id"})


def _as_item(entry: ExportItem | tuple[str | Path, EditSession]) -> ExportItem:
    """An ``ExportItem`` from an item or a plain (image path, session) pair (no provenance)."""
    if isinstance(entry, ExportItem):
        return entry
    path, session = entry
    return ExportItem(Path(path), session, "edited" if session.has_edits else "untouched")


def _image_ids(items: Sequence[ExportItem], reserved_ids: Collection[int | str]) -> list[int | str]:
    """Each item's image id: its source id when it has one, else a fresh integer above every kept and
    reserved id (so an upload never takes the id of a source image)."""
    kept = [it.source_image_id for it in items if it.source_image_id is not None]
    twice = {i for i in kept if kept.count(i) > 1}
    if twice:
        raise ExportError(f"two images have the source image id {sorted(map(str, twice))[0]}")
    fresh = max((i for i in (*kept, *reserved_ids) if isinstance(i, int) and not isinstance(i, bool)), default=0)
    out: list[int | str] = []
    for it in items:
        if it.source_image_id is None:
            fresh += 1
            out.append(fresh)
        else:
            out.append(it.source_image_id)
    return out


def _categories(classes: Any) -> list[dict]:
    """A category list from a ``Mask2FormerConfig`` or a list of dicts (contiguous order)."""
    if hasattr(classes, "class_names") and hasattr(classes, "dataset_ids"):
        return categories_from_config(classes)
    try:
        return normalize_categories(list(classes), "categories")
    except (TypeError, ValueError) as e:
        raise ExportError(f"bad class list: {e}") from None


def _samples(items: Sequence[ExportItem], image_ids: Sequence[int | str], categories: list[dict]) -> list[Sample]:
    """One ``Sample`` per item, checked before anything is written."""
    samples = []
    for item, image_id in zip(items, image_ids):
        path, session = Path(item.path), item.session
        if session.num_classes != len(categories):
            raise ExportError(f"{path.name}: the annotation has {session.num_classes} classes, the class list "
                              f"{len(categories)}")
        if not path.is_file():
            raise ExportError(f"{path}: no such image file")
        h, w = session.shape
        if image_size(path) != (h, w):
            ih, iw = image_size(path)
            raise ExportError(f"{path.name}: image is {iw}x{ih}, its annotation {w}x{h}")
        samples.append(Sample(image_id=image_id, file_name=path, height=h, width=w,
                              panoptic=session.panoptic_result()))
    return samples


def export_user() -> str | None:
    """Who exports (the manifest's ``user``): ``M2F_USER`` if set, else the login name; None if unknown."""
    name = os.environ.get("M2F_USER", "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return None


def _manifest(fields: dict[str, Any], items: Sequence[ExportItem], samples: Sequence[Sample]) -> dict[str, Any]:
    """The content of ``manifest.json`` (key names and status words are read by ``training.finetune``;
    ``user``, ``created`` and an image's ``fiftyone`` by the FiftyOne bridge's ``pull-edits``)."""
    return {
        "source": None, "weights": None, "user": export_user(), **fields,
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "images": [{"file_name": Path(s.file_name).name, "image_id": s.image_id,
                    "source_image_id": it.source_image_id, "status": it.status, "edits": it.session.edit_count,
                    "weights": it.weights or None, "opened": it.opened or None, "fiftyone": it.fiftyone or None}
                   for it, s in zip(items, samples)],
    }


def export_corrections(items: Sequence[ExportItem | tuple[str | Path, EditSession]], classes: Any,
                       out_root: str | Path, name: str, overwrite: bool = False, *,
                       manifest: dict[str, Any] | None = None, reserved_ids: Collection[int | str] = (),
                       tools: Sequence[str] = (), polygons: bool = False, max_iou_loss: float = 0.01) -> Path:
    """Write ``out_root/<name>/`` as a corrections folder, atomically; returns its path.

    ``items``: ``ExportItem``s or plain (image path, EditSession) pairs (image names must be distinct);
    ``classes``: the model's ``Mask2FormerConfig`` or its category list (dataset ids go into the JSON
    files). Items keep their ``source_image_id``; the others get fresh ids above those and above
    ``reserved_ids`` (every id of the source dataset). ``manifest``: the top-level fields of
    ``manifest.json`` (``source``, ``weights``, more if wanted); None writes no manifest (the trainer then
    takes every image as edited, right for labels exported from FiftyOne). ``tools``: annotation tool
    formats (keys of ``TOOL_LAYOUT``) also written into the folder, as masks or, with ``polygons``,
    polygons within ``max_iou_loss``.
    """
    name = sanitize_name(name)
    if not items:
        raise ExportError("nothing to export (no annotated image)")
    items = [_as_item(entry) for entry in items]
    for item in items:
        if item.status not in STATUSES:
            raise ExportError(f"{Path(item.path).name}: unknown status {item.status!r} (one of {', '.join(STATUSES)})")
    out_root = Path(out_root)
    final = out_root / name
    remove_stale_temporaries(out_root)  # what an export killed mid-write left (may put an old export back)
    if final.exists() and not overwrite:
        raise ExportError(f"{final} already exists (choose another name or overwrite)")
    unknown = sorted(set(tools) - set(TOOL_LAYOUT))
    if unknown:
        raise ExportError(f"unknown tool format {unknown[0]!r} (one of {', '.join(TOOL_LAYOUT)})")
    categories = _categories(classes)
    samples = _samples(items, _image_ids(items, reserved_ids), categories)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out_root, name)
    try:
        write_corrections(tmp, samples, categories)
        atomic_write_json(tmp / "edits.json", {"images": [
            {"image_id": s.image_id, "file_name": Path(s.file_name).name,
             "segments": [{"id": seg.id, "source": seg.source, "score": float(seg.score)}
                          for seg in item.session.segments]}
            for s, item in zip(samples, items)]})
        if manifest is not None:
            atomic_write_json(tmp / MANIFEST_NAME, _manifest(manifest, items, samples))
        _write_tools(tmp, samples, categories, tools, polygons, max_iou_loss)
        _swap_in(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_tools(folder: Path, samples: Sequence[Sample], categories: list[dict], tools: Sequence[str],
                 polygons: bool, max_iou_loss: float) -> None:
    """The annotation tools' files of an export (``TOOL_LAYOUT``), referring to the images in ``images/``."""
    if not tools:
        return
    from m2f_core.data.cvat import write_cvat_coco, write_cvat_xml
    from m2f_core.data.label_studio import write_label_studio
    from m2f_core.data.labelme import write_labelme

    local = [Sample(image_id=s.image_id, file_name=folder / "images" / Path(s.file_name).name, height=s.height,
                    width=s.width, panoptic=s.panoptic) for s in samples]
    for fmt in dict.fromkeys(tools):
        path = folder / TOOL_LAYOUT[fmt]
        if fmt == "cvat_xml":
            write_cvat_xml(path, local, categories, polygons=polygons, max_iou_loss=max_iou_loss)
        elif fmt == "cvat_coco":
            write_cvat_coco(path, local, categories, polygons=polygons, max_iou_loss=max_iou_loss)
        elif fmt == "label_studio":
            # corrections are a person's work: annotations, not the pre-labels (predictions) a model gives
            write_label_studio(path, local, categories, polygons=polygons, max_iou_loss=max_iou_loss,
                               image_url_prefix="/data/local-files/?d=images/", as_predictions=False)
        else:
            write_labelme(path, local, categories, max_iou_loss=max_iou_loss, copy_images=False)


def _swap_in(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished temporary folder to ``final`` (moving an existing export aside if allowed)."""
    with _SWAP_LOCK:
        if final.exists() and not overwrite:
            raise ExportError(f"{final} already exists (choose another name or overwrite)")
        replace_dir(tmp, final)


def zip_export(folder: str | Path) -> Path:
    """Zip an export folder to ``<folder>.zip`` next to it (entries under ``<name>/``), atomically."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such export folder")
    target = folder.parent / f"{folder.name}.zip"
    remove_stale_temporaries(folder.parent)

    def write_zip(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zf.write(path, Path(folder.name) / path.relative_to(folder))

    atomic_write(target, write_zip)
    return target
