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

# Model card (100 validation images): PQ 44.0, PQ_st 96.7, mIoU 49.4. Measured on these 40 fresh
# images: PQ 43.9, PQ_st 96.7, mIoU 48.3. PQ_th is 0.0 (the model misses the tiny things, see the
# card), so it has no floor yet: raise these when a retrained model ships.
FLOORS = {"PQ": 40.0, "PQ_st": 92.0, "mIoU": 44.0}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh")
    generate_dataset(root, 40, seed=20261125, split="val")
    return evaluate_model(Predictor(device="cpu"), synthetic_dataset(root, "val"), progress=False)


def test_builtin_model_panoptic_quality(result):
    pan = result["panoptic"]
    for key in ("PQ", "PQ_st"):
        assert pan[key] >= FLOORS[key], (key, pan)


def test_builtin_model_semantic_quality(result):
    assert result["semantic"]["mIoU"] >= FLOORS["mIoU"], result["semantic"]
