"""Hugging Face ``transformers`` Mask2Former checkpoints -> our config and official key names.

Reads the files directly (config.json + safetensors / bin), so ``transformers`` is not needed at
run time. Both the key layout that ``save_pretrained`` writes (and the hub holds) and the in-memory
layout of transformers 5 (``swin.``, ``q_proj``...) are accepted.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .config import BackboneConfig, Mask2FormerConfig, dataset_classes, list_datasets
from .errors import CheckpointError, first_line


def is_hf_folder(folder: Path) -> bool:
    cfg = folder / "config.json"
    if not cfg.exists():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "mask2former"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def load_hf_folder(folder: str | Path) -> tuple[Mask2FormerConfig, dict[str, torch.Tensor]]:
    """(config, official-name state dict) from a ``save_pretrained`` folder."""
    folder = Path(folder)
    try:
        hf_cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: unreadable ({e})") from None
    preprocessor = folder / "preprocessor_config.json"
    pre = None
    if preprocessor.exists():
        try:
            pre = json.loads(preprocessor.read_text())
        except (OSError, json.JSONDecodeError):
            pre = None
    config = config_from_hf(hf_cfg, pre)
    state = convert_state_dict(_read_hf_weights(folder), config)
    return config, state


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    files: list[Path] = []
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            files = [folder / s for s in shards]
            break
    if not files:
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (folder / name).exists():
                files = [folder / name]
                break
    if not files:
        held = sorted(p.name for p in folder.iterdir())
        raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin (the folder has: "
                              f"{', '.join(held[:20]) or 'nothing'}{', ...' if len(held) > 20 else ''})")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                state.update(load_file(str(f)))
            else:
                state.update(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as e:
            raise CheckpointError(f"{f}: unreadable weights ({first_line(e)})") from None
    return state


# --------------------------------------------------------------------------------------------
# config

def config_from_hf(hf: dict[str, Any], preprocessor: dict[str, Any] | None = None) -> Mask2FormerConfig:
    """Our config from a transformers ``Mask2FormerConfig`` dict (labels included)."""
    if hf.get("activation_function", "relu") != "relu":
        raise CheckpointError(f"activation {hf['activation_function']!r} is not supported (Mask2Former uses relu)")
    bb = hf.get("backbone_config") or {}
    if hf.get("use_timm_backbone") or hf.get("backbone") not in (None, "", "swin", "resnet") and not bb:
        raise CheckpointError("timm / named backbones are not supported; use a Swin or ResNet backbone_config")
    backbone = _backbone_from_hf(bb)
    id2label = hf.get("id2label") or {}
    if not id2label:
        raise CheckpointError("the Hugging Face config has no id2label: the number of classes is unknown")
    names = [id2label[k] for k in sorted(id2label, key=lambda x: int(x))]
    classes = _match_dataset(names)
    fields: dict[str, Any] = dict(
        name=hf.get("_name_or_path") or "huggingface",
        backbone=backbone,
        conv_dim=hf.get("feature_size", 256),
        mask_dim=hf.get("mask_feature_size", 256),
        hidden_dim=hf.get("hidden_dim", 256),
        enc_dim_feedforward=hf.get("encoder_feedforward_dim", 1024),
        enc_layers=hf.get("encoder_layers", 6),
        dec_layers=hf.get("decoder_layers", 10),
        nheads=hf.get("num_attention_heads", 8),
        enc_nheads=hf.get("num_attention_heads", 8),
        enc_n_points=4,
        dropout=hf.get("dropout", 0.0),
        dim_feedforward=hf.get("dim_feedforward", 2048),
        pre_norm=hf.get("pre_norm", False),
        enforce_input_proj=hf.get("enforce_input_projection", False),
        common_stride=hf.get("common_stride", 4),
        ignore_value=hf.get("ignore_value", 255),
        num_queries=hf.get("num_queries", 100),
        no_object_weight=hf.get("no_object_weight", 0.1),
        class_weight=hf.get("class_weight", 2.0),
        mask_weight=hf.get("mask_weight", 5.0),
        dice_weight=hf.get("dice_weight", 5.0),
        train_num_points=hf.get("train_num_points", 12544),
        oversample_ratio=hf.get("oversample_ratio", 3.0),
        importance_sample_ratio=hf.get("importance_sample_ratio", 0.75),
        **classes,
    )
    if preprocessor:
        mean, std = preprocessor.get("image_mean"), preprocessor.get("image_std")
        if mean and std and len(mean) == 3 and len(std) == 3:
            scale = 255.0 if max(mean) <= 1.0 else 1.0
            fields["pixel_mean"] = tuple(float(m) * scale for m in mean)
            fields["pixel_std"] = tuple(float(s) * scale for s in std)
        size_div = preprocessor.get("size_divisor")
        if size_div:
            fields["size_divisibility"] = int(size_div)
    return Mask2FormerConfig(**fields)


def _backbone_from_hf(bb: dict[str, Any]) -> BackboneConfig:
    kind = bb.get("model_type", "swin")
    stages = bb.get("out_features") or ["stage1", "stage2", "stage3", "stage4"]
    if list(stages) != ["stage1", "stage2", "stage3", "stage4"]:
        raise CheckpointError(f"backbone out_features {stages} not supported (need stage1..stage4)")
    if kind == "swin":
        if bb.get("use_absolute_embeddings", False):
            # HF adds a (1, patches + 1, C) table without resizing; the official code resizes a
            # (1, C, h, w) map bicubically: the two cannot give the same outputs
            raise CheckpointError("Swin with use_absolute_embeddings is not supported (differs from the official APE)")
        return BackboneConfig(
            type="swin",
            embed_dim=bb.get("embed_dim", 96),
            depths=tuple(bb.get("depths", (2, 2, 6, 2))),
            num_heads=tuple(bb.get("num_heads", (3, 6, 12, 24))),
            window_size=bb.get("window_size", 7),
            patch_size=bb.get("patch_size", 4),
            mlp_ratio=bb.get("mlp_ratio", 4.0),
            qkv_bias=bb.get("qkv_bias", True),
            drop_path_rate=bb.get("drop_path_rate", 0.3),
            ape=False,
            patch_norm=True,
            pretrain_img_size=bb.get("image_size", 224),
        )
    if kind == "resnet":
        if bb.get("layer_type", "bottleneck") != "bottleneck":
            raise CheckpointError("only bottleneck ResNets are supported (layer_type 'bottleneck')")
        hidden = list(bb.get("hidden_sizes", [256, 512, 1024, 2048]))
        if hidden != [hidden[0] * 2**i for i in range(4)]:
            raise CheckpointError(f"ResNet hidden_sizes {hidden} must double at every stage")
        if bb.get("downsample_in_first_stage", False):
            raise CheckpointError("ResNet with downsample_in_first_stage is not supported")
        if bb.get("hidden_act", "relu") != "relu":
            raise CheckpointError(f"ResNet activation {bb['hidden_act']!r} not supported")
        return BackboneConfig(
            type="resnet",
            stage_blocks=tuple(bb.get("depths", (3, 4, 6, 3))),
            stem_out_channels=bb.get("embedding_size", 64),
            res2_out_channels=hidden[0],
            stride_in_1x1=bool(bb.get("downsample_in_bottleneck", False)),
        )
    raise CheckpointError(f"backbone model_type {kind!r} not supported (swin or resnet)")


def _match_dataset(names: list[str]) -> dict[str, list]:
    """Thing flags, ids and colours of the shipped dataset these class names come from.

    HF configs carry names only. A dataset is adopted when it has the same number of classes and at
    least 90 % of the names agree (hub configs spell a few COCO names differently); HF's names are kept.
    """
    def norm(n: str) -> str:
        return n.lower().replace("_", " ").replace("-", " ").strip()

    for dataset in list_datasets():
        classes = dataset_classes(dataset)
        if len(classes["class_names"]) != len(names):
            continue
        same = sum(norm(a) == norm(b) for a, b in zip(classes["class_names"], names))
        if same >= 0.9 * len(names):
            return dict(classes, class_names=list(names))
    # unknown label set: every class is a thing (HF configs carry no thing/stuff flags)
    return {"dataset": "custom", "class_names": names}


# --------------------------------------------------------------------------------------------
# keys

# transformers 5 in-memory names -> the names save_pretrained writes (and the hub holds)
_V5_TO_SAVED = [
    (r"\.encoder\.swin\.embeddings\.", ".encoder.embeddings."),
    (r"\.encoder\.swin\.encoder\.", ".encoder.encoder."),
    (r"\.encoder\.swin\.", ".encoder."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.attention\.relative_position_bias\.", ".attention.self."),
    (r"(blocks\.\d+)\.mlp\.fc1\.", r"\1.intermediate.dense."),
    (r"(blocks\.\d+)\.mlp\.fc2\.", r"\1.output.dense."),
]

_ENC = "model.pixel_level_module.encoder."
_PD = "model.pixel_level_module.decoder."
_TM = "model.transformer_module."

# (regex on the saved HF name, replacement in official names); first match wins
_RULES: list[tuple[str, str]] = [
    # Swin backbone
    (_ENC + r"embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    (_ENC + r"embeddings\.norm\.", "backbone.patch_embed.norm."),
    (_ENC + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"backbone.layers.\1.blocks.\2.norm1."),
    (_ENC + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"backbone.layers.\1.blocks.\2.norm2."),
    (_ENC + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.relative_position_bias_table",
     r"backbone.layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (_ENC + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.output\.dense\.", r"backbone.layers.\1.blocks.\2.attn.proj."),
    (_ENC + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.intermediate\.dense\.", r"backbone.layers.\1.blocks.\2.mlp.fc1."),
    (_ENC + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.output\.dense\.", r"backbone.layers.\1.blocks.\2.mlp.fc2."),
    (_ENC + r"encoder\.layers\.(\d+)\.downsample\.", r"backbone.layers.\1.downsample."),
    # ResNet backbone
    (_ENC + r"embedder\.embedder\.convolution\.", "backbone.stem.conv1."),
    (_ENC + r"embedder\.embedder\.normalization\.", "backbone.stem.conv1.norm."),
    (_ENC + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.", r"backbone.res{\1}.\2.shortcut."),
    (_ENC + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.", r"backbone.res{\1}.\2.shortcut.norm."),
    (_ENC + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.convolution\.", r"backbone.res{\1}.\2.conv{\3}."),
    (_ENC + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.normalization\.", r"backbone.res{\1}.\2.conv{\3}.norm."),
    # pixel decoder
    (_PD + r"level_embed$", "sem_seg_head.pixel_decoder.transformer.level_embed"),
    (_PD + r"input_projections\.", "sem_seg_head.pixel_decoder.input_proj."),
    (_PD + r"encoder\.layers\.(\d+)\.self_attn\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.self_attn."),
    (_PD + r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm1."),
    (_PD + r"encoder\.layers\.(\d+)\.fc1\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.linear1."),
    (_PD + r"encoder\.layers\.(\d+)\.fc2\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.linear2."),
    (_PD + r"encoder\.layers\.(\d+)\.final_layer_norm\.", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm2."),
    (_PD + r"mask_projection\.", "sem_seg_head.pixel_decoder.mask_features."),
    (_PD + r"(adapter|layer)_(\d+)\.0\.", r"sem_seg_head.pixel_decoder.\1_\2."),
    (_PD + r"(adapter|layer)_(\d+)\.1\.", r"sem_seg_head.pixel_decoder.\1_\2.norm."),
    # transformer decoder
    (_TM + r"queries_embedder\.", "sem_seg_head.predictor.query_embed."),
    (_TM + r"queries_features\.", "sem_seg_head.predictor.query_feat."),
    (_TM + r"level_embed\.", "sem_seg_head.predictor.level_embed."),
    (_TM + r"input_projections\.(\d+)\.", r"sem_seg_head.predictor.input_proj.\1."),
    (_TM + r"decoder\.layers\.(\d+)\.self_attn\.out_proj\.",
     r"sem_seg_head.predictor.transformer_self_attention_layers.\1.self_attn.out_proj."),
    (_TM + r"decoder\.layers\.(\d+)\.self_attn_layer_norm\.",
     r"sem_seg_head.predictor.transformer_self_attention_layers.\1.norm."),
    (_TM + r"decoder\.layers\.(\d+)\.cross_attn\.", r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.multihead_attn."),
    (_TM + r"decoder\.layers\.(\d+)\.cross_attn_layer_norm\.",
     r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.norm."),
    (_TM + r"decoder\.layers\.(\d+)\.fc1\.", r"sem_seg_head.predictor.transformer_ffn_layers.\1.linear1."),
    (_TM + r"decoder\.layers\.(\d+)\.fc2\.", r"sem_seg_head.predictor.transformer_ffn_layers.\1.linear2."),
    (_TM + r"decoder\.layers\.(\d+)\.final_layer_norm\.", r"sem_seg_head.predictor.transformer_ffn_layers.\1.norm."),
    (_TM + r"decoder\.layernorm\.", "sem_seg_head.predictor.decoder_norm."),
    (_TM + r"decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.", r"sem_seg_head.predictor.mask_embed.layers.\1."),
    (r"class_predictor\.", "sem_seg_head.predictor.class_embed."),
]
_COMPILED = [(re.compile("^" + pat), rep) for pat, rep in _RULES]

# keys with no counterpart: loss buffers, the unused final Swin norm, recomputed index buffers
_DROP = re.compile(
    r"(^criterion\.|\.num_batches_tracked$|relative_position_index$|^" + re.escape(_ENC) + r"layernorm\.)"
)
# q, k, v kept as separate matrices by HF and fused in the official code
_SWIN_QKV = re.compile("^" + re.escape(_ENC) + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
_DEC_QKV = re.compile("^" + re.escape(_TM) + r"decoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)$")


def _rename(key: str) -> str | None:
    for rx, rep in _COMPILED:
        m = rx.match(key)
        if m:
            new = rx.sub(rep, key, count=1)
            # ResNet stages/convs are numbered from 0 in HF: stage s -> res{s+2}, layer c -> conv{c+1}
            new = re.sub(r"res\{(\d+)\}", lambda g: f"res{int(g.group(1)) + 2}", new)
            new = re.sub(r"conv\{(\d+)\}", lambda g: f"conv{int(g.group(1)) + 1}", new)
            return new
    return None


def convert_state_dict(hf_state: dict[str, torch.Tensor], config: Mask2FormerConfig | None = None
                       ) -> dict[str, torch.Tensor]:
    """HF names -> official names; q/k/v fused; unknown keys kept (reported later by name)."""
    state = {}
    for k, v in hf_state.items():
        for pat, rep in _V5_TO_SAVED:
            k = re.sub(pat, rep, k)
        state[k] = v
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        if _DROP.search(k):
            continue
        if m := _SWIN_QKV.match(k):
            layer, block, part, kind = m.groups()
            fused.setdefault((f"backbone.layers.{layer}.blocks.{block}.attn.qkv.{kind}", "qkv"), {})[part[0]] = v
            continue
        if m := _DEC_QKV.match(k):
            layer, part, kind = m.groups()
            name = f"sem_seg_head.predictor.transformer_self_attention_layers.{layer}.self_attn.in_proj_{kind}"
            fused.setdefault((name, "qkv"), {})[part] = v
            continue
        if k.startswith(_ENC + "hidden_states_norms.stage"):
            stage = int(k[len(_ENC + "hidden_states_norms.stage")].split(".")[0])
            out[f"backbone.norm{stage - 1}." + k.rsplit(".", 1)[1]] = v
            continue
        new = _rename(k)
        out[new if new is not None else k] = v
    for (name, _), parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{name}: the checkpoint has only the {'/'.join(sorted(parts))} part(s) of q/k/v")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# --------------------------------------------------------------------------------------------
# hub

# What ``_read_hf_weights`` reads, in order of preference: the files that mark a kind of weights in a
# repository and the patterns that download it (shards included). Nothing else is fetched.
_HUB_CONFIG_FILES = ["config.json", "preprocessor_config.json"]
_HUB_WEIGHTS = (
    (("model.safetensors", "model.safetensors.index.json"), ["*.safetensors", "*.safetensors.index.json"]),
    (("pytorch_model.bin", "pytorch_model.bin.index.json"), ["pytorch_model*.bin", "pytorch_model.bin.index.json"]),
)


def hub_download_patterns(repo_id: str, repo_files: list[str]) -> list[str]:
    """``allow_patterns`` for the weights a repository has: safetensors when it has them, else
    ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``); a one-line error naming
    what the repository holds when it has neither."""
    names = set(repo_files)
    for markers, patterns in _HUB_WEIGHTS:
        if names.intersection(markers):
            return _HUB_CONFIG_FILES + patterns
    listed = sorted(repo_files)
    shown = ", ".join(listed[:20]) + (f", ... ({len(listed) - 20} more)" if len(listed) > 20 else "")
    raise CheckpointError(
        f"{repo_id!r} on the Hugging Face hub has no weights to load (model.safetensors or pytorch_model.bin, "
        f"or a sharded index of either); the repository has: {shown or 'no files'}"
    )


def _has_hf_weights(folder: Path) -> bool:
    return any((folder / name).exists() for markers, _ in _HUB_WEIGHTS for name in markers)


def download_hub_model(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """Local folder of a hub model: the cache when it has it, else a download of the weights the
    repository has (safetensors preferred, else ``pytorch_model.bin``); one-line errors offline and
    for a repository without weights."""
    try:
        from huggingface_hub import list_repo_files, snapshot_download
    except ImportError:  # pragma: no cover - a core dependency
        raise CheckpointError("loading a hub id needs huggingface_hub (pip install huggingface_hub)") from None
    kwargs = dict(repo_id=repo_id, cache_dir=str(cache_dir) if cache_dir else None)
    # The cache first, one kind of weights at a time: a snapshot counts as complete for the patterns
    # it was downloaded with, and it is used only when it holds weights.
    for _, patterns in _HUB_WEIGHTS:
        try:
            folder = Path(snapshot_download(local_files_only=True, allow_patterns=_HUB_CONFIG_FILES + patterns,
                                            **kwargs))
        except Exception:
            continue
        if _has_hf_weights(folder):
            return folder
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        reason = "HF_HUB_OFFLINE is set"
    else:
        try:
            repo_files = list_repo_files(repo_id)
        except Exception as e:
            reason = f"{type(e).__name__}: {first_line(e)}"
        else:
            patterns = hub_download_patterns(repo_id, repo_files)
            try:
                return Path(snapshot_download(allow_patterns=patterns, **kwargs))
            except Exception as e:
                reason = f"{type(e).__name__}: {first_line(e)}"
    raise CheckpointError(
        f"cannot download {repo_id!r} from the Hugging Face hub ({reason}); on a machine with internet run "
        f"`hf download {repo_id} --local-dir DIR`, copy DIR here and pass load_model('DIR')"
    )
