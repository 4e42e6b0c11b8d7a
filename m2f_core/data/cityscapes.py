"""Cityscapes fine annotations: semantic (19 train ids) and instances / panoptic from ``instanceIds``.

Layout: ``ROOT/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with
``ROOT/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` (the download) and/or
``..._gtFine_labelTrainIds.png`` (cityscapesScripts' ``createTrainIdLabelImgs``), and
``..._gtFine_instanceIds.png``. Semantic: labelIds are mapped labelId -> trainId through the class list
(``id`` = labelId, order = trainId; every other label -> 255); when only labelTrainIds files are
present they are read as stored (train ids, 255 = ignore), which needs the 19-class list. Which of the
two is read is detected from the first image's files and stated in ``notes``.
``instanceIds`` (16-bit): value >= 1000 is an instance of label ``value // 1000``; a value < 1000 is
the labelId of a stuff region or of a crowd of a thing class
(``iscrowd``), as in Detectron2's ``cityscapes.py`` and cityscapesScripts' ``createPanopticImgs``.
Panoptic segment ids are the instanceIds values (thing instances) or the labelId (stuff / crowd).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..structures import PanopticResult
from .categories import resolve_categories
from .errors import DatasetError
from .fileio import image_size, read_png
from .records import IGNORE_LABEL, GTSegment, Sample, SegmentationDataset, panoptic_to_instances

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_IDS = "_gtFine_labelIds.png"
_TRAIN_IDS = "_gtFine_labelTrainIds.png"


class CityscapesDataset(SegmentationDataset):
    """Cityscapes ``gtFine`` split; each item has ``semantic`` and (with ``load_instances``) ``panoptic``
    and ``instances`` (things, crowd regions flagged). ``split=""`` searches all of ``leftImg8bit/``.
    """

    def __init__(self, root: str | Path, split: str = "val", load_instances: bool = True,
                 categories: list[dict] | str = "cityscapes") -> None:
        self.root = Path(root)
        cats = resolve_categories(categories, self.root)
        assert cats is not None
        super().__init__(cats, f"cityscapes_{split or 'all'}")
        self.load_instances = load_instances
        if any(not 0 <= c["id"] < 256 for c in cats):
            raise DatasetError(self.root, "Cityscapes category ids (label ids) must be in 0..255")
        self._lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
        for i, c in enumerate(cats):
            self._lut[c["id"]] = i
        self.image_root = self.root / "leftImg8bit" / split
        self.gt_root = self.root / "gtFine" / split
        if not self.image_root.is_dir():
            raise DatasetError(self.image_root, "no such folder (expected ROOT/leftImg8bit/<split>)")
        images = sorted(self.image_root.rglob(f"*{_IMAGE_SUFFIX}"))
        if not images:
            raise DatasetError(self.image_root, f"no *{_IMAGE_SUFFIX} files")
        self.label_suffix = self._label_suffix(images[0], cats)
        self._items = []
        for img in images:
            stem = img.name[: -len(_IMAGE_SUFFIX)]
            gt_dir = self.gt_root / img.parent.relative_to(self.image_root)
            self._items.append((stem, img, gt_dir / f"{stem}{self.label_suffix}",
                                gt_dir / f"{stem}_gtFine_instanceIds.png"))

    def _label_suffix(self, first_image: Path, cats: list[dict]) -> str:
        """``_gtFine_labelIds.png`` when present, else ``_gtFine_labelTrainIds.png``; the choice goes to ``notes``."""
        stem = first_image.name[: -len(_IMAGE_SUFFIX)]
        gt_dir = self.gt_root / first_image.parent.relative_to(self.image_root)
        label_ids, train_ids = (gt_dir / f"{stem}{s}" for s in (_LABEL_IDS, _TRAIN_IDS))
        if label_ids.is_file():
            self.notes.append(f"labels: *{_LABEL_IDS} (Cityscapes label ids, mapped to the {len(cats)} train ids)")
            return _LABEL_IDS
        if not train_ids.is_file():
            raise DatasetError(self.gt_root, f"no annotation of {first_image.name}; looked for: {label_ids}, "
                                             f"{train_ids}")
        if [c.get("train_id", i) for i, c in enumerate(cats)] != list(range(len(cats))) or len(cats) != 19:
            raise DatasetError(train_ids, "only *_labelTrainIds.png files (train ids 0..18) are present: they need "
                                          "the 19-class Cityscapes list; give *_labelIds.png for another class list")
        self.notes.append(f"labels: *{_TRAIN_IDS} (train ids 0..18 as stored; no *{_LABEL_IDS} found)")
        return _TRAIN_IDS

    def __len__(self) -> int:
        return len(self._items)

    def _load(self, index: int) -> Sample:
        stem, image, label_file, inst_file = self._items[index]
        labels = read_png(label_file)
        if labels.ndim != 2 or labels.dtype != np.uint8:
            raise DatasetError(label_file, f"not an 8-bit label map (pixels are {labels.dtype} {labels.shape})")
        if self.label_suffix == _TRAIN_IDS:
            semantic = labels.copy()
            semantic[semantic >= len(self.categories)] = IGNORE_LABEL
        else:
            semantic = self._lut[labels]
        h, w = labels.shape
        ih, iw = image_size(image)
        if (ih, iw) != (h, w):
            raise DatasetError(label_file, f"annotation is {w}x{h} but its image {image.name} is {iw}x{ih}")
        sample = Sample(image_id=stem, file_name=image, height=h, width=w, semantic=semantic,
                        annotation_file=label_file)
        if self.load_instances:
            inst = read_png(inst_file)
            if inst.ndim != 2 or inst.dtype.kind not in "iu":
                raise DatasetError(inst_file, f"not an instanceIds map (pixels are {inst.dtype} {inst.shape})")
            if inst.shape != (h, w):
                raise DatasetError(inst_file, f"annotation is {inst.shape[1]}x{inst.shape[0]} but its labelIds "
                                              f"map is {w}x{h}")
            sample.panoptic = self.instance_ids_to_panoptic(inst)
            sample.instances = panoptic_to_instances(sample.panoptic)
        return sample

    def instance_ids_to_panoptic(self, inst: np.ndarray) -> PanopticResult:
        """Panoptic annotation of an ``instanceIds`` map (labels outside the class list are void)."""
        inst = inst.astype(np.int64)
        values, index = np.unique(inst, return_inverse=True)
        seg_of_value = np.zeros(values.shape, dtype=np.int32)
        segments: dict[int, GTSegment] = {}
        for k, v in enumerate(values.tolist()):
            label_id = v // 1000 if v >= 1000 else v
            cat = self.dataset_id_to_contiguous.get(label_id)
            if cat is None:
                continue
            isthing = bool(self.categories[cat]["isthing"])
            seg_id = v if (isthing and v >= 1000) else label_id
            seg_of_value[k] = seg_id
            if seg_id not in segments:
                segments[seg_id] = GTSegment(id=seg_id, category_id=cat, isthing=isthing,
                                             iscrowd=isthing and v < 1000)
        seg_map = seg_of_value[index.reshape(inst.shape)]
        return PanopticResult(seg_map, list(segments.values())).update_stats()
