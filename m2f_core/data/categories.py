"""Category lists: checking a dataset's categories, the shipped class lists, a model config's classes.

Why a module of its own: the category list fixes the contiguous class order that records, readers,
writers and the model share, so every source of one (a file, ``classes/<name>.json``, a
``Mask2FormerConfig``) is normalised here to the same checked form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import default_color
from .errors import DatasetError
from .fileio import read_json, require

__all__ = ["categories_from_config", "normalize_categories", "resolve_categories", "shipped_categories"]

_CLASSES_DIR = Path(__file__).parent / "classes"


def normalize_categories(raw: Any, source: str | Path, default_isthing: bool = True) -> list[dict]:
    """Checked copy of a category list: each entry gets int ``id``, str ``name``, bool ``isthing``, ``color``.

    Other keys (``supercategory``, ``train_id``) are kept. The order is kept: it is the contiguous order.
    """
    if not isinstance(raw, list) or not raw:
        raise DatasetError(source, "'categories' must be a non-empty list")
    out, seen = [], set()
    for i, c in enumerate(raw):
        where = f"categories[{i}]"
        if not isinstance(c, dict):
            raise DatasetError(source, f"{where} must be an object, got {type(c).__name__}")
        cid = require(c, "id", "int", where, source)
        if cid in seen:
            raise DatasetError(source, f"duplicate category id {cid}")
        seen.add(cid)
        name = c.get("name", str(cid))
        if not isinstance(name, str):
            raise DatasetError(source, f"{where}.name must be a string, got {type(name).__name__}")
        isthing = c.get("isthing", default_isthing)
        if not isinstance(isthing, (bool, int)) or int(isthing) not in (0, 1):
            raise DatasetError(source, f"{where}.isthing must be 0 or 1, got {isthing!r}")
        color = c.get("color")
        if color is None:
            color = default_color(i)
        elif (not isinstance(color, (list, tuple)) or len(color) != 3
              or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color)):
            raise DatasetError(source, f"{where}.color must be 3 integers in 0..255, got {color!r}")
        out.append({**c, "id": cid, "name": name, "isthing": bool(isthing), "color": [int(v) for v in color]})
    return out


def shipped_categories(name: str) -> list[dict]:
    """The category list shipped in ``m2f_core/data/classes/<name>.json`` (contiguous order)."""
    path = _CLASSES_DIR / f"{name}.json"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in _CLASSES_DIR.glob("*.json")))
        raise DatasetError(path, f"no shipped class list {name!r} (have: {have})")
    data = read_json(path)
    return normalize_categories(data.get("categories") if isinstance(data, dict) else None, path)


def categories_from_config(config: Any) -> list[dict]:
    """The category list of a ``Mask2FormerConfig`` (class index = contiguous id)."""
    return [{"id": int(config.dataset_ids[i]), "name": config.class_names[i], "isthing": bool(config.is_thing[i]),
             "color": [int(v) for v in config.colors[i]]} for i in range(len(config.class_names))]


def resolve_categories(categories: list[dict] | str | None, source: str | Path) -> list[dict] | None:
    """``categories`` as given: a list (checked), a shipped class-list name, or None."""
    if categories is None:
        return None
    if isinstance(categories, str):
        return shipped_categories(categories)
    return normalize_categories(list(categories), source)
