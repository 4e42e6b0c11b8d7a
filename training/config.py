"""Training hyper-parameters (the official recipe by default) as a dataclass, saved with every run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Solver, schedule and bookkeeping; the network itself is described by ``Mask2FormerConfig``."""

    max_iter: int = 368750
    batch_size: int = 16  # total over all processes (Detectron2's IMS_PER_BATCH)
    lr: float = 1e-4
    weight_decay: float = 0.05
    weight_decay_norm: float = 0.0
    weight_decay_embed: float = 0.0
    backbone_multiplier: float = 0.1
    clip_norm: float = 0.01  # full-model gradient clipping (L2); 0 disables
    schedule: str = "step"  # "step" (COCO) or "poly" (ADE20K, Cityscapes)
    steps: tuple[float, ...] = (327778 / 368750, 355092 / 368750)  # fractions of max_iter (official COCO steps)
    gamma: float = 0.1
    poly_power: float = 0.9
    warmup_iters: int = 10
    warmup_factor: float = 1.0
    amp: str = "none"  # "none", "fp16" (CUDA), "bf16" (CUDA or CPU)
    grad_accum: int = 1
    num_workers: int = 2
    seed: int = 0
    task: str = "panoptic"  # the targets built from the data: "panoptic", "instance", "semantic"
    augmentation: str = "lsj"  # "lsj" (COCO), "resize_crop" (ADE20K / Cityscapes), "none"
    checkpoint_period: int = 5000
    eval_period: int = 5000
    eval_limit: int | None = None  # evaluate on the first N validation images only
    log_period: int = 20
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        self.steps = tuple(float(s) for s in self.steps)
        if self.schedule not in ("step", "poly"):
            raise ValueError(f"schedule must be 'step' or 'poly', got {self.schedule!r}")
        if self.amp not in ("none", "fp16", "bf16"):
            raise ValueError(f"amp must be 'none', 'fp16' or 'bf16', got {self.amp!r}")
        if self.task not in ("panoptic", "instance", "semantic"):
            raise ValueError(f"task must be panoptic, instance or semantic, got {self.task!r}")
        if self.max_iter < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("max_iter, batch_size and grad_accum must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def recipe_for(dataset_format: str) -> dict[str, Any]:
    """The official schedule / augmentation / task for a dataset format (overridable on the CLI)."""
    if dataset_format in ("ade20k", "cityscapes"):
        return {"schedule": "poly", "warmup_iters": 0, "augmentation": "resize_crop", "task": "semantic"}
    if dataset_format == "coco_instances":
        return {"schedule": "step", "augmentation": "lsj", "task": "instance"}
    return {"schedule": "step", "augmentation": "lsj", "task": "panoptic"}
