"""Masked-attention transformer decoder (``sem_seg_head.predictor``).

Queries attend only inside the foreground of the mask they predicted one layer earlier, cycling
over the 1/32, 1/16 and 1/8 feature levels. Every layer (and the learned queries before the first
layer) makes a class + mask prediction; the last one is the output, the others are auxiliary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MLP, Conv2d, PositionEmbeddingSine, c2_xavier_fill
from .ops import onednn


def multi_head_attention(attn: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """``attn(query, key, value, attn_mask)[0]`` (sequence first) with one mask for all heads.

    ``mask``: (B, Q, K) bool, True = not attended. ``nn.MultiheadAttention`` wants it repeated per
    head, (B * heads, Q, K), and turns it into an additive float mask of that size; here it is
    broadcast over the heads instead (the same attention, 1/heads of the mask work).
    query: (Q, B, C); key, value: (K, B, C) -> (Q, B, C).
    """
    q_len, b, c = query.shape
    heads = attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def split_heads(x: torch.Tensor) -> torch.Tensor:  # (L, B, C) -> (B, heads, L, C / heads)
        return x.view(x.shape[0], b, heads, c // heads).permute(1, 2, 0, 3)

    q = split_heads(F.linear(query, w_q, b_q))
    k = split_heads(F.linear(key, w_k, b_k))
    v = split_heads(F.linear(value, w_v, b_v))
    keep = None if mask is None else ~mask.unsqueeze(1)  # (B, 1, Q, K), True = attended
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=attn.dropout if attn.training else 0.0)
    out = out.permute(2, 0, 1, 3).reshape(q_len, b, c)  # (B, heads, Q, C / heads) -> (Q, B, C)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """tgt, query_pos: (Q, B, C)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = x + query_pos
        tgt = tgt + self.dropout(multi_head_attention(self.self_attn, q, k, x))
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                pos: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """tgt: (Q, B, C); memory, pos: (HW, B, C); memory_mask: (B, Q, HW), True = masked."""
        x = self.norm(tgt) if self.normalize_before else tgt
        attn = multi_head_attention(self.multihead_attn, x + query_pos, memory + pos, memory, memory_mask)
        tgt = tgt + self.dropout(attn)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0,
                 normalize_before: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.normalize_before else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(onednn.relu_unless_grad(self.linear1(x)))))
        return tgt if self.normalize_before else self.norm(tgt)


def _xavier_matrices(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class MultiScaleMaskedTransformerDecoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        pre_norm: bool = False,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
        num_feature_levels: int = 3,
    ):
        """``dec_layers`` is the number of layers built (official DEC_LAYERS - 1)."""
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, 0.0, pre_norm) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, 0.0, pre_norm) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, 0.0, pre_norm) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # learnable query features
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # learnable query positions
        self.num_feature_levels = num_feature_levels
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @staticmethod
    def can_fold(projection: nn.Module) -> bool:
        """Whether ``projection`` is a plain 1x1 convolution (no norm, no activation) that ``forward``
        can fold into the mask embeddings."""
        return (isinstance(projection, nn.Conv2d) and tuple(projection.kernel_size) == (1, 1)
                and tuple(projection.stride) == (1, 1) and projection.groups == 1
                and getattr(projection, "norm", None) is None and getattr(projection, "activation", None) is None)

    def forward(self, x: list[torch.Tensor], mask_features: torch.Tensor, return_aux: bool = True,
                mask_projection: nn.Conv2d | None = None) -> dict:
        """x: 3 levels (B, C, H_l, W_l), low to high resolution; mask_features: (B, mask_dim, H/4, W/4).

        ``return_aux=False`` (inference) skips the full-resolution masks of the intermediate
        predictions, which only the losses use; the outputs are the same either way.

        ``mask_projection``: a 1x1 convolution (``can_fold``) still to be applied to ``mask_features``
        (B, C, H/4, W/4). Every mask is a linear function of the mask features (the product with the
        embeddings, and the resizes), so the projection is applied to the embeddings instead:
        e . (W f + b) = (e W) . f + e . b, a (Q, mask_dim) x (mask_dim, C) product per prediction
        instead of a (mask_dim, C) x (C, H/4 * W/4) one over the map (the same values up to fp32
        rounding).
        """
        src, pos, sizes = [], [], []
        for i in range(self.num_feature_levels):
            sizes.append(x[i].shape[-2:])
            pos.append(self.pe_layer(x[i]).flatten(2).permute(2, 0, 1))  # (HW, B, C)
            level = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(level.permute(2, 0, 1))  # (HW, B, C)
        # The attention masks are bilinear resizes of the predicted masks to each level. Resizing is
        # linear, so resizing the mask features once per level and predicting there gives the same
        # masks as resizing every prediction (the official order) without the full-size product.
        # (on the CPU from NHWC memory: torch's NCHW bilinear kernel is ~15x slower at these sizes)
        resize_from = mask_features.contiguous(memory_format=torch.channels_last) \
            if mask_features.device.type == "cpu" else mask_features
        level_features = [F.interpolate(resize_from, size=size, mode="bilinear", align_corners=False)
                          for size in sizes]
        bs = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)  # (Q, B, C)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, bs, 1)

        classes, masks = [], []
        attn_mask = None  # made by the prediction before each layer
        for i in range(self.num_layers + 1):
            if i > 0:
                level = (i - 1) % self.num_feature_levels
                output = self.transformer_cross_attention_layers[i - 1](
                    output, src[level], memory_mask=attn_mask, pos=pos[level], query_pos=query_embed)
                output = self.transformer_self_attention_layers[i - 1](output, query_pos=query_embed)
                output = self.transformer_ffn_layers[i - 1](output)
            last = i == self.num_layers
            outputs_class, mask_embed = self.forward_prediction_heads(output)
            offset = None
            if mask_projection is not None:  # (B, Q, mask_dim) -> (B, Q, C) and the bias term (B, Q, 1, 1)
                weight = mask_projection.weight.flatten(1)  # (mask_dim, C)
                if mask_projection.bias is not None:
                    offset = (mask_embed @ mask_projection.bias)[..., None, None]
                mask_embed = mask_embed @ weight
            classes.append(outputs_class)
            masks.append(self.mask_logits(mask_embed, mask_features, offset) if return_aux or last else None)
            if not last:
                attn_mask = self.attention_mask(mask_embed, level_features[i % self.num_feature_levels], offset)
        aux = [{"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1])] if return_aux else []
        return {"pred_logits": classes[-1], "pred_masks": masks[-1], "aux_outputs": aux}

    def forward_prediction_heads(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (B, Q, K+1) and mask embeddings (B, Q, mask_dim) of the queries (Q, B, C)."""
        decoder_output = self.decoder_norm(output).transpose(0, 1)  # (B, Q, C)
        return self.class_embed(decoder_output), self.mask_embed(decoder_output)

    @staticmethod
    def mask_logits(mask_embed: torch.Tensor, features: torch.Tensor, offset: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """(B, Q, H, W) = embeddings (B, Q, C) . features (B, C, H, W) (+ offset (B, Q, 1, 1))."""
        logits = torch.einsum("bqc,bchw->bqhw", mask_embed, features)
        return logits if offset is None else logits + offset

    def attention_mask(self, mask_embed: torch.Tensor, level_features: torch.Tensor,
                       offset: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Q, h*w) bool, True = not attended: outside the predicted mask at this level (all heads)."""
        mask_logits = self.mask_logits(mask_embed, level_features, offset)
        attn_mask = mask_logits.sigmoid().flatten(2) < 0.5
        attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)  # a query masking everything attends everywhere
        return attn_mask.detach()
