"""Panoptic quality (PQ, SQ, RQ), the algorithm of cocodataset/panopticapi ``panopticapi/evaluation.py``.

Per image (``pq_match_single`` matches and says what each segment counts as; ``pq_compute_single`` adds its
counts):

- segment ids come from the PNG as ``R + 256 G + 256^2 B``; id 0 is VOID;
- a ground-truth (GT) segment and a predicted segment of the **same category** match when
  ``IoU > 0.5`` (0.5 itself does not match), with
  ``IoU = inter / (area_pred + area_gt - inter - overlap(pred, VOID))``: only the predicted pixels on VOID are
  taken out of the union (not those on crowd regions, exactly as panopticapi);
- GT segments with ``iscrowd == 1`` never match; the other unmatched GT segments are false negatives;
- an unmatched prediction is a false positive unless more than half of its pixels lie on VOID plus the crowd
  region of its category (panopticapi keeps one crowd segment per category: the last one listed);
- the GT area is the ``area`` of the segment's JSON entry when present (as panopticapi reads it), else the pixel
  count in the GT map; the predicted area is always counted in the prediction map.

Per category the IoU sum, TP, FP and FN are accumulated over the data set; ``PQ = iou_sum / (TP + FP/2 + FN/2)``,
``SQ = iou_sum / TP`` (0 when TP = 0), ``RQ = TP / (TP + FP/2 + FN/2)``; the means run over the categories with
``TP + FP + FN > 0``, split into things / stuff by the category's ``isthing``.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import MetricInputError

OFFSET = 256 * 256 * 256
VOID = 0

Categories = Mapping[int, Mapping[str, Any]] | Iterable[Mapping[str, Any]]


@dataclass
class PQStatCat:
    """Accumulated statistics of one category: IoU sum of the matches, TP, FP, FN counts."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __iadd__(self, other: PQStatCat) -> PQStatCat:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


class PQStat:
    """Per-category ``PQStatCat`` accumulator; add two with ``+=``."""

    def __init__(self) -> None:
        self.per_cat: defaultdict[int, PQStatCat] = defaultdict(PQStatCat)

    def __getitem__(self, category_id: int) -> PQStatCat:
        return self.per_cat[category_id]

    def __iadd__(self, other: PQStat) -> PQStat:
        for category_id, cat_stat in other.per_cat.items():
            self.per_cat[category_id] += cat_stat
        return self

    def average(self, categories: Categories, isthing: bool | None) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        """Mean PQ/SQ/RQ (fractions) over the evaluated categories (all if ``isthing`` is None).

        Returns ``({"pq", "sq", "rq", "n"}, {category_id: {"pq", "sq", "rq"}})``; a mean over no category and
        the scores of a category with ``TP + FP + FN == 0`` are ``None``.
        """
        pq_sum, sq_sum, rq_sum, n = 0.0, 0.0, 0.0, 0
        per_class: dict[int, dict[str, Any]] = {}
        for category_id, info in as_category_dict(categories).items():
            if isthing is not None and (info["isthing"] == 1) != isthing:
                continue
            s = self.per_cat.get(category_id, PQStatCat())
            if s.tp + s.fp + s.fn == 0:
                per_class[category_id] = {"pq": None, "sq": None, "rq": None}
                continue
            n += 1
            denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
            pq, sq, rq = s.iou / denom, (s.iou / s.tp if s.tp != 0 else 0.0), s.tp / denom
            per_class[category_id] = {"pq": pq, "sq": sq, "rq": rq}
            pq_sum, sq_sum, rq_sum = pq_sum + pq, sq_sum + sq, rq_sum + rq
        if n == 0:
            return {"pq": None, "sq": None, "rq": None, "n": 0}, per_class
        return {"pq": pq_sum / n, "sq": sq_sum / n, "rq": rq_sum / n, "n": n}, per_class


def as_category_dict(categories: Categories) -> dict[int, Mapping[str, Any]]:
    """``{id: category}`` from a COCO ``categories`` list or an id-keyed mapping; each needs ``isthing``."""
    if isinstance(categories, Mapping):
        out = {int(k): v for k, v in categories.items()}
    else:
        out = {}
        for cat in categories:
            if not isinstance(cat, Mapping) or "id" not in cat:
                raise MetricInputError(f"category {cat!r} has no 'id'")
            out[int(cat["id"])] = cat
    for category_id, cat in out.items():
        if not isinstance(cat, Mapping) or "isthing" not in cat:
            raise MetricInputError(f"category {category_id} has no 'isthing' (needed for the things/stuff split)")
    return out


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids ``R + 256 G + 256^2 B`` of an (H, W, 3+) colour array, as int64."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise MetricInputError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_id``: (H, W) ids in [0, 256^3) to an (H, W, 3) uint8 colour array."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256) % 256], axis=-1).astype(np.uint8)


def _check_id_map(ids: np.ndarray, what: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise MetricInputError(f"{what}: expected a 2-D segment-id map, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise MetricInputError(f"{what}: segment-id map must be integer, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
        raise MetricInputError(f"{what}: segment ids must lie in [0, 256^3)")
    return ids.astype(np.uint64)


def _segments_by_id(segments: Iterable[Mapping[str, Any]], what: str) -> dict[int, Mapping[str, Any]]:
    out: dict[int, Mapping[str, Any]] = {}
    for seg in segments:
        if not isinstance(seg, Mapping) or "id" not in seg or "category_id" not in seg:
            raise MetricInputError(f"{what}: segment {seg!r} needs 'id' and 'category_id'")
        out[int(seg["id"])] = seg
    return out


@dataclass
class PQMatch:
    """One image's segment matching (``pq_match_single``): who matched whom, and what each segment counts as.

    ``matches``: ``(gt id, pred id, IoU)`` of the true positives, in panopticapi's order. ``false_negatives`` /
    ``false_positives``: the ids counted as FN / FP. ``crowd``: GT crowd ids (never matched, not counted).
    ``ignored``: unmatched predicted ids not counted as FP (more than half on VOID + the crowd region of their
    category). ``confusions``: ``(gt id, pred id, IoU)`` of a non-crowd GT and a prediction of another category
    with ``IoU > 0.5`` (both are also counted FN / FP: PQ matches within a category only). ``gt_categories`` /
    ``pred_categories``: each id's ``category_id``.
    """

    matches: list[tuple[int, int, float]]
    false_negatives: list[int]
    false_positives: list[int]
    crowd: list[int]
    ignored: list[int]
    confusions: list[tuple[int, int, float]]
    gt_categories: dict[int, int]
    pred_categories: dict[int, int]

    def add_to(self, stat: PQStat) -> PQStat:
        """Add this image's per-category IoU sum, TP, FP and FN to ``stat``."""
        for gt_id, _, iou in self.matches:
            cat_stat = stat[self.gt_categories[gt_id]]
            cat_stat.tp += 1
            cat_stat.iou += iou
        for gt_id in self.false_negatives:
            stat[self.gt_categories[gt_id]].fn += 1
        for pred_id in self.false_positives:
            stat[self.pred_categories[pred_id]].fp += 1
        return stat


def pq_compute_single(
    gt_map: np.ndarray,
    gt_segments: Iterable[Mapping[str, Any]],
    pred_map: np.ndarray,
    pred_segments: Iterable[Mapping[str, Any]],
    categories: Categories,
    stat: PQStat | None = None,
    where: str = "image",
) -> PQStat:
    """Match one image's GT and predicted segments and add the counts to ``stat`` (a new one if None).

    The arguments and errors are those of ``pq_match_single``.
    """
    stat = PQStat() if stat is None else stat
    return pq_match_single(gt_map, gt_segments, pred_map, pred_segments, categories, where=where).add_to(stat)


def pq_match_single(
    gt_map: np.ndarray,
    gt_segments: Iterable[Mapping[str, Any]],
    pred_map: np.ndarray,
    pred_segments: Iterable[Mapping[str, Any]],
    categories: Categories,
    where: str = "image",
) -> PQMatch:
    """Match one image's GT and predicted segments; the matches, with the IoUs, and each segment's outcome.

    ``gt_map``/``pred_map``: (H, W) integer segment-id maps (0 = VOID). ``gt_segments``: dicts with ``id``,
    ``category_id``, optional ``iscrowd`` (default 0) and ``area`` (default: pixels in ``gt_map``).
    ``pred_segments``: dicts with ``id`` and ``category_id``. ``where`` prefixes error messages.
    Raises ``MetricInputError`` like panopticapi: a predicted id in the map but not in the segments or the other
    way around, an unknown predicted category, maps of different sizes.
    """
    cats = as_category_dict(categories)
    gt = _check_id_map(gt_map, f"{where}: ground truth")
    pred = _check_id_map(pred_map, f"{where}: prediction")
    if gt.shape != pred.shape:
        raise MetricInputError(f"{where}: prediction size {pred.shape[::-1]} != ground-truth size {gt.shape[::-1]} "
                               "(W, H)")
    gt_segs = _segments_by_id(gt_segments, f"{where}: ground truth")
    pred_segs = _segments_by_id(pred_segments, f"{where}: prediction")

    # predicted areas + the sanity checks of panopticapi
    pred_area: dict[int, int] = {}
    ids, counts = np.unique(pred, return_counts=True)
    for seg_id, count in zip(ids.tolist(), counts.tolist()):
        if seg_id not in pred_segs:
            if seg_id == VOID:
                continue
            raise MetricInputError(f"{where}: segment id {seg_id} is in the prediction PNG but not in its JSON "
                                   "segments_info")
        pred_area[seg_id] = count
        if int(pred_segs[seg_id]["category_id"]) not in cats:
            raise MetricInputError(f"{where}: predicted segment {seg_id} has unknown category_id "
                                   f"{pred_segs[seg_id]['category_id']}")
    missing = sorted(set(pred_segs) - set(pred_area))
    if missing:
        raise MetricInputError(f"{where}: segment ids {missing} are in the prediction JSON segments_info but not in "
                               "its PNG")

    # intersections of every (gt id, pred id) pair present in the image
    joint_ids, joint_counts = np.unique(gt * np.uint64(OFFSET) + pred, return_counts=True)
    inter: dict[tuple[int, int], int] = {}
    gt_pixels: defaultdict[int, int] = defaultdict(int)
    for joint, count in zip(joint_ids.tolist(), joint_counts.tolist()):
        inter[(joint // OFFSET, joint % OFFSET)] = count
        gt_pixels[joint // OFFSET] += count

    def gt_area(seg_id: int) -> int:
        area = gt_segs[seg_id].get("area")
        return int(area) if area is not None else gt_pixels.get(seg_id, 0)

    def is_crowd(seg: Mapping[str, Any]) -> bool:
        return int(seg.get("iscrowd", 0)) == 1

    out = PQMatch([], [], [], [], [], [], {k: int(s["category_id"]) for k, s in gt_segs.items()},
                  {k: int(s["category_id"]) for k, s in pred_segs.items()})
    # matches: same category, IoU > 0.5 with the prediction's VOID pixels left out of the union
    gt_matched: set[int] = set()
    pred_matched: set[int] = set()
    for (gt_id, pred_id), intersection in inter.items():
        if gt_id not in gt_segs or pred_id not in pred_segs or is_crowd(gt_segs[gt_id]):
            continue
        same_category = out.gt_categories[gt_id] == out.pred_categories[pred_id]
        union = pred_area[pred_id] + gt_area(gt_id) - intersection - inter.get((VOID, pred_id), 0)
        if union <= 0:
            if not same_category:
                continue
            raise MetricInputError(f"{where}: ground-truth segment {gt_id} has an 'area' smaller than its pixels")
        iou = intersection / union
        if iou <= 0.5:
            continue
        if not same_category:
            out.confusions.append((gt_id, pred_id, iou))
            continue
        out.matches.append((gt_id, pred_id, iou))
        gt_matched.add(gt_id)
        pred_matched.add(pred_id)

    # false negatives; crowd segments are not counted, they are remembered per category (the last one wins)
    crowd_by_cat: dict[int, int] = {}
    for gt_id, gt_seg in gt_segs.items():
        if gt_id in gt_matched:
            continue
        if is_crowd(gt_seg):
            crowd_by_cat[int(gt_seg["category_id"])] = gt_id
            out.crowd.append(gt_id)
            continue
        out.false_negatives.append(gt_id)

    # false positives, unless more than half of the prediction lies on VOID + the crowd region of its category
    for pred_id, pred_seg in pred_segs.items():
        if pred_id in pred_matched:
            continue
        category_id = int(pred_seg["category_id"])
        ignored = inter.get((VOID, pred_id), 0)
        if category_id in crowd_by_cat:
            ignored += inter.get((crowd_by_cat[category_id], pred_id), 0)
        if ignored / pred_area[pred_id] > 0.5:
            out.ignored.append(pred_id)
            continue
        out.false_positives.append(pred_id)
    return out


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def pq_results(stat: PQStat, categories: Categories) -> dict[str, Any]:
    """Percent results: ``PQ SQ RQ`` (+ ``_th`` things, ``_st`` stuff), ``n``/``n_th``/``n_st`` (categories
    averaged) and ``per_class`` ``{category_id: {name, PQ, SQ, RQ, tp, fp, fn}}``.

    A mean over no category, and the scores of a category absent from both sides, are ``None``.
    """
    cats = as_category_dict(categories)
    out: dict[str, Any] = {}
    per_class: dict[int, dict[str, Any]] = {}
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        mean, classes = stat.average(cats, isthing)
        out[f"PQ{suffix}"], out[f"SQ{suffix}"], out[f"RQ{suffix}"] = (_percent(mean[k]) for k in ("pq", "sq", "rq"))
        out[f"n{suffix}"] = mean["n"]
        if isthing is None:
            per_class = classes
    out["per_class"] = {
        category_id: {
            "name": cats[category_id].get("name", str(category_id)),
            "isthing": int(cats[category_id]["isthing"]),
            "PQ": _percent(scores["pq"]),
            "SQ": _percent(scores["sq"]),
            "RQ": _percent(scores["rq"]),
            "tp": stat.per_cat.get(category_id, PQStatCat()).tp,
            "fp": stat.per_cat.get(category_id, PQStatCat()).fp,
            "fn": stat.per_cat.get(category_id, PQStatCat()).fn,
        }
        for category_id, scores in per_class.items()
    }
    return out


def load_json(source: str | Path | Mapping[str, Any], what: str) -> tuple[Any, str]:
    """Parse a JSON file (or pass a dict through); returns ``(data, name used in messages)``."""
    if isinstance(source, Mapping):
        return source, f"<{what}>"
    path = Path(source)
    if not path.is_file():
        raise MetricInputError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), str(path)
    except json.JSONDecodeError as e:
        raise MetricInputError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MetricInputError(f"{path}: cannot read {what} ({e})") from None


def _read_id_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise MetricInputError(f"{path}: PNG not found")
    try:
        with Image.open(path) as im:
            rgb = np.array(im, dtype=np.uint32)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise MetricInputError(f"{path}: cannot read image ({e})") from None
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise MetricInputError(f"{path}: not an RGB panoptic PNG (array shape {rgb.shape})")
    return rgb_to_id(rgb)


def _annotations(data: Any, name: str) -> list[Mapping[str, Any]]:
    if not isinstance(data, Mapping) or not isinstance(data.get("annotations"), list):
        raise MetricInputError(f"{name}: not a COCO panoptic JSON (no 'annotations' list)")
    for ann in data["annotations"]:
        if not isinstance(ann, Mapping) or not {"image_id", "file_name", "segments_info"} <= set(ann):
            raise MetricInputError(f"{name}: an annotation lacks 'image_id', 'file_name' or 'segments_info'")
        if not isinstance(ann["segments_info"], list):
            raise MetricInputError(f"{name}: image id {ann['image_id']}: 'segments_info' is not a list")
    return data["annotations"]


ENGINES = ("hotcoco", "reference")


def pq_compute(
    gt_json: str | Path | Mapping[str, Any],
    gt_dir: str | Path | None,
    pred_json: str | Path | Mapping[str, Any],
    pred_dir: str | Path | None,
    progress: bool = False,
    only_predicted: bool = False,
    engine: str = "hotcoco",
) -> dict[str, Any]:
    """PQ of COCO panoptic predictions (JSON + folder of PNGs) against COCO panoptic GT, as ``pq_results``.

    The categories (with ``isthing``) come from the GT JSON; every GT image needs a prediction with the same
    ``image_id``; extra predictions are ignored. ``only_predicted`` evaluates only the GT images that have a
    prediction (an app export of some images of a dataset) and adds ``images``, how many were evaluated.
    A folder left as None is the JSON path without ``.json`` (panopticapi's default). ``progress`` shows a
    tqdm bar on stderr (when it is a terminal; reference engine only).

    ``engine``: ``"hotcoco"`` (default) matches the segments of each image in hotcoco's Rust engine, images in
    parallel, about 10x faster; ``"reference"`` runs ``pq_compute_single`` here, image by image. Both feed the
    same per-category counts to ``pq_results``; the test suite holds them equal to 1e-9. The JSON files are
    checked here for either engine, and a pixel-level error found by hotcoco is re-checked by the reference on
    that image, so the messages are the same.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown PQ engine {engine!r} (known: {', '.join(ENGINES)})")
    gt_data, gt_name = load_json(gt_json, "ground-truth JSON")
    pred_data, pred_name = load_json(pred_json, "prediction JSON")
    gt_anns = _annotations(gt_data, gt_name)
    pred_anns = _annotations(pred_data, pred_name)
    if not isinstance(gt_data.get("categories"), list):
        raise MetricInputError(f"{gt_name}: no 'categories' list")
    try:
        categories = as_category_dict(gt_data["categories"])
    except MetricInputError as e:
        raise MetricInputError(f"{gt_name}: {e}") from None

    folders = []
    for folder, source, what in ((gt_dir, gt_json, "ground-truth"), (pred_dir, pred_json, "prediction")):
        if folder is None:
            if isinstance(source, Mapping):
                raise MetricInputError(f"the {what} PNG folder is needed when the JSON is given as a dict")
            folder = str(source).removesuffix(".json")
        if not Path(folder).is_dir():
            raise MetricInputError(f"{folder}: {what} PNG folder not found")
        folders.append(Path(folder))
    gt_folder, pred_folder = folders

    pred_by_image = {ann["image_id"]: ann for ann in pred_anns}
    pairs = []
    for gt_ann in gt_anns:
        if gt_ann["image_id"] not in pred_by_image:
            if only_predicted:
                continue
            raise MetricInputError(f"{pred_name}: no prediction for the image with id {gt_ann['image_id']} "
                                   "(--only-predicted: evaluate only the images that have one)")
        pairs.append((gt_ann, pred_by_image[gt_ann["image_id"]]))
    if only_predicted and not pairs:
        raise MetricInputError(f"{pred_name}: none of its image ids is in the ground truth {gt_name}")

    if engine == "hotcoco":
        stat = _hotcoco_stat(pairs, gt_data["categories"], gt_folder, pred_folder)
    else:
        stat = _reference_stat(pairs, categories, gt_folder, pred_folder, progress)
    result = pq_results(stat, categories)
    if only_predicted:
        result["images"] = len(pairs)
    return result


Pair = tuple[Mapping[str, Any], Mapping[str, Any]]


def _reference_stat(pairs: list[Pair], categories: dict[int, Mapping[str, Any]], gt_folder: Path,
                    pred_folder: Path, progress: bool = False) -> PQStat:
    """The per-category counts of every pair, matched here image by image (``pq_compute_single``)."""
    from tqdm import tqdm

    stat = PQStat()
    for gt_ann, pred_ann in tqdm(pairs, desc="PQ", unit="img", file=sys.stderr, disable=None if progress else True):
        gt_png, pred_png = gt_folder / gt_ann["file_name"], pred_folder / pred_ann["file_name"]
        gt_map, pred_map = _read_id_png(gt_png), _read_id_png(pred_png)
        if gt_map.shape != pred_map.shape:
            raise MetricInputError(f"{pred_png}: size {pred_map.shape[::-1]} (W, H) differs from the ground truth "
                                   f"{gt_png} {gt_map.shape[::-1]}")
        pq_compute_single(gt_map, gt_ann["segments_info"], pred_map, pred_ann["segments_info"], categories,
                          stat=stat, where=f"{pred_png} (image id {gt_ann['image_id']})")
    return stat


def _hotcoco_stat(pairs: list[Pair], categories: list[Mapping[str, Any]], gt_folder: Path,
                  pred_folder: Path) -> PQStat:
    """The per-category counts of every pair from hotcoco's ``PanopticEval`` (Rust, images in parallel).

    Only the paired annotations are handed over (extra predictions and, with ``only_predicted``, unpredicted
    images are already left out). On an input hotcoco rejects, the reference re-reads the image it names (or
    every pair) to raise the project's message; a message of hotcoco's own is the fallback.
    """
    import contextlib
    import io
    import re

    from hotcoco.panoptic import PanopticEval

    for gt_ann, pred_ann in pairs:  # a missing file: our message, before any work
        for folder, ann, what in ((gt_folder, gt_ann, "ground-truth"), (pred_folder, pred_ann, "prediction")):
            if not (folder / ann["file_name"]).is_file():
                raise MetricInputError(f"{folder / ann['file_name']}: PNG not found ({what} of image id "
                                       f"{ann['image_id']})")
    gt = {"annotations": [g for g, _ in pairs], "categories": list(categories)}
    pred = {"annotations": [p for _, p in pairs]}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = PanopticEval(gt, pred, gt_folder=gt_folder, pred_folder=pred_folder)
            evaluation.evaluate()
            per_class = evaluation.results()["per_class"]
    except (ValueError, OSError) as e:
        named = re.match(r"image (\S+):", str(e))
        suspects = [p for p in pairs if named and str(p[0]["image_id"]) == named.group(1)]
        cats = as_category_dict(categories)
        for subset in (suspects, pairs):
            if subset:
                _reference_stat(subset, cats, gt_folder, pred_folder)  # raises the project's message
        raise MetricInputError(f"{gt_folder}: hotcoco rejected the inputs ({e})") from None
    stat = PQStat()
    for category_id, counts in per_class.items():
        cat = stat[int(category_id)]
        cat.iou, cat.tp, cat.fp, cat.fn = float(counts["iou"]), int(counts["tp"]), int(counts["fp"]), int(counts["fn"])
    return stat
