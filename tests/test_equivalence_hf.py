"""Numerical equivalence with Hugging Face ``transformers`` (our reference implementation).

HF models with seeded random weights are saved with ``save_pretrained``, loaded with
``load_model`` (key conversion + config derivation) and both are run on the same non-square input.
Every output is compared: ``pred_logits``, ``pred_masks`` and each auxiliary prediction.

The full-size R50 / Swin-T models are compared in float64: with random weights the mask logits
crowd around 0, where the decoder's hard ``sigmoid < 0.5`` attention mask flips on fp32 rounding
noise (~1 flip per million values), which would make an fp32 comparison of 9 stacked layers
measure luck rather than the implementation. The smaller variants are compared in fp32.
"""

from __future__ import annotations

import pytest
import torch
from hf_reference import hf_outputs, save_random_hf_model

from m2f_core import load_model

TOL = 1e-4


def _max_diffs(ref: dict, out: dict) -> list[tuple[str, float]]:
    diffs = [("pred_logits", (ref["pred_logits"] - out["pred_logits"]).abs().max().item()),
             ("pred_masks", (ref["pred_masks"] - out["pred_masks"]).abs().max().item())]
    assert len(ref["aux_outputs"]) == len(out["aux_outputs"])
    for i, (a, b) in enumerate(zip(ref["aux_outputs"], out["aux_outputs"])):
        diffs.append((f"aux{i}.logits", (a["pred_logits"] - b["pred_logits"]).abs().max().item()))
        diffs.append((f"aux{i}.masks", (a["pred_masks"] - b["pred_masks"]).abs().max().item()))
    return diffs


def _compare(tmp_path, backbone: str, shape: tuple[int, int, int, int], dtype: torch.dtype, seed: int, **hf_kw):
    hf = save_random_hf_model(tmp_path / "hf", backbone, seed=seed, **hf_kw)
    ours = load_model(tmp_path / "hf")
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 100))
    hf, ours, x = hf.to(dtype), ours.to(dtype), x.to(dtype)
    ref = hf_outputs(hf, x)
    with torch.no_grad():
        out = ours(x)
    b, _, h, w = shape
    num_layers = hf_kw.get("decoder_layers", 10)
    assert out["pred_logits"].shape == (b, hf.config.num_queries, hf.config.num_labels + 1)
    assert out["pred_masks"].shape == (b, hf.config.num_queries, h // 4, w // 4)
    assert len(out["aux_outputs"]) == num_layers - 1
    diffs = _max_diffs(ref, out)
    worst = max(d for _, d in diffs)
    assert worst <= TOL, [d for d in diffs if d[1] > TOL]
    return ours, worst


@pytest.mark.parametrize("backbone", ["r50", "swin_t"])
def test_full_size_models_match_transformers(tmp_path, backbone):
    ours, worst = _compare(tmp_path, backbone, (1, 3, 256, 320), torch.float64, seed=1)
    assert ours.config.num_queries == 100 and ours.config.num_decoder_layers == 9
    assert ours.config.backbone.type == ("resnet" if backbone == "r50" else "swin")


VARIANTS = {
    # other query counts, hidden dims, head counts, layer counts and class counts
    "swin_q20_h64": dict(backbone="swin_small_test", num_labels=5, num_queries=20, hidden_dim=64, feature_size=64,
                         mask_feature_size=64, encoder_layers=2, decoder_layers=4, num_attention_heads=4,
                         dim_feedforward=128, encoder_feedforward_dim=96),
    "resnet_q30_proj": dict(backbone="resnet_small_test", num_labels=19, num_queries=30, hidden_dim=96,
                            feature_size=64, mask_feature_size=64, encoder_layers=1, decoder_layers=7,
                            dim_feedforward=64, encoder_feedforward_dim=64),
    "swin_enforced_proj_1class": dict(backbone="swin_small_test", num_labels=1, num_queries=10, hidden_dim=64,
                                      feature_size=64, mask_feature_size=64, encoder_layers=3, decoder_layers=3,
                                      enforce_input_projection=True, dim_feedforward=64),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_small_variants_match_transformers_fp32(tmp_path, name):
    kw = dict(VARIANTS[name])
    backbone = kw.pop("backbone")
    shape = (2, 3, 192, 288) if "swin" in name else (1, 3, 224, 160)
    _, worst = _compare(tmp_path, backbone, shape, torch.float32, seed=3, **kw)
    assert worst < 2e-5  # fp32 noise floor here is ~2e-6


def test_derived_config_matches_hf_config(tmp_path):
    save_random_hf_model(tmp_path, "swin_small_test", seed=0, **{k: v for k, v in VARIANTS["swin_q20_h64"].items()
                                                               if k != "backbone"})
    cfg = load_model(tmp_path).config
    assert (cfg.num_queries, cfg.hidden_dim, cfg.conv_dim, cfg.nheads) == (20, 64, 64, 4)
    assert (cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.enc_dim_feedforward) == (2, 4, 128, 96)
    assert cfg.class_names == [f"class_{i}" for i in range(5)]
    assert cfg.backbone.depths == (1, 2, 1, 1) and cfg.backbone.window_size == 4


def test_transformers_in_memory_names_convert_like_saved_ones(tmp_path):
    """transformers 5 renames Swin internals in memory (``q_proj``, ``swin.``); both layouts convert."""
    from safetensors.torch import load_file

    from m2f_core.hf_convert import convert_state_dict

    hf = save_random_hf_model(tmp_path, "swin_small_test", seed=0)
    saved = convert_state_dict(load_file(str(tmp_path / "model.safetensors")))
    in_memory = convert_state_dict(hf.state_dict())
    assert saved.keys() == in_memory.keys()
    for k in saved:
        assert torch.equal(saved[k], in_memory[k]), k
