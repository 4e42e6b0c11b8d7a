"""Import a dataset into FiftyOne, run the model on a view, read labels back, export a view for training.

Everything reuses the project's readers (``m2f_core.data.open_dataset``), predictor and the app's
corrections exporter; this module only moves labels between them and FiftyOne (``convert``).
The dataset's class list, format and source live in ``dataset.info["m2f"]``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fiftyone as fo
import numpy as np

from m2f_core.data.fileio import image_size
from m2f_core.data.records import IGNORE_LABEL, Sample, SegmentationDataset

from . import GT, PRED, BridgeError, fields
from .convert import (
    ClassIndex,
    detections_to_instance_annotations,
    detections_to_panoptic,
    instance_annotations_to_detections,
    instance_result_to_detections,
    mask_targets,
    panoptic_to_detections,
    segmentation_to_semantic,
    semantic_to_panoptic,
    semantic_to_segmentation,
)
from .sources import open_source

__all__ = ["PredictReport", "apply_colors", "categories", "default_view", "export_view", "import_dataset",
           "install_plugin", "load_dataset", "open_source", "predict_view", "predict_view_parallel", "sample_record",
           "select"]

INFO_KEY = "m2f"
_PREFIX_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")

Progress = Callable[[int, int], None]  # (done, total), for an operator's progress bar


def check_prefix(prefix: str) -> str:
    """A label-set prefix must be a short lower-case identifier (it names fields and evaluation keys)."""
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise BridgeError(f"label prefix {prefix!r} must be lower-case letters, digits and '_', starting with a letter")
    return prefix


# --------------------------------------------------------------------------------------------
# datasets and views


def load_dataset(name: str) -> fo.Dataset:
    """A dataset imported by this bridge (clear error when it does not exist or was made elsewhere)."""
    if not fo.dataset_exists(name):
        have = ", ".join(sorted(fo.list_datasets())[:10]) or "none"
        raise BridgeError(f"no FiftyOne dataset named {name!r} (have: {have}); create it with the import command")
    ds = fo.load_dataset(name)
    if INFO_KEY not in ds.info:
        raise BridgeError(f"dataset {name!r} was not imported by this bridge (no info['{INFO_KEY}'])")
    return ds


def categories(collection: fo.Dataset | fo.DatasetView) -> list[dict]:
    """The dataset's class list (contiguous order), as stored at import."""
    ds = collection._dataset if isinstance(collection, fo.DatasetView) else collection
    return list(ds.info[INFO_KEY]["categories"])


def select(ds: fo.Dataset, tag: str | None = None, saved_view: str | None = None,
           limit: int | None = None) -> fo.Dataset | fo.DatasetView:
    """The samples to work on: a saved view, then those with a sample tag, then the first ``limit``."""
    view: fo.Dataset | fo.DatasetView = ds
    if saved_view:
        if saved_view not in ds.list_saved_views():
            raise BridgeError(f"dataset {ds.name!r} has no saved view {saved_view!r} "
                              f"(have: {', '.join(ds.list_saved_views()) or 'none'})")
        view = ds.load_saved_view(saved_view)
    if tag:
        view = view.match_tags(tag)
        if len(view) == 0:
            raise BridgeError(f"no sample of {ds.name!r} is tagged {tag!r}")
    if limit is not None:
        view = view.limit(int(limit))
    return view


def _has_field(collection, name: str) -> bool:
    return collection.has_field(name)


# --------------------------------------------------------------------------------------------
# import


def _sample_fields(record: Sample, classes: ClassIndex) -> dict[str, Any]:
    """The ground-truth fields of one record (only those its format has)."""
    out: dict[str, Any] = {}
    f = fields(GT)
    if record.panoptic is not None:
        out[f["panoptic"]] = panoptic_to_detections(record.panoptic, classes)
    if record.instances is not None or record.panoptic is not None:
        out[f["instances"]] = instance_annotations_to_detections(record.instance_annotations(), classes)
    if record.semantic is not None or record.panoptic is not None or record.instances is not None:
        out[f["semantic"]] = semantic_to_segmentation(record.semantic_map(), len(classes))
    return out


def import_dataset(fmt: str, path: str | Path, name: str, split: str | None = None,
                   image_dir: str | Path | None = None, class_list: str | None = None, overwrite: bool = False,
                   progress: bool = True, reader: SegmentationDataset | None = None) -> fo.Dataset:
    """Read a dataset with the project's readers and store it as a persistent FiftyOne dataset.

    Every sample is checked (annotation readable, image present, decodable header, same size as its
    annotation) while it is added to a hidden temporary dataset that is renamed to ``name`` only
    when everything went in: a failed import leaves nothing behind (and never half a dataset).
    ``reader``: the already opened ``open_source(...)`` of the same arguments.
    """
    from tqdm import tqdm

    if reader is None:
        reader = open_source(fmt, path, split, image_dir, class_list)
    if fo.dataset_exists(name) and not overwrite:
        raise BridgeError(f"dataset {name!r} exists already (pass --overwrite to replace it)")
    classes = ClassIndex(reader.categories)
    tmp = fo.Dataset(f"{name}.importing-{uuid.uuid4().hex[:8]}")
    try:
        batch: list[fo.Sample] = []
        bar = tqdm(range(len(reader)), desc=f"import {name}", unit="img", disable=None if progress else True)
        for i in bar:  # a progress bar on a terminal only
            record = reader[i]
            image = Path(record.file_name).resolve()
            h, w = image_size(image)  # DatasetError: missing or not an image
            if (h, w) != (record.height, record.width):
                raise BridgeError(f"{image}: image is {w}x{h} but its annotation is {record.width}x{record.height}")
            sample = fo.Sample(filepath=str(image), metadata=fo.ImageMetadata(width=w, height=h),
                               image_id=str(record.image_id), **_sample_fields(record, classes))
            batch.append(sample)
            if len(batch) >= 50:
                tmp.add_samples(batch, progress=False)
                batch = []
        if batch:
            tmp.add_samples(batch, progress=False)
        has = {k: tmp.has_field(v) for k, v in fields(GT).items() if k in ("panoptic", "instances", "semantic")}
        tmp.info[INFO_KEY] = {"format": fmt, "source": str(Path(path).expanduser().resolve()), "split": split,
                              "categories": [_json_category(c) for c in reader.categories], "ground_truth": has,
                              "imported": time.strftime("%Y-%m-%d %H:%M:%S"), "predictions": {}}
        targets = mask_targets(reader.categories)
        tmp.default_mask_targets = targets
        if has["semantic"]:
            tmp.mask_targets = {fields(GT)["semantic"]: targets}
        tmp.default_classes = [str(c["name"]) for c in reader.categories]
        tmp.save()
        apply_colors(tmp)
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        tmp.name = name
        tmp.persistent = True
    except BaseException:
        tmp.delete()
        raise
    return tmp


def _json_category(c: dict) -> dict:
    """A category as plain JSON values (``dataset.info`` is stored in MongoDB)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in c.items()
            if isinstance(v, (str, int, float, bool, list, tuple)) or v is None}


SCORE_THRESHOLD = 0.5
THRESHOLD_VIEW = f"predicted instances, score >= {SCORE_THRESHOLD}"


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def apply_colors(ds: fo.Dataset) -> None:
    """The App's defaults for this dataset, applied after every import, prediction or import of edits.

    - classes coloured alike in every panoptic / instance / semantic field (ground truth and predictions look
      alike, and like the Gradio editor), except stuff in panoptic fields: drawn in the complement of its
      class colour, as stuff colours resemble the textures they cover (grass green, sky blue) and vanish;
    - only the panoptic ground truth and predictions switched on: fields added later (instances, semantic,
      uncertainty, evaluation results, fine-tuned predictions) stay off until ticked (``active_fields``);
    - a saved view ``THRESHOLD_VIEW`` that hides predicted instances scored under ``SCORE_THRESHOLD``
      (the model keeps its top 100 per image), the view the ``app`` command opens.
    """
    cats = categories(ds)
    colors = [tuple(c.get("color") or (128, 128, 128)) for c in cats]
    values = [{"value": str(c["name"]), "color": _hex(rgb)} for c, rgb in zip(cats, colors)]
    contrast = [{"value": str(c["name"]), "color": _hex(rgb if c.get("isthing", True) else [255 - v for v in rgb])}
                for c, rgb in zip(cats, colors)]
    paths = [name for name in ds.get_field_schema()
             if name.endswith(("_panoptic", "_instances")) and ds.has_field(name)]
    ds.app_config.color_scheme = fo.ColorScheme(
        color_by="value", opacity=0.6,
        fields=[{"path": p, "colorByAttribute": "label",
                 "valueColors": contrast if p.endswith("_panoptic") else values} for p in sorted(paths)],
        default_mask_targets_colors=[{"intTarget": i + 1, "color": _hex(rgb)} for i, rgb in enumerate(colors)])
    ds.app_config.active_fields = _active_fields(ds)
    ds.save()
    ds.save_view(THRESHOLD_VIEW, default_view(ds), overwrite=True,
                 description="the App's default: predicted instances under the score threshold hidden")


def _active_fields(ds: fo.Dataset) -> fo.ActiveFields:
    """The fields switched on: those already on, plus the first label field of the ground truth and of the
    predictions (panoptic, else instances, else semantic)."""
    current = ds.app_config.active_fields
    paths = list(current.paths) if current is not None and not current.exclude else []
    for prefix in (GT, PRED):
        f = fields(prefix)
        first = next((f[k] for k in ("panoptic", "instances", "semantic") if ds.has_field(f[k])), None)
        if first is not None and first not in paths:
            paths.append(first)
    return fo.ActiveFields(exclude=False, paths=paths)


def default_view(ds: fo.Dataset) -> fo.DatasetView:
    """The dataset with every predicted instance scored under ``SCORE_THRESHOLD`` hidden (not deleted)."""
    from fiftyone import ViewField as F

    view = ds.view()
    for prefix in sorted(ds.info.get(INFO_KEY, {}).get("predictions", {})):
        name = fields(prefix)["instances"]
        if ds.has_field(name):
            view = view.filter_labels(name, F("confidence") >= SCORE_THRESHOLD, only_matches=False)
    return view


# --------------------------------------------------------------------------------------------
# FiftyOne sample -> our record


def sample_record(sample: fo.Sample, classes: ClassIndex, prefix: str = GT) -> Sample:
    """One FiftyOne sample's labels of ``prefix`` as our ``Sample`` (ground-truth rules: unknown classes fail)."""
    f = fields(prefix)
    meta = sample.metadata
    if meta is None or not meta.width or not meta.height:
        h, w = image_size(sample.filepath)
    else:
        h, w = int(meta.height), int(meta.width)
    where = f"sample {sample.id} ({Path(sample.filepath).name})"
    pan = detections_to_panoptic(sample[f["panoptic"]], classes, h, w, gt=True, where=where) \
        if sample.has_field(f["panoptic"]) and sample[f["panoptic"]] is not None else None
    ins = detections_to_instance_annotations(sample[f["instances"]], classes, h, w, where=where) \
        if sample.has_field(f["instances"]) and sample[f["instances"]] is not None else None
    sem = segmentation_to_semantic(sample[f["semantic"]], len(classes), where=where) \
        if sample.has_field(f["semantic"]) else None
    return Sample(image_id=sample.id, file_name=Path(sample.filepath), height=h, width=w, panoptic=pan,
                  instances=ins, semantic=sem)


# --------------------------------------------------------------------------------------------
# predict


@dataclass
class PredictReport:
    """What ``predict_view`` did: counts, the fields it wrote and the samples it could not read."""

    prefix: str
    weights: str
    samples: int = 0
    seconds: float = 0.0
    fields: list[str] = field(default_factory=list)
    unmapped_classes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"prefix": self.prefix, "weights": self.weights, "samples": self.samples,
                "seconds": round(self.seconds, 3), "fields": self.fields, "unmapped_classes": self.unmapped_classes,
                "errors": self.errors}


def _prediction_fields(pred, classes: ClassIndex, class_names: list[str], mapping: np.ndarray,
                       f: dict[str, str]) -> dict[str, Any]:
    """One prediction's fields: panoptic and instance detections, semantic map, mean and map of uncertainty."""
    pan, ins, sem = pred.panoptic(), pred.instance(), pred.semantic()
    unc = pred.uncertainty()
    sem_lut = np.where(mapping >= 0, mapping, IGNORE_LABEL)
    return {f["panoptic"]: panoptic_to_detections(pan, classes, class_names, mapping, scores=True),
            f["instances"]: instance_result_to_detections(ins, classes, class_names, mapping),
            f["semantic"]: semantic_to_segmentation(sem_lut[sem.label_map], len(classes)),
            f["uncertainty"]: float(unc.mean()),
            f["uncertainty_map"]: fo.Heatmap(map=np.round(unc * 255).astype(np.uint8), range=[0, 255])}


def _start_predict(collection: fo.Dataset | fo.DatasetView, prefix: str) -> list[dict]:
    """The checks before predicting into ``collection``; returns its class list."""
    check_prefix(prefix)
    if prefix == GT:
        raise BridgeError("predictions cannot be written to the ground-truth prefix 'gt'")
    return categories(collection)


def _finish_predict(ds: fo.Dataset, report: PredictReport, cats: list[dict], model_name: str,
                    model_classes: list[str], start: float) -> None:
    """Record the run on the dataset: fields, mask targets, ``info`` entry, colours."""
    f = fields(report.prefix)
    report.seconds = time.perf_counter() - start
    report.fields = [f[k] for k in ("panoptic", "instances", "semantic", "uncertainty", "uncertainty_map")]
    if ds.has_field(f["semantic"]):
        targets = dict(ds.mask_targets)
        targets[f["semantic"]] = mask_targets(cats)
        ds.mask_targets = targets
    ds.info[INFO_KEY].setdefault("predictions", {})[report.prefix] = {
        "weights": report.weights, "model": model_name, "model_classes": list(model_classes),
        "unmapped_classes": report.unmapped_classes, "samples": report.samples,
        "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    ds.save()
    apply_colors(ds)


def predict_view(view: fo.Dataset | fo.DatasetView, weights: str | None = None, prefix: str = PRED,
                 device: str | None = None, config: str | None = None, progress: bool = True,
                 callback: Progress | None = None) -> PredictReport:
    """Run the predictor once per sample and write panoptic, instance and semantic predictions and uncertainty.

    The three tasks come from the same forward pass (``Prediction`` caches it). Model classes map
    to the dataset's by name (``class_mapping``, case-insensitive); a class the dataset lacks keeps
    the model's name in the detections and is void in the semantic map. A sample whose image cannot
    be read is reported in ``errors`` and left as it was.
    """
    from tqdm import tqdm

    from m2f_core.images import ImageError
    from m2f_core.metrics.model_eval import class_mapping
    from m2f_core.predictor import Predictor

    cats = _start_predict(view, prefix)
    ds = view._dataset if isinstance(view, fo.DatasetView) else view
    classes = ClassIndex(cats)
    predictor = Predictor(weights, device=device, config=config)
    cfg = predictor.config
    mapping = class_mapping(cfg.class_names, None, cats)  # by name only: ids of another dataset mean nothing
    f = fields(prefix)
    report = PredictReport(prefix, str(weights or "builtin"),
                           unmapped_classes=[cfg.class_names[i] for i in np.flatnonzero(mapping < 0)])
    total = len(view)
    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"predict {prefix}", unit="img", disable=None if progress else True)
    try:
        for done, sample in enumerate(view.iter_samples(autosave=True, progress=False), start=1):
            try:
                pred = predictor.predict(sample.filepath)
            except ImageError as e:
                report.errors.append(str(e))
            else:
                for name, value in _prediction_fields(pred, classes, cfg.class_names, mapping, f).items():
                    sample[name] = value
                report.samples += 1
            bar.update(1)
            if callback is not None:
                callback(done, total)
    finally:
        bar.close()
    _finish_predict(ds, report, cats, cfg.name, cfg.class_names, start)
    return report


def predict_view_parallel(group, open_view: Callable[[], fo.Dataset | fo.DatasetView], work: str | Path,
                          weights: str | None = None, prefix: str = PRED, device: str | None = None,
                          config: str | None = None, progress: bool = True) -> PredictReport | None:
    """``predict_view`` split over the processes of a torchrun run (``m2f_core.parallel``).

    Rank 0 opens the view (``open_view()``) and hands every process the samples' ids and images;
    each process predicts its chunks and saves their fields (FiftyOne's JSON) in ``work``, a folder
    every process can write; rank 0 then writes them into the dataset in the view's order. Only rank
    0 touches the dataset. A killed run resumes from ``work`` (same samples, weights and prefix).
    Returns the report on rank 0, None elsewhere.
    """
    from m2f_core import parallel
    from m2f_core.images import ImageError
    from m2f_core.metrics.model_eval import class_mapping
    from m2f_core.predictor import Predictor

    opened: list = []

    def samples() -> tuple[list[str], list[str], list[dict]]:
        view = open_view()
        cats = _start_predict(view, prefix)
        opened.append(view)
        return list(view.values("id")), list(view.values("filepath")), cats

    ids, paths, cats = group.share(samples)
    classes = ClassIndex(cats)
    predictor = group.each(lambda: Predictor(weights, device=parallel.device_for(group, device), config=config))
    cfg = predictor.config
    mapping = class_mapping(cfg.class_names, None, cats)
    f = fields(prefix)

    def one(i: int) -> dict[str, Any]:
        try:
            pred = predictor.predict(paths[i])
        except ImageError as e:
            return {"error": str(e)}
        values = _prediction_fields(pred, classes, cfg.class_names, mapping, f)
        return {"error": None, "fields": {k: v.to_json() if isinstance(v, fo.Label) else v for k, v in values.items()}}

    manifest = {"program": "fiftyone predict", "samples": ids, "images": paths, "prefix": prefix,
                "categories": cats, "weights": parallel.weights_fingerprint(weights), "config": cfg.to_dict()}
    start = time.perf_counter()
    work = Path(work)
    records = parallel.run_items(group, len(ids), one, work=work, manifest=manifest, desc=f"predict {prefix}",
                                 progress=progress)
    report, error = None, None
    if records is not None:
        report = PredictReport(prefix, str(weights or "builtin"),
                               unmapped_classes=[cfg.class_names[i] for i in np.flatnonzero(mapping < 0)])
        try:
            _write_records(opened[0], ids, records, report)
            ds = opened[0]._dataset if isinstance(opened[0], fo.DatasetView) else opened[0]
            _finish_predict(ds, report, cats, cfg.name, cfg.class_names, start)
        except Exception as e:
            error = " ".join(str(e).split()) or type(e).__name__
        else:
            parallel.remove_work(group, work)
    parallel.finish(group, 0, error)
    return report


def _write_records(view: fo.Dataset | fo.DatasetView, ids: list[str], records, report: PredictReport) -> None:
    """Rank 0 writes the gathered fields into the samples, in the order they were handed out."""
    ds = view._dataset if isinstance(view, fo.DatasetView) else view
    expected = zip(ids, records)
    # the loop runs over the samples to their end: the autosave of the last batch happens there
    for sample in ds.select(ids, ordered=True).iter_samples(autosave=True, progress=False):
        sample_id, record = next(expected)
        if sample.id != sample_id:
            raise BridgeError(f"sample {sample_id} was deleted during the run; its predictions are in the work folder")
        if record["error"] is not None:
            report.errors.append(record["error"])
            continue
        for name, value in record["fields"].items():
            sample[name] = fo.Label.from_json(value) if isinstance(value, str) else value
        report.samples += 1


# --------------------------------------------------------------------------------------------
# export


def iter_records(view: fo.Dataset | fo.DatasetView, prefix: str = GT) -> Iterator[tuple[fo.Sample, Sample]]:
    """(FiftyOne sample, our record of its ``prefix`` labels) for every sample of a view."""
    classes = ClassIndex(categories(view))
    for sample in view.iter_samples():
        yield sample, sample_record(sample, classes, prefix)


def label_prefixes(prefix: str) -> list[str]:
    """A label prefix or a preference list of them (``"edited,gt"``), each checked."""
    return [check_prefix(p.strip()) for p in str(prefix).split(",")]


def _labels_of(sample: fo.Sample, prefixes: list[str]) -> str:
    """The first of ``prefixes`` whose panoptic or semantic labels the sample has (else the last)."""
    for p in prefixes:
        f = fields(p)
        if any(sample.has_field(f[k]) and sample[f[k]] is not None for k in ("panoptic", "semantic")):
            return p
    return prefixes[-1]


def export_view(view: fo.Dataset | fo.DatasetView, out: str | Path, prefix: str = GT,
                overwrite: bool = False) -> Path:
    """Write a view's ``prefix`` labels as a corrections folder ``out`` (what ``training.train`` reads).

    Uses the app's exporter (COCO panoptic PNG + JSON, COCO instances as RLE, semantic PNGs, the
    images; atomic at the folder level). A sample with only a semantic map is exported as one segment
    per class. Image file names must be distinct within the view. ``prefix`` may be a preference list,
    ``"edited,gt"``: per sample the first label set it has (the editor's corrections, else the ground truth).
    """
    from app.editing import EditSession
    from app.export import export_corrections

    prefixes = label_prefixes(prefix)
    out = Path(out).expanduser()
    if len(view) == 0:
        raise BridgeError("nothing to export: the view is empty")
    cats = categories(view)
    classes = ClassIndex(cats)
    sessions = []
    for sample in view.iter_samples():
        prefix = _labels_of(sample, prefixes)
        record = sample_record(sample, classes, prefix)
        pan = record.panoptic
        if pan is None and record.semantic is not None:
            pan = semantic_to_panoptic(record.semantic, classes)
        if pan is None:
            raise BridgeError(f"sample {sample.id} ({Path(sample.filepath).name}) has no {prefix}_panoptic or "
                              f"{prefix}_semantic labels to export")
        sessions.append((Path(sample.filepath), EditSession.from_panoptic(pan, cats)))
    return export_corrections(sessions, cats, out.parent, out.name, overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# the plugin

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "fiftyone_plugin"


def install_plugin(plugins_dir: str | Path | None = None) -> Path:
    """Make FiftyOne find our plugin: a link ``<plugins dir>/m2f-workbench`` -> ``app/fiftyone_plugin``.

    ``plugins_dir`` defaults to FiftyOne's (``FIFTYONE_PLUGINS_DIR``, else ``~/fiftyone/__plugins__``).
    Nothing happens when the link is there already; a different folder of that name is an error.
    """
    root = Path(plugins_dir or fo.config.plugins_dir).expanduser()
    target = root / "m2f-workbench"
    if target.is_symlink() or target.exists():
        if target.resolve() == PLUGIN_DIR:
            return target
        raise BridgeError(f"{target} exists and is not a link to {PLUGIN_DIR}: remove it or pass another "
                          "plugins dir")
    root.mkdir(parents=True, exist_ok=True)
    target.symlink_to(PLUGIN_DIR, target_is_directory=True)
    return target
