"""ADE20K-150 semantic segmentation (ADEChallengeData2016 / SceneParsing layout).

``ROOT/images/{training,validation}/*.jpg`` + ``ROOT/annotations/{training,validation}/*.png``:
uint8 PNGs where 0 = "other" (ignored) and 1..150 are the classes of ``objectInfo150.txt``.
Class ids are shifted by -1 and 0 becomes 255, exactly as Detectron2's
``prepare_ade20k_sem_seg.py`` does (its output folder ``annotations_detectron2`` is read as is
with ``prepared=True``). The shipped ``ade20k`` class list has ids 0..149 = the shifted ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DatasetError
from .semantic import SemanticFolder


class ADE20KSemantic(SemanticFolder):
    """ADEChallengeData2016 split; ``split=""`` reads ``images/`` and ``annotations/`` directly."""

    def __init__(self, root: str | Path, split: str = "validation", prepared: bool = False,
                 categories: list[dict] | str = "ade20k") -> None:
        root = Path(root)
        self.prepared = prepared
        labels = root / ("annotations_detectron2" if prepared else "annotations") / split
        super().__init__(root / "images" / split, labels, categories, name=f"ade20k_{split or 'all'}")

    def decode_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if self.prepared:
            return super().decode_labels(raw, path)
        k = len(self.categories)
        if raw.size and int(raw.max()) > k:
            raise DatasetError(path, f"value {int(raw.max())} above {k}: not an ADE20K-{k} annotation "
                                     f"(0 = ignore, 1..{k} = classes)")
        return np.where(raw == 0, 255, raw.astype(np.int16) - 1).astype(np.uint8)
