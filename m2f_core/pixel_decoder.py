"""Multi-scale deformable-attention pixel decoder (``sem_seg_head.pixel_decoder``).

A deformable transformer encoder refines res3-res5 (1/8, 1/16, 1/32); an FPN step then adds the
higher-resolution backbone stages (res2) to build the 1/4-scale per-pixel mask features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv2d, PositionEmbeddingSine, c2_xavier_fill, get_norm
from .ops import MSDeformAttn, onednn


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision features go up to fp32 (the official decoder runs outside autocast); fp64 stays."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class MSDeformAttnEncoderLayer(nn.Module):
    """Deformable self-attention + FFN, post-norm."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference_points, src, spatial_shapes)))
        ffn = onednn.linear(self.dropout2(onednn.linear(src, self.linear1, "relu")), self.linear2)
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(MSDeformAttnEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    @staticmethod
    def reference_points(spatial_shapes: list[tuple[int, int]], batch: int, device: torch.device) -> torch.Tensor:
        """Pixel centres of every level, normalised to [0, 1]: (B, S, L, 2) as (x, y)."""
        points = []
        for h, w in spatial_shapes:
            # arange + 0.5 equals linspace(0.5, h - 0.5, h) exactly, and also exports for h = 1 (an
            # ONNX linspace divides by h - 1)
            ref_y, ref_x = torch.meshgrid(
                (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h,
                (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w,
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
        ref = torch.cat(points, 0)  # (S, 2)
        # no padding mask: every level's valid ratio is 1, so the point is the same on all levels
        return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        reference_points = self.reference_points(spatial_shapes, src.shape[0], src.device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Holds the level embeddings and the encoder (official module path ``pixel_decoder.transformer``)."""

    def __init__(self, d_model: int, nhead: int, num_encoder_layers: int, dim_feedforward: int,
                 dropout: float, num_feature_levels: int, enc_n_points: int):
        super().__init__()
        self.encoder = MSDeformAttnEncoder(
            num_encoder_layers, d_model=d_model, d_ffn=dim_feedforward, dropout=dropout,
            n_levels=num_feature_levels, n_heads=nhead, n_points=enc_n_points,
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]):
        """srcs, pos_embeds: per level (B, C, H, W), low to high resolution -> (B, S, C), shapes."""
        spatial_shapes = [(s.shape[2], s.shape[3]) for s in srcs]  # no int(): keeps H, W symbolic in an export
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos_embeds)],
            1,
        )
        return self.encoder(src_flat, pos_flat, spatial_shapes), spatial_shapes


class MSDeformAttnPixelDecoder(nn.Module):
    """Returns (mask_features 1/4, encoder output at 1/32, [3 multi-scale features, low to high res])."""

    def __init__(
        self,
        in_channels: dict[str, int],
        in_strides: dict[str, int],
        transformer_in_features: tuple[str, ...] = ("res3", "res4", "res5"),
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
        transformer_dropout: float = 0.0,
        transformer_nheads: int = 8,
        transformer_dim_feedforward: int = 1024,
        transformer_enc_layers: int = 6,
        enc_n_points: int = 4,
        common_stride: int = 4,
    ):
        super().__init__()
        self.in_features = sorted(in_channels, key=lambda k: in_strides[k])  # res2 .. res5
        self.transformer_in_features = sorted(transformer_in_features, key=lambda k: in_strides[k])
        self.num_levels = len(self.transformer_in_features)
        # input projections, low to high resolution (res5 first)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[f], conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for f in self.transformer_in_features[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim, nhead=transformer_nheads, num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward, dropout=transformer_dropout,
            num_feature_levels=self.num_levels, enc_n_points=enc_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3  # the decoder always uses 3 scales
        # FPN levels between the finest encoder level and the common stride (res2 for stride 4)
        min_stride = min(in_strides[f] for f in self.transformer_in_features)
        self.num_fpn_levels = int(math.log2(min_stride) - math.log2(common_stride))
        use_bias = norm == ""
        self.fpn_features = self.in_features[: self.num_fpn_levels]
        for idx, f in enumerate(self.fpn_features):
            lateral = Conv2d(in_channels[f], conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output = Conv2d(conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias,
                            norm=get_norm(norm, conv_dim), activation=F.relu)
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)

    def forward_features(self, features: dict[str, torch.Tensor], project_mask_features: bool = True):
        """``project_mask_features=False`` returns the 1/4-scale features before the 1x1
        ``mask_features`` convolution, for a predictor that folds it into its mask embeddings."""
        srcs, pos = [], []
        for idx, f in enumerate(self.transformer_in_features[::-1]):
            x = _at_least_fp32(features[f])
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, shapes = self.transformer(srcs, pos)
        b = memory.shape[0]
        out = []
        for z, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes):
            out.append(z.transpose(1, 2).reshape(b, -1, h, w))  # (B, S_l, C) -> (B, C, H, W)
        # top-down FPN over the remaining higher-resolution stages
        for idx, f in enumerate(self.fpn_features[::-1]):
            level = len(self.fpn_features) - idx  # adapter_/layer_ numbering follows res2 = 1
            lateral = getattr(self, f"adapter_{level}")(_at_least_fp32(features[f]))
            # resized from NCHW: the encoder's (B, C, H, W) view is NHWC in memory, and the CPU's
            # channels-last bilinear kernel is about 3x slower than a copy plus the NCHW one
            y = lateral + F.interpolate(out[-1].contiguous(), size=lateral.shape[-2:], mode="bilinear",
                                        align_corners=False)
            out.append(getattr(self, f"layer_{level}")(y))
        multi_scale = out[: self.maskformer_num_feature_levels]
        return self.mask_features(out[-1]) if project_mask_features else out[-1], out[0], multi_scale

    forward = forward_features
