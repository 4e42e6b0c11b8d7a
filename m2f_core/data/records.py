"""Records shared by every dataset reader and writer, and the helpers they all use.

One ``Sample`` per image says where the image is and carries its ground truth in the result types of
``m2f_core.structures`` (so predictions and ground truth compare directly): a ``PanopticResult``
whose segments are ``GTSegment`` (a ``Segment`` with an ``iscrowd`` flag), a list of
``InstanceAnnotation`` (possibly overlapping, decoded lazily with pycocotools) and a semantic map
(255 = ignore). Class ids inside records are always CONTIGUOUS: the index into the reader's
``categories`` list, i.e. the model's class index; dataset ids (COCO's 1..200, Cityscapes label
ids) appear only in files and in ``categories[i]["id"]``.

Readers are ``SegmentationDataset`` sequences: ``len(ds)``, ``ds[i] -> Sample``. They read the
annotation files of an item when it is asked for and never load images (``load_image`` does).

``open_dataset("FORMAT:PATH", split=...)`` opens any of the supported formats; see its docstring.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import default_color
from ..structures import PanopticResult, Segment
from .errors import DatasetError
from .images import DEFAULT_MAX_PIXELS

IGNORE_LABEL = 255
_CLASSES_DIR = Path(__file__).parent / "classes"

# --------------------------------------------------------------------------------------------
# Records


@dataclass
class GTSegment(Segment):
    """A ground-truth panoptic segment: a ``Segment`` (score 1, source "gt") plus COCO's ``iscrowd``."""

    score: float = 1.0
    source: str = "gt"
    iscrowd: bool = False

    def to_dict(self) -> dict:
        return {**super().to_dict(), "iscrowd": self.iscrowd}


@dataclass
class InstanceAnnotation:
    """One (possibly overlapping) instance; ``segmentation`` is kept as stored and decoded on demand.

    ``segmentation`` is one of: COCO polygons (list of flat [x0, y0, x1, y1, ...] lists), a COCO RLE
    dict (compressed ``counts`` str/bytes or uncompressed ``counts`` list) or an (H, W) bool mask.
    ``bbox`` is COCO (x, y, w, h); None = computed from the mask.
    """

    category_id: int
    segmentation: Any
    height: int
    width: int
    iscrowd: bool = False
    bbox: tuple[float, float, float, float] | None = None
    id: int | None = None

    def rle(self) -> dict:
        """Compressed RLE (pycocotools' own form: ``counts`` is bytes)."""
        from pycocotools import mask as mask_util

        seg, h, w = self.segmentation, self.height, self.width
        if isinstance(seg, np.ndarray):
            return mask_util.encode(np.asfortranarray(seg.astype(np.uint8)))
        if isinstance(seg, list):  # polygons, merged into one mask
            return mask_util.merge(mask_util.frPyObjects(seg, h, w))
        if isinstance(seg["counts"], list):  # uncompressed RLE
            return mask_util.frPyObjects(seg, h, w)
        counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
        return {"size": [int(seg["size"][0]), int(seg["size"][1])], "counts": counts}

    def mask(self) -> np.ndarray:
        """(H, W) bool mask."""
        if isinstance(self.segmentation, np.ndarray):
            return self.segmentation.astype(bool)
        from pycocotools import mask as mask_util

        return mask_util.decode(self.rle()).astype(bool)

    @property
    def area(self) -> int:
        if isinstance(self.segmentation, np.ndarray):
            return int(np.count_nonzero(self.segmentation))
        from pycocotools import mask as mask_util

        return int(mask_util.area(self.rle()))

    def box(self) -> tuple[float, float, float, float]:
        """COCO (x, y, w, h): the stored one, else the mask's."""
        if self.bbox is not None:
            return tuple(float(v) for v in self.bbox)  # type: ignore[return-value]
        from pycocotools import mask as mask_util

        return tuple(float(v) for v in mask_util.toBbox(self.rle()))  # type: ignore[return-value]


@dataclass
class Sample:
    """One image of a dataset and whatever ground truth its format has (None = not in this format).

    ``file_name`` is the image path (not opened by the reader); ``annotation_file`` the main label file.
    """

    image_id: int | str
    file_name: Path
    height: int
    width: int
    panoptic: PanopticResult | None = None
    instances: list[InstanceAnnotation] | None = None
    semantic: np.ndarray | None = None
    annotation_file: Path | None = None

    @property
    def crowd_ids(self) -> set[int]:
        """Ids of the crowd segments of ``panoptic`` (excluded from PQ and, by default, from semantics)."""
        if self.panoptic is None:
            return set()
        return {s.id for s in self.panoptic.segments if getattr(s, "iscrowd", False)}

    def semantic_map(self, crowd_ignore: bool = True) -> np.ndarray:
        """(H, W) class map: the stored one, else derived from the panoptic or instance annotation."""
        if self.semantic is not None:
            return self.semantic
        if self.panoptic is not None:
            return panoptic_to_semantic(self.panoptic, crowd_ignore=crowd_ignore)
        if self.instances is not None:
            return instances_to_semantic(self.instances, self.height, self.width, crowd_ignore=crowd_ignore)
        raise DatasetError(self.annotation_file or self.file_name, "no annotation to derive a semantic map from")

    def instance_annotations(self, things_only: bool = True) -> list[InstanceAnnotation]:
        """The stored instances, else the (thing) segments of the panoptic annotation, crowd flagged."""
        if self.instances is not None:
            return self.instances
        if self.panoptic is not None:
            return panoptic_to_instances(self.panoptic, things_only=things_only)
        return []


def _label_dtype(max_class: int) -> type:
    return np.uint8 if max_class < IGNORE_LABEL else np.int32


def panoptic_to_semantic(panoptic: PanopticResult, crowd_ignore: bool = True) -> np.ndarray:
    """(H, W) class map of a panoptic annotation; void (and crowd, if ``crowd_ignore``) -> 255.

    uint8 while every class id is below 255, else int32. Note: Mask2Former's
    ``prepare_coco_semantic_annos_from_panoptic_annos.py`` labels crowd pixels with their class
    (``crowd_ignore=False`` reproduces its ``panoptic_semseg_*`` maps).
    """
    max_cat = max((s.category_id for s in panoptic.segments), default=0)
    lut = np.full(int(panoptic.segment_map.max(initial=0)) + 1, IGNORE_LABEL, dtype=np.int64)
    for s in panoptic.segments:
        if s.id < lut.size and not (crowd_ignore and getattr(s, "iscrowd", False)):
            lut[s.id] = s.category_id
    return lut[panoptic.segment_map].astype(_label_dtype(max_cat))


def instances_to_semantic(instances: list[InstanceAnnotation], height: int, width: int,
                          crowd_ignore: bool = True) -> np.ndarray:
    """(H, W) class map painted from instances in order (later ones on top); background/crowd -> 255."""
    max_cat = max((a.category_id for a in instances), default=0)
    out = np.full((height, width), IGNORE_LABEL, dtype=_label_dtype(max_cat))
    for a in instances:
        if not a.iscrowd:
            out[a.mask()] = a.category_id
    if crowd_ignore:
        for a in instances:
            if a.iscrowd:
                out[a.mask()] = IGNORE_LABEL
    return out


def panoptic_to_instances(panoptic: PanopticResult, things_only: bool = True) -> list[InstanceAnnotation]:
    """One ``InstanceAnnotation`` (bool mask) per segment of the panoptic map (things only by default)."""
    out = []
    for s in panoptic.segments:
        if things_only and not s.isthing:
            continue
        out.append(InstanceAnnotation(category_id=s.category_id, segmentation=panoptic.segment_map == s.id,
                                      height=panoptic.height, width=panoptic.width,
                                      iscrowd=bool(getattr(s, "iscrowd", False)), bbox=s.bbox, id=s.id))
    return out


# --------------------------------------------------------------------------------------------
# Categories


def normalize_categories(raw: Any, source: str | Path, default_isthing: bool = True) -> list[dict]:
    """Checked copy of a category list: each entry gets int ``id``, str ``name``, bool ``isthing``, ``color``.

    Other keys (``supercategory``, ``train_id``) are kept. The order is kept: it is the contiguous order.
    """
    if not isinstance(raw, list) or not raw:
        raise DatasetError(source, "'categories' must be a non-empty list")
    out, seen = [], set()
    for i, c in enumerate(raw):
        where = f"categories[{i}]"
        if not isinstance(c, dict):
            raise DatasetError(source, f"{where} must be an object, got {type(c).__name__}")
        cid = require(c, "id", "int", where, source)
        if cid in seen:
            raise DatasetError(source, f"duplicate category id {cid}")
        seen.add(cid)
        name = c.get("name", str(cid))
        if not isinstance(name, str):
            raise DatasetError(source, f"{where}.name must be a string, got {type(name).__name__}")
        isthing = c.get("isthing", default_isthing)
        if not isinstance(isthing, (bool, int)) or int(isthing) not in (0, 1):
            raise DatasetError(source, f"{where}.isthing must be 0 or 1, got {isthing!r}")
        color = c.get("color")
        if color is None:
            color = default_color(i)
        elif (not isinstance(color, (list, tuple)) or len(color) != 3
              or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color)):
            raise DatasetError(source, f"{where}.color must be 3 integers in 0..255, got {color!r}")
        out.append({**c, "id": cid, "name": name, "isthing": bool(isthing), "color": [int(v) for v in color]})
    return out


def shipped_categories(name: str) -> list[dict]:
    """The category list shipped in ``m2f_core/data/classes/<name>.json`` (contiguous order)."""
    path = _CLASSES_DIR / f"{name}.json"
    if not path.is_file():
        have = ", ".join(sorted(p.stem for p in _CLASSES_DIR.glob("*.json")))
        raise DatasetError(path, f"no shipped class list {name!r} (have: {have})")
    data = read_json(path)
    return normalize_categories(data.get("categories") if isinstance(data, dict) else None, path)


def categories_from_config(config: Any) -> list[dict]:
    """The category list of a ``Mask2FormerConfig`` (class index = contiguous id)."""
    return [{"id": int(config.dataset_ids[i]), "name": config.class_names[i], "isthing": bool(config.is_thing[i]),
             "color": [int(v) for v in config.colors[i]]} for i in range(len(config.class_names))]


def resolve_categories(categories: list[dict] | str | None, source: str | Path) -> list[dict] | None:
    """``categories`` as given: a list (checked), a shipped class-list name, or None."""
    if categories is None:
        return None
    if isinstance(categories, str):
        return shipped_categories(categories)
    return normalize_categories(list(categories), source)


# --------------------------------------------------------------------------------------------
# Readers


class SegmentationDataset(Sequence):
    """Base of the readers: a category list (contiguous order) and lazily loaded ``Sample`` items."""

    def __init__(self, categories: list[dict], name: str) -> None:
        self.categories = categories
        self.name = name
        self.dataset_id_to_contiguous: dict[int, int] = {c["id"]: i for i, c in enumerate(categories)}

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def contiguous_to_dataset_id(self) -> list[int]:
        return [c["id"] for c in self.categories]

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> Sample:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> Sample: ...
    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._load(i) for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} items")
        return self._load(index % n)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} items, {len(self.categories)} categories)"


# --------------------------------------------------------------------------------------------
# Checked JSON / PNG access and atomic writes

_KINDS: dict[str, tuple[type, ...]] = {"int": (int,), "number": (int, float), "str": (str,), "list": (list,),
                                       "dict": (dict,)}


def require(obj: dict, key: str, kind: str, where: str, source: str | Path, default: Any = ...) -> Any:
    """``obj[key]`` checked to be of ``kind`` (int / number / str / list / dict; bools are not numbers)."""
    if key not in obj:
        if default is not ...:
            return default
        raise DatasetError(source, f"{where} has no {key!r}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, _KINDS[kind]):
        raise DatasetError(source, f"{where}.{key} must be {'an' if kind == 'int' else 'a'} {kind}, "
                                   f"got {type(value).__name__} {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_json(path: str | Path) -> Any:
    """Parsed JSON of a file; a ``DatasetError`` for a missing file or text that is not JSON."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(path, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise DatasetError(path, "not valid JSON (not UTF-8 text)") from None


def read_png(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Pixels of an annotation image as stored (no palette or colour conversion).

    Refuses images above ``max_pixels`` (default ``M2F_MAX_PIXELS``, as ``load_image``) from the
    header, before decoding, so a decompression bomb costs nothing.
    """
    path = Path(path)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if not path.is_file():
        raise DatasetError(path, "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            with Image.open(path) as img:
                if img.width * img.height > limit:
                    raise DatasetError(path, f"{img.width}x{img.height} is more than the {limit:,} pixel limit")
                return np.array(img)
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(path, f"refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise DatasetError(path, "not an image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(path, f"unreadable image ({str(e).strip() or type(e).__name__})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image as ``load_image`` will return it (EXIF rotation applied), from its header."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # only the header is read
            with Image.open(path) as img:
                w, h = img.size
                orientation = img.getexif().get(0x0112, 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(path, f"refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise DatasetError(path, "not an image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(path, f"unreadable image ({str(e).strip() or type(e).__name__})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, 3) array, or a uint16 (H, W) array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


# Hidden temporaries of the atomic writers: ``.<target>.tmp-<pid>-<random>`` (being written) and
# ``.<target>.old-<pid>-<random>`` (a previous version moved aside during a swap). The pid tells the
# leftovers of a killed writer from the work of a running one.
_TEMP_RE = re.compile(r"\.(?P<target>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[a-z0-9_]+")


def temp_prefix(target_name: str, kind: str = "tmp") -> str:
    """Name prefix of this process's temporaries for ``target_name`` (``kind``: tmp or old)."""
    return f".{target_name}.{kind}-{os.getpid()}-"


def make_temp_dir(folder: str | Path, target_name: str, kind: str = "tmp") -> Path:
    """A new hidden folder in ``folder`` named after ``target_name`` (see ``temp_prefix``)."""
    return Path(tempfile.mkdtemp(dir=folder, prefix=temp_prefix(target_name, kind)))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill would terminate it there: never call a Windows process dead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Clean up after writers that were killed mid-write in ``folder``; returns what was handled.

    Only entries of the writers' own pattern (``.<target>.tmp-<pid>-*``, ``.<target>.old-*``)
    whose process no longer runs are touched. A ``.old`` entry is a previous good version moved
    aside during a swap: it is put back when ``<target>`` is missing, deleted otherwise.
    """
    folder = Path(folder)
    handled: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return handled
    for entry in entries:
        m = _TEMP_RE.fullmatch(entry.name)
        if m is None or _process_alive(int(m["pid"])):
            continue
        target = folder / m["target"]
        try:
            if m["kind"] == "old" and not os.path.lexists(target):
                os.rename(entry, target)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue  # another process cleaned it first, or it is not ours to remove
        handled.append(entry)
    return handled


def replace_dir(tmp: str | Path, final: str | Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``. An existing ``final`` is first moved aside under
    the ``old`` temporary name and put back if the second rename fails; a process killed between the
    two renames leaves it for ``remove_stale_temporaries`` to restore. The rename fails, never
    merges, if another process created ``final`` meanwhile."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.rename(tmp, final)
        return
    old = make_temp_dir(final.parent, final.name, kind="old")
    os.rmdir(old)
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file in the same folder, which is
    fsynced and renamed over ``path`` (mode kept, 0644 for a new file), then the folder is fsynced.

    A reader (or a crash) never sees a half-written file: it sees the old file or the new one.
    The one mechanism behind every write of data, exports and checkpoints. A process killed here
    leaves a hidden ``.<name>.tmp-<pid>-*`` file, which ``remove_stale_temporaries`` cleans.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name))
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """``atomic_write`` of bytes."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """``atomic_write_bytes`` of compact JSON (numpy scalars are converted)."""
    text = json.dumps(data, separators=(",", ":"), default=_json_default)
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, bytes):
        return o.decode("ascii")
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------------------------
# FORMAT:PATH specs

FORMATS = ("coco_panoptic", "coco_instances", "ade20k", "cityscapes", "semantic", "corrections")


def parse_dataset_spec(spec: str) -> tuple[str, Path]:
    """Split ``"FORMAT:PATH"`` into (format, path); FORMAT is one of ``FORMATS``."""
    fmt, sep, path = str(spec).partition(":")
    if not sep or not path:
        raise DatasetError(spec, f"expected FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}")
    if fmt not in FORMATS:
        raise DatasetError(spec, f"unknown dataset format {fmt!r} (known: {', '.join(FORMATS)})")
    return fmt, Path(path).expanduser()


def open_dataset(spec: str, split: str | None = None, **kwargs: Any) -> SegmentationDataset:
    """Open a dataset from ``"FORMAT:PATH"``; ``kwargs`` go to the reader.

    Conventions (Detectron2's ``datasets/`` layout when PATH is a folder):

    - ``coco_panoptic:FILE.json``: PNGs in ``FILE/`` next to it (or ``../FILE/`` when the JSON is in
      ``annotations/``). ``coco_panoptic:ROOT``: ``ROOT/annotations/panoptic_{split}.json``,
      PNGs ``ROOT/panoptic_{split}/``, images ``ROOT/{split}/``; split defaults to ``val2017``.
    - ``coco_instances:FILE.json`` (images relative to the JSON's folder, or ``ROOT/{split}/`` when
      the JSON is ``ROOT/annotations/instances_{split}.json``). ``coco_instances:ROOT``:
      ``ROOT/annotations/instances_{split}.json``; split defaults to ``val2017``.
    - ``ade20k:ROOT`` (ADEChallengeData2016): ``ROOT/images/{split}``, ``ROOT/annotations/{split}``;
      split defaults to ``validation``; ``split=""`` reads ``ROOT/images`` and ``ROOT/annotations``.
    - ``cityscapes:ROOT``: ``ROOT/leftImg8bit/{split}/<city>/`` and ``ROOT/gtFine/{split}/<city>/``;
      split defaults to ``val``; ``split=""`` searches all of ``leftImg8bit/``.
    - ``semantic:ROOT``: ``ROOT/images[/{split}]`` and ``ROOT/annotations[/{split}]`` with PNG class
      maps (255 = ignore); needs ``categories=`` (a list or a shipped name such as ``"ade20k"``).
    - ``corrections:ROOT`` (``ROOT/{split}`` if split): an exported corrections folder
      (``m2f_core.data.corrections``).
    """
    fmt, path = parse_dataset_spec(spec)
    if fmt == "coco_panoptic":
        from .coco import CocoPanoptic

        if path.is_dir():
            split = split or "val2017"
            kwargs.setdefault("image_dir", path / split)
            kwargs.setdefault("png_dir", path / f"panoptic_{split}")
            path = path / "annotations" / f"panoptic_{split}.json"
        return CocoPanoptic(path, **kwargs)
    if fmt == "coco_instances":
        from .coco import CocoInstances

        if path.is_dir():
            split = split or "val2017"
            kwargs.setdefault("image_dir", path / split)
            path = path / "annotations" / f"instances_{split}.json"
        return CocoInstances(path, **kwargs)
    if fmt == "ade20k":
        from .ade20k import ADE20KSemantic

        return ADE20KSemantic(path, split="validation" if split is None else split, **kwargs)
    if fmt == "cityscapes":
        from .cityscapes import CityscapesDataset

        return CityscapesDataset(path, split="val" if split is None else split, **kwargs)
    if fmt == "corrections":
        from .corrections import CorrectionsDataset

        return CorrectionsDataset(path / split if split else path, **kwargs)
    from .semantic import SemanticFolder

    if "categories" not in kwargs:
        raise DatasetError(spec, "the semantic format needs categories= (a list or a shipped name)")
    sub = split or ""
    return SemanticFolder(path / "images" / sub, path / "annotations" / sub, **kwargs)
