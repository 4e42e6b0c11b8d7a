"""COCO panoptic and COCO instance datasets: readers, id/RGB helpers and (atomic) writers.

COCO panoptic = one JSON (``images``, ``annotations[]`` with ``file_name`` + ``segments_info``,
``categories`` with ``isthing``) + a folder of PNGs where segment id = R + 256 G + 256^2 B and 0 is
void. COCO instances = one JSON whose ``segmentation`` is polygons, an uncompressed RLE or a
compressed RLE, decoded with pycocotools. Inside the records class ids are contiguous (index into
``categories``, sorted by dataset id as Detectron2 does); the files hold dataset ids.

The writers produce exactly these formats (instance masks always as compressed RLE with ``counts``
as str, never polygons, so holes survive) and replace each file atomically.

Split by format: ``coco_panoptic`` (id <-> RGB, ``CocoPanoptic``, the panoptic writers),
``coco_instances`` (``CocoInstances``, RLE / polygon checks, the instance writers) and ``coco_json``
(the JSON checks both share). This module re-exports their names.
"""

from __future__ import annotations

from .coco_instances import CocoInstances, instance_results_to_coco, write_coco_instance_results, write_coco_instances
from .coco_panoptic import (
    MAX_SEGMENT_ID,
    CocoPanoptic,
    coco_panoptic_segments_info,
    default_panoptic_dirs,
    id2rgb,
    read_panoptic_png,
    rgb2id,
    write_coco_panoptic,
    write_panoptic_png,
)

__all__ = [
    "MAX_SEGMENT_ID", "CocoInstances", "CocoPanoptic", "coco_panoptic_segments_info", "default_panoptic_dirs",
    "id2rgb", "instance_results_to_coco", "read_panoptic_png", "rgb2id", "write_coco_instance_results",
    "write_coco_instances", "write_coco_panoptic", "write_panoptic_png",
]
