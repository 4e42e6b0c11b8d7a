"""Result types of the three tasks, at the original image size.

Class ids are the model's contiguous ids (0..K-1); ``class_names`` / ``dataset_ids`` of the config
map them to names and to the ids of the dataset's own files (e.g. COCO's 1..200).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def mask_bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    """COCO box (x, y, w, h) of the True pixels of a (H, W) mask; zeros when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs[0]), float(ys[0]), float(xs[-1] - xs[0] + 1), float(ys[-1] - ys[0] + 1))


def segment_stats(segment_map: np.ndarray) -> dict[int, tuple[int, tuple[slice, slice]]]:
    """Area and bounding slices (rows, cols) of every id of a non-negative (H, W) id map, 0 included.

    One pass: a bincount and ``ndimage.find_objects`` when the ids are small (a model's 1..N), else
    through ``np.unique`` (COCO ids encode RGB colours, up to 2**24); a 12-megapixel map costs tens of
    milliseconds instead of a sort of every pixel.
    """
    from scipy import ndimage

    seg_map = np.asarray(segment_map)
    if seg_map.size == 0:
        return {}
    top = int(seg_map.max())
    if int(seg_map.min()) < 0:
        raise ValueError("the segment map has negative ids")
    if top < (1 << 20):
        labels = seg_map.astype(np.int32, copy=False)
        counts = np.bincount(labels.ravel(), minlength=top + 1)
        slices = ndimage.find_objects(labels + 1)  # +1: id 0 (void) gets its slices too
        return {i: (int(counts[i]), slices[i]) for i in np.flatnonzero(counts).tolist()}
    ids, inverse = np.unique(seg_map, return_inverse=True)
    inverse = inverse.reshape(seg_map.shape)
    counts = np.bincount(inverse.ravel(), minlength=len(ids))
    slices = ndimage.find_objects(inverse + 1)
    return {int(i): (int(counts[k]), slices[k]) for k, i in enumerate(ids.tolist())}


@dataclass
class Segment:
    """One panoptic segment. ``source`` is "model" or "edited" (set by the editor)."""

    id: int
    category_id: int
    isthing: bool
    score: float
    area: int = 0
    bbox: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    source: str = "model"

    def to_dict(self) -> dict:
        return {"id": self.id, "category_id": self.category_id, "isthing": self.isthing, "score": self.score,
                "area": self.area, "bbox": list(self.bbox), "source": self.source}


@dataclass
class PanopticResult:
    """Non-overlapping segmentation: ``segment_map`` (H, W) int32 with 0 = void, plus its segments."""

    segment_map: np.ndarray
    segments: list[Segment] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.segment_map = np.asarray(self.segment_map, dtype=np.int32)

    @property
    def height(self) -> int:
        return int(self.segment_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.segment_map.shape[1])

    def segment(self, segment_id: int) -> Segment:
        for s in self.segments:
            if s.id == segment_id:
                return s
        raise KeyError(f"no segment with id {segment_id}")

    def mask(self, segment_id: int) -> np.ndarray:
        return self.segment_map == segment_id

    def update_stats(self) -> PanopticResult:
        """Recompute every segment's area and box from the map (after an edit or a merge)."""
        stats = segment_stats(self.segment_map)
        for s in self.segments:
            area, sl = stats.get(s.id, (0, None))
            s.area = int(area)
            if area:
                ys, xs = sl
                s.bbox = (float(xs.start), float(ys.start), float(xs.stop - xs.start), float(ys.stop - ys.start))
            else:
                s.bbox = (0.0, 0.0, 0.0, 0.0)
        return self

    def semantic_map(self, ignore_value: int = 255) -> np.ndarray:
        """(H, W) class map derived from the segments; void pixels get ``ignore_value``."""
        lut = np.full(int(self.segment_map.max(initial=0)) + 1, ignore_value, dtype=np.int64)
        for s in self.segments:
            lut[s.id] = s.category_id
        return lut[self.segment_map]


@dataclass
class InstanceResult:
    """Possibly overlapping instances: ``masks`` (N, H, W) bool, ``boxes`` (N, 4) xyxy, scores, labels."""

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=bool)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.scores)
        if not (len(self.masks) == len(self.boxes) == len(self.labels) == n):
            raise ValueError("masks, boxes, scores and labels must have the same length")

    def __len__(self) -> int:
        return len(self.scores)

    def to_rle(self) -> list[dict]:
        """COCO compressed RLE per instance (``counts`` as str), through pycocotools."""
        from pycocotools import mask as mask_util

        out = []
        for m in self.masks:
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            out.append(rle)
        return out

    def filter(self, keep: np.ndarray) -> InstanceResult:
        return InstanceResult(self.masks[keep], self.boxes[keep], self.scores[keep], self.labels[keep])


@dataclass
class SemanticResult:
    """``label_map`` (H, W) int64 of class ids; ``probs`` (K, H, W) float32 when asked for."""

    label_map: np.ndarray
    probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.label_map = np.asarray(self.label_map, dtype=np.int64)


@dataclass
class Candidate:
    """A query that covers a pixel but was dropped by the panoptic post-processing."""

    query: int
    category_id: int
    score: float
    mask: np.ndarray  # (H, W) bool at the original image size
