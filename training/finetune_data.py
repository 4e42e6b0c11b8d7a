"""Which images a few-shot fine-tune trains on, validates on, replays and retains.

The split reads the export's ``manifest.json``: only images a person edited or reviewed are held out
(the model's own untouched output would measure nothing); untouched images can be replayed (the
starting model's own predictions) and measure what the run forgets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .finetune_recipe import FinetuneRecipe

MANIFEST_NAME = "manifest.json"


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The export manifest of a corrections folder (``manifest.json``), or None."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def image_status(dataset, manifest: dict[str, Any] | None) -> list[str]:
    """Per item: "edited", "reviewed" or "untouched" (the manifest's word; "edited" without a manifest)."""
    if not manifest:
        return ["edited"] * len(dataset)
    by_name = {Path(str(im.get("file_name", ""))).name: str(im.get("status", "edited"))
               for im in manifest.get("images", []) if isinstance(im, dict)}
    out = []
    for i in range(len(dataset)):
        out.append(by_name.get(Path(str(dataset[i].file_name)).name, "edited"))
    return out


def holdout_split(status: list[str], fraction: float, min_images: int, seed: int) -> tuple[list[int], list[int],
                                                                                              list[int]]:
    """(train, held-out, untouched) indices. Held-out images come from the corrected ones only
    (edited or reviewed), a ``fraction`` of them (at least one) when there are ``min_images`` or more."""
    corrected = [i for i, s in enumerate(status) if s != "untouched"]
    untouched = [i for i, s in enumerate(status) if s == "untouched"]
    if len(corrected) < max(2, min_images):
        return corrected, [], untouched
    n_val = max(1, int(round(fraction * len(corrected))))
    order = np.random.default_rng([seed, 7919]).permutation(len(corrected))
    held = sorted(corrected[k] for k in order[:n_val])
    train = [i for i in corrected if i not in set(held)]
    return train, held, untouched


class MixedTrainingSet:
    """Training examples of the corrections, with replay examples mixed in at a fixed share.

    Index space of one epoch: the corrections repeated ``repeats`` times, then the replay items; the
    trainer's per-epoch permutation of it gives each batch about ``replay_fraction`` replay examples.
    Each example's augmentation is seeded by (seed, epoch, index in this space).
    """

    def __init__(self, primary, replay=None, replay_fraction: float = 0.0, seed: int = 0) -> None:
        self.primary, self.replay, self.seed = primary, replay, int(seed)
        n_p = len(primary.dataset)
        n_r = len(replay.dataset) if replay is not None and replay_fraction > 0 else 0
        self.replay = replay if n_r else None
        # primary share (1 - f) of the epoch: n_p * repeats = n_r * (1 - f) / f
        self.repeats = max(1, round(n_r * (1 - replay_fraction) / (replay_fraction * n_p))) if n_r else 1
        self.n_primary, self.n_replay = n_p * self.repeats, n_r

    def __len__(self) -> int:
        return self.n_primary + self.n_replay

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = int(key[0]), int(key[1])
        rng = np.random.default_rng([self.seed, epoch, index])
        if index < self.n_primary:
            return self.primary.make_example(self.primary.dataset[index % len(self.primary.dataset)], rng)
        example = self.replay.make_example(self.replay.dataset[index - self.n_primary], rng)
        example["source"] = "replay"  # the distillation term applies to these only
        return example


def replay_source(recipe: FinetuneRecipe, choice: str | None, model_cfg, train_data, untouched: list[int],
                   run_dir: Path) -> tuple[Any, str]:
    """(the replay dataset or None, what it is)."""
    from m2f_core.data.records import Subset
    from m2f_core.data.specs import open_dataset
    from m2f_core.data.synthetic import CATEGORIES as SYNTHETIC
    from m2f_core.data.synthetic import generate_dataset, synthetic_dataset

    choice = choice or recipe.replay
    if choice == "none" or recipe.replay_fraction <= 0:
        return None, "none"
    knows_synthetic = [c["name"] for c in SYNTHETIC] == list(model_cfg.class_names)
    if choice == "auto":
        choice = "synthetic" if knows_synthetic else ("untouched" if untouched else "none")
    if choice == "none":
        return None, "none"
    if choice == "synthetic":
        if not knows_synthetic:
            raise ValueError("replay 'synthetic' needs a model with the synthetic classes (the built-in model)")
        generate_dataset(run_dir / "replay", recipe.replay_images, seed=recipe.seed + 1000, split="scenes")
        return synthetic_dataset(run_dir / "replay", "scenes"), f"synthetic ({recipe.replay_images} scenes)"
    if choice == "untouched":
        if not untouched:
            return None, "none (no untouched image in the export)"
        return Subset(train_data, untouched, name="untouched"), f"untouched ({len(untouched)} images)"
    return open_dataset(choice, purpose="train"), choice


def retain_source(recipe: FinetuneRecipe, replay_what: str, train_data, untouched: list[int],
                   run_dir: Path) -> tuple[Any, str]:
    """(images the starting model already handled, what they are): measured at every validation so that a
    run shows, and the selection can bound, what fine-tuning costs where the model was good."""
    from m2f_core.data.records import Subset
    from m2f_core.data.synthetic import generate_dataset, synthetic_dataset

    if recipe.retain_images <= 0:
        return None, "none"
    if replay_what.startswith("synthetic"):
        generate_dataset(run_dir / "replay", recipe.retain_images, seed=recipe.seed + 2000, split="retain")
        return synthetic_dataset(run_dir / "replay", "retain"), f"{recipe.retain_images} original synthetic scenes"
    if untouched:
        keep = untouched[:recipe.retain_images]
        return Subset(train_data, keep, name="untouched"), f"{len(keep)} untouched images (the model's own output)"
    return None, "none"
