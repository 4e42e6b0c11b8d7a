"""Semantic segmentation metrics: mIoU, fwIoU, mACC, pACC, the rules of detectron2 ``SemSegEvaluator``.

A confusion matrix ``M[pred, gt]`` of size (K+1, K+1) is accumulated with ``np.bincount``; ground-truth pixels
equal to ``ignore_index`` go to the last column and are left out everywhere. Per class ``c``:
``Acc = M[c, c] / gt_c`` and ``IoU = M[c, c] / (gt_c + pred_c - M[c, c])``; a class with no ground-truth pixel has
``Acc = IoU = None`` and is left out of the means (even if it was predicted: its false-positive pixels still lower
the IoU of the classes they cover). ``mIoU``/``mACC`` are the plain means over the classes with ground truth,
``fwIoU`` weighs each IoU by ``gt_c / sum(gt)`` and ``pACC = sum(M[c, c]) / sum(gt)``. All in percent.

One addition to detectron2 (whose predictions are an argmax, always a class): a *predicted* pixel equal to
``ignore_index`` (when it is not itself a class id) means "no prediction" and counts as a miss for its
ground-truth class (last row of the matrix). Any other label outside ``[0, K)`` raises ``MetricInputError``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import MetricInputError


class SemSegConfusion:
    """Confusion-matrix accumulator: ``update(pred, gt)`` per image, then ``compute()``."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise MetricInputError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        # rows: predicted class (last = no prediction); columns: ground-truth class (last = ignored)
        self.matrix = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray, where: str = "image") -> None:
        """Add one image: ``pred`` and ``gt`` integer label maps of the same shape."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise MetricInputError(f"{where}: prediction shape {pred.shape} != ground-truth shape {gt.shape}")
        for arr, what in ((pred, "prediction"), (gt, "ground truth")):
            if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
                raise MetricInputError(f"{where}: {what} labels must be integers, got {arr.dtype}")
        k, ignore = self.num_classes, self.ignore_index
        pred = pred.astype(np.int64).ravel()
        gt = gt.astype(np.int64).ravel()

        gt_ignored = gt == ignore
        bad = ((gt < 0) | (gt >= k)) & ~gt_ignored
        if bad.any():
            raise MetricInputError(f"{where}: ground-truth label {int(gt[bad][0])} is outside [0, {k}) and is not "
                                   f"the ignore index {ignore}")
        bad = (pred < 0) | (pred >= k)
        pred_none = bad & (pred == ignore)  # only possible when the ignore index is not a class
        bad &= ~pred_none
        if bad.any():
            raise MetricInputError(f"{where}: predicted label {int(pred[bad][0])} is outside [0, {k})")
        gt[gt_ignored] = k
        pred[pred_none] = k
        self.matrix += np.bincount((k + 1) * pred + gt, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``{"mIoU", "fwIoU", "mACC", "pACC", "per_class": {class_id: {name, IoU, Acc}}}`` in percent."""
        k = self.num_classes
        if class_names is not None and len(class_names) != k:
            raise MetricInputError(f"{len(class_names)} class names given for {k} classes")
        m = self.matrix.astype(np.float64)
        tp = np.diagonal(m)[:k]
        pos_gt = m[:, :k].sum(axis=0)  # includes the "no prediction" row: a miss
        pos_pred = m[:k, :k].sum(axis=1)
        acc_valid = pos_gt > 0
        union = pos_gt + pos_pred - tp
        iou_valid = acc_valid & (union > 0)
        acc = np.full(k, np.nan)
        iou = np.full(k, np.nan)
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        iou[iou_valid] = tp[iou_valid] / union[iou_valid]
        total = pos_gt.sum()

        def pct(x: float) -> float | None:
            return None if np.isnan(x) else float(100.0 * x)

        out: dict[str, Any] = {
            "mIoU": pct(np.sum(iou[iou_valid]) / np.sum(iou_valid)) if iou_valid.any() else None,
            "fwIoU": pct(np.sum(iou[iou_valid] * pos_gt[iou_valid] / total)) if total > 0 else None,
            "mACC": pct(np.sum(acc[acc_valid]) / np.sum(acc_valid)) if acc_valid.any() else None,
            "pACC": pct(np.sum(tp) / total) if total > 0 else None,
            "pixels": int(total),
        }
        out["per_class"] = {
            c: {"name": class_names[c] if class_names is not None else str(c), "IoU": pct(iou[c]), "Acc": pct(acc[c])}
            for c in range(k)
        }
        return out


def read_label_png(path: Path) -> np.ndarray:
    """A single-channel label PNG (L, P or I;16 mode) as an integer array; clear error otherwise."""
    if not path.is_file():
        raise MetricInputError(f"{path}: PNG not found")
    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise MetricInputError(f"{path}: cannot read image ({e})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise MetricInputError(f"{path}: not a single-channel label PNG (array shape {arr.shape}, {arr.dtype})")
    return arr


ENGINES = ("hotcoco", "reference")


def sem_seg_compute(
    gt_dir: str | Path,
    pred_dir: str | Path,
    num_classes: int,
    ignore_index: int = 255,
    class_names: Sequence[str] | None = None,
    progress: bool = False,
    engine: str = "hotcoco",
) -> dict[str, Any]:
    """Semantic metrics of the label PNGs in ``pred_dir`` against those in ``gt_dir`` (same relative names).

    Every ``*.png`` under ``gt_dir`` (recursively) needs a prediction of the same size; extra predictions are
    ignored. Returns ``SemSegConfusion.compute()`` plus ``images`` (how many pairs were read).

    ``engine``: ``"hotcoco"`` (default) reads and counts each pair in hotcoco's Rust engine, on every core,
    about 10x faster; a pair it refuses (a predicted ``ignore_index``, which it does not accept, or a bad
    label) is counted here instead, which gives the project's rules and messages. ``"reference"`` counts
    every pair here. The test suite holds both equal.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown mIoU engine {engine!r} (known: {', '.join(ENGINES)})")
    gt_root, pred_root = Path(gt_dir), Path(pred_dir)
    for folder, what in ((gt_root, "ground-truth"), (pred_root, "prediction")):
        if not folder.is_dir():
            raise MetricInputError(f"{folder}: {what} folder not found")
    gt_files = sorted(gt_root.rglob("*.png"))
    if not gt_files:
        raise MetricInputError(f"{gt_root}: no .png ground-truth file")
    pairs = []
    for gt_path in gt_files:
        pred_path = pred_root / gt_path.relative_to(gt_root)
        if not pred_path.is_file():
            raise MetricInputError(f"{pred_path}: prediction PNG not found (for ground truth {gt_path})")
        pairs.append((gt_path, pred_path))
    confusion = SemSegConfusion(num_classes, ignore_index)
    if engine == "hotcoco":
        _add_hotcoco(confusion, pairs)
    else:
        from tqdm import tqdm

        for gt_path, pred_path in tqdm(pairs, desc="mIoU", unit="img", file=sys.stderr,
                                       disable=None if progress else True):
            _add_pair(confusion, gt_path, pred_path)
    out = confusion.compute(class_names)
    out["images"] = len(gt_files)
    return out


def _add_pair(confusion: SemSegConfusion, gt_path: Path, pred_path: Path) -> None:
    """Read one pair and count it here (the reference rules and messages)."""
    gt, pred = read_label_png(gt_path), read_label_png(pred_path)
    if gt.shape != pred.shape:
        raise MetricInputError(f"{pred_path}: size {pred.shape[::-1]} (W, H) differs from the ground truth "
                               f"{gt_path} {gt.shape[::-1]}")
    confusion.update(pred, gt, where=f"{pred_path} (ground truth {gt_path})")


def _add_hotcoco(confusion: SemSegConfusion, pairs: list[tuple[Path, Path]]) -> None:
    """Count the pairs with hotcoco's ``SemanticEval`` (one per thread, merged); refused pairs go to ``_add_pair``.

    hotcoco's confusion is ``[gt, pred]`` over the K classes; ours is ``[pred, gt]`` with a "no prediction" row
    and an "ignored" column, which hotcoco never fills (it refuses those pairs).
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    from hotcoco.semantic import SemanticEval

    k, ignore = confusion.num_classes, confusion.ignore_index

    def count(chunk: list[tuple[Path, Path]]) -> tuple[SemanticEval, list[tuple[Path, Path]]]:
        evaluation, refused = SemanticEval(k, ignore_index=ignore), []
        for gt_path, pred_path in chunk:
            try:
                evaluation.update_png(str(gt_path), str(pred_path))  # a refused pair leaves it unchanged
            except (ValueError, OSError):
                refused.append((gt_path, pred_path))
        return evaluation, refused

    workers = max(1, min(len(pairs), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # hotcoco releases the GIL while it decodes and counts
        parts = list(pool.map(count, [pairs[i::workers] for i in range(workers)]))
    refused = sorted(p for _, r in parts for p in r)
    for gt_path, pred_path in refused:
        _add_pair(confusion, gt_path, pred_path)
    for evaluation, _ in parts:
        confusion.matrix[:k, :k] += evaluation.confusion().astype(np.int64).T
