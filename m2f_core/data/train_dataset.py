"""Augmented training examples from any dataset reader, and the batch collation of the trainer.

``TrainingDataset`` does what the official Mask2Former dataset mappers do: load the image, apply
the dataset's augmentation to the image and every label map with one geometry, and build the
(labels, masks) targets of the task. ``augmentation``:

- ``"lsj"``: COCO large-scale jitter (``coco_panoptic_lsj`` / ``coco_instance_lsj``): flip,
  ResizeScale(``min_scale``..``max_scale`` of ``image_size``), FixedSizeCrop(``image_size``) with
  padding (image 128, id map 0 = void, label map 255 = ignore).
- ``"resize_crop"``: ADE20K / Cityscapes (``mask_former_semantic`` / ``mask_former_panoptic``):
  ResizeShortestEdge over ``[int(x * 0.1 * S) for x in range(5, 21)]`` with S = max(``crop_size``)
  and long side at most 4 S, a ``crop_size`` crop under ``single_category_max_area``, SSD colour
  jitter, flip, then padding to ``crop_size`` (image 128, maps void / ignore) as the mapper's
  ``SIZE_DIVISIBILITY`` padding does.
- ``"none"``: the image as it is (evaluation-like; for debugging and tiny fine-tunes).

Every random number of an example comes from ``np.random.default_rng([seed, epoch, index])``: the
example is the same whichever worker builds it and whenever, so a resumed run sees the same data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import Mask2FormerConfig
from ..images import load_image
from .errors import DatasetError
from .records import Sample
from .targets import instance_targets, panoptic_targets, semantic_targets
from .transforms import (
    Geometry,
    color_aug_ssd,
    random_flip,
    sample_category_area_crop,
    sample_lsj,
    sample_shortest_edge,
)

logger = logging.getLogger(__name__)

TASKS = ("panoptic", "instance", "semantic")
AUGMENTATIONS = ("lsj", "resize_crop", "none")

ClassMap = str | Mapping[int, int] | Sequence[int] | np.ndarray | None


def short_edge_choices(crop_size: Sequence[int]) -> list[int]:
    """The official ADE20K / Cityscapes ``MIN_SIZE_TRAIN``: 0.5x..2.0x of the larger crop side, step 0.1."""
    base = max(int(v) for v in crop_size)
    return [int(x * 0.1 * base) for x in range(5, 21)]


def build_class_map(dataset_names: Sequence[str] | None, model_names: Sequence[str],
                    class_map: ClassMap) -> np.ndarray | None:
    """Lookup array dataset class -> model class (-1 = dropped), or None for the identity.

    ``class_map``: None (identity; the dataset must not have more classes than the model),
    ``"by_name"`` (same class name; others dropped), a mapping {dataset id: model id} or a sequence
    indexed by dataset class. Dataset classes are the readers' contiguous ids.
    """
    n_model = len(model_names)
    if class_map is None:
        if dataset_names is not None and len(dataset_names) > n_model:
            raise ValueError(f"the dataset has {len(dataset_names)} classes, the model {n_model}: pass "
                             "class_map='by_name' or an explicit mapping")
        if dataset_names is not None and list(dataset_names) != list(model_names)[:len(dataset_names)]:
            logger.warning("dataset class names differ from the model's; classes are used by index")
        return None
    if isinstance(class_map, str):
        if class_map != "by_name":
            raise ValueError(f"class_map must be 'by_name', a mapping or a sequence, got {class_map!r}")
        if dataset_names is None:
            raise ValueError("class_map='by_name' needs a dataset with categories")
        index = {name: i for i, name in enumerate(model_names)}
        lut = np.array([index.get(name, -1) for name in dataset_names], dtype=np.int64)
        if not (lut >= 0).any():
            raise ValueError("no dataset class name is a model class name")
        dropped = [n for n, v in zip(dataset_names, lut) if v < 0]
        if dropped:
            logger.info("classes not in the model, dropped: %s", ", ".join(dropped[:10]))
    elif isinstance(class_map, Mapping):
        size = max([int(k) + 1 for k in class_map] + [len(dataset_names or ())])
        lut = np.full(size, -1, dtype=np.int64)
        for k, v in class_map.items():
            lut[int(k)] = -1 if v is None else int(v)
    else:
        lut = np.asarray(class_map, dtype=np.int64).reshape(-1)
    if lut.size and (lut.max() >= n_model or lut.min() < -1):
        raise ValueError(f"class_map sends classes outside 0..{n_model - 1} (and -1 = dropped)")
    return lut


class TrainingDataset(Dataset):
    """Augmented examples {"image" uint8 (3, H, W), "labels" int64 (N,), "masks" bool (N, H, W),
    "image_id", "file_name"} of a dataset reader (anything indexable that returns ``Sample``s).

    ``task``: which targets (see ``targets``); ``augmentation``: see the module docstring. Sizes come
    from ``config`` (``image_size``/``min_scale``/``max_scale``; ``crop_size``,
    ``single_category_max_area``, ``ignore_value``). ``dataset[(epoch, index)]`` works as well as
    ``set_epoch(epoch); dataset[index]``.
    """

    def __init__(self, dataset: Sequence[Sample], config: Mask2FormerConfig, task: str = "panoptic",
                 augmentation: str = "lsj", seed: int = 0, class_map: ClassMap = None, epoch: int = 0) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {augmentation!r}")
        if int(seed) < 0 or int(epoch) < 0:
            raise ValueError("seed and epoch must be >= 0")
        self.dataset = dataset
        self.config = config
        self.task = task
        self.augmentation = augmentation
        self.seed = int(seed)
        self.epoch = int(epoch)
        categories = getattr(dataset, "categories", None)
        names = [c["name"] for c in categories] if categories is not None else None
        self.class_map = build_class_map(names, config.class_names, class_map)
        self.ignore_value = int(config.ignore_value)
        self.crop_size = (int(config.crop_size[0]), int(config.crop_size[1]))
        self.short_edges = short_edge_choices(self.crop_size)
        self.max_size = 4 * max(self.crop_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose augmentation the next items get (part of every example's seed)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """The generator of one example: a function of (seed, epoch, index) only."""
        return np.random.default_rng([self.seed, self.epoch if epoch is None else int(epoch), int(index)])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        sample = self.dataset[index]
        return self.make_example(sample, self.rng(index, epoch))

    # ----------------------------------------------------------------------------------------

    def make_example(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        """One augmented example of ``sample`` with the random numbers of ``rng``."""
        image = load_image(sample.file_name)
        if image.shape[:2] != (sample.height, sample.width):
            raise DatasetError(sample.file_name, f"image is {image.shape[1]}x{image.shape[0]} but its annotation is "
                                                 f"{sample.width}x{sample.height}")
        label_map = None  # the semantic map, built once when the task or the crop needs it
        if self.task == "semantic":
            label_map = self._semantic_map(sample)
        elif self.task == "panoptic" and sample.panoptic is None:
            raise DatasetError(sample.annotation_file or sample.file_name,
                               "no panoptic annotation (use task='semantic' or 'instance' for this dataset)")

        needs_label = self.augmentation == "resize_crop" and self.config.single_category_max_area < 1.0
        if needs_label and label_map is None:
            label_map = self._semantic_map(sample)
        geo, image = self._augment(image, label_map, rng)

        if self.task == "panoptic":
            assert sample.panoptic is not None
            seg = geo.apply_segmentation(sample.panoptic.segment_map, 0)
            labels, masks = panoptic_targets(seg, sample.panoptic.segments, self.class_map)
        elif self.task == "semantic":
            assert label_map is not None
            labels, masks = semantic_targets(geo.apply_segmentation(label_map, self.ignore_value),
                                             self.ignore_value, self.class_map)
        else:
            labels, masks = self._instance_targets(sample, geo)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),
            "image_id": sample.image_id,
            "file_name": str(sample.file_name),
        }

    def _semantic_map(self, sample: Sample) -> np.ndarray:
        # crowd pixels keep their class, as Mask2Former's panoptic_semseg_* maps (prepare_coco_semantic_annos...)
        return sample.semantic_map(crowd_ignore=False)

    def _augment(self, image: np.ndarray, label_map: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[Geometry, np.ndarray]:
        """The example's geometry and augmented image, drawing in the official order."""
        h, w = image.shape[:2]
        cfg = self.config
        if self.augmentation == "none":
            return Geometry(h, w), image
        if self.augmentation == "lsj":
            geo = sample_lsj(h, w, rng, cfg.image_size, cfg.min_scale, cfg.max_scale)
            return geo, geo.apply_image(image)
        # resize_crop: ResizeShortestEdge -> RandomCrop_CategoryAreaConstraint -> ColorAugSSD -> RandomFlip -> pad
        geo = sample_shortest_edge(h, w, rng, self.short_edges, self.max_size)
        rh, rw = geo.output_size
        if label_map is not None and cfg.single_category_max_area < 1.0:
            ref = geo.apply_segmentation(label_map, self.ignore_value)
        else:
            ref = np.broadcast_to(np.uint8(0), (rh, rw))  # only the shape is used
        y0, x0, ch, cw = sample_category_area_crop(ref, rng, self.crop_size, cfg.single_category_max_area,
                                                   self.ignore_value)
        geo.crop(y0, x0, ch, cw)
        image = color_aug_ssd(geo.apply_image(image), rng)
        post = Geometry(*image.shape[:2])
        if random_flip(rng):
            post.hflip()
        post.pad(*self.crop_size)
        return geo.then(post), post.apply_image(image)

    def _instance_targets(self, sample: Sample, geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
        lut = self.class_map
        anns = [a for a in sample.instance_annotations()
                if not a.iscrowd and (lut is None or (a.category_id < len(lut) and lut[a.category_id] >= 0))]
        out_h, out_w = geo.output_size
        if not anns:
            return instance_targets(np.zeros((0, out_h, out_w), bool), [], class_map=lut)
        masks = geo.apply_masks(np.stack([a.mask() for a in anns]))
        return instance_targets(masks, [a.category_id for a in anns], class_map=lut)


def collate(batch: Sequence[dict[str, Any]], size_divisibility: int = 32, pad_value: int = 0) -> dict[str, Any]:
    """Stack examples: images padded (``pad_value``) and masks padded (False) at the bottom / right to a
    common size divisible by ``size_divisibility``; ``image_sizes`` are the sizes before this padding
    (the trainer zeroes the padding after normalising, as Detectron2's ImageList does); ``sources`` says
    where each example came from (its ``source`` key, "train" when it has none; e.g. "replay")."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    sizes = [(int(b["image"].shape[1]), int(b["image"].shape[2])) for b in batch]
    H, W = max(s[0] for s in sizes), max(s[1] for s in sizes)
    if size_divisibility > 1:
        H = -(-H // size_divisibility) * size_divisibility
        W = -(-W // size_divisibility) * size_divisibility
    images = torch.full((len(batch), 3, H, W), pad_value, dtype=torch.uint8)
    targets = []
    for i, (b, (h, w)) in enumerate(zip(batch, sizes)):
        images[i, :, :h, :w] = b["image"]
        m = b["masks"]
        masks = torch.zeros((m.shape[0], H, W), dtype=torch.bool)
        masks[:, :m.shape[1], :m.shape[2]] = m
        targets.append({"labels": b["labels"], "masks": masks})
    return {"images": images, "targets": targets, "image_ids": [b["image_id"] for b in batch],
            "image_sizes": sizes, "file_names": [b["file_name"] for b in batch],
            "sources": [b.get("source", "train") for b in batch]}
