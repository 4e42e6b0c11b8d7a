"""Speed of the metric engines on one evaluation set, side by side in one run: ours (the project's
``pq_compute`` / ``mask_ap_compute`` / ``sem_seg_compute``, which use hotcoco's engine), our pure-Python
reference implementation (the test oracle), hotcoco called directly, and pycocotools' COCOeval for mask AP.

    .venv/bin/python tools/metrics_benchmark.py --images 1000 --size 480x640 --json docs/metrics_benchmark.json

The set is written once to ``--work`` (default: a temporary folder): COCO panoptic ground truth of random
overlapping things on stuff bands (27 categories), predictions made from it by the errors a model makes
(shifted and eroded masks, swapped classes, missed and invented segments), the same pairs as COCO instance
JSON + RLE results and as semantic label PNGs. Every engine's numbers are checked equal to 1e-9 before the
times are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from m2f_core.metrics import id_to_rgb  # noqa: E402

THINGS = 20  # category ids 1..20 are things, 21..27 stuff
STUFF = 7


def categories() -> list[dict]:
    return ([{"id": i, "name": f"thing{i}", "isthing": 1} for i in range(1, THINGS + 1)]
            + [{"id": THINGS + i, "name": f"stuff{i}", "isthing": 0} for i in range(1, STUFF + 1)])


def _scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[dict]]:
    """A GT segment map: 2-4 stuff bands, then 3-15 things (ellipses and boxes), 1 in 20 crowd."""
    seg = np.zeros((h, w), np.int32)
    segments = []
    cuts = np.sort(rng.integers(h // 6, h, size=int(rng.integers(1, 4))))
    top = 0
    for k, bottom in enumerate([*cuts, h]):
        sid = len(segments) + 1
        seg[top:bottom] = sid
        segments.append({"id": sid, "category_id": THINGS + 1 + (k + int(rng.integers(STUFF))) % STUFF, "iscrowd": 0})
        top = bottom
    for _ in range(int(rng.integers(3, 16))):
        sid = len(segments) + 1
        mask = np.zeros((h, w), np.uint8)
        cx, cy = int(rng.integers(w)), int(rng.integers(h))
        ax, ay = int(rng.integers(8, w // 5)), int(rng.integers(8, h // 4))
        if rng.random() < 0.5:
            cv2.ellipse(mask, (cx, cy), (ax, ay), float(rng.integers(180)), 0, 360, 1, -1)
        else:
            cv2.rectangle(mask, (cx - ax, cy - ay), (cx + ax, cy + ay), 1, -1)
        seg[mask > 0] = sid
        segments.append({"id": sid, "category_id": int(rng.integers(1, THINGS + 1)),
                         "iscrowd": int(rng.random() < 0.05)})
    seg[rng.random((h, w)) < 0.002] = 0  # a little VOID
    present = set(np.unique(seg).tolist())
    return seg, [s for s in segments if s["id"] in present]


def _predict(rng: np.random.Generator, gt: np.ndarray, segments: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """What a model gets wrong: shifted / eroded masks, swapped classes, misses, invented segments."""
    h, w = gt.shape
    pred = np.zeros_like(gt)
    out = []
    for s in segments:
        mask = (gt == s["id"]).astype(np.uint8)
        r = rng.random()
        if r < 0.1:
            continue  # missed
        if r < 0.4:
            mask = np.roll(mask, (int(rng.integers(-15, 16)), int(rng.integers(-15, 16))), axis=(0, 1))
        elif r < 0.6:
            mask = cv2.erode(mask, np.ones((5, 5), np.uint8), iterations=int(rng.integers(1, 4)))
        category = s["category_id"]
        if rng.random() < 0.08:  # wrong class of the same kind
            thing = category <= THINGS
            category = int(rng.integers(1, THINGS + 1)) if thing else THINGS + int(rng.integers(1, STUFF + 1))
        sid = len(out) + 1
        pred[mask > 0] = sid
        out.append({"id": sid, "category_id": category, "score": float(rng.random())})
    for _ in range(int(rng.integers(0, 3))):  # invented
        sid = len(out) + 1
        x, y = int(rng.integers(w - 40)), int(rng.integers(h - 40))
        pred[y:y + int(rng.integers(10, 40)), x:x + int(rng.integers(10, 40))] = sid
        out.append({"id": sid, "category_id": int(rng.integers(1, THINGS + 1)), "score": float(rng.random())})
    present = set(np.unique(pred).tolist())
    return pred, [s for s in out if s["id"] in present]


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def write_set(root: Path, n: int, h: int, w: int, seed: int = 0) -> dict:
    """Write the evaluation set under ``root``; returns the paths."""
    rng = np.random.default_rng(seed)
    for sub in ("gt_pan", "pred_pan", "gt_sem", "pred_sem"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cats = categories()
    images, gt_anns, pred_anns, inst_gt, inst_res = [], [], [], [], []
    for i in range(n):
        gt, gt_segs = _scene(rng, h, w)
        pred, pred_segs = _predict(rng, gt, gt_segs)
        name = f"{i:06d}.png"
        cv2.imwrite(str(root / "gt_pan" / name), id_to_rgb(gt)[..., ::-1])
        cv2.imwrite(str(root / "pred_pan" / name), id_to_rgb(pred)[..., ::-1])
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "height": h, "width": w})
        gt_anns.append({"image_id": i, "file_name": name, "segments_info": [
            {**s, "area": int((gt == s["id"]).sum())} for s in gt_segs]})
        pred_anns.append({"image_id": i, "file_name": name,
                          "segments_info": [{"id": s["id"], "category_id": s["category_id"]} for s in pred_segs]})
        # semantic: class index = category id - 1, 255 = void / crowd
        lut_gt = np.full(gt.max() + 1, 255, np.uint8)
        for s in gt_segs:
            lut_gt[s["id"]] = 255 if s["iscrowd"] else s["category_id"] - 1
        lut_pred = np.zeros(pred.max() + 1, np.uint8)  # an argmax: void becomes class 0
        for s in pred_segs:
            lut_pred[s["id"]] = s["category_id"] - 1
        cv2.imwrite(str(root / "gt_sem" / name), lut_gt[gt])
        cv2.imwrite(str(root / "pred_sem" / name), lut_pred[pred])
        for s in gt_segs:
            if s["category_id"] <= THINGS:
                m = gt == s["id"]
                inst_gt.append({"id": len(inst_gt) + 1, "image_id": i, "category_id": s["category_id"],
                                "segmentation": _rle(m), "area": float(m.sum()), "iscrowd": s["iscrowd"]})
        for s in pred_segs:
            if s["category_id"] <= THINGS:
                inst_res.append({"image_id": i, "category_id": s["category_id"], "segmentation": _rle(pred == s["id"]),
                                 "score": s["score"]})
    paths = {"gt_json": root / "gt_pan.json", "pred_json": root / "pred_pan.json",
             "inst_gt": root / "instances.json", "inst_res": root / "results.json"}
    paths["gt_json"].write_text(json.dumps({"images": images, "annotations": gt_anns, "categories": cats}))
    paths["pred_json"].write_text(json.dumps({"images": images, "annotations": pred_anns, "categories": cats}))
    paths["inst_gt"].write_text(json.dumps({"images": images, "annotations": inst_gt,
                                            "categories": cats[:THINGS]}))
    paths["inst_res"].write_text(json.dumps(inst_res))
    return {k: str(v) for k, v in paths.items()}


def _timed(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(root: Path, repeat: int) -> dict:
    import hotcoco
    from hotcoco import panoptic as hc_panoptic
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from m2f_core.metrics import mask_ap_compute, pq_compute, sem_seg_compute

    p = {k: root / v for k, v in (("gt_json", "gt_pan.json"), ("pred_json", "pred_pan.json"),
                                   ("inst_gt", "instances.json"), ("inst_res", "results.json"))}
    gt_dir, pred_dir = root / "gt_pan", root / "pred_pan"
    rows = {}

    def pq_ref():
        return pq_compute(p["gt_json"], gt_dir, p["pred_json"], pred_dir, engine="reference")

    def pq_ours():
        return pq_compute(p["gt_json"], gt_dir, p["pred_json"], pred_dir)

    def pq_hotcoco():
        return hc_panoptic.pq_compute(str(p["gt_json"]), str(p["pred_json"]), str(gt_dir), str(pred_dir))

    t_ref, r_ref = _timed(pq_ref, 1)
    t_ours, r_ours = _timed(pq_ours, repeat)
    t_hc, r_hc = _timed(pq_hotcoco, repeat)
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert abs(r_ours[key] - r_ref[key]) < 1e-9, (key, r_ours[key], r_ref[key])
    assert abs(r_ours["PQ"] - 100 * r_hc["All"]["pq"]) < 1e-9
    rows["PQ"] = {"ours": t_ours, "reference (pure Python)": t_ref, "hotcoco": t_hc, "value": r_ours["PQ"]}

    def ap_ours():
        return mask_ap_compute(p["inst_gt"], p["inst_res"])

    def ap_ref():
        return mask_ap_compute(p["inst_gt"], p["inst_res"], engine="pycocotools")

    def ap_pycocotools():
        gt = COCO(str(p["inst_gt"]))
        ev = COCOeval(gt, gt.loadRes(str(p["inst_res"])), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return ev.stats

    def ap_hotcoco():
        gt = hotcoco.COCO(str(p["inst_gt"]))
        ev = hotcoco.COCOeval(gt, gt.load_res(str(p["inst_res"])), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return ev.stats

    t_ours, r_ours = _timed(ap_ours, repeat)
    t_ref, r_ref = _timed(ap_ref, 1)
    t_pc, s_pc = _timed(ap_pycocotools, 1)
    t_hc, s_hc = _timed(ap_hotcoco, repeat)
    for key, a, b in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), s_pc[:6], s_hc[:6]):
        assert abs(a - b) < 1e-9, (key, a, b)
        if a >= 0:
            assert abs(r_ours[key] - 100 * a) < 1e-9 and abs(r_ref[key] - 100 * a) < 1e-9, key
    rows["mask AP"] = {"ours": t_ours, "reference (pure Python)": t_ref, "pycocotools": t_pc, "hotcoco": t_hc,
                       "value": r_ours["AP"]}

    def miou(engine):
        return lambda: sem_seg_compute(root / "gt_sem", root / "pred_sem", THINGS + STUFF, engine=engine)

    def miou_hotcoco():
        from hotcoco.semantic import SemanticEval

        ev = SemanticEval(THINGS + STUFF, ignore_index=255)
        ev.update_folders(str(root / "gt_sem"), str(root / "pred_sem"))
        return ev.results()

    t_ours, r_ours = _timed(miou("hotcoco"), repeat)
    t_ref, r_ref = _timed(miou("reference"), 1)
    t_hc, _ = _timed(miou_hotcoco, repeat)
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert abs(r_ours[key] - r_ref[key]) < 1e-9, key
    rows["mIoU"] = {"ours": t_ours, "reference (pure Python)": t_ref, "hotcoco": t_hc, "value": r_ours["mIoU"]}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", default="480x640", help="HxW")
    ap.add_argument("--work", type=Path, default=None, help="folder for the set (kept; reused when it exists)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the fast engines")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    h, w = (int(x) for x in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        if not (root / "results.json").is_file():
            t0 = time.perf_counter()
            write_set(root, args.images, h, w)
            print(f"wrote {args.images} pairs of {w}x{h} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows = run(root, args.repeat)
    engines = ["ours", "reference (pure Python)", "pycocotools", "hotcoco"]
    print(f"| metric ({args.images} images, {w}x{h}) | " + " | ".join(engines) + " | value |")
    print("|---" * (len(engines) + 2) + "|")
    for metric, row in rows.items():
        cells = [f"{row[e]:.2f} s" if e in row else "-" for e in engines]
        print(f"| {metric} | " + " | ".join(cells) + f" | {row['value']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"images": args.images, "size": [h, w], "seconds": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
