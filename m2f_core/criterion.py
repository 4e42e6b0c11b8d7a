"""Mask2Former training losses: Hungarian matching, then class CE + point-sampled mask BCE and dice.

Facts from the official ``mask2former/modeling/criterion.py`` (and ``maskformer_model.py`` for the
weights):

* classification: cross-entropy over all queries, unmatched ones labelled "no object" (index K),
  whose class weight is ``eos_coef`` (0.1) so that the ~90 empty queries do not swamp the rest;
* masks, on matched pairs only: ``num_points`` points per mask chosen by importance sampling
  (oversample, keep the most uncertain ``-|logit|`` fraction, random rest) without gradient, then
  sigmoid BCE (mean over points) and dice, each summed over masks and divided by ``num_masks``;
* ``num_masks`` = targets in the batch, averaged over distributed workers, at least 1;
* deep supervision: the same losses, with their own matching, on every ``aux_outputs`` entry,
  named with the suffix ``_0`` .. ``_{n-1}``.

``SetCriterion.forward`` returns the *unweighted* terms; ``weighted_losses`` / ``weighted_total``
apply ``weight_dict`` (terms absent from it are dropped, as in the official model). Random points
are drawn with ``torch.rand`` in the official order, so seeded runs match the official code and
``transformers``' ``Mask2FormerLoss``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import Mask2FormerConfig
from .matcher import HungarianMatcher
from .point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    sample_binary_masks,
)

Indices = list[tuple[torch.Tensor, torch.Tensor]]


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """BCE of mask logits (M, P) against point labels (M, P): mean over points, sum over masks / num_masks."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss (+1 smoothed) of mask logits (M, P) against point labels (M, P), summed / num_masks."""
    probs = inputs.sigmoid().flatten(1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


class SetCriterion(nn.Module):
    """Matching + losses of one batch; ``forward`` returns unweighted terms keyed like the official code."""

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float = 0.1,
        losses: Sequence[str] = ("labels", "masks"),
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
    ):
        super().__init__()
        unknown = sorted(set(losses) - {"labels", "masks"})
        if unknown:
            raise ValueError(f"unknown losses {unknown}; available: 'labels', 'masks'")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        # False skips the aux_outputs entirely (the official code computes them, then drops them)
        self.deep_supervision = deep_supervision
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)  # (K+1,)

    # ---------------------------------------------------------------------------------------------
    # individual losses

    def loss_labels(self, outputs: dict, targets: list[dict[str, torch.Tensor]], indices: Indices,
                    num_masks: float) -> dict[str, torch.Tensor]:
        """Weighted CE over all queries (B, Q); unmatched queries are the no-object class K."""
        logits = outputs["pred_logits"].float()  # (B, Q, K+1)
        batch_idx, src_idx = _src_permutation_idx(indices, logits.device)
        matched_classes = torch.cat([t["labels"].to(logits.device)[j.to(logits.device)]
                                     for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch_idx, src_idx] = matched_classes.long()
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits))
        return {"loss_ce": loss_ce}

    def loss_masks(self, outputs: dict, targets: list[dict[str, torch.Tensor]], indices: Indices,
                   num_masks: float) -> dict[str, torch.Tensor]:
        """BCE and dice on importance-sampled points of the matched (prediction, target) pairs."""
        pred_masks = outputs["pred_masks"]  # (B, Q, h, w)
        device = pred_masks.device
        batch_idx, src_idx = _src_permutation_idx(indices, device)
        if src_idx.numel() == 0:
            # no target in the batch: zero, but still connected to the graph (DDP expects every output used)
            zero = pred_masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        # predictions at 1/4 resolution, targets at input resolution: normalised coordinates need no resizing
        src = pred_masks[batch_idx, src_idx].float()[:, None]  # (M, 1, h, w)
        with torch.no_grad():
            point_coords = get_uncertain_point_coords_with_randomness(
                src, calculate_uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )  # (M, P, 2)
            point_labels = _sample_matched_targets(targets, indices, point_coords)  # (M, P)
        point_logits = point_sample(src, point_coords)[:, 0]  # (M, P)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    # ---------------------------------------------------------------------------------------------

    def get_num_masks(self, targets: list[dict[str, torch.Tensor]], device: torch.device) -> float:
        """Targets per worker: the batch's count averaged over distributed workers, at least 1."""
        num_masks = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
            world_size = dist.get_world_size()
        return torch.clamp(num_masks / world_size, min=1).item()

    def _losses_for(self, outputs: dict, targets: list[dict[str, torch.Tensor]], num_masks: float
                    ) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        out: dict[str, torch.Tensor] = {}
        with torch.autocast(device_type=outputs["pred_masks"].device.type, enabled=False):
            for name in self.losses:
                fn = self.loss_labels if name == "labels" else self.loss_masks
                out.update(fn(outputs, targets, indices, num_masks))
        return out

    def forward(self, outputs: dict, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Unweighted loss terms: ``loss_ce``, ``loss_mask``, ``loss_dice`` and their ``_i`` aux variants.

        outputs: ``Mask2Former.forward``'s dict (``pred_logits`` (B, Q, K+1), ``pred_masks``
        (B, Q, h, w), optional ``aux_outputs`` list of the same); targets: per image ``labels`` int64
        (N,) in [0, K) and ``masks`` (N, H, W) bool/float at the padded input resolution.
        """
        self._check_targets(outputs, targets)
        main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        num_masks = self.get_num_masks(targets, outputs["pred_logits"].device)
        losses = self._losses_for(main, targets, num_masks)
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs") or []):
                losses.update({f"{k}_{i}": v for k, v in self._losses_for(aux, targets, num_masks).items()})
        return losses

    def weighted_losses(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each term times its ``weight_dict`` weight; terms without a weight are dropped (official rule)."""
        return {k: v * self.weight_dict[k] for k, v in losses.items() if k in self.weight_dict}

    def weighted_total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scalar to back-propagate: sum of the weighted terms."""
        weighted = self.weighted_losses(losses)
        if not weighted:
            raise ValueError(f"no loss term has a weight (terms: {sorted(losses)}; "
                             f"weights: {sorted(self.weight_dict)})")
        return torch.stack(list(weighted.values())).sum()

    def _check_targets(self, outputs: dict, targets: list[dict[str, torch.Tensor]]) -> None:
        # a label >= K would silently become "no object" in the class cost, or crash CUDA in the CE
        batch = outputs["pred_logits"].shape[0]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch} images")
        labels = []
        for b, t in enumerate(targets):
            if t["labels"].dim() != 1 or t["masks"].dim() != 3 or t["masks"].shape[0] != t["labels"].shape[0]:
                raise ValueError(f"image {b}: need labels (N,) and masks (N, H, W), got "
                                 f"{tuple(t['labels'].shape)} and {tuple(t['masks'].shape)}")
            if t["labels"].is_floating_point():
                raise ValueError(f"image {b}: labels must be integers, got {t['labels'].dtype}")
            labels.append(t["labels"].reshape(-1).cpu())
        all_labels = torch.cat(labels)
        if all_labels.numel() and (int(all_labels.min()) < 0 or int(all_labels.max()) >= self.num_classes):
            raise ValueError(f"target labels must be in [0, {self.num_classes}), got "
                             f"[{int(all_labels.min())}, {int(all_labels.max())}]")

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
                f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
                f"importance_sample_ratio={self.importance_sample_ratio}, deep_supervision={self.deep_supervision}")


def _src_permutation_idx(indices: Indices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, query index) of every matched prediction, images in order."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
    src_idx = torch.cat([src for src, _ in indices]).to(device)
    return batch_idx, src_idx


def _sample_matched_targets(targets: list[dict[str, torch.Tensor]], indices: Indices,
                            point_coords: torch.Tensor) -> torch.Tensor:
    """float32 labels (M, P) of the matched targets at their points (M, P, 2), images in order.

    Targets of different sizes are zero-padded at the bottom/right to the largest in the batch (the
    official nested-tensor padding), so normalised coordinates refer to the same padded canvas.
    """
    height = max(t["masks"].shape[-2] for t in targets)
    width = max(t["masks"].shape[-1] for t in targets)
    out, start = [], 0
    for t, (_, tgt) in zip(targets, indices):
        if tgt.numel() == 0:
            continue
        masks = t["masks"][tgt.to(t["masks"].device)].to(point_coords.device)  # (n, H_b, W_b), matched only
        if masks.shape[-2:] != (height, width):
            padded = masks.new_zeros((masks.shape[0], height, width))
            padded[:, : masks.shape[-2], : masks.shape[-1]] = masks
            masks = padded
        out.append(sample_binary_masks(masks, point_coords[start : start + len(tgt)]))
        start += len(tgt)
    return torch.cat(out, dim=0)


def build_criterion(config: Mask2FormerConfig) -> SetCriterion:
    """The official criterion of a config: matcher costs = loss weights, aux weights ``_0`` .. ``_{L-2}``."""
    matcher = HungarianMatcher(
        cost_class=config.class_weight,
        cost_mask=config.mask_weight,
        cost_dice=config.dice_weight,
        num_points=config.train_num_points,
    )
    weight_dict = {"loss_ce": config.class_weight, "loss_mask": config.mask_weight, "loss_dice": config.dice_weight}
    if config.deep_supervision:
        base = dict(weight_dict)
        for i in range(config.dec_layers - 1):  # dec_layers counts the learned-query prediction
            weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
    return SetCriterion(
        num_classes=config.num_classes,
        matcher=matcher,
        weight_dict=weight_dict,
        eos_coef=config.no_object_weight,
        losses=("labels", "masks"),
        num_points=config.train_num_points,
        oversample_ratio=config.oversample_ratio,
        importance_sample_ratio=config.importance_sample_ratio,
        deep_supervision=config.deep_supervision,
    )
