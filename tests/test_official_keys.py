"""Our state-dict names are exactly the official Detectron2 ones, so official weights load unrenamed.

The expected key sets below are written out by hand from the official sources (not from our code):
- facebookresearch/detectron2 ``detectron2/modeling/backbone/resnet.py``: ``BasicStem.conv1``,
  ``BottleneckBlock.{conv1,conv2,conv3,shortcut}``, each a ``Conv2d`` with ``norm=FrozenBatchNorm2d``
  (buffers weight, bias, running_mean, running_var); stages registered as ``res2``..``res5``.
- facebookresearch/Mask2Former ``mask2former/modeling/backbone/swin.py``: ``patch_embed.{proj,norm}``,
  ``layers.i.blocks.j.{norm1, attn.{relative_position_bias_table, relative_position_index, qkv, proj},
  norm2, mlp.{fc1, fc2}}``, ``layers.i.downsample.{norm, reduction (no bias)}``, ``norm0..norm3``.
- ``mask2former/modeling/pixel_decoder/msdeformattn.py``: ``input_proj.l.{0 (conv), 1 (GroupNorm)}``,
  ``transformer.level_embed``, ``transformer.encoder.layers.i.{self_attn.{sampling_offsets,
  attention_weights, value_proj, output_proj}, norm1, linear1, linear2, norm2}``,
  ``mask_features``, ``adapter_1`` / ``layer_1`` (Conv2d without bias + GN ``norm``).
- ``mask2former/modeling/transformer_decoder/mask2former_transformer_decoder.py``:
  ``transformer_{self,cross}_attention_layers.i.{self_attn|multihead_attn (nn.MultiheadAttention:
  in_proj_weight, in_proj_bias, out_proj.{weight,bias}), norm}``, ``transformer_ffn_layers.i.{linear1,
  linear2, norm}``, ``decoder_norm``, ``query_feat``, ``query_embed``, ``level_embed``,
  ``class_embed``, ``mask_embed.layers.{0,1,2}``; ``input_proj`` is empty when in_channels == hidden.
"""

from __future__ import annotations

import pytest
import torch

from m2f_core import build_model, get_preset

WB = ("weight", "bias")
FROZEN_BN = ("weight", "bias", "running_mean", "running_var")


def _resnet_keys(blocks=(3, 4, 6, 3)) -> set[str]:
    keys = {"backbone.stem.conv1.weight"} | {f"backbone.stem.conv1.norm.{b}" for b in FROZEN_BN}
    for s, n in enumerate(blocks):
        for i in range(n):
            convs = ["conv1", "conv2", "conv3"] + (["shortcut"] if i == 0 else [])
            for c in convs:
                p = f"backbone.res{s + 2}.{i}.{c}"
                keys |= {p + ".weight"} | {f"{p}.norm.{b}" for b in FROZEN_BN}
    return keys


def _swin_keys(depths=(2, 2, 6, 2)) -> set[str]:
    keys = {f"backbone.patch_embed.{m}.{w}" for m in ("proj", "norm") for w in WB}
    for i, d in enumerate(depths):
        for j in range(d):
            p = f"backbone.layers.{i}.blocks.{j}"
            keys |= {f"{p}.attn.relative_position_bias_table", f"{p}.attn.relative_position_index"}
            mods = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
            keys |= {f"{p}.{m}.{w}" for m in mods for w in WB}
        if i < len(depths) - 1:
            keys |= {f"backbone.layers.{i}.downsample.reduction.weight"}
            keys |= {f"backbone.layers.{i}.downsample.norm.{w}" for w in WB}
        keys |= {f"backbone.norm{i}.{w}" for w in WB}
    return keys


def _head_keys(enc_layers=6, dec_layers=9) -> set[str]:
    pd = "sem_seg_head.pixel_decoder"
    keys = {f"{pd}.input_proj.{lvl}.{m}.{w}" for lvl in range(3) for m in (0, 1) for w in WB}
    keys |= {f"{pd}.transformer.level_embed"}
    for i in range(enc_layers):
        p = f"{pd}.transformer.encoder.layers.{i}"
        mods = ["self_attn.sampling_offsets", "self_attn.attention_weights", "self_attn.value_proj",
                "self_attn.output_proj", "norm1", "linear1", "linear2", "norm2"]
        keys |= {f"{p}.{m}.{w}" for m in mods for w in WB}
    keys |= {f"{pd}.mask_features.{w}" for w in WB}
    for m in ("adapter_1", "layer_1"):
        keys |= {f"{pd}.{m}.weight"} | {f"{pd}.{m}.norm.{w}" for w in WB}
    pr = "sem_seg_head.predictor"
    for i in range(dec_layers):
        for layer, attn in (("transformer_self_attention_layers", "self_attn"),
                            ("transformer_cross_attention_layers", "multihead_attn")):
            p = f"{pr}.{layer}.{i}"
            keys |= {f"{p}.{attn}.in_proj_weight", f"{p}.{attn}.in_proj_bias"}
            keys |= {f"{p}.{attn}.out_proj.{w}" for w in WB} | {f"{p}.norm.{w}" for w in WB}
        keys |= {f"{pr}.transformer_ffn_layers.{i}.{m}.{w}" for m in ("linear1", "linear2", "norm") for w in WB}
    keys |= {f"{pr}.decoder_norm.{w}" for w in WB}
    keys |= {f"{pr}.query_feat.weight", f"{pr}.query_embed.weight", f"{pr}.level_embed.weight"}
    keys |= {f"{pr}.class_embed.{w}" for w in WB} | {f"{pr}.mask_embed.layers.{i}.{w}" for i in range(3) for w in WB}
    return keys


@pytest.mark.parametrize("preset, backbone_keys", [
    ("coco_panoptic_r50", _resnet_keys()),
    ("coco_panoptic_r101", _resnet_keys((3, 4, 23, 3))),
    ("coco_panoptic_swin_t", _swin_keys()),
    ("coco_panoptic_swin_l", _swin_keys((2, 2, 18, 2))),
])
def test_state_dict_keys_are_the_official_ones(preset, backbone_keys):
    with torch.device("meta"):
        model = build_model(get_preset(preset))
    ours = set(model.state_dict())
    expected = backbone_keys | _head_keys()
    assert sorted(ours - expected) == [] and sorted(expected - ours) == []


def test_issue_examples_present():
    with torch.device("meta"):
        keys = set(build_model(get_preset("coco_panoptic_r50")).state_dict())
    assert "backbone.res2.0.conv1.weight" in keys
    assert "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets.weight" in keys
    assert "sem_seg_head.predictor.transformer_cross_attention_layers.0.multihead_attn.in_proj_weight" in keys
