"""Slow: a tiny Mask2Former overfits a handful of COCO-panoptic images on disk to a high PQ.

Proves that the data pipeline, targets, matcher, criterion, optimiser and post-processing work
together: if any of them were wrong the model could not memorise four scenes.
"""

from __future__ import annotations

import pytest

from m2f_core.config import BackboneConfig, get_preset
from m2f_core.data.synthetic import generate_dataset, synthetic_dataset
from m2f_core.data.train_dataset import TrainingDataset
from m2f_core.metrics.model_eval import evaluate_model
from m2f_core.predictor import Predictor
from training.config import TrainConfig
from training.loop import Trainer


@pytest.mark.slow
def test_tiny_model_overfits_four_images(tmp_path):
    generate_dataset(tmp_path / "data", 4, seed=7, split="train", size=(128, 128))
    data = synthetic_dataset(tmp_path / "data", "train")
    cfg = get_preset("synthetic_small").replace(
        backbone=BackboneConfig(type="swin", embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
                                window_size=4, drop_path_rate=0.0),
        conv_dim=64, mask_dim=64, hidden_dim=64, nheads=4, enc_layers=1, enc_dim_feedforward=128,
        dim_feedforward=128, dec_layers=4, num_queries=20, train_num_points=1024,
        min_size_test=128, max_size_test=128)
    train_cfg = TrainConfig(max_iter=500, batch_size=4, lr=5e-4, backbone_multiplier=1.0, schedule="poly",
                            warmup_iters=20, warmup_factor=0.01, augmentation="none", num_workers=0,
                            checkpoint_period=10_000, log_period=50, clip_norm=0.01)
    train_set = TrainingDataset(data, cfg, task="panoptic", augmentation="none", seed=0)
    trainer = Trainer(cfg, train_cfg, train_set, tmp_path / "run", progress=False)
    trainer.train()
    trainer.model.eval()
    result = evaluate_model(Predictor(trainer.model, device="cpu"), data, progress=False)
    assert result["panoptic"]["PQ"] >= 90, result["panoptic"]
