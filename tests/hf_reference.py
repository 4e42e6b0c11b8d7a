"""Build seeded random ``transformers`` Mask2Former models for the equivalence tests.

Every parameter and buffer is re-drawn from a seeded generator (HF's init leaves the deformable
offsets, attention weights and many biases at zero, which would hide key-mapping mistakes).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def hf_config(backbone: str = "swin_t", num_labels: int = 7, **overrides):
    from transformers import Mask2FormerConfig, ResNetConfig, SwinConfig

    if backbone == "swin_t":
        bb = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                        drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"])
    elif backbone == "swin_small_test":
        bb = SwinConfig(embed_dim=32, depths=[1, 2, 1, 1], num_heads=[1, 2, 4, 8], window_size=4,
                        out_features=["stage1", "stage2", "stage3", "stage4"])
    elif backbone == "r50":
        bb = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    elif backbone == "resnet_small_test":
        bb = ResNetConfig(depths=[1, 1, 2, 1], hidden_sizes=[64, 128, 256, 512], embedding_size=32,
                          layer_type="bottleneck", out_features=["stage1", "stage2", "stage3", "stage4"])
    else:
        raise ValueError(backbone)
    id2label = {i: f"class_{i}" for i in range(num_labels)}
    kw = dict(backbone_config=bb, num_labels=num_labels, id2label=id2label,
              label2id={v: k for k, v in id2label.items()})
    kw.update(overrides)
    return Mask2FormerConfig(**kw)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Redraw every floating tensor: weights ~ U(-b, b) with fan-in scaling, norms near 1."""
    g = torch.Generator().manual_seed(seed)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point() or "relative_position_index" in name:
            continue
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
        elif ("norm" in name or "layernorm" in name) and name.endswith("weight") and t.dim() == 1:
            t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
        elif t.dim() >= 2:
            fan_in = math.prod(t.shape[1:])
            bound = 1.0 / math.sqrt(fan_in)
            t.copy_((torch.rand(t.shape, generator=g) * 2 - 1) * bound * 1.5)
        else:
            t.copy_(0.05 * torch.randn(t.shape, generator=g))


def save_random_hf_model(folder: Path, backbone: str = "swin_t", seed: int = 0, **overrides):
    """Save a seeded random HF model with ``save_pretrained``; returns the HF model (eval)."""
    from transformers import Mask2FormerForUniversalSegmentation

    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(hf_config(backbone, **overrides)).eval()
    randomize_(model, seed)
    model.save_pretrained(folder)
    return model


@torch.no_grad()
def hf_outputs(model, pixel_values: torch.Tensor) -> dict:
    """Outputs in our layout: pred_logits, pred_masks and the 9 (or L-1) aux predictions."""
    out = model(pixel_values=pixel_values, output_auxiliary_logits=True)
    aux = out.auxiliary_logits  # list of {"class_queries_logits", "masks_queries_logits"}
    return {
        "pred_logits": out.class_queries_logits,
        "pred_masks": out.masks_queries_logits,
        "aux_outputs": [{"pred_logits": a["class_queries_logits"], "pred_masks": a["masks_queries_logits"]}
                        for a in aux],
    }
