"""ONNX export + onnxruntime backend: equal to PyTorch within 1e-3 at several sizes from one file,
self-describing metadata, clear errors, the export cache and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from m2f_core import load_model, save_model  # noqa: E402
from m2f_core.config import BackboneConfig, Mask2FormerConfig  # noqa: E402
from m2f_core.model import build_model  # noqa: E402
from m2f_core.onnx_backend import (  # noqa: E402
    FORMAT,
    OnnxBackendError,
    OnnxModel,
    export_onnx,
    load_onnx_model,
    main,
)
from m2f_core.ops.ms_deform_attn import MSDeformAttn, ms_deform_attn_fast  # noqa: E402

TOLERANCE = 1e-3  # the bar; the measured differences are ~1e-6 (logits) and ~1e-5 (masks)


def tiny_config(backbone: str) -> Mask2FormerConfig:
    """Window 7 on maps of 8k pixels, so Swin pads its windows; every stage has a shifted block."""
    if backbone == "swin":
        bb = BackboneConfig(type="swin", embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)
    else:
        bb = BackboneConfig(type="resnet", stage_blocks=(1, 1, 1, 1), res2_out_channels=32, stem_out_channels=16)
    return Mask2FormerConfig(
        name=f"tiny_{backbone}", class_names=[f"c{i}" for i in range(5)], is_thing=[True, True, True, False, False],
        backbone=bb, conv_dim=64, mask_dim=64, hidden_dim=64, nheads=4, enc_layers=1, dec_layers=4,
        dim_feedforward=64, enc_dim_feedforward=64, num_queries=10, min_size_test=128, max_size_test=256,
    )


def tiny_model(backbone: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(tiny_config(backbone)).eval()


def image_like(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A normalised 'real-looking' input: smooth colour regions with edges and noise, zero padding."""
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = shape
    low = torch.rand(b, 3, max(h // 16, 1), max(w // 16, 1), generator=g) * 255
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="nearest")
    img = img + torch.randn(b, 3, h, w, generator=g) * 8
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    x = (img.clamp(0, 255) - mean) / std
    x[..., h - h // 8:, :] = 0  # the padding a predictor adds
    return x


def max_diffs(model: torch.nn.Module, onnx_model: OnnxModel, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        ref = model(x, return_aux=False)
    out = onnx_model(x)
    assert out["aux_outputs"] == []
    diffs = {}
    for key in ("pred_logits", "pred_masks"):
        assert out[key].shape == ref[key].shape and out[key].dtype == torch.float32
        diffs[key] = float((out[key] - ref[key]).abs().max())
    return diffs


@pytest.fixture(scope="module")
def swin_export(tmp_path_factory):
    model = tiny_model("swin")
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny_swin.onnx", example_size=(128, 128))
    return model, path


@pytest.mark.parametrize("shape", [(1, 3, 128, 128), (1, 3, 192, 320), (2, 3, 64, 32), (1, 3, 32, 32)])
def test_swin_export_equals_torch_at_several_sizes(swin_export, shape):
    """One file (traced at 128x128) serves other sizes, batches and a 1x1 coarsest level."""
    model, path = swin_export
    diffs = max_diffs(model, OnnxModel(path), image_like(shape))
    print(shape, diffs)
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_resnet_export_equals_torch_at_two_sizes(tmp_path):
    model = tiny_model("resnet")
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "tiny_resnet.onnx", example_size=(128, 128)))
    for shape in [(1, 3, 128, 128), (1, 3, 96, 224)]:
        diffs = max_diffs(model, onnx_model, image_like(shape, seed=1))
        print(shape, diffs)
        assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.slow
def test_builtin_model_export_equals_torch(tmp_path):
    """The shipped model at the app's sizes (256 short side; a non-square padded input)."""
    model = load_model()
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "builtin.onnx"))
    for shape in [(1, 3, 256, 256), (1, 3, 256, 384)]:
        diffs = max_diffs(model, onnx_model, image_like(shape, seed=2))
        print(shape, diffs)
        assert max(diffs.values()) <= TOLERANCE, diffs


def test_metadata_round_trip_and_module_like_api(swin_export):
    model, path = swin_export
    onnx_model = OnnxModel(path, num_threads=1)
    assert onnx_model.config.to_dict() == model.config.to_dict()
    assert onnx_model.metadata["m2f_format"] == FORMAT
    assert json.loads(onnx_model.metadata["m2f_dynamic"]) is True
    assert onnx_model.eval() is onnx_model and onnx_model.to("cpu") is onnx_model
    assert onnx_model.size_divisibility == 32
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["m2f_config"])["class_names"] == model.config.class_names


def test_export_restores_the_fast_deform_attn_and_writes_nothing_on_failure(tmp_path, monkeypatch):
    model = tiny_model("resnet")

    def broken_export(*args, **kwargs):
        assert all(m.core is not ms_deform_attn_fast for m in model.modules() if isinstance(m, MSDeformAttn))
        raise RuntimeError("exporter exploded\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(OnnxBackendError, match="^ONNX export failed: RuntimeError: exporter exploded$"):
        export_onnx(model, tmp_path / "m.onnx", example_size=(64, 64))
    assert all(m.core is ms_deform_attn_fast for m in model.modules() if isinstance(m, MSDeformAttn))
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def test_export_rejects_a_bad_example_size_and_a_model_without_config(tmp_path):
    model = tiny_model("resnet")
    with pytest.raises(OnnxBackendError, match="multiples of 32"):
        export_onnx(model, tmp_path / "m.onnx", example_size=(100, 128))
    model.config = None
    with pytest.raises(OnnxBackendError, match="no config"):
        export_onnx(model, tmp_path / "m.onnx")


def test_static_export_refuses_other_sizes(tmp_path):
    model = tiny_model("resnet")
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "static.onnx", example_size=(64, 96), dynamic=False))
    assert max(max_diffs(model, onnx_model, image_like((1, 3, 64, 96))).values()) <= TOLERANCE
    with pytest.raises(ValueError, match="exported for input shape"):
        onnx_model(torch.zeros(1, 3, 64, 64))


def test_bad_inputs_are_refused_with_one_line(swin_export):
    onnx_model = OnnxModel(swin_export[1])
    with pytest.raises(ValueError, match="multiples of 32"):
        onnx_model(torch.zeros(1, 3, 100, 128))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        onnx_model(torch.zeros(3, 128, 128))


def test_corrupt_missing_and_foreign_files(tmp_path, swin_export):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(swin_export[1].read_bytes()[:5000])
    for bad in (garbage, truncated):
        with pytest.raises(OnnxBackendError, match="not a readable ONNX model") as err:
            OnnxModel(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(OnnxBackendError, match="not found"):
        load_onnx_model(tmp_path / "absent.onnx")
    # a valid ONNX model that we did not write
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(foreign))
    with pytest.raises(OnnxBackendError, match="not exported by m2f_core.onnx_backend"):
        OnnxModel(foreign)


def test_missing_onnxruntime_is_one_clear_error(monkeypatch, swin_export):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(OnnxBackendError, match="onnxruntime is not installed"):
        OnnxModel(swin_export[1])
    with pytest.raises(OnnxBackendError, match="onnxruntime is not installed"):
        load_onnx_model(swin_export[1])


def test_load_onnx_model_exports_once_into_the_cache(tmp_path, monkeypatch):
    import m2f_core.onnx_backend as backend

    weights = save_model(tiny_model("resnet"), tmp_path / "weights")
    cache = tmp_path / "cache"
    first = load_onnx_model(weights, cache_dir=cache)
    assert first.path.parent == cache and [p.name for p in cache.iterdir()] == [first.path.name]
    assert first.config.name == "tiny_resnet"

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(backend, "export_onnx", no_export)
    assert load_onnx_model(weights, cache_dir=cache).path == first.path
    assert load_onnx_model(first, cache_dir=cache) is first
    # new weights at the same path (another mtime) get another cache entry
    monkeypatch.undo()
    stat = (weights / "model.safetensors").stat()
    os.utime(weights / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_onnx_model(weights, cache_dir=cache).path != first.path
    # a damaged cache entry is exported again
    first.path.write_bytes(b"broken")
    assert load_onnx_model(tmp_path / "weights", cache_dir=cache, config=None).path.is_file()
    with pytest.raises(OnnxBackendError, match="carries its own config"):
        load_onnx_model(first.path, config="synthetic_small")


def test_load_onnx_model_from_a_module(tmp_path):
    model = tiny_model("resnet")
    onnx_model = load_onnx_model(model, cache_dir=tmp_path)
    assert max(max_diffs(model, onnx_model, image_like((1, 3, 64, 64))).values()) <= TOLERANCE
    assert load_onnx_model(model, cache_dir=tmp_path).path == onnx_model.path


def test_predictor_with_the_onnxruntime_backend(swin_export):
    from m2f_core import Predictor

    model, path = swin_export
    rgb = (image_like((1, 3, 96, 160), seed=3)[0].permute(1, 2, 0) * 57 + 117).clamp(0, 255).byte().numpy()
    ref = Predictor(model, device="cpu").predict(rgb)
    out = Predictor(str(path), backend="onnxruntime").predict(rgb)
    assert out.pred_masks.shape == ref.pred_masks.shape
    assert float((out.pred_logits - ref.pred_logits).abs().max()) <= TOLERANCE
    assert float((out.pred_masks - ref.pred_masks).abs().max()) <= TOLERANCE


# --------------------------------------------------------------------------------------------
# the command line

def test_cli_exports_and_checks(tmp_path, capsys):
    weights = save_model(tiny_model("resnet"), tmp_path / "weights")
    out = tmp_path / "out" / "tiny.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(out), "--size", "64x96"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(out) and result["dynamic"] is True
    assert max(result["max_abs_diff"].values()) <= TOLERANCE
    assert OnnxModel(out).config.name == "tiny_resnet"


@pytest.mark.parametrize("argv, message", [
    (["export", "--out", "m.onnx", "--size", "100x100"], "multiples of 32"),
    (["export", "--out", "m.onnx", "--size", "big"], "size must be HxW"),
    (["export", "--weights", "/no/such/weights", "--out", "m.onnx"], "weights not found"),
    (["export", "--out", "m.txt"], "must end in .onnx"),
    (["export"], "--out"),
    ([], "command"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_cli_help_and_bad_input_as_a_process(repo_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--weights" in help_text and "--size" in help_text
    bad = subprocess.run([sys.executable, "-m", "m2f_core.onnx_backend", "export", "--weights", "/no/such",
                          "--out", "x.onnx"], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1


def test_numpy_is_not_required_as_input_type(swin_export):
    """The backend takes torch tensors, as the network does (a numpy array is a clear error)."""
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        OnnxModel(swin_export[1])(np.zeros((1, 3, 64, 64), np.float32))
