"""Acceleration as one explicit conversion: ``prepare_for_inference(model)``.

The model files compute the official architecture directly from their parameters; training,
``torch.compile`` and ONNX export run them as they are. For eager inference,
``prepare_for_inference`` returns a model whose fast modules are built once from the current
weights (in the spirit of timm's ``reparameterize_model``):

* ``layers.Conv2d`` -> ``InferenceConv2d``: a frozen batch norm folded into the weight and bias (one
  pass over the activations instead of three); on the CPU the weight is reordered into oneDNN's
  blocked layout for the input's shape and the ReLU and the residual add are applied as the output
  is written (``ops.onednn``). ResNet's stem turns its input NHWC, the layout oneDNN convolves
  without reordering every layer (training stays NCHW, where oneDNN's NHWC backward is slower).
* ``SwinTransformerBlock`` -> ``InferenceSwinBlock``: the official pad / roll / partition / reverse
  copies replaced by one gather of the qkv projection computed on the real tokens and one gather
  back (``window_index``), and ``WindowAttention``'s relative position bias gathered from its table
  once (``InferenceWindowAttention``).
* ``MSDeformAttn`` -> ``InferenceMSDeformAttn``: the sampling offsets projected directly in [0, 1]
  units (the projection's rows divided by each level's (W, H)) and the reference points added in
  place.

All of them give the plain model's values up to fp32 rounding (tests/test_accelerate.py).

The contract:

* ``prepare_for_inference`` copies by default: the model passed in is not modified (it can go on
  training). The copy shares the parameters and buffers of the modules it does not replace with the
  original (no second copy of the weights); the replaced modules hold derived tensors of their own.
* A converted model is a snapshot of the weights at conversion time. Nothing in it watches the
  original: after changing the original's weights (``load_state_dict``, an optimizer step), convert
  again. Loading a state dict into a converted model raises. Nothing is keyed on tensor addresses
  or version counters; the only memos are keyed on input sizes (the packed convolution weight for
  the last input shape, the Swin window indices per map size).
* Inference only: the converted model is in eval mode and is meant to run under
  ``torch.inference_mode()`` or ``torch.no_grad()`` (dropout and stochastic depth are gone).
"""

from __future__ import annotations

import copy
import functools
import itertools
from typing import NamedTuple

import torch
from torch import nn

from .backbone.resnet import BasicStem
from .backbone.swin import SwinTransformerBlock, WindowAttention, window_self_attention
from .layers import Conv2d, FrozenBatchNorm2d, norm_residual_activation
from .ops import onednn
from .ops.ms_deform_attn import MSDeformAttn, offset_normalizer

__all__ = ["InferenceConv2d", "InferenceMSDeformAttn", "InferenceSwinBlock", "InferenceWindowAttention",
           "prepare_for_inference", "window_index"]


def prepare_for_inference(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` with its fast inference modules built from its current weights (see the module doc).

    ``inplace=False`` (default): returns a converted copy and leaves ``model`` untouched; the copy
    shares the weights of the modules it keeps. ``inplace=True``: converts ``model`` itself (timm
    style) and returns it; use it when nothing else holds the model. Either way the result is in
    eval mode and refuses ``load_state_dict``: load new weights into an unconverted model and
    convert again.
    """
    if not inplace:
        shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
        model = copy.deepcopy(model, memo=shared)
    model.eval()
    _convert_children(model)
    model.register_load_state_dict_pre_hook(_refuse_state_dict)
    return model


def _convert_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, Conv2d):
            setattr(module, name, InferenceConv2d(child, channels_last_input=isinstance(module, BasicStem)))
        elif isinstance(child, SwinTransformerBlock):
            setattr(module, name, InferenceSwinBlock(child))
        elif isinstance(child, MSDeformAttn):
            setattr(module, name, InferenceMSDeformAttn(child))
        else:
            _convert_children(child)


def _refuse_state_dict(module: nn.Module, *args, **kwargs) -> None:
    raise RuntimeError(f"{type(module).__name__} was made by prepare_for_inference and holds weights derived "
                       "from the ones it was converted from: load the state dict into the unconverted model "
                       "and convert it again")


class InferenceConv2d(nn.Conv2d):
    """A ``layers.Conv2d`` for inference: its frozen norm folded in, its weight packed for oneDNN.

    ``forward(x, residual=None)`` computes ``activation(norm(conv(x)) + residual)`` like the module it
    replaces. A norm that does not fold (GroupNorm) runs after the convolution. Still an
    ``nn.Conv2d`` (weight and bias as frozen parameters), so code that reads a plain 1x1
    convolution's weight (the decoder's ``mask_projection``) works on it.
    """

    def __init__(self, conv: Conv2d, channels_last_input: bool = False):
        with torch.no_grad():
            weight = conv.weight.detach()
            bias = conv.bias.detach() if conv.bias is not None else None
            norm = conv.norm
            if isinstance(norm, FrozenBatchNorm2d):  # an affine map per output channel
                scale, shift = norm.scale_and_shift()
                if bias is not None:
                    shift = shift + bias * scale
                weight, bias, norm = weight * scale.view(-1, 1, 1, 1), shift, None
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                         padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=bias is not None,
                         padding_mode=conv.padding_mode, device="meta")
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.norm = norm
        self.activation = conv.activation
        self.channels_last_input = channels_last_input
        self._packed: tuple[tuple[int, ...], torch.Tensor] | None = None  # (input shape, oneDNN weight)

    _load_from_state_dict = _refuse_state_dict

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state["_packed"] = None  # an opaque oneDNN tensor (no storage to copy or pickle): packed again on use
        return state

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.channels_last_input and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        if onednn.usable(x) and self.padding_mode == "zeros" and not isinstance(self.padding, str):
            args = (self._packed_weight(x), self.bias, self.padding, self.stride, self.dilation, self.groups)
            if self.norm is None and (self.activation is None or onednn.is_relu(self.activation)):
                return onednn.conv2d(x, *args, relu=self.activation is not None, residual=residual)
            x = onednn.conv2d(x, *args)
        else:
            x = self._conv_forward(x, self.weight, self.bias)
        return norm_residual_activation(x, self.norm, residual, self.activation)

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight in oneDNN's layout for inputs of ``x``'s shape, re-packed when the shape changes
        (another shape would still be right, only slower). The weight itself never changes."""
        shape = tuple(x.shape)
        packed = self._packed
        if packed is None or packed[0] != shape:
            packed = (shape, onednn.pack_conv_weight(self.weight, self.padding, self.stride, self.dilation,
                                                     self.groups, shape))
            self._packed = packed
        return packed[1]

    def extra_repr(self) -> str:
        return super().extra_repr() + (", channels_last_input=True" if self.channels_last_input else "")


class WindowIndex(NamedTuple):
    """Where each token of a (shifted) window partition comes from, and where each token goes back."""

    gather: torch.Tensor  # (nW * ws * ws,) token of the H*W map in each window slot (padding: any, see pad)
    pad: torch.Tensor  # (P,) window slots that hold padding
    scatter: torch.Tensor  # (H * W,) window slot of each token


@functools.lru_cache(maxsize=64)
def window_index(h: int, w: int, window_size: int, shift: int, device: torch.device) -> WindowIndex:
    """The token order of ``window_partition(roll(pad(x), -shift))`` as indices into the H*W tokens
    (a pure function of the sizes, memoised per map size).

    The official block pads the (normalised) map to multiples of the window, rolls it by -shift and
    cuts windows; after attention it reverses all three. One gather of the qkv projection computed
    on the real tokens (padding slots take the projection of zero, its bias) and one gather of the
    attention output back give the same values with 2 copies instead of 6, and without projecting
    the padding (up to 36 % more tokens at stage 3 of a 384 input).
    """
    ws = window_size
    hp, wp = h + (ws - h % ws) % ws, w + (ws - w % ws) % ws
    with torch.inference_mode(False):  # plain tensors, whatever mode the first call comes in
        # after torch.roll(-shift) position (Y, X) holds the padded map's ((Y + shift) % hp, (X + shift) % wp)
        y = (torch.arange(hp) + shift) % hp
        x = (torch.arange(wp) + shift) % wp
        source = torch.where((y[:, None] < h) & (x[None, :] < w), y[:, None] * w + x[None, :], -1)  # (hp, wp)
        slots = source.view(hp // ws, ws, wp // ws, ws).permute(0, 2, 1, 3).reshape(-1)  # window_partition order
        real = slots >= 0
        scatter = torch.empty(h * w, dtype=torch.long)
        scatter[slots[real]] = torch.arange(slots.numel())[real]
        return WindowIndex(slots.clamp(min=0).to(device), (~real).nonzero().view(-1).to(device), scatter.to(device))


class InferenceWindowAttention(nn.Module):
    """``WindowAttention`` with its relative position bias gathered from the table once."""

    def __init__(self, attn: WindowAttention):
        super().__init__()
        self.window_size = attn.window_size
        self.num_heads = attn.num_heads
        self.scale = attn.scale
        self.qkv = attn.qkv
        self.proj = attn.proj
        with torch.no_grad():
            self.register_buffer("position_bias", attn.position_bias().detach().clone())

    _load_from_state_dict = _refuse_state_dict

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) of 0 / -100 or None."""
        return onednn.linear(self.attend(onednn.linear(x, self.qkv), mask), self.proj)

    def attend(self, qkv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B * nW, N, 3C) qkv projection -> (B * nW, N, C) attention output (before ``proj``)."""
        return window_self_attention(qkv, self.num_heads, self.scale, self.position_bias, mask)


class InferenceSwinBlock(nn.Module):
    """``SwinTransformerBlock`` at inference: window attention through ``window_index`` (qkv and the
    output projection on the real tokens only), no stochastic depth."""

    def __init__(self, block: SwinTransformerBlock):
        super().__init__()
        self.window_size = block.window_size
        self.shift_size = block.shift_size
        self.norm1 = block.norm1
        self.attn = InferenceWindowAttention(block.attn)
        self.norm2 = block.norm2
        self.mlp = block.mlp

    def forward(self, x: torch.Tensor, h: int, w: int, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, H*W, C); shift_mask: (nW, N, N), used by shifted blocks."""
        mask = shift_mask if self.shift_size > 0 else None
        b, _, c = x.shape
        n = self.window_size**2
        index = window_index(h, w, self.window_size, self.shift_size, x.device)
        qkv = onednn.linear(self.norm1(x), self.attn.qkv).index_select(1, index.gather)  # (B, nW*N, 3C)
        if index.pad.numel():  # padding is 0 after norm1: its projection is the bias
            qkv[:, index.pad] = self.attn.qkv.bias.to(qkv.dtype) if self.attn.qkv.bias is not None else 0.0
        out = self.attn.attend(qkv.view(-1, n, 3 * c), mask)  # (B*nW, N, C)
        x = x + onednn.linear(out.view(b, -1, c).index_select(1, index.scatter), self.attn.proj)
        return x + self.mlp(self.norm2(x))


class InferenceMSDeformAttn(nn.Module):
    """``MSDeformAttn`` whose sampling offsets come out of the projection in [0, 1] units.

    Dividing the projection's rows (weight and bias) by their level's (W, H) gives the offsets in
    map units directly, and the reference points are added in place: one linear layer and one
    broadcast add instead of a linear layer and two broadcasts over the (..., L, P, 2) tensor (the
    same values up to fp32 rounding). The scaled rows depend on the map sizes, so they are made per
    call (a (M*L*P*2, C) product, negligible next to the projection of every query).
    """

    def __init__(self, attn: MSDeformAttn):
        super().__init__()
        self.d_model, self.n_levels, self.n_heads, self.n_points = attn.d_model, attn.n_levels, attn.n_heads, \
            attn.n_points
        self.sampling_offsets = attn.sampling_offsets
        self.attention_weights = attn.attention_weights
        self.value_proj = attn.value_proj
        self.output_proj = attn.output_proj
        self.core = attn.core

    forward = MSDeformAttn.forward  # the same attention; only ``sampling_locations`` differs

    def sampling_locations(self, query: torch.Tensor, reference_points: torch.Tensor,
                           spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        """reference + offsets / (W, H) of each level: (N, Lq, M, L, P, 2) in [0, 1] units, in the
        parameters' precision (fp32) under autocast too."""
        n, lq, _ = query.shape
        m, lvl, p = self.n_heads, self.n_levels, self.n_points
        with torch.autocast(query.device.type, enabled=False):
            weight, bias = self.sampling_offsets.weight, self.sampling_offsets.bias
            scale = offset_normalizer(spatial_shapes).to(dtype=weight.dtype, device=weight.device).reciprocal()
            scale = scale.view(1, lvl, 1, 2).expand(m, lvl, p, 2).reshape(-1)  # (M*L*P*2,) in output order
            query, reference_points = query.to(weight.dtype), reference_points.to(weight.dtype)
            locations = onednn.linear_weights(query, weight * scale[:, None], bias * scale).view(n, lq, m, lvl, p, 2)
            reference_points = reference_points[:, :, None, :, None, :]
            if torch.is_grad_enabled():  # in place on a view of the GEMM's output would cost autograd copies
                return locations + reference_points
            return locations.add_(reference_points)
