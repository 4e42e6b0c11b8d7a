"""COCO panoptic: the id <-> RGB PNG encoding, the reader (``CocoPanoptic``) and the writer.

COCO panoptic = one JSON (``images``, ``annotations[]`` with ``file_name`` + ``segments_info``,
``categories`` with ``isthing``) + a folder of PNGs where segment id = R + 256 G + 256^2 B and 0 is
void. Inside the records class ids are contiguous (index into ``categories``, sorted by dataset id
as Detectron2 does); the files hold dataset ids. The writer replaces each file atomically.

Why a module of its own: the panoptic format (PNG + ``segments_info``) shares nothing with the
instance format but the JSON helpers of ``coco_json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_json
from ..structures import PanopticResult, mask_bbox
from .coco_json import categories_for_json, format_ids, json_categories, read_images, require_flag, require_image_id
from .errors import DatasetError
from .fileio import encode_png, read_json, read_png, require
from .layouts import Search, city_image, panoptic_json_dirs
from .records import GTSegment, Sample, SegmentationDataset

__all__ = [
    "CocoPanoptic", "coco_panoptic_segments_info", "id2rgb", "read_panoptic_png",
    "rgb2id", "write_coco_panoptic", "write_panoptic_png",
]

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


# --------------------------------------------------------------------------------------------
# COCO panoptic


class CocoPanoptic(SegmentationDataset):
    """COCO panoptic JSON + PNG folder; each item's ``panoptic`` has ``GTSegment``s (contiguous ids).

    ``png_dir`` / ``image_dir`` default to the first standard layout present (``layouts.panoptic_json_dirs``:
    the raw COCO download, Detectron2's, ADE20K's and Cityscapes' panoptic files, the synthetic generator's).
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
        super().__init__(json_categories(data, categories, src, isthing=False), src.stem)
        png_dirs, self._image_dirs = panoptic_json_dirs(src)
        self.by_city = self._image_dirs[0][1]  # Cityscapes: images in leftImg8bit/<split>/<city>/
        if png_dir is None:
            search = Search()
            png_dir = next((d for d in png_dirs if search.is_dir(d)), None)
            if png_dir is None:
                raise search.error(src, f"folder of the PNGs of {src.name} (pass png_dir=)")
        self.png_dir = Path(png_dir)
        if not self.png_dir.is_dir():
            raise DatasetError(self.png_dir, f"no such folder (the PNGs of {src.name}; pass png_dir=)")
        self.images = read_images(data, src, required=False)
        self._items: list[tuple[int | str, str, list[tuple[int, int, bool]]]] = []
        self.image_ids: list[int | str] = []  # item order
        seen: set[int | str] = set()
        for i, ann in enumerate(require(data, "annotations", "list", "top level", src)):
            where = f"annotations[{i}]"
            if not isinstance(ann, dict):
                raise DatasetError(src, f"{where} must be an object, got {type(ann).__name__}")
            image_id = require_image_id(ann, "image_id", where, src)
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
                segments.append((sid, self.dataset_id_to_contiguous[cat], require_flag(seg, "iscrowd", w, src)))
            self._items.append((image_id, png_name, segments))
            self.image_ids.append(image_id)
        self._image_dir_given = image_dir is not None
        self.image_dir = Path(image_dir) if image_dir is not None else self._default_image_dir()

    def _first_image_name(self) -> str | None:
        if not self._items or self.images is None:
            return None
        return self.images[self._items[0][0]][0]

    def image_file(self, image_name: str) -> Path:
        """Where an image of the JSON is (Cityscapes: in its city's folder)."""
        return city_image(self.image_dir, image_name) if self.by_city else self.image_dir / image_name

    def _default_image_dir(self) -> Path:
        """The first candidate folder holding the first image, else the first existing one, else the first."""
        name = self._first_image_name()
        for folder, by_city in self._image_dirs:
            if name is not None and (city_image(folder, name) if by_city else folder / name).is_file():
                return folder
        return next((d for d, _ in self._image_dirs if d.is_dir()), self._image_dirs[0][0])

    def check_images(self) -> None:
        """Raise a ``DatasetError`` naming the folders looked at when the first image is not where expected."""
        name = self._first_image_name()
        if name is None or self.image_file(name).is_file():
            return
        if self._image_dir_given:
            raise DatasetError(self.image_file(name), f"no such file (the first image of {self.json_file.name})")
        looked = ", ".join(str(d) for d, _ in self._image_dirs)
        raise DatasetError(self.json_file, f"image {name} not found; looked in: {looked} "
                                           "(pass the image folder: --images / image_dir=)")

    def __len__(self) -> int:
        return len(self._items)

    def png_name(self, index: int) -> str:
        """File name of item ``index``'s panoptic PNG, from the JSON (no file read)."""
        return self._items[index][1]

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
            raise DatasetError(png, f"segment ids {format_ids(declared - present)} of segments_info are absent "
                                    "from the PNG")
        if present - declared:
            raise DatasetError(png, f"PNG has segment ids {format_ids(present - declared)} that are not in "
                                    f"segments_info of {self.json_file.name}")
        segments = [GTSegment(id=sid, category_id=cat, isthing=self.categories[cat]["isthing"], iscrowd=crowd)
                    for sid, cat, crowd in segs]
        panoptic = PanopticResult(ids, segments).update_stats()
        return Sample(image_id=image_id, file_name=self.image_file(image_name), height=h, width=w,
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
        raise DatasetError(source, f"the map has segment ids {format_ids(orphans)} with no segment")
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
    data = {"images": images, "annotations": annotations, "categories": categories_for_json(categories)}
    return atomic_write_json(json_file, data)
