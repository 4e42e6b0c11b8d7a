"""Label Studio: its JSON export (a list of tasks), read into records and written as pre-labels or annotations.

Why a module of its own: Label Studio's task JSON and its brush RLE. A task is ``{"data": {"image":
URL}, "annotations": [{"result": [...]}], "predictions": [...]}``; each result has ``type``,
``original_width``, ``original_height`` and a ``value``:

- ``brushlabels`` with ``value.format == "rle"``: ``value.rle`` is Label Studio's own RLE of the
  RGBA image (the thi.ng rle-pack bit stream: 32-bit length, 5-bit word size - 1, four 4-bit run
  size classes - 1, then blocks "1 + class + run - 1 + value" or "0 + class + count - 1 + values");
  a pixel is in the mask when its alpha is not 0.
- ``polygonlabels``: ``value.points`` in percent of the image (a canvas: pixel i on [i, i+1), so
  ``polygons.py``'s ``"coco"`` convention); ``rectanglelabels`` (``x, y, width, height`` in
  percent, ``rotation`` in degrees around the top-left corner); ``ellipselabels`` (centre and radii
  in percent). Results of other types (choices, text, keypoints) are not regions and are skipped
  with a warning. Results sharing an ``id`` and label are one region.

Which annotation of a task: the most recently updated one that was not cancelled (``source=
"predictions"`` reads the latest prediction instead). A task with none is skipped with a warning
(not labelled yet, as opposed to labelled as empty). The image is found in ``image_dir`` by the
path of a local-files URL (``?d=``), else by the URL's file name, else by that name without the
``<8 hex>-`` prefix Label Studio gives uploads.

We encode and decode the brush RLE ourselves (vectorised, about 60 lines) rather than import
``label_studio_converter.brush``: that package imports pandas and nltk at start-up (seconds) and
decodes bit by bit in Python; the tests check our codec against it both ways.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from ..atomic import atomic_write_json
from ..images import DEFAULT_MAX_PIXELS
from .annotation_tools import (
    ExportReport,
    ToolDataset,
    ToolImage,
    ToolShape,
    polygon_decoder,
    resolve_labels,
    sample_regions,
)
from .errors import DatasetError
from .fileio import image_size, read_json, require
from .polygons import mask_to_polygons
from .records import Sample

__all__ = ["decode_brush_rle", "encode_brush_rle", "label_studio_dataset", "write_label_studio"]

logger = logging.getLogger(__name__)

_RUN_BITS = (3, 4, 8, 16)  # the run size classes Label Studio's encoder uses
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")
_NOT_REGIONS = ("choices", "textarea", "rating", "taxonomy", "number", "datetime", "relation", "pairwise", "ranker")

# --------------------------------------------------------------------------------------------
# Brush RLE


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of an (H, W) mask (RGBA, all four channels 255 inside, 0 outside)."""
    flat = np.repeat(mask.reshape(-1).astype(np.uint8) * 255, 4)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    parts = [f"{flat.size:032b}", f"{8 - 1:05b}", "".join(f"{b - 1:04b}" for b in _RUN_BITS)]
    for length, value in zip(lengths.tolist(), flat[starts].tolist()):
        while length > 0:
            n = min(length, 1 << 16)
            if n == 1:
                parts.append(f"0000{0:03b}{value:08b}")  # a literal block of one value
            else:
                k = next(i for i, b in enumerate(_RUN_BITS) if n - 1 < (1 << b))
                parts.append(f"1{k:02b}{n - 1:0{_RUN_BITS[k]}b}{value:08b}")
            length -= n
    bits = "".join(parts)
    bits += "0" * (-len(bits) % 8)
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big"))


def decode_brush_rle(rle: list[int], height: int, width: int) -> np.ndarray:
    """(H, W) bool mask (alpha != 0) of Label Studio's brush RLE; ValueError if malformed or not H x W."""
    data = np.asarray(rle)
    if data.ndim != 1 or data.dtype.kind not in "iu" or data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError("rle must be a list of byte values (0..255)")
    if data.size < 7:
        raise ValueError(f"rle has {data.size} bytes, fewer than its 7-byte header")
    bits = (np.unpackbits(data.astype(np.uint8)) + 48).tobytes().decode("ascii")
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise ValueError("rle ends in the middle of a block")
        pos += n
        return int(bits[pos - n:pos], 2)

    num = read(32)
    if num != 4 * height * width:
        raise ValueError(f"rle holds {num} values, a {width}x{height} RGBA image {4 * height * width}")
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint32)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if j > num:
            raise ValueError("rle runs past the end of the image")
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out.reshape(height, width, 4)[:, :, 3] > 0


# --------------------------------------------------------------------------------------------
# Reading


def _pick(task: dict, source: str, where: str, src: Path) -> dict | None:
    entries = require(task, source, "list", where, src, default=[])
    usable = []
    for k, e in enumerate(entries):
        if not isinstance(e, dict):
            raise DatasetError(src, f"{where}.{source}[{k}] must be an object")
        if not e.get("was_cancelled", False):
            usable.append((str(e.get("updated_at") or e.get("created_at") or ""), k, e))
    return max(usable, key=lambda t: (t[0], t[1]))[2] if usable else None


def _image_ref(task: dict, where: str, src: Path) -> str:
    data = require(task, "data", "dict", where, src)
    if isinstance(data.get("image"), str):
        return data["image"]
    refs = [v for v in data.values() if isinstance(v, str)]
    if len(refs) != 1:
        raise DatasetError(src, f"{where}.data has no 'image' (and not one text value to take for it)")
    return refs[0]


def _image_name(url: str, image_dir: Path) -> str:
    """The image's path inside ``image_dir`` (see the module doc); the bare name when none exists."""
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    rel = query["d"][0] if "d" in query else unquote(parsed.path)
    name = Path(rel).name
    stripped = _UPLOAD_PREFIX.match(name)
    candidates = [rel.lstrip("/"), name] + ([stripped.group(1)] if stripped else [])
    for c in candidates:
        if c and (image_dir / c).is_file():
            return c
    return candidates[-1]


def _size(result: dict, where: str, src: Path) -> tuple[int, int]:
    h = require(result, "original_height", "int", where, src)
    w = require(result, "original_width", "int", where, src)
    if h <= 0 or w <= 0 or h * w > DEFAULT_MAX_PIXELS:
        raise DatasetError(src, f"{where}: image size {w}x{h} out of range")
    return h, w


def _result_shape(r: dict, kind: str, label: str, h: int, w: int, z: int, where: str, src: Path) -> ToolShape:
    value = r["value"]
    scale = np.array([w / 100.0, h / 100.0])

    def num(key: str, default: float | None = None) -> float:
        v = value.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DatasetError(src, f"{where}.value.{key} must be a number, got {v!r}")
        return float(v)

    if kind == "brushlabels":
        if value.get("format") != "rle":
            raise DatasetError(src, f"{where}: brush format {value.get('format')!r} (only 'rle' is read)")
        try:
            mask = decode_brush_rle(require(value, "rle", "list", f"{where}.value", src), h, w)
        except ValueError as e:
            raise DatasetError(src, f"{where}: {e}") from None
        decode = lambda hh, ww, m=mask: m  # noqa: E731
    else:
        if kind == "polygonlabels":
            try:
                pts = np.asarray(require(value, "points", "list", f"{where}.value", src), dtype=np.float64)
            except (TypeError, ValueError):
                raise DatasetError(src, f"{where}.value.points must be [[x, y], ...]") from None
            if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
                raise DatasetError(src, f"{where}.value.points must be 3 or more [x, y] pairs")
        elif kind == "rectanglelabels":
            x, y, bw, bh = num("x"), num("y"), num("width"), num("height")
            a = math.radians(num("rotation", 0.0))
            corners = np.array([[0, 0], [bw, 0], [bw, bh], [0, bh]]) * scale  # rotate in pixels, around (x, y)
            rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            pts = (corners @ rot.T + np.array([x, y]) * scale) / scale
        else:  # ellipselabels
            t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
            a = math.radians(num("rotation", 0.0))
            rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            local = np.stack([num("radiusX") * np.cos(t), num("radiusY") * np.sin(t)], 1) * scale
            pts = (local @ rot.T + np.array([num("x"), num("y")]) * scale) / scale
        pixels = np.round(pts * scale, 6)  # percent -> pixels, float noise of the division removed
        decode = polygon_decoder([pixels], h, w, src, where)
    return ToolShape(label=label, decode=decode, z=z, group=r.get("id"), where=where)


def label_studio_dataset(json_file: str | Path, image_dir: str | Path | None = None,
                         categories: list[dict] | str | None = None, label_map: dict[str, str] | None = None,
                         source: str = "annotations") -> ToolDataset:
    """Reader of a Label Studio JSON export; images in ``image_dir`` (default ``images/`` beside the file,
    else its folder). ``source``: "annotations" (the default) or "predictions" (pre-labels)."""
    src = Path(json_file)
    if source not in ("annotations", "predictions"):
        raise ValueError(f"source must be 'annotations' or 'predictions', got {source!r}")
    data = read_json(src)
    if not isinstance(data, list):
        raise DatasetError(src, "not a Label Studio JSON export (expected a list of tasks; JSON-MIN is not read)")
    image_dir = Path(image_dir) if image_dir is not None else (
        src.parent / "images" if (src.parent / "images").is_dir() else src.parent)
    images, unlabelled = [], 0
    for t, task in enumerate(data):
        where = f"tasks[{t}]"
        if not isinstance(task, dict):
            raise DatasetError(src, f"{where} must be an object, got {type(task).__name__}")
        name = _image_name(_image_ref(task, where, src), image_dir)
        chosen = _pick(task, source, where, src)
        if chosen is None:
            unlabelled += 1
            continue
        size, shapes = None, []
        for k, r in enumerate(require(chosen, "result", "list", f"{where}.{source}", src)):
            w = f"{where} result[{k}]"
            if not isinstance(r, dict) or not isinstance(r.get("type"), str):
                raise DatasetError(src, f"{w} must be an object with a 'type'")
            kind = r["type"].lower()
            if kind not in ("brushlabels", "polygonlabels", "rectanglelabels", "ellipselabels"):
                if kind not in _NOT_REGIONS:  # choices, text ... describe the image, not a region
                    logger.warning("%s: %s of type %r is not a region; skipped", src, w, kind)
                continue
            if r.get("image_rotation", 0):
                raise DatasetError(src, f"{w}: a rotated image (image_rotation) is not supported")
            hw = _size(r, w, src)
            if size is not None and hw != size:
                raise DatasetError(src, f"{w}: image size {hw[1]}x{hw[0]} differs from {size[1]}x{size[0]}")
            size = hw
            value = require(r, "value", "dict", w, src)
            labels = value.get(kind, value.get("labels"))
            if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
                raise DatasetError(src, f"{w}: a region needs exactly one label, got {labels!r}")
            shapes.append(_result_shape(r, kind, labels[0], hw[0], hw[1], k, w, src))
        if size is None:
            if not (image_dir / name).is_file():
                raise DatasetError(src, f"{where}: no region gives the image size and {image_dir / name} is missing")
            size = image_size(image_dir / name)
        task_id = task.get("id", t)
        images.append(ToolImage(task_id if isinstance(task_id, (int, str)) else t, name, size[0], size[1], shapes))
    if unlabelled:
        logger.warning("%s: %d task(s) without %s (not labelled yet); skipped", src, unlabelled, source)
    cats, index = resolve_labels((s.label for im in images for s in im.shapes), categories, src, label_map=label_map)
    return ToolDataset(images, cats, index, image_dir, src.stem, src)


# --------------------------------------------------------------------------------------------
# Writing


def write_label_studio(path: str | Path, samples: Iterable[Sample], categories: list[dict], polygons: bool = False,
                       max_iou_loss: float = 0.01, as_predictions: bool = True,
                       image_url_prefix: str = "/data/local-files/?d=", from_name: str = "label",
                       to_name: str = "image", model_version: str = "m2f-workbench") -> ExportReport:
    """Write samples as Label Studio tasks (brushes, or polygons within ``max_iou_loss``), atomically.

    ``as_predictions``: pre-labels (``predictions``, with scores when known) rather than ``annotations``.
    ``image_url_prefix`` + the image's name is ``data.image``; ``from_name`` / ``to_name`` must name
    the control and image tags of the project's labeling config. A region whose polygons miss the
    bound, or need more than one polygon, is written as a brush.
    """
    path = Path(path)
    report = ExportReport(path)
    tasks = []
    for i, s in enumerate(samples):
        results, scores = [], []
        for k, r in enumerate(sample_regions(s, categories)):
            base = {"id": f"r{i}_{k}", "from_name": from_name, "to_name": to_name, "original_width": s.width,
                    "original_height": s.height, "image_rotation": 0, "origin": "prediction" if as_predictions
                    else "manual"}
            if r.score is not None:
                base["score"] = r.score
                scores.append(r.score)
            fit = mask_to_polygons(r.mask, max_iou_loss, "coco") if polygons else None
            label = [r.label(categories)]
            if fit is not None and fit.ok and len(fit.polygons) == 1:
                report.add_polygon(fit.iou)
                pts = (fit.polygons[0] / np.array([s.width, s.height]) * 100.0).tolist()
                results.append({**base, "type": "polygonlabels",
                                "value": {"points": pts, "closed": True, "polygonlabels": label}})
            else:
                report.masks += 1
                results.append({**base, "type": "brushlabels",
                                "value": {"format": "rle", "rle": encode_brush_rle(r.mask), "brushlabels": label}})
            report.regions += 1
        entry: dict = {"result": results}
        if as_predictions:
            entry.update(model_version=model_version, **({"score": float(np.mean(scores))} if scores else {}))
        else:
            entry.update(was_cancelled=False, ground_truth=False)
        tasks.append({"id": i + 1, "data": {"image": image_url_prefix + Path(s.file_name).name},
                      "predictions" if as_predictions else "annotations": [entry]})
        report.images += 1
    atomic_write_json(path, tasks)
    return report
