"""Bring back what was saved in the Gradio editor: ``edited_*`` label fields on the FiftyOne samples.

The round trip: ``editor.editor_link`` opens a sample in the editor with ``fo_dataset`` /
``fo_sample`` in the link; the editor remembers them with the image and its export records them per
image in ``manifest.json`` (``images[*].fiftyone``), beside who exported (``user``), when
(``created``) and the weights. ``pull_edits`` scans the corrections folder for exports naming the
dataset, takes each sample's newest one and writes its labels as ``edited_panoptic``,
``edited_instances`` and ``edited_semantic`` (the import's converters), tags the sample ``edited`` and
records who / when / where in ``edited_by``, ``edited_at``, ``edited_export`` and ``edited_weights``.

Idempotent: a sample whose fields already hold its newest export is left as it is, and a sample
whose edit is newer than every export found is never reverted; a newer export replaces the older
one, and every pull (what it imported, replaced and refused) is logged in
``dataset.info["m2f_edits"]``. The link is only a hint: an export is refused, sample by sample and
with the reason, when its image is not the sample's (size or bytes), when it uses a class the dataset
does not have, or when the sample is gone. Nothing outside the corrections folder is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fiftyone as fo
import numpy as np

from m2f_core.data.errors import DatasetError
from m2f_core.data.fileio import image_size, read_json
from m2f_core.data.records import IGNORE_LABEL, Sample

from . import EDITED, BridgeError, fields
from .convert import (
    ClassIndex,
    instance_annotations_to_detections,
    mask_targets,
    panoptic_to_detections,
    semantic_to_segmentation,
)
from .core import apply_colors, categories

__all__ = ["EDIT_FIELDS", "EditedImage", "PullReport", "find_edits", "pull_edits"]

LOG_KEY = "m2f_edits"
MAX_LOG = 100  # pulls kept in the log
# who / when / where of an imported edit (sample fields)
EDIT_FIELDS = {"user": f"{EDITED}_by", "time": f"{EDITED}_at", "export": f"{EDITED}_export",
               "weights": f"{EDITED}_weights"}
IMPORTED_STATUSES = ("edited", "reviewed")  # "untouched": the labels as they were opened, nothing to bring back
_SAMPLE_ID_RE = re.compile(r"[0-9a-f]{24}")


@dataclass(frozen=True)
class EditedImage:
    """One image of an editor export that names a sample of the dataset (its manifest's entry)."""

    folder: Path
    file_name: str
    sample_id: str
    created: datetime  # when the export was written (UTC)
    user: str | None
    weights: str | None
    status: str
    edits: int


@dataclass
class PullReport:
    """What ``pull_edits`` did; ``refused`` holds one line per export it would not take."""

    dataset: str
    corrections_dir: str
    imported: list[dict[str, Any]] = field(default_factory=list)  # sample, export, user, created, replaced
    unchanged: int = 0
    kept_newer: int = 0
    refused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"fields": [fields(EDITED)[k] for k in ("panoptic", "instances",
                                                                                    "semantic")]}


# --------------------------------------------------------------------------------------------
# the exports of a corrections folder


def _created(text: Any) -> datetime | None:
    """The manifest's ``created`` as an aware UTC time; None when missing or not ISO."""
    try:
        t = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def _entries(folder: Path, manifest: dict, dataset: str) -> list[EditedImage]:
    """The images of one export's manifest that name a sample of ``dataset``."""
    created = _created(manifest.get("created"))
    user, weights = manifest.get("user"), manifest.get("weights")
    out = []
    for im in manifest.get("images") or []:
        origin = im.get("fiftyone") if isinstance(im, dict) else None
        if not isinstance(origin, dict) or origin.get("dataset") != dataset:
            continue
        name, sample_id = str(im.get("file_name") or ""), str(origin.get("sample_id") or "")
        if im.get("status") not in IMPORTED_STATUSES or created is None:
            continue
        if not name or Path(name).name != name or name.startswith(".") or not _SAMPLE_ID_RE.fullmatch(sample_id):
            continue  # never a path out of the export's images/, never a malformed id
        out.append(EditedImage(folder, name, sample_id, created, str(user) if user else None,
                               str(weights) if weights else None, str(im["status"]), int(im.get("edits") or 0)))
    return out


def find_edits(corrections_dir: str | Path, dataset: str) -> dict[str, list[EditedImage]]:
    """Per sample id, the editor's exports of that sample under ``corrections_dir``, oldest first.

    Only the folder's own exports are read (``<dir>/<name>/manifest.json``; hidden temporaries and
    unreadable manifests are skipped), and only images exported as edited or reviewed.
    """
    root = Path(corrections_dir).expanduser()
    if not root.is_dir():
        raise BridgeError(f"{root}: no such corrections folder (the editor's --corrections-dir)")
    found: dict[str, list[EditedImage]] = {}
    for manifest_path in sorted(root.glob("*/manifest.json")):
        folder = manifest_path.parent
        if folder.name.startswith(".") or folder.is_symlink():
            continue
        try:
            manifest = read_json(manifest_path)
        except DatasetError:
            continue
        if not isinstance(manifest, dict):
            continue
        for entry in _entries(folder.resolve(), manifest, dataset):
            found.setdefault(entry.sample_id, []).append(entry)
    for entries in found.values():
        entries.sort(key=lambda e: (e.created, str(e.folder)))
    return found


# --------------------------------------------------------------------------------------------
# one export -> the sample's fields


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_image(entry: EditedImage, sample: fo.Sample) -> tuple[int, int]:
    """The sample's (height, width) when the export's image is the sample's own file, else a ``BridgeError``."""
    exported = entry.folder / "images" / entry.file_name
    if not exported.is_file():
        raise BridgeError(f"the export has no image images/{entry.file_name}")
    if not exported.resolve().is_relative_to(entry.folder):
        raise BridgeError(f"images/{entry.file_name} leads out of the export (a link): not read")
    meta = sample.metadata
    size = (int(meta.height), int(meta.width)) if meta is not None and meta.height and meta.width \
        else image_size(sample.filepath)
    got = image_size(exported)
    if got != size:
        raise BridgeError(f"its image is {got[1]}x{got[0]}, the sample's {size[1]}x{size[0]}: not this sample's image")
    if not Path(sample.filepath).is_file():
        raise BridgeError(f"the sample's image {sample.filepath} is missing: cannot check the export against it")
    if _sha256(exported) != _sha256(Path(sample.filepath)):
        raise BridgeError(f"its image differs from the sample's file {Path(sample.filepath).name}")
    return size


def _record(entry: EditedImage, readers: dict[Path, Any]) -> tuple[Sample, list[dict]]:
    """The export's record of the image and the export's categories (readers cached per folder)."""
    from m2f_core.data.corrections import CorrectionsDataset

    if entry.folder not in readers:
        readers[entry.folder] = CorrectionsDataset(entry.folder)
    reader = readers[entry.folder]
    if reader.panoptic is None:
        raise BridgeError("the export has no panoptic.json")
    for i in range(len(reader)):
        record = reader[i]
        if Path(record.file_name).name == entry.file_name:
            return record, list(reader.categories)
    raise BridgeError(f"the export has no labels for {entry.file_name}")


def _class_lut(record: Sample, export_cats: list[dict], classes: ClassIndex) -> np.ndarray:
    """Export class index -> dataset class index, by name; a used class the dataset lacks is refused."""
    lut = np.array([classes.by_name.get(str(c["name"]).strip().lower(), -1) for c in export_cats], dtype=np.int64)
    used = {int(s.category_id) for s in record.panoptic.segments}
    used |= {int(a.category_id) for a in record.instances or []}
    if record.semantic is not None:
        values = np.unique(record.semantic)
        used |= {int(v) for v in values if v != IGNORE_LABEL and v < len(export_cats)}
    unknown = sorted(str(export_cats[c]["name"]) for c in used if lut[c] < 0)
    if unknown:
        raise BridgeError(f"classes the dataset does not have: {', '.join(unknown[:5])}")
    return lut


def _labels(record: Sample, export_cats: list[dict], classes: ClassIndex) -> dict[str, Any]:
    """The ``edited_*`` fields of an export's record, in the dataset's classes (None: not in the export)."""
    lut = _class_lut(record, export_cats, classes)
    names = [str(c["name"]) for c in export_cats]
    f = fields(EDITED)
    out: dict[str, Any] = {f["panoptic"]: panoptic_to_detections(record.panoptic, classes, names, lut),
                           f["instances"]: None, f["semantic"]: None}
    if record.instances is not None:
        anns = [dataclasses.replace(a, category_id=int(lut[a.category_id])) for a in record.instances]
        out[f["instances"]] = instance_annotations_to_detections(anns, classes)
    if record.semantic is not None:
        sem = np.asarray(record.semantic).astype(np.int64)
        valid = (sem >= 0) & (sem < len(lut)) & (sem != IGNORE_LABEL)
        mapped = np.where(valid, lut[np.where(valid, sem, 0)], IGNORE_LABEL)
        out[f["semantic"]] = semantic_to_segmentation(mapped, len(classes))
    return out


def _mongo_time(t: datetime) -> datetime:
    """``t`` as MongoDB stores it (naive UTC, milliseconds), so a stored time compares equal to its source."""
    t = t.astimezone(timezone.utc).replace(tzinfo=None)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def _current(sample: fo.Sample) -> tuple[str | None, datetime | None]:
    """The export and time of the edit the sample holds (None, None: none)."""
    def get(name: str):
        return sample[name] if sample.has_field(name) else None
    at = get(EDIT_FIELDS["time"])
    return get(EDIT_FIELDS["export"]), (_mongo_time(at.replace(tzinfo=at.tzinfo or timezone.utc)) if at else None)


def _apply(sample: fo.Sample, entry: EditedImage, labels: dict[str, Any]) -> None:
    for name, value in labels.items():
        if value is not None or sample.has_field(name):  # None clears what an older export left
            sample[name] = value
    sample[EDIT_FIELDS["user"]] = entry.user
    sample[EDIT_FIELDS["time"]] = _mongo_time(entry.created)
    sample[EDIT_FIELDS["export"]] = str(entry.folder)
    sample[EDIT_FIELDS["weights"]] = entry.weights
    if EDITED not in sample.tags:
        sample.tags.append(EDITED)
    sample.save()


# --------------------------------------------------------------------------------------------
# the pull


def pull_edits(ds: fo.Dataset, corrections_dir: str | Path) -> PullReport:
    """Import each sample's newest editor export under ``corrections_dir`` into its ``edited_*`` fields.

    Re-running changes nothing unless a newer export appeared (which then replaces the older one);
    exports that do not fit their sample are refused with the reason in ``PullReport.refused``.
    """
    root = Path(corrections_dir).expanduser().resolve()
    report = PullReport(ds.name, str(root))
    found = find_edits(root, ds.name)
    if not found:
        return report
    classes = ClassIndex(categories(ds))
    present = {str(i) for i in ds.select(list(found)).values("id")}
    readers: dict[Path, Any] = {}
    for sample_id in sorted(set(found) - present):
        report.refused.append(f"sample {sample_id}: not in dataset {ds.name!r} (deleted?); "
                              f"export {found[sample_id][-1].folder.name} left out")
    for sample in ds.select(sorted(present)).iter_samples():
        entry = found[sample.id][-1]
        held_export, held_time = _current(sample)
        new_time = _mongo_time(entry.created)
        if held_time is not None and held_export == str(entry.folder) and held_time == new_time:
            report.unchanged += 1
            continue
        if held_time is not None and held_time > new_time:
            report.kept_newer += 1
            continue
        try:
            _check_image(entry, sample)
            record, export_cats = _record(entry, readers)
            labels = _labels(record, export_cats, classes)
        except (BridgeError, DatasetError) as e:
            report.refused.append(f"sample {sample.id} ({Path(sample.filepath).name}), export "
                                  f"{entry.folder.name}: {' '.join(str(e).split())}")
            continue
        _apply(sample, entry, labels)
        report.imported.append({"sample_id": sample.id, "export": str(entry.folder), "user": entry.user,
                                "created": entry.created.isoformat(), "status": entry.status,
                                "edits": entry.edits, "replaced": held_export})
    _finish(ds, report)
    return report


def _finish(ds: fo.Dataset, report: PullReport) -> None:
    """Mask targets and colours of the new fields, and the pull in ``dataset.info["m2f_edits"]``."""
    semantic = fields(EDITED)["semantic"]
    if ds.has_field(semantic) and semantic not in ds.mask_targets:
        ds.mask_targets = {**ds.mask_targets, semantic: mask_targets(categories(ds))}
    info = ds.info
    log = list(info.get(LOG_KEY, []))
    log.append({"pulled": datetime.now(timezone.utc).isoformat(timespec="seconds"), **report.to_dict()})
    info[LOG_KEY] = log[-MAX_LOG:]
    ds.info = info
    ds.save()
    if report.imported:
        apply_colors(ds)
