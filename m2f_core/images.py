"""Robust image loading: any path / PIL image / array -> (H, W, 3) uint8 RGB, upright.

Handles grayscale, palette, CMYK, RGBA (alpha dropped, as Detectron2 does), 16-bit and float
images, and EXIF orientation. Refuses decompression bombs and unreadable files with a one-line
``ImageError`` that names the file and the problem.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# refuse images above this many pixels (overridable: M2F_MAX_PIXELS or the max_pixels argument);
# PIL refuses more than 2 x Image.MAX_IMAGE_PIXELS (179 Mpx) whatever this says
DEFAULT_MAX_PIXELS = int(os.environ.get("M2F_MAX_PIXELS", 100_000_000))


class ImageError(ValueError):
    """An image that cannot be used; the message names it and says why."""


def load_image(source, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a path, bytes, a PIL image or an array (HxW, HxWx1/3/4)."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, "array", limit)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, "image", limit)
    if isinstance(source, (bytes, bytearray)):
        name, opener = "bytes", lambda: io.BytesIO(source)
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise ImageError(f"{name}: no such file")
        if path.stat().st_size == 0:
            raise ImageError(f"{name}: empty file")
        opener = lambda: open(path, "rb")  # noqa: E731
    try:
        with opener() as f, warnings.catch_warnings():
            # PIL's own warning threshold (89 Mpx) would refuse images under a larger configured limit:
            # our limit decides, checked from the header before any pixel is decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                if img.width * img.height > limit:
                    raise ImageError(f"{name}: {img.width}x{img.height} is more than the {limit:,} pixel limit")
                img.load()
                return _pil_to_rgb(img, name, limit)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: unreadable image ({str(e).strip() or type(e).__name__})") from None


def _pil_to_rgb(img: Image.Image, name: str, limit: int) -> np.ndarray:
    if img.width * img.height > limit:
        raise ImageError(f"{name}: {img.width}x{img.height} is more than the {limit:,} pixel limit")
    if img.width == 0 or img.height == 0:
        raise ImageError(f"{name}: image has no pixels")
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _array_to_rgb(np.asarray(img), name, limit)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _array_to_rgb(arr: np.ndarray, name: str, limit: int) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: expected an HxW, HxWx3 or HxWx4 array, got shape {arr.shape}")
    if arr.shape[0] * arr.shape[1] > limit:
        raise ImageError(f"{name}: {arr.shape[1]}x{arr.shape[0]} is more than the {limit:,} pixel limit")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{name}: image has no pixels")
    if arr.dtype != np.uint8:
        arr = _to_uint8(arr, name)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def _to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """16-bit -> top 8 bits; float in [0, 1] -> x255; other integer ranges rescaled to their maximum."""
    if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and arr.max(initial=0) > 255):
        hi = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        return np.clip(np.round(arr.astype(np.float64) / hi * 255.0), 0, 255).astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageError(f"{name}: image has NaN or infinite values")
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    return np.clip(arr, 0, 255).astype(np.uint8)
