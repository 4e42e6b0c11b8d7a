"""Instance segmentation mask AP through COCOeval(iouType="segm") (hotcoco's, or ``pycocotools``'), as detectron2
runs it.

As in detectron2 ``COCOEvaluator``: a ``bbox`` in a result is dropped before loading, so the small / medium / large
ranges use the mask area (pycocotools would otherwise take the box area); per-class AP is the mean of
``precision[:, :, class, area=all, maxDets=100]`` over its defined entries. pycocotools' prints are swallowed.
An empty result list gives AP 0 for every category that has ground truth (pycocotools would fail to load it).
Ground-truth annotation ids are renumbered 1..N: pycocotools reads a match with GT id 0 as no match.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MetricInputError
from .panoptic import load_json

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _gt_dataset(gt_json: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    data, name = load_json(gt_json, "ground-truth JSON")
    if not isinstance(data, Mapping) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                        "categories")):
        raise MetricInputError(f"{name}: not a COCO instance JSON (needs 'images', 'annotations', 'categories' lists)")
    data = copy.deepcopy(dict(data))
    for key, needed in (("images", ("id",)), ("categories", ("id",)),
                        ("annotations", ("id", "image_id", "category_id", "segmentation"))):
        for item in data[key]:
            if not isinstance(item, Mapping) or not all(k in item for k in needed):
                raise MetricInputError(f"{name}: an entry of '{key}' lacks one of {list(needed)}")
    return data, name


def _results(results: str | Path | Sequence[Mapping[str, Any]], gt: dict[str, Any]) -> tuple[list[dict], str]:
    if isinstance(results, (str, Path)):
        data, name = load_json(results, "results JSON")
    else:
        data, name = results, "<results>"
    if not isinstance(data, list):
        raise MetricInputError(f"{name}: results must be a JSON list of {{image_id, category_id, segmentation, score}}")
    images = {img["id"]: img for img in gt["images"]}
    category_ids = {cat["id"] for cat in gt["categories"]}
    out = []
    for i, res in enumerate(data):
        if not isinstance(res, Mapping) or not {"image_id", "category_id", "segmentation", "score"} <= set(res):
            raise MetricInputError(f"{name}: result {i} lacks one of image_id, category_id, segmentation, score")
        seg = res["segmentation"]
        if not isinstance(seg, Mapping) or "counts" not in seg or "size" not in seg:
            raise MetricInputError(f"{name}: result {i}: segmentation must be an RLE dict with 'size' and 'counts'")
        if res["image_id"] not in images:
            raise MetricInputError(f"{name}: result {i}: image_id {res['image_id']!r} is not in the ground truth")
        if res["category_id"] not in category_ids:
            raise MetricInputError(f"{name}: result {i}: unknown category_id {res['category_id']!r}")
        img = images[res["image_id"]]
        if "height" in img and "width" in img and list(seg["size"]) != [img["height"], img["width"]]:
            raise MetricInputError(f"{name}: result {i}: mask size {list(seg['size'])} (H, W) differs from image "
                                   f"{res['image_id']} ({img['height']}, {img['width']})")
        # a new dict (loadRes writes into it) without bbox: the mask area decides small/medium/large, as detectron2
        out.append({k: v for k, v in res.items() if k != "bbox"})
    return out, name


ENGINES = ("hotcoco", "pycocotools")


def _segmentation_area(ann: Mapping[str, Any], image: Mapping[str, Any] | None) -> float:
    """Pixel area of a GT segmentation (polygons, uncompressed or compressed RLE), as pycocotools' annToRLE."""
    from pycocotools import mask as mask_util

    seg = ann["segmentation"]
    if isinstance(seg, list) or (isinstance(seg, Mapping) and isinstance(seg.get("counts"), list)):
        if image is None or "height" not in image or "width" not in image:
            raise ValueError(f"image {ann['image_id']} has no height/width for its polygon or uncompressed RLE")
        rles = mask_util.frPyObjects(seg, image["height"], image["width"])
        rle = mask_util.merge(rles) if isinstance(rles, list) else rles
    else:
        rle = dict(seg)
        if isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
    return float(mask_util.area(rle))


def _coco(engine: str, dataset: dict[str, Any]) -> Any:
    """A COCO index of ``dataset`` from hotcoco or pycocotools."""
    if engine == "hotcoco":
        import hotcoco

        return hotcoco.COCO(dataset)
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def mask_ap_compute(
    gt_json: str | Path | Mapping[str, Any], results: str | Path | Sequence[Mapping[str, Any]],
    engine: str = "hotcoco",
) -> dict[str, Any]:
    """COCO mask AP in percent: ``AP AP50 AP75 APs APm APl`` and ``per_class`` ``{category_id: {name, AP}}``.

    ``gt_json``: a COCO instance JSON (path or dict; polygons or RLE). ``results``: a list (or JSON file of a
    list) of ``{image_id, category_id, segmentation: RLE, score}``. ``None`` marks an AP with no ground truth.
    ``engine``: ``"hotcoco"`` (default; its COCOeval, a Rust drop-in for pycocotools', many times faster) or
    ``"pycocotools"`` (the reference); the test suite holds them equal to 1e-9.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown AP engine {engine!r} (known: {', '.join(ENGINES)})")
    if engine == "hotcoco":
        from hotcoco import COCOeval
    else:
        from pycocotools.cocoeval import COCOeval

    gt_data, gt_name = _gt_dataset(gt_json)
    dets, _ = _results(results, gt_data)
    images = {img["id"]: img for img in gt_data["images"]}
    # COCOeval marks a match by the GT id, so an id 0 reads as "unmatched": renumber (ids are not reported);
    # it needs iscrowd and area on every GT annotation: fill them as COCO files have them
    for i, ann in enumerate(gt_data["annotations"]):
        ann["id"] = i + 1
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            try:
                ann["area"] = _segmentation_area(ann, images.get(ann["image_id"]))
            except Exception as e:  # pycocotools raises bare errors on a malformed segmentation
                raise MetricInputError(f"{gt_name}: annotation {ann['id']}: bad segmentation ({e})") from None
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco_gt = _coco(engine, gt_data)
            if dets:
                coco_dt = coco_gt.loadRes(dets)
            else:  # pycocotools cannot load an empty list: an empty result set, scored as such
                coco_dt = _coco(engine, {"images": list(gt_data["images"]), "annotations": [],
                                         "categories": copy.deepcopy(gt_data["categories"])})
            coco_eval = COCOeval(coco_gt, coco_dt, iouType="segm")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
            raise MetricInputError(f"{gt_name}: COCOeval failed on these inputs ({type(e).__name__}: {e})") from None

    out: dict[str, Any] = {
        key: (float(100.0 * v) if v >= 0 else None) for key, v in zip(SUMMARY_KEYS, coco_eval.stats[:6])
    }
    precision = np.asarray(coco_eval.eval["precision"])  # (iou thr, recall thr, classes, area ranges, max dets)
    names = {cat["id"]: cat.get("name", str(cat["id"])) for cat in gt_data["categories"]}
    per_class: dict[int, dict[str, Any]] = {}
    for idx, category_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, idx, 0, -1]
        p = p[p > -1]
        per_class[int(category_id)] = {"name": names[category_id], "AP": float(100.0 * np.mean(p)) if p.size else None}
    out["per_class"] = per_class
    out["detections"] = len(dets)
    return out
