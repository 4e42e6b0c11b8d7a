"""The benchmark CLI: argument parsing, the trained-like outputs and one tiny end-to-end run.

No timing is asserted (the machine is shared); the run checks that ours and the peer load the same
weights (outputs equal to fp32 noise) and that every row is reported.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from m2f_core.cli import parse_size
from m2f_core.config import get_preset
from m2f_core.prediction import Prediction
from tools.benchmark import format_table, main, trained_like_outputs


def test_parse_size():
    assert parse_size("512") == (512, 512)
    assert parse_size("800x1088") == (800, 1088)
    for bad in ("abc", "500", "0", "512x-32"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="size must be HxW"):
        parse_size("512", allow_square=False)


def test_trained_like_outputs_look_trained():
    """A few confident queries whose masks tile the image; the rest predict no-object."""
    out = trained_like_outputs(100, 133, (256, 320), seed=1)
    assert out["pred_logits"].shape == (100, 134) and out["pred_masks"].shape == (100, 64, 80)
    probs = out["pred_logits"].softmax(-1)
    objects = probs[:, :-1].max(-1).values > probs[:, -1]
    assert int(objects.sum()) == 20
    covered = (out["pred_masks"][objects] > 0).any(0)
    assert covered.float().mean() > 0.9  # stuff tiles the image, as a trained model's masks do
    config = get_preset("coco_panoptic_r50")
    pred = Prediction(np.zeros((256, 320, 3), np.uint8), out["pred_logits"], out["pred_masks"], (256, 320),
                      (256, 320), config)
    assert len(pred.panoptic().segments) >= 10


@pytest.mark.slow
def test_benchmark_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["--compare", "transformers", "--preset", "synthetic_small", "--sizes", "64",
                 "--tasks", "forward", "postprocess", "switch", "--modes", "bf16", "--threads", "1",
                 "--repeats", "1", "--rounds", "1", "--work-dir", str(tmp_path / "work"), "--json", str(out),
                 "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    rows = {(r["task"], r["impl"]): r for r in report["rows"]}
    assert set(rows) == {("forward", "ours"), ("forward", "ours-bf16"), ("forward", "transformers"),
                         ("postprocess", "ours"), ("postprocess", "transformers"), ("switch", "ours")}
    assert rows["forward", "transformers"]["max_abs_diff"] < 1e-4  # same weights, same outputs
    # the reported differences are those of the saved outputs; bf16 autocast really ran (its outputs
    # differ from fp32 far more than fp32 rounding does) and computes the same function (random weights:
    # measured cosine 0.998-0.999, error about 5 % of the outputs' spread)
    import torch

    saved = {impl: torch.load(tmp_path / "work" / f"synthetic_small-64x64-forward-{impl}-0.pt", weights_only=True)
             for impl in ("ours", "ours-bf16", "transformers")}
    for impl in ("ours-bf16", "transformers"):
        diff = max((saved[impl][k].double() - saved["ours"][k].double()).abs().max().item()
                   for k in ("pred_logits", "pred_masks"))
        assert rows["forward", impl]["max_abs_diff"] == pytest.approx(diff, rel=1e-9, abs=1e-12)
    fp32_noise = max(rows["forward", "transformers"]["max_abs_diff"], 1e-7)
    assert rows["forward", "ours-bf16"]["max_abs_diff"] > 100 * fp32_noise
    for k in ("pred_logits", "pred_masks"):
        fp32, bf16 = saved["ours"][k].double().flatten(), saved["ours-bf16"][k].double().flatten()
        assert torch.nn.functional.cosine_similarity(fp32, bf16, dim=0) > 0.99, k
    # speed-up = the peer's median / ours, from the rows' own medians
    for impl in ("ours", "ours-bf16"):
        assert rows["forward", impl]["speedup"] == pytest.approx(
            rows["forward", "transformers"]["median_s"] / rows["forward", impl]["median_s"])
    assert rows["postprocess", "ours"]["speedup"] == pytest.approx(
        rows["postprocess", "transformers"]["median_s"] / rows["postprocess", "ours"]["median_s"])
    assert "speedup" not in rows["forward", "transformers"] and "speedup" not in rows["switch", "ours"]
    for row in report["rows"]:
        assert 0 < row["min_s"] <= row["median_s"] and row["peak_rss_mb"] > 0
    assert set(rows["forward", "ours"]["stages"]) == {"backbone", "pixel_decoder", "transformer_decoder"}
    assert all(t > 0 for t in rows["forward", "ours"]["stages"].values())
    assert "| synthetic_small | 64x64 | forward | ours |" in capsys.readouterr().out
    assert format_table(report["rows"]).count("\n") == len(report["rows"]) + 1


def test_benchmark_cli_errors(capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "no_such_preset"])
    assert "unknown preset" in capsys.readouterr().err
