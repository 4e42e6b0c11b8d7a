"""Small building blocks shared by the backbone, the pixel decoder and the transformer decoder.

Parameter names follow Detectron2 (``Conv2d`` keeps its norm as ``.norm``) so that official
checkpoints load without renaming.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .ops import onednn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (all buffers, never trained)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C,) scale and shift of the affine map the norm is: x * scale + shift."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, bias = self.scale_and_shift()
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + bias.view(1, -1, 1, 1).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # BatchNorm2d checkpoints carry a counter that a frozen norm does not need
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def get_norm(norm: str, channels: int) -> nn.Module | None:
    """Norm layer by Detectron2 name: "" (none), "FrozenBN", "BN", "GN" (32 groups)."""
    if norm == "":
        return None
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"unknown norm {norm!r}")


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm (kept as ``.norm``) and activation.

    Inference runs a converted copy (``m2f_core.accelerate.prepare_for_inference``) whose
    convolutions have their frozen norm folded in and their weight packed for oneDNN."""

    def __init__(self, *args, norm: nn.Module | None = None,
                 activation: Callable[[torch.Tensor], torch.Tensor] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``activation(norm(conv(x)) + residual)``; the residual, when given, is added before the activation."""
        return norm_residual_activation(super().forward(x), self.norm, residual, self.activation)


def norm_residual_activation(x: torch.Tensor, norm: nn.Module | None, residual: torch.Tensor | None,
                             activation: nn.Module | None) -> torch.Tensor:
    """What follows a convolution in ``Conv2d``: ``activation(norm(x) + residual)``, each part when given."""
    if norm is not None:
        x = norm(x)
    if residual is not None:
        x = x + residual
    if activation is not None:
        x = activation(x)
    return x


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's XavierFill (kaiming uniform with a=1), the official init of the decoder convs."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class MLP(nn.Module):
    """Plain multi-layer perceptron with ReLU between layers (``layers.i`` names)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = onednn.relu_unless_grad(x)
        return x


class PositionEmbeddingSine(nn.Module):
    """DETR's normalised sine position encoding of a feature map (no padding mask)."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) feature -> (B, 2 * num_pos_feats, H, W) encoding."""
        b, _, h, w = x.shape
        eps = 1e-6
        # cumulative sums of an all-valid mask are just 1..H and 1..W
        y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=x.device)
        x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=x.device)
        y_embed = y_embed / (y_embed[-1:] + eps) * self.scale
        x_embed = x_embed / (x_embed[-1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, None] / dim_t  # (W, F)
        pos_y = y_embed[:, None] / dim_t  # (H, F)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat(
            (pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)), dim=2
        )  # (H, W, 2F)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at evaluation)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
