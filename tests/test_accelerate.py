"""``prepare_for_inference``: the one explicit conversion that builds the fast inference modules.

* The converted model gives the plain model's outputs (fp32 rounding), and is a snapshot: new
  weights loaded into the original (under ``inference_mode`` too, where tensors have no version
  counter) reach a model only through a new conversion; the converted one refuses a state dict.
* Each fast module against the official computation it replaces: the folded / packed convolution,
  the gathered Swin windows, the sampling offsets in [0, 1] units.
* No hidden caches in the library (no tensor address or version counter read anywhere), and no
  process-wide side effect of building a ``Predictor`` (malloc, inductor's global flags).
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from model_helpers import small_config

import m2f_core
from m2f_core.accelerate import (
    InferenceConv2d,
    InferenceMSDeformAttn,
    InferenceSwinBlock,
    prepare_for_inference,
    window_index,
)
from m2f_core.backbone.swin import BasicLayer
from m2f_core.layers import Conv2d, FrozenBatchNorm2d
from m2f_core.model import build_model
from m2f_core.ops import MSDeformAttn, onednn

BACKBONES = ["resnet", "swin"]
ATOL = 1e-4  # fp32, as the other inference-path tests (logits of size ~1, masks of size ~10)


def _randomize_norm(norm: FrozenBatchNorm2d, g: torch.Generator) -> None:
    c = norm.num_features
    norm.weight.copy_(torch.rand(c, generator=g) + 0.5)
    norm.bias.copy_(torch.randn(c, generator=g))
    norm.running_mean.copy_(torch.randn(c, generator=g))
    norm.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def _model(backbone: str, seed: int) -> torch.nn.Module:
    """A small model with non-trivial frozen norms (so that folding them matters)."""
    torch.manual_seed(seed)
    model = build_model(small_config(backbone)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                _randomize_norm(m, g)
            if isinstance(m, MSDeformAttn):  # offsets of a few pixels, not the init's rays
                torch.nn.init.normal_(m.sampling_offsets.weight, std=0.5, generator=g)
    return model


def _outputs(model, x):
    with torch.inference_mode():
        out = model(x, return_aux=False)
    return out["pred_logits"], out["pred_masks"]


def _assert_close(a, b, atol=ATOL):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=atol)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_converted_model_gives_the_plain_models_outputs(backbone):
    """160x224: the Swin 1/32 map (5x7) is not a multiple of the window, so padding slots are used."""
    model = _model(backbone, 0)
    x = torch.randn(1, 3, 160, 224)
    plain = _outputs(model, x)
    fast = prepare_for_inference(model)
    kinds = {type(m) for m in fast.modules()}
    assert InferenceConv2d in kinds and InferenceMSDeformAttn in kinds
    assert (InferenceSwinBlock in kinds) == (backbone == "swin")
    assert not any(isinstance(m, Conv2d) or type(m) is MSDeformAttn for m in fast.modules())
    _assert_close(_outputs(fast, x), plain)
    _assert_close(_outputs(fast, x), plain)  # a second call (packed weights reused) too


@pytest.mark.parametrize("backbone", BACKBONES)
def test_converted_model_follows_input_sizes(backbone):
    model = _model(backbone, 0)
    fast = prepare_for_inference(model)
    for shape in ((1, 3, 96, 128), (2, 3, 128, 96), (1, 3, 96, 128)):  # each size change re-packs
        x = torch.randn(*shape)
        _assert_close(_outputs(fast, x), _outputs(model, x))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_new_weights_reach_a_model_only_through_a_new_conversion(backbone):
    """Load other weights into the original under ``inference_mode`` (the case a version-keyed cache
    missed: inference tensors have no version counter): the old conversion keeps the old weights'
    outputs, a new conversion gives the new ones."""
    model, other = _model(backbone, 0), _model(backbone, 1)
    x = torch.randn(1, 3, 96, 128)
    old_outputs = _outputs(model, x)
    fast = prepare_for_inference(model)
    _assert_close(_outputs(fast, x), old_outputs)
    with torch.inference_mode():
        model.load_state_dict(other.state_dict())
    new_outputs = _outputs(model, x)
    _assert_close(new_outputs, _outputs(other, x), atol=0)
    assert (new_outputs[1] - old_outputs[1]).abs().max() > 1e-2  # the weights do change the outputs
    refreshed = prepare_for_inference(model)
    _assert_close(_outputs(refreshed, x), new_outputs)
    # the old conversion is a snapshot of the frozen norms it folded: not the new model
    assert (_outputs(fast, x)[1] - new_outputs[1]).abs().max() > 1e-2


HF_VARIANTS = {  # two of test_equivalence_hf's fp32 variants, run as the Predictor runs them
    "resnet": (dict(backbone="resnet_small_test", num_labels=19, num_queries=30, hidden_dim=96, feature_size=64,
                    mask_feature_size=64, encoder_layers=1, decoder_layers=7, dim_feedforward=64,
                    encoder_feedforward_dim=64), (1, 3, 224, 160)),
    "swin": (dict(backbone="swin_small_test", num_labels=5, num_queries=20, hidden_dim=64, feature_size=64,
                  mask_feature_size=64, encoder_layers=2, decoder_layers=4, num_attention_heads=4,
                  dim_feedforward=128, encoder_feedforward_dim=96), (2, 3, 192, 288)),
}


@pytest.mark.parametrize("name", sorted(HF_VARIANTS))
def test_converted_model_matches_transformers_fp32(tmp_path, name):
    """The converted model against ``transformers`` (random weights, random frozen-norm statistics)
    within test_equivalence_hf's fp32 bound."""
    pytest.importorskip("transformers")
    from hf_reference import hf_outputs, save_random_hf_model

    kw, shape = HF_VARIANTS[name]
    kw = dict(kw)
    hf = save_random_hf_model(tmp_path / "hf", kw.pop("backbone"), seed=3, **kw)
    fast = prepare_for_inference(m2f_core.load_model(tmp_path / "hf"))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(103))
    with torch.inference_mode():
        ref = hf_outputs(hf.eval(), x)
        out = fast(x, return_aux=False)
    worst = max((ref[k] - out[k]).abs().max().item() for k in ("pred_logits", "pred_masks"))
    assert worst < 2e-5


def test_conversion_leaves_the_original_as_it_was():
    model = _model("resnet", 0).train()
    before = copy.deepcopy(model.state_dict())
    fast = prepare_for_inference(model)
    assert model.training and not fast.training
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert any(isinstance(m, Conv2d) for m in model.modules())
    # the original still trains: gradients reach its convolutions
    out = model(torch.randn(1, 3, 64, 64))
    out["pred_masks"].sum().backward()
    assert model.backbone.stem.conv1.weight.grad is not None
    # the modules the conversion keeps share their weights with the original (no second copy)
    assert fast.sem_seg_head.predictor.class_embed.weight is model.sem_seg_head.predictor.class_embed.weight


def test_inplace_conversion_returns_the_same_object():
    model = _model("swin", 0)
    x = torch.randn(1, 3, 96, 128)
    plain = _outputs(model, x)
    fast = prepare_for_inference(model, inplace=True)
    assert fast is model and any(isinstance(m, InferenceSwinBlock) for m in model.modules())
    _assert_close(_outputs(fast, x), plain)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_converted_model_refuses_a_state_dict(backbone):
    model = _model(backbone, 0)
    fast = prepare_for_inference(model)
    state = model.state_dict()
    with pytest.raises(RuntimeError, match="convert it again"):
        fast.load_state_dict(state)
    with pytest.raises(RuntimeError, match="convert it again"):  # a submodule holding derived weights too
        fast.sem_seg_head.pixel_decoder.load_state_dict(model.sem_seg_head.pixel_decoder.state_dict())


def test_predictor_predicts_with_the_weights_it_was_built_with():
    """``Predictor(model)`` converts a copy: the model given is not changed; a new Predictor sees new
    weights."""
    from m2f_core.predictor import Predictor

    model, other = _model("resnet", 0), _model("resnet", 1)
    image = (torch.rand(96, 128, 3) * 255).to(torch.uint8).numpy()
    predictor = Predictor(model, device="cpu", min_size=96, max_size=128)
    assert not any(isinstance(m, InferenceConv2d) for m in model.modules())
    x, _ = predictor.preprocess(image)
    first = predictor.predict(image)
    _assert_close((first.pred_logits[None], first.pred_masks[None]), _outputs(model, x))
    with torch.inference_mode():
        model.load_state_dict(other.state_dict())
    second = Predictor(model, device="cpu", min_size=96, max_size=128).predict(image)
    _assert_close((second.pred_logits[None], second.pred_masks[None]), _outputs(other, x))
    assert (second.pred_masks - first.pred_masks).abs().max() > 1e-2


# ------------------------------------------------------------------------------- the fast modules
def _conv(kernel=3, stride=1, dilation=1, groups=1, norm="frozen", activation=F.relu_, bias=False, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if norm == "frozen":
        norm_layer = FrozenBatchNorm2d(32)
        with torch.no_grad():
            _randomize_norm(norm_layer, g)
    else:
        norm_layer = torch.nn.GroupNorm(8, 32) if norm == "group" else None
    conv = Conv2d(16, 32, kernel_size=kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                  groups=groups, bias=bias, norm=norm_layer, activation=activation).eval()
    if bias:
        torch.nn.init.normal_(conv.bias)
    return conv


@pytest.mark.parametrize("kernel, stride, dilation, groups", [(1, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 1), (3, 1, 1, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_folded_conv_equals_conv_then_frozen_norm(kernel, stride, dilation, groups, channels_last, with_residual):
    conv = _conv(kernel, stride, dilation, groups)
    fast = InferenceConv2d(conv)
    assert fast.norm is None  # folded
    x = torch.randn(2, 16, 23, 17)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        residual = torch.randn(2, 32, *conv(x).shape[-2:]) if with_residual else None
        reference = conv(x, residual=residual)
        out = fast(x, residual=residual)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert (out >= 0).all()  # the ReLU came after the residual add
    if channels_last and onednn.ENABLED:  # NHWC in, NHWC out: the next layer reads it without a reorder
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("norm", ["group", None])
def test_conv_with_a_norm_that_does_not_fold(norm):
    """GroupNorm runs after the (packed) convolution, then the activation; no norm: conv + bias."""
    conv = _conv(norm=norm, activation=F.relu, bias=True)
    fast = InferenceConv2d(conv)
    x = torch.randn(1, 16, 20, 20)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), conv(x), rtol=1e-5, atol=1e-5)


def test_folded_conv_follows_the_input_shape_and_serves_other_dtypes_and_grad():
    conv = _conv(activation=None)
    fast = InferenceConv2d(conv)
    small, large = torch.randn(1, 16, 12, 12), torch.randn(1, 16, 40, 24)
    with torch.inference_mode():
        for x in (small, large, small):  # each shape change re-packs
            torch.testing.assert_close(fast(x), conv(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast(small), conv(small), rtol=1e-5, atol=1e-5)  # aten path under autograd
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(fast)(large), fast(large))  # a used one copies (packs again)
        conv64 = copy.deepcopy(conv).double()
        torch.testing.assert_close(InferenceConv2d(conv64)(small.double()), conv64(small.double()),
                                   rtol=1e-10, atol=1e-10)


def test_stem_turns_its_input_nhwc():
    model = prepare_for_inference(_model("resnet", 0))
    assert model.backbone.stem.conv1.channels_last_input
    with torch.inference_mode():
        features = model.backbone(torch.randn(1, 3, 64, 64))
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in features.values())


@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("hw", [(8, 12), (7, 10), (5, 3), (13, 9), (1, 1)])
def test_gathered_swin_windows_equal_the_official_pad_roll_partition(hw, qkv_bias):
    """The gathered windows (qkv and output projection on the real tokens only, padding slots given
    the qkv bias) equal the official pad / roll / partition / reverse order: regular and shifted
    blocks, fp64."""
    torch.manual_seed(0)
    h, w = hw
    layer = BasicLayer(dim=8, depth=2, num_heads=2, window_size=4, mlp_ratio=2.0, qkv_bias=qkv_bias,
                       drop_path=[0.0, 0.0], downsample=False).double().eval()
    mask = layer.shift_mask(h, w, torch.device("cpu")).double()
    x = torch.randn(2, h * w, 8, dtype=torch.float64)
    with torch.inference_mode():
        for block in layer.blocks:
            torch.testing.assert_close(InferenceSwinBlock(block)(x, h, w, mask), block(x, h, w, mask),
                                       rtol=0, atol=1e-12)


def test_swin_window_index_inverts_itself():
    """Gathering the tokens into windows and scattering them back is the identity; padding slots
    are exactly the ones outside the map."""
    h, w, ws = 7, 10, 4
    for shift in (0, 2):
        index = window_index(h, w, ws, shift, torch.device("cpu"))
        tokens = torch.arange(h * w)
        windows = tokens[index.gather]
        assert torch.equal(windows[index.scatter], tokens)
        assert index.gather.numel() == 8 * 12 and index.pad.numel() == 8 * 12 - h * w


def test_sampling_locations_in_level_units_equal_the_official_ones():
    torch.manual_seed(0)
    attn = MSDeformAttn(32, 3, 4, 2).double()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    fast = InferenceMSDeformAttn(attn)
    query, ref = torch.randn(2, 40, 32, dtype=torch.float64), torch.rand(2, 40, 3, 2, dtype=torch.float64)
    for shapes in ([(16, 16), (8, 8), (4, 4)], [(9, 13), (5, 7), (3, 4)]):
        with torch.inference_mode():
            torch.testing.assert_close(fast.sampling_locations(query, ref, shapes),
                                       attn.sampling_locations(query, ref, shapes))
        value = torch.randn(2, sum(h * w for h, w in shapes), 32, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(fast(query, ref, value, shapes), attn(query, ref, value, shapes))


# ------------------------------------------------------------------------------ no hidden state
def test_no_module_of_the_library_reads_tensor_addresses_or_version_counters():
    """Caches keyed on ``data_ptr()`` / ``_version`` went stale (inference tensors have no version);
    the only address use left hands buffers to the C kernel (``ops/native.py``). ``mallopt`` is called
    from ``runtime.py`` only."""
    root = Path(m2f_core.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            where = path.relative_to(root).as_posix()
            allowed = {"data_ptr": "ops/native.py", "mallopt": "runtime.py"}
            if name in ("_version", "version_key", "is_inference") or (name in allowed and where != allowed[name]):
                found.append(f"{where}:{node.lineno} {name}")
    assert not found, found
    assert not (root / "ops" / "weight_cache.py").exists()


def test_building_a_predictor_changes_nothing_process_wide(monkeypatch):
    """No mallopt, no inductor flag: tuning the process is the program's call (``runtime.tune_process``;
    ``mallopt`` appears nowhere else, see the test above)."""
    import torch._inductor.config as inductor_config

    from m2f_core import runtime
    from m2f_core.predictor import Predictor

    calls = []
    monkeypatch.setattr(runtime, "tune_malloc", lambda: calls.append("tune_malloc"))
    monkeypatch.setattr(runtime, "tune_process", lambda: calls.append("tune_process"))
    freezing = inductor_config.freezing
    model = _model("resnet", 0)
    Predictor(model, device="cpu", min_size=96, max_size=128)
    Predictor(model, device="cpu", compile=True)  # compiles lazily, with freezing for itself only
    assert calls == []
    assert inductor_config.freezing == freezing
