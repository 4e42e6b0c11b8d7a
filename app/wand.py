"""Magic wand: grow the region whose per-pixel mask vector agrees with the clicked pixel's.

Why no second model: every Mask2Former mask logit is a dot product of a query embedding with the
per-pixel mask features (1/4 of the padded input), so the (Q,) vector of mask probabilities at a
pixel (the sigmoid of those logits) describes the pixel as the queries see it. Pixels of one
segment share it; a click compares every cell's vector with the clicked one (cosine similarity)
and keeps the connected component of cells at or above a threshold that the user moves live.
Probabilities rather than raw logits or the mask features themselves: the sigmoid squashes the
many queries that are confidently absent to ~0, so the cosine is decided by the queries that claim
the pixel (``tools/wand_benchmark.py`` measures the alternatives; ``docs/wand.md``).

How a click stays cheap on a 12 MP photo (``docs/wand.md`` has the numbers):

- ``wand_click`` computes the cosine similarity once on the 1/4-resolution grid, then resizes it
  with the same bilinear chain as the mask upsampler (``m2f_core.resize.chain_matrix``: to the
  padded input, crop, to the image) onto a *working grid* of at most ``WORK_PIXELS`` pixels (the
  image itself when it is smaller, so small images are exact).
- ``WandClick.crop(threshold)`` thresholds the working grid, keeps the connected component of the
  click (OpenCV) and repeats each working pixel over its block of image pixels (nearest). Every
  block is non-empty, so the component stays connected at image size, always holds the click, and
  grows monotonically as the threshold falls.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from m2f_core.resize import chain_matrix

__all__ = ["CONNECTIVITY", "DEFAULT_THRESHOLD", "DEFAULT_VARIANT", "VARIANTS", "WORK_PIXELS", "WandClick",
           "click_on_features", "wand_click", "wand_features"]

VARIANTS = ("probs", "logits")  # per-pixel vectors read from a Prediction (docs/wand.md compares more)
DEFAULT_VARIANT = "probs"
DEFAULT_THRESHOLD = 0.47  # the best median IoU on tools/wand_benchmark.py's tuning scenes (flat over 0.45-0.65)
CONNECTIVITY = 4  # cells touching only at a corner do not join: a wand should not leak through diagonals
WORK_PIXELS = 1 << 19  # the working grid's size cap: ~9 working pixels per feature cell on a 12 MP photo

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive ends), image pixels


@dataclass
class _Grid:
    """How one prediction's 1/4-resolution cells map onto image pixels (shared by all its clicks)."""

    rows_full: np.ndarray  # (H, h) bilinear chain weights of every image row
    cols_full: np.ndarray  # (W, w)
    rows_work: np.ndarray  # (hh, h) the chain at the middle image row of each working row
    cols_work: np.ndarray  # (ww, w)
    work_of_row: np.ndarray  # (H,) working row of each image row
    work_of_col: np.ndarray  # (W,)
    row_start: np.ndarray  # (hh + 1,) first image row of each working row (and H)
    col_start: np.ndarray  # (ww + 1,)

    @property
    def exact(self) -> bool:
        """Whether the working grid is the image itself (one pixel per working pixel)."""
        return len(self.row_start) - 1 == len(self.work_of_row) and len(self.col_start) - 1 == len(self.work_of_col)


def _axis(cells: int, padded: int, resized: int, out: int, work: int) -> tuple[np.ndarray, ...]:
    """One axis of a ``_Grid``: chain weights, working index of each pixel, block starts, working chain."""
    full = chain_matrix(cells, padded, resized, out).float().numpy()  # (out, cells)
    work_of = np.minimum(((np.arange(out) + 0.5) * (work / out)).astype(np.intp), work - 1)
    counts = np.bincount(work_of, minlength=work)  # every block non-empty since work <= out
    start = np.concatenate([[0], np.cumsum(counts)])
    middle = start[:-1] + counts // 2
    return full, work_of, start, np.ascontiguousarray(full[middle])


def _work_size(h: int, w: int) -> tuple[int, int]:
    """The working grid: the image itself up to ``WORK_PIXELS``, else scaled down keeping the aspect."""
    if h * w <= WORK_PIXELS:
        return h, w
    f = math.sqrt(WORK_PIXELS / (h * w))
    return max(1, min(h, round(h * f))), max(1, min(w, round(w * f)))


_GRIDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FEATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _grid(prediction) -> _Grid:
    grid = _GRIDS.get(prediction)
    if grid is None:
        (h, w), (ph, pw), (ih, iw) = prediction.pred_masks.shape[-2:], prediction.padded_size, prediction.input_size
        H, W = prediction.size
        hh, ww = _work_size(H, W)
        rf, wr, rs, rw = _axis(h, ph, ih, H, hh)
        cf, wc, cs, cw = _axis(w, pw, iw, W, ww)
        grid = _GRIDS[prediction] = _Grid(rf, cf, rw, cw, wr, wc, rs, cs)
    return grid


def wand_features(prediction, variant: str = DEFAULT_VARIANT) -> torch.Tensor:
    """(C, h, w) per-pixel vectors of ``variant`` on the 1/4-resolution grid (cached per prediction).

    "probs": the Q mask probabilities (the default); "logits": the raw mask logits, the mask features
    projected onto the query embeddings (worse: confidently absent queries dominate the cosine)."""
    cache = _FEATURES.setdefault(prediction, {})
    if variant not in cache:
        if variant == "logits":
            cache[variant] = prediction.pred_masks.float()
        elif variant == "probs":
            cache[variant] = prediction.pred_masks.float().sigmoid()
        else:
            raise ValueError(f"unknown wand variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    return cache[variant]


def _unit(features: torch.Tensor) -> torch.Tensor:
    """L2-normalised along the first (channel) axis; zero vectors stay zero."""
    return features / features.norm(dim=0, keepdim=True).clamp_min(1e-12)


@dataclass
class WandClick:
    """One click: the similarity map is computed once; each threshold costs one connected-component pass."""

    x: int
    y: int
    similarity: np.ndarray = field(repr=False)  # (hh, ww) float32 cosine similarity on the working grid
    grid: _Grid = field(repr=False)
    _last: tuple = field(default=(), repr=False)  # (threshold, box, mask) of the last crop

    @property
    def size(self) -> tuple[int, int]:
        return len(self.grid.work_of_row), len(self.grid.work_of_col)

    @property
    def seed(self) -> tuple[int, int]:
        """The working pixel of the click."""
        return int(self.grid.work_of_row[self.y]), int(self.grid.work_of_col[self.x])

    def _component(self, threshold: float) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """(top, left, height, width) and the bool mask of the click's component on the working grid."""
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        binary = (self.similarity >= np.float32(threshold)).view(np.uint8)
        sy, sx = self.seed
        binary[sy, sx] = 1  # the click is always in, whatever the threshold
        _, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=CONNECTIVITY, ltype=cv2.CV_32S)
        label = labels[sy, sx]
        left, top, width, height = (int(v) for v in stats[label, :4])
        return (top, left, height, width), labels[top:top + height, left:left + width] == label

    def crop(self, threshold: float) -> tuple[Box, np.ndarray]:
        """(y0, x0, y1, x1) box of the region and its (y1 - y0, x1 - x0) bool mask, so that a caller
        (the browser) is sent only the box."""
        threshold = float(threshold)
        if self._last and self._last[0] == threshold:
            return self._last[1], self._last[2]
        (top, left, height, width), sub = self._component(threshold)
        g = self.grid
        if not g.exact:  # each working pixel over its block of image pixels (columns first: cheaper)
            rows = np.diff(g.row_start[top:top + height + 1])  # (height,) image rows per working row
            cols = np.diff(g.col_start[left:left + width + 1])  # (width,)
            sub = np.repeat(np.repeat(sub, cols, axis=1), rows, axis=0)
        box = (int(g.row_start[top]), int(g.col_start[left]),
               int(g.row_start[top + height]), int(g.col_start[left + width]))
        self._last = (threshold, box, sub)
        return box, sub

    def region(self, threshold: float) -> np.ndarray:
        """(H, W) bool at image size: the pixels connected to the click whose similarity is >= threshold."""
        (y0, x0, y1, x1), sub = self.crop(threshold)
        out = np.zeros((len(self.grid.work_of_row), len(self.grid.work_of_col)), dtype=bool)
        out[y0:y1, x0:x1] = sub
        return out


def click_on_features(prediction, features: torch.Tensor, x: int, y: int) -> WandClick:
    """A click on any (C, h, w) per-pixel vectors on the prediction's 1/4-resolution grid (the
    benchmark compares several): cosine similarity with the vector interpolated at the click."""
    H, W = prediction.size
    x, y = int(x), int(y)
    if not (0 <= x < W and 0 <= y < H):
        raise ValueError(f"pixel ({x}, {y}) is outside the {W}x{H} image")
    g = _grid(prediction)
    feats = features.float().numpy()  # (C, h, w)
    c, h, w = feats.shape
    if (h, w) != (g.rows_full.shape[1], g.cols_full.shape[1]):
        raise ValueError(f"features of {h}x{w} cells do not match the prediction's mask grid")
    ref = np.einsum("chw,h,w->c", feats, g.rows_full[y], g.cols_full[x])  # the chain's value at the click
    ref /= max(float(np.linalg.norm(ref)), 1e-12)
    unit = _unit(features.float()).numpy().reshape(c, h * w)
    sim = (ref @ unit).reshape(h, w)  # (h, w) cosine similarity per cell
    work = (g.rows_work @ sim @ g.cols_work.T).astype(np.float32)  # (hh, ww), the same bilinear chain
    return WandClick(x, y, np.ascontiguousarray(work), g)


def wand_click(prediction, x: int, y: int) -> WandClick:
    """Click the wand at image pixel (x, y) of ``prediction`` (``DEFAULT_VARIANT`` vectors)."""
    return click_on_features(prediction, wand_features(prediction), x, y)
