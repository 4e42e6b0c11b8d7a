"""A generated corpus of bad and unusual inputs, shared by the tests that feed it to every reader.

Nothing here is hand-picked to pass: the image corpus is every (PIL mode x format) PIL can write,
every EXIF orientation, odd sizes, and four corruptions of every one of those files, plus non-image
bytes under image names and decompression bombs. The dataset corpus is a small valid dataset in each
format (COCO panoptic, COCO instances, semantic folder, corrections folder) and generated mutations:
every JSON key deleted or given a wrong value, and a fixed set of damages to every annotation PNG.

Each case says what a correct answer is (the image size) or that the input must be refused.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

H, W = 24, 32  # size of the corpus images

# ------------------------------------------------------------------------------------------ images


@dataclass(frozen=True)
class ImageCase:
    """One file of the corpus. ``size`` is the (h, w) of a correct result, None when it must be refused.

    ``strict=False``: a damaged file that a tolerant decoder may still read (then to ``size``) or refuse.
    """

    name: str
    ext: str
    data: bytes
    size: tuple[int, int] | None
    strict: bool = True

    @property
    def file_name(self) -> str:
        return self.name + self.ext


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes | None:
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 12: 32-bit PNGs are deprecated
            img.save(buf, format=fmt, **kwargs)
    except (OSError, KeyError, ValueError, TypeError):
        return None  # PIL cannot write this mode in this format: not a case
    return buf.getvalue()


def _pil_reads(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        return True
    except Exception:
        return False


def _damaged(data: bytes) -> dict[str, tuple[bytes, bool]]:
    """name -> (bytes, may still decode) of four damages to a valid file."""
    flipped = bytearray(data)
    mid = len(flipped) // 2
    flipped[mid:mid + 16] = bytes(b ^ 0xFF for b in flipped[mid:mid + 16])
    return {"empty": (b"", False), "header_only": (data[:16], False), "half": (data[: len(data) // 2], True),
            "flipped": (bytes(flipped), True)}


def image_corpus() -> list[ImageCase]:
    """The image corpus, in memory (cheap: small images); see the module doc."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    modes = {
        "1": base.convert("1"), "l": base.convert("L"), "la": base.convert("LA"), "p": base.convert("P"),
        "rgb": base, "rgba": base.convert("RGBA"), "cmyk": base.convert("CMYK"), "ycbcr": base.convert("YCbCr"),
        "i16": Image.fromarray(rng.integers(0, 65536, (H, W)).astype(np.uint16)),
        "i32": Image.fromarray(rng.integers(0, 70000, (H, W)).astype(np.int32)),
        "f32": Image.fromarray(rng.random((H, W), dtype=np.float32)),
    }
    formats = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}
    cases: list[ImageCase] = []
    valid: list[ImageCase] = []
    for mode, img in modes.items():
        for fmt, ext in formats.items():
            data = _encode(img, fmt)
            if data is not None:  # PIL cannot always read what it wrote: then a refusal is right too
                valid.append(ImageCase(f"{mode}_{fmt.lower()}", ext, data, (H, W), strict=_pil_reads(data)))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        valid.append(ImageCase(f"exif{orientation}_jpeg", ".jpg", _encode(base, "JPEG", exif=exif),
                               (W, H) if orientation >= 5 else (H, W)))
    cases += valid
    cases.append(ImageCase("animated_gif", ".gif", _encode(base, "GIF", save_all=True,
                                                          append_images=[Image.fromarray(255 - rgb)]), (H, W)))
    for h, w in ((1, 1), (1, 700), (700, 1), (3, 2000), (2000, 3)):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cases.append(ImageCase(f"size_{h}x{w}", ".png", _encode(Image.fromarray(arr), "PNG"), (h, w)))
    cases.append(ImageCase("png_named_jpg", ".jpg", _encode(base, "PNG"), (H, W)))
    for case in valid:
        for damage, (bad, may_decode) in _damaged(case.data).items():
            cases.append(ImageCase(f"{case.name}_{damage}", case.ext, bad, case.size if may_decode else None,
                                   strict=not may_decode))
    junk = {"text": b"hello, this is not an image\n", "random": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            "json": json.dumps({"images": []}).encode(), "html": b"<!doctype html><html></html>",
            "pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "elf": b"\x7fELF\x02\x01\x01" + bytes(64),
            "zip": b"PK\x03\x04" + bytes(26), "pickle": b"\x80\x04\x95" + bytes(16)}
    for kind, data in junk.items():
        for ext in (".png", ".jpg"):
            cases.append(ImageCase(f"junk_{kind}_{ext[1:]}", ext, data, None))
    cases.append(ImageCase("bomb_30000x30000", ".png", png_header_only(30000, 30000), None))  # above PIL's hard limit
    cases.append(ImageCase("bomb_12000x12000", ".png", png_header_only(12000, 12000), None))  # above the default limit
    return cases


def write_image_corpus(root: Path, cases: list[ImageCase]) -> dict[str, Path]:
    """Write the corpus files into ``root``: case name -> path."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in cases:
        path = root / case.file_name
        path.write_bytes(case.data)
        paths[case.name] = path
    return paths


# ------------------------------------------------------------------------------------------ datasets

CATEGORIES = [{"id": 1, "name": "disc", "isthing": 1, "color": [220, 20, 60]},
              {"id": 2, "name": "box", "isthing": 1, "color": [0, 0, 142]},
              {"id": 7, "name": "sky", "isthing": 0, "color": [70, 130, 180]}]
CONTIGUOUS = {c["id"]: i for i, c in enumerate(CATEGORIES)}
IMAGE_FILES = {"img_a": "img_a.png", "img_b": "img_b.jpg"}


@dataclass
class DatasetCase:
    """A valid dataset on disk: ``open_dataset(spec, **kwargs)``, its JSON files and annotation PNGs."""

    fmt: str
    spec: str
    kwargs: dict
    json_files: list[Path]
    pngs: list[Path]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def _panoptic() -> dict[str, tuple[np.ndarray, list[dict]]]:
    """image stem -> (segment id map, segments_info): stuff, things, void and a crowd segment."""
    a = np.ones((H, W), np.int32)
    a[4:12, 4:12] = 2
    a[10:20, 14:28] = 3
    a[0:2, :] = 0
    b = np.full((H, W), 5, np.int32)
    b[3:9, 3:30] = 9
    return {"img_a": (a, [{"id": 1, "category_id": 7, "iscrowd": 0}, {"id": 2, "category_id": 1, "iscrowd": 0},
                          {"id": 3, "category_id": 2, "iscrowd": 0}]),
            "img_b": (b, [{"id": 5, "category_id": 7, "iscrowd": 0}, {"id": 9, "category_id": 2, "iscrowd": 1}])}


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name in IMAGE_FILES.values():
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / name)


def overlapping_masks() -> tuple[np.ndarray, np.ndarray]:
    """The first two instance masks of img_a in the COCO instances case (they overlap)."""
    disc = np.zeros((H, W), bool)
    disc[4:12, 4:12] = True
    over = np.zeros((H, W), bool)
    over[8:16, 8:20] = True
    return disc, over


def _instances_json() -> dict:
    """Compressed RLE, uncompressed RLE (crowd) and polygons; two of img_a's masks overlap."""
    from pycocotools import mask as mask_util

    disc, over = overlapping_masks()
    flat = over.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    runs = np.diff(np.concatenate([[0], edges])).tolist()  # column-major runs, starting with background
    images = [{"id": 1, "file_name": "img_a.png", "height": H, "width": W},
              {"id": 2, "file_name": "img_b.jpg", "height": H, "width": W}]
    rle = mask_util.encode(np.asfortranarray(disc.astype(np.uint8)))
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [4, 4, 8, 8], "area": 64,
             "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}},
            {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 1, "area": 96,
             "segmentation": {"size": [H, W], "counts": runs}},
            {"id": 3, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [14, 10, 14, 10], "area": 140,
             "segmentation": [[14, 10, 27.99, 10, 27.99, 19.99, 14, 19.99]]},
            {"id": 4, "image_id": 2, "category_id": 1, "iscrowd": 0, "segmentation": [[3, 3, 30, 3, 30, 9, 3, 9]]}]
    return {"images": images, "annotations": anns, "categories": CATEGORIES[:2]}


def build_datasets(root: Path) -> dict[str, DatasetCase]:
    """One valid dataset per format under ``root``."""
    from m2f_core.data.categories import normalize_categories
    from m2f_core.data.corrections import write_corrections
    from m2f_core.data.records import GTSegment, Sample
    from m2f_core.structures import PanopticResult

    pan = _panoptic()
    out: dict[str, DatasetCase] = {}

    d = root / "coco_panoptic"  # pan.json, PNGs in pan/, images beside the JSON
    _write_images(d)
    (d / "pan").mkdir(parents=True)
    images, anns = [], []
    for i, (stem, (ids, segs)) in enumerate(pan.items(), start=1):
        Image.fromarray(id2rgb(ids)).save(d / "pan" / f"{stem}.png")
        images.append({"id": i, "file_name": IMAGE_FILES[stem], "height": H, "width": W})
        anns.append({"image_id": i, "file_name": f"{stem}.png", "segments_info": segs})
    (d / "pan.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    out["coco_panoptic"] = DatasetCase("coco_panoptic", f"coco_panoptic:{d / 'pan.json'}", {}, [d / "pan.json"],
                                       sorted((d / "pan").glob("*.png")))

    d = root / "coco_instances"
    _write_images(d)
    (d / "inst.json").write_text(json.dumps(_instances_json()))
    out["coco_instances"] = DatasetCase("coco_instances", f"coco_instances:{d / 'inst.json'}", {}, [d / "inst.json"],
                                        [])

    d = root / "semantic"  # images/ + annotations/ with uint8 class maps
    _write_images(d / "images")
    (d / "annotations").mkdir(parents=True)
    for stem, (ids, segs) in pan.items():
        lut = np.full(int(ids.max()) + 1, 255, np.uint8)
        for s in segs:
            lut[s["id"]] = CONTIGUOUS[s["category_id"]]
        Image.fromarray(lut[ids]).save(d / "annotations" / f"{stem}.png")
    out["semantic"] = DatasetCase("semantic", f"semantic:{d}", {"categories": CATEGORIES}, [],
                                  sorted((d / "annotations").glob("*.png")))

    cats = normalize_categories(CATEGORIES, "categories")  # corrections: written by the project's writer
    src = root / "corrections_images"
    _write_images(src)
    samples = []
    for i, (stem, (ids, segs)) in enumerate(pan.items(), start=1):
        segments = [GTSegment(id=s["id"], category_id=CONTIGUOUS[s["category_id"]],
                              isthing=cats[CONTIGUOUS[s["category_id"]]]["isthing"], iscrowd=bool(s["iscrowd"]))
                    for s in segs]
        samples.append(Sample(image_id=i, file_name=src / IMAGE_FILES[stem], height=H, width=W,
                              panoptic=PanopticResult(ids, segments).update_stats()))
    d = root / "corrections"
    write_corrections(d, samples, cats)
    out["corrections"] = DatasetCase("corrections", f"corrections:{d}", {},
                                     [d / "panoptic.json", d / "instances.json"],
                                     sorted((d / "panoptic").glob("*.png")) + sorted((d / "semantic").glob("*.png")))
    return out


WRONG_VALUES: dict[str, Any] = {"null": None, "str": "x", "negative": -7, "float": 2.5, "bool": True, "list": [],
                                "dict": {}}


def json_mutations(data: Any) -> Iterator[tuple[str, Any]]:
    """(description, mutated copy) for every key / item of ``data``: deleted, or given each wrong value
    (and, for integers, the next integer, 0 and 10^9: duplicate ids, unknown ids, absurd sizes)."""
    def paths(obj: Any, prefix: tuple = ()) -> Iterator[tuple]:
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for k, v in items:
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))

    for path in list(paths(data)):
        parent = data
        for p in path[:-1]:
            parent = parent[p]
        current = parent[path[-1]]
        values = dict(WRONG_VALUES)
        if isinstance(current, int) and not isinstance(current, bool):
            values.update({"plus_one": current + 1, "zero": 0, "huge": 10**9})
        where = "/".join(map(str, path))
        for kind, value in [("deleted", ...), *values.items()]:
            mutated = copy.deepcopy(data)
            target = mutated
            for p in path[:-1]:
                target = target[p]
            if value is ...:
                del target[path[-1]]
            else:
                target[path[-1]] = value
            yield f"{where} {kind}", mutated


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def png_mutations(path: Path) -> dict[str, bytes | None]:
    """name -> new bytes for an annotation PNG (None = the file is deleted)."""
    data = path.read_bytes()
    arr = np.array(Image.open(path))
    h, w = arr.shape[:2]
    damaged = {name: bad for name, (bad, _) in _damaged(data).items()}
    pad = [(0, 3), (0, 5)] + [(0, 0)] * (arr.ndim - 2)
    first = arr if arr.ndim == 2 else arr[..., 0]
    out: dict[str, bytes | None] = {
        "missing": None, **damaged, "text": b"not a png", "bomb": png_header_only(30000, 30000),
        "smaller": _png(arr[: h - 4, : w - 2]), "larger": _png(np.pad(arr, pad, mode="edge")),
        "transposed": _png(np.swapaxes(arr, 0, 1)), "uint16": _png(first.astype(np.uint16) * 300),
    }
    if arr.ndim == 3:  # a panoptic PNG
        a = arr.astype(np.int64)
        ids = a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]
        present = [int(v) for v in np.unique(ids) if v]
        extra = ids.copy()
        extra[-2:, -2:] = 4242  # an id that no segment declares
        absent = ids.copy()
        absent[absent == present[-1]] = present[0]  # a declared segment loses all its pixels
        out.update({"gray": _png(arr[..., 0]), "rgba": _png(np.dstack([arr, np.full((h, w), 255, np.uint8)])),
                    "undeclared_id": _png(id2rgb(extra)), "absent_id": _png(id2rgb(absent))})
    else:  # a semantic class map
        unknown = arr.copy()
        unknown[0, 0] = 77  # a class id outside the class list
        buf = io.BytesIO()
        Image.fromarray(arr).convert("P").save(buf, format="PNG")
        out.update({"rgb": _png(np.dstack([arr] * 3)), "unknown_class": _png(unknown), "palette": buf.getvalue()})
    return out
