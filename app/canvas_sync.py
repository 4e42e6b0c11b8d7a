"""What the browser's canvas is sent: the photo once per image, the segment map as patches, the segment table.

The canvas (``app/assets/canvas.js``) draws everything itself (overlay, outlines, opacity, labels,
hover, selection, zoom), so the server sends data, never pictures of the annotation:

- ``image``: the photo as a JPEG data URL, only when the image changes (downscaled to
  ``display_side`` for display; all coordinates stay image pixels);
- ``map``: the segment map at full resolution as *indices* (a per-image number that never changes
  for a segment id, so a patch is valid against the previous map): the whole map when the image
  changes, afterwards only the box that changed since the last payload (``base`` names the version
  the patch applies to; a browser that holds another version asks for a full map, ``resync``);
- ``segments``: the table (index, id, class, thing, score, area, box, colour);
- ``uncertainty`` / ``ground_truth``: sent once per image when the view asks for them;
- ``candidates`` (Recover) and ``wand`` (magic wand preview): masks as crops with their box.

Arrays travel as base64 of zlib-compressed little-endian bytes (``encode_array``): exact (no colour
management on the way, unlike a PNG drawn on a canvas) and fast to decompress in the browser
(``DecompressionStream('deflate')``). ``CanvasSync`` (one per browser session) remembers what the
browser holds; everything else here is a pure function.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from m2f_core.structures import Candidate, Segment
from m2f_core.visualize import segment_color

if TYPE_CHECKING:
    from .wand import WandClick

__all__ = ["CanvasSync", "candidate_payload", "class_color", "class_payload", "encode_array", "encode_photo",
           "ground_truth_payload", "index_map_payload", "lookup_indices", "mask_crop_payload", "segment_rows_payload",
           "wand_payload"]

DISPLAY_SIDE = 2560  # the photo's longest side as sent for display (the map stays full size)
JPEG_QUALITY = 90


def encode_array(a: np.ndarray) -> str:
    """base64 of the zlib-compressed little-endian bytes of ``a`` (C order)."""
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.byteswap().view(a.dtype.newbyteorder("<"))
    return base64.b64encode(zlib.compress(a.tobytes(), 1)).decode("ascii")


def encode_photo(image: np.ndarray, display_side: int = DISPLAY_SIDE) -> dict[str, Any]:
    """The (H, W, 3) RGB photo as a JPEG data URL, its longest side at most ``display_side``."""
    h, w = image.shape[:2]
    scale = min(1.0, display_side / max(h, w))
    shown = image if scale == 1.0 else cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                  interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(shown, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding of the photo failed")
    return {"src": "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii"),
            "shown": [shown.shape[1], shown.shape[0]]}


def class_color(category_id: int, class_colors: Sequence[Sequence[int]]) -> Sequence[int]:
    """A class's colour (red for a class the list does not have)."""
    return class_colors[category_id] if 0 <= category_id < len(class_colors) else (255, 0, 0)


def class_payload(names: Sequence[str], colors: Sequence[Sequence[int]], is_thing: Sequence[bool]) -> dict:
    return {"names": list(names), "colors": [[int(c) for c in col[:3]] for col in colors],
            "thing": [bool(t) for t in is_thing]}


def segment_rows_payload(segments: Sequence[Segment], index_of: dict[int, int],
                         class_colors: Sequence[Sequence[int]]) -> list[dict]:
    """One dict per segment: index in the map (``i``), id, class, thing, score, area, box [x, y, w, h], colour."""
    return [{"i": index_of[s.id], "id": int(s.id), "c": int(s.category_id), "t": bool(s.isthing),
             "s": round(float(s.score), 4), "a": int(s.area), "b": [round(float(v), 1) for v in s.bbox],
             "src": s.source, "col": list(segment_color(class_color(s.category_id, class_colors), s.id, s.isthing))}
            for s in segments]


def index_map_payload(indices: np.ndarray, box: tuple[int, int, int, int] | None = None, **extra: Any) -> dict:
    """An index map (or the crop of one at ``box`` = y0, x0, y1, x1) as a payload, in the smallest unsigned
    type that holds it (fewer bytes to compress: most images have fewer than 256 segments)."""
    h, w = indices.shape
    y0, x0 = (0, 0) if box is None else box[:2]
    top = int(indices.max(initial=0))
    if indices.dtype == np.uint8 or top < 256:
        data, dtype = indices.astype(np.uint8, copy=False), "u8"
    elif top < 65536:
        data, dtype = indices.astype(np.uint16, copy=False), "u16"
    else:
        data, dtype = indices.astype(np.uint32, copy=False), "u32"
    return {"box": [int(x0), int(y0), int(w), int(h)], "dtype": dtype, "data": encode_array(data), **extra}


def mask_crop_payload(mask: np.ndarray) -> dict | None:
    """A full-size bool mask as its bounding box and the uint8 crop (None when empty)."""
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return None
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    return index_map_payload(mask[y0:y1, x0:x1].astype(np.uint8), (y0, x0, y1, x1), area=int(mask.sum()))


def lookup_indices(ids: np.ndarray, index_of: dict[int, int]) -> np.ndarray:
    """(H, W) segment ids -> the indices ``index_of`` gives them (ids it lacks, and 0, -> 0 = void): through a
    dense table when the ids are small (a model's), else a sorted search (COCO ids encode RGB, up to 2**24)."""
    keys = np.array(sorted(index_of), dtype=np.int64)
    values = np.array([index_of[k] for k in keys.tolist()], dtype=np.int64)
    if keys.size and int(ids.max(initial=0)) <= int(keys[-1]) <= 1 << 22:
        lut = np.zeros(int(keys[-1]) + 1, dtype=np.uint32)
        lut[keys] = values
        return lut[ids]
    out = np.zeros(ids.shape, dtype=np.uint32)
    if keys.size:
        pos = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
        found = keys[pos] == ids
        out[found] = values[pos[found]]
    return out


def ground_truth_payload(sample: Any, categories: Sequence[dict], class_names: Sequence[str],
                         class_colors: Sequence[Sequence[int]], shape: tuple[int, int]) -> dict:
    """A dataset sample's ground truth for the canvas: its segment map as indices and its segments, each
    with the model class of the same name (-1: none), or ``missing`` saying why there is none."""
    model_class = {name: i for i, name in enumerate(class_names)}
    if sample.panoptic is not None:
        seg_map = np.asarray(sample.panoptic.segment_map)
        rows = [(int(g.id), int(g.category_id)) for g in sample.panoptic.segments]
    elif sample.semantic is not None:  # one segment per class; the dataset's ignore label stays void
        classes = np.asarray(sample.semantic).astype(np.int64)
        valid = (classes >= 0) & (classes < len(categories))
        seg_map = np.where(valid, classes + 1, 0)
        rows = [(int(c) + 1, int(c)) for c in np.unique(classes[valid])]
    else:
        return {"missing": "the dataset has no annotation for this image"}
    if seg_map.shape != shape:
        return {"missing": f"its ground truth is {seg_map.shape[1]}x{seg_map.shape[0]}, the image "
                           f"{shape[1]}x{shape[0]}"}
    index_of = {sid: i + 1 for i, (sid, _) in enumerate(rows)}
    segments = []
    for sid, cat in rows:
        info = categories[cat] if 0 <= cat < len(categories) else {"name": str(cat)}
        name = str(info.get("name", cat))
        base = info.get("color") or class_color(model_class.get(name, -1), class_colors)
        thing = bool(info.get("isthing", True))
        segments.append({"i": index_of[sid], "id": sid, "c": model_class.get(name, -1), "name": name,
                         "model_class": model_class.get(name, -1), "t": thing,
                         "col": list(segment_color(base, sid, thing))})
    return {"map": index_map_payload(lookup_indices(seg_map, index_of)), "segments": segments}


def candidate_payload(index: int, candidate: Candidate) -> dict:
    """A Recover candidate: its class, score and mask (as a crop) for the canvas to preview."""
    return {"index": index, "c": int(candidate.category_id), "s": round(float(candidate.score), 4),
            **_crop_fields(np.asarray(candidate.mask, dtype=bool))}


def wand_payload(click: WandClick, threshold: float) -> dict:
    """The magic wand's region at ``threshold`` for the canvas to preview (Enter makes it a segment)."""
    (y0, x0, y1, x1), mask = click.crop(threshold)
    return {"x": int(click.x), "y": int(click.y), "threshold": round(float(threshold), 3),
            "mask_area": int(mask.sum()), "mask": index_map_payload(mask.astype(np.uint8), (y0, x0, y1, x1))}


def _crop_fields(mask: np.ndarray) -> dict:
    crop = mask_crop_payload(mask)
    return {"mask_area": 0 if crop is None else crop.pop("area"),
            "mask": crop or index_map_payload(np.zeros((1, 1), np.uint8))}


@dataclass
class CanvasSync:
    """What one browser's canvas holds: the image, the last segment map it was sent, its version.

    Segment ids become small stable indices (``index_of``): a segment keeps its index for as long as
    the image is shown, new segments get new ones, so a patch never renumbers the rest of the map.
    """

    image_key: str | None = None
    version: int = 0
    sent: np.ndarray | None = None  # (H, W) int32: the segment ids of the map the browser holds
    index_of: dict[int, int] = field(default_factory=dict)
    extras: set[str] = field(default_factory=set)  # "uncertainty", "ground_truth" sent for this image

    def reset(self) -> None:
        """Forget what the browser holds (a new image, or the browser asked for everything again)."""
        self.image_key, self.version, self.sent, self.index_of, self.extras = None, 0, None, {}, set()

    def register(self, segment_ids: Sequence[int]) -> None:
        """Give the segments of the table an index (new ids get the next free one; old ones keep theirs)."""
        for sid in segment_ids:
            if int(sid) != 0 and int(sid) not in self.index_of:
                self.index_of[int(sid)] = len(self.index_of) + 1

    def _indices(self, ids: np.ndarray) -> np.ndarray:
        """Segment ids -> stable indices (0 and ids not registered -> 0 = void)."""
        return lookup_indices(ids, self.index_of)

    def map_update(self, key: str, ids: np.ndarray, segment_ids: Sequence[int]) -> tuple[dict | None, bool]:
        """The map payload for the segment map ``ids`` (whose table holds ``segment_ids``) of image ``key``:
        everything for a new image, else the box that changed (None when nothing did).
        Returns (payload, new_image)."""
        new_image = key != self.image_key or self.sent is None or self.sent.shape != ids.shape
        if new_image:
            self.reset()
            self.image_key = key
            self.sent = np.array(ids, dtype=np.int32)
            self.version = 1
            self.register(segment_ids)
            return index_map_payload(self._indices(self.sent), version=1, base=None), True
        self.register(segment_ids)
        changed = self.sent != ids
        rows = np.flatnonzero(changed.any(axis=1))
        if rows.size == 0:
            return None, False
        cols = np.flatnonzero(changed.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        self.sent[y0:y1, x0:x1] = ids[y0:y1, x0:x1]
        base = self.version
        self.version += 1
        patch = self._indices(self.sent[y0:y1, x0:x1])
        return index_map_payload(patch, (y0, x0, y1, x1), version=self.version, base=base), False
