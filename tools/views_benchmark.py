"""Task views in the worst case: each view of one prediction vs the dense reference computation, on
three kinds of outputs of a 100-query, 133-class (COCO panoptic R50) model at 512x512.

    .venv/bin/python tools/views_benchmark.py --repeat 5 --json docs/views_benchmark.json

Kinds of outputs:
- ``trained``: shaped like a trained model's (a few confident queries with sharp masks, the rest
  no-object; ``tools.benchmark.trained_like_outputs``);
- ``uniform``: standard normal class and mask logits (every class about as likely, masks half on);
- ``untrained``: the outputs of our R50 network with its random initial weights on a random image
  (near-uniform class probabilities, mask probabilities near 0.5), as a model early in fine-tuning.

Ours: ``Prediction(...).prepare()`` then each view, best of ``--repeat`` on a fresh prediction (the
views cache their result). Dense reference: the official post-processing on the mask logits
upsampled at full size for every query (``tests/reference/postprocess.py``; the upsampling is
included, as ours includes ``prepare``). The labels are checked equal before the times are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from reference.postprocess import (  # noqa: E402
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
)

from m2f_core.config import get_preset  # noqa: E402
from m2f_core.prediction import Prediction  # noqa: E402
from tools.benchmark import trained_like_outputs  # noqa: E402

VIEWS = ("panoptic", "instance", "semantic", "uncertainty")


def outputs(kind: str, config, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred_logits (Q, K+1), pred_masks (Q, size/4, size/4)) of one kind."""
    q, k, s = config.num_queries, config.num_classes, size // 4
    if kind == "trained":
        out = trained_like_outputs(q, k, (s, s), seed=0)
        return out["pred_logits"], out["pred_masks"]
    if kind == "uniform":
        g = torch.Generator().manual_seed(0)
        return torch.randn(q, k + 1, generator=g), torch.randn(q, s, s, generator=g)
    from m2f_core import build_model

    torch.manual_seed(0)
    model = build_model(config).eval()
    image = torch.rand(1, 3, size, size) * 255
    with torch.inference_mode():
        out = model(image)
    return out["pred_logits"][0], out["pred_masks"][0]


def time_ours(logits, masks, config, size: int, repeat: int) -> tuple[dict[str, float], Prediction]:
    image = np.zeros((size, size, 3), np.uint8)
    best = {v: float("inf") for v in ("prepare", *VIEWS)}
    pred = None
    for _ in range(repeat):
        start = time.perf_counter()
        pred = Prediction(image, logits, masks, (size, size), (size, size), config).prepare()
        best["prepare"] = min(best["prepare"], time.perf_counter() - start)
        for view in VIEWS:
            start = time.perf_counter()
            getattr(pred, view)()
            best[view] = min(best[view], time.perf_counter() - start)
    return best, pred


def time_dense(pred: Prediction, config, repeat: int) -> tuple[dict[str, float], dict]:
    is_thing = [bool(t) for t in config.is_thing]
    best = {v: float("inf") for v in ("upsample", *VIEWS)}
    out = {}
    best_cls = pred.class_probs[:, :-1].max(-1).values[:, None, None]
    for _ in range(repeat):
        start = time.perf_counter()
        full = resize_mask_logits(pred.pred_masks, pred.padded_size, pred.input_size, pred.size)  # (Q, H, W)
        best["upsample"] = min(best["upsample"], time.perf_counter() - start)
        steps = {
            "panoptic": lambda full=full: panoptic_inference(pred.pred_logits, full, is_thing),
            "instance": lambda full=full: instance_inference(pred.pred_logits, full, topk=100, thing_only=is_thing),
            "semantic": lambda full=full: semantic_inference(pred.pred_logits, full).argmax(0),
            "uncertainty": lambda full=full: 1 - (full.sigmoid() * best_cls).amax(0),
        }
        for view, step in steps.items():
            start = time.perf_counter()
            out[view] = step()
            best[view] = min(best[view], time.perf_counter() - start)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--kinds", nargs="+", default=["trained", "uniform", "untrained"])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    config = get_preset("coco_panoptic_r50")
    rows = {}
    for kind in args.kinds:
        logits, masks = outputs(kind, config, args.size)
        ours, pred = time_ours(logits, masks, config, args.size, args.repeat)
        dense, ref = time_dense(pred, config, args.repeat)
        assert np.array_equal(pred.semantic().label_map, ref["semantic"].numpy()), kind
        assert np.allclose(pred.uncertainty(), ref["uncertainty"].numpy(), atol=1e-5), kind
        assert np.array_equal(pred.panoptic().segment_map, ref["panoptic"].segment_map), kind
        rows[kind] = {"ours": ours, "dense": dense, "active_queries": len(pred.active_queries)}
    print(f"| outputs ({args.size}x{args.size}, Q={config.num_queries}, K={config.num_classes}) | "
          + " | ".join(f"{v}: ours / dense (ms)" for v in VIEWS) + " |")
    print("|---" * (len(VIEWS) + 1) + "|")
    for kind, row in rows.items():
        cells = []
        for view in VIEWS:
            ours = row["ours"][view] + (row["ours"]["prepare"] if view == "semantic" else 0.0)
            dense = row["dense"][view] + row["dense"]["upsample"]
            cells.append(f"{1000 * ours:.0f} / {1000 * dense:.0f}")
        print(f"| {kind} (active {row['active_queries']}) | " + " | ".join(cells) + " |")
    print("(ours: semantic includes prepare, the shared upsampling; dense: each view includes its upsampling)")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "repeat": args.repeat, "torch_threads":
                                         torch.get_num_threads(), "seconds": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
