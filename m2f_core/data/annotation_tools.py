"""What the CVAT, Label Studio and LabelMe readers and writers share: labels, painting, regions, reports.

Why a module of its own: the three tools describe an image the same way (labelled shapes drawn in
an order, possibly overlapping, named by label text rather than by class id), so the rules that
turn them into the workbench's records, and records back into them, are written once here:

- **Labels** (``resolve_labels``): a tool names classes by text. Given ``categories`` (a list or a
  shipped name such as ``"coco"``), each label must name one of them (exactly, else ignoring case);
  ``label_map`` renames labels first ({"car ": "car"}). A label that matches nothing is a
  ``DatasetError`` that lists it: never dropped. Without ``categories`` the classes are the file's
  own labels (its declared list, else sorted by name), ids 1..N, all things. The labels
  ``__ignore__`` and ``_background_`` (labelme2voc's conventions) are void.
- **Painting** (``ToolDataset``): each image becomes a ``Sample`` with ``instances`` (the thing
  shapes as drawn, overlaps kept, shapes of one group merged) and ``panoptic`` painted in this
  order: stuff shapes (one segment per stuff class), then thing shapes, each in the tool's
  z-order, then void shapes on top. Things always cover stuff, whatever the z-order said.
- **Regions** (``sample_regions``): what a writer puts in a tool file for one sample: the stuff
  segments of the panoptic annotation, then the thing instances in order (overlaps kept), then an
  ``__ignore__`` region for void pixels that a thing covers (so a re-import paints the same map).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..structures import PanopticResult
from .categories import normalize_categories, resolve_categories
from .errors import DatasetError
from .polygons import polygons_to_mask
from .records import GTSegment, InstanceAnnotation, Sample, SegmentationDataset

__all__ = [
    "IGNORE_LABEL_NAME", "VOID_LABELS", "ExportReport", "Region", "ToolDataset", "ToolImage", "ToolShape",
    "polygon_decoder", "resolve_labels", "sample_regions",
]

logger = logging.getLogger(__name__)

IGNORE_LABEL_NAME = "__ignore__"
VOID_LABELS = (IGNORE_LABEL_NAME, "_background_")


@dataclass
class ToolShape:
    """One labelled shape of a tool file; ``decode(height, width)`` rasterises it to a bool mask."""

    label: str
    decode: Callable[[int, int], np.ndarray]
    z: int = 0
    group: object = None
    iscrowd: bool = False
    where: str = ""


@dataclass
class ToolImage:
    """One image of a tool file: its name (relative to the image folder), size and shapes."""

    image_id: int | str
    file_name: str
    height: int
    width: int
    shapes: list[ToolShape] = field(default_factory=list)


def polygon_decoder(polygons: list[np.ndarray], height: int, width: int, source: str | Path, where: str,
                    rasterizer: str = "coco") -> Callable[[int, int], np.ndarray]:
    """A decoder of (N, 2) polygons, checked now: a point far outside the image is an error (pycocotools
    rasterises along every edge, so one point at 1e9 would cost memory without bound)."""
    for p in polygons:
        if not (np.isfinite(p).all() and (-width <= p[:, 0]).all() and (p[:, 0] <= 2 * width).all()
                and (-height <= p[:, 1]).all() and (p[:, 1] <= 2 * height).all()):
            raise DatasetError(source, f"{where} has points far outside the {width}x{height} image")
    return lambda h, w: polygons_to_mask(polygons, h, w, rasterizer)


def resolve_labels(found: Iterable[str], categories: list[dict] | str | None, source: str | Path,
                   declared: list[str] | None = None, label_map: dict[str, str] | None = None,
                   ) -> tuple[list[dict], dict[str, int | None]]:
    """(categories, label -> contiguous class or None for void) under the rules of the module doc."""
    label_map = dict(label_map or {})
    found = list(dict.fromkeys(found))
    renamed = {lab: label_map.get(lab, lab) for lab in (*(declared or []), *found)}
    cats = resolve_categories(categories, source)
    if cats is None:
        names = [n for n in dict.fromkeys(renamed[lab] for lab in (declared or sorted(found)))
                 if n not in VOID_LABELS]
        names += sorted({renamed[lab] for lab in found} - set(names) - set(VOID_LABELS))
        if not names:
            names = ["object"]  # an image set with no labelled shape still needs a class list
        cats = normalize_categories([{"id": i + 1, "name": n, "isthing": 1} for i, n in enumerate(names)], source)
    exact = {c["name"]: i for i, c in enumerate(cats)}
    folded: dict[str, int] = {}
    for c in reversed(cats):
        folded[c["name"].casefold()] = exact[c["name"]]
    index: dict[str, int | None] = {}
    unknown = []
    for lab, name in renamed.items():
        if name in VOID_LABELS:
            index[lab] = None
        elif name in exact:
            index[lab] = exact[name]
        elif name.casefold() in folded:
            index[lab] = folded[name.casefold()]
        elif lab in found:
            unknown.append(lab)
    if unknown:
        known = ", ".join(c["name"] for c in cats[:12]) + (", ..." if len(cats) > 12 else "")
        raise DatasetError(source, f"labels not among the categories: {', '.join(map(repr, sorted(unknown)))} "
                                   f"(known: {known}); rename them with a label map (--map LABEL=NAME)")
    return cats, index


class ToolDataset(SegmentationDataset):
    """Reader base of the tool formats: parsed ``ToolImage``s painted into ``Sample``s (see the module doc)."""

    def __init__(self, images: list[ToolImage], categories: list[dict], label_index: dict[str, int | None],
                 image_dir: Path, name: str, source: Path) -> None:
        super().__init__(categories, name)
        self.images = images
        self.label_index = label_index
        self.image_dir = Path(image_dir)
        self.source = Path(source)
        self.image_ids = [im.image_id for im in images]

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index: int) -> Sample:
        im = self.images[index]
        h, w = im.height, im.width
        groups: dict[object, tuple[int | None, ToolShape, np.ndarray]] = {}  # object -> class, first shape, union
        strokes: list[tuple[object, np.ndarray]] = []  # every shape in z-order, with its object
        for k, shape in sorted(enumerate(im.shapes), key=lambda t: (t[1].z, t[0])):
            mask = shape.decode(h, w)
            if not mask.any():
                logger.warning("%s: %s covers no pixel of the %dx%d image; skipped", self.source, shape.where, w, h)
                continue
            key = (shape.label, shape.group) if shape.group is not None else ("#", k)
            if key in groups:
                cls, first, union = groups[key]
                groups[key] = (cls, first, union | mask)
            else:
                groups[key] = (self.label_index[shape.label], shape, mask)
            strokes.append((key, mask))
        instances = [InstanceAnnotation(category_id=cls, segmentation=union, height=h, width=w, iscrowd=first.iscrowd,
                                        id=i + 1)
                     for i, (cls, first, union) in enumerate(g for g in groups.values()
                                                              if g[0] is not None and self.categories[g[0]]["isthing"])]
        return Sample(image_id=im.image_id, file_name=self.image_dir / im.file_name, height=h, width=w,
                      panoptic=self._paint(groups, strokes, h, w), instances=instances, annotation_file=self.source)

    def _paint(self, groups: dict, strokes: list[tuple[object, np.ndarray]], h: int, w: int) -> PanopticResult:
        """Stuff (one segment per class), then things, then void; each shape at its own place in z-order."""
        seg_map = np.zeros((h, w), dtype=np.int32)
        segments: list[GTSegment] = []
        ids: dict[object, int] = {}
        stuff_ids: dict[int, int] = {}
        for key, (cls, first, _) in groups.items():
            if cls is None:
                continue
            isthing = bool(self.categories[cls]["isthing"])
            if not isthing and cls in stuff_ids:
                ids[key] = stuff_ids[cls]
                continue
            segments.append(GTSegment(id=len(segments) + 1, category_id=cls, isthing=isthing, iscrowd=first.iscrowd))
            ids[key] = segments[-1].id
            if not isthing:
                stuff_ids[cls] = ids[key]
        for layer in ("stuff", "thing", "void"):
            for key, mask in strokes:
                cls = groups[key][0]
                kind = "void" if cls is None else "thing" if self.categories[cls]["isthing"] else "stuff"
                if kind == layer:
                    seg_map[mask] = ids.get(key, 0)
        pan = PanopticResult(seg_map, segments).update_stats()
        pan.segments = [s for s in pan.segments if s.area > 0]
        return pan


# --------------------------------------------------------------------------------------------
# Writing


@dataclass
class Region:
    """One region a writer puts in a tool file: a class (None = the ``__ignore__`` region) and its mask."""

    category: int | None
    mask: np.ndarray
    iscrowd: bool = False
    score: float | None = None
    source: str = "manual"  # "model" for predicted, unedited segments

    def label(self, categories: list[dict]) -> str:
        return IGNORE_LABEL_NAME if self.category is None else categories[self.category]["name"]


def sample_regions(sample: Sample, categories: list[dict]) -> list[Region]:
    """The regions of one sample in writing (= painting) order; see the module doc."""
    n = len(categories)
    out: list[Region] = []
    pan = sample.panoptic
    if pan is not None:
        for s in pan.segments:
            if not s.isthing:
                out.append(Region(s.category_id, pan.segment_map == s.id, bool(getattr(s, "iscrowd", False)),
                                  _score(s), _source(s)))
        if sample.instances is not None:
            out += [Region(a.category_id, a.mask(), a.iscrowd) for a in sample.instances]
        else:
            for s in pan.segments:
                if s.isthing:
                    out.append(Region(s.category_id, pan.segment_map == s.id, bool(getattr(s, "iscrowd", False)),
                                      _score(s), _source(s)))
        covered = np.zeros(pan.segment_map.shape, dtype=bool)
        for r in out:
            covered |= r.mask
        hidden = covered & (pan.segment_map == 0)
        if hidden.any():
            out.append(Region(None, hidden))
    elif sample.instances is not None:
        out = [Region(a.category_id, a.mask(), a.iscrowd) for a in sample.instances]
    elif sample.semantic is not None:
        out = [Region(int(c), sample.semantic == c) for c in np.unique(sample.semantic) if c < n]
    for r in out:
        if r.category is not None and not 0 <= r.category < n:
            raise DatasetError(sample.file_name, f"class {r.category} outside 0..{n - 1}")
    return [r for r in out if r.mask.any()]


def _score(segment: object) -> float | None:
    """A prediction's score; None for ground truth (whose score means nothing)."""
    return None if getattr(segment, "source", "gt") == "gt" else float(segment.score)  # type: ignore[attr-defined]


def _source(segment: object) -> str:
    return "model" if getattr(segment, "source", "") == "model" else "manual"


@dataclass
class ExportReport:
    """What a writer wrote: images, regions, regions as polygons / as masks, the lowest polygon IoU."""

    path: Path
    images: int = 0
    regions: int = 0
    polygons: int = 0
    masks: int = 0
    min_iou: float = 1.0
    skipped: list[str] = field(default_factory=list)

    def add_polygon(self, iou: float) -> None:
        self.polygons += 1
        self.min_iou = min(self.min_iou, iou)

    def summary(self) -> str:
        text = f"{self.images} image(s), {self.regions} region(s) -> {self.path}"
        if self.polygons:
            text += f"; {self.polygons} as polygons (lowest IoU {self.min_iou:.4f})"
        if self.masks:
            text += f"; {self.masks} as masks"
        return text
