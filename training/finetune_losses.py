"""The extra loss terms of a few-shot fine-tune, both about not forgetting what the starting model knew.

- ``anchor_loss`` (L2-SP, Li et al. 2018): ``weight * sum((w - w_start)^2)`` over the trained weights.
- ``ReplayDistillation`` (learning without forgetting, Li & Hoiem 2016, applied to the replay images):
  on images of the domain the starting model handled, the model's outputs are pulled towards the
  starting model's, query by query (fine-tuning starts from the same queries, so query ``q`` of both
  is the same slot). Ground-truth replay only asks that the matched queries still find the labelled
  segments; distillation keeps the whole output the same: every query's class distribution, and the
  mask of every query the starting model called an object.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def anchor_loss(model: nn.Module, weight: float):
    """An ``ExtraLoss`` pulling the trainable weights towards their values now (the start of the run)."""
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def loss(model: nn.Module, images: torch.Tensor, outputs: dict, batch: dict) -> torch.Tensor:
        terms = [((p - start[n]) ** 2).sum() for n, p in model.named_parameters() if n in start]
        return weight * torch.stack(terms).sum()
    return loss


class ReplayDistillation:
    """An ``ExtraLoss``: ``weight * (KL(class) + object-weighted KL(mask))`` between the model and a frozen
    copy of its starting weights, on the batch's replay examples (``batch["sources"] == "replay"``)."""

    def __init__(self, model: nn.Module, weight: float) -> None:
        self.teacher = copy.deepcopy(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.weight = float(weight)

    def __call__(self, model: nn.Module, images: torch.Tensor, outputs: dict, batch: dict) -> torch.Tensor:
        rows = [i for i, s in enumerate(batch.get("sources", [])) if s == "replay"]
        if not rows:
            return outputs["pred_logits"].sum() * 0.0  # keeps the graph; no replay image in this batch
        index = torch.tensor(rows, device=images.device)
        with torch.no_grad():
            target = self.teacher(images.index_select(0, index))
        logits = outputs["pred_logits"].index_select(0, index)  # (R,Q,K+1)
        masks = outputs["pred_masks"].index_select(0, index)  # (R,Q,h,w)
        t_prob = target["pred_logits"].softmax(-1)
        class_term = F.kl_div(logits.log_softmax(-1), t_prob, reduction="none").sum(-1).mean()
        # the masks of queries the teacher calls an object count, by how sure it is
        objectness = 1.0 - t_prob[..., -1]  # (R,Q)
        # the Bernoulli KL per pixel: BCE against the teacher's probabilities minus their entropy (0 when equal)
        t_mask = target["pred_masks"]
        p = t_mask.sigmoid()
        kl = (F.binary_cross_entropy_with_logits(masks, p, reduction="none")
              - F.binary_cross_entropy_with_logits(t_mask, p, reduction="none"))
        mask_term = (kl.mean((-2, -1)) * objectness).sum() / objectness.sum().clamp_min(1.0)
        return self.weight * (class_term + mask_term)
