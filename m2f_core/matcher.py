"""Hungarian matching of Mask2Former's queries to the ground-truth masks of each image.

Each target is assigned to exactly one query (the rest are trained as "no object") by minimising
``cost_class * -p(class) + cost_mask * BCE + cost_dice * dice`` with scipy's
``linear_sum_assignment``. Mask costs are computed on ``num_points`` uniformly random points shared
by all predictions and targets of an image, which is what keeps matching cheap at high resolution.
Facts from the official ``mask2former/modeling/matcher.py``; ``torch.rand`` is drawn once per image
(also for an image without targets) exactly as there, so a seeded run matches the official code and
``transformers``' ``Mask2FormerHungarianMatcher``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .point_sampling import point_sample, sample_binary_masks


def pairwise_sigmoid_ce(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE over points of every prediction (Q, P) against every target (N, P) -> (Q, N).

    BCE(x, t) = softplus(x) - t * x for any t in [0, 1], so the pairwise sums are one softplus pass
    and one matrix product. The official code's BCE against all-ones and all-zeros targets,
    ``pos @ t + neg @ (1 - t)``, is the same sum (softplus(-x) - softplus(x) = -x) in five passes
    over the (Q, P) points, which cost about 5 % of a training step.
    """
    num_points = inputs.shape[1]
    return (F.softplus(inputs).sum(-1, keepdim=True) - inputs @ targets.T) / num_points


def pairwise_dice(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (+1 smoothed) of every prediction (Q, P) logits against every target (N, P) -> (Q, N)."""
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of targets to queries; costs in float32 even under autocast."""

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0: the assignment would be arbitrary")
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def cost_matrix(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, labels: torch.Tensor,
                    masks: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
        """Cost (Q, N) of one image at given points.

        pred_logits (Q, K+1), pred_masks (Q, h, w) logits, labels (N,) int64, masks (N, H, W) binary,
        point_coords (1, P, 2) in [0, 1]. The class cost drops the constant 1 of ``1 - p``.
        """
        with torch.autocast(device_type=pred_logits.device.type, enabled=False):
            prob = pred_logits.float().softmax(-1)  # (Q, K+1)
            cost_class = -prob[:, labels]  # (Q, N)
            coords = point_coords.float()
            out_pts = point_sample(pred_masks.float()[None], coords)[0]  # (Q, P)
            tgt_pts = sample_binary_masks(masks, coords)  # (N, P)
            cost_mask = pairwise_sigmoid_ce(out_pts, tgt_pts)
            cost_dice = pairwise_dice(out_pts, tgt_pts)
            return self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image, (pred_idx, tgt_idx) int64 CPU tensors of length min(Q, N), pred_idx ascending.

        outputs: ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, h, w); targets: per image
        ``labels`` (N,) and ``masks`` (N, H, W) at the padded input resolution.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {pred_logits.shape[0]} images")
        indices = []
        for b, target in enumerate(targets):
            # drawn even when the image has no target, to keep the official random stream
            point_coords = torch.rand(1, self.num_points, 2, device=pred_masks.device)  # (1, P, 2)
            labels = target["labels"].to(pred_logits.device)
            if target["masks"].shape[0] != labels.shape[0]:
                raise ValueError(f"image {b}: {labels.shape[0]} labels but {target['masks'].shape[0]} masks")
            if labels.numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(pred_logits[b], pred_masks[b], labels, target["masks"].to(pred_masks.device),
                                    point_coords).cpu()  # (Q, N)
            if not torch.isfinite(cost).all():
                bad = sorted({int(q) for q in (~torch.isfinite(cost)).nonzero()[:, 0]})
                raise FloatingPointError(
                    f"non-finite matching cost in image {b} for queries {bad[:10]}: the predictions contain "
                    "NaN/inf (training has probably diverged; lower the learning rate or check the inputs)"
                )
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
                f"num_points={self.num_points}")
