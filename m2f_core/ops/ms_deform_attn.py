"""Multi-scale deformable attention (Deformable DETR), pure PyTorch.

``ms_deform_attn_core`` is the reference implementation (bilinear sampling with ``grid_sample``,
zeros outside the map, ``align_corners=False``), the same computation as the CUDA kernel of the
official code.

``ms_deform_attn_gather`` computes the same sum as one fused gather: every sample is 4 bilinear
corners, and each corner's weight (bilinear x attention, 0 outside the map) multiplies one row of
the flattened value table. ``embedding_bag(mode="sum", per_sample_weights=...)`` does the gather and
the weighted sum for all levels, heads and points in one kernel, without materialising the sampled
values; its backward gives gradients for the values and (through the weights) for the sampling
locations and attention weights, so training uses it too. On CPU it is several times faster than
per-level ``grid_sample``; the two agree within fp32 rounding (tests/test_ms_deform_attn.py).

``ms_deform_attn_fast`` (the default) runs through a small C kernel (``ops.native``, built on
first use) that does the whole sum per query in one pass, forward and backward, several times
faster again; it falls back to the gather wherever the kernel does not apply.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinearly sampled values.

    value: (N, S, M, D) with S = sum(H_l * W_l); sampling_locations: (N, Lq, M, L, P, 2) in [0, 1]
    (x, y); attention_weights: (N, Lq, M, L, P). Returns (N, Lq, M * D).
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        value_l = value_list[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid_l = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N, Lq, M, L, P) -> (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (N*M, D, Lq)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


def ms_deform_attn_gather(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Same inputs and output as ``ms_deform_attn_core``, computed as one weighted gather."""
    n, s, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    dtype, device = sampling_locations.dtype, sampling_locations.device
    shapes = torch.tensor(spatial_shapes, dtype=torch.int32, device=device)  # (L, 2) as (H, W)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1].int()])  # (L,)
    height, width = shapes[:, 0].view(-1, 1, 1), shapes[:, 1].view(-1, 1, 1)  # broadcast over (L, P, 2)
    # pixel coordinates (align_corners=False) of the two neighbours along each axis: (N, Lq, M, L, P, 2)
    corner = torch.arange(2, dtype=torch.int32, device=device)
    x = sampling_locations[..., 0] * width.to(dtype).view(-1, 1) - 0.5
    y = sampling_locations[..., 1] * height.to(dtype).view(-1, 1) - 0.5
    x0, y0 = x.detach().floor(), y.detach().floor()
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)  # differentiable bilinear fractions
    xs = x0.int().unsqueeze(-1) + corner
    ys = y0.int().unsqueeze(-1) + corner
    wx = torch.where(corner == 0, 1 - fx, fx) * ((xs >= 0) & (xs < width))  # 0 outside the map
    wy = torch.where(corner == 0, 1 - fy, fy) * ((ys >= 0) & (ys < height)) * attention_weights.unsqueeze(-1)
    # row of each corner in the value table laid out (N, M, S); clamped rows carry weight 0
    block = (torch.arange(n * m, dtype=torch.int32, device=device) * s).view(n, 1, m, 1, 1, 1)
    rows_y = block + starts.view(-1, 1, 1) + ys.clamp(min=0).minimum(height - 1) * width
    index = rows_y.unsqueeze(-1) + xs.clamp(min=0).minimum(width - 1).unsqueeze(-2)  # (N, Lq, M, L, P, 2, 2)
    weight = wy.unsqueeze(-1) * wx.unsqueeze(-2)
    # bags ordered (N, Lq, M), each of L * P * 4 corners
    table = value.permute(0, 2, 1, 3).reshape(n * m * s, d)  # (N*M*S, D)
    bag = num_levels * num_points * 4
    offsets = torch.arange(0, index.numel(), bag, dtype=torch.int32, device=device)
    out = F.embedding_bag(index.reshape(-1), table, offsets, mode="sum",
                          per_sample_weights=weight.reshape(-1).to(table.dtype))
    return out.view(n, lq, m * d)


def ms_deform_attn_fast(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The C kernel (``ops.native``, forward and backward) where it applies: fp32 on the CPU, not
    traced, kernel built; else the fused gather (other devices and dtypes, exports, no compiler).

    Half-precision inputs (autocast) are sampled in fp32 and the output is fp32, as the official
    kernel's ``custom_fwd(cast_inputs=torch.float32)`` does (and CUDA has no bf16 backward for the
    gather's per-sample weights).
    """
    from . import native

    if value.dtype in (torch.float16, torch.bfloat16):
        value, sampling_locations, attention_weights = value.float(), sampling_locations.float(), \
            attention_weights.float()

    if (value.device.type == "cpu" and value.dtype == torch.float32
            and sampling_locations.dtype == torch.float32 and attention_weights.dtype == torch.float32
            and value.shape[-1] <= native.MAX_HEAD_DIM and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and native.available()):
        return native.ms_deform_attn_native(value, spatial_shapes, sampling_locations, attention_weights)
    return ms_deform_attn_gather(value, spatial_shapes, sampling_locations, attention_weights)


class MSDeformAttn(nn.Module):
    """Each query attends to ``n_points`` learned offsets around its reference point on every level."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        # the sampling kernel: the C kernel where it applies, else the fused gather; ``ms_deform_attn_core``
        # (grid_sample) is the reference and the one ONNX export uses (GridSample is a standard operator)
        self.core = ms_deform_attn_fast
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: offsets start on rays in n_heads directions, 1..P steps long."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """query: (N, Lq, C); reference_points: (N, Lq, L, 2) in [0, 1]; input_flatten: (N, S, C)."""
        n, lq, _ = query.shape
        _, s, _ = input_flatten.shape
        value = onednn.linear(input_flatten, self.value_proj).view(n, s, self.n_heads, self.d_model // self.n_heads)
        weights = onednn.linear(query, self.attention_weights).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        locations = self.sampling_locations(query, reference_points, spatial_shapes)
        out = self.core(value, spatial_shapes, locations, weights)
        return onednn.linear(out, self.output_proj)

    def sampling_locations(self, query: torch.Tensor, reference_points: torch.Tensor,
                           spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        """reference + offsets / (W, H) of each level: (N, Lq, M, L, P, 2) in [0, 1] units.

        The offsets are predicted in pixels of each level, as in the official module. Locations
        stay in the parameters' precision (fp32) under autocast: in bf16 a location in [0, 1] would
        be off by up to 2^-9, half a pixel on a 256-pixel-wide level.
        """
        n, lq, _ = query.shape
        with torch.autocast(query.device.type, enabled=False):
            weight = self.sampling_offsets.weight
            query, reference_points = query.to(weight.dtype), reference_points.to(weight.dtype)
            offsets = onednn.linear(query, self.sampling_offsets).view(
                n, lq, self.n_heads, self.n_levels, self.n_points, 2)
            normalizer = offset_normalizer(spatial_shapes).to(dtype=weight.dtype, device=query.device)
            return reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]


def offset_normalizer(spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
    """(L, 2) tensor of each level's (W, H), the units of the predicted sampling offsets."""
    # stacked rather than torch.tensor(...): a traced (ONNX) export keeps W, H as graph values
    return torch.stack([torch.stack([torch.as_tensor(w), torch.as_tensor(h)]) for h, w in spatial_shapes])
