"""oneDNN's fused inference kernels (``m2f_core.ops.onednn``) against the aten path they replace."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from model_helpers import small_config

from m2f_core.layers import Conv2d, FrozenBatchNorm2d
from m2f_core.model import build_model
from m2f_core.ops import onednn

pytestmark = pytest.mark.skipif(not onednn.ENABLED, reason="this PyTorch build has no oneDNN kernels")


@pytest.fixture
def aten(monkeypatch):
    """Run a block with the fused kernels switched off (the path training and other devices take)."""

    def run(fn, *args, **kwargs):
        monkeypatch.setattr(onednn, "ENABLED", False)
        try:
            return fn(*args, **kwargs)
        finally:
            monkeypatch.setattr(onednn, "ENABLED", True)

    return run


def _randomize_norm(norm: FrozenBatchNorm2d) -> None:
    c = norm.num_features
    norm.weight.copy_(torch.rand(c) + 0.5)
    norm.bias.copy_(torch.randn(c))
    norm.running_mean.copy_(torch.randn(c))
    norm.running_var.copy_(torch.rand(c) + 0.5)


@pytest.mark.parametrize("kernel, stride, dilation, groups", [(1, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 1), (3, 1, 1, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_conv_with_frozen_norm_relu_and_residual(aten, kernel, stride, dilation, groups, channels_last,
                                                 with_residual):
    torch.manual_seed(0)
    conv = Conv2d(16, 32, kernel_size=kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                  groups=groups, bias=False, norm=FrozenBatchNorm2d(32), activation=F.relu_)
    _randomize_norm(conv.norm)
    x = torch.randn(2, 16, 23, 17)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        residual = torch.randn(2, 32, *conv(x).shape[-2:]) if with_residual else None
        fused = conv(x, residual=residual)
        reference = aten(conv, x, residual=residual)
    assert fused.shape == reference.shape
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    assert (fused >= 0).all()  # the ReLU came after the residual add
    if channels_last:  # NHWC in, NHWC out: the next layer reads it without a reorder
        assert fused.is_contiguous(memory_format=torch.channels_last)


def test_conv_with_group_norm_and_bias(aten):
    """A norm that does not fold (GroupNorm) runs after the oneDNN convolution, then the activation."""
    torch.manual_seed(0)
    conv = Conv2d(32, 32, kernel_size=3, padding=1, bias=True, norm=torch.nn.GroupNorm(8, 32), activation=F.relu)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(1, 32, 20, 20)
    with torch.inference_mode():
        torch.testing.assert_close(conv(x), aten(conv, x), rtol=1e-5, atol=1e-5)


def test_packed_weight_follows_input_shape_and_weight_updates(aten):
    torch.manual_seed(0)
    conv = Conv2d(8, 8, kernel_size=3, padding=1, bias=False, norm=FrozenBatchNorm2d(8))
    small, large = torch.randn(1, 8, 12, 12), torch.randn(1, 8, 40, 24)
    with torch.inference_mode():
        for x in (small, large, small):  # each shape change re-packs
            torch.testing.assert_close(conv(x), aten(conv, x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        conv.weight.mul_(-2.0)  # an in-place update (an optimizer step) bumps the version: no stale weight
        conv.norm.running_mean.add_(1.0)
        updated = conv(small)
        torch.testing.assert_close(updated, aten(conv, small), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
@pytest.mark.parametrize("shape", [(37, 24), (2, 37, 24)])
def test_linear_matches_aten(activation, shape):
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40)
    x = torch.randn(*shape)
    reference = F.linear(x, layer.weight, layer.bias)
    reference = {None: reference, "relu": F.relu(reference), "gelu": F.gelu(reference)}[activation]
    with torch.inference_mode():
        fused = onednn.linear(x, layer, activation)
    assert fused.shape == reference.shape
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_kernels_serve_inference_only():
    x = torch.randn(4, 8)
    assert not onednn.usable(x)  # autograd on: training keeps the aten ops and their gradients
    with torch.no_grad():
        assert onednn.usable(x)
        assert not onednn.usable(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn.usable(x)
    layer = torch.nn.Linear(8, 3)
    onednn.linear(x, layer, "relu").sum().backward()  # the fallback keeps gradients
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone", ["resnet", "swin"])
def test_model_outputs_match_the_aten_path(aten, backbone):
    torch.manual_seed(0)
    model = build_model(small_config(backbone)).eval()
    reference_model = copy.deepcopy(model)  # its own fold / pack caches
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        fused = model(x, return_aux=False)
        reference = aten(reference_model, x, return_aux=False)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(fused[key], reference[key], rtol=1e-4, atol=1e-4)
