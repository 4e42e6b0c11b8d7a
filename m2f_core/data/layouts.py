"""Where each dataset format keeps its files: the standard folder layouts, the split defaults, the search.

A user names a dataset by its root folder or its annotation file; the files sit in one of a few
standard layouts (Detectron2's ``datasets/``, the raw COCO download, ``ADEChallengeData2016``,
``prepare_ade20k_pan_seg.py``'s output, cityscapesScripts' output, our synthetic generator's). This
module knows those layouts and finds the one present; when none is, the ``DatasetError`` names every
place it looked. ``docs/datasets.md`` draws each layout.

Why a module of its own: the readers (given a JSON) and ``specs.open_dataset`` (given a root) must
agree on the layouts, and the search itself (candidates tried in order, places looked recorded) is
the same for every format.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError

__all__ = [
    "PURPOSES", "Search", "SplitChoice", "ade20k_split_names", "choose_splits", "city_image",
    "coco_instances_image_dirs", "find_ade20k", "find_cityscapes", "find_coco_instances", "find_coco_panoptic",
    "find_semantic", "first_dir_with", "looks_like_ade_challenge", "panoptic_json_dirs",
]

PURPOSES = ("train", "eval")

# Split names tried, in order, when none is given: a training run reads the training split, everything
# else (evaluation, the app, the FiftyOne import) the validation split. Each format uses its own names
# (COCO train2017/val2017, ADE20K training/validation, Cityscapes and the synthetic generator train/val).
DEFAULT_SPLITS = {
    "train": ("train2017", "train", "training"),
    "eval": ("val2017", "val", "validation"),
}

_ADE_LONG = {"train": "training", "val": "validation"}
_ADE_SHORT = {v: k for k, v in _ADE_LONG.items()}


@dataclass(frozen=True)
class SplitChoice:
    """The split names to try and why: given by the user, or the default for the purpose."""

    names: tuple[str, ...]
    given: bool

    def own_names(self, standard: tuple[str, ...]) -> tuple[str, ...]:
        """The names to try in a format whose splits have fixed names: the given one, else the defaults among them."""
        return self.names if self.given else tuple(n for n in self.names if n in standard)

    def describe(self, split: str, purpose: str) -> str:
        if self.given:
            return f"split {split!r}"
        what = "training" if purpose == "train" else "evaluation"
        return f"split {split!r} (the default for {what})"


def choose_splits(split: str | None, purpose: str) -> SplitChoice:
    """The split(s) to try: ``split`` itself when given, else the defaults of ``purpose`` ("train"/"eval")."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if split is not None:
        return SplitChoice((split,), True)
    return SplitChoice(DEFAULT_SPLITS[purpose], False)


def ade20k_split_names(split: str) -> tuple[str, str]:
    """(folder name, panoptic file name) of an ADE20K split: ("validation", "val") for "val" or "validation"."""
    return _ADE_LONG.get(split, split), _ADE_SHORT.get(split, split)


@dataclass
class Search:
    """Candidates tried in order; every path checked is remembered for the error message."""

    looked: list[Path] = field(default_factory=list)

    def is_file(self, path: Path) -> bool:
        self.looked.append(path)
        return path.is_file()

    def is_dir(self, path: Path) -> bool:
        self.looked.append(path)
        return path.is_dir()

    def error(self, source: str | Path, what: str) -> DatasetError:
        places = ", ".join(str(p) for p in dict.fromkeys(self.looked))
        return DatasetError(source, f"no {what} found; looked for: {places}")


@dataclass
class Found:
    """A layout found under a root: its split, its name, and the paths a reader needs."""

    split: str
    layout: str
    paths: dict[str, Path]


# --------------------------------------------------------------------------------------------
# COCO panoptic (and the layouts that reuse it: ADE20K panoptic, Cityscapes panoptic, synthetic)


def _panoptic_candidates(root: Path, split: str) -> list[tuple[str, Path]]:
    """(layout name, JSON path) of every panoptic layout of ``split`` under ``root``, in search order."""
    short = ade20k_split_names(split)[1]
    ade = "ADE20K panoptic (prepare_ade20k_pan_seg.py)"
    return [
        ("COCO", root / "annotations" / f"panoptic_{split}.json"),
        ("synthetic generator", root / split / "panoptic.json"),
        (ade, root / f"ade20k_panoptic_{short}.json"),
        (ade, root / "ADEChallengeData2016" / f"ade20k_panoptic_{short}.json"),
        ("Cityscapes panoptic (createPanopticImgs)", root / "gtFine" / f"cityscapes_panoptic_{split}.json"),
        ("Cityscapes panoptic (createPanopticImgs)", root / "gtFine" / f"cityscapes_panoptic_{split}_trainId.json"),
    ]


def find_coco_panoptic(root: Path, splits: SplitChoice) -> Found:
    """The panoptic JSON of the first split of ``splits`` found under ``root`` (see ``panoptic_json_dirs``)."""
    search = Search()
    for split in splits.names:
        for layout, json_file in _panoptic_candidates(root, split):
            if search.is_file(json_file):
                return Found(split, layout, {"json": json_file})
    raise search.error(root, "COCO panoptic annotation JSON")


def panoptic_json_dirs(json_file: Path) -> tuple[list[Path], list[tuple[Path, bool]]]:
    """Candidate PNG folders and image folders of a panoptic JSON, most likely first.

    Image folders come as (folder, by_city): Cityscapes keeps ``leftImg8bit/{split}/<city>/<image>``.

    - ``ROOT/annotations/panoptic_{s}.json``: PNGs ``ROOT/annotations/panoptic_{s}/`` (raw COCO download)
      or ``ROOT/panoptic_{s}/`` (Detectron2); images ``ROOT/{s}/`` or ``ROOT/images/{s}/``.
    - ``ROOT/ade20k_panoptic_{train,val}.json``: PNGs beside it; images ``ROOT/images/{training,validation}/``.
    - ``ROOT/gtFine/cityscapes_panoptic_{s}[_trainId].json``: PNGs beside it; images
      ``ROOT/leftImg8bit/{s}/<city>/``.
    - anything else (the synthetic generator's ``panoptic.json``, an export): PNGs beside it (``FILE/``);
      images in ``images/`` next to it, or next to it.
    """
    parent, stem, beside = json_file.parent, json_file.stem, json_file.with_suffix("")
    if parent.name == "annotations" and stem.startswith("panoptic_"):
        root, split = parent.parent, stem[len("panoptic_"):]
        return [beside, root / stem], [(root / split, False), (root / "images" / split, False)]
    if stem.startswith("ade20k_panoptic_"):
        folder, _ = ade20k_split_names(stem[len("ade20k_panoptic_"):])
        return [beside], [(parent / "images" / folder, False), (parent / "images", False)]
    if parent.name == "gtFine" and stem.startswith("cityscapes_panoptic_"):
        split = stem[len("cityscapes_panoptic_"):].removesuffix("_trainId")
        return [beside], [(parent.parent / "leftImg8bit" / split, True)]
    return [beside], [(parent / "images", False), (parent, False)]


def city_image(folder: Path, name: str) -> Path:
    """A Cityscapes image path: ``folder/<city>/<name>`` where the name starts with ``<city>_``.

    createPanopticImgs names the image ``<stem>_gtFine_leftImg8bit.png`` in its JSON while the file is
    ``<stem>_leftImg8bit.png`` (Detectron2 goes by the image id for that reason): both are accepted.
    """
    name = name.replace("_gtFine_leftImg8bit.png", "_leftImg8bit.png")
    return folder / name.split("_", 1)[0] / name


# --------------------------------------------------------------------------------------------
# COCO instances


def find_coco_instances(root: Path, splits: SplitChoice) -> Found:
    """``ROOT/annotations/instances_{split}.json`` of the first split found."""
    search = Search()
    for split in splits.names:
        json_file = root / "annotations" / f"instances_{split}.json"
        if search.is_file(json_file):
            return Found(split, "COCO instances", {"json": json_file})
    raise search.error(root, "COCO instances annotation JSON")


def coco_instances_image_dirs(json_file: Path) -> list[Path]:
    """Candidate image folders of an instances JSON: ``ROOT/{s}``, ``ROOT/images/{s}`` for
    ``ROOT/annotations/instances_{s}.json``; else ``images/`` next to it, or next to it."""
    parent, stem = json_file.parent, json_file.stem
    if parent.name == "annotations" and stem.startswith("instances_"):
        root, split = parent.parent, stem[len("instances_"):]
        return [root / split, root / "images" / split, parent]
    return [parent, parent / "images"]


def first_dir_with(candidates: Iterable[Path], relative: str | None) -> Path | None:
    """The first candidate folder holding ``relative`` (a file name), else the first existing folder."""
    candidates = list(candidates)
    if relative is not None:
        for d in candidates:
            if (d / relative).is_file():
                return d
    return next((d for d in candidates if d.is_dir()), None)


# --------------------------------------------------------------------------------------------
# Image + label folder pairs: ADE20K, Cityscapes, semantic


def _pair_search(root: Path, splits: SplitChoice, names: Iterable[str], images: str, labels: str,
                 what: str, layout: str) -> Found:
    """The first split of ``names`` whose ``root/images/<s>`` and ``root/labels/<s>`` both exist; with no
    split given, else ``root/images`` + ``root/labels`` themselves when they hold PNGs (split "")."""
    search = Search()
    for split in names:
        img, lab = root / images / split, root / labels / split
        if search.is_dir(img) and search.is_dir(lab):
            return Found(split, layout, {"images": img, "labels": lab})
    if not splits.given:
        img, lab = root / images, root / labels
        if search.is_dir(img) and search.is_dir(lab) and any(lab.glob("*.png")):
            return Found("", f"{layout} without split folders", {"images": img, "labels": lab})
    raise search.error(root, what)


def find_ade20k(root: Path, splits: SplitChoice, labels: str = "annotations") -> Found:
    """ADEChallengeData2016: ``images/{training,validation}`` + ``{labels}/...`` (``annotations`` or
    Detectron2's ``annotations_detectron2``); ROOT may also be the folder holding ``ADEChallengeData2016/``
    (Detectron2's ``datasets/``)."""
    if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    own = splits.own_names(("training", "validation", "train", "val"))
    folders = dict.fromkeys(ade20k_split_names(s)[0] for s in own)
    found = _pair_search(root, splits, folders, "images", labels, f"ADEChallengeData2016 images + {labels}",
                         "ADEChallengeData2016")
    found.paths["root"] = root
    return found


def find_cityscapes(root: Path, splits: SplitChoice) -> Found:
    """Cityscapes: ``leftImg8bit/{split}/<city>/`` + ``gtFine/{split}/<city>/`` (or both without splits)."""
    names = splits.own_names(("train", "val", "test"))
    return _pair_search(root, splits, names, "leftImg8bit", "gtFine", "Cityscapes leftImg8bit + gtFine folders",
                        "Cityscapes")


def find_semantic(root: Path, splits: SplitChoice) -> Found:
    """A semantic folder: ``images/{split}`` + ``annotations/{split}``, or ``images/`` + ``annotations/``."""
    return _pair_search(root, splits, splits.names, "images", "annotations", "images + annotations folders",
                        "semantic folder")


def looks_like_ade_challenge(root: Path, label_dir: Path) -> bool:
    """True for an ADEChallengeData2016 folder (its name, its class file, or ``ADE_*`` annotation names)."""
    for d in (root, *root.parents[:1]):
        if d.name == "ADEChallengeData2016" or (d / "objectInfo150.txt").is_file() \
                or (d / "sceneCategories.txt").is_file():
            return True
    return next(label_dir.glob("ADE_*.png"), None) is not None
