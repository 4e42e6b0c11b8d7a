"""Semantic segmentation as a folder of images plus same-named PNG class maps (255 = ignore).

This is the layout of Detectron2's ``load_sem_seg`` (ADE20K, COCO-stuff, exported corrections):
``label_dir/<stem>.png`` holds uint8 class ids (contiguous: index into ``categories``) for the image
``image_dir/<stem>.<ext>``. The writer stores exactly that, atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from .categories import resolve_categories
from .errors import DatasetError
from .fileio import encode_png, image_size, read_png
from .layouts import looks_like_ade_challenge
from .records import IGNORE_LABEL, Sample, SegmentationDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _check_labels(labels: np.ndarray, num_classes: int | None, source: str | Path) -> None:
    if num_classes is None:
        return
    values = np.unique(labels)
    bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:6]) + (", ..." if bad.size > 6 else "")
        raise DatasetError(source, f"class ids {shown} outside 0..{num_classes - 1} (and {IGNORE_LABEL} = ignore)")


def read_semantic_png(path: str | Path, num_classes: int | None = None) -> np.ndarray:
    """(H, W) uint8 class map of a single-channel PNG (grey or palette indices); checked against ``num_classes``."""
    arr = read_png(path)
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise DatasetError(path, f"not a single-channel class map (pixels are {arr.dtype} with shape {arr.shape})")
    if arr.dtype != np.uint8:
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
            raise DatasetError(path, f"class ids {int(arr.min())}..{int(arr.max())} do not fit in 0..255")
        arr = arr.astype(np.uint8)
    _check_labels(arr, num_classes, path)
    return arr


def write_semantic_png(path: str | Path, label_map: np.ndarray, num_classes: int | None = None) -> Path:
    """Write an (H, W) class map as a uint8 PNG (255 = ignore), atomically; ids must fit in 0..255."""
    arr = np.asarray(label_map)
    if arr.ndim != 2 or arr.dtype.kind not in "iub":
        raise DatasetError(path, f"a semantic map must be an (H, W) integer array, got {arr.dtype} {arr.shape}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
        raise DatasetError(path, f"class ids {int(arr.min())}..{int(arr.max())} do not fit in a uint8 PNG (0..255)")
    arr = arr.astype(np.uint8)
    _check_labels(arr, num_classes, path)
    return atomic_write_bytes(path, encode_png(arr))


class SemanticFolder(SegmentationDataset):
    """Images + same-named PNG class maps; each item has ``semantic`` (H, W) uint8, 255 = ignore.

    Every annotation needs an image with the same stem (its size is checked against the image's
    header); images without an annotation are not items. ``categories``: a list or a shipped name.
    Subclasses change how raw PNG values become class ids by overriding ``decode_labels``.
    """

    def __init__(self, image_dir: str | Path, label_dir: str | Path, categories: list[dict] | str,
                 name: str | None = None) -> None:
        self.image_dir, self.label_dir = Path(image_dir), Path(label_dir)
        cats = resolve_categories(categories, self.label_dir)
        if cats is None:
            raise DatasetError(self.label_dir, "a semantic folder needs categories")
        super().__init__(cats, name or self.label_dir.name)
        for d, what in ((self.image_dir, "image"), (self.label_dir, "annotation")):
            if not d.is_dir():
                raise DatasetError(d, f"no such {what} folder")
        labels = sorted(self.label_dir.glob("*.png"))
        if not labels:
            raise DatasetError(self.label_dir, "no .png annotation files")
        images: dict[str, Path] = {}
        for p in sorted(self.image_dir.iterdir()):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                images.setdefault(p.stem, p)
        self._items: list[tuple[Path, Path]] = []
        for label in labels:
            if label.stem not in images:
                raise DatasetError(label, f"no image {label.stem}.* in {self.image_dir}")
            self._items.append((images[label.stem], label))

    def __len__(self) -> int:
        return len(self._items)

    def decode_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Class ids of a raw annotation PNG; here the values already are class ids (255 = ignore)."""
        _check_labels(raw, len(self.categories), path)
        return raw

    def _load(self, index: int) -> Sample:
        image, label = self._items[index]
        raw = read_semantic_png(label)
        semantic = self.decode_labels(raw, label)
        h, w = semantic.shape
        ih, iw = image_size(image)
        if (ih, iw) != (h, w):
            raise DatasetError(label, f"annotation is {w}x{h} but its image {image.name} is {iw}x{ih}")
        return Sample(image_id=label.stem, file_name=image, height=h, width=w, semantic=semantic,
                      annotation_file=label)


def refuse_one_based_labels(dataset: SemanticFolder, root: Path) -> None:
    """Refuse labels in ADE20K's convention (0 = ignore, 1..K = classes) read as 0-based class ids.

    Read as is they would shift every class by one with no error. The rule, on up to 8 PNGs spread over
    the folder: no 255 anywhere, and either the folder is an ADEChallengeData2016 one or the value K
    (one past the last class) occurs.
    """
    files = sorted(dataset.label_dir.glob("*.png"))
    values: set[int] = set()
    for f in files[:: max(1, len(files) // 8)][:8]:
        values.update(np.unique(read_semantic_png(f)).tolist())
    k = len(dataset.categories)
    if IGNORE_LABEL in values:
        return
    ade = looks_like_ade_challenge(root, dataset.label_dir)
    if not (ade or k in values):
        return
    why = "an ADEChallengeData2016 folder" if ade else f"value {k} occurs with {k} classes and no {IGNORE_LABEL}"
    raise DatasetError(dataset.label_dir, f"{why}: these labels look 1-based with 0 = ignore (ADE20K's "
                                          f"convention), but the semantic format reads 0-based class ids with "
                                          f"{IGNORE_LABEL} = ignore, which would shift every label by one; use "
                                          f"ade20k:{root} (it converts them), or convert the PNGs first")
