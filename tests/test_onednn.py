"""oneDNN's fused inference kernels (``m2f_core.ops.onednn``) against the aten path they replace."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from model_helpers import small_config

from m2f_core.accelerate import InferenceConv2d, prepare_for_inference
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
    conv = InferenceConv2d(conv)  # the converted convolution (prepare_for_inference) is the one that fuses
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
    conv = InferenceConv2d(conv)
    x = torch.randn(1, 32, 20, 20)
    with torch.inference_mode():
        torch.testing.assert_close(conv(x), aten(conv, x), rtol=1e-5, atol=1e-5)


def test_packed_weight_follows_input_shape_and_a_new_conversion(aten):
    torch.manual_seed(0)
    conv = Conv2d(8, 8, kernel_size=3, padding=1, bias=False, norm=FrozenBatchNorm2d(8))
    fast = InferenceConv2d(conv)
    small, large = torch.randn(1, 8, 12, 12), torch.randn(1, 8, 40, 24)
    with torch.inference_mode():
        for x in (small, large, small):  # each shape change re-packs
            torch.testing.assert_close(fast(x), aten(conv, x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        conv.weight.mul_(-2.0)  # new weights (an optimizer step) reach inference through a new conversion
        conv.norm.running_mean.add_(1.0)
        updated = InferenceConv2d(conv)(small)
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


def test_linear_rejects_an_unknown_activation():
    layer = torch.nn.Linear(4, 3)
    for grad in (False, True):
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match="unknown activation"):
            onednn.linear(torch.randn(2, 4), layer, "silu")


def test_kernels_serve_inference_only():
    x = torch.randn(4, 8)
    assert not onednn.usable(x)  # autograd on: training keeps the aten ops and their gradients
    with torch.no_grad():
        assert onednn.usable(x)
        assert not onednn.usable(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn.usable(x)
    layer = torch.nn.Linear(8, 3)
    onednn.linear(x, layer, "relu").sum().backward()  # the fallback keeps gradients: those of aten's ops
    ref = torch.nn.Linear(8, 3)
    ref.load_state_dict(layer.state_dict())
    torch.relu(ref(x)).sum().backward()
    assert layer.weight.grad.abs().sum() > 0
    assert torch.equal(layer.weight.grad, ref.weight.grad) and torch.equal(layer.bias.grad, ref.bias.grad)


@pytest.mark.parametrize("backbone", ["resnet", "swin"])
def test_model_outputs_match_the_aten_path(aten, backbone):
    torch.manual_seed(0)
    model = prepare_for_inference(build_model(small_config(backbone)))
    reference_model = copy.deepcopy(model)  # its own packed weights
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        fused = model(x, return_aux=False)
        reference = aten(reference_model, x, return_aux=False)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(fused[key], reference[key], rtol=1e-4, atol=1e-4)


def test_relu_after_a_linear_layer_stays_out_of_place_under_autograd():
    """An in-place ReLU on a linear layer's 3-D output (a view of the GEMM result) would record a
    CopySlices node, whose backward copies and zero-fills the whole activation; in place only
    where no gradient flows."""
    layer = torch.nn.Linear(8, 16)
    x = torch.randn(2, 5, 8)
    y = onednn.linear(x, layer, "relu")
    assert type(y.grad_fn).__name__ == "ReluBackward0"
    y.sum().backward()
    ref = torch.nn.Linear(8, 16)
    ref.load_state_dict(layer.state_dict())
    torch.relu(ref(x)).sum().backward()
    assert torch.equal(layer.weight.grad, ref.weight.grad) and torch.equal(layer.bias.grad, ref.bias.grad)
    with torch.no_grad():
        z = torch.nn.functional.linear(x, layer.weight, layer.bias)
        assert onednn.relu_unless_grad(z).data_ptr() == z.data_ptr()  # in place at inference


def test_resnet_runs_nhwc_at_inference_and_nchw_in_training():
    """NHWC in the converted model (only the forward runs); NCHW in the trained one, where oneDNN's
    NHWC convolution backward is the slower one."""
    from m2f_core.backbone.resnet import ResNet

    net = ResNet(stage_blocks=(1, 1, 1, 1), res2_out_channels=32, stem_out_channels=16)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        inference = prepare_for_inference(net)(x)
    training = net(x)
    for name in net.stage_names:
        assert inference[name].is_contiguous(memory_format=torch.channels_last)
        assert training[name].is_contiguous()
        torch.testing.assert_close(inference[name], training[name].detach(), rtol=1e-5, atol=1e-5)
