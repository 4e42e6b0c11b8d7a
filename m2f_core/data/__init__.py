"""Data: image loading, dataset readers and writers, shipped class lists (``classes/``)."""

from .ade20k import ADE20KSemantic
from .cityscapes import CityscapesDataset
from .coco import (
    CocoInstances,
    CocoPanoptic,
    coco_panoptic_segments_info,
    id2rgb,
    instance_results_to_coco,
    read_panoptic_png,
    rgb2id,
    write_coco_instance_results,
    write_coco_instances,
    write_coco_panoptic,
    write_panoptic_png,
)
from .corrections import CorrectionsDataset, write_corrections
from .errors import DatasetError
from .images import ImageError, load_image
from .records import (
    FORMATS,
    GTSegment,
    InstanceAnnotation,
    Sample,
    SegmentationDataset,
    atomic_write_bytes,
    atomic_write_json,
    categories_from_config,
    instances_to_semantic,
    open_dataset,
    panoptic_to_instances,
    panoptic_to_semantic,
    parse_dataset_spec,
    shipped_categories,
)
from .semantic import SemanticFolder, read_semantic_png, write_semantic_png
from .targets import instance_targets, panoptic_targets, semantic_targets

__all__ = [
    "ImageError", "load_image",
    # records and helpers
    "DatasetError", "FORMATS", "GTSegment", "InstanceAnnotation", "Sample", "SegmentationDataset",
    "atomic_write_bytes", "atomic_write_json", "categories_from_config", "instances_to_semantic",
    "open_dataset", "panoptic_to_instances", "panoptic_to_semantic", "parse_dataset_spec", "shipped_categories",
    # readers
    "ADE20KSemantic", "CityscapesDataset", "CocoInstances", "CocoPanoptic", "SemanticFolder",
    # formats and writers
    "coco_panoptic_segments_info", "id2rgb", "instance_results_to_coco", "read_panoptic_png", "read_semantic_png",
    "rgb2id", "write_coco_instance_results", "write_coco_instances", "write_coco_panoptic", "write_panoptic_png",
    "write_semantic_png",
]
# training data (augmentations: m2f_core.data.transforms; TrainingDataset, collate: m2f_core.data.train_dataset)
__all__ += ["CorrectionsDataset", "write_corrections", "instance_targets", "panoptic_targets", "semantic_targets"]
