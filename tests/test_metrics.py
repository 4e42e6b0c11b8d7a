"""Metrics: panoptic quality (hand cases + hotcoco on real COCO data), semantic (hand + naive numpy + hotcoco),
instance mask AP (real GT, hand cases, hotcoco COCOeval)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image
from scipy import ndimage

from m2f_core.metrics import (
    MetricInputError,
    PQStat,
    SemSegConfusion,
    id_to_rgb,
    mask_ap_compute,
    pq_compute,
    pq_compute_single,
    pq_results,
    rgb_to_id,
    sem_seg_compute,
)

# these tests read the real photos of ../shared/data/real (test use only); skip without them
pytestmark = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared real data not found at {SHARED_DATA}")
PAN = SHARED_DATA / "coco_panoptic_panopticapi" / "sample_data"
PAN_JSON = PAN / "panoptic_examples.json"
PAN_PNG = PAN / "panoptic_examples" / "000000142238.png"
VOC = SHARED_DATA / "voc_labelme" / "examples" / "instance_segmentation"
ADE = SHARED_DATA / "ade20k_sceneparsing150" / "sampleData" / "annotations"

CATS = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 10, "name": "sky", "isthing": 0},
    {"id": 11, "name": "grass", "isthing": 0},
]


def seg(seg_id: int, category_id: int, iscrowd: int = 0) -> dict:
    return {"id": seg_id, "category_id": category_id, "iscrowd": iscrowd}


def pq_one(gt_map, gt_segs, pred_map, pred_segs, cats=CATS) -> dict:
    return pq_results(pq_compute_single(np.array(gt_map), gt_segs, np.array(pred_map), pred_segs, cats), cats)


# ----------------------------------------------------------------------------------------------------------------
# panoptic quality: hand-computed cases


def test_pq_perfect_match():
    gt = np.zeros((4, 4), int)
    gt[:, :2], gt[:, 2:] = 1, 2  # person (8 px) | sky (8 px)
    r = pq_one(gt, [seg(1, 1), seg(2, 10)], gt, [seg(1, 1), seg(2, 10)])
    assert (r["PQ"], r["SQ"], r["RQ"], r["PQ_th"], r["PQ_st"]) == (100.0, 100.0, 100.0, 100.0, 100.0)
    assert (r["n"], r["n_th"], r["n_st"]) == (2, 1, 1)
    assert r["per_class"][1] == {"name": "person", "isthing": 1, "PQ": 100.0, "SQ": 100.0, "RQ": 100.0,
                                 "tp": 1, "fp": 0, "fn": 0}
    # car and grass appear on neither side: not evaluated, not in the means
    assert r["per_class"][2]["PQ"] is None and r["per_class"][11]["tp"] == 0


def test_pq_false_negative():
    gt = np.zeros((4, 4), int)
    gt[:, :2], gt[:, 2:] = 1, 2  # two persons
    pred = np.zeros((4, 4), int)
    pred[:, :2] = 1  # only the first, exactly; the second person is left VOID in the prediction
    r = pq_one(gt, [seg(1, 1), seg(2, 1)], pred, [seg(1, 1)])
    # person: tp=1 (iou 1.0), fn=1 -> PQ = 1 / (1 + 0.5) = 2/3, SQ = 1, RQ = 2/3
    assert r["per_class"][1]["tp"] == 1 and r["per_class"][1]["fn"] == 1 and r["per_class"][1]["fp"] == 0
    assert r["PQ"] == pytest.approx(100 * 2 / 3) and r["SQ"] == 100.0 and r["RQ"] == pytest.approx(100 * 2 / 3)
    assert r["PQ_st"] is None and r["n_st"] == 0  # no stuff category evaluated


def test_pq_false_positive_and_things_stuff_split():
    gt = np.zeros((10, 10), int)
    gt[:5], gt[5:] = 1, 2  # person rows 0-4 (50 px), sky rows 5-9 (50 px)
    pred = np.zeros((10, 10), int)
    pred[:5], pred[5:7], pred[7:] = 1, 3, 2  # person exact, car rows 5-6 (20 px) on sky, sky rows 7-9 (30 px)
    r = pq_one(gt, [seg(1, 1), seg(2, 10)], pred, [seg(1, 1), seg(2, 10), seg(3, 2)])
    # person: iou 1 -> PQ 100.  sky: inter 30, union 30 + 50 - 30 = 50 -> iou 0.6 > 0.5 -> PQ = SQ = 60, RQ = 100
    # car: unmatched, none of it on VOID/crowd -> fp=1 -> PQ = SQ = RQ = 0
    assert r["per_class"][2] == {"name": "car", "isthing": 1, "PQ": 0.0, "SQ": 0.0, "RQ": 0.0, "tp": 0, "fp": 1,
                                 "fn": 0}
    assert r["per_class"][10]["SQ"] == pytest.approx(60.0) and r["per_class"][10]["RQ"] == 100.0
    assert r["PQ"] == pytest.approx((100 + 60 + 0) / 3)  # 53.33
    assert r["SQ"] == pytest.approx((100 + 60 + 0) / 3)
    assert r["RQ"] == pytest.approx((100 + 100 + 0) / 3)  # 66.67
    assert (r["PQ_th"], r["SQ_th"], r["RQ_th"]) == (50.0, 50.0, 50.0)  # (person 100 + car 0) / 2
    assert r["PQ_st"] == pytest.approx(60.0) and r["RQ_st"] == 100.0 and (r["n_th"], r["n_st"]) == (2, 1)


@pytest.mark.parametrize("person_cols, matched", [(50, False), (51, True)])
def test_pq_iou_threshold_is_strictly_above_half(person_cols, matched):
    gt = np.zeros((1, 200), int)
    gt[0, :100], gt[0, 100:] = 1, 2  # person 100 px, sky 100 px
    pred = np.full((1, 200), 2)
    pred[0, :person_cols] = 1
    r = pq_one(gt, [seg(1, 1), seg(2, 10)], pred, [seg(1, 1), seg(2, 10)])
    person = r["per_class"][1]
    if matched:  # inter 51, union 51 + 100 - 51 = 100 -> iou 0.51 -> PQ = SQ = 51
        assert (person["tp"], person["fp"], person["fn"]) == (1, 0, 0)
        assert person["PQ"] == pytest.approx(51.0)
    else:  # inter 50, union 100 -> iou exactly 0.5: no match -> fn=1 and fp=1 (the prediction lies on person GT)
        assert (person["tp"], person["fp"], person["fn"]) == (0, 1, 1) and person["PQ"] == 0.0
    # sky: inter 100, union = (200 - cols) + 100 - 100 -> iou 100 / 150 resp. 100 / 149
    assert r["per_class"][10]["SQ"] == pytest.approx(100 * 100 / (200 - person_cols))


def test_pq_crowd_region():
    gt = np.zeros((10, 10), int)
    gt[:5], gt[5:] = 5, 2  # crowd person region rows 0-4 (50 px, iscrowd=1), sky rows 5-9 (50 px)
    gt_segs = [seg(5, 1, iscrowd=1), seg(2, 10)]
    pred = np.zeros((10, 10), int)
    pred[:3] = 1  # person: 30 px on the crowd ...
    pred[5] = 1  # ... + 10 px on sky -> 30 / 40 = 0.75 on its crowd region -> ignored, not an FP
    pred[3:5] = 2  # sky: rows 3-4 (20 px on the crowd) + rows 6-9 (40 px)
    pred[6:] = 2
    r = pq_one(gt, gt_segs, pred, [seg(1, 1), seg(2, 10)])
    # person: the crowd segment is never a FN, the prediction is not a FP -> not evaluated
    assert (r["per_class"][1]["tp"], r["per_class"][1]["fp"], r["per_class"][1]["fn"]) == (0, 0, 0)
    assert r["PQ_th"] is None
    # sky: inter 40, union 60 + 50 - 40 = 70 (crowd pixels are NOT taken out of the union, as panopticapi)
    assert r["per_class"][10]["SQ"] == pytest.approx(100 * 40 / 70) and r["PQ"] == pytest.approx(100 * 40 / 70)

    # the same pixels predicted as car: the crowd is of another category -> an FP
    r = pq_one(gt, gt_segs, pred, [seg(1, 2), seg(2, 10)])
    assert (r["per_class"][2]["fp"], r["per_class"][2]["PQ"]) == (1, 0.0)


def test_pq_void_pixels():
    gt = np.zeros((10, 10), int)
    gt[4:] = 1  # rows 0-3 VOID (40 px), person rows 4-9 (60 px)
    pred = np.zeros((10, 10), int)
    pred[2:] = 1  # person rows 2-9 (80 px): 20 px on VOID
    pred[:2] = 2  # car rows 0-1 (20 px): all on VOID
    r = pq_one(gt, [seg(1, 1)], pred, [seg(1, 1), seg(2, 2)])
    # person: inter 60, union = 80 + 60 - 60 - 20 (VOID) = 60 -> iou 1.0 (it would be 0.75 with VOID counted)
    assert r["per_class"][1]["SQ"] == 100.0 and r["per_class"][1]["tp"] == 1
    # car: 20 / 20 on VOID > 0.5 -> ignored
    assert (r["per_class"][2]["fp"], r["per_class"][2]["PQ"]) == (0, None)

    pred = np.zeros((10, 10), int)
    pred[5:] = 1  # person rows 5-9 (50 px): inter 50, union 50 + 60 - 50 = 60 -> iou 5/6
    pred[3:5] = 2  # car rows 3-4: 10 px VOID + 10 px person -> exactly half -> still an FP
    r = pq_one(gt, [seg(1, 1)], pred, [seg(1, 1), seg(2, 2)])
    assert r["per_class"][1]["SQ"] == pytest.approx(100 * 5 / 6)
    assert r["per_class"][2]["fp"] == 1
    assert r["PQ_th"] == pytest.approx((100 * 5 / 6 + 0) / 2)


def test_pq_gt_area_from_json_and_accumulation():
    gt = np.zeros((4, 4), int)
    gt[:, :2], gt[:, 2:] = 1, 2
    pred = np.zeros((4, 4), int)
    pred[:, :2] = 1
    # panopticapi reads the GT area from the JSON: area 10 instead of 8 -> union 8 + 10 - 8 = 10 -> iou 0.8
    r = pq_one(gt, [{**seg(1, 1), "area": 10}], pred, [seg(1, 1)])
    assert r["per_class"][1]["SQ"] == pytest.approx(80.0)
    # two images accumulate per category: image A tp=1 fn=1 (iou 1), image B fp=1 -> PQ = 1 / (1 + 1) = 50
    stat = PQStat()
    pq_compute_single(gt, [seg(1, 1), seg(2, 1)], pred, [seg(1, 1)], CATS, stat=stat)
    other = pq_compute_single(np.zeros((4, 4), int), [], pred, [seg(1, 1)], CATS)
    stat += other
    assert (stat[1].tp, stat[1].fp, stat[1].fn) == (1, 0, 1)  # image B's prediction lies on VOID: not an FP
    other = pq_compute_single(np.full((4, 4), 3), [seg(3, 10)], pred, [seg(1, 1)], CATS)  # now on sky GT
    stat += other
    assert (stat[1].tp, stat[1].fp, stat[1].fn) == (1, 1, 1)
    assert pq_results(stat, CATS)["per_class"][1]["PQ"] == pytest.approx(50.0)


def test_pq_single_errors():
    gt = np.ones((4, 4), int)
    good = [seg(1, 1)]
    with pytest.raises(MetricInputError, match="unknown category_id 99"):
        pq_compute_single(gt, good, gt, [seg(1, 99)], CATS)
    with pytest.raises(MetricInputError, match="in the prediction PNG but not in its JSON"):
        pq_compute_single(gt, good, gt * 7, [seg(1, 1)], CATS)
    with pytest.raises(MetricInputError, match=r"\[8\] are in the prediction JSON segments_info but not in its PNG"):
        pq_compute_single(gt, good, gt, [seg(1, 1), seg(8, 1)], CATS)
    with pytest.raises(MetricInputError, match="size"):
        pq_compute_single(gt, good, np.ones((4, 5), int), good, CATS)
    with pytest.raises(MetricInputError, match="isthing"):
        pq_compute_single(gt, good, gt, good, [{"id": 1, "name": "person"}])
    assert issubclass(MetricInputError, ValueError)


def test_rgb_id_round_trip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 256**3 - 1, 1234567]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and tuple(rgb[0, 3]) == (0, 1, 0)  # 256 = G 1
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)


# ----------------------------------------------------------------------------------------------------------------
# panoptic quality on real COCO data, against hotcoco's panopticapi-compatible pq_compute


def _pan_gt() -> tuple[dict, np.ndarray]:
    return json.loads(PAN_JSON.read_text()), rgb_to_id(np.array(Image.open(PAN_PNG)))


def _perturbations(ids: np.ndarray, segs: list[dict]) -> list[tuple[np.ndarray, list[dict]]]:
    """Predictions made from the GT: (id map, segments_info) pairs, each a different kind of error."""
    rng = np.random.default_rng(0)
    by_cat = {s["id"]: s["category_id"] for s in segs}
    crowd = next(s["id"] for s in segs if s["iscrowd"])
    persons = [s["id"] for s in segs if s["category_id"] == 1 and not s["iscrowd"]]
    out = [(ids.copy(), None)]  # identical (the crowd predicted as a person segment: ignored, not an FP)
    m = ids.copy()
    m[np.isin(m, persons[:3])] = 0  # three persons dropped
    out.append((m, None))
    m = np.zeros_like(ids)  # every segment eroded by 4 px (boundaries -> VOID)
    for s in segs:
        m[ndimage.binary_erosion(ids == s["id"], iterations=4)] = s["id"]
    out.append((m, None))
    for shift in (6, 25):  # the whole map shifted right
        m = np.zeros_like(ids)
        m[:, shift:] = ids[:, :-shift]
        out.append((m, None))
    relabel = {persons[0]: 2, 2330219: 187}  # a person as bicycle, a stuff as another stuff
    out.append((ids.copy(), [{**s, "category_id": relabel.get(s["id"], s["category_id"])} for s in segs]))
    m = ids.copy()
    m[np.isin(m, persons[3:5])] = persons[3]  # two persons merged
    out.append((m, None))
    m = ids.copy()
    ys, xs = np.nonzero(ids == crowd)
    y0, x0 = ys.min(), xs.min()
    new = [{"id": 9000 + k, "category_id": c, "iscrowd": 0} for k, c in enumerate((1, 1, 3))]
    for k, s in enumerate(new):  # boxes in the crowd box: persons (ignored where on the crowd) and a car (FP)
        box = (slice(y0 + 30 * k, y0 + 30 * k + 25), slice(x0 + 40 * k, x0 + 40 * k + 60))
        m[box] = np.where(m[box] == crowd, s["id"], m[box])
    out.append((m, [*segs, *new]))
    m = ids.copy()
    noise = rng.random(ids.shape) < 0.3  # salt noise of VOID over a third of the pixels
    m[noise] = 0
    out.append((m, None))
    m = ids.copy()  # grown persons: each dilated by 5 px over its neighbours
    for p in persons[::2]:
        m[ndimage.binary_dilation(ids == p, iterations=5)] = p
    out.append((m, None))
    result = []
    for m, s in out:
        present = set(np.unique(m).tolist())
        info = [dict(x) for x in (s or segs) if x["id"] in present]
        for x in info:
            x["category_id"] = x.get("category_id", by_cat.get(x["id"]))
        result.append((m, info))
    return result


@pytest.fixture(scope="module")
def panoptic_case(tmp_path_factory) -> dict:
    """A GT of N copies of the real image (one per perturbation), predictions and both folders."""
    root = tmp_path_factory.mktemp("pan")
    gt, ids = _pan_gt()
    ann = gt["annotations"][0]
    (root / "gt").mkdir()
    (root / "pred").mkdir()
    gt_anns, pred_anns, images = [], [], []
    for k, (m, info) in enumerate(_perturbations(ids, ann["segments_info"])):
        name = f"img_{k}.png"
        shutil.copy(PAN_PNG, root / "gt" / name)
        Image.fromarray(id_to_rgb(m)).save(root / "pred" / name)
        images.append({**gt["images"][0], "id": k, "file_name": f"img_{k}.jpg"})
        gt_anns.append({**ann, "image_id": k, "file_name": name})
        pred_anns.append({"image_id": k, "file_name": name, "segments_info": info})
    gt_json = {**gt, "images": images, "annotations": gt_anns}
    pred_json = {"images": images, "annotations": pred_anns, "categories": gt["categories"]}
    (root / "gt.json").write_text(json.dumps(gt_json))
    (root / "pred.json").write_text(json.dumps(pred_json))
    return {"root": root, "gt": gt_json, "pred": pred_json}


def test_pq_matches_hotcoco_on_real_coco(panoptic_case):
    from hotcoco.panoptic import pq_compute as hotcoco_pq

    root = panoptic_case["root"]
    ours = pq_compute(root / "gt.json", root / "gt", root / "pred.json", root / "pred")
    with contextlib.redirect_stdout(io.StringIO()):
        ref = hotcoco_pq(str(root / "gt.json"), str(root / "pred.json"), str(root / "gt"), str(root / "pred"))
    for suffix, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        assert ours[f"n{suffix}"] == ref[group]["n"]
        for metric in ("PQ", "SQ", "RQ"):
            assert ours[f"{metric}{suffix}"] == pytest.approx(100 * ref[group][metric.lower()], abs=1e-9)
    evaluated = 0
    for category_id, r in ref["per_class"].items():
        mine = ours["per_class"][int(category_id)]
        assert (mine["tp"], mine["fp"], mine["fn"]) == (r["tp"], r["fp"], r["fn"])
        if r["pq"] < 0:  # hotcoco: -1 for a category on neither side; ours None
            assert mine["PQ"] is None
            continue
        evaluated += 1
        for metric in ("PQ", "SQ", "RQ"):
            assert mine[metric] == pytest.approx(100 * r[metric.lower()], abs=1e-9)
    # the perturbations exercise every path: errors of several categories, things and stuff
    assert evaluated >= 6 and 40 < ours["PQ"] < 95
    person = ours["per_class"][1]
    assert person["fp"] > 0 and person["fn"] > 0 and person["tp"] > 0


def test_pq_engines_agree(panoptic_case, tmp_path):
    """hotcoco (the default engine) and the reference give the same counts and scores, also with GT areas taken
    from the JSON (not the pixels), unpredicted images skipped and extra predictions ignored."""
    root = panoptic_case["root"]
    gt = copy.deepcopy(panoptic_case["gt"])
    for k, ann in enumerate(gt["annotations"]):
        for s in ann["segments_info"]:
            s["area"] = s["area"] + 7 * k  # panopticapi reads the JSON's area
    pred = copy.deepcopy(panoptic_case["pred"])
    del pred["annotations"][2]
    pred["annotations"].append({**pred["annotations"][0], "image_id": 999})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    args = (tmp_path / "gt.json", root / "gt", tmp_path / "pred.json", root / "pred")
    fast = pq_compute(*args, only_predicted=True)
    ref = pq_compute(*args, only_predicted=True, engine="reference")
    assert fast["images"] == ref["images"] == len(gt["annotations"]) - 1
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "SQ_th", "RQ_st"):
        assert fast[key] == pytest.approx(ref[key], abs=1e-9)
    for category_id, r in ref["per_class"].items():
        f = fast["per_class"][category_id]
        assert (f["tp"], f["fp"], f["fn"]) == (r["tp"], r["fp"], r["fn"])
        assert f["PQ"] == (None if r["PQ"] is None else pytest.approx(r["PQ"], abs=1e-9))
    assert fast["PQ"] != pq_compute(root / "gt.json", root / "gt", root / "pred.json", root / "pred")["PQ"]


def test_pq_real_identity_is_100():
    gt, _ = _pan_gt()
    r = pq_compute(PAN_JSON, PAN / "panoptic_examples", PAN_JSON, PAN / "panoptic_examples")
    # 13 non-crowd persons + 1 baseball glove (37) + 3 stuff; the crowd region is neither FN nor FP
    assert (r["PQ"], r["PQ_th"], r["PQ_st"], r["n"]) == (100.0, 100.0, 100.0, 5)
    assert r["per_class"][1]["tp"] == 13 and r["per_class"][1]["fp"] == 0


def _error(fn, *args) -> str:
    with pytest.raises(MetricInputError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("engine", ["hotcoco", "reference"])
def test_pq_file_errors(panoptic_case, tmp_path, engine):
    root, pred_json = panoptic_case["root"], panoptic_case["pred"]
    args = (root / "gt.json", root / "gt", None, root / "pred")

    def run_with(pred: dict | str, name: str = "p.json", pred_dir: Path | None = None) -> str:
        path = tmp_path / name
        path.write_text(pred if isinstance(pred, str) else json.dumps(pred))
        with pytest.raises(MetricInputError) as e:
            pq_compute(args[0], args[1], path, pred_dir or args[3], engine=engine)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "malformed JSON" in run_with('{"annotations": [', "bad.json") and "bad.json" in run_with("{", "bad.json")
    assert "no 'annotations'" in run_with({"foo": 1})
    pred = copy.deepcopy(pred_json)
    pred["annotations"] = pred["annotations"][1:]
    assert "no prediction for the image with id 0" in run_with(pred)
    pred = copy.deepcopy(pred_json)
    pred["annotations"][0]["segments_info"][0]["category_id"] = 4242
    assert "unknown category_id 4242" in run_with(pred) and "img_0.png" in run_with(pred)
    pred = copy.deepcopy(pred_json)
    pred["annotations"][2]["segments_info"].append({"id": 777, "category_id": 1})
    assert "[777] are in the prediction JSON segments_info but not in its PNG" in run_with(pred)
    pred = copy.deepcopy(pred_json)
    del pred["annotations"][1]["segments_info"][0]
    assert "is in the prediction PNG but not in its JSON" in run_with(pred)
    pred = copy.deepcopy(pred_json)
    pred["annotations"][0]["file_name"] = "missing.png"
    assert "missing.png: PNG not found" in run_with(pred)
    small = tmp_path / "small"
    small.mkdir()
    for k in range(len(pred_json["annotations"])):
        Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(small / f"img_{k}.png")
    msg = run_with(pred_json, pred_dir=small)
    # the reference names the first image; hotcoco (images in parallel) whichever it met first
    assert re.search(r"img_\d\.png: size \(20, 10\)", msg) and "differs from the ground truth" in msg
    gray = tmp_path / "gray"
    shutil.copytree(root / "pred", gray)
    Image.fromarray(np.zeros((427, 640), np.uint8)).save(gray / "img_3.png")
    assert "img_3.png: not an RGB panoptic PNG" in run_with(pred_json, pred_dir=gray)
    assert "folder not found" in _error(pq_compute, args[0], args[1], root / "pred.json", tmp_path / "nope")
    assert "not found" in _error(pq_compute, tmp_path / "nope.json", args[1], root / "pred.json", args[3])


# ----------------------------------------------------------------------------------------------------------------
# semantic segmentation


def test_semseg_hand_case():
    gt = np.array([[0, 0, 1, 1], [0, 2, 255, 255]])  # class 0: 3 px, class 1: 2 px, class 2: 1 px, 2 ignored
    pred = np.array([[0, 1, 1, 1], [0, 3, 3, 0]])  # class 3 is predicted but never in the GT
    conf = SemSegConfusion(4)
    conf.update(pred, gt)
    r = conf.compute(["a", "b", "c", "d"])
    # class 0: tp 2, gt 3, pred 2 (the pred 0 on an ignored pixel does not count) -> IoU 2/3, Acc 2/3
    # class 1: tp 2, gt 2, pred 3 -> IoU 2/3, Acc 1.   class 2: tp 0, gt 1 -> IoU 0, Acc 0
    # class 3: no GT -> None (left out of the means, although it was predicted)
    assert r["per_class"][0] == {"name": "a", "IoU": pytest.approx(200 / 3), "Acc": pytest.approx(200 / 3)}
    assert r["per_class"][1]["IoU"] == pytest.approx(200 / 3) and r["per_class"][1]["Acc"] == 100.0
    assert r["per_class"][2]["IoU"] == 0.0 and r["per_class"][3] == {"name": "d", "IoU": None, "Acc": None}
    assert r["mIoU"] == pytest.approx((200 / 3 + 200 / 3 + 0) / 3)
    assert r["mACC"] == pytest.approx((200 / 3 + 100 + 0) / 3)
    assert r["pACC"] == pytest.approx(100 * 4 / 6)  # 4 correct of 6 non-ignored pixels
    assert r["fwIoU"] == pytest.approx(3 / 6 * 200 / 3 + 2 / 6 * 200 / 3 + 1 / 6 * 0)
    assert r["pixels"] == 6


def test_semseg_predicted_ignore_is_a_miss_and_errors():
    conf = SemSegConfusion(2)
    conf.update(np.array([[0, 255]]), np.array([[0, 1]]))  # no prediction on the class-1 pixel
    r = conf.compute()
    assert r["per_class"][1] == {"name": "1", "IoU": 0.0, "Acc": 0.0} and r["pACC"] == 50.0
    with pytest.raises(MetricInputError, match="ground-truth label 7"):
        conf.update(np.zeros((1, 2), int), np.array([[0, 7]]))
    with pytest.raises(MetricInputError, match="predicted label 2"):
        conf.update(np.array([[0, 2]]), np.zeros((1, 2), int))
    with pytest.raises(MetricInputError, match="shape"):
        conf.update(np.zeros((2, 2), int), np.zeros((1, 2), int))
    assert conf.matrix.sum() == 2  # the rejected pairs added nothing
    assert SemSegConfusion(3).compute()["mIoU"] is None  # nothing seen: undefined, not NaN


def _naive_semseg(pairs: list[tuple[np.ndarray, np.ndarray]], k: int, ignore: int) -> dict:
    """Per-class loops over boolean masks: the definition, written independently of the bincount path."""
    tp, n_gt, n_pred = np.zeros(k), np.zeros(k), np.zeros(k)
    correct = total = 0
    for pred, gt in pairs:
        valid = gt != ignore
        for c in range(k):
            tp[c] += np.sum((pred == c) & (gt == c) & valid)
            n_gt[c] += np.sum((gt == c) & valid)
            n_pred[c] += np.sum((pred == c) & valid)
        correct += np.sum((pred == gt) & valid)
        total += np.sum(valid)
    ious, accs, fw = [], [], 0.0
    for c in range(k):
        if n_gt[c] == 0:
            continue
        iou = tp[c] / (n_gt[c] + n_pred[c] - tp[c])
        ious.append(iou)
        accs.append(tp[c] / n_gt[c])
        fw += n_gt[c] / total * iou
    return {"mIoU": 100 * np.mean(ious), "mACC": 100 * np.mean(accs), "fwIoU": 100 * fw, "pACC": 100 * correct / total}


def _semantic_pairs() -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(pred, gt, num_classes) from real VOC (21 classes, 255 ignored) and ADE20K (150, 0 -> ignored) labels."""
    rng = np.random.default_rng(1)
    out = []
    for path in sorted((VOC / "data_dataset_voc" / "SegmentationClass").glob("*.png")):
        gt = np.array(Image.open(path)).astype(np.int64)
        out.append((gt, 21))
    for path in sorted(ADE.glob("*.png")):
        gt = np.array(Image.open(path)).astype(np.int64)
        out.append((np.where(gt == 0, 255, gt - 1), 150))  # the usual reduce-zero-label rule
    pairs = []
    for gt, k in out:
        pred = np.where(gt == 255, rng.integers(0, k, gt.shape), gt)
        pred = np.roll(pred, 9, axis=1)
        noise = rng.random(gt.shape) < 0.15
        pred[noise] = rng.integers(0, k, int(noise.sum()))
        pairs.append((pred, gt, k))
    return pairs


def test_semseg_matches_naive_and_hotcoco_on_real_labels():
    from hotcoco.semantic import SemanticEval

    pairs = _semantic_pairs()
    for k in (21, 150):
        group = [(p, g) for p, g, kk in pairs if kk == k]
        conf = SemSegConfusion(k, 255)
        ref = SemanticEval(k, ignore_index=255)
        for pred, gt in group:
            conf.update(pred, gt)
            ref.update(gt, pred)
        ours, naive = conf.compute(), _naive_semseg(group, k, 255)
        for key in ("mIoU", "mACC", "fwIoU", "pACC"):
            assert ours[key] == pytest.approx(naive[key], abs=1e-9), key
        # hotcoco (mmseg protocol): same per-class IoU/Acc on classes with GT, same pixel accuracy
        rep = ref.report()
        assert ours["pACC"] == pytest.approx(100 * rep["metrics"]["aAcc"], abs=1e-9)
        compared = 0
        for c in range(k):
            if ours["per_class"][c]["IoU"] is None:
                continue
            compared += 1
            theirs = rep["per_class"][f"class_{c}"]
            assert ours["per_class"][c]["IoU"] == pytest.approx(100 * theirs["IoU"], abs=1e-9)
            assert ours["per_class"][c]["Acc"] == pytest.approx(100 * theirs["Acc"], abs=1e-9)
        assert compared >= 3 and 5 < ours["mIoU"] < 95


def test_semseg_files(tmp_path):
    (tmp_path / "gt" / "sub").mkdir(parents=True)
    (tmp_path / "pred" / "sub").mkdir(parents=True)
    pairs = [(p, g) for p, g, k in _semantic_pairs() if k == 21]
    for i, (pred, gt) in enumerate(pairs):
        Image.fromarray(gt.astype(np.uint8)).save(tmp_path / "gt" / "sub" / f"{i}.png")
        Image.fromarray(pred.astype(np.uint8)).save(tmp_path / "pred" / "sub" / f"{i}.png")
    r = sem_seg_compute(tmp_path / "gt", tmp_path / "pred", 21)
    assert r["images"] == 2 and r["mIoU"] == pytest.approx(_naive_semseg(pairs, 21, 255)["mIoU"], abs=1e-9)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "pred" / "sub" / "1.png")
    msg = _error(sem_seg_compute, tmp_path / "gt", tmp_path / "pred", 21)
    assert "1.png: size (5, 5)" in msg and "differs from the ground truth" in msg
    (tmp_path / "pred" / "sub" / "1.png").unlink()
    assert "1.png: prediction PNG not found" in _error(sem_seg_compute, tmp_path / "gt", tmp_path / "pred", 21)
    (tmp_path / "empty").mkdir()
    assert "no .png" in _error(sem_seg_compute, tmp_path / "empty", tmp_path / "pred", 21)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "pred" / "sub" / "1.png")
    assert "not a single-channel label PNG" in _error(sem_seg_compute, tmp_path / "gt", tmp_path / "pred", 21)
    assert "folder not found" in _error(sem_seg_compute, tmp_path / "nope", tmp_path / "pred", 21)


def test_semseg_engines_agree(tmp_path):
    """hotcoco's engine (default) and the reference count the same matrix; a prediction with "no prediction"
    pixels (255), which hotcoco refuses, is counted by the reference inside the same run."""
    pairs = [(p, g) for p, g, k in _semantic_pairs() if k == 150]
    for i, (pred, gt) in enumerate(pairs * 3):
        pred = pred.copy()
        if i == 1:
            pred[: pred.shape[0] // 3] = 255  # the top third not predicted: misses
        for root, arr in (("gt", gt), ("pred", pred)):
            (tmp_path / root).mkdir(exist_ok=True)
            Image.fromarray(arr.astype(np.uint8)).save(tmp_path / root / f"{i}.png")
    fast = sem_seg_compute(tmp_path / "gt", tmp_path / "pred", 150)
    ref = sem_seg_compute(tmp_path / "gt", tmp_path / "pred", 150, engine="reference")
    assert fast["images"] == ref["images"] == 3 * len(pairs) and fast["pixels"] == ref["pixels"]
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert fast[key] == pytest.approx(ref[key], abs=1e-9), key
    assert fast["per_class"] == ref["per_class"]
    whole = sem_seg_compute(tmp_path / "gt", tmp_path / "gt", 150)
    assert whole["mIoU"] == 100.0 and fast["mIoU"] < whole["mIoU"]


# ----------------------------------------------------------------------------------------------------------------
# instance mask AP


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _instance_gt() -> list[dict]:
    """Real COCO instance GTs: panopticapi's sample (things only, RLE, one crowd) and labelme's VOC (polygons)."""
    coco = json.loads((PAN / "panoptic_coco_detection_format.json").read_text())
    things = {c["id"] for c in json.loads(PAN_JSON.read_text())["categories"] if c["isthing"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] in things]
    coco["categories"] = [c for c in coco["categories"] if c["id"] in things]
    voc = json.loads((VOC / "data_dataset_coco" / "annotations.json").read_text())
    return [coco, voc]


def _gt_masks(gt: dict) -> list[tuple[dict, np.ndarray]]:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
    return [(a, coco.annToMask(a)) for a in gt["annotations"] if not a.get("iscrowd", 0)]


@pytest.mark.parametrize("which", [0, 1])
def test_mask_ap_gt_as_prediction_is_100(which):
    gt = _instance_gt()[which]
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": _rle(m),
                "score": 0.9, "bbox": [0, 0, 1, 1]} for a, m in _gt_masks(gt)]
    r = mask_ap_compute(gt, results)
    assert (r["AP"], r["AP50"], r["AP75"]) == (100.0, 100.0, 100.0) and r["detections"] == len(results)
    by_size = [r[k] for k in ("APs", "APm", "APl") if r[k] is not None]
    assert len(by_size) >= 2 and by_size == pytest.approx([100.0] * len(by_size))
    present = {a["category_id"] for a in gt["annotations"]}
    for category_id, c in r["per_class"].items():
        assert c["AP"] == (pytest.approx(100.0) if category_id in present else None)


def test_mask_ap_empty_and_hand_case():
    gt = _instance_gt()[1]
    r = mask_ap_compute(gt, [])
    assert (r["AP"], r["AP50"], r["APl"]) == (0.0, 0.0, 0.0) and r["per_class"][15]["AP"] == 0.0

    # one GT box 10x10, one prediction covering 62 of its pixels and nothing else: IoU 0.62
    img = {"id": 1, "height": 20, "width": 20, "file_name": "a.jpg"}
    m = np.zeros((20, 20), np.uint8)
    m[5:15, 5:15] = 1
    gt = {"images": [img], "categories": [{"id": 1, "name": "box"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(m), "area": 100.0,
                           "iscrowd": 0, "bbox": [5, 5, 10, 10]}]}
    p = np.zeros_like(m)
    p[5:15, 5:11] = 1  # 60 px
    p[5:7, 11] = 1  # + 2 px = 62
    r = mask_ap_compute(gt, [{"image_id": 1, "category_id": 1, "segmentation": _rle(p), "score": 0.5}])
    # matched at IoU thresholds 0.50, 0.55, 0.60 (3 of the 10) -> AP = 30, AP50 = 100, AP75 = 0; small object
    assert r["AP"] == pytest.approx(30.0) and r["AP50"] == pytest.approx(100.0) and r["AP75"] == 0.0
    assert r["APs"] == pytest.approx(30.0) and r["APm"] is None and r["APl"] is None
    # a higher-scored false positive in front of the match halves the precision: AP50 = 50
    fp = np.zeros_like(m)
    fp[0:3, 0:3] = 1
    r2 = mask_ap_compute(gt, [{"image_id": 1, "category_id": 1, "segmentation": _rle(p), "score": 0.5},
                              {"image_id": 1, "category_id": 1, "segmentation": _rle(fp), "score": 0.9}])
    assert r2["AP50"] == pytest.approx(50.0) and r2["AP"] < r["AP"]


def test_mask_ap_matches_pycocotools_on_perturbed_real_gt():
    """The default engine (hotcoco) equals pycocotools' COCOeval run directly, and our pycocotools engine."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(2)
    for gt in _instance_gt():
        results = []
        for a, m in _gt_masks(gt):
            if rng.random() < 0.2:
                continue  # missed
            k = int(rng.integers(0, 6))
            pm = ndimage.binary_erosion(m, iterations=k) if k else m  # eroded: lower IoU for the small ones
            results.append({"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": _rle(pm),
                            "score": float(rng.random())})
            shifted = np.roll(m, int(rng.integers(5, 40)), axis=1)  # a shifted duplicate, often an FP
            results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                            "segmentation": _rle(shifted), "score": float(rng.random())})
        ours = mask_ap_compute(gt, results)
        reference = mask_ap_compute(gt, results, engine="pycocotools")
        renumbered = copy.deepcopy(gt)  # pycocotools reads a match with GT id 0 (labelme's first) as none
        for i, a in enumerate(renumbered["annotations"]):
            a["id"] = i + 1
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = renumbered
            coco_gt.createIndex()
            ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        for key, ref in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ev.stats[:6]):
            assert ours[key] == (pytest.approx(100 * ref, abs=1e-9) if ref >= 0 else None), key
        assert 10 < ours["AP"] < 95
        for category_id, r in reference["per_class"].items():
            expected = None if r["AP"] is None else pytest.approx(r["AP"], abs=1e-9)
            assert ours["per_class"][category_id]["AP"] == expected


def test_mask_ap_errors(tmp_path):
    gt = _instance_gt()[1]
    good = {"image_id": 0, "category_id": 15, "segmentation": _rle(np.ones((338, 500))), "score": 1.0}
    assert "image_id 99 is not in the ground truth" in _error(mask_ap_compute, gt, [{**good, "image_id": 99}])
    assert "unknown category_id 77" in _error(mask_ap_compute, gt, [{**good, "category_id": 77}])
    assert "RLE dict" in _error(mask_ap_compute, gt, [{**good, "segmentation": [[0, 0, 1, 1, 2, 2]]}])
    assert "lacks one of" in _error(mask_ap_compute, gt, [{"image_id": 0}])
    assert "mask size [3, 3]" in _error(mask_ap_compute, gt, [{**good, "segmentation": _rle(np.ones((3, 3)))}])
    bad = tmp_path / "r.json"
    bad.write_text("[{")
    assert "r.json: malformed JSON" in _error(mask_ap_compute, gt, bad)
    assert "not a COCO instance JSON" in _error(mask_ap_compute, {"images": []}, [])
