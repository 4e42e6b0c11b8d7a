"""ADE20K-150 semantic segmentation (ADEChallengeData2016 / SceneParsing layout).

``ROOT/images/{training,validation}/*.jpg`` + ``ROOT/annotations/{training,validation}/*.png``:
uint8 PNGs where 0 = "other" (ignored) and 1..150 are the classes of ``objectInfo150.txt``.
Class ids are shifted by -1 and 0 becomes 255, exactly as Detectron2's
``prepare_ade20k_sem_seg.py`` does (its output folder ``annotations_detectron2`` is read as is
with ``prepared=True``). The shipped ``ade20k`` class list has ids 0..149 = the shifted ids.
The shift is stated in ``notes``; a PNG holding 255 (already shifted) is refused, never shifted twice.
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
        self.notes.append("labels: annotations_detectron2 (0-based, 255 = ignore) as stored" if prepared else
                          "labels: ADE20K convention (0 = ignore, 1..150 = classes), read as 255 and 0..149")

    def decode_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if self.prepared:
            return super().decode_labels(raw, path)
        k = len(self.categories)
        if raw.size and int(raw.max()) == 255:
            raise DatasetError(path, "value 255: these labels are already 0-based with 255 = ignore (Detectron2's "
                                     "annotations_detectron2, or an export): read them with prepared=True or as "
                                     "semantic:ROOT --classes ade20k")
        if raw.size and int(raw.max()) > k:
            raise DatasetError(path, f"value {int(raw.max())} above {k}: not an ADE20K-{k} annotation "
                                     f"(0 = ignore, 1..{k} = classes)")
        return np.where(raw == 0, 255, raw.astype(np.int16) - 1).astype(np.uint8)
