"""Magic-wand benchmark: how well one click of ``app.wand`` selects a ground-truth segment, and how fast.

    PYTHONPATH=. .venv/bin/python tools/wand_benchmark.py                       # docs/wand_results.json + figure
    PYTHONPATH=. .venv/bin/python tools/wand_benchmark.py --test-clicks 40 --tune-images 4 --no-speed  # quick

Scenes: fresh synthetic scenes (256x256, JPEG round trip as the dataset files) from a seed and split
names the built-in model never saw (it was trained and validated on seed 0, splits train/val). A
*tuning* set picks each variant's threshold (best median IoU); the *test* set is the first
``--test-clicks`` ground-truth segments (stuff and things, scene by scene), each clicked at its
interior point (the pixel farthest from its border, the image edge counting as border). For each
click: the IoU of the wand region with the clicked segment, per variant and threshold; as a
reference, the IoU of the predicted panoptic segment under the click (what selecting the
prediction gives).

Variants (per-pixel vectors on the 1/4-resolution grid, compared by cosine similarity):
``logits`` the Q mask logits (``Prediction.pred_masks``), ``probs`` their sigmoid, ``tanh`` tanh(logit / 2)
(= 2 sigmoid - 1: "both absent" counts as agreement), ``probs_t2`` sigmoid(logit / 2) (softer),
``active_logits`` / ``active_probs`` those of the prediction's active queries only, ``mask_features``
the pixel decoder's projected mask features (mask_dim channels; the model's own embedding space,
which a Prediction does not keep), ``decoder_features`` the same before the 1x1 projection.

Speed: a synthetic scene resized to 4000x3000, ``wand_click`` and ``crop`` / ``region`` at new
thresholds, on one thread (``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, numpy's BLAS included
    os.environ.setdefault(_var, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.ndimage import distance_transform_edt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.wand import DEFAULT_THRESHOLD, DEFAULT_VARIANT, click_on_features, wand_click  # noqa: E402
from m2f_core import Predictor  # noqa: E402
from m2f_core.data.synthetic import JPEG_QUALITY, generate_scene, scene_rng  # noqa: E402

SEED = 20270517  # not the built-in model's training seed (0) nor tests/test_builtin_model.py's
VARIANTS = ("logits", "probs", "tanh", "probs_t2", "active_logits", "active_probs", "mask_features",
            "decoder_features")
TIE = 0.01  # tuning medians this close count as equal: the simpler variant (earlier in VARIANTS) is chosen
THRESHOLDS = np.round(np.arange(0.30, 0.995, 0.01), 2)


def make_scene(seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray, list]:
    """(image, segment map, segments) of one scene; the image through JPEG as the dataset writes it."""
    image, seg, segments = generate_scene(scene_rng(seed, split, index))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return np.asarray(Image.open(buf).convert("RGB")), seg, segments


@torch.inference_mode()
def pixel_decoder_features(predictor: Predictor, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask_dim, h, w) projected mask features and (conv_dim, h, w) the features before the 1x1
    projection, from the plain model (the Predictor's converted network folds the projection away)."""
    model = predictor.model
    x, _ = predictor.preprocess(image)
    decoder = model.sem_seg_head.pixel_decoder
    pre, _, _ = decoder.forward_features(model.backbone.forward_features(x), project_mask_features=False)
    return decoder.mask_features(pre)[0].float().cpu(), pre[0].float().cpu()


def variant_features(predictor: Predictor, prediction, image: np.ndarray) -> dict[str, torch.Tensor]:
    """Every variant's (C, h, w) vectors for one image."""
    logits = prediction.pred_masks.float()
    projected, pre = pixel_decoder_features(predictor, image)
    active = prediction.active_queries
    return {"logits": logits, "probs": logits.sigmoid(), "tanh": (logits / 2).tanh(),
            "probs_t2": (logits / 2).sigmoid(),
            "active_logits": logits[active], "active_probs": logits[active].sigmoid(),
            "mask_features": projected, "decoder_features": pre}


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel farthest from the segment's border (the image edge counts as border)."""
    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else 0.0


def evaluate_split(predictor: Predictor, seed: int, split: str, max_clicks: int | None, max_images: int | None,
                   thresholds: np.ndarray) -> dict:
    """Clicks of one split: per variant an (N, T) IoU table, plus the reference IoU and thing flags."""
    ious: dict[str, list[np.ndarray]] = {v: [] for v in VARIANTS}
    reference, things, scene_of = [], [], []
    index = 0
    while (max_clicks is None or len(things) < max_clicks) and (max_images is None or index < max_images):
        image, seg, segments = make_scene(seed, split, index)
        prediction = predictor.predict(image)
        features = variant_features(predictor, prediction, image)
        panoptic = prediction.panoptic().segment_map
        for segment in segments:
            if max_clicks is not None and len(things) >= max_clicks:
                break
            gt = seg == segment.id
            x, y = interior_point(gt)
            for variant in VARIANTS:
                click = click_on_features(prediction, features[variant], x, y)
                ious[variant].append(np.array([iou(click.region(t), gt) for t in thresholds]))
            pid = panoptic[y, x]
            reference.append(iou(panoptic == pid, gt) if pid else 0.0)
            things.append(bool(segment.isthing))
            scene_of.append(index)
        index += 1
    return {"ious": {v: np.stack(r) for v, r in ious.items()}, "reference": np.array(reference),
            "things": np.array(things), "scenes": index}


def summary(values: np.ndarray, things: np.ndarray) -> dict:
    """Median and mean IoU over all clicks, things and stuff."""
    out = {}
    for name, sel in (("all", np.ones_like(things)), ("things", things), ("stuff", ~things)):
        v = values[sel]
        out[name] = {"median": round(float(np.median(v)), 4), "mean": round(float(np.mean(v)), 4), "n": int(len(v))}
    return out


def pick_threshold(table: np.ndarray, thresholds: np.ndarray) -> float:
    """The threshold of the best median IoU (ties: the best mean)."""
    medians, means = np.median(table, axis=0), table.mean(axis=0)
    best = max(range(len(thresholds)), key=lambda i: (round(float(medians[i]), 6), float(means[i])))
    return float(thresholds[best])


def speed(predictor: Predictor, seed: int, repeats: int) -> dict:
    """Milliseconds of ``wand_click`` and of ``crop`` / ``region`` at a new threshold on a 4000x3000 photo."""
    image, seg, segments = make_scene(seed, "wand_speed", 0)
    big = np.asarray(Image.fromarray(image).resize((4000, 3000), Image.BILINEAR))
    prediction = predictor.predict(big)
    sy, sx = 3000 / seg.shape[0], 4000 / seg.shape[1]
    out: dict = {"image": "4000x3000", "threads": 1}
    start = time.perf_counter()
    wand_click(prediction, 10, 10)
    out["first_click_ms"] = round((time.perf_counter() - start) * 1e3, 2)  # includes the per-prediction grid
    for kind in ("stuff", "things"):
        segment = max((s for s in segments if s.isthing == (kind == "things")), key=lambda s: s.area)
        x, y = interior_point(seg == segment.id)
        x, y = int((x + 0.5) * sx), int((y + 0.5) * sy)
        clicks, crops, regions, areas = [], [], [], []
        for r in range(repeats):
            t0 = time.perf_counter()
            click = wand_click(prediction, x, y)
            clicks.append(time.perf_counter() - t0)
            for t in np.linspace(DEFAULT_THRESHOLD - 0.1, DEFAULT_THRESHOLD + 0.05, 4):
                t0 = time.perf_counter()
                box, mask = click.crop(float(t) + 1e-4 * r)
                crops.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                region = click.region(float(t) + 1e-4 * r + 1e-5)
                regions.append(time.perf_counter() - t0)
                areas.append(int(region.sum()))
        out[kind] = {"click": [x, y], "wand_click_ms": _ms(clicks), "crop_ms": _ms(crops),
                     "region_ms": _ms(regions), "region_pixels_median": int(np.median(areas))}
    return out


def _ms(seconds: list[float]) -> dict:
    s = np.array(seconds) * 1e3
    return {"median": round(float(np.median(s)), 2), "max": round(float(s.max()), 2)}


def figure(result: dict, test: dict, thresholds: np.ndarray, path: Path) -> None:
    """Median test IoU per threshold for each variant (dot: its tuned threshold), and the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant in VARIANTS:
        med = np.median(test["ious"][variant], axis=0)
        line, = ax.plot(thresholds, med, label=variant)
        t = result["variants"][variant]["threshold"]
        ax.plot([t], [med[np.argmin(np.abs(thresholds - t))]], "o", color=line.get_color())
    ax.axhline(float(np.median(test["reference"])), color="k", ls="--", label="panoptic segment under the click")
    ax.set_xlabel("cosine-similarity threshold")
    ax.set_ylabel("median IoU with the clicked segment (test clicks)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    t = result["default"]["threshold"]
    chosen = test["ious"][result["default"]["variant"]][:, np.argmin(np.abs(thresholds - t))]
    bins = np.linspace(0, 1, 21)
    hx.hist([chosen, test["reference"]], bins=bins,
            label=[f"wand ({result['default']['variant']}, {t:.2f})", "panoptic segment under the click"])
    hx.set_xlabel("IoU with the clicked segment")
    hx.set_ylabel("clicks")
    hx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--test-clicks", type=int, default=200)
    parser.add_argument("--tune-images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="speed: clicks per segment kind")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "wand_results.json")
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "wand_iou.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    start = time.perf_counter()
    predictor = Predictor(device="cpu")
    tune = evaluate_split(predictor, args.seed, "wand_tune", None, args.tune_images, THRESHOLDS)
    test = evaluate_split(predictor, args.seed, "wand_test", args.test_clicks, None, THRESHOLDS)
    result: dict = {"seed": args.seed, "splits": {"tune": {"scenes": tune["scenes"], "clicks": len(tune["things"])},
                                                   "test": {"scenes": test["scenes"], "clicks": len(test["things"])}},
                    "thresholds": THRESHOLDS.tolist(), "variants": {}}
    for variant in VARIANTS:
        t = pick_threshold(tune["ious"][variant], THRESHOLDS)
        column = int(np.argmin(np.abs(THRESHOLDS - t)))
        result["variants"][variant] = {
            "threshold": t, "tune": summary(tune["ious"][variant][:, column], tune["things"]),
            "test": summary(test["ious"][variant][:, column], test["things"]),
            "tune_median_by_threshold": np.round(np.median(tune["ious"][variant], axis=0), 4).tolist(),
            "test_median_by_threshold": np.round(np.median(test["ious"][variant], axis=0), 4).tolist(),
        }
    best = max(VARIANTS, key=lambda v: result["variants"][v]["tune"]["all"]["median"])
    result["best_on_tuning"] = best
    top = result["variants"][best]["tune"]["all"]["median"]
    result["chosen"] = next(v for v in VARIANTS if result["variants"][v]["tune"]["all"]["median"] >= top - TIE)
    result["default"] = {"variant": DEFAULT_VARIANT, "threshold": DEFAULT_THRESHOLD}
    result["reference_panoptic"] = summary(test["reference"], test["things"])
    if not args.no_speed:
        result["speed"] = speed(predictor, args.seed, args.repeats)
    result["seconds"] = round(time.perf_counter() - start, 1)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    figure(result, test, THRESHOLDS, args.figure)
    for variant in VARIANTS:
        r = result["variants"][variant]
        print(f"{variant:17s} t={r['threshold']:.2f}  tune median {r['tune']['all']['median']:.3f}  test median "
              + "  ".join(f"{k} {r['test'][k]['median']:.3f} (mean {r['test'][k]['mean']:.3f})"
                          for k in ("all", "things", "stuff")))
    ref = result["reference_panoptic"]
    print("panoptic reference   test median " + "  ".join(f"{k} {ref[k]['median']:.3f} (mean {ref[k]['mean']:.3f})"
                                                        for k in ("all", "things", "stuff")))
    print(f"best on tuning: {best}; chosen (simplest within {TIE}): {result['chosen']}; "
          f"app.wand default: {DEFAULT_VARIANT} at {DEFAULT_THRESHOLD}")
    if "speed" in result:
        print(json.dumps(result["speed"]))
    print(f"{result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
