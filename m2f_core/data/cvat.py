"""CVAT: its "CVAT for images 1.1" XML and its "COCO 1.0" JSON, read into records and written from them.

Why a module of its own: the two exports CVAT users download for segmentation, with CVAT's own
conventions (see ``docs/interchange.md`` for the sources):

- **CVAT for images 1.1** (``annotations.xml``, images in ``images/`` beside it): ``<image id name
  width height>`` holding ``<polygon points="x,y;x,y">``, ``<box xtl ytl xbr ybr rotation>``,
  ``<ellipse cx cy rx ry>`` and ``<mask rle left top width height>``, each with ``label``,
  ``source``, ``occluded``, ``z_order`` and optional ``group_id``. A mask's ``rle`` is the run
  lengths of its box (``width`` x ``height`` pixels from ``left``, ``top``), row-major, starting
  with a run of background (which may be 0). Shapes of one ``group_id`` and label are one object.
  Polylines, points, cuboids, skeletons and tags are not regions: they are skipped with a warning.
- **COCO 1.0** (``annotations/instances_<subset>.json``, images in ``images/<subset>/`` or
  ``images/``): COCO instances whose categories start at 1, with an ``attributes`` dict. CVAT
  writes every MASK as an uncompressed RLE with ``iscrowd: 1``, so ``iscrowd`` there does not mean
  crowd: an annotation is a crowd only when its ``attributes`` say ``is_crowd``. A rectangle is an
  annotation with an empty ``segmentation``: its ``bbox`` is the region.

Polygons are rasterised with pycocotools (``polygons.py``'s ``"coco"`` convention). Readers follow
``annotation_tools`` (labels, painting); writers write masks, or polygons within ``max_iou_loss``
when ``polygons=True`` (a region whose polygons miss the bound stays a mask).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_json
from ..images import DEFAULT_MAX_PIXELS
from .annotation_tools import (
    IGNORE_LABEL_NAME,
    ExportReport,
    Region,
    ToolDataset,
    ToolImage,
    ToolShape,
    polygon_decoder,
    resolve_labels,
    sample_regions,
)
from .categories import normalize_categories
from .coco_instances import check_segmentation as check_coco_segmentation
from .coco_json import iter_annotations, read_images
from .errors import DatasetError
from .fileio import read_json, require
from .polygons import mask_to_polygons
from .records import InstanceAnnotation, Sample

__all__ = [
    "cvat_coco_dataset", "cvat_mask_rle", "cvat_xml_dataset", "decode_cvat_mask_rle", "open_cvat",
    "write_cvat_coco", "write_cvat_xml",
]

logger = logging.getLogger(__name__)

_REGION_TAGS = ("polygon", "box", "mask", "ellipse")
_OTHER_TAGS = ("polyline", "points", "cuboid", "skeleton", "tag")

# --------------------------------------------------------------------------------------------
# CVAT's mask RLE


def cvat_mask_rle(mask: np.ndarray) -> tuple[list[int], int, int, int, int]:
    """(runs, left, top, width, height) of a non-empty (H, W) mask as CVAT's ``<mask>`` stores it."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if ys.size == 0:
        raise ValueError("an empty mask has no CVAT box")
    top, left = int(ys[0]), int(xs[0])
    crop = mask[top:int(ys[-1]) + 1, left:int(xs[-1]) + 1]
    return _runs(crop.reshape(-1)), left, top, int(crop.shape[1]), int(crop.shape[0])


def _runs(flat: np.ndarray) -> list[int]:
    """Run lengths of a flat bool array, the first run counting False values (0 if it starts True)."""
    flat = flat.astype(bool)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def decode_cvat_mask_rle(runs: list[int], left: int, top: int, width: int, height: int,
                         image_height: int, image_width: int) -> np.ndarray:
    """(H, W) bool mask of CVAT's mask RLE (see ``cvat_mask_rle``); ValueError if it does not fit."""
    if width <= 0 or height <= 0 or left < 0 or top < 0 or left + width > image_width or top + height > image_height:
        raise ValueError(f"mask box {width}x{height} at ({left}, {top}) is outside the {image_width}x{image_height} "
                         "image")
    if any(r < 0 for r in runs) or sum(runs) != width * height:
        raise ValueError(f"mask runs cover {sum(runs)} pixels, its {width}x{height} box {width * height}")
    values = np.arange(len(runs)) % 2 == 1
    out = np.zeros((image_height, image_width), dtype=bool)
    out[top:top + height, left:left + width] = np.repeat(values, runs).reshape(height, width)
    return out


# --------------------------------------------------------------------------------------------
# Reading the XML


def _xml_root(path: Path) -> ET.Element:
    data = path.read_bytes() if path.is_file() else None
    if data is None:
        raise DatasetError(path, "no such file")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:  # entity expansion is a memory bomb: CVAT never writes them
        raise DatasetError(path, "XML with a DOCTYPE or entities is refused")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise DatasetError(path, f"not valid XML ({e})") from None
    if root.tag != "annotations":
        raise DatasetError(path, f"not a CVAT XML file (root element <{root.tag}>, expected <annotations>)")
    return root


def _number(el: ET.Element, key: str, path: Path, where: str, default: float | None = None) -> float:
    text = el.get(key)
    if text is None:
        if default is not None:
            return default
        raise DatasetError(path, f"{where} has no {key!r}")
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(path, f"{where}.{key} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise DatasetError(path, f"{where}.{key} must be finite, got {text!r}")
    return value


def _int(el: ET.Element, key: str, path: Path, where: str, default: int | None = None) -> int:
    value = _number(el, key, path, where, None if default is None else float(default))
    if value != int(value):
        raise DatasetError(path, f"{where}.{key} must be an integer, got {el.get(key)!r}")
    return int(value)


def _points(text: str | None, path: Path, where: str) -> np.ndarray:
    try:
        pts = np.array([[float(v) for v in pair.split(",")] for pair in (text or "").split(";") if pair.strip()])
    except ValueError:
        raise DatasetError(path, f"{where}.points must be 'x,y;x,y;...', got {str(text)[:40]!r}") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise DatasetError(path, f"{where}.points must be 'x,y;x,y;...', got {str(text)[:40]!r}")
    return pts


def _rotated_box(x0: float, y0: float, x1: float, y1: float, degrees: float, cx: float, cy: float) -> np.ndarray:
    """Corners of a box rotated clockwise (image axes) by ``degrees`` around (cx, cy)."""
    pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    if degrees:
        a = math.radians(degrees)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        pts = (pts - [cx, cy]) @ rot.T + [cx, cy]
    return pts


def _ellipse(cx: float, cy: float, rx: float, ry: float, degrees: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    pts = np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return pts @ rot.T + [cx, cy]


def _xml_shape(el: ET.Element, path: Path, where: str, h: int, w: int) -> ToolShape:
    label = el.get("label")
    if not label:
        raise DatasetError(path, f"{where} has no label")
    tag = el.tag
    if tag == "polygon":
        pts = _points(el.get("points"), path, where)
        if len(pts) < 3:
            raise DatasetError(path, f"{where} has {len(pts)} points (a polygon needs 3)")
        decode = polygon_decoder([pts], h, w, path, where)
    elif tag == "box":
        x0, y0 = _number(el, "xtl", path, where), _number(el, "ytl", path, where)
        x1, y1 = _number(el, "xbr", path, where), _number(el, "ybr", path, where)
        rot = _number(el, "rotation", path, where, 0.0)
        decode = polygon_decoder([_rotated_box(x0, y0, x1, y1, rot, (x0 + x1) / 2, (y0 + y1) / 2)], h, w, path, where)
    elif tag == "ellipse":
        ellipse = _ellipse(_number(el, "cx", path, where), _number(el, "cy", path, where),
                           _number(el, "rx", path, where), _number(el, "ry", path, where),
                           _number(el, "rotation", path, where, 0.0))
        decode = polygon_decoder([ellipse], h, w, path, where)
    else:
        box = [_int(el, k, path, where) for k in ("left", "top", "width", "height")]
        try:
            runs = [int(v) for v in (el.get("rle") or "").split(",")]
        except ValueError:
            raise DatasetError(path, f"{where}.rle must be comma-separated integers") from None
        try:
            mask = decode_cvat_mask_rle(runs, *box, h, w)
        except ValueError as e:
            raise DatasetError(path, f"{where}: {e}") from None
        decode = lambda hh, ww, m=mask: m  # noqa: E731  (decoded once, to check it here)
    crowd = any(a.get("name") == "is_crowd" and (a.text or "").strip().lower() in ("true", "1")
                for a in el.findall("attribute"))
    group = _int(el, "group_id", path, where, 0)
    return ToolShape(label=label, decode=decode, z=_int(el, "z_order", path, where, 0),
                     group=group or None, iscrowd=crowd, where=where)


def cvat_xml_dataset(xml_file: str | Path, image_dir: str | Path | None = None,
                     categories: list[dict] | str | None = None,
                     label_map: dict[str, str] | None = None) -> ToolDataset:
    """Reader of a "CVAT for images 1.1" XML; images in ``images/`` beside it, else beside it."""
    path = Path(xml_file)
    root = _xml_root(path)
    if root.find("track") is not None:
        raise DatasetError(path, "has <track> elements (CVAT for video): export the task as 'CVAT for images 1.1'")
    meta = root.find("meta")
    names = [label.find("name") for label in meta.iter("label")] if meta is not None else []
    declared = [n.text.strip() for n in names if n is not None and n.text]  # the task's (or project's) labels
    images, skipped, subsets = [], 0, []
    for i, im in enumerate(root.findall("image")):
        where = f"image[{i}]"
        name = im.get("name")
        if not name:
            raise DatasetError(path, f"{where} has no name")
        h, w = _int(im, "height", path, where), _int(im, "width", path, where)
        if h <= 0 or w <= 0 or h * w > DEFAULT_MAX_PIXELS:  # its masks would be decoded at this size
            raise DatasetError(path, f"{where} has size {w}x{h} (at most {DEFAULT_MAX_PIXELS:,} pixels)")
        shapes = []
        for k, el in enumerate(im):
            if el.tag in _REGION_TAGS:
                shapes.append(_xml_shape(el, path, f"{where} ({name}) <{el.tag}> #{k}", h, w))
            elif el.tag in _OTHER_TAGS:
                skipped += 1
        images.append(ToolImage(image_id=_int(im, "id", path, where, i), file_name=name, height=h, width=w,
                                shapes=shapes))
        subsets.append(im.get("subset"))
    if skipped:
        logger.warning("%s: %d polyline/points/cuboid/skeleton/tag element(s) are not regions; skipped", path, skipped)
    cats, index = resolve_labels((s.label for im in images for s in im.shapes), categories, path, declared, label_map)
    image_dir = Path(image_dir) if image_dir is not None else (
        path.parent / "images" if (path.parent / "images").is_dir() else path.parent)
    for im, subset in zip(images, subsets):  # a project export keeps each subset's images in images/<subset>/
        if subset and not (image_dir / im.file_name).is_file() and (image_dir / subset / im.file_name).is_file():
            im.file_name = f"{subset}/{im.file_name}"
    return ToolDataset(images, cats, index, image_dir, path.stem, path)


# --------------------------------------------------------------------------------------------
# Reading CVAT's COCO


def _coco_image_dir(root: Path, json_file: Path) -> Path:
    """CVAT's layout: ``images/<subset>/`` for ``annotations/instances_<subset>.json``, else ``images/``."""
    subset = json_file.stem[len("instances_"):] if json_file.stem.startswith("instances_") else ""
    if subset and (root / "images" / subset).is_dir():
        return root / "images" / subset
    return root / "images" if (root / "images").is_dir() else json_file.parent


def cvat_coco_dataset(json_file: str | Path, image_dir: str | Path | None = None,
                      categories: list[dict] | str | None = None,
                      label_map: dict[str, str] | None = None) -> ToolDataset:
    """Reader of CVAT's "COCO 1.0" export (see the module doc for its ``iscrowd`` rule).

    An annotation with an empty ``segmentation`` is a CVAT rectangle: its ``bbox`` is the region.
    Polygons and RLEs are checked as ``coco_instances`` checks them and decoded with pycocotools.
    """
    path = Path(json_file)
    root = path.parent.parent if path.parent.name == "annotations" else path.parent
    image_dir = Path(image_dir) if image_dir is not None else _coco_image_dir(root, path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(path, f"top level must be an object with 'images', got {type(data).__name__}")
    images = read_images(data, path, required=True)
    assert images is not None
    declared = normalize_categories(require(data, "categories", "list", "top level", path), path)
    names = {c["id"]: c["name"] for c in declared}
    shapes: dict[int | str, list[ToolShape]] = {iid: [] for iid in images}
    for k, (where, ann, image_id) in enumerate(iter_annotations(data, images, path)):
        cat = require(ann, "category_id", "int", where, path)
        if cat not in names:
            raise DatasetError(path, f"{where}: unknown category id {cat}")
        _, h, w = images[image_id]
        attributes = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
        decode = _coco_decoder(ann, where, h, w, path)
        if decode is not None:
            shapes[image_id].append(ToolShape(label=names[cat], decode=decode, z=k,
                                              iscrowd=bool(attributes.get("is_crowd", False)), where=where))
    tool_images = [ToolImage(iid, name, h, w, shapes[iid]) for iid, (name, h, w) in images.items()]
    order = [c["name"] for c in sorted(declared, key=lambda c: c["id"])]
    cats, index = resolve_labels((s.label for im in tool_images for s in im.shapes), categories, path, order,
                                 label_map)
    return ToolDataset(tool_images, cats, index, image_dir, path.stem, path)


def _coco_decoder(ann: dict, where: str, h: int, w: int, path: Path):
    """A decoder of one COCO annotation's region: its polygons / RLE, or its bbox when it has neither."""
    seg = ann.get("segmentation")
    if seg in (None, []):
        box = ann.get("bbox")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            raise DatasetError(path, f"{where} has no segmentation and no bbox [x, y, w, h]")
        x, y, bw, bh = (float(v) for v in box)
        return polygon_decoder([_rotated_box(x, y, x + bw, y + bh, 0.0, 0.0, 0.0)], h, w, path, where)
    if not isinstance(seg, (list, dict)):
        raise DatasetError(path, f"{where}.segmentation must be polygons or an RLE object, got {type(seg).__name__}")
    checked = check_coco_segmentation(seg, where, h, w, path)
    if checked is None:
        logger.warning("%s: %s has no polygon with 3 or more points; skipped", path, where)
        return None
    inst = InstanceAnnotation(category_id=0, segmentation=checked, height=h, width=w)
    return lambda hh, ww: inst.mask()


def open_cvat(path: str | Path, **kwargs) -> ToolDataset:
    """``cvat:PATH``: an XML or JSON file, or a folder with ``annotations.xml`` or ``annotations/*.json``."""
    path = Path(path)
    if path.is_dir():
        if (path / "annotations.xml").is_file():
            return cvat_xml_dataset(path / "annotations.xml", **kwargs)
        found = sorted((path / "annotations").glob("instances_*.json"))
        if len(found) == 1:
            return cvat_coco_dataset(found[0], **kwargs)
        raise DatasetError(path, "expected annotations.xml (CVAT for images) or one annotations/instances_*.json "
                                 f"(COCO 1.0); found {len(found)} JSON files (name the subset's JSON itself)")
    if path.suffix.lower() == ".xml":
        return cvat_xml_dataset(path, **kwargs)
    if path.suffix.lower() == ".json":
        return cvat_coco_dataset(path, **kwargs)
    raise DatasetError(path, "a CVAT export is an .xml or a .json file, or a folder holding one")


# --------------------------------------------------------------------------------------------
# Writing


def _labels(categories: list[dict], regions: Iterable[Region]) -> list[str]:
    names = [c["name"] for c in categories]
    if any(r.category is None for r in regions):
        names.append(IGNORE_LABEL_NAME)
    return names


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def write_cvat_xml(path: str | Path, samples: Iterable[Sample], categories: list[dict], polygons: bool = False,
                   max_iou_loss: float = 0.01, task_name: str = "m2f export") -> ExportReport:
    """Write samples as "CVAT for images 1.1" (masks, or polygons within ``max_iou_loss``); atomic.

    ``path``: the XML file, or a folder that gets ``annotations.xml``. Each region's ``z_order`` is
    its painting order; predicted segments get ``source="auto"``, the others ``"manual"``.
    """
    path = Path(path)
    if path.suffix.lower() != ".xml":
        path = path / "annotations.xml"
    report = ExportReport(path)
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    body = []
    all_regions: list[Region] = []
    for i, s in enumerate(samples):
        regions = sample_regions(s, categories)
        all_regions += regions
        im = ET.Element("image", {"id": str(i), "name": Path(s.file_name).name, "width": str(s.width),
                                  "height": str(s.height)})
        group = 0
        for z, r in enumerate(regions):
            attrs = {"label": r.label(categories), "source": "auto" if r.source == "model" else "manual",
                     "occluded": "0"}
            fit = mask_to_polygons(r.mask, max_iou_loss, "coco") if polygons else None
            if fit is not None and fit.ok and fit.polygons:
                report.add_polygon(fit.iou)
                if len(fit.polygons) > 1:
                    group += 1
                for p in fit.polygons:
                    points = ";".join(f"{_fmt(x)},{_fmt(y)}" for x, y in p)
                    el = ET.SubElement(im, "polygon", {**attrs, "points": points, "z_order": str(z)})
                    if len(fit.polygons) > 1:
                        el.set("group_id", str(group))
                    _crowd_attribute(el, r)
            else:
                runs, left, top, w, h = cvat_mask_rle(r.mask)
                report.masks += 1
                el = ET.SubElement(im, "mask", {**attrs, "rle": ", ".join(map(str, runs)), "left": str(left),
                                                "top": str(top), "width": str(w), "height": str(h), "z_order": str(z)})
                _crowd_attribute(el, r)
            report.regions += 1
        body.append(im)
        report.images += 1
    meta = ET.SubElement(root, "meta")
    task = ET.SubElement(meta, "task")
    ET.SubElement(task, "name").text = task_name
    ET.SubElement(task, "size").text = str(report.images)
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    crowd = any(r.iscrowd for r in all_regions)
    for name in _labels(categories, all_regions):
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "type").text = "any"
        attributes = ET.SubElement(label, "attributes")
        if crowd:
            attr = ET.SubElement(attributes, "attribute")
            for k, v in (("name", "is_crowd"), ("mutable", "False"), ("input_type", "checkbox"),
                         ("default_value", "false"), ("values", "false\ntrue")):
                ET.SubElement(attr, k).text = v
    root.extend(body)
    ET.indent(root)
    atomic_write_bytes(path, ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
    return report


def _crowd_attribute(el: ET.Element, region: Region) -> None:
    if region.iscrowd:
        ET.SubElement(el, "attribute", {"name": "is_crowd"}).text = "true"


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major runs, starting with background) as CVAT writes masks."""
    return {"counts": _runs(mask.reshape(-1, order="F")), "size": [int(mask.shape[0]), int(mask.shape[1])]}


def write_cvat_coco(path: str | Path, samples: Iterable[Sample], categories: list[dict], polygons: bool = False,
                    max_iou_loss: float = 0.01) -> ExportReport:
    """Write samples as CVAT's "COCO 1.0" (uncompressed RLE with ``iscrowd: 1``, as CVAT writes masks, or
    polygons within ``max_iou_loss``); atomic. ``path``: the JSON file, or a folder that gets
    ``annotations/instances_default.json``. Crowd regions carry ``attributes.is_crowd``.
    """
    from pycocotools import mask as mask_util

    path = Path(path)
    if path.suffix.lower() != ".json":
        path = path / "annotations" / "instances_default.json"
    report = ExportReport(path)
    images, annotations, all_regions = [], [], []
    for i, s in enumerate(samples):
        images.append({"id": i + 1, "width": s.width, "height": s.height, "file_name": Path(s.file_name).name,
                       "license": 0, "flickr_url": "", "coco_url": "", "date_captured": 0})
        regions = sample_regions(s, categories)
        all_regions += regions
        for r in regions:
            rle = mask_util.encode(np.asfortranarray(r.mask.astype(np.uint8)))
            fit = mask_to_polygons(r.mask, max_iou_loss, "coco") if polygons else None
            if fit is not None and fit.ok and fit.polygons:
                report.add_polygon(fit.iou)
                segmentation, crowd_flag = fit.flat(), 0
            else:
                report.masks += 1
                segmentation, crowd_flag = _uncompressed_rle(r.mask), 1
            ann = {"id": len(annotations) + 1, "image_id": i + 1, "category_id": None,
                   "segmentation": segmentation, "area": float(mask_util.area(rle)),
                   "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": crowd_flag,
                   "attributes": {"occluded": False, **({"is_crowd": True} if r.iscrowd else {})}}
            ann["label"] = r.label(categories)
            if r.score is not None:
                ann["score"] = r.score
            annotations.append(ann)
            report.regions += 1
        report.images += 1
    names = _labels(categories, all_regions)
    ids = {n: k + 1 for k, n in enumerate(names)}
    for ann in annotations:
        ann["category_id"] = ids[ann.pop("label")]
    data = {"licenses": [{"name": "", "id": 0, "url": ""}],
            "info": {"contributor": "", "date_created": "", "description": "", "url": "", "version": "", "year": ""},
            "categories": [{"id": ids[n], "name": n, "supercategory": ""} for n in names],
            "images": images, "annotations": annotations}
    atomic_write_json(path, data)
    return report
