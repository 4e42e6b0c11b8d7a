"""LabelMe: one JSON per image (``shapes[]``, ``imagePath``, ``imageHeight``, ``imageWidth``), read and written.

Why a module of its own: LabelMe's files and its own rasterisation (``labelme.utils.shape_to_mask``:
PIL ``ImageDraw`` with a one-pixel outline, so ``polygons.py``'s ``"pil"`` convention):

- ``polygon`` (3+ points), ``rectangle`` (2 corners), ``circle`` (centre, a point on the circle)
  and ``mask`` (labelme >= 5.3: a base64 PNG of the box from ``points[0]`` to ``points[1]``,
  corners included) are regions; ``line``, ``linestrip``, ``point`` and ``points`` are skipped with
  a warning. Shapes with the same ``label`` and ``group_id`` are one object. ``flags.iscrowd``
  marks a crowd region (our writer sets it; LabelMe itself has no crowd notion).
- The image is ``imagePath`` relative to the JSON's folder (``imageData`` is not decoded: keep the
  image file beside the JSON). ``__ignore__`` / ``_background_`` shapes are void (labelme2voc).

The writer puts ``<stem>.json`` per image in a folder (with a copy of the image unless told not
to, so LabelMe opens the folder as it is), every region as polygons within ``max_iou_loss``; a
region whose polygons miss the bound is written as a ``mask`` shape.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_json
from ..images import DEFAULT_MAX_PIXELS
from .annotation_tools import ExportReport, ToolDataset, ToolImage, ToolShape, resolve_labels, sample_regions
from .errors import DatasetError
from .fileio import encode_png, image_size, read_json, require
from .polygons import mask_to_polygons, polygons_to_mask
from .records import Sample

__all__ = ["labelme_dataset", "write_labelme"]

logger = logging.getLogger(__name__)

_REGIONS = ("polygon", "rectangle", "circle", "mask")
_NOT_REGIONS = ("line", "linestrip", "point", "points")
LABELME_VERSION = "5.4.1"  # the first writing ``mask`` shapes is 5.3


def _points(shape: dict, where: str, src: Path) -> np.ndarray:
    pts = require(shape, "points", "list", where, src)
    try:
        arr = np.asarray(pts, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(src, f"{where}.points must be [[x, y], ...]") from None
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
        raise DatasetError(src, f"{where}.points must be [[x, y], ...] of finite numbers")
    return arr


def _draw(kind: str, pts: np.ndarray):
    """A decoder rasterising a rectangle or a circle as labelme's ``shape_to_mask`` does."""
    def decode(h: int, w: int) -> np.ndarray:
        from PIL import Image, ImageDraw

        image = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(image)
        (x0, y0), (x1, y1) = pts[0], pts[1]
        if kind == "rectangle":
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
        else:
            r = math.hypot(x1 - x0, y1 - y0)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], outline=1, fill=1)
        return np.asarray(image, dtype=bool)
    return decode


def _mask_shape(shape: dict, pts: np.ndarray, where: str, src: Path, h: int, w: int) -> np.ndarray:
    data = require(shape, "mask", "str", where, src)
    try:
        from PIL import Image

        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as img:
            crop = np.asarray(img) > 0
    except Exception:  # noqa: BLE001  (any decoding failure is the same user error)
        raise DatasetError(src, f"{where}.mask is not a base64 PNG") from None
    if crop.ndim == 3:
        crop = crop.any(axis=2)
    x0, y0 = int(pts[0][0]), int(pts[0][1])
    if x0 < 0 or y0 < 0 or y0 + crop.shape[0] > h or x0 + crop.shape[1] > w:
        raise DatasetError(src, f"{where}: mask of {crop.shape[1]}x{crop.shape[0]} at ({x0}, {y0}) is outside the "
                                f"{w}x{h} image")
    out = np.zeros((h, w), dtype=bool)
    out[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return out


def _read_one(src: Path) -> tuple[ToolImage, int]:
    data = read_json(src)
    if not isinstance(data, dict):
        raise DatasetError(src, f"not a LabelMe file (top level is a {type(data).__name__})")
    image_path = require(data, "imagePath", "str", "top level", src)
    image_file = (src.parent / image_path).resolve()
    h, w = data.get("imageHeight"), data.get("imageWidth")
    if not (isinstance(h, int) and isinstance(w, int)) or isinstance(h, bool) or isinstance(w, bool):
        if not image_file.is_file():
            raise DatasetError(src, "no imageHeight / imageWidth and no image at imagePath to measure")
        h, w = image_size(image_file)
    if h <= 0 or w <= 0 or h * w > DEFAULT_MAX_PIXELS:  # its masks would be drawn at this size
        raise DatasetError(src, f"image size {w}x{h} (at most {DEFAULT_MAX_PIXELS:,} pixels)")
    shapes, skipped = [], 0
    for k, shape in enumerate(require(data, "shapes", "list", "top level", src)):
        where = f"shapes[{k}]"
        if not isinstance(shape, dict):
            raise DatasetError(src, f"{where} must be an object, got {type(shape).__name__}")
        label = require(shape, "label", "str", where, src)
        kind = shape.get("shape_type") or "polygon"
        if kind in _NOT_REGIONS:
            skipped += 1
            continue
        if kind not in _REGIONS:
            raise DatasetError(src, f"{where}: unknown shape_type {kind!r}")
        pts = _points(shape, where, src)
        if kind == "polygon":
            if len(pts) < 3:
                logger.warning("%s: %s has %d points (a polygon needs 3); skipped", src, where, len(pts))
                continue
            decode = lambda hh, ww, p=pts: polygons_to_mask([p], hh, ww, "pil")  # noqa: E731
        elif len(pts) != 2:
            raise DatasetError(src, f"{where}: a {kind} has 2 points, got {len(pts)}")
        elif kind == "mask":
            mask = _mask_shape(shape, pts, where, src, h, w)
            decode = lambda hh, ww, m=mask: m  # noqa: E731
        else:
            decode = _draw(kind, pts)
        group = shape.get("group_id")
        if group is not None and (not isinstance(group, int) or isinstance(group, bool)):
            raise DatasetError(src, f"{where}.group_id must be an integer or null, got {group!r}")
        flags = shape.get("flags") or {}
        crowd = bool(flags.get("iscrowd", False)) if isinstance(flags, dict) else False
        shapes.append(ToolShape(label=label, decode=decode, z=k, group=group, iscrowd=crowd, where=where))
    return ToolImage(image_id=src.stem, file_name=str(image_file), height=h, width=w, shapes=shapes), skipped


def labelme_dataset(path: str | Path, categories: list[dict] | str | None = None,
                    label_map: dict[str, str] | None = None) -> ToolDataset:
    """Reader of one LabelMe JSON or a folder of them (searched recursively, in name order)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.json") if not p.name.startswith("."))
        if not files:
            raise DatasetError(path, "no LabelMe .json files in the folder")
    elif path.is_file():
        files = [path]
    else:
        raise DatasetError(path, "no such file or folder")
    images, skipped = [], 0
    for f in files:
        im, n = _read_one(f)
        images.append(im)
        skipped += n
    if skipped:
        logger.warning("%s: %d line/point shape(s) are not regions; skipped", path, skipped)
    stems = [Path(im.file_name).name for im in images]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})[:3]
        raise DatasetError(path, f"several JSON files name the image {', '.join(dup)}")
    for im in images:  # image ids: the stems, unique as the image names are
        im.image_id = Path(im.file_name).stem
    cats, index = resolve_labels((s.label for im in images for s in im.shapes), categories, path,
                                 label_map=label_map)
    root = path if path.is_dir() else path.parent
    return ToolDataset(images, cats, index, root, path.stem, path)


def write_labelme(folder: str | Path, samples: Iterable[Sample], categories: list[dict], max_iou_loss: float = 0.01,
                  copy_images: bool = True) -> ExportReport:
    """Write ``folder/<stem>.json`` per sample (polygons within ``max_iou_loss``, else ``mask`` shapes); atomic.

    With ``copy_images`` the image is copied beside its JSON (``imagePath`` is its name); without, and
    when the image does not exist, ``imagePath`` is the path from the folder to the image.
    """
    folder = Path(folder)
    report = ExportReport(folder)
    for s in samples:
        src = Path(s.file_name)
        if copy_images and src.is_file():
            dst = folder / src.name
            if src.resolve() != dst.resolve():
                atomic_write_bytes(dst, src.read_bytes())
            image_path = src.name
        else:
            image_path = os.path.relpath(src.resolve(), folder.resolve()) if src.is_file() else src.name
        shapes = []
        regions = sample_regions(s, categories)
        for k, r in enumerate(regions):
            fit = mask_to_polygons(r.mask, max_iou_loss, "pil")
            base = {"label": r.label(categories), "description": "", "flags": {"iscrowd": True} if r.iscrowd else {}}
            if fit.ok and fit.polygons:
                report.add_polygon(fit.iou)
                group = k if len(fit.polygons) > 1 else None
                shapes += [{**base, "points": p.tolist(), "group_id": group, "shape_type": "polygon", "mask": None}
                           for p in fit.polygons]
            else:
                report.masks += 1
                ys, xs = np.nonzero(r.mask.any(axis=1))[0], np.nonzero(r.mask.any(axis=0))[0]
                crop = r.mask[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
                png = base64.b64encode(encode_png(crop.astype(np.uint8) * 255)).decode("ascii")
                shapes.append({**base, "points": [[float(xs[0]), float(ys[0])], [float(xs[-1]), float(ys[-1])]],
                               "group_id": None, "shape_type": "mask", "mask": png})
            report.regions += 1
        atomic_write_json(folder / f"{src.stem}.json", {
            "version": LABELME_VERSION, "flags": {}, "shapes": shapes, "imagePath": image_path, "imageData": None,
            "imageHeight": s.height, "imageWidth": s.width})
        report.images += 1
    return report
