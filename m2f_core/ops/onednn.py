"""oneDNN's fused inference kernels for convolutions and linear layers on the CPU.

PyTorch's eager ``conv2d`` hands oneDNN a plain weight that oneDNN reorders into its blocked
layout on every call, and ``F.linear`` writes the bias into the output before the GEMM and applies
a ReLU in a second pass. The kernels below are the ones ``torch.compile`` (inductor with freezing)
calls for the same layers: a convolution on a weight reordered once for the input's shape, with
the ReLU and the residual add applied as the output is written, and a linear layer with its bias
and ReLU fused. On a 2-core AVX2 machine this makes the R50 backbone 10-13 % and the pixel
decoder's FFNs about 15 % faster; the results equal the aten path up to fp32 rounding (the GEMM's
blocking differs; the backbone's are bit-identical).

They serve inference only: fp32 CPU tensors outside autograd, tracing (ONNX export) and
``torch.compile`` (which fuses by itself). The convolution, whose weight must be packed, runs only in
models converted by ``m2f_core.accelerate.prepare_for_inference`` (``InferenceConv2d``, which packs
its weight once per input shape); the linear layers need no packing and dispatch here from the
model's own modules, falling back to the aten ops outside inference. ``M2F_NO_ONEDNN=1`` turns
them off, and so does a build of PyTorch without oneDNN; the aten path is then used everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _kernels_present() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._convolution_pointwise, torch.ops.mkldnn._linear_pointwise  # noqa: B018
        torch.ops.mkldnn._reorder_convolution_weight  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


ENABLED = not os.environ.get("M2F_NO_ONEDNN") and _kernels_present()

_RELUS = (F.relu, F.relu_, torch.relu, torch.relu_)


def usable(x: torch.Tensor) -> bool:
    """Whether the fused kernels may serve ``x``: fp32 on the CPU, no autograd, no trace, no compile."""
    return (ENABLED and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled("cpu"))


def is_relu(activation: Callable | None) -> bool:
    """Whether an activation is a ReLU the kernels can apply while writing their output."""
    return activation in _RELUS


def pack_conv_weight(weight: torch.Tensor, padding: Sequence[int], stride: Sequence[int],
                     dilation: Sequence[int], groups: int, input_shape: Sequence[int]) -> torch.Tensor:
    """The weight reordered into oneDNN's blocked layout for inputs of ``input_shape`` (an opaque tensor).

    The layout oneDNN picks depends on the input's shape; the reordered weight still gives the
    right result for other shapes, only more slowly, so callers re-pack when the shape changes.
    """
    return torch.ops.mkldnn._reorder_convolution_weight(
        weight.contiguous(), list(padding), list(stride), list(dilation), groups, list(input_shape))


def conv2d(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None, padding: Sequence[int],
           stride: Sequence[int], dilation: Sequence[int], groups: int, relu: bool = False,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """``relu?(conv2d(x) + residual?)`` in one oneDNN call; NHWC input gives NHWC output."""
    args = (list(padding), list(stride), list(dilation), groups)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(
            x, packed_weight, bias, *args, "relu" if relu else "none", [], "")
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, packed_weight, bias, *args, "add", None, "relu" if relu else None, [], "")


def relu_unless_grad(x: torch.Tensor) -> torch.Tensor:
    """ReLU in place where no gradient flows, else out of place.

    A linear layer's output on a 3-D input is a view of its 2-D GEMM result; an in-place ReLU on it
    under autograd records a CopySlices node whose backward copies and zero-fills the whole
    activation several times (about 200 ms per R50 training step at 384, batch 2).
    """
    return F.relu(x, inplace=not x.requires_grad)


def linear(x: torch.Tensor, layer: nn.Linear, activation: str | None = None) -> torch.Tensor:
    """``activation(layer(x))`` for ``activation`` in (None, "relu", "gelu"; GELU exact, erf): bias and
    ReLU fused in oneDNN where ``usable(x)``, else the aten ops.

    The GELU is applied in place after the oneDNN GEMM rather than as its post-op: on AVX2 the fused
    erf GELU made Swin-T's MLP layers 10-25 % slower than the GEMM plus aten's vectorised ``gelu_``
    (the same values up to fp32 rounding).
    """
    return linear_weights(x, layer.weight, layer.bias, activation)


def linear_weights(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   activation: str | None = None) -> torch.Tensor:
    """``linear`` with the weight (out, in) and bias given directly."""
    if activation not in (None, "relu", "gelu"):
        raise ValueError(f"unknown activation {activation!r}")
    if usable(x):
        if activation == "gelu":
            return torch.ops.aten.gelu_(torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], ""))
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if activation == "relu" else "none", [], "")
    y = F.linear(x, weight, bias)
    if activation == "relu":
        return relu_unless_grad(y)
    return F.gelu(y) if activation == "gelu" else y
