"""The few-shot fine-tune's loss terms against forgetting: they vanish at the start, act only where they
should, and pull back towards the starting model."""

from __future__ import annotations

import torch
from model_helpers import small_config

from m2f_core.model import build_model
from training.finetune_losses import ReplayDistillation, anchor_loss


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(small_config("resnet")).train()
    images = torch.randn(3, 3, 64, 64)
    return model, images


def _perturb(model, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def test_distillation_is_zero_at_the_start_and_grows_with_drift():
    model, images = _setup()
    distill = ReplayDistillation(model, weight=1.0)
    batch = {"sources": ["replay", "train", "replay"]}
    at_start = distill(model, images, model(images), batch)
    assert abs(at_start.item()) < 1e-5
    _perturb(model)
    drifted = distill(model, images, model(images), batch)
    assert drifted.item() > 1e-3


def test_distillation_reads_the_replay_images_only():
    model, images = _setup()
    distill = ReplayDistillation(model, weight=1.0)
    _perturb(model)
    batch = {"sources": ["replay", "train", "replay"]}
    loss = distill(model, images, model(images), batch)
    changed = images.clone()
    changed[1] = torch.randn_like(changed[1])  # a training (corrections) image: not distilled
    assert torch.allclose(distill(model, changed, model(changed), batch), loss, atol=1e-6)
    changed[0] = torch.randn_like(changed[0])  # a replay image: distilled
    assert not torch.allclose(distill(model, changed, model(changed), batch), loss, atol=1e-6)
    none = distill(model, images, model(images), {"sources": ["train"] * 3})
    assert none.item() == 0.0 and none.requires_grad


def test_distillation_gradient_pulls_back_towards_the_start():
    model, images = _setup()
    distill = ReplayDistillation(model, weight=1.0)
    _perturb(model)
    batch = {"sources": ["replay"] * 3}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first = None
    for _ in range(5):
        opt.zero_grad()
        loss = distill(model, images, model(images), batch)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert distill(model, images, model(images), batch).item() < 0.8 * first
    assert all(not p.requires_grad for p in distill.teacher.parameters())


def test_anchor_is_the_weighted_squared_distance_to_the_start():
    model, images = _setup()
    term = anchor_loss(model, weight=0.5)
    assert term(model, images, {}, {}).item() == 0.0
    with torch.no_grad():
        p = next(model.parameters())
        p.add_(0.1)
    expected = 0.5 * 0.01 * p.numel()
    assert abs(term(model, images, {}, {}).item() - expected) < 1e-4 * max(1.0, expected)
