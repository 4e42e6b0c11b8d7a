"""The shipped built-in model still segments synthetic scenes it has never seen.

A fresh validation set (a seed the model was not trained or validated on) is generated and
evaluated with the shipped weights; the floors sit a few points under the numbers of the model
card (``m2f_core/weights/synthetic_small/MODEL_CARD.md``), so a broken loader, a changed
post-processing rule or damaged weights fail here.
"""

from __future__ import annotations

import pytest

from m2f_core import Predictor
from m2f_core.data.synthetic import generate_dataset, synthetic_dataset
from m2f_core.metrics.model_eval import evaluate_model

# Model card (100 validation images): PQ 69.1, PQ_th 45.6, PQ_st 97.3, mask AP 34.1, mIoU 95.1.
# Measured on these 40 fresh images: PQ 70.5, PQ_th 48.8, PQ_st 96.6, AP 38.9, mIoU 93.7.
FLOORS = {"PQ": 65.0, "PQ_th": 40.0, "PQ_st": 93.0, "AP": 30.0, "mIoU": 90.0}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh")
    generate_dataset(root, 40, seed=20261125, split="val")
    return evaluate_model(Predictor(device="cpu"), synthetic_dataset(root, "val"), progress=False)


def test_builtin_model_panoptic_quality(result):
    pan = result["panoptic"]
    for key in ("PQ", "PQ_th", "PQ_st"):
        assert pan[key] >= FLOORS[key], (key, pan)


def test_builtin_model_instance_quality(result):
    assert result["instance"]["AP"] >= FLOORS["AP"], result["instance"]


def test_builtin_model_semantic_quality(result):
    assert result["semantic"]["mIoU"] >= FLOORS["mIoU"], result["semantic"]
