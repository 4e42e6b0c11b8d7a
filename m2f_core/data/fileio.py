"""Checked access to annotation files: JSON fields of the right type, JSON and PNG files, image sizes.

Why a module of its own: every reader validates untrusted files the same way and reports problems
as a ``DatasetError`` naming the file (never a bare ``KeyError`` or a decoder crash); PNGs are
refused above the pixel limit from their header, before decoding. ``encode_png`` is the inverse
of ``read_png`` for the writers.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..images import DEFAULT_MAX_PIXELS
from .errors import DatasetError

__all__ = ["encode_png", "image_size", "read_json", "read_png", "require"]

_KINDS: dict[str, tuple[type, ...]] = {"int": (int,), "number": (int, float), "str": (str,), "list": (list,),
                                       "dict": (dict,)}


def require(obj: dict, key: str, kind: str, where: str, source: str | Path, default: Any = ...) -> Any:
    """``obj[key]`` checked to be of ``kind`` (int / number / str / list / dict; bools are not numbers)."""
    if key not in obj:
        if default is not ...:
            return default
        raise DatasetError(source, f"{where} has no {key!r}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, _KINDS[kind]):
        raise DatasetError(source, f"{where}.{key} must be {'an' if kind == 'int' else 'a'} {kind}, "
                                   f"got {type(value).__name__} {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_json(path: str | Path) -> Any:
    """Parsed JSON of a file; a ``DatasetError`` for a missing file or text that is not JSON."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(path, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise DatasetError(path, "not valid JSON (not UTF-8 text)") from None


def read_png(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Pixels of an annotation image as stored (no palette or colour conversion).

    Refuses images above ``max_pixels`` (default ``M2F_MAX_PIXELS``, as ``load_image``) from the
    header, before decoding, so a decompression bomb costs nothing.
    """
    path = Path(path)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if not path.is_file():
        raise DatasetError(path, "no such file")
    with _image_errors(path), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
        with Image.open(path) as img:
            if img.width * img.height > limit:
                raise DatasetError(path, f"{img.width}x{img.height} is more than the {limit:,} pixel limit")
            return np.array(img)


@contextlib.contextmanager
def _image_errors(path: Path) -> Iterator[None]:
    """PIL's failures on an image file as a ``DatasetError`` that says what is wrong with it."""
    try:
        yield
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(path, f"refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise DatasetError(path, "not an image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(path, f"unreadable image ({str(e).strip() or type(e).__name__})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image as ``load_image`` will return it (EXIF rotation applied), from its header."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "no such file")
    with _image_errors(path), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # only the header is read
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, 3) array, or a uint16 (H, W) array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()
