"""Backbones with a uniform interface: ``forward_features(x) -> {"res2": ..., "res5": ...}``.

Each backbone exposes ``out_channels`` and ``out_strides`` (dicts keyed by stage name).
"""

from __future__ import annotations

from torch import nn

from ..config import BackboneConfig
from .resnet import ResNet
from .swin import SwinTransformer

__all__ = ["ResNet", "SwinTransformer", "build_backbone"]


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """Backbone from its config, every hyper-parameter passed explicitly."""
    if cfg.type == "resnet":
        return ResNet(
            stage_blocks=cfg.resnet_stage_blocks,
            stem_out_channels=cfg.stem_out_channels,
            res2_out_channels=cfg.res2_out_channels,
            stride_in_1x1=cfg.stride_in_1x1,
            res5_dilation=cfg.res5_dilation,
        )
    return SwinTransformer(
        pretrain_img_size=cfg.pretrain_img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depths=cfg.depths,
        num_heads=cfg.num_heads,
        window_size=cfg.window_size,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        drop_path_rate=cfg.drop_path_rate,
        ape=cfg.ape,
        patch_norm=cfg.patch_norm,
    )
