"""The Mask2Former network: backbone -> pixel decoder -> masked-attention transformer decoder.

Composed by its constructor from parts passed in; ``build_model`` builds the parts from a config.
Module paths are the official ones (``backbone``, ``sem_seg_head.pixel_decoder``,
``sem_seg_head.predictor``) so an official Detectron2 state dict loads with no renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import build_backbone
from .config import Mask2FormerConfig
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MultiScaleMaskedTransformerDecoder


class MaskFormerHead(nn.Module):
    """Container matching the official ``sem_seg_head`` (pixel decoder + transformer predictor)."""

    def __init__(self, pixel_decoder: MSDeformAttnPixelDecoder, predictor: MultiScaleMaskedTransformerDecoder):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    def forward(self, features: dict[str, torch.Tensor], return_aux: bool = True) -> dict:
        # Without the auxiliary outputs (inference) the pixel decoder's last 1x1 convolution is
        # folded into the mask embeddings instead of run over the 1/4-scale map (see the predictor).
        fold = not return_aux and self.predictor.can_fold(self.pixel_decoder.mask_features)
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(
            features, project_mask_features=not fold)
        return self.predictor(multi_scale_features, mask_features, return_aux=return_aux,
                              mask_projection=self.pixel_decoder.mask_features if fold else None)


class Mask2Former(nn.Module):
    """``forward(images)`` takes a normalised, size-divisible batch (B, 3, H, W) and returns
    ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, H/4, W/4) and ``aux_outputs`` (the
    predictions of the learned queries and of every decoder layer but the last; an empty list with
    ``return_aux=False``, which inference uses: it skips their full-size masks)."""

    def __init__(self, backbone: nn.Module, sem_seg_head: MaskFormerHead, config: Mask2FormerConfig | None = None):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.config = config  # kept for saving and post-processing; the modules do not read it

    @property
    def size_divisibility(self) -> int:
        return self.config.size_divisibility if self.config is not None else 32

    def forward(self, images: torch.Tensor, return_aux: bool = True) -> dict:
        features = self.backbone.forward_features(images)
        return self.sem_seg_head(features, return_aux=return_aux)


def build_model(config: Mask2FormerConfig) -> Mask2Former:
    """A randomly initialised Mask2Former (official init) for a config."""
    backbone = build_backbone(config.backbone)
    pixel_decoder = MSDeformAttnPixelDecoder(
        in_channels=backbone.out_channels,
        in_strides=backbone.out_strides,
        transformer_in_features=config.deformable_in_features,
        conv_dim=config.conv_dim,
        mask_dim=config.mask_dim,
        norm=config.norm,
        transformer_dropout=config.dropout,
        transformer_nheads=config.enc_nheads,
        transformer_dim_feedforward=config.enc_dim_feedforward,
        transformer_enc_layers=config.enc_layers,
        enc_n_points=config.enc_n_points,
        common_stride=config.common_stride,
    )
    predictor = MultiScaleMaskedTransformerDecoder(
        in_channels=config.conv_dim,
        num_classes=config.num_classes,
        hidden_dim=config.hidden_dim,
        num_queries=config.num_queries,
        nheads=config.nheads,
        dim_feedforward=config.dim_feedforward,
        dec_layers=config.num_decoder_layers,
        pre_norm=config.pre_norm,
        mask_dim=config.mask_dim,
        enforce_input_project=config.enforce_input_proj,
    )
    return Mask2Former(backbone, MaskFormerHead(pixel_decoder, predictor), config)
