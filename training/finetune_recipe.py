"""The few-shot fine-tuning recipe: every hyper-parameter of ``python -m training.finetune`` in one
dataclass, whose defaults are the recipe chosen by measurement (``docs/finetuning.md``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class FinetuneRecipe:
    """Hyper-parameters of the few-shot mode; the defaults are the recipe chosen by measurement
    (``docs/finetuning.md``: compared on held-out shifted and original scenes)."""

    lr: float = 1e-4
    backbone_multiplier: float = 0.0  # 0 freezes the backbone (the chosen default: forgets less, runs faster)
    train_only: list[str] | None = None  # parameter-name prefixes that train (None: all); e.g. the first blocks
    batch_size: int = 4
    schedule: str = "poly"
    warmup_iters: int = 10
    iterations_per_image: int = 20  # max_iter = clamp(n_train * this, min_iterations, max_iterations)
    min_iterations: int = 100
    max_iterations: int = 1000
    replay: str = "auto"  # "auto", "none", "synthetic", "untouched" or FORMAT:PATH
    replay_fraction: float = 0.7  # share of each batch drawn from the replay data
    replay_images: int = 200  # synthetic scenes generated for replay
    anchor_weight: float = 0.0  # L2-SP: weight of sum((w - w_start)^2) added to the loss
    distill_weight: float = 0.0  # weight of the distillation towards the starting model on replay images
    retain_images: int = 48  # images the starting model handled (original scenes / untouched), validated too
    retain_tolerance: float | None = 1.0  # largest drop there (metric points) a selected model may have
    retain_warning: float = 2.0  # a larger drop there and the run does not recommend its model
    holdout_fraction: float = 0.2
    min_images_for_holdout: int = 4  # fewer corrected images: no hold-out (and no validation)
    eval_period: int = 0  # iterations between validations (0: about ten over the run)
    patience: int = 4  # validations without improvement before stopping
    min_delta: float = 0.1  # improvement (metric points) that counts
    augmentation: str = "lsj"
    clip_norm: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ValueError(f"replay_fraction must be in [0, 1), got {self.replay_fraction}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.lr <= 0 or self.batch_size < 1 or self.min_iterations < 1 or self.max_iterations < self.min_iterations:
            raise ValueError("lr > 0, batch_size >= 1 and 1 <= min_iterations <= max_iterations are required")

    @classmethod
    def from_json(cls, path: str | Path) -> FinetuneRecipe:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown recipe keys: {', '.join(unknown)}")
        return cls(**data)

    def iterations(self, n_train: int) -> int:
        return int(min(self.max_iterations, max(self.min_iterations, n_train * self.iterations_per_image)))
