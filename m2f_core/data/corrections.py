"""The "corrections" folder: what the app exports and the trainer reads back (``corrections:ROOT``).

Layout (every annotation a projection of the same edited panoptic annotation)::

    ROOT/images/<file>            the images
    ROOT/panoptic.json            COCO panoptic JSON (categories with isthing, in contiguous order)
    ROOT/panoptic/<stem>.png      its PNGs (id = R + 256 G + 256^2 B, 0 = void)
    ROOT/instances.json           COCO instances, compressed RLE (things; crowd flagged)
    ROOT/semantic/<stem>.png      uint8 contiguous class ids, 255 = ignore

``images/`` and at least one annotation (panoptic.json + panoptic/, instances.json or semantic/)
are required; the others are optional, but what is there must cover the same images. The order of
``categories`` in the JSON is the contiguous class order (the writer keeps the caller's order),
so semantic PNG values and the JSON's classes agree even when dataset ids are not sorted.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..atomic import atomic_write_bytes
from .categories import normalize_categories, resolve_categories
from .coco_instances import CocoInstances, write_coco_instances
from .coco_panoptic import CocoPanoptic, write_coco_panoptic
from .errors import DatasetError
from .fileio import read_json
from .records import Sample, SegmentationDataset
from .semantic import IMAGE_EXTENSIONS, SemanticFolder, read_semantic_png, write_semantic_png

LAYOUT = "images/ + panoptic.json with panoptic/, instances.json or semantic/"


def _file_categories(json_file: Path, default_isthing: bool) -> list[dict]:
    """The JSON's categories in file order (the contiguous order of the exporter)."""
    data = read_json(json_file)
    if not isinstance(data, dict) or "categories" not in data:
        raise DatasetError(json_file, "no 'categories' in the file; pass categories=")
    return normalize_categories(data["categories"], json_file, default_isthing=default_isthing)


class CorrectionsDataset(SegmentationDataset):
    """Reader of a corrections folder; each ``Sample`` has every annotation the folder holds.

    Items follow panoptic.json (else instances.json, else the semantic PNGs). ``categories``
    overrides the JSON's (a list or a shipped name); a semantic-only folder needs it.
    """

    def __init__(self, root: str | Path, categories: list[dict] | str | None = None) -> None:
        self.root = root = Path(root)
        if not root.is_dir():
            raise DatasetError(root, f"no such corrections folder (expected {LAYOUT})")
        self.image_dir = root / "images"
        pan_json, pan_dir = root / "panoptic.json", root / "panoptic"
        ins_json, sem_dir = root / "instances.json", root / "semantic"
        if not self.image_dir.is_dir():
            raise DatasetError(self.image_dir, "no such folder (a corrections folder keeps its images in images/)")
        if pan_json.is_file() and not pan_dir.is_dir():
            raise DatasetError(pan_dir, "no such folder (the PNGs of panoptic.json)")
        if pan_dir.is_dir() and not pan_json.is_file():
            raise DatasetError(pan_json, "no such file (panoptic/ holds PNGs but their JSON is missing)")
        has_pan, has_ins, has_sem = pan_json.is_file(), ins_json.is_file(), sem_dir.is_dir()
        if not (has_pan or has_ins or has_sem):
            raise DatasetError(root, f"no annotations (expected {LAYOUT})")

        cats = resolve_categories(categories, root)
        if cats is None:
            if has_pan:
                cats = _file_categories(pan_json, default_isthing=False)
            elif has_ins:
                cats = _file_categories(ins_json, default_isthing=True)
            else:
                raise DatasetError(root, "a semantic-only corrections folder needs categories= (a list or a "
                                         "shipped name)")
        super().__init__(cats, root.name)

        self.panoptic = CocoPanoptic(pan_json, png_dir=pan_dir, image_dir=self.image_dir,
                                     categories=cats) if has_pan else None
        self.instances = CocoInstances(ins_json, image_dir=self.image_dir, categories=cats) if has_ins else None
        self.semantic_dir = sem_dir if has_sem else None
        self._semantic_only = SemanticFolder(self.image_dir, sem_dir, cats) if has_sem and not (has_pan or has_ins) \
            else None

        self._instance_index: dict[int | str, int] = {}
        if self.instances is not None:
            self._instance_index = {iid: i for i, iid in enumerate(self.instances.image_ids)}
        if self.panoptic is not None and self.instances is not None:
            pan_ids = set(self.panoptic.image_ids)
            missing = pan_ids - set(self._instance_index)
            if missing:
                raise DatasetError(ins_json, f"images {sorted(map(str, missing))[:5]} of panoptic.json are missing")
        if self.semantic_dir is not None and self._semantic_only is None:
            have = {p.stem for p in self.semantic_dir.glob("*.png")}
            stems = {Path(self._primary_name(i)).stem for i in range(len(self))}
            missing = stems - have
            if missing:
                raise DatasetError(self.semantic_dir, f"no semantic PNG for {', '.join(sorted(missing)[:5])}")

    def _primary_name(self, index: int) -> str:
        """File name of item ``index``'s image, from the JSON (no annotation file read)."""
        if self.panoptic is not None:
            image_id, png_name = self.panoptic.image_ids[index], self.panoptic.png_name(index)
            if self.panoptic.images is not None:
                return self.panoptic.images[image_id][0]
            return Path(png_name).with_suffix(".jpg").name
        assert self.instances is not None
        return self.instances.images[self.instances.image_ids[index]][0]

    def __len__(self) -> int:
        if self.panoptic is not None:
            return len(self.panoptic)
        if self.instances is not None:
            return len(self.instances)
        assert self._semantic_only is not None
        return len(self._semantic_only)

    def _load(self, index: int) -> Sample:
        if self._semantic_only is not None:
            return self._semantic_only[index]
        if self.panoptic is not None:
            sample = self.panoptic[index]
            if self.instances is not None:
                sample.instances = self.instances[self._instance_index[sample.image_id]].instances
        else:
            assert self.instances is not None
            sample = self.instances[index]
        if self.semantic_dir is not None:
            png = self.semantic_dir / f"{Path(sample.file_name).stem}.png"
            sem = read_semantic_png(png, num_classes=len(self.categories))
            if sem.shape != (sample.height, sample.width):
                raise DatasetError(png, f"semantic map is {sem.shape[1]}x{sem.shape[0]}, the image "
                                        f"{sample.width}x{sample.height}")
            sample.semantic = sem
        return sample


def write_corrections(root: str | Path, samples: Iterable[Sample], categories: list[dict],
                      copy_images: bool = True, semantic: bool = True, instances: bool = True) -> Path:
    """Write samples as a corrections folder (every file atomic); returns ``root``.

    The panoptic part needs every sample to have ``panoptic``; instances are the samples'
    ``instance_annotations()`` (panoptic things when there is no instance list); the semantic maps
    are ``semantic_map()`` (crowd and void = 255; needs fewer than 256 classes). Images are copied
    into ``images/`` unless they are there already.
    """
    root = Path(root)
    samples = list(samples)
    names: set[str] = set()
    for s in samples:
        name = Path(s.file_name).name
        if name in names:
            raise DatasetError(root, f"two samples have an image named {name}")
        names.add(name)
        if Path(s.file_name).suffix.lower() not in IMAGE_EXTENSIONS:
            raise DatasetError(s.file_name, "not an image file name")
    image_dir = root / "images"
    if copy_images:
        for s in samples:
            src, dst = Path(s.file_name), image_dir / Path(s.file_name).name
            if src.resolve() != dst.resolve():
                if not src.is_file():
                    raise DatasetError(src, "no such file (the image to copy)")
                atomic_write_bytes(dst, src.read_bytes())
    if all(s.panoptic is not None for s in samples):
        write_coco_panoptic(root / "panoptic.json", samples, categories, png_dir=root / "panoptic")
    if instances:
        write_coco_instances(root / "instances.json", samples, categories)
    if semantic:
        if len(categories) > 255:
            raise DatasetError(root, f"{len(categories)} classes do not fit a uint8 semantic PNG (pass semantic=False)")
        for s in samples:
            write_semantic_png(root / "semantic" / f"{Path(s.file_name).stem}.png", s.semantic_map(),
                               num_classes=len(categories))
    return root
