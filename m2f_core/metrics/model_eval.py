"""Evaluate a model on a dataset: one forward pass per image, PQ + mask AP + mIoU from it.

The model's classes are mapped to the dataset's by name (then by dataset id); predictions of a
class the dataset does not have are left out of the metrics and counted in ``unmapped_classes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .instance import mask_ap_compute
from .panoptic import PQStat, PQStatCat, pq_compute_single, pq_results
from .semantic import SemSegConfusion


def class_mapping(model_names: list[str], model_ids: list[int] | None, categories: list[dict]) -> np.ndarray:
    """(K_model,) dataset contiguous id of each model class, -1 when the dataset has no such class.

    Names decide; dataset ids are a fallback only when given (a model trained on that dataset's ids).
    """
    by_name = {str(c["name"]).strip().lower(): i for i, c in enumerate(categories)}
    by_id = {int(c["id"]): i for i, c in enumerate(categories)} if model_ids is not None else {}
    model_ids = model_ids if model_ids is not None else [-1] * len(model_names)
    out = np.full(len(model_names), -1, dtype=np.int64)
    for i, (name, did) in enumerate(zip(model_names, model_ids)):
        out[i] = by_name.get(str(name).strip().lower(), by_id.get(int(did), -1))
    return out


def _json_rle(rle: dict) -> dict:
    """A compressed RLE with ``str`` counts (JSON-able; pycocotools reads both forms alike)."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def evaluate_image(predictor, sample, index: int, mapping: np.ndarray, cats: list[dict]) -> dict[str, Any]:
    """One image's statistics as a JSON-able record: its PQ counts per category, its confusion-matrix entries,
    its ground-truth instances and the instance results (dataset class ids).

    Why records, not running totals: the totals are then the same sums in the same order whether one
    process or several (``m2f_core.parallel``) evaluated the images, so the metrics are identical.
    """
    pred = predictor.predict(sample.file_name)
    if pred.size != (sample.height, sample.width):
        raise ValueError(f"{sample.file_name}: image is {pred.size[1]}x{pred.size[0]} but its annotation is "
                         f"{sample.width}x{sample.height}")
    # semantic: the non-zero entries of this image's confusion matrix
    sem = mapping[pred.semantic().label_map]
    confusion = SemSegConfusion(len(cats))
    confusion.update(np.where(sem < 0, 255, sem), sample.semantic_map())
    flat = np.flatnonzero(confusion.matrix)
    record: dict[str, Any] = {"confusion": [flat.tolist(), confusion.matrix.ravel()[flat].tolist()], "pq": None}
    # panoptic
    if sample.panoptic is not None:
        pan = pred.panoptic()
        pred_map = pan.segment_map.copy()
        pred_segments = []
        for s in pan.segments:
            if mapping[s.category_id] < 0:
                pred_map[pred_map == s.id] = 0
            else:
                pred_segments.append({"id": s.id, "category_id": int(mapping[s.category_id])})
        gt_segments = [{"id": s.id, "category_id": s.category_id, "iscrowd": int(getattr(s, "iscrowd", False)),
                        "area": s.area} for s in sample.panoptic.segments]
        stat = pq_compute_single(sample.panoptic.segment_map, gt_segments, pred_map, pred_segments, cats,
                                 where=str(sample.file_name))
        record["pq"] = [[int(c), float(v.iou), int(v.tp), int(v.fp), int(v.fn)] for c, v in stat.per_cat.items()]
    # instances
    record["image"] = {"id": index, "height": int(sample.height), "width": int(sample.width),
                       "file_name": str(sample.file_name)}
    record["annotations"] = [{"image_id": index, "category_id": int(ann.category_id),
                              "segmentation": _json_rle(ann.rle()), "area": int(ann.area),
                              "bbox": [float(v) for v in ann.box()], "iscrowd": int(ann.iscrowd)}
                             for ann in sample.instance_annotations()]
    ins = pred.instance()
    record["results"] = [{"image_id": index, "category_id": int(mapping[label]), "segmentation": _json_rle(rle),
                          "score": float(score)}
                         for rle, label, score in zip(ins.to_rle(), ins.labels, ins.scores) if mapping[label] >= 0]
    return record


def merge_records(records: list[dict[str, Any]], cats: list[dict], unmapped: list[str]) -> dict[str, Any]:
    """PQ, mask AP and semantic metrics of the per-image records (in image order)."""
    pq_stat, confusion = PQStat(), SemSegConfusion(len(cats))
    gt_annotations, results = [], []
    has_panoptic = has_instances = False
    for record in records:
        index, counts = record["confusion"]
        np.add.at(confusion.matrix.reshape(-1), np.asarray(index, dtype=np.int64), np.asarray(counts, dtype=np.int64))
        if record["pq"] is not None:
            has_panoptic = True
            for c, iou, tp, fp, fn in record["pq"]:
                total = pq_stat[c]
                total += PQStatCat(iou, tp, fp, fn)  # in place
        has_instances = has_instances or bool(record["annotations"])
        for ann in record["annotations"]:
            gt_annotations.append({"id": len(gt_annotations) + 1, **ann})
        results.extend(record["results"])
    out: dict[str, Any] = {"images": len(records), "unmapped_classes": unmapped}
    if has_panoptic:
        out["panoptic"] = pq_results(pq_stat, cats)
    if has_instances:
        thing_cats = [c for c in cats if c["isthing"]] or cats
        gt = {"images": [r["image"] for r in records], "annotations": gt_annotations, "categories": thing_cats}
        thing_ids = {c["id"] for c in thing_cats}
        out["instance"] = mask_ap_compute(gt, [r for r in results if r["category_id"] in thing_ids])
    out["semantic"] = confusion.compute(class_names=[c["name"] for c in cats])
    return out


def evaluate_model(predictor, dataset, limit: int | None = None, progress: bool = True, group=None,
                   work: str | Path | None = None, inputs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """PQ (if the dataset is panoptic), mask AP (if it has instances) and semantic metrics.

    ``group`` (``m2f_core.parallel.init()``, under torchrun): the images are split over the processes and
    the result is returned on rank 0 only (None elsewhere); with a ``work`` folder the finished chunks
    are kept there and a re-run with the same ``inputs`` (dataset, weights: the caller's description)
    resumes. Without a group: one process, as always.
    """
    from .. import parallel

    cats = [{"id": i, "name": c["name"], "isthing": int(bool(c.get("isthing", True)))}
            for i, c in enumerate(dataset.categories)]
    cfg = predictor.config
    ids = cfg.dataset_ids if cfg.dataset != "custom" else None  # a custom model's ids mean nothing here
    mapping = class_mapping(cfg.class_names, ids, dataset.categories)
    if (mapping < 0).all():
        raise ValueError(f"none of the model's {len(mapping)} classes exists in the dataset "
                         f"({', '.join(dataset.class_names[:5])}...)")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    group = group or parallel.Group()
    work = Path(work) if work is not None and group.launched else None
    manifest = {"program": "evaluate model", "inputs": inputs or {}, "images": n, "config": cfg.to_dict()}
    records = parallel.run_items(group, n, lambda i: evaluate_image(predictor, dataset[i], i, mapping, cats),
                                 work=work, manifest=manifest, desc="evaluate", progress=progress)
    unmapped = [cfg.class_names[i] for i in np.flatnonzero(mapping < 0)]
    result, error = None, None
    if records is not None:
        try:
            result = merge_records(list(records), cats, unmapped)
        except Exception as e:
            if not group.launched:
                raise
            error = str(e)
        else:
            parallel.remove_work(group, work)
    parallel.finish(group, 0, error)
    return result


# --------------------------------------------------------------------------------------------
# Summaries of a result (what a fine-tune run, the app and the benchmarks compare)

HEADLINE = ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU", "AP")


def headline(result: dict[str, Any] | None) -> dict[str, float | None]:
    """PQ / PQ_th / PQ_st / SQ / RQ / mIoU / AP of an ``evaluate_model`` result (None where not measured)."""
    if not result:
        return {}
    pan, sem, ins = result.get("panoptic", {}), result.get("semantic", {}), result.get("instance", {})
    out = {k: pan.get(k) for k in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ") if k in pan}
    if "mIoU" in sem:
        out["mIoU"] = sem["mIoU"]
    if "AP" in ins:
        out["AP"] = ins["AP"]
    return {k: (round(float(v), 3) if v is not None else None) for k, v in out.items()}


def per_class_pq(result: dict[str, Any] | None) -> dict[str, float | None]:
    """PQ by class name of an ``evaluate_model`` result ({} without panoptic ground truth)."""
    if not result or "panoptic" not in result:
        return {}
    return {str(c["name"]): (round(float(c["PQ"]), 2) if c["PQ"] is not None else None)
            for c in result["panoptic"]["per_class"].values()}


def primary_value(metrics: dict[str, float | None]) -> float | None:
    """The metric a run is selected on: PQ, else mask AP, else mIoU (None when none was measured)."""
    for key in ("PQ", "AP", "mIoU"):
        if metrics.get(key) is not None:
            return float(metrics[key])
    return None
