"""AdamW with the official parameter groups, warmup + step/poly schedules, full-model clipping."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig

_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.InstanceNorm2d, nn.SyncBatchNorm)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """One group per parameter: backbone lr x ``backbone_multiplier``; no decay on norms and embeddings.

    Embeddings are ``nn.Embedding`` weights; the Swin relative position bias tables and absolute
    position embeddings get no decay either (as in the official ``build_optimizer``; the pixel
    decoder's ``level_embed`` is a plain parameter there and keeps its decay).
    """
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{name}" if module_name else name
            lr, wd = cfg.lr, cfg.weight_decay
            if full.startswith("backbone."):
                lr = lr * cfg.backbone_multiplier
            if "relative_position_bias_table" in name or "absolute_pos_embed" in name:
                wd = 0.0
            if isinstance(module, _NORMS):
                wd = cfg.weight_decay_norm
            if isinstance(module, nn.Embedding):
                wd = cfg.weight_decay_embed
            groups.append({"params": [p], "lr": lr, "weight_decay": wd, "name": full})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(it: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at iteration ``it`` (Detectron2's WarmupMultiStepLR / WarmupPolyLR)."""
    if cfg.schedule == "poly":
        factor = (1.0 - it / cfg.max_iter) ** cfg.poly_power
    else:
        milestones = [int(round(s * cfg.max_iter)) for s in cfg.steps]
        factor = cfg.gamma ** sum(it >= m for m in milestones)
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))


def clip_full_model(model: nn.Module, max_norm: float) -> float:
    """Clip the L2 norm of all gradients together (official CLIP_TYPE "full_model"); returns the norm."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm <= 0:
        return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
