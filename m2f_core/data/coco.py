"""COCO panoptic and COCO instance datasets: readers, id/RGB helpers and (atomic) writers.

COCO panoptic = one JSON (``images``, ``annotations[]`` with ``file_name`` + ``segments_info``,
``categories`` with ``isthing``) + a folder of PNGs where segment id = R + 256 G + 256^2 B and 0 is
void. COCO instances = one JSON whose ``segmentation`` is polygons, an uncompressed RLE or a
compressed RLE, decoded with pycocotools. Inside the records class ids are contiguous (index into
``categories``, sorted by dataset id as Detectron2 does); the files hold dataset ids.

The writers produce exactly these formats (instance masks always as compressed RLE with ``counts``
as str, never polygons, so holes survive) and replace each file atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..structures import InstanceResult, PanopticResult, mask_bbox
from .errors import DatasetError
from .images import DEFAULT_MAX_PIXELS
from .records import (
    GTSegment,
    InstanceAnnotation,
    Sample,
    SegmentationDataset,
    atomic_write_bytes,
    atomic_write_json,
    encode_png,
    normalize_categories,
    read_json,
    read_png,
    require,
    resolve_categories,
)

logger = logging.getLogger(__name__)

MAX_SEGMENT_ID = 256**3 - 1  # largest id an RGB PNG can hold

# --------------------------------------------------------------------------------------------
# id <-> RGB


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W) int32 segment ids of an (H, W, 3|4) uint8 panoptic PNG: R + 256 G + 256^2 B."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB encoding of an (H, W) map of segment ids in [0, 2^24)."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"expected an (H, W) integer id map, got {ids.dtype} {ids.shape}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) > MAX_SEGMENT_ID):
        raise ValueError(f"segment ids must be in [0, {MAX_SEGMENT_ID}], got {int(ids.min())}..{int(ids.max())}")
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """(H, W) int32 segment ids of a COCO panoptic PNG."""
    arr = read_png(path)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise DatasetError(path, f"not an RGB panoptic PNG (pixels are {arr.dtype} with shape {arr.shape})")
    return rgb2id(arr)


def write_panoptic_png(path: str | Path, segment_map: np.ndarray) -> Path:
    """Write an (H, W) id map as a COCO panoptic PNG, atomically."""
    try:
        rgb = id2rgb(segment_map)
    except ValueError as e:
        raise DatasetError(path, str(e)) from None
    return atomic_write_bytes(path, encode_png(rgb))


def _fmt_ids(ids: Iterable[int], limit: int = 6) -> str:
    ids = sorted(ids)
    head = ", ".join(str(i) for i in ids[:limit])
    return head + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def _json_categories(data: dict, categories: list[dict] | str | None, source: Path, isthing: bool) -> list[dict]:
    """Explicit categories, else the JSON's sorted by dataset id (Detectron2's contiguous order)."""
    cats = resolve_categories(categories, source)
    if cats is not None:
        return cats
    if "categories" not in data:
        raise DatasetError(source, "no 'categories' in the file; pass categories=")
    cats = normalize_categories(data["categories"], source, default_isthing=isthing)
    return sorted(cats, key=lambda c: c["id"])


def _image_id(obj: dict, key: str, where: str, source: Path) -> int | str:
    value = obj.get(key)
    if key not in obj:
        raise DatasetError(source, f"{where} has no {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DatasetError(source, f"{where}.{key} must be an int or a string, got {type(value).__name__}")
    return value


def _read_images(data: dict, source: Path, required: bool) -> dict[int | str, tuple[str, int, int]] | None:
    """image id -> (file_name, height, width) of the JSON's ``images``."""
    if "images" not in data and not required:
        return None
    images = require(data, "images", "list", "top level", source)
    out: dict[int | str, tuple[str, int, int]] = {}
    for i, img in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(img, dict):
            raise DatasetError(source, f"{where} must be an object, got {type(img).__name__}")
        iid = _image_id(img, "id", where, source)
        if iid in out:
            raise DatasetError(source, f"duplicate image id {iid!r}")
        h = require(img, "height", "int", where, source)
        w = require(img, "width", "int", where, source)
        if h <= 0 or w <= 0:
            raise DatasetError(source, f"{where} has size {w}x{h}")
        if h * w > DEFAULT_MAX_PIXELS:  # its masks would be decoded at this size
            raise DatasetError(source, f"{where} is {w}x{h}: more than the {DEFAULT_MAX_PIXELS:,} pixel limit")
        out[iid] = (require(img, "file_name", "str", where, source), h, w)
    return out


def _flag(obj: dict, key: str, where: str, source: Path) -> bool:
    value = obj.get(key, 0)
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise DatasetError(source, f"{where}.{key} must be 0 or 1, got {value!r}")


# --------------------------------------------------------------------------------------------
# COCO panoptic


def default_panoptic_dirs(json_file: Path) -> tuple[Path, Path]:
    """Detectron2's layout: (PNG folder, image folder) of a panoptic JSON.

    ``coco/annotations/panoptic_val2017.json`` -> ``coco/panoptic_val2017/``, ``coco/val2017/``;
    ``x/foo.json`` -> ``x/foo/`` and ``x/``.
    """
    stem = json_file.stem
    beside = json_file.with_suffix("")
    if json_file.parent.name == "annotations":
        root = json_file.parent.parent
        png_dir = beside if beside.is_dir() else root / stem
        image_dir = root / stem[len("panoptic_"):] if stem.startswith("panoptic_") else root
        return png_dir, image_dir
    return beside, json_file.parent


class CocoPanoptic(SegmentationDataset):
    """COCO panoptic JSON + PNG folder; each item's ``panoptic`` has ``GTSegment``s (contiguous ids).

    ``png_dir`` / ``image_dir`` default to Detectron2's layout (``default_panoptic_dirs``).
    ``categories``: a list or shipped name overriding the JSON's (e.g. to use a model's class order).
    Without ``images`` in the JSON (a prediction file) the size comes from the PNG and the image name
    is the PNG's with ``.jpg``, as Detectron2 does. Area and box of each segment are recomputed from
    the PNG. Structural problems raise ``DatasetError`` here; problems of a PNG when its item is read.
    """

    def __init__(self, json_file: str | Path, png_dir: str | Path | None = None, image_dir: str | Path | None = None,
                 categories: list[dict] | str | None = None) -> None:
        self.json_file = src = Path(json_file)
        data = read_json(src)
        if not isinstance(data, dict):
            raise DatasetError(src, f"top level must be an object with 'annotations', got {type(data).__name__}")
        super().__init__(_json_categories(data, categories, src, isthing=False), src.stem)
        d_png, d_img = default_panoptic_dirs(src)
        self.png_dir = Path(png_dir) if png_dir is not None else d_png
        self.image_dir = Path(image_dir) if image_dir is not None else d_img
        if not self.png_dir.is_dir():
            raise DatasetError(self.png_dir, f"no such folder (the PNGs of {src.name}; pass png_dir=)")
        self.images = _read_images(data, src, required=False)
        self._items: list[tuple[int | str, str, list[tuple[int, int, bool]]]] = []
        seen: set[int | str] = set()
        for i, ann in enumerate(require(data, "annotations", "list", "top level", src)):
            where = f"annotations[{i}]"
            if not isinstance(ann, dict):
                raise DatasetError(src, f"{where} must be an object, got {type(ann).__name__}")
            image_id = _image_id(ann, "image_id", where, src)
            if image_id in seen:
                raise DatasetError(src, f"{where}: a second annotation for image {image_id!r}")
            seen.add(image_id)
            if self.images is not None and image_id not in self.images:
                raise DatasetError(src, f"{where}: image {image_id!r} is not in 'images'")
            png_name = require(ann, "file_name", "str", where, src)
            segments, ids = [], set()
            for j, seg in enumerate(require(ann, "segments_info", "list", where, src)):
                w = f"{where}.segments_info[{j}]"
                if not isinstance(seg, dict):
                    raise DatasetError(src, f"{w} must be an object, got {type(seg).__name__}")
                sid = require(seg, "id", "int", w, src)
                if not 0 < sid <= MAX_SEGMENT_ID:
                    raise DatasetError(src, f"{w}: segment id {sid} outside 1..{MAX_SEGMENT_ID}")
                if sid in ids:
                    raise DatasetError(src, f"{where}: duplicate segment id {sid}")
                ids.add(sid)
                cat = require(seg, "category_id", "int", w, src)
                if cat not in self.dataset_id_to_contiguous:
                    raise DatasetError(src, f"{w}: unknown category id {cat}")
                segments.append((sid, self.dataset_id_to_contiguous[cat], _flag(seg, "iscrowd", w, src)))
            self._items.append((image_id, png_name, segments))

    def __len__(self) -> int:
        return len(self._items)

    def _load(self, index: int) -> Sample:
        image_id, png_name, segs = self._items[index]
        png = self.png_dir / png_name
        ids = read_panoptic_png(png)
        if self.images is not None:
            image_name, h, w = self.images[image_id]
            if ids.shape != (h, w):
                raise DatasetError(png, f"annotation is {ids.shape[1]}x{ids.shape[0]} but image {image_id!r} "
                                        f"is {w}x{h} in {self.json_file.name}")
        else:
            image_name, (h, w) = Path(png_name).with_suffix(".jpg").name, ids.shape
        present = set(np.unique(ids).tolist()) - {0}
        declared = {sid for sid, _, _ in segs}
        if declared - present:
            raise DatasetError(png, f"segment ids {_fmt_ids(declared - present)} of segments_info are absent "
                                    "from the PNG")
        if present - declared:
            raise DatasetError(png, f"PNG has segment ids {_fmt_ids(present - declared)} that are not in "
                                    f"segments_info of {self.json_file.name}")
        segments = [GTSegment(id=sid, category_id=cat, isthing=self.categories[cat]["isthing"], iscrowd=crowd)
                    for sid, cat, crowd in segs]
        panoptic = PanopticResult(ids, segments).update_stats()
        return Sample(image_id=image_id, file_name=self.image_dir / image_name, height=h, width=w,
                      panoptic=panoptic, annotation_file=png)


def coco_panoptic_segments_info(panoptic: PanopticResult, categories: list[dict],
                                source: str | Path = "panoptic") -> list[dict]:
    """COCO ``segments_info`` of a panoptic result: dataset category ids, area and box from the map.

    Segments with no pixels are left out (an edit may erase one); pixels whose id has no segment,
    duplicate ids and class ids outside ``categories`` are errors.
    """
    seg_map = panoptic.segment_map
    values, counts = np.unique(seg_map, return_counts=True)
    area = dict(zip(values.tolist(), counts.tolist()))
    declared: set[int] = set()
    for s in panoptic.segments:
        if s.id in declared:
            raise DatasetError(source, f"duplicate segment id {s.id}")
        declared.add(s.id)
        if not 0 < s.id <= MAX_SEGMENT_ID:
            raise DatasetError(source, f"segment id {s.id} outside 1..{MAX_SEGMENT_ID}")
    orphans = set(area) - declared - {0}
    if orphans:
        raise DatasetError(source, f"the map has segment ids {_fmt_ids(orphans)} with no segment")
    out = []
    for s in panoptic.segments:
        if not area.get(s.id, 0):
            continue
        if not 0 <= s.category_id < len(categories):
            raise DatasetError(source, f"segment {s.id}: class {s.category_id} outside 0..{len(categories) - 1}")
        x, y, w, h = mask_bbox(seg_map == s.id)
        out.append({"id": int(s.id), "category_id": int(categories[s.category_id]["id"]),
                    "iscrowd": int(bool(getattr(s, "iscrowd", False))), "area": int(area[s.id]),
                    "bbox": [int(x), int(y), int(w), int(h)]})
    return out


def _categories_for_json(categories: list[dict]) -> list[dict]:
    out = []
    for c in categories:
        d = {k: v for k, v in c.items() if k not in ("id", "name", "isthing", "color")}
        out.append({"id": int(c["id"]), "name": c["name"], "isthing": int(bool(c.get("isthing", 1))),
                    "color": [int(v) for v in c.get("color", (0, 0, 0))], **d})
    return out


def write_coco_panoptic(json_file: str | Path, samples: Iterable[Sample], categories: list[dict],
                        png_dir: str | Path | None = None) -> Path:
    """Write samples' ``panoptic`` as COCO panoptic: one PNG per image + the JSON; every file atomic.

    PNGs go to ``png_dir`` (default: the JSON's path without ``.json``), named after the image with
    ``.png``. ``categories`` is the contiguous class list (a reader's ``categories`` or
    ``categories_from_config(config)``); the files get its dataset ids. The JSON is written last.
    """
    json_file = Path(json_file)
    png_dir = Path(png_dir) if png_dir is not None else json_file.with_suffix("")
    images, annotations, names, image_ids = [], [], set(), set()
    for s in samples:
        if s.panoptic is None:
            raise DatasetError(s.file_name, "sample has no panoptic annotation to write")
        if s.image_id in image_ids:
            raise DatasetError(json_file, f"two samples with image id {s.image_id!r}")
        image_ids.add(s.image_id)
        png_name = Path(s.file_name).with_suffix(".png").name
        if png_name in names:
            raise DatasetError(json_file, f"two samples would write {png_name}")
        names.add(png_name)
        if (s.panoptic.height, s.panoptic.width) != (s.height, s.width):
            raise DatasetError(s.file_name, f"panoptic map is {s.panoptic.width}x{s.panoptic.height}, "
                                            f"image is {s.width}x{s.height}")
        segments_info = coco_panoptic_segments_info(s.panoptic, categories, source=png_dir / png_name)
        write_panoptic_png(png_dir / png_name, s.panoptic.segment_map)
        images.append({"id": s.image_id, "file_name": Path(s.file_name).name, "height": s.height, "width": s.width})
        annotations.append({"image_id": s.image_id, "file_name": png_name, "segments_info": segments_info})
    data = {"images": images, "annotations": annotations, "categories": _categories_for_json(categories)}
    return atomic_write_json(json_file, data)


# --------------------------------------------------------------------------------------------
# COCO instances


class CocoInstances(SegmentationDataset):
    """COCO instance JSON; each item's ``instances`` keep their polygons / RLE, decoded on demand.

    Images are listed in the JSON's order (images without annotations included); ``image_dir``
    defaults to ``ROOT/{split}`` for ``ROOT/annotations/instances_{split}.json`` (Detectron2), else
    the JSON's folder. Polygons with fewer than 3 points are dropped (as Detectron2 does) and an
    instance left with none is skipped with a warning; everything else malformed is a ``DatasetError``.
    """

    def __init__(self, json_file: str | Path, image_dir: str | Path | None = None,
                 categories: list[dict] | str | None = None) -> None:
        self.json_file = src = Path(json_file)
        data = read_json(src)
        if not isinstance(data, dict):
            raise DatasetError(src, f"top level must be an object with 'images', got {type(data).__name__}")
        super().__init__(_json_categories(data, categories, src, isthing=True), src.stem)
        if image_dir is None:
            image_dir = src.parent
            if src.parent.name == "annotations" and src.stem.startswith("instances_"):
                image_dir = src.parent.parent / src.stem[len("instances_"):]
        self.image_dir = Path(image_dir)
        images = _read_images(data, src, required=True)
        assert images is not None
        self.images = images
        self._image_ids = list(images)
        self._anns: dict[int | str, list[tuple[int, dict]]] = {iid: [] for iid in images}
        ann_ids: set[int | str] = set()
        for i, ann in enumerate(require(data, "annotations", "list", "top level", src, default=[])):
            where = f"annotations[{i}]"
            if not isinstance(ann, dict):
                raise DatasetError(src, f"{where} must be an object, got {type(ann).__name__}")
            image_id = _image_id(ann, "image_id", where, src)
            if image_id not in images:
                raise DatasetError(src, f"{where}: image {image_id!r} is not in 'images'")
            if "id" in ann:
                aid = _image_id(ann, "id", where, src)
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
        return len(self._image_ids)

    def _load(self, index: int) -> Sample:
        image_id = self._image_ids[index]
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
        seg = _check_segmentation(ann["segmentation"], where, h, w, src)
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
                                  height=h, width=w, iscrowd=_flag(ann, "iscrowd", where, src), bbox=bbox,
                                  id=aid if isinstance(aid, int) else None)


def _check_segmentation(seg: list | dict, where: str, h: int, w: int, src: Path) -> list | dict | None:
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
    data = {"images": images, "annotations": annotations, "categories": _categories_for_json(categories)}
    return atomic_write_json(json_file, data)
