"""Weights in every format: own safetensors, Detectron2 .pkl / .pth, HF hub cache; errors by name.

Detectron2 files are synthesised from converted weights (the official model-zoo files cannot be
downloaded here) in the model-zoo layout ``{"model": {name: ndarray}, "__author__": ...}``.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_reference import save_random_hf_model

from m2f_core import load_model, save_model
from m2f_core.checkpoint import UnsafePickleError, infer_config
from m2f_core.errors import CheckpointError

SMALL = dict(num_queries=12, hidden_dim=64, feature_size=64, mask_feature_size=64, encoder_layers=1,
             decoder_layers=3, num_attention_heads=8, dim_feedforward=64, encoder_feedforward_dim=64)


@pytest.fixture(scope="module")
def small_hf(tmp_path_factory) -> Path:
    """A small HF Swin model with 19 classes (the Cityscapes count, so the class list can be inferred)."""
    folder = tmp_path_factory.mktemp("hf_small")
    save_random_hf_model(folder, "swin_small_test", seed=5, num_labels=19, **SMALL)
    return folder


@pytest.fixture(scope="module")
def reference(small_hf):
    model = load_model(small_hf)
    x = torch.randn(1, 3, 160, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    return model, x, out


def _same_outputs(model, x, ref_out, atol=0.0):
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out["pred_logits"], ref_out["pred_logits"], atol=atol, rtol=0)
    assert torch.allclose(out["pred_masks"], ref_out["pred_masks"], atol=atol, rtol=0)


def _numpy_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def test_own_format_round_trip_is_exact(tmp_path, reference):
    model, x, out = reference
    save_model(model, tmp_path / "own")
    assert sorted(os.listdir(tmp_path / "own")) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "own")
    assert not loaded.training
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    _same_outputs(loaded, x, out)


def test_own_format_fp16_storage(tmp_path, reference):
    model, x, out = reference
    save_model(model, tmp_path / "fp32")
    save_model(model, tmp_path / "fp16", dtype=torch.float16)
    size32 = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    size16 = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    assert size16 < 0.6 * size32
    loaded = load_model(tmp_path / "fp16")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        logits = loaded(x)["pred_logits"]
    assert (logits - out["pred_logits"]).abs().max() < 0.05


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_detectron2_pkl_loads_to_the_same_outputs(tmp_path, reference, protocol):
    model, x, out = reference
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": _numpy_state(model), "__author__": "Detectron2 Model Zoo",
                     "matching_heuristics": True}, f, protocol=protocol)
    loaded = load_model(path)  # architecture inferred from shapes, class list from the class count
    assert loaded.config.dataset == "cityscapes" and loaded.config.num_queries == 12
    assert loaded.config.backbone.depths == (1, 2, 1, 1) and loaded.config.backbone.window_size == 4
    _same_outputs(loaded, x, out)


def test_detectron2_pth_loads_with_weights_only(tmp_path, reference):
    model, x, out = reference
    path = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 90000, "optimizer": {"lr": 1e-4}}, path)
    _same_outputs(load_model(path, config=model.config), x, out)


def test_official_extras_are_consumed_not_dropped(tmp_path, reference):
    """criterion.empty_weight and pixel_mean/std of an official checkpoint feed the config."""
    model, x, out = reference
    state = _numpy_state(model)
    empty = np.ones(model.config.num_classes + 1, dtype=np.float32)
    empty[-1] = 0.1
    state["criterion.empty_weight"] = empty
    state["pixel_mean"] = np.array([[[100.0]], [[110.0]], [[120.0]]], dtype=np.float32)
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps({"model": state}))
    loaded = load_model(path)
    assert loaded.config.pixel_mean == (100.0, 110.0, 120.0)
    assert loaded.config.no_object_weight == pytest.approx(0.1)


class _Payload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _EvalPayload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (eval, (f"open({self.path!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("kind", ["os.system", "eval"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, kind):
    marker = tmp_path / "marker"
    payload = _Payload(f"touch {marker}") if kind == "os.system" else _EvalPayload(str(marker))
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.x": payload}}))
    with pytest.raises(UnsafePickleError, match="refusing"):
        load_model(path)
    assert not marker.exists()
    # the same payload inside a .pth is refused by torch.load(weights_only=True)
    pth = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "extra": payload}, pth)
    with pytest.raises(UnsafePickleError):
        load_model(pth)
    assert not marker.exists()


def test_torch_tensors_inside_a_pkl_are_refused(tmp_path):
    path = tmp_path / "tensors.pkl"
    path.write_bytes(pickle.dumps({"model": {"a": torch.zeros(2)}}))
    with pytest.raises(UnsafePickleError, match="torch"):
        load_model(path)


def test_missing_unexpected_and_mismatched_keys_are_named(tmp_path, reference, caplog):
    model, x, out = reference
    state = _numpy_state(model)
    del state["sem_seg_head.predictor.query_feat.weight"]
    state["sem_seg_head.predictor.extra_head.weight"] = np.zeros(3, dtype=np.float32)
    state["sem_seg_head.predictor.query_embed.weight"] = np.zeros((12, 32), dtype=np.float32)
    path = tmp_path / "broken.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path, config=model.config)
    msg = str(err.value)
    assert "missing: sem_seg_head.predictor.query_feat.weight" in msg
    assert "unexpected: sem_seg_head.predictor.extra_head.weight" in msg
    assert "sem_seg_head.predictor.query_embed.weight: checkpoint (12, 32) vs model (12, 64)" in msg
    with caplog.at_level(logging.WARNING):
        lenient = load_model(path, config=model.config, strict=False)
    assert "query_feat.weight" in caplog.text and "extra_head.weight" in caplog.text
    assert torch.equal(lenient.state_dict()["sem_seg_head.predictor.class_embed.weight"],
                       model.state_dict()["sem_seg_head.predictor.class_embed.weight"])


def test_unknown_class_count_is_a_clear_error(reference):
    model, _, _ = reference
    state = dict(model.state_dict())
    state["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(8, 64)
    with pytest.raises(CheckpointError, match="7 classes.*pass config"):
        infer_config(state)


def test_truncated_and_corrupt_files(tmp_path, reference):
    model, _, _ = reference
    save_model(model, tmp_path / "own")
    weights = tmp_path / "own" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tmp_path / "own")
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "junk.pkl")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "does-not-exist.pkl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path / "folder")


def test_hub_id_offline_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_model("facebook/mask2former-swin-tiny-coco-panoptic", cache_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "facebook/mask2former-swin-tiny-coco-panoptic" in msg and "load_model('DIR')" in msg


def test_hub_id_loads_from_the_local_cache(tmp_path, small_hf, reference):
    """A hub id already in the huggingface_hub cache loads offline (cache layout built by hand)."""
    model, x, out = reference
    repo = tmp_path / "models--facebook--mask2former-test"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((small_hf / name).read_bytes())
    loaded = load_model("facebook/mask2former-test", cache_dir=tmp_path)
    _same_outputs(loaded, x, out)


def _fake_hub(monkeypatch, repos: dict[str, Path], cache: Path) -> list[tuple[str, tuple[str, ...], bool]]:
    """huggingface_hub without a network: each repository is a local folder; a download copies the
    files its ``allow_patterns`` match (fnmatch, as the hub does) into ``cache``; ``local_files_only``
    returns the cached folder when there is one. Returns the log of snapshot_download calls."""
    import fnmatch
    import shutil

    import huggingface_hub

    calls: list[tuple[str, tuple[str, ...], bool]] = []

    def list_repo_files(repo_id, **_):
        return sorted(p.name for p in repos[repo_id].iterdir())

    def snapshot_download(repo_id, allow_patterns=None, local_files_only=False, cache_dir=None, **_):
        calls.append((repo_id, tuple(allow_patterns or ()), local_files_only))
        dest = cache / repo_id.replace("/", "--")
        if local_files_only:
            if not dest.is_dir():
                raise OSError(f"{repo_id} is not cached")
            return str(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for f in repos[repo_id].iterdir():
            if allow_patterns is None or any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, dest / f.name)
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls


def _hub_repo(folder: Path, small_hf: Path, weights: tuple[str, ...]) -> Path:
    """A repository like the hub's: config, a README and the given kinds of weights of ``small_hf``."""
    from safetensors.torch import load_file

    folder.mkdir()
    (folder / "config.json").write_bytes((small_hf / "config.json").read_bytes())
    (folder / "README.md").write_text("model card")
    if "safetensors" in weights:
        (folder / "model.safetensors").write_bytes((small_hf / "model.safetensors").read_bytes())
    if "bin" in weights:
        torch.save(load_file(str(small_hf / "model.safetensors")), folder / "pytorch_model.bin")
    return folder


def test_hub_repo_with_only_pytorch_model_bin_loads(tmp_path, small_hf, reference, monkeypatch):
    """A repository without safetensors is fetched as pytorch_model.bin (read with weights_only) and
    loads to the same outputs; the second load comes from the cache with the hub unreachable."""
    model, x, out = reference
    repo = _hub_repo(tmp_path / "remote", small_hf, ("bin",))
    cache = tmp_path / "cache"
    calls = _fake_hub(monkeypatch, {"org/bin-only": repo}, cache)
    _same_outputs(load_model("org/bin-only", cache_dir=tmp_path), x, out)
    assert sorted(os.listdir(cache / "org--bin-only")) == ["config.json", "pytorch_model.bin"]
    downloads = [patterns for _, patterns, local in calls if not local]
    assert len(downloads) == 1 and "pytorch_model*.bin" in downloads[0]
    assert not any("safetensors" in p for p in downloads[0])

    import huggingface_hub

    def unreachable(*_, **__):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", unreachable)
    n = len(calls)
    _same_outputs(load_model("org/bin-only", cache_dir=tmp_path), x, out)
    assert all(local for _, _, local in calls[n:])


def test_hub_repo_with_both_formats_fetches_only_safetensors(tmp_path, small_hf, reference, monkeypatch):
    model, x, out = reference
    repo = _hub_repo(tmp_path / "remote", small_hf, ("safetensors", "bin"))
    cache = tmp_path / "cache"
    _fake_hub(monkeypatch, {"org/both": repo}, cache)
    _same_outputs(load_model("org/both", cache_dir=tmp_path), x, out)
    assert sorted(os.listdir(cache / "org--both")) == ["config.json", "model.safetensors"]


def test_hub_repo_without_weights_says_what_it_has(tmp_path, small_hf, monkeypatch):
    repo = _hub_repo(tmp_path / "remote", small_hf, ())
    (repo / "tf_model.h5").write_bytes(b"\0")
    calls = _fake_hub(monkeypatch, {"org/no-weights": repo}, tmp_path / "cache")
    with pytest.raises(CheckpointError) as err:
        load_model("org/no-weights", cache_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "'org/no-weights'" in msg and "no weights" in msg
    assert msg.endswith("the repository has: README.md, config.json, tf_model.h5")
    assert not any(not local for _, _, local in calls)  # nothing was downloaded


def test_hub_pytorch_model_bin_with_a_pickle_payload_never_runs(tmp_path, small_hf, monkeypatch):
    marker = tmp_path / "marker"
    repo = _hub_repo(tmp_path / "remote", small_hf, ())
    torch.save({"x": torch.zeros(1), "extra": _Payload(f"touch {marker}")}, repo / "pytorch_model.bin")
    _fake_hub(monkeypatch, {"org/evil": repo}, tmp_path / "cache")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_model("org/evil", cache_dir=tmp_path)
    assert not marker.exists()


def test_convert_cli(tmp_path, small_hf, reference):
    import subprocess
    import sys

    model, x, out = reference
    run = subprocess.run([sys.executable, "-m", "m2f_core.convert", str(small_hf), str(tmp_path / "ours")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "19 classes" in run.stdout
    _same_outputs(load_model(tmp_path / "ours"), x, out)
    bad = subprocess.run([sys.executable, "-m", "m2f_core.convert", str(tmp_path / "nope.pkl"), str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
