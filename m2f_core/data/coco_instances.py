"""COCO instances: the reader (``CocoInstances``), strict checks of polygons and RLEs, and the writers.

COCO instances = one JSON whose ``segmentation`` is polygons, an uncompressed RLE or a compressed
RLE, decoded with pycocotools. Inside the records class ids are contiguous; the files hold dataset
ids. The writers produce instance masks always as compressed RLE with ``counts`` as str, never
polygons, so holes survive, and replace each file atomically.

Why a module of its own: untrusted polygons and RLE strings need their own validation (pycocotools
would rasterise without bound or read uninitialised memory), and results (``loadRes`` format) are
written here too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from ..atomic import atomic_write_json
from ..structures import InstanceResult
from .coco_json import (
    categories_for_json,
    iter_annotations,
    json_categories,
    read_images,
    require_flag,
    require_image_id,
)
from .errors import DatasetError
from .fileio import read_json, require
from .layouts import coco_instances_image_dirs, first_dir_with
from .records import InstanceAnnotation, Sample, SegmentationDataset

__all__ = ["CocoInstances", "instance_results_to_coco", "write_coco_instance_results", "write_coco_instances"]

logger = logging.getLogger(__name__)


class CocoInstances(SegmentationDataset):
    """COCO instance JSON; each item's ``instances`` keep their polygons / RLE, decoded on demand.

    Images are listed in the JSON's order (images without annotations included); ``image_dir``
    defaults to the first candidate of ``layouts.coco_instances_image_dirs`` holding the first image
    (``ROOT/{split}`` or ``ROOT/images/{split}`` for ``ROOT/annotations/instances_{split}.json``, else
    the JSON's folder or ``images/`` beside it). Polygons with fewer than 3 points are dropped (as
    Detectron2 does) and an instance left with none is skipped with a warning; everything else
    malformed is a ``DatasetError``.
    """

    def __init__(self, json_file: str | Path, image_dir: str | Path | None = None,
                 categories: list[dict] | str | None = None) -> None:
        self.json_file = src = Path(json_file)
        data = read_json(src)
        if not isinstance(data, dict):
            raise DatasetError(src, f"top level must be an object with 'images', got {type(data).__name__}")
        super().__init__(json_categories(data, categories, src, isthing=True), src.stem)
        images = read_images(data, src, required=True)
        assert images is not None
        self.images = images
        self._image_dirs = coco_instances_image_dirs(src)
        self._image_dir_given = image_dir is not None
        if image_dir is None:
            first = next(iter(images.values()), None)
            image_dir = first_dir_with(self._image_dirs, first[0] if first else None) or self._image_dirs[0]
        self.image_dir = Path(image_dir)
        self.image_ids = list(images)  # item order
        self._anns: dict[int | str, list[tuple[int, dict]]] = {iid: [] for iid in images}
        ann_ids: set[int | str] = set()
        for i, (where, ann, image_id) in enumerate(iter_annotations(data, images, src)):
            if "id" in ann:
                aid = require_image_id(ann, "id", where, src)
                if aid in ann_ids:
                    raise DatasetError(src, f"duplicate annotation id {aid!r}")
                ann_ids.add(aid)
            cat = require(ann, "category_id", "int", where, src)
            if cat not in self.dataset_id_to_contiguous:
                raise DatasetError(src, f"{where}: unknown category id {cat}")
            seg = ann.get("segmentation")
            if not isinstance(seg, (list, dict)):
                raise DatasetError(src, f"{where}.segmentation must be polygons or an RLE object, "
                                        f"got {type(seg).__name__}")
            self._anns[image_id].append((i, ann))

    def __len__(self) -> int:
        return len(self.image_ids)

    def check_images(self) -> None:
        """Raise a ``DatasetError`` naming the folders looked at when the first image is not where expected."""
        if not self.image_ids:
            return
        name = self.images[self.image_ids[0]][0]
        if (self.image_dir / name).is_file():
            return
        if self._image_dir_given:
            raise DatasetError(self.image_dir / name, f"no such file (the first image of {self.json_file.name})")
        looked = ", ".join(str(d) for d in self._image_dirs)
        raise DatasetError(self.json_file, f"image {name} not found; looked in: {looked} "
                                           "(pass the image folder: --images / image_dir=)")

    def _load(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        file_name, h, w = self.images[image_id]
        instances = []
        for i, ann in self._anns[image_id]:
            inst = self._instance(ann, f"annotations[{i}]", h, w)
            if inst is not None:
                instances.append(inst)
        return Sample(image_id=image_id, file_name=self.image_dir / file_name, height=h, width=w,
                      instances=instances, annotation_file=self.json_file)

    def _instance(self, ann: dict, where: str, h: int, w: int) -> InstanceAnnotation | None:
        src = self.json_file
        seg = check_segmentation(ann["segmentation"], where, h, w, src)
        if seg is None:
            logger.warning("%s: %s has no polygon with 3 or more points; skipped", src, where)
            return None
        bbox = ann.get("bbox")
        if bbox is not None:
            if (not isinstance(bbox, list) or len(bbox) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
                raise DatasetError(src, f"{where}.bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
            bbox = tuple(float(v) for v in bbox)
        aid = ann.get("id")
        return InstanceAnnotation(category_id=self.dataset_id_to_contiguous[ann["category_id"]], segmentation=seg,
                                  height=h, width=w, iscrowd=require_flag(ann, "iscrowd", where, src), bbox=bbox,
                                  id=aid if isinstance(aid, int) else None)


def check_segmentation(seg: list | dict, where: str, h: int, w: int, src: Path) -> list | dict | None:
    """Validated polygons (short ones dropped; None if none left) or RLE of an (h, w) image."""
    if isinstance(seg, list):
        polys = []
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly):
                raise DatasetError(src, f"{where}.segmentation[{k}] must be a list of numbers")
            if len(poly) % 2:
                raise DatasetError(src, f"{where}.segmentation[{k}] has an odd number of coordinates ({len(poly)})")
            # pycocotools rasterises along every edge: a point far outside would cost memory without
            # bound (and NaN fails these comparisons too)
            if not (all(-w <= x <= 2 * w for x in poly[0::2]) and all(-h <= y <= 2 * h for y in poly[1::2])):
                raise DatasetError(src, f"{where}.segmentation[{k}] has points far outside the {w}x{h} image")
            if len(poly) >= 6:
                polys.append([float(v) for v in poly])
        return polys or None
    size, counts = seg.get("size"), seg.get("counts")
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise DatasetError(src, f"{where}.segmentation.size must be [height, width], got {size!r}")
    if size != [h, w]:
        raise DatasetError(src, f"{where}: RLE size {size[1]}x{size[0]} does not match the image's {w}x{h}")
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise DatasetError(src, f"{where}.segmentation.counts must be non-negative integers")
        if sum(counts) != h * w:
            raise DatasetError(src, f"{where}: uncompressed RLE covers {sum(counts)} pixels, the image {h * w}")
    elif not isinstance(counts, str):
        raise DatasetError(src, f"{where}.segmentation.counts must be a string or a list, "
                                f"got {type(counts).__name__}")
    else:
        covered = _compressed_rle_length(counts)
        if covered != h * w:  # pycocotools would decode such a string to uninitialised memory
            problem = "is not a valid compressed RLE" if covered is None else f"covers {covered} pixels"
            raise DatasetError(src, f"{where}.segmentation.counts {problem}, the image has {h * w}")
    return seg


def _compressed_rle_length(counts: str) -> int | None:
    """Pixels covered by a COCO compressed RLE string (pycocotools' ``rleFrString``); None if malformed."""
    total, runs, prev2, prev1, i = 0, 0, 0, 0, 0
    while i < len(counts):
        x, k, more = 0, 0, True
        while more:
            if i >= len(counts):
                return None
            c = ord(counts[i]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if runs > 2:
            x += prev2
        if x < 0:
            return None
        total += x
        runs += 1
        prev2, prev1 = prev1, x
    return total


def instance_results_to_coco(image_id: int | str, result: InstanceResult, categories: list[dict]) -> list[dict]:
    """COCO result entries of one image: dataset category id, compressed RLE (str counts), score, xywh box."""
    if result.masks.ndim != 3:
        raise DatasetError(f"image {image_id!r}", f"instance masks must be (N, H, W), got {result.masks.shape}")
    out = []
    for rle, box, score, label in zip(result.to_rle(), result.boxes, result.scores, result.labels):
        if not 0 <= int(label) < len(categories):
            raise DatasetError(f"image {image_id!r}", f"class {int(label)} outside 0..{len(categories) - 1}")
        x0, y0, x1, y1 = (float(v) for v in box)
        out.append({"image_id": image_id, "category_id": int(categories[int(label)]["id"]), "segmentation": rle,
                    "score": float(score), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return out


def write_coco_instance_results(json_file: str | Path, results: Iterable[tuple[int | str, InstanceResult]],
                                categories: list[dict]) -> Path:
    """Write ``(image_id, InstanceResult)`` pairs as a COCO results list (``loadRes`` format), atomically."""
    entries: list[dict] = []
    for image_id, result in results:
        entries.extend(instance_results_to_coco(image_id, result, categories))
    return atomic_write_json(json_file, entries)


def write_coco_instances(json_file: str | Path, samples: Iterable[Sample], categories: list[dict]) -> Path:
    """Write samples as a COCO instance ground-truth JSON (compressed RLE, never polygons), atomically.

    Instances are ``sample.instance_annotations()`` (the panoptic things, crowd flagged, when a sample
    has no instance list); empty masks are left out. ``file_name`` is the image's name, so the
    reader finds the images next to the JSON unless given ``image_dir``.
    """
    from pycocotools import mask as mask_util

    images, annotations, image_ids = [], [], set()
    for s in samples:
        if s.image_id in image_ids:
            raise DatasetError(json_file, f"two samples with image id {s.image_id!r}")
        image_ids.add(s.image_id)
        images.append({"id": s.image_id, "file_name": Path(s.file_name).name, "height": s.height, "width": s.width})
        for a in s.instance_annotations():
            if not 0 <= a.category_id < len(categories):
                raise DatasetError(s.file_name, f"class {a.category_id} outside 0..{len(categories) - 1}")
            if (a.height, a.width) != (s.height, s.width):
                raise DatasetError(s.file_name, f"instance is {a.width}x{a.height}, image is {s.width}x{s.height}")
            rle = a.rle()
            area = int(mask_util.area(rle))
            if area == 0:
                continue
            annotations.append({
                "id": len(annotations) + 1, "image_id": s.image_id,
                "category_id": int(categories[a.category_id]["id"]),
                "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": area, "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": int(a.iscrowd)})
    data = {"images": images, "annotations": annotations, "categories": categories_for_json(categories)}
    return atomic_write_json(json_file, data)
