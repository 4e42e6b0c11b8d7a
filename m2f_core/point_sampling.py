"""Point sampling of mask logits and binary masks (PointRend), as used by the matcher and the losses.

Mask2Former computes its mask costs and losses on a few thousand points instead of full masks, which
is what makes its training affordable. Coordinates are normalised to [0, 1] x [0, 1] (x first), so
predictions at 1/4 resolution and targets at full resolution are sampled at the same places without
any resizing. Facts from detectron2 ``projects/PointRend/point_rend/point_features.py``; the order
of ``torch.rand`` calls is the official one, so a seeded run draws the same points as the official
code (and as ``transformers``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# elements converted to float at once when sampling binary target masks (64 MiB of float32)
_TARGET_CHUNK_ELEMENTS = 1 << 24


def point_sample(input: torch.Tensor, point_coords: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Bilinear values of ``input`` (N, C, H, W) at ``point_coords`` (N, P, 2) in [0, 1] -> (N, C, P).

    ``point_coords`` may also be (N, Hg, Wg, 2), giving (N, C, Hg, Wg). Points outside the map read
    zeros (grid_sample's default padding), as in the official code.
    """
    squeeze = point_coords.dim() == 3
    if squeeze:
        point_coords = point_coords.unsqueeze(2)  # (N, P, 1, 2)
    out = F.grid_sample(input, 2.0 * point_coords - 1.0, align_corners=align_corners)
    return out.squeeze(3) if squeeze else out


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of class-agnostic mask logits (R, 1, P): -|logit|, highest at the decision boundary."""
    if logits.shape[1] != 1:
        raise ValueError(f"uncertainty expects class-agnostic logits (R, 1, ...), got {tuple(logits.shape)}")
    return -logits.abs()


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_func: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Points (R, num_points, 2) concentrated where ``coarse_logits`` (R, 1, H, W) are uncertain.

    Draws ``int(num_points * oversample_ratio)`` uniform candidates per mask, keeps the
    ``int(importance_sample_ratio * num_points)`` most uncertain ones (uncertainty of the *sampled*
    logit, not of the coarse grid) and fills the rest with fresh uniform points, so the loss sees both
    the boundary and the whole mask.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_boxes = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    candidates = torch.rand(num_boxes, num_sampled, 2, device=coarse_logits.device)  # (R, S, 2)
    uncertainties = uncertainty_func(point_sample(coarse_logits, candidates))  # (R, 1, S)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]  # (R, num_uncertain)
    coords = torch.gather(candidates, 1, idx[:, :, None].expand(-1, -1, 2))  # (R, num_uncertain, 2)
    if num_random > 0:
        extra = torch.rand(num_boxes, num_random, 2, device=coarse_logits.device)
        coords = torch.cat([coords, extra], dim=1)
    return coords


def sample_binary_masks(masks: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
    """float32 values of target masks (N, H, W) (bool / integer / float) at points -> (N, P).

    ``point_coords`` is (N, P, 2) (one set per mask) or (1, P, 2) (shared by all masks). Masks are
    converted to float a chunk at a time, so 100 masks at 1024x1024 never exist as float32 at once;
    the values equal those of converting everything first (each mask is sampled independently).
    """
    n, h, w = masks.shape
    if n == 0:
        return masks.new_zeros((0, point_coords.shape[1]), dtype=torch.float32)
    shared = point_coords.shape[0] == 1
    chunk = max(1, _TARGET_CHUNK_ELEMENTS // max(1, h * w))
    coords = point_coords.float()
    out = []
    for start in range(0, n, chunk):
        part = masks[start : start + chunk].to(torch.float32)  # (n', H, W)
        if shared:
            # masks as channels of one image: (1, n', H, W) at (1, P, 2) -> (n', P)
            out.append(point_sample(part[None], coords)[0])
        else:
            out.append(point_sample(part[:, None], coords[start : start + chunk])[:, 0])
    return torch.cat(out, dim=0)
