"""Helpers shared by the COCO panoptic and COCO instance readers and writers: checked ``images``,
image ids, flags and category lists of a COCO JSON.

Why a module of its own: both COCO formats share the JSON's top level (``images``, ``categories``,
0/1 flags) and must validate it, and write categories back, in exactly the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from ..images import DEFAULT_MAX_PIXELS
from .categories import normalize_categories, resolve_categories
from .errors import DatasetError
from .fileio import require


def format_ids(ids: Iterable[int], limit: int = 6) -> str:
    ids = sorted(ids)
    head = ", ".join(str(i) for i in ids[:limit])
    return head + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def json_categories(data: dict, categories: list[dict] | str | None, source: Path, isthing: bool) -> list[dict]:
    """Explicit categories, else the JSON's sorted by dataset id (Detectron2's contiguous order)."""
    cats = resolve_categories(categories, source)
    if cats is not None:
        return cats
    if "categories" not in data:
        raise DatasetError(source, "no 'categories' in the file; pass categories=")
    cats = normalize_categories(data["categories"], source, default_isthing=isthing)
    return sorted(cats, key=lambda c: c["id"])


def require_image_id(obj: dict, key: str, where: str, source: Path) -> int | str:
    value = obj.get(key)
    if key not in obj:
        raise DatasetError(source, f"{where} has no {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DatasetError(source, f"{where}.{key} must be an int or a string, got {type(value).__name__}")
    return value


def read_images(data: dict, source: Path, required: bool) -> dict[int | str, tuple[str, int, int]] | None:
    """image id -> (file_name, height, width) of the JSON's ``images``."""
    if "images" not in data and not required:
        return None
    images = require(data, "images", "list", "top level", source)
    out: dict[int | str, tuple[str, int, int]] = {}
    for i, img in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(img, dict):
            raise DatasetError(source, f"{where} must be an object, got {type(img).__name__}")
        iid = require_image_id(img, "id", where, source)
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


def iter_annotations(data: dict, images: dict, source: Path) -> Iterator[tuple[str, dict, int | str]]:
    """Each entry of ``annotations`` as ``(where, annotation, image id)``: an object whose image is in ``images``.

    ``where`` (``annotations[K]``) names the entry in the messages of the checks that follow.
    """
    for k, ann in enumerate(require(data, "annotations", "list", "top level", source, default=[])):
        where = f"annotations[{k}]"
        if not isinstance(ann, dict):
            raise DatasetError(source, f"{where} must be an object, got {type(ann).__name__}")
        image_id = require_image_id(ann, "image_id", where, source)
        if image_id not in images:
            raise DatasetError(source, f"{where}: image {image_id!r} is not in 'images'")
        yield where, ann, image_id


def require_flag(obj: dict, key: str, where: str, source: Path) -> bool:
    value = obj.get(key, 0)
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise DatasetError(source, f"{where}.{key} must be 0 or 1, got {value!r}")


def categories_for_json(categories: list[dict]) -> list[dict]:
    out = []
    for c in categories:
        d = {k: v for k, v in c.items() if k not in ("id", "name", "isthing", "color")}
        out.append({"id": int(c["id"]), "name": c["name"], "isthing": int(bool(c.get("isthing", 1))),
                    "color": [int(v) for v in c.get("color", (0, 0, 0))], **d})
    return out
