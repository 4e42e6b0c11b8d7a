"""Per-sample and dataset PQ / mIoU / mask AP of a prediction set against the ground truth, inside FiftyOne.

- PQ/SQ/RQ: ours (``m2f_core.metrics.panoptic.pq_match_single``, the panopticapi rules), per sample and
  accumulated, run as a FiftyOne evaluation (``panoptic_eval``: eval key ``<pred>_pan``, per-segment
  TP / FP / FN with ids and IoUs, per-class report, saved views); FiftyOne has no panoptic metric of its own.
- mIoU: FiftyOne's ``evaluate_segmentations`` (its pixel confusion matrix) and our
  ``SemSegConfusion`` on the same maps; both are reported and must agree (``miou_agree``).
- mask AP: ``m2f_core.metrics.mask_ap_compute`` (hotcoco's COCOeval; the number we report, also per
  sample), and FiftyOne's ``evaluate_detections(use_masks=True)`` mAP beside it (its own COCO-style
  implementation, close to but not always equal to COCOeval).

Per-sample fields ``<pred>_pq``, ``_sq``, ``_rq``, ``_miou``, ``_ap`` let the App sort by the worst
samples; the FiftyOne evaluations are kept under the keys ``<pred>_pan`` (PQ), ``<pred>_sem`` and
``<pred>_ins`` (its Model Evaluation panel shows them); the summary goes to
``dataset.info["m2f_evaluations"][pred]``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import fiftyone as fo
import numpy as np

from m2f_core.metrics import PQStat, SemSegConfusion, mask_ap_compute, pq_results

from . import GT, PRED, BridgeError, fields
from .convert import ClassIndex, detections_to_instance_result, segmentation_to_semantic
from .core import Progress, categories, check_prefix, sample_record
from .panoptic_eval import evaluate_panoptic, match_sample

__all__ = ["evaluate_view", "fiftyone_confusion_to_ours", "panoptic_key"]

SUMMARY_KEY = "m2f_evaluations"


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _jsonable(obj: Any) -> Any:
    """``dataset.info`` is stored in MongoDB: string keys, plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def fiftyone_confusion_to_ours(matrix: np.ndarray, values: list[int], num_classes: int) -> SemSegConfusion:
    """FiftyOne's pixel confusion matrix (rows ground truth, columns prediction, over mask ``values``
    = class + 1, 0 = void) as our ``SemSegConfusion`` (rows prediction, columns ground truth, the last
    row/column = no prediction / ignored)."""
    conf = SemSegConfusion(num_classes)
    index = [num_classes if v == 0 else int(v) - 1 for v in values]
    m = np.asarray(matrix, dtype=np.int64)
    for gi, g in enumerate(index):
        for pi, p in enumerate(index):
            conf.matrix[p, g] += m[gi, pi]
    return conf


def _instance_gt(record, index: int) -> tuple[dict, list[dict]]:
    """COCO image entry and annotations (contiguous category ids) of one record's instances."""
    image = {"id": index, "height": record.height, "width": record.width}
    anns = []
    for a in record.instance_annotations():
        anns.append({"id": 0, "image_id": index, "category_id": a.category_id, "segmentation": a.rle(),
                     "area": a.area, "bbox": list(a.box()), "iscrowd": int(a.iscrowd)})
    return image, anns


def _instance_results(result, index: int, thing_ids: set[int]) -> list[dict]:
    out = []
    for rle, label, score in zip(result.to_rle(), result.labels, result.scores):
        if int(label) in thing_ids:
            out.append({"image_id": index, "category_id": int(label), "segmentation": rle, "score": float(score)})
    return out


def panoptic_key(pred: str) -> str:
    """The eval key of the PQ run of the ``pred`` predictions."""
    return f"{pred}_pan"


def _delete_eval(ds: fo.Dataset, key: str) -> None:
    if key in ds.list_evaluations():
        ds.delete_evaluation(key)


def evaluate_view(view: fo.Dataset | fo.DatasetView, pred: str = PRED, gt: str = GT, progress: bool = True,
                  callback: Progress | None = None, fiftyone_eval: bool = True, store: bool = True) -> dict[str, Any]:
    """Evaluate ``pred`` labels against ``gt`` on a view; writes per-sample fields and the dataset summary.

    Returns the summary: ``panoptic`` (PQ... as ``pq_results``), ``semantic`` (ours, plus
    ``mIoU_fiftyone`` and ``miou_agree``), ``instance`` (COCO mask AP..., plus ``mAP_fiftyone``).
    ``fiftyone_eval``: PQ is stored as the FiftyOne evaluation ``<pred>_pan`` (per-segment results, saved
    views) and FiftyOne's mIoU and mAP are run beside ours; without it PQ is computed here, the same matcher.
    ``store=False`` leaves ``dataset.info`` alone (a summary of part of a comparison, not the one to show).
    """
    from tqdm import tqdm

    check_prefix(pred)
    check_prefix(gt)
    ds = view._dataset if isinstance(view, fo.DatasetView) else view
    cats = categories(ds)
    classes = ClassIndex(cats)
    k = len(cats)
    fp, fg = fields(pred), fields(gt)
    have = {kind: ds.has_field(fp[kind]) and ds.has_field(fg[kind]) for kind in ("panoptic", "instances", "semantic")}
    if not any(have.values()):
        raise BridgeError(f"nothing to compare: the dataset has no pair of {pred}_* and {gt}_* label fields "
                          f"(run predict first)")
    cat_info = [{"id": i, "name": c["name"], "isthing": int(bool(c.get("isthing", True)))} for i, c in enumerate(cats)]
    thing_cats = [c for c in cat_info if c["isthing"]] or cat_info
    thing_ids = {c["id"] for c in thing_cats}

    for metric in ("pq", "sq", "rq", "miou", "ap"):  # declared: a sample may get None first
        if not ds.has_sample_field(fp[metric]):
            ds.add_sample_field(fp[metric], fo.FloatField)
    pan_results = None
    if fiftyone_eval and have["panoptic"]:
        _delete_eval(ds, panoptic_key(pred))
        pan_results = evaluate_panoptic(view, fp["panoptic"], fg["panoptic"], eval_key=panoptic_key(pred),
                                        categories=cats, progress=False)
    pq_total, conf_total = PQStat(), SemSegConfusion(k)
    gt_images, gt_anns, results = [], [], []
    n_pan = n_sem = n_ins = 0
    total = len(view)
    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"evaluate {pred}", unit="img", disable=None if progress else True)
    try:
        for index, sample in enumerate(view.iter_samples(autosave=True, progress=False)):
            record = sample_record(sample, classes, gt)
            h, w = record.height, record.width
            where = f"sample {sample.id}"
            # panoptic quality (the FiftyOne evaluation wrote it already, else here with the same matcher)
            one = match_sample(sample, fp["panoptic"], fg["panoptic"], classes) \
                if have["panoptic"] and pan_results is None else None
            if one is not None:
                one.match.add_to(pq_total)
                scores = pq_results(one.match.add_to(PQStat()), cat_info)
                sample[fp["pq"]], sample[fp["sq"]], sample[fp["rq"]] = scores["PQ"], scores["SQ"], scores["RQ"]
                n_pan += 1
            elif pan_results is None:
                sample[fp["pq"]], sample[fp["sq"]], sample[fp["rq"]] = None, None, None
            # semantic
            miou = None
            pred_sem = segmentation_to_semantic(sample[fp["semantic"]], k, where) if have["semantic"] else None
            gt_sem = record.semantic if record.semantic is not None else (
                record.semantic_map() if record.panoptic is not None or record.instances is not None else None)
            if pred_sem is not None and gt_sem is not None:
                one_conf = SemSegConfusion(k)
                one_conf.update(pred_sem, gt_sem, where=where)
                conf_total.matrix += one_conf.matrix
                miou = one_conf.compute()["mIoU"]
                n_sem += 1
            sample[fp["miou"]] = miou
            # mask AP (COCOeval), per sample and pooled
            ap = None
            if have["instances"] and sample[fg["instances"]] is not None:
                image, anns = _instance_gt(record, index)
                res = _instance_results(detections_to_instance_result(sample[fp["instances"]], classes, h, w),
                                        index, thing_ids)
                gt_images.append(image)
                gt_anns.extend(anns)
                results.extend(res)
                if any(not a["iscrowd"] for a in anns):
                    one_ap = mask_ap_compute({"images": [image], "annotations": [dict(a) for a in anns],
                                              "categories": thing_cats}, [dict(r) for r in res])
                    ap = one_ap["AP"]
                n_ins += 1
            sample[fp["ap"]] = ap
            bar.update(1)
            if callback is not None:
                callback(index + 1, total)
    finally:
        bar.close()

    summary: dict[str, Any] = {"pred": pred, "gt": gt, "samples": total, "view": _describe(view),
                               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if pan_results is not None:
        n_pan = len(view.exists(fp["panoptic"]).exists(fg["panoptic"]))
        for metric in ("pq", "sq", "rq"):  # the per-sample scores under this module's names too
            view.set_values(fp[metric], view.values(f"{panoptic_key(pred)}_{metric}"))
        summary["panoptic"] = pan_results.pq() | {"fiftyone_eval_key": panoptic_key(pred)}
    elif n_pan:
        summary["panoptic"] = pq_results(pq_total, cat_info)
    if n_pan:
        summary["panoptic"]["images"] = n_pan
    if n_sem:
        summary["semantic"] = conf_total.compute(class_names=[c["name"] for c in cats]) | {"images": n_sem}
    if n_ins:
        summary["instance"] = mask_ap_compute({"images": gt_images, "annotations": gt_anns, "categories": thing_cats},
                                              results) | {"images": n_ins}
    if fiftyone_eval:
        _fiftyone_evaluations(view, ds, summary, pred, gt, cats, have, thing_cats)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    if not store:
        return summary
    info = ds.info
    info.setdefault(SUMMARY_KEY, {})[pred] = _jsonable(summary)
    ds.info = info
    ds.save()
    return summary


def _describe(view) -> str:
    if isinstance(view, fo.Dataset):
        return "whole dataset"
    return f"{len(view)} of {len(view._dataset)} samples"


def _fiftyone_evaluations(view, ds: fo.Dataset, summary: dict, pred: str, gt: str, cats: list[dict],
                          have: dict[str, bool], thing_cats: list[dict]) -> None:
    """FiftyOne's own segmentation and detection evaluations, next to ours in ``summary``."""
    fp, fg = fields(pred), fields(gt)
    k = len(cats)
    if "semantic" in summary:
        key = f"{pred}_sem"
        _delete_eval(ds, key)
        targets = {0: "(void)", **{i + 1: str(c["name"]) for i, c in enumerate(cats)}}
        res = view.evaluate_segmentations(fp["semantic"], gt_field=fg["semantic"], eval_key=key,
                                          mask_targets=targets, progress=False)
        ours = fiftyone_confusion_to_ours(res.pixel_confusion_matrix, sorted(targets), k).compute()
        sem = summary["semantic"]
        sem["mIoU_fiftyone"] = ours["mIoU"]
        sem["fiftyone_eval_key"] = key
        sem["miou_agree"] = (ours["mIoU"] is None and sem["mIoU"] is None) or (
            ours["mIoU"] is not None and sem["mIoU"] is not None and abs(ours["mIoU"] - sem["mIoU"]) < 1e-9)
    if have["instances"] and "instance" in summary:
        key = f"{pred}_ins"
        _delete_eval(ds, key)
        names = [str(c["name"]) for c in thing_cats]
        res = view.evaluate_detections(fp["instances"], gt_field=fg["instances"], eval_key=key, use_masks=True,
                                       compute_mAP=True, classes=names, iscrowd="iscrowd", progress=False)
        value = float(res.mAP())
        summary["instance"]["mAP_fiftyone"] = _finite(100.0 * value) if value >= 0 else None
        summary["instance"]["fiftyone_eval_key"] = key
