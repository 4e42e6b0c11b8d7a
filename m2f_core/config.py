"""Dataclass configuration of Mask2Former and the named presets of the official model zoo.

Field defaults are those of the official ``maskformer2_R50_bs16_50ep`` config (COCO panoptic).
Each preset is a plain builder function that spells out what differs from the defaults.
The builders of the network (``m2f_core.model.build_model``) unpack this config into explicit
constructor arguments: no module below ``build_model`` sees a config object.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

_CLASSES_DIR = Path(__file__).parent / "data" / "classes"


@dataclass
class BackboneConfig:
    """Backbone hyper-parameters; ``type`` selects which of the two groups is used."""

    type: str = "resnet"  # "resnet" | "swin"
    # ResNet (Detectron2 layout)
    depth: int = 50
    stage_blocks: tuple[int, ...] = ()  # blocks in res2..res5; empty = the standard ones of ``depth``
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    stride_in_1x1: bool = False  # False: stride in the 3x3 conv (torchvision-style weights)
    res5_dilation: int = 1
    # Swin (official layout)
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.3
    ape: bool = False
    patch_norm: bool = True
    pretrain_img_size: int = 224

    def __post_init__(self) -> None:
        if self.type not in ("resnet", "swin"):
            raise ValueError(f"backbone type must be 'resnet' or 'swin', got {self.type!r}")
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        self.stage_blocks = tuple(int(b) for b in self.stage_blocks)
        if self.type == "resnet":
            if self.stage_blocks:
                if len(self.stage_blocks) != 4:
                    raise ValueError(f"ResNet stage_blocks needs 4 entries (res2..res5), got {self.stage_blocks}")
                # keep depth truthful: 3 layers per bottleneck block + stem + classifier
                self.depth = 3 * sum(self.stage_blocks) + 2
            elif self.depth not in RESNET_STAGE_BLOCKS:
                raise ValueError(f"ResNet depth must be one of {sorted(RESNET_STAGE_BLOCKS)}, got {self.depth}")
        if self.type == "swin" and len(self.depths) != len(self.num_heads):
            raise ValueError("Swin depths and num_heads must have the same length")

    @property
    def resnet_stage_blocks(self) -> tuple[int, ...]:
        return self.stage_blocks or RESNET_STAGE_BLOCKS[self.depth]


# blocks per stage res2..res5 of the bottleneck ResNets
RESNET_STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


@dataclass
class Mask2FormerConfig:
    """Every field the official configs vary, with the official R50 COCO-panoptic defaults."""

    name: str = "custom"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # classes (index = contiguous class id used by the model)
    dataset: str = "coco_panoptic"
    class_names: list[str] = field(default_factory=list)
    is_thing: list[bool] = field(default_factory=list)
    dataset_ids: list[int] = field(default_factory=list)  # original dataset ids, e.g. COCO's 1..200
    colors: list[list[int]] = field(default_factory=list)
    # pixel decoder (sem_seg_head.pixel_decoder)
    conv_dim: int = 256
    mask_dim: int = 256
    norm: str = "GN"
    enc_layers: int = 6
    enc_nheads: int = 8
    enc_dim_feedforward: int = 1024
    enc_n_points: int = 4
    deformable_in_features: tuple[str, ...] = ("res3", "res4", "res5")
    common_stride: int = 4
    # transformer decoder (sem_seg_head.predictor)
    num_queries: int = 100
    hidden_dim: int = 256
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 10  # official DEC_LAYERS: 9 layers + the prediction from the learned queries
    pre_norm: bool = False
    enforce_input_proj: bool = False
    dropout: float = 0.0
    # loss and matching
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True
    # inference
    panoptic_on: bool = True
    instance_on: bool = True
    semantic_on: bool = True
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    test_topk_per_image: int = 100
    # input
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisibility: int = 32
    min_size_test: int = 800
    max_size_test: int = 1333
    # training input (COCO: large-scale jitter; ADE20K/Cityscapes: resize + crop)
    image_size: int = 1024
    min_scale: float = 0.1
    max_scale: float = 2.0
    crop_size: tuple[int, int] = (512, 512)
    single_category_max_area: float = 1.0
    ignore_value: int = 255

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig(**self.backbone)
        self.deformable_in_features = tuple(self.deformable_in_features)
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)
        self.pixel_std = tuple(float(v) for v in self.pixel_std)
        self.crop_size = tuple(int(v) for v in self.crop_size)
        n = len(self.class_names)
        if n == 0:
            raise ValueError("a config needs at least one class name")
        if not self.is_thing:
            self.is_thing = [True] * n
        if not self.dataset_ids:
            self.dataset_ids = list(range(n))
        if not self.colors:
            self.colors = [default_color(i) for i in range(n)]
        for attr in ("is_thing", "dataset_ids", "colors"):
            if len(getattr(self, attr)) != n:
                raise ValueError(f"{attr} has {len(getattr(self, attr))} entries for {n} class names")
        if self.dec_layers < 1:
            raise ValueError("dec_layers counts the learned-query prediction and must be >= 1")
        if self.hidden_dim % self.nheads or self.conv_dim % self.enc_nheads:
            raise ValueError("hidden_dim and conv_dim must be divisible by their numbers of heads")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_decoder_layers(self) -> int:
        """Transformer decoder layers actually built (official DEC_LAYERS - 1)."""
        return self.dec_layers - 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Mask2FormerConfig:
        """Build from ``to_dict`` output; unknown keys are an error, not silently dropped."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        backbone = data.pop("backbone", {})
        if isinstance(backbone, dict):
            bknown = {f.name for f in dataclasses.fields(BackboneConfig)}
            bunknown = sorted(set(backbone) - bknown)
            if bunknown:
                raise ValueError(f"unknown backbone config keys: {', '.join(bunknown)}")
            backbone = BackboneConfig(**backbone)
        return cls(backbone=backbone, **data)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> Mask2FormerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> Mask2FormerConfig:
        return dataclasses.replace(self, **changes)


def default_color(i: int) -> list[int]:
    """Deterministic, well spread colour of class ``i`` (golden-ratio hue walk): the one palette."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
    return [int(r * 255), int(g * 255), int(b * 255)]


@cache
def _load_classes(dataset: str) -> tuple[dict[str, Any], ...]:
    path = _CLASSES_DIR / f"{dataset}.json"
    if not path.exists():
        raise ValueError(f"no class list for dataset {dataset!r} (have: {', '.join(list_datasets())})")
    return tuple(json.loads(path.read_text())["categories"])


def list_datasets() -> list[str]:
    """Datasets whose class lists ship with the package."""
    return sorted(p.stem for p in _CLASSES_DIR.glob("*.json"))


def dataset_classes(dataset: str) -> dict[str, list]:
    """Class names, thing flags, original ids and colours of a shipped dataset, as config fields."""
    cats = _load_classes(dataset)
    return {
        "dataset": dataset,
        "class_names": [c["name"] for c in cats],
        "is_thing": [bool(c["isthing"]) for c in cats],
        "dataset_ids": [int(c["id"]) for c in cats],
        "colors": [list(c["color"]) for c in cats],
    }


# --------------------------------------------------------------------------------------------
# Presets. Backbone builders first, then one function per model-zoo entry.

def resnet(depth: int) -> BackboneConfig:
    return BackboneConfig(type="resnet", depth=depth, stride_in_1x1=False)


def swin(size: str, pretrain_img_size: int | None = None) -> BackboneConfig:
    """Swin T/S/B/L as in the official configs (B and L use the 384 / window-12 weights)."""
    table = {
        "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                     pretrain_img_size=224),
        "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7,
                      pretrain_img_size=224),
        "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12,
                     pretrain_img_size=384),
        "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12,
                      pretrain_img_size=384),
    }
    kw = table[size]
    if pretrain_img_size is not None:
        kw = dict(kw, pretrain_img_size=pretrain_img_size)
    return BackboneConfig(type="swin", drop_path_rate=0.3, ape=False, patch_norm=True, **kw)


def _coco_panoptic(name: str, backbone: BackboneConfig, **kw: Any) -> Mask2FormerConfig:
    return Mask2FormerConfig(name=name, backbone=backbone, **dataset_classes("coco_panoptic"), **kw)


def _coco_instance(name: str, backbone: BackboneConfig, **kw: Any) -> Mask2FormerConfig:
    return Mask2FormerConfig(name=name, backbone=backbone, **dataset_classes("coco_instances"),
                             panoptic_on=False, semantic_on=False, instance_on=True, **kw)


def _ade20k_semantic(name: str, backbone: BackboneConfig, size: int = 512, **kw: Any) -> Mask2FormerConfig:
    return Mask2FormerConfig(
        name=name, backbone=backbone, **dataset_classes("ade20k"),
        panoptic_on=False, instance_on=False, semantic_on=True,
        min_size_test=size, max_size_test=4 * size, crop_size=(size, size), **kw,
    )


def _cityscapes_semantic(name: str, backbone: BackboneConfig, **kw: Any) -> Mask2FormerConfig:
    return Mask2FormerConfig(
        name=name, backbone=backbone, **dataset_classes("cityscapes"),
        panoptic_on=False, instance_on=False, semantic_on=True,
        min_size_test=1024, max_size_test=2048, crop_size=(512, 1024), **kw,
    )


def synthetic_small() -> Mask2FormerConfig:
    """The built-in model: a narrow Swin + reduced heads for the 11 synthetic classes, trained on CPU.

    Swin rather than ResNet because it is trained from scratch (no ImageNet weights offline): its
    LayerNorms train, where a ResNet's frozen batch norm would leave it unnormalised.
    """
    return Mask2FormerConfig(
        name="synthetic_small", **dataset_classes("synthetic"),
        backbone=BackboneConfig(type="swin", embed_dim=48, depths=(2, 2, 4, 2), num_heads=(2, 4, 8, 16),
                                window_size=8, drop_path_rate=0.1, pretrain_img_size=256),
        conv_dim=128, mask_dim=128, enc_layers=3, enc_dim_feedforward=512, hidden_dim=128, nheads=8,
        dim_feedforward=512, dec_layers=7, num_queries=50, train_num_points=4096,
        min_size_test=256, max_size_test=512, image_size=192, min_scale=0.9, max_scale=1.5, crop_size=(192, 192),
    )


PRESETS: dict[str, Callable[[], Mask2FormerConfig]] = {
    # the built-in model (synthetic scenes, 11 classes)
    "synthetic_small": synthetic_small,
    # COCO panoptic (133 classes)
    "coco_panoptic_r50": lambda: _coco_panoptic("coco_panoptic_r50", resnet(50)),
    "coco_panoptic_r101": lambda: _coco_panoptic("coco_panoptic_r101", resnet(101)),
    "coco_panoptic_swin_t": lambda: _coco_panoptic("coco_panoptic_swin_t", swin("tiny")),
    "coco_panoptic_swin_s": lambda: _coco_panoptic("coco_panoptic_swin_s", swin("small")),
    "coco_panoptic_swin_b": lambda: _coco_panoptic("coco_panoptic_swin_b", swin("base")),
    "coco_panoptic_swin_l": lambda: _coco_panoptic("coco_panoptic_swin_l", swin("large"), num_queries=200),
    # COCO instance (80 classes)
    "coco_instance_r50": lambda: _coco_instance("coco_instance_r50", resnet(50)),
    "coco_instance_r101": lambda: _coco_instance("coco_instance_r101", resnet(101)),
    "coco_instance_swin_t": lambda: _coco_instance("coco_instance_swin_t", swin("tiny")),
    "coco_instance_swin_l": lambda: _coco_instance("coco_instance_swin_l", swin("large"), num_queries=200),
    # ADE20K semantic (150 classes)
    "ade20k_semantic_r50": lambda: _ade20k_semantic("ade20k_semantic_r50", resnet(50)),
    "ade20k_semantic_r101": lambda: _ade20k_semantic("ade20k_semantic_r101", resnet(101)),
    "ade20k_semantic_swin_t": lambda: _ade20k_semantic("ade20k_semantic_swin_t", swin("tiny")),
    "ade20k_semantic_swin_l": lambda: _ade20k_semantic("ade20k_semantic_swin_l", swin("large"), size=640),
    # Cityscapes semantic (19 classes)
    "cityscapes_semantic_r50": lambda: _cityscapes_semantic("cityscapes_semantic_r50", resnet(50)),
    "cityscapes_semantic_r101": lambda: _cityscapes_semantic("cityscapes_semantic_r101", resnet(101)),
    "cityscapes_semantic_swin_t": lambda: _cityscapes_semantic("cityscapes_semantic_swin_t", swin("tiny")),
    "cityscapes_semantic_swin_l": lambda: _cityscapes_semantic("cityscapes_semantic_swin_l", swin("large")),
}


def list_presets() -> list[str]:
    """Names accepted by ``get_preset`` (and by ``load_model(..., config=NAME)``)."""
    return sorted(PRESETS)


def get_preset(name: str) -> Mask2FormerConfig:
    """A fresh config for a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(list_presets())}")
    return PRESETS[name]()


def resolve_config(config: str | Path | Mask2FormerConfig | dict) -> Mask2FormerConfig:
    """A config from a preset name, a JSON file, a dict or a config object."""
    if isinstance(config, Mask2FormerConfig):
        return config
    if isinstance(config, dict):
        return Mask2FormerConfig.from_dict(config)
    if str(config) in PRESETS:
        return get_preset(str(config))
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" and path.exists():
        return Mask2FormerConfig.from_json(path)
    raise ValueError(f"{config!r} is neither a preset ({', '.join(list_presets())}) nor a config JSON file")
