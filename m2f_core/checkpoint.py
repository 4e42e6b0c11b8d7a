"""Weights in every format, through one entry point: ``load_model(source)``.

Sources, tried in this order:
1. our own folder: ``model.safetensors`` + ``config.json`` (written by ``save_model``; no pickle);
2. a Hugging Face folder (``config.json`` with ``model_type: mask2former``): converted by key map;
3. a Detectron2 ``.pkl`` (restricted unpickler: numpy arrays and plain containers only) or
   ``.pth`` (``torch.load(weights_only=True)``), or a bare ``.safetensors`` in official names;
4. a Hugging Face hub id (``facebook/mask2former-swin-tiny-coco-panoptic``), downloaded and cached
   through ``huggingface_hub``, with a one-line error when offline.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_write
from .config import Mask2FormerConfig, dataset_classes, get_preset, list_presets, resolve_config
from .errors import CheckpointError, first_line
from .model import Mask2Former, build_model

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_TAG = "m2f_core"

# buffers that are a pure function of the architecture: recomputed when a checkpoint lacks them
_DERIVED_BUFFERS = re.compile(r"\.relative_position_index$")
# keys an official checkpoint carries besides the network (loss weights, normalisation)
_NON_NETWORK_KEYS = ("criterion.empty_weight", "pixel_mean", "pixel_std")


class UnsafePickleError(CheckpointError):
    """A pickle that asks to build something other than arrays and plain containers."""


# --------------------------------------------------------------------------------------------
# our own format

def save_model(model: Mask2Former, folder: str | Path, config: Mask2FormerConfig | None = None,
               dtype: torch.dtype | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` to ``folder`` (each written atomically).

    ``dtype=torch.float16`` halves the file size; ``load_model`` restores float32.
    """
    config = config or model.config
    if config is None:
        raise ValueError("save_model needs the model's config (model.config or config=...)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous()
    atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": FORMAT_TAG}))
    atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config.to_dict(), indent=2) + "\n"))
    return folder


def _is_own_folder(folder: Path) -> bool:
    if not (folder / WEIGHTS_NAME).exists() or not (folder / CONFIG_NAME).exists():
        return False
    try:
        cfg = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and "backbone" in cfg and "class_names" in cfg


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


# --------------------------------------------------------------------------------------------
# Detectron2 pickles and .pth files

class _RestrictedUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dtypes and plain containers; refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to unpickle {module}.{name}: a Detectron2 weight file holds only numpy arrays"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a pickle with persistent ids (a torch file? use .pth)")


def read_detectron2_pickle(path: str | Path) -> dict[str, Any]:
    """Load a Detectron2 ``.pkl`` without executing code: {"model": {name: ndarray}, ...} or a bare dict."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(io.BufferedReader(f), encoding="latin1").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path}: not a readable Detectron2 pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of arrays, found {type(data).__name__}")
    return data


def _to_tensor_dict(weights: dict, origin: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in weights.items():
        if isinstance(v, torch.Tensor):
            out[k] = v
        elif isinstance(v, np.ndarray):
            out[k] = torch.from_numpy(np.ascontiguousarray(v))
        else:
            raise CheckpointError(f"{origin}: entry {k!r} is a {type(v).__name__}, not an array")
    return out


def _official_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Official-name state dict from a .pkl, .pth/.pt or bare .safetensors file."""
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        data = read_detectron2_pickle(path)
    elif suffix in (".pth", ".pt", ".bin"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only" in str(e).lower():
                raise UnsafePickleError(
                    f"{path}: refused by torch.load(weights_only=True), it holds more than tensors: {first_line(e)}"
                ) from None
            raise CheckpointError(f"{path}: not a readable torch file ({first_line(e)})") from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable torch file ({first_line(e)})") from None
    elif suffix == ".safetensors":
        data = _read_safetensors(path)
    else:
        raise CheckpointError(f"{path}: unknown weight file type {suffix!r} (expected .pkl, .pth or .safetensors)")
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(data).__name__}")
    state = _to_tensor_dict(data, str(path))
    # the first public Mask2Former checkpoints named the query features "static_query"
    return {k.replace("static_query", "query_feat"): v for k, v in state.items()}


# --------------------------------------------------------------------------------------------
# config inference from shapes (official names)

_DATASET_BY_NUM_CLASSES = {133: "coco_panoptic", 80: "coco_instances", 150: "ade20k", 19: "cityscapes"}
_PRESET_PREFIX = {"coco_panoptic": "coco_panoptic", "coco_instances": "coco_instance",
                  "ade20k": "ade20k_semantic", "cityscapes": "cityscapes_semantic"}


def _count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def infer_config(state: dict[str, torch.Tensor]) -> Mask2FormerConfig:
    """Derive the architecture from tensor shapes; the class list from the number of classes.

    Head counts leave no trace in the shapes: the official 8 (decoder and encoder) are assumed.

    Raises ``CheckpointError`` when the number of classes matches no shipped dataset.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"cannot infer the architecture: checkpoint has no {key!r}; pass config=...")
        return tuple(state[key].shape)

    p = "sem_seg_head.predictor."
    num_classes = shape(p + "class_embed.weight")[0] - 1
    dataset = _DATASET_BY_NUM_CLASSES.get(num_classes)
    if dataset is None:
        raise CheckpointError(
            f"the checkpoint predicts {num_classes} classes, which matches no shipped class list "
            f"({', '.join(f'{n} = {d}' for n, d in _DATASET_BY_NUM_CLASSES.items())}); "
            "pass config=PRESET or a config JSON with the class names"
        )
    if "backbone.stem.conv1.weight" in state:
        res4 = _count(state, r"backbone\.res4\.(\d+)\.")
        depth = {6: 50, 23: 101, 36: 152}.get(res4)
        if depth is None:
            raise CheckpointError(f"ResNet with {res4} res4 blocks is not a ResNet-50/101/152; pass config=...")
        bb_name = f"r{depth}"
    elif "backbone.patch_embed.proj.weight" in state:
        embed_dim = shape("backbone.patch_embed.proj.weight")[0]
        depths = tuple(_count(state, rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(4))
        bb_name = {96: "swin_t" if depths[2] == 6 else "swin_s", 128: "swin_b", 192: "swin_l"}.get(embed_dim, "swin")
    else:
        raise CheckpointError("cannot tell the backbone: neither backbone.stem.* (ResNet) nor "
                              "backbone.patch_embed.* (Swin) is in the checkpoint; pass config=...")
    preset = f"{_PRESET_PREFIX[dataset]}_{bb_name}"
    cfg = get_preset(preset) if preset in list_presets() else Mask2FormerConfig(name=preset, **dataset_classes(dataset))
    bb = cfg.backbone
    if "backbone.patch_embed.proj.weight" in state:
        n_layers = _count(state, r"backbone\.layers\.(\d+)\.")
        heads = tuple(shape(f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table")[1]
                      for i in range(n_layers))
        table = shape("backbone.layers.0.blocks.0.attn.relative_position_bias_table")[0]
        window = (int(round(table**0.5)) + 1) // 2
        patch = shape("backbone.patch_embed.proj.weight")[-1]
        ape = "backbone.absolute_pos_embed" in state
        bb = bb.__class__(
            type="swin", embed_dim=shape("backbone.patch_embed.proj.weight")[0],
            depths=tuple(_count(state, rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(n_layers)),
            num_heads=heads, window_size=window, patch_size=patch, ape=ape,
            patch_norm="backbone.patch_embed.norm.weight" in state,
            qkv_bias="backbone.layers.0.blocks.0.attn.qkv.bias" in state,
            mlp_ratio=shape("backbone.layers.0.blocks.0.mlp.fc1.weight")[0]
            / shape("backbone.layers.0.blocks.0.mlp.fc1.weight")[1],
            pretrain_img_size=shape("backbone.absolute_pos_embed")[-1] * patch if ape else bb.pretrain_img_size,
            drop_path_rate=bb.drop_path_rate,
        )
    else:
        bb = bb.__class__(type="resnet", depth=depth, stem_out_channels=shape("backbone.stem.conv1.weight")[0],
                          res2_out_channels=shape("backbone.res2.0.conv3.weight")[0])
    pd = "sem_seg_head.pixel_decoder."
    hidden = shape(p + "query_feat.weight")[1]
    conv_dim = shape(pd + "mask_features.weight")[1]
    return cfg.replace(
        backbone=bb,
        num_queries=shape(p + "query_feat.weight")[0],
        hidden_dim=hidden,
        dim_feedforward=shape(p + "transformer_ffn_layers.0.linear1.weight")[0],
        dec_layers=_count(state, p.replace(".", r"\.") + r"transformer_ffn_layers\.(\d+)\.") + 1,
        enforce_input_proj=(p + "input_proj.0.weight") in state and conv_dim == hidden,
        conv_dim=conv_dim,
        mask_dim=shape(pd + "mask_features.weight")[0],
        enc_layers=_count(state, pd.replace(".", r"\.") + r"transformer\.encoder\.layers\.(\d+)\."),
        enc_dim_feedforward=shape(pd + "transformer.encoder.layers.0.linear1.weight")[0],
        enc_n_points=shape(pd + "transformer.encoder.layers.0.self_attn.attention_weights.weight")[0]
        // (cfg.enc_nheads * shape(pd + "transformer.level_embed")[0]),
    )


# --------------------------------------------------------------------------------------------
# loading a state dict with names reported

def _consume_non_network(state: dict[str, torch.Tensor], config: Mask2FormerConfig) -> Mask2FormerConfig:
    """Remove loss/normalisation buffers from an official checkpoint, keeping what they tell."""
    changes: dict[str, Any] = {}
    w = state.pop("criterion.empty_weight", None)
    if w is not None and w.numel() == config.num_classes + 1:
        changes["no_object_weight"] = float(w[-1])
    for name in ("pixel_mean", "pixel_std"):
        v = state.pop(name, None)
        if v is not None and v.numel() == 3:
            changes[name] = tuple(float(x) for x in v.flatten())
    return config.replace(**changes) if changes else config


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], origin: str,
                            strict: bool = True) -> None:
    """Copy ``state`` into ``model``; every missing, unexpected or mis-shaped key is reported by name."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not _DERIVED_BUFFERS.search(k)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state if k in own and state[k].shape != own[k].shape]
    problems = []
    for title, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if names:
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
            problems.append(f"{title}: {shown}")
    if problems and strict:
        raise CheckpointError(f"{origin} does not fit the model; " + "; ".join(problems))
    for p in problems:
        logger.warning("%s: %s", origin, p)
    loadable = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(loadable, strict=False)


# --------------------------------------------------------------------------------------------
# the entry point

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# The small model the project trains on its synthetic scenes and ships (see its MODEL_CARD.md).
BUILTIN_WEIGHTS = Path(__file__).parent / "weights" / "synthetic_small"


def load_model(source: str | Path | None = None, device: str | torch.device = "cpu",
               config: str | Path | Mask2FormerConfig | None = None, strict: bool = True,
               cache_dir: str | Path | None = None) -> Mask2Former:
    """A ready model (eval mode, ``model.config`` holds the class names) from any weight source.

    ``source=None`` (or "builtin") is the built-in model trained on synthetic scenes. ``config``
    (preset name, JSON file or config) overrides the architecture inferred from a Detectron2 file;
    ``strict=False`` loads what fits and logs the names of what does not.
    """
    if source is None or str(source) == "builtin":
        if not (BUILTIN_WEIGHTS / WEIGHTS_NAME).exists():
            raise CheckpointError(f"the built-in weights are missing from {BUILTIN_WEIGHTS}; pass weights explicitly")
        source = BUILTIN_WEIGHTS
    path = Path(source)
    if path.exists():
        model = _load_local(path, config, strict)
    elif isinstance(source, str) and _HUB_ID.match(source):
        from .hf_convert import download_hub_model

        model = _load_local(download_hub_model(source, cache_dir=cache_dir), config, strict)
    else:
        raise CheckpointError(
            f"weights not found: {source!r} is neither an existing file or folder nor a hub id (org/name)"
        )
    return model.to(device).eval()


def _load_local(path: Path, config, strict: bool) -> Mask2Former:
    from .hf_convert import is_hf_folder, load_hf_folder

    if path.is_dir():
        if _is_own_folder(path):
            cfg = resolve_config(config) if config is not None else Mask2FormerConfig.from_json(path / CONFIG_NAME)
            state = _read_safetensors(path / WEIGHTS_NAME)
            state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
            return _build_and_load(cfg, state, str(path), strict)
        if is_hf_folder(path):
            cfg, state = load_hf_folder(path)
            if config is not None:
                cfg = resolve_config(config)
            return _build_and_load(cfg, state, str(path), strict)
        raise CheckpointError(
            f"{path}: a folder needs {WEIGHTS_NAME} + {CONFIG_NAME} (ours) or a Hugging Face "
            "config.json with model_type 'mask2former'"
        )
    state = _official_state_dict(path)
    cfg = resolve_config(config) if config is not None else infer_config(state)
    cfg = _consume_non_network(state, cfg)
    return _build_and_load(cfg, state, str(path), strict)


def _build_and_load(cfg: Mask2FormerConfig, state: dict[str, torch.Tensor], origin: str,
                    strict: bool) -> Mask2Former:
    model = build_model(cfg)
    load_state_dict_checked(model, state, origin, strict=strict)
    return model


__all__ = [
    "UnsafePickleError",
    "infer_config",
    "load_model",
    "load_state_dict_checked",
    "read_detectron2_pickle",
    "save_model",
]
