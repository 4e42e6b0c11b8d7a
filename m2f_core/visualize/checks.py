"""Input checks of the drawing functions: images of any common layout to (H, W, 3) uint8, sizes, alpha.

Why a module of its own: every overlay and the legend accept the same loose inputs and reject the
same mistakes with the same messages.
"""

from __future__ import annotations

import numpy as np


def as_rgb(image) -> np.ndarray:
    """(H, W, 3) uint8 from an RGB/RGBA/grayscale array or PIL image; a contiguous copy."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        elif np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr).copy()


def check_size(image: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if tuple(image.shape[:2]) != tuple(shape[:2]):
        raise ValueError(
            f"the image is {image.shape[0]}x{image.shape[1]} (HxW) but the {what} is {shape[0]}x{shape[1]}; "
            "render the result on the image it was predicted for (or resize one of them first)"
        )


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha
