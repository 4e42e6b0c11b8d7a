"""Behaviour of the network's parts, checked against independent references written here.

* ``ms_deform_attn_core`` / ``MSDeformAttn``: explicit-loop bilinear sampling in float64, and the
  Deformable DETR initialisation of the sampling offsets.
* ``build_model`` (small Swin and ResNet variants): output shapes on non-square inputs whose
  1/32 level is not a multiple of the Swin window, batch independence, gradients reaching every
  trainable parameter, frozen batch norm in the ResNet.
* Swin windows: partition / reverse, the shifted-window mask, and which tokens a shifted block mixes.
* The masked-attention rule of the transformer decoder (``sigmoid(resized logit) < 0.5``, fully
  masked queries attend everywhere, masked keys have no influence).

Everything runs on CPU with tiny sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import DEC_LAYERS, NUM_CLASSES, NUM_QUERIES, small_config
from torch import nn

from m2f_core import build_model
from m2f_core.backbone.swin import BasicLayer, SwinTransformerBlock, window_partition, window_reverse
from m2f_core.layers import FrozenBatchNorm2d
from m2f_core.ops import MSDeformAttn, ms_deform_attn_core
from m2f_core.transformer_decoder import MultiScaleMaskedTransformerDecoder

# ----------------------------------------------------------------------------------------------
# Independent references


def naive_ms_deform_attn(value: np.ndarray, shapes: list[tuple[int, int]], locations: np.ndarray,
                         weights: np.ndarray) -> np.ndarray:
    """Explicit loops: bilinear sampling at (x*W - 0.5, y*H - 0.5), zero outside, weighted sum.

    value (N, S, M, D), locations (N, Lq, M, L, P, 2) as (x, y), weights (N, Lq, M, L, P).
    Returns (N, Lq, M*D) with the heads concatenated.
    """
    n_batch, _, n_heads, dim = value.shape
    _, n_query, _, n_levels, n_points, _ = locations.shape
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = np.zeros((n_batch, n_query, n_heads * dim), dtype=np.float64)
    for n in range(n_batch):
        for q in range(n_query):
            for m in range(n_heads):
                acc = np.zeros(dim, dtype=np.float64)
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(n_points):
                        x, y = locations[n, q, m, lvl, p]
                        px, py = x * w - 0.5, y * h - 0.5
                        x0, y0 = math.floor(px), math.floor(py)
                        dx, dy = px - x0, py - y0
                        sample = np.zeros(dim, dtype=np.float64)
                        for xi, yi, c in ((x0, y0, (1 - dx) * (1 - dy)), (x0 + 1, y0, dx * (1 - dy)),
                                          (x0, y0 + 1, (1 - dx) * dy), (x0 + 1, y0 + 1, dx * dy)):
                            if 0 <= xi < w and 0 <= yi < h:
                                sample += c * value[n, starts[lvl] + yi * w + xi, m]
                        acc += weights[n, q, m, lvl, p] * sample
                out[n, q, m * dim:(m + 1) * dim] = acc
    return out


def naive_bilinear_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel bilinear resize of a (H, W) array, no antialiasing (``align_corners=False``)."""
    in_h, in_w = img.shape

    def taps(out_size: int, in_size: int) -> list[tuple[int, int, float]]:
        res = []
        for i in range(out_size):
            src = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
            i0 = min(int(math.floor(src)), in_size - 1)
            i1 = min(i0 + 1, in_size - 1)
            res.append((i0, i1, src - i0))
        return res

    out = np.zeros((out_h, out_w), dtype=np.float64)
    for i, (y0, y1, ly) in enumerate(taps(out_h, in_h)):
        for j, (x0, x1, lx) in enumerate(taps(out_w, in_w)):
            out[i, j] = ((1 - ly) * ((1 - lx) * img[y0, x0] + lx * img[y0, x1])
                         + ly * ((1 - lx) * img[y1, x0] + lx * img[y1, x1]))
    return out


# ----------------------------------------------------------------------------------------------
# 1-2. Multi-scale deformable attention

SHAPES = [(3, 4), (2, 3), (1, 2)]


def _deform_inputs(seed: int = 0):
    n, lq, m, d, p = 2, 5, 2, 3, 2
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    locs = torch.rand(n, lq, m, len(SHAPES), p, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    # borders, exact pixel centres / edges, far outside, and one coordinate in, one out
    specials = [(0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.5), (0.5, 0.0), (-0.2, 0.5), (0.5, 1.3),
                (-5.0, 7.0), (0.125, 1.0 / 6.0), (1.0 / 3.0, 0.25), (1.05, -0.05), (0.999, 0.001)]
    flat = locs.view(-1, 2)
    for i, xy in enumerate(specials):
        flat[i * 5] = torch.tensor(xy, dtype=torch.float64)
    weights = torch.rand(n, lq, m, len(SHAPES), p, generator=g, dtype=torch.float64)
    return value, locs, weights


def test_ms_deform_attn_core_matches_naive_loops():
    """The grid_sample implementation equals explicit bilinear sampling (zeros outside) in float64."""
    value, locs, weights = _deform_inputs()
    out = ms_deform_attn_core(value, SHAPES, locs, weights)
    ref = naive_ms_deform_attn(value.numpy(), SHAPES, locs.numpy(), weights.numpy())
    assert out.shape == (2, 5, 2 * 3)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-10)
    # the reference is not trivially zero, and far-outside points really give zero
    assert np.abs(ref).max() > 0.1
    far = torch.full_like(locs, 5.0)
    assert ms_deform_attn_core(value, SHAPES, far, weights).abs().max().item() == 0.0


def test_ms_deform_attn_core_detects_swapped_xy():
    """Guard on the reference test: swapping x and y changes the result (non-square levels)."""
    value, locs, weights = _deform_inputs(seed=1)
    ref = naive_ms_deform_attn(value.numpy(), SHAPES, locs.numpy(), weights.numpy())
    swapped = ms_deform_attn_core(value, SHAPES, locs.flip(-1).contiguous(), weights).numpy()
    assert np.abs(swapped - ref).max() > 1e-3


def test_ms_deform_attn_initial_offsets_follow_deformable_detr():
    """sampling_offsets starts at weight 0 and bias = (cos, sin)(2*pi*h/M) / max|.| * (p+1), per level."""
    torch.manual_seed(0)
    n_heads, n_levels, n_points = 8, 3, 4
    attn = MSDeformAttn(d_model=32, n_levels=n_levels, n_heads=n_heads, n_points=n_points)
    expected = []
    for h in range(n_heads):
        theta = 2 * math.pi * h / n_heads
        cx, cy = math.cos(theta), math.sin(theta)
        scale = max(abs(cx), abs(cy))
        for _ in range(n_levels):
            for p in range(n_points):
                expected += [cx / scale * (p + 1), cy / scale * (p + 1)]
    bias = attn.sampling_offsets.bias.detach().double().numpy()
    np.testing.assert_allclose(bias, np.array(expected), atol=1e-5, rtol=0)  # float32, as the official init
    assert attn.sampling_offsets.weight.abs().max().item() == 0.0
    # head 0 points right (+x), head 2 of 8 points down (+y), in steps of 1..P pixels
    b = bias.reshape(n_heads, n_levels, n_points, 2)
    np.testing.assert_allclose(b[0, 1, :, 0], [1, 2, 3, 4], atol=1e-6)
    np.testing.assert_allclose(b[2, 2, :, 1], [1, 2, 3, 4], atol=1e-6)
    assert attn.attention_weights.weight.abs().max().item() == 0.0
    assert attn.attention_weights.bias.abs().max().item() == 0.0


def test_ms_deform_attn_module_matches_reference():
    """Module output (N, Lq, C) = out_proj(naive core of value_proj, ref + offset/(W_l, H_l), softmax)."""
    torch.manual_seed(0)
    c, m, n_levels, p = 12, 2, len(SHAPES), 2
    attn = MSDeformAttn(d_model=c, n_levels=n_levels, n_heads=m, n_points=p).double()
    with torch.no_grad():  # non-trivial offsets and attention weights
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    n, lq = 2, 5
    s = sum(h * w for h, w in SHAPES)
    query = torch.randn(n, lq, c, dtype=torch.float64)
    inp = torch.randn(n, s, c, dtype=torch.float64)
    ref_pts = torch.rand(n, lq, n_levels, 2, dtype=torch.float64)
    with torch.no_grad():
        out = attn(query, ref_pts, inp, SHAPES)
        assert out.shape == (n, lq, c)
        value = attn.value_proj(inp).view(n, s, m, c // m).numpy()
        off = attn.sampling_offsets(query).view(n, lq, m, n_levels, p, 2).numpy()
        logits = attn.attention_weights(query).view(n, lq, m, n_levels * p).numpy()
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = (w / w.sum(-1, keepdims=True)).reshape(n, lq, m, n_levels, p)
    locs = np.empty_like(off)
    for lvl, (h, wd) in enumerate(SHAPES):
        locs[:, :, :, lvl, :, 0] = ref_pts[:, :, None, lvl, None, 0].numpy() + off[:, :, :, lvl, :, 0] / wd
        locs[:, :, :, lvl, :, 1] = ref_pts[:, :, None, lvl, None, 1].numpy() + off[:, :, :, lvl, :, 1] / h
    core = naive_ms_deform_attn(value, SHAPES, locs, w)
    with torch.no_grad():
        ref = attn.output_proj(torch.from_numpy(core)).numpy()
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# 3-5. The whole model on small configs

def _build(backbone: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(small_config(backbone))


def _all_outputs(out: dict) -> list[tuple[str, torch.Tensor]]:
    items = [("pred_logits", out["pred_logits"]), ("pred_masks", out["pred_masks"])]
    for i, aux in enumerate(out["aux_outputs"]):
        items += [(f"aux{i}.pred_logits", aux["pred_logits"]), (f"aux{i}.pred_masks", aux["pred_masks"])]
    return items


BACKBONES = ["swin", "resnet"]

# A single row of windows once made window_partition return a non-contiguous view (fixed):
# these sizes stay in the tests as regressions.


@pytest.mark.parametrize("backbone, hw", [
    ("swin", (160, 224)), ("resnet", (160, 224)), ("resnet", (96, 160)),
    ("swin", (96, 160)),
])
def test_model_output_shapes(backbone, hw):
    """Eval outputs: logits (B, Q, K+1), masks (B, Q, H/4, W/4), dec_layers-1 aux outputs, finite.

    160x224 and 96x160 give 5x7 and 3x5 maps at 1/32: not multiples of the window (4), the
    second even smaller than one window.
    """
    model = _build(backbone).eval()
    h, w = hw
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        out = model(x)
    assert out["pred_logits"].shape == (2, NUM_QUERIES, NUM_CLASSES + 1)
    assert out["pred_masks"].shape == (2, NUM_QUERIES, h // 4, w // 4)
    assert len(out["aux_outputs"]) == DEC_LAYERS - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == out["pred_logits"].shape
        assert aux["pred_masks"].shape == out["pred_masks"].shape
    for name, t in _all_outputs(out):
        assert torch.isfinite(t).all(), name
    # the decoder layers do something: the last prediction differs from the learned-query one
    assert not torch.allclose(out["pred_masks"], out["aux_outputs"][0]["pred_masks"])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_inference_without_aux_gives_the_same_outputs(backbone):
    """``return_aux=False`` (the predictor's path) skips the intermediate full-size masks and folds
    the pixel decoder's 1x1 ``mask_features`` convolution into the mask embeddings: the same
    outputs (fp64: up to rounding; fp32: within 1e-4)."""
    model = _build(backbone).eval().double()
    x = torch.randn(1, 3, 160, 224, dtype=torch.float64)
    calls = []
    model.sem_seg_head.pixel_decoder.mask_features.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        full = model(x)
        assert calls == [1]
        lean = model(x, return_aux=False)
        assert calls == [1]  # folded: the convolution did not run over the map
    assert lean["aux_outputs"] == [] and len(full["aux_outputs"]) == DEC_LAYERS - 1
    torch.testing.assert_close(full["pred_logits"], lean["pred_logits"], rtol=0, atol=1e-10)
    torch.testing.assert_close(full["pred_masks"], lean["pred_masks"], rtol=0, atol=1e-10)
    model.float()
    with torch.no_grad():
        full, lean = model(x.float()), model(x.float(), return_aux=False)
    torch.testing.assert_close(full["pred_logits"], lean["pred_logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(full["pred_masks"], lean["pred_masks"], rtol=0, atol=1e-4)


def test_model_moved_under_inference_mode_runs():
    """Parameters copied under ``inference_mode`` are inference tensors (no version counter; found on
    CUDA, where ``.to(device)`` copies): the model still runs and gives the same outputs."""
    model = _build("resnet").eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        ref = model(x, return_aux=False)
        copy = _build("resnet").eval()
        copy.load_state_dict(model.state_dict())
        copy = copy.to(torch.float64).to(torch.float32)  # fresh parameter tensors, made in inference mode
        assert next(copy.parameters()).is_inference()
        for _ in range(2):
            out = copy(x, return_aux=False)
            assert torch.equal(out["pred_masks"], ref["pred_masks"])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_model_batch_independence(backbone):
    """Each image's outputs do not depend on the other images of the batch.

    Run in float64: the hard ``sigmoid < 0.5`` attention mask flips on fp32 rounding noise of
    logits near 0 (batched vs single kernels), which would test luck rather than independence.
    """
    model = _build(backbone).eval().double()
    x = torch.randn(2, 3, 160, 224, dtype=torch.float64)
    with torch.no_grad():
        both = model(x)
        singles = [model(x[i:i + 1]) for i in range(2)]
    for i in range(2):
        for (name, a), (_, b) in zip(_all_outputs(both), _all_outputs(singles[i]), strict=True):
            torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    # the two images do give different outputs (the check above is not vacuous)
    assert (both["pred_masks"][0] - both["pred_masks"][1]).abs().max() > 1e-3


@pytest.mark.parametrize("backbone", BACKBONES)
def test_training_backward_reaches_every_parameter(backbone):
    """A loss over every output (aux included) gives a finite gradient to every trainable parameter."""
    model = _build(backbone).train()
    torch.manual_seed(1)  # Swin drop path is random in training mode
    x = torch.randn(2, 3, 96, 128)
    out = model(x)
    loss = sum(t.float().square().mean() + t.float().mean() for _, t in _all_outputs(out))
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"parameters without gradient (unused): {missing}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    nonzero = sum(bool(p.grad.abs().max() > 0) for _, p in trainable)
    assert nonzero >= 0.95 * len(trainable), f"only {nonzero}/{len(trainable)} parameters got a non-zero grad"


def test_resnet_uses_frozen_batch_norm_buffers():
    """The ResNet has no nn.BatchNorm2d; FrozenBatchNorm2d holds buffers only and is unchanged by training."""
    model = _build("resnet").train()
    backbone = model.backbone
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    frozen = [m for m in backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 1 + 4 * 4  # stem + (3 convs + shortcut) per stage, one block each
    for m in frozen:
        assert list(m.parameters(recurse=False)) == []
        buffers = {n for n, _ in m.named_buffers(recurse=False)}
        assert buffers == {"weight", "bias", "running_mean", "running_var"}
    # every backbone parameter is a convolution weight: no trainable norm affine parameter
    for name, p in backbone.named_parameters():
        assert name.endswith(".weight") and p.dim() == 4, name
    before = {n: b.clone() for n, b in backbone.named_buffers()}
    model(torch.randn(2, 3, 64, 96))
    for n, b in backbone.named_buffers():
        assert torch.equal(b, before[n]), f"{n} changed during a training forward"


# ----------------------------------------------------------------------------------------------
# 6. Swin windows


def test_window_partition_reverse_roundtrip():
    """window_partition cuts row-major ws x ws tiles per image; window_reverse puts them back exactly."""
    b, h, w, c, ws = 2, 8, 12, 3, 4
    x = torch.randn(b, h, w, c)
    win = window_partition(x, ws)
    assert win.shape == (b * (h // ws) * (w // ws), ws, ws, c)
    k = 0
    for bi in range(b):
        for i in range(h // ws):
            for j in range(w // ws):
                assert torch.equal(win[k], x[bi, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws])
                k += 1
    assert torch.equal(window_reverse(win, ws, h, w), x)


@pytest.mark.parametrize("batch, hw", [
    (2, (3, 5)), (1, (5, 3)), (1, (7, 10)),
    (1, (3, 5)),
])
def test_swin_block_any_map_size(batch, hw):
    """A (non-shifted) Swin block runs on maps that are not multiples of the window, batch 1 included,
    and keeps (B, H*W, C)."""
    torch.manual_seed(0)
    h, w = hw
    block = SwinTransformerBlock(dim=8, num_heads=2, window_size=4, shift_size=0, mlp_ratio=2.0,
                                 qkv_bias=True, drop_path=0.0).eval()
    x = torch.randn(batch, h * w, 8)
    with torch.no_grad():
        out = block(x, h, w, None)
    assert out.shape == (batch, h * w, 8) and torch.isfinite(out).all()
    # attention stays inside the 4x4 windows of the padded map: changing the last token changes the
    # tokens of its window and of no other window, nor any other image of the batch
    y = x.clone()
    y[-1, -1] += torch.linspace(-1.0, 1.0, 8)  # not a constant shift: the norm would remove that
    with torch.no_grad():
        moved = (block(y, h, w, None) - out).abs().amax(-1).reshape(batch, h, w)
    rows, cols = torch.arange(h)[:, None], torch.arange(w)[None, :]
    same_window = (rows // 4 == (h - 1) // 4) & (cols // 4 == (w - 1) // 4)
    assert (moved[-1][same_window] > 1e-4).all()
    assert (~same_window).any() and moved[-1][~same_window].max() <= 1e-6
    if batch > 1:
        assert moved[:-1].max() <= 1e-6


def test_swin_layer_traces_for_torch_compile_without_graph_breaks():
    """A Swin stage (the official pad / roll / partition order; the gathered windows are the converted
    model's, ``m2f_core.accelerate``) compiles as one graph: no fallback to eager."""
    torch.manual_seed(0)
    layer = BasicLayer(dim=8, depth=2, num_heads=2, window_size=4, mlp_ratio=2.0, qkv_bias=True,
                       drop_path=[0.0, 0.0], downsample=False).eval()
    x = torch.randn(1, 7 * 10, 8)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(lambda t: layer(t, 7, 10)[0])(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("hw", [(8, 12), (7, 10), (4, 4), (5, 3),
                                (3, 5)])
def test_shift_mask(hw):
    """(nW, ws^2, ws^2) of 0 / -100, zero diagonal, zero off the last window row/column, and equal
    to the region labelling of the padded map (rows/cols split at -ws and -shift)."""
    h, w = hw
    ws = 4
    layer = BasicLayer(dim=8, depth=2, num_heads=1, window_size=ws, mlp_ratio=1.0, qkv_bias=True,
                       drop_path=[0.0, 0.0], downsample=False)
    s = layer.shift_size
    mask = layer.shift_mask(h, w, torch.device("cpu"))
    nh, nw = -(-h // ws), -(-w // ws)
    hp, wp = nh * ws, nw * ws
    assert mask.shape == (nh * nw, ws * ws, ws * ws)
    assert set(mask.unique().tolist()) <= {0.0, -100.0}
    assert (mask.diagonal(dim1=1, dim2=2) == 0).all()

    def region(i: int, size: int) -> int:
        return 0 if i < size - ws else (1 if i < size - s else 2)

    for wi in range(nh):
        for wj in range(nw):
            m = mask[wi * nw + wj]
            if wi < nh - 1 and wj < nw - 1:
                assert (m == 0).all(), (wi, wj)
            labels = [region(wi * ws + r, hp) * 3 + region(wj * ws + c, wp)
                      for r in range(ws) for c in range(ws)]
            expected = torch.tensor([[0.0 if a == b else -100.0 for b in labels] for a in labels])
            assert torch.equal(m, expected), (wi, wj)
    # the last window of a multi-window map mixes 4 regions
    if nh > 1 and nw > 1:
        assert (mask[-1] == -100).any()


def test_shifted_block_mixes_only_tokens_of_the_same_shifted_window():
    """In a shifted block, output token p depends on input token q only when both fall in the same
    window of the cyclically shifted, padded map and in the same region (no wrap-around leak)."""
    torch.manual_seed(0)
    h, w, ws, c = 7, 10, 4, 8
    s = ws // 2
    layer = BasicLayer(dim=c, depth=2, num_heads=2, window_size=ws, mlp_ratio=2.0, qkv_bias=True,
                       drop_path=[0.0, 0.0], downsample=False).double().eval()
    block: SwinTransformerBlock = layer.blocks[1]
    assert block.shift_size == s
    mask = layer.shift_mask(h, w, torch.device("cpu")).double()
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws

    def region(i: int, size: int) -> int:
        return 0 if i < size - ws else (1 if i < size - s else 2)

    def key(i: int, j: int) -> tuple[int, int, int]:
        ri, rj = (i - s) % hp, (j - s) % wp  # position after torch.roll(-s)
        return ri // ws, rj // ws, region(ri, hp) * 3 + region(rj, wp)

    x = torch.randn(2, h * w, c, dtype=torch.float64)  # batch 2: the mask must broadcast per image
    delta = torch.randn(2, c, dtype=torch.float64)  # not a constant shift, which LayerNorm would erase
    with torch.no_grad():
        base = block(x, h, w, mask)
        for q in range(h * w):
            xq = x.clone()
            xq[:, q] += delta
            changed = (block(xq, h, w, mask) - base).abs().amax(-1) > 1e-9  # (2, H*W)
            expected = torch.tensor([key(*divmod(p, w)) == key(*divmod(q, w)) for p in range(h * w)])
            assert torch.equal(changed, expected.expand(2, -1)), f"token {divmod(q, w)}"


# ----------------------------------------------------------------------------------------------
# 7. The masked attention of the transformer decoder


class FixedMaskEmbed(nn.Module):
    """Stands in for ``mask_embed``: the same (B, Q, mask_dim) embedding whatever the queries."""

    def __init__(self, embed: torch.Tensor):
        super().__init__()
        self.register_buffer("embed", embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[:2] == self.embed.shape[:2]
        return self.embed


HEADS = 2
FEATURE_SIZES = [(3, 4), (5, 7), (9, 13)]  # decoder levels, low to high resolution
MASK_SIZE = (12, 17)


def _decoder_with_known_masks():
    """A float64 decoder whose mask logits are fixed: query 0 mixed, 1 exactly 0 (sigmoid = 0.5, not
    masked), 2 very negative (fully masked), 3 very positive; query 0 differs between images."""
    torch.manual_seed(0)
    b, q, c, mask_dim = 2, 4, 16, 6
    dec = MultiScaleMaskedTransformerDecoder(in_channels=c, num_classes=3, hidden_dim=c, num_queries=q,
                                             nheads=HEADS, dim_feedforward=32, dec_layers=4,
                                             mask_dim=mask_dim).double().eval()
    mask_features = torch.randn(b, mask_dim, *MASK_SIZE, dtype=torch.float64)
    mask_features[:, 0] = 1.0
    embed = torch.zeros(b, q, mask_dim, dtype=torch.float64)
    embed[:, 0, 1:] = torch.randn(b, mask_dim - 1, dtype=torch.float64)
    embed[:, 2, 0] = -50.0
    embed[:, 3, 0] = 50.0
    dec.mask_embed = FixedMaskEmbed(embed)
    logits = torch.einsum("bqc,bchw->bqhw", embed, mask_features).numpy()
    return dec, mask_features, logits


def _reference_mask(logits: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(B, Q, h*w) bool, True = masked: sigmoid of the bilinearly resized logit below 0.5."""
    b, q = logits.shape[:2]
    out = np.zeros((b, q, size[0] * size[1]), dtype=bool)
    for i in range(b):
        for j in range(q):
            resized = naive_bilinear_resize(logits[i, j], *size)
            out[i, j] = (1.0 / (1.0 + np.exp(-resized)) < 0.5).reshape(-1)
    return torch.from_numpy(out)


def test_prediction_heads_attention_mask_rule():
    """attn_mask = sigmoid(bilinear resize of the mask logits) < 0.5, shape (B, Q, h*w) (one mask for
    all heads, broadcast in the attention), fully masked rows cleared; computed from the mask features resized to the
    level (linearity), it equals resizing the full-size logits; pred_masks are the logits themselves."""
    dec, mask_features, logits = _decoder_with_known_masks()
    b, q = logits.shape[:2]
    output = torch.randn(q, b, 16, dtype=torch.float64)
    for size in FEATURE_SIZES:
        with torch.no_grad():
            cls, embed = dec.forward_prediction_heads(output)
            masks = torch.einsum("bqc,bchw->bqhw", embed, mask_features)
            level = F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False)
            attn_mask = dec.attention_mask(embed, level)
        assert cls.shape == (b, q, 3 + 1)
        np.testing.assert_allclose(masks.numpy(), logits, atol=1e-12, rtol=0)
        assert attn_mask.dtype == torch.bool and attn_mask.shape == (b, q, size[0] * size[1])
        ref = _reference_mask(logits, size)
        assert ref[:, 0].any() and not ref[:, 0].all()  # query 0 is partly masked
        assert not ref[:, 1].any() and ref[:, 2].all() and not ref[:, 3].any()
        assert not torch.equal(ref[0, 0], ref[1, 0])  # the two images differ
        ref[ref.all(-1)] = False  # query 2 masks everything: it attends everywhere instead
        for i in range(b):
            assert torch.equal(attn_mask[i], ref[i]), (size, i)


def test_decoder_unmasks_fully_masked_queries_and_masks_keys():
    """In forward, every cross-attention layer l gets the rule's mask at level l % 3 with fully masked
    rows cleared; keys it masks have no influence on the query, others do."""
    dec, mask_features, logits = _decoder_with_known_masks()
    b = logits.shape[0]
    feats = [torch.randn(b, 16, h, w, dtype=torch.float64) for h, w in FEATURE_SIZES]
    seen_masks: list[torch.Tensor] = []
    first_out: list[torch.Tensor] = []

    def grab_mask(_module, _args, kwargs):
        seen_masks.append(kwargs["memory_mask"].clone())

    layers = dec.transformer_cross_attention_layers
    hooks = [layer.register_forward_pre_hook(grab_mask, with_kwargs=True) for layer in layers]
    hooks.append(layers[0].register_forward_hook(lambda _m, _a, out: first_out.append(out.clone())))
    with torch.no_grad():
        out = dec(feats, mask_features)
        # perturb, in image 0 of the first level, only the keys masked for query 0
        ref0 = _reference_mask(logits, FEATURE_SIZES[0])
        masked = ref0[0, 0].view(*FEATURE_SIZES[0])
        perturbed = [f.clone() for f in feats]
        perturbed[0][0, :, masked] += 3.0
        dec(perturbed, mask_features)
    for hook in hooks:
        hook.remove()

    assert len(out["aux_outputs"]) == len(layers) == 4 and len(seen_masks) == 2 * 4  # two forwards
    for lvl, seen in enumerate(seen_masks[:4]):
        size = FEATURE_SIZES[lvl % 3]
        expected = _reference_mask(logits, size)
        assert expected[:, 2].all()  # query 2's mask covers nothing ...
        expected[expected.all(-1)] = False  # ... so it attends everywhere
        assert seen.shape == (b, 4, size[0] * size[1])  # one mask for all heads
        assert torch.equal(seen, expected), f"layer {lvl}"
    # first cross-attention output (Q, B, C): query 0 of image 0 ignores the masked keys,
    # query 3 (attends everywhere) and query 2 (fully masked -> unmasked) see the change
    before, after = first_out
    assert (after[0, 0] - before[0, 0]).abs().max() < 1e-12
    assert (after[3, 0] - before[3, 0]).abs().max() > 1e-6
    assert (after[2, 0] - before[2, 0]).abs().max() > 1e-6
    assert (after[:, 1] - before[:, 1]).abs().max() < 1e-12  # image 1 untouched


def test_swin_preset_runs_on_one_row_of_windows():
    """coco_panoptic_swin_t on 224x320: the 1/32 map is 7x10, one row of 7x7 windows."""
    from m2f_core import get_preset

    model = build_model(get_preset("coco_panoptic_swin_t").replace(num_queries=5)).eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 224, 320))
    assert feats["res5"].shape == (1, 768, 7, 10)


@pytest.mark.parametrize("masked", [False, True])
def test_multi_head_attention_matches_torch(masked):
    """The decoder's attention (one mask broadcast over the heads) equals nn.MultiheadAttention fed
    the mask repeated per head, values and gradients."""
    from m2f_core.transformer_decoder import multi_head_attention

    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(32, 4).double()
    torch.nn.init.normal_(attn.in_proj_bias)
    q, b, k = 5, 2, 11
    query = torch.randn(q, b, 32, dtype=torch.float64, requires_grad=True)
    key, value = torch.randn(k, b, 32, dtype=torch.float64), torch.randn(k, b, 32, dtype=torch.float64)
    mask = torch.rand(b, q, k) < 0.5 if masked else None
    if mask is not None:
        mask[:, :, 0] = False  # every query keeps a key (rows masked everywhere are cleared upstream)
    ours = multi_head_attention(attn, query, key, value, mask)
    repeated = None if mask is None else mask.repeat_interleave(4, dim=0)  # (B * heads, Q, K)
    theirs = attn(query, key, value, attn_mask=repeated, need_weights=False)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), query)
    (grad_theirs,) = torch.autograd.grad(theirs.square().sum(), query)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-10, atol=1e-10)
