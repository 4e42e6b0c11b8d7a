"""Test oracle: the official Mask2Former post-processing (``maskformer_model.py``), one function per task.

A direct transcription over all queries at full resolution, kept only to check the library's fast
task views (``m2f_core.prediction.Prediction``) against it. Inputs are the outputs of one image:
``mask_cls`` (Q, K+1) class logits and ``mask_pred`` (Q, H, W) mask logits already at the output
resolution. Pure functions, no model, no config.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from m2f_core.prediction import score_order
from m2f_core.structures import InstanceResult, PanopticResult, Segment, mask_bbox


def resize_mask_logits(pred_masks: torch.Tensor, padded_size: tuple[int, int], image_size: tuple[int, int],
                       output_size: tuple[int, int]) -> torch.Tensor:
    """(Q, h/4, w/4) logits -> (Q, H_out, W_out), as the official ``sem_seg_postprocess``.

    Upsample to the padded network input, crop the padding away (``image_size`` = resized input
    before padding), then resize to the original image size; bilinear, align_corners=False.
    """
    x = F.interpolate(pred_masks[None], size=padded_size, mode="bilinear", align_corners=False)
    x = x[:, :, : image_size[0], : image_size[1]]
    if tuple(image_size) != tuple(output_size):
        x = F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)
    return x[0]


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """(K, H, W) class scores: softmax over classes without no-object, weighted by sigmoid masks."""
    cls = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", cls, mask_pred.sigmoid())


def panoptic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor, is_thing: list[bool] | np.ndarray,
                       object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8,
                       mask_probs: torch.Tensor | None = None) -> PanopticResult:
    """Non-overlapping segments: confident queries, pixel -> argmax of score x mask probability.

    A query keeps the pixels it wins where its own mask is >= 0.5, and is dropped when it wins
    less than ``overlap_threshold`` of its own mask; segments of one stuff class are merged.
    ``mask_probs`` (sigmoid of ``mask_pred``) may be passed when already computed.
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    probs = mask_pred.sigmoid() if mask_probs is None else mask_probs
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], probs[keep]
    h, w = probs.shape[-2:]
    segment_map = torch.zeros((h, w), dtype=torch.int32)
    segments: list[Segment] = []
    if cur_masks.shape[0] == 0:
        return PanopticResult(segment_map.numpy(), segments)
    cur_mask_ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
    stuff_ids: dict[int, int] = {}
    next_id = 0
    for k in range(cur_classes.shape[0]):
        pred_class = int(cur_classes[k])
        isthing = bool(is_thing[pred_class])
        own = cur_masks[k] >= 0.5
        wins = cur_mask_ids == k
        mask_area = int(wins.sum())
        original_area = int(own.sum())
        mask = wins & own
        if mask_area == 0 or original_area == 0 or not bool(mask.any()):
            continue
        if mask_area / original_area < overlap_threshold:
            continue
        if not isthing and pred_class in stuff_ids:
            segment_map[mask] = stuff_ids[pred_class]
            continue
        next_id += 1
        if not isthing:
            stuff_ids[pred_class] = next_id
        segment_map[mask] = next_id
        segments.append(Segment(id=next_id, category_id=pred_class, isthing=isthing, score=float(cur_scores[k])))
    return PanopticResult(segment_map.numpy(), segments).update_stats()


def instance_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor, topk: int = 100,
                       thing_only: list[bool] | np.ndarray | None = None,
                       mask_probs: torch.Tensor | None = None) -> InstanceResult:
    """Top-k (query, class) pairs; score = class probability x mean mask probability inside the mask.

    ``thing_only``: the is_thing flags of a panoptic model, whose stuff classes are not instances.
    Boxes are the tight boxes of the binary masks (the official code returns zero boxes).
    """
    num_queries, k1 = mask_cls.shape
    num_classes = k1 - 1
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
    topk = min(topk, scores.numel())
    scores_per_image, topk_indices = scores.flatten(0, 1).topk(topk, sorted=False)
    labels_per_image = labels[topk_indices]
    query_indices = topk_indices // num_classes
    if thing_only is not None:
        is_thing = torch.as_tensor(np.asarray(thing_only, dtype=bool))
        keep = is_thing[labels_per_image]
        scores_per_image, labels_per_image, query_indices = (
            scores_per_image[keep], labels_per_image[keep], query_indices[keep])
    logits = mask_pred[query_indices]
    probs = logits.sigmoid() if mask_probs is None else mask_probs[query_indices]
    binary = logits > 0
    mask_scores = (probs.flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    final_scores = scores_per_image * mask_scores
    order = torch.from_numpy(score_order(final_scores, query_indices, labels_per_image))
    masks = binary[order].numpy()
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        x, y, bw, bh = mask_bbox(m)
        boxes[i] = (x, y, x + bw, y + bh)
    return InstanceResult(masks=masks, boxes=boxes, scores=final_scores[order].numpy(),
                          labels=labels_per_image[order].numpy())
