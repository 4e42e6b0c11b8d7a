"""The fused-gather deformable attention and the C kernel equal the grid_sample reference."""

from __future__ import annotations

import pytest
import torch

from m2f_core.ops import ms_deform_attn_core, ms_deform_attn_gather, native
from m2f_core.ops.ms_deform_attn import ms_deform_attn_fast

SHAPES = [(13, 17), (7, 9), (4, 5)]


def _inputs(dtype: torch.dtype, n: int = 2, lq: int = 23, m: int = 4, d: int = 8, points: int = 3, spread=0.3):
    g = torch.Generator().manual_seed(0)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(n, s, m, d, generator=g, dtype=dtype)
    # locations partly outside [0, 1] so the zero padding and the borders are exercised
    loc = torch.rand(n, lq, m, len(SHAPES), points, 2, generator=g, dtype=dtype) * (1 + 2 * spread) - spread
    attn = torch.rand(n, lq, m, len(SHAPES), points, generator=g, dtype=dtype)
    return value, loc, attn / attn.sum((-1, -2), keepdim=True)


@pytest.mark.parametrize("spread", [0.0, 0.3, 2.0])
def test_gather_equals_grid_sample_fp64(spread):
    value, loc, attn = _inputs(torch.float64, spread=spread)
    ref = ms_deform_attn_core(value, SHAPES, loc, attn)
    out = ms_deform_attn_gather(value, SHAPES, loc, attn)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)


def test_gather_on_exact_pixel_centres_and_edges():
    """Samples exactly on pixel centres, on the map border and exactly at 0 and 1."""
    value, _, _ = _inputs(torch.float64)
    h, w = SHAPES[0]
    xs = torch.tensor([0.0, 0.5 / w, 1.0 - 0.5 / w, 1.0, 3.5 / w, -0.5 / w])
    ys = torch.tensor([0.0, 0.5 / h, 1.0 - 0.5 / h, 1.0, 2.5 / h, 1.0 + 0.5 / h])
    loc = torch.stack([xs, ys], -1).view(1, 6, 1, 1, 1, 2).expand(2, 6, 4, 3, 1, 2).contiguous().double()
    attn = torch.full((2, 6, 4, 3, 1), 1 / 3, dtype=torch.float64)
    assert torch.allclose(ms_deform_attn_gather(value, SHAPES, loc, attn),
                          ms_deform_attn_core(value, SHAPES, loc, attn), atol=1e-12, rtol=0)


def test_gather_fp32_within_rounding():
    value, loc, attn = _inputs(torch.float32, lq=200, m=8, d=32, points=4)
    ref = ms_deform_attn_core(value.double(), SHAPES, loc.double(), attn.double())
    out = ms_deform_attn_gather(value, SHAPES, loc, attn)
    assert (out.double() - ref).abs().max() < 2e-6


def test_gather_gradients_equal_grid_sample():
    value, loc, attn = _inputs(torch.float64)
    grads = []
    for fn in (ms_deform_attn_core, ms_deform_attn_gather):
        v, p, a = (t.clone().requires_grad_(True) for t in (value, loc, attn))
        out = fn(v, SHAPES, p, a)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append((v.grad, p.grad, a.grad))
    for ref, got in zip(*grads, strict=True):
        assert torch.allclose(got, ref, atol=1e-10, rtol=0)


def test_gather_gradcheck():
    value, loc, attn = _inputs(torch.float64, n=1, lq=3, m=2, d=2, points=2)
    inputs = tuple(t.clone().requires_grad_(True) for t in (value, loc, attn))
    assert torch.autograd.gradcheck(lambda v, p, a: ms_deform_attn_gather(v, SHAPES, p, a), inputs)


def test_gather_bfloat16_runs_and_is_close():
    value, loc, attn = _inputs(torch.float32, lq=50, m=4, d=16)
    ref = ms_deform_attn_core(value, SHAPES, loc, attn)
    out = ms_deform_attn_gather(value.bfloat16(), SHAPES, loc.bfloat16(), attn.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fast_path_samples_half_inputs_in_fp32(dtype):
    """Under autocast the sampling runs in fp32 (the official ``cast_inputs=torch.float32``), with
    gradients back to the half-precision inputs (CUDA has no bf16 backward for the gather)."""
    value, loc, attn = (t.to(dtype).requires_grad_(True) for t in _inputs(torch.float32, lq=50, m=4, d=16))
    out = ms_deform_attn_fast(value, SHAPES, loc, attn)
    assert out.dtype == torch.float32
    ref = ms_deform_attn_core(value.double(), SHAPES, loc.double(), attn.double())
    assert (out.double() - ref).abs().max() < 1e-5
    out.sum().backward()
    assert value.grad.dtype == dtype and torch.isfinite(value.grad.float()).all()
    assert loc.grad.dtype == dtype and attn.grad.dtype == dtype


def test_sampling_locations_stay_fp32_under_autocast():
    """bf16 locations would be off by up to half a pixel on a 256-pixel level; they stay fp32."""
    from m2f_core.ops import MSDeformAttn

    torch.manual_seed(0)
    attn = MSDeformAttn(32, 3, 4, 2)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)  # offsets of a few pixels
    query, ref = torch.randn(1, 40, 32), torch.rand(1, 40, 3, 2)
    shapes = [(256, 256), (128, 128), (64, 64)]
    exact = attn.sampling_locations(query, ref, shapes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = attn.sampling_locations(query.bfloat16(), ref, shapes)
    assert mixed.dtype == torch.float32
    # only the bf16 rounding of the query remains (0.07 px measured); bf16 locations near 1 are
    # spaced 2^-8 apart, i.e. up to half a pixel of rounding on this 256-pixel level
    assert ((mixed - exact).abs() * 256).max() < 0.15
    assert ((exact.bfloat16().float() - exact).abs() * 256).max() > 0.2


def test_sampling_locations_are_the_reference_plus_offsets_in_level_units():
    """reference + offset / (W, H) of the offset's level, as the official module computes it, with
    autograd and at inference (where the scaled projection is cached per map size and recomputed
    after the weights change)."""
    from m2f_core.ops import MSDeformAttn

    torch.manual_seed(0)
    attn = MSDeformAttn(32, 3, 4, 2).double()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    query, ref = torch.randn(2, 40, 32, dtype=torch.float64), torch.rand(2, 40, 3, 2, dtype=torch.float64)

    def official(shapes):
        offsets = attn.sampling_offsets(query).view(2, 40, 4, 3, 2, 2)
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)
        return ref[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]

    for shapes in ([(16, 16), (8, 8), (4, 4)], [(9, 13), (5, 7), (3, 4)]):
        torch.testing.assert_close(attn.sampling_locations(query, ref, shapes), official(shapes))
        with torch.inference_mode():
            torch.testing.assert_close(attn.sampling_locations(query, ref, shapes), official(shapes))
            torch.testing.assert_close(attn.sampling_locations(query, ref, shapes), official(shapes))  # cached
    with torch.no_grad():
        attn.sampling_offsets.weight.mul_(2.0)
        torch.testing.assert_close(attn.sampling_locations(query, ref, shapes), official(shapes))


# ---------------------------------------------------------------------------------------- C kernel
native_only = pytest.mark.skipif(not native.available(), reason="no C compiler: the kernel is optional")


@native_only
@pytest.mark.parametrize("d", [32, 24])  # the kernel's compile-time head size and its run-time loop
@pytest.mark.parametrize("spread", [0.0, 0.3, 2.0])
def test_native_kernel_equals_grid_sample(spread, d):
    """fp32 kernel vs the fp64 reference, samples inside, on the border and far outside the maps."""
    value, loc, attn = _inputs(torch.float32, lq=300, m=8, d=d, points=4, spread=spread)
    ref = ms_deform_attn_core(value.double(), SHAPES, loc.double(), attn.double())
    out = native.ms_deform_attn_native(value, SHAPES, loc, attn)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out.double() - ref).abs().max() < 2e-6


@native_only
def test_native_kernel_on_exact_pixel_centres_and_edges_and_nan():
    value, _, _ = _inputs(torch.float32)
    h, w = SHAPES[0]
    xs = torch.tensor([0.0, 0.5 / w, 1.0 - 0.5 / w, 1.0, 3.5 / w, -0.5 / w, float("nan")])
    ys = torch.tensor([0.0, 0.5 / h, 1.0 - 0.5 / h, 1.0, 2.5 / h, 1.0 + 0.5 / h, 0.5])
    loc = torch.stack([xs, ys], -1).view(1, 7, 1, 1, 1, 2).expand(2, 7, 4, 3, 1, 2).contiguous()
    attn = torch.full((2, 7, 4, 3, 1), 1 / 3)
    out = native.ms_deform_attn_native(value, SHAPES, loc, attn)
    ref = ms_deform_attn_core(value.double(), SHAPES, loc.double(), attn.double())
    assert torch.allclose(out[:, :6].double(), ref[:, :6], atol=2e-6, rtol=0)
    assert torch.all(out[:, 6] == 0)  # a NaN location samples nothing (grid_sample: zeros padding)


@native_only
def test_native_kernel_threads_split_the_queries_without_changing_the_result():
    value, loc, attn = _inputs(torch.float32, n=3, lq=700, m=8, d=32, points=4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.ms_deform_attn_native(value, SHAPES, loc, attn)
        torch.set_num_threads(2)
        two = native.ms_deform_attn_native(value, SHAPES, loc, attn)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@native_only
@pytest.mark.parametrize("d", [32, 24])
@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_native_kernel_gradients_equal_the_reference(spread, d):
    """Gradients for values, sampling locations and attention weights (fp32 kernel vs fp64 gather,
    itself equal to grid_sample's); several threads accumulate the value gradient."""
    value, loc, attn = _inputs(torch.float32, n=2, lq=600, m=8, d=d, points=4, spread=spread)
    grad = torch.randn(2, 600, 8 * d, generator=torch.Generator().manual_seed(1))
    ref_inputs = [t.double().requires_grad_(True) for t in (value, loc, attn)]
    ms_deform_attn_gather(ref_inputs[0], SHAPES, ref_inputs[1], ref_inputs[2]).backward(grad.double())
    inputs = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        native.ms_deform_attn_native(inputs[0], SHAPES, inputs[1], inputs[2]).backward(grad)
    finally:
        torch.set_num_threads(before)
    for ours, ref in zip(inputs, ref_inputs):
        scale = ref.grad.abs().max()
        assert (ours.grad.double() - ref.grad).abs().max() <= 1e-5 * scale


def test_fast_dispatch(monkeypatch):
    """fp32 CPU (inference and training) goes to the kernel; other dtypes and traced exports to the
    differentiable gather."""
    from m2f_core.ops import ms_deform_attn as msda
    calls = []

    def fake_native(*args):
        calls.append("native")
        return msda.ms_deform_attn_gather(*args)
    monkeypatch.setattr(native, "ms_deform_attn_native", fake_native)
    monkeypatch.setattr(native, "available", lambda: True)
    value, loc, attn = _inputs(torch.float32)
    with torch.no_grad():
        msda.ms_deform_attn_fast(value, SHAPES, loc, attn)
    msda.ms_deform_attn_fast(value.requires_grad_(True), SHAPES, loc, attn).sum().backward()
    ref_value = value.detach().clone().requires_grad_(True)
    ms_deform_attn_core(ref_value, SHAPES, loc, attn).sum().backward()
    assert calls == ["native", "native"] and torch.allclose(value.grad, ref_value.grad, atol=1e-5, rtol=0)
    msda.ms_deform_attn_fast(value.detach().double(), SHAPES, loc.double(), attn.double())
    assert len(calls) == 2
    traced = torch.jit.trace(lambda v, lo, a: msda.ms_deform_attn_fast(v, SHAPES, lo, a), (value.detach(), loc, attn),
                             check_trace=False)
    assert len(calls) == 2
    # the traced graph computes the eager reference, on its example and on inputs it never saw
    # (nothing of the example was baked in as a constant), without calling the kernel
    v2, lo2, a2 = (t.flip(0) * (1.5 if i == 0 else 1.0) for i, t in enumerate((value.detach(), loc, attn)))
    for args in ((value.detach(), loc, attn), (v2, lo2, a2)):
        with torch.no_grad():
            assert torch.allclose(traced(*args), ms_deform_attn_core(args[0], SHAPES, *args[1:]), atol=1e-5, rtol=0)
    assert len(calls) == 2


@native_only
def test_kernel_without_openmp_gives_the_same_values_and_gradients(monkeypatch, tmp_path):
    """Built without OpenMP (M2F_NO_OPENMP=1, or a compiler without it) the queries are split over
    Python threads instead of torch's OpenMP threads: the same results, bit for bit."""
    value, loc, attn = _inputs(torch.float32, n=2, lq=700, m=8, d=32, points=4, spread=0.3)
    grad = torch.randn(2, 700, 8 * 32, generator=torch.Generator().manual_seed(1))

    def run():
        inputs = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
        out = native.ms_deform_attn_native(inputs[0], SHAPES, inputs[1], inputs[2])
        out.backward(grad)
        return [out.detach(), *(t.grad for t in inputs)], native._lib.ms_deform_attn_threaded()

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        default, default_threaded = run()
        monkeypatch.setenv("M2F_NO_OPENMP", "1")
        monkeypatch.setenv("M2F_EXT_CACHE", str(tmp_path))
        monkeypatch.setattr(native, "_tried", False)
        monkeypatch.setattr(native, "_lib", None)
        plain, plain_threaded = run()
    finally:
        torch.set_num_threads(before)
    assert plain_threaded == 0
    for a, b in zip(default, plain):
        assert torch.equal(a, b)


def test_heads_too_large_for_the_kernel_use_the_gather(monkeypatch):
    """The kernel keeps one head's channels on the stack: larger heads go to the gather."""
    from m2f_core.ops import ms_deform_attn as msda
    monkeypatch.setattr(native, "MAX_HEAD_DIM", 4)
    monkeypatch.setattr(native, "ms_deform_attn_native", lambda *args: pytest.fail("kernel called"))
    value, loc, attn = _inputs(torch.float32, d=8)
    out = msda.ms_deform_attn_fast(value, SHAPES, loc, attn)
    assert torch.allclose(out, ms_deform_attn_gather(value, SHAPES, loc, attn))


def test_no_native_env_falls_back(monkeypatch, tmp_path):
    """Without a compiler the kernel is unavailable and inference still runs (the gather)."""
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("M2F_EXT_CACHE", str(tmp_path / "ext"))
    assert not native.available()
    value, loc, attn = _inputs(torch.float32)
    from m2f_core.ops import ms_deform_attn_fast
    with torch.no_grad():
        out = ms_deform_attn_fast(value, SHAPES, loc, attn)
    assert torch.allclose(out, ms_deform_attn_gather(value, SHAPES, loc, attn))


@native_only
def test_eager_kernel_call_does_not_import_dynamo():
    """The eager path is a plain autograd function: the custom op (for torch.compile) would import
    torch._dynamo on its first call, about 2.7 s added to every process's first prediction."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from m2f_core.ops.ms_deform_attn import MSDeformAttn\n"
        "m = MSDeformAttn(32, 2, 2, 2)\n"
        "q, ref, src = torch.randn(1, 5, 32), torch.rand(1, 5, 2, 2), torch.randn(1, 20, 32)\n"
        "m(q, ref, src, [(4, 4), (2, 2)]).sum().backward()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


@native_only
def test_custom_op_registration_matches_the_eager_function():
    """``m2f_core::ms_deform_attn``, the operator ``torch.compile`` sees, gives the eager autograd
    function's values and gradients through its own autograd registration; ``opcheck`` validates its
    schema, fake (shape) implementation and autograd registration."""
    value, loc, attn = _inputs(torch.float32, n=2, lq=50, m=4, d=8, points=3)
    grad = torch.randn(2, 50, 4 * 8, generator=torch.Generator().manual_seed(1))
    shapes = native._flat_shapes(SHAPES)
    eager_inputs = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    eager = native.ms_deform_attn_native(eager_inputs[0], SHAPES, eager_inputs[1], eager_inputs[2])
    eager.backward(grad)
    op_inputs = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    out = torch.ops.m2f_core.ms_deform_attn(op_inputs[0], shapes, op_inputs[1], op_inputs[2])
    out.backward(grad)
    assert torch.equal(out, eager)
    for ours, ref in zip(op_inputs, eager_inputs):
        assert torch.equal(ours.grad, ref.grad)
    fresh = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    torch.library.opcheck(torch.ops.m2f_core.ms_deform_attn.default, (fresh[0], shapes, fresh[1], fresh[2]))
