"""Configs and presets: class lists, serialisation, and parameter counts against the paper."""

from __future__ import annotations

import json

import pytest
import torch

from m2f_core import Mask2FormerConfig, build_model, get_preset, list_presets
from m2f_core.config import BackboneConfig, resolve_config

REQUIRED = [
    "coco_panoptic_r50", "coco_panoptic_r101", "coco_panoptic_swin_t", "coco_panoptic_swin_s",
    "coco_panoptic_swin_b", "coco_panoptic_swin_l", "ade20k_semantic_r50", "ade20k_semantic_swin_l",
    "coco_instance_r50", "cityscapes_semantic_r50",
]


def test_required_presets_listed():
    assert set(REQUIRED) <= set(list_presets())


@pytest.mark.parametrize("name", [n for n in list_presets() if n != "synthetic_small"])
def test_every_official_preset_is_consistent(name):
    cfg = get_preset(name)
    expected = {"coco_panoptic": 133, "coco_instance": 80, "ade20k_semantic": 150, "cityscapes_semantic": 19}
    prefix = next(p for p in expected if name.startswith(p))
    assert cfg.num_classes == expected[prefix]
    assert len(cfg.is_thing) == len(cfg.dataset_ids) == len(cfg.colors) == cfg.num_classes
    assert cfg.num_decoder_layers == 9 and cfg.hidden_dim == 256 and cfg.enc_layers == 6


def test_class_lists_match_the_datasets():
    coco = get_preset("coco_panoptic_r50")
    assert sum(coco.is_thing) == 80 and coco.num_classes - sum(coco.is_thing) == 53
    assert coco.class_names[0] == "person" and coco.dataset_ids[0] == 1 and coco.dataset_ids[-1] == 200
    assert all(get_preset("coco_instance_r50").is_thing)
    city = get_preset("cityscapes_semantic_r50")
    assert city.class_names[:3] == ["road", "sidewalk", "building"] and sum(city.is_thing) == 8
    ade = get_preset("ade20k_semantic_r50")
    assert ade.class_names[0] == "wall" and ade.class_names[-1] == "flag"


def test_official_hyper_parameters():
    r50 = get_preset("coco_panoptic_r50")
    assert (r50.num_queries, r50.dim_feedforward, r50.enc_dim_feedforward, r50.enc_n_points) == (100, 2048, 1024, 4)
    assert (r50.class_weight, r50.mask_weight, r50.dice_weight, r50.no_object_weight) == (2.0, 5.0, 5.0, 0.1)
    assert (r50.train_num_points, r50.oversample_ratio, r50.importance_sample_ratio) == (12544, 3.0, 0.75)
    assert (r50.object_mask_threshold, r50.overlap_threshold) == (0.8, 0.8)
    assert r50.pixel_mean == (123.675, 116.28, 103.53) and r50.pixel_std == (58.395, 57.12, 57.375)
    swin_l = get_preset("coco_panoptic_swin_l")
    assert swin_l.num_queries == 200 and swin_l.backbone.window_size == 12 and swin_l.backbone.embed_dim == 192
    assert get_preset("ade20k_semantic_swin_l").min_size_test == 640


def test_json_round_trip(tmp_path):
    cfg = get_preset("coco_panoptic_swin_t").replace(num_queries=50)
    cfg.to_json(tmp_path / "c.json")
    back = Mask2FormerConfig.from_json(tmp_path / "c.json")
    assert back == cfg
    assert resolve_config(tmp_path / "c.json") == cfg
    assert resolve_config("coco_panoptic_swin_t").num_queries == 100


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    data = get_preset("coco_panoptic_r50").to_dict()
    data["num_querys"] = 10
    with pytest.raises(ValueError, match="num_querys"):
        Mask2FormerConfig.from_dict(data)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("coco_panoptic_r51")
    with pytest.raises(ValueError, match="depth"):
        BackboneConfig(type="resnet", depth=34)
    with pytest.raises(ValueError, match="is_thing"):
        Mask2FormerConfig(class_names=["a", "b"], is_thing=[True])
    (tmp_path / "bad.json").write_text(json.dumps({"class_names": ["a"], "backbone": {"typo": 1}}))
    with pytest.raises(ValueError, match="typo"):
        Mask2FormerConfig.from_json(tmp_path / "bad.json")


# Parameter counts of Mask2Former on COCO panoptic, Table 1 of the paper (millions, rounded).
PAPER_PARAMS_M = {
    "coco_panoptic_r50": 44, "coco_panoptic_r101": 63, "coco_panoptic_swin_t": 47,
    "coco_panoptic_swin_s": 69, "coco_panoptic_swin_b": 107, "coco_panoptic_swin_l": 216,
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_parameter_count_matches_the_paper(name):
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = build_model(get_preset(name))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(millions) == PAPER_PARAMS_M[name], millions


def test_swin_depths_and_heads_must_agree():
    with pytest.raises(ValueError, match="same length"):
        BackboneConfig(type="swin", depths=(1, 1), num_heads=(1, 2, 3))


def test_builtin_preset():
    cfg = get_preset("synthetic_small")
    assert cfg.num_classes == 11 and sum(cfg.is_thing) == 6 and cfg.backbone.type == "swin"
    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(cfg).parameters())
    assert params * 2 <= 20e6  # ships as fp16 in at most ~20 MB
