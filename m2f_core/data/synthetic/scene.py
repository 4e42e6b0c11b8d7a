"""One synthetic scene: stuff layout and things composed into a segment map, painted, then jittered.

Why a module of its own: ``generate_scene`` enforces the ground-truth rules (hidden instances
removed, tiny stuff given to its neighbours, every segment at least ``MIN_AREA`` pixels, no void)
before painting the image from the final map; it depends only on the state of its ``rng``.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from ...structures import PanopticResult
from ..records import GTSegment
from .constants import CLASS_INDEX, DEFAULT_SIZE, MIN_AREA, MIN_SIDE, MIN_VISIBLE_FRACTION, STUFF_MIN_AREA, STUFF_NAMES
from .domain import Domain, get_domain
from .pixels import paste, white_noise
from .stuff import STUFF_TEXTURES, stuff_layout
from .things import Thing, place_things, shape_mask, thing_texture

__all__ = ["generate_scene"]

# --------------------------------------------------------------------------------------------
# Scene


def _crop_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the True pixels of ``mask`` grown by one pixel (inside the image); None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, h), max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, w)


def _compose(layout: np.ndarray, things: list[Thing], n_stuff: int) -> np.ndarray:
    """Segment map: stuff k -> id k + 1, thing i (back to front, later on top) -> id n_stuff + 1 + i."""
    seg = layout + 1
    for i, t in enumerate(things):
        y0, y1, x0, x1 = t.box
        seg[y0:y1, x0:x1][t.mask] = n_stuff + 1 + i
    return seg


def _give_to_neighbours(layout: np.ndarray, label: int) -> None:
    """Replace ``label`` in ``layout`` by the nearest other label (in place)."""
    region = layout == label
    idx = ndimage.distance_transform_edt(region, return_distances=False, return_indices=True)
    layout[region] = layout[idx[0][region], idx[1][region]]


def _photometric(rng: np.random.Generator, img: np.ndarray, domain: Domain) -> np.ndarray:
    """Contrast, brightness and colour cast, sometimes a slight blur and pixel noise; to uint8."""
    if not domain.is_original:  # the domain's light, before the per-image jitter
        img = cv2.merge([c * np.float32(f) for c, f in zip(cv2.split(img), domain.light)])
    contrast = rng.uniform(0.8, 1.2)
    brightness = rng.uniform(-0.1, 0.1)
    cast = rng.uniform(0.94, 1.06, 3)
    affine = np.zeros((3, 4), np.float32)  # per channel: 255 (contrast cast x + (0.5 - 0.5 contrast + brightness) cast)
    affine[:, :3] = np.diag(255 * contrast * cast)
    affine[:, 3] = 255 * (0.5 - 0.5 * contrast + brightness) * cast
    img = cv2.transform(img, affine)
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
    if rng.random() < 0.6:
        img += cv2.cvtColor(np.float32(255 * rng.uniform(*domain.noise)) * white_noise(rng, *img.shape[:2]),
                            cv2.COLOR_GRAY2RGB)
    np.clip(img, 0, 255, out=img)
    img += 0.5
    return img.astype(np.uint8)


def generate_scene(rng: np.random.Generator, height: int = DEFAULT_SIZE[0], width: int = DEFAULT_SIZE[1],
                   domain: str | Domain = "original") -> tuple[np.ndarray, np.ndarray, list[GTSegment]]:
    """One random scene: ``(image (H, W, 3) uint8 RGB, segment_map (H, W) int32, segments)``.

    ``segments`` are ``GTSegment`` with CONTIGUOUS ``category_id`` (index into ``CATEGORIES``; the
    dataset id is ``CATEGORIES[category_id]["id"]``), ``area`` and ``bbox`` set; stuff first, then
    things back to front. Ids are 1..N, every pixel has one (no void) and every segment has at least
    ``MIN_AREA`` pixels. The result depends only on the state of ``rng`` and on ``domain`` (how the
    scene is painted: "original" or "shifted", see ``domain.py``).
    """
    domain = get_domain(domain)
    h, w = int(height), int(width)
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"scene size {h}x{w} is below the minimum {MIN_SIDE}x{MIN_SIDE}")
    n_stuff = int(rng.integers(2, 5))
    stuff = [STUFF_NAMES[i] for i in rng.choice(len(STUFF_NAMES), n_stuff, replace=False)]
    if "sky" in stuff:  # sky on top of the band layout
        stuff.remove("sky")
        stuff.insert(0, "sky")
    layout = stuff_layout(rng, h, w, stuff)
    things = []
    for t in place_things(rng, h, w, domain):
        full = shape_mask(t, h, w)
        box = _crop_box(full)
        if box is None:
            continue
        t.box, t.mask = box, full[box[0]:box[1], box[2]:box[3]]
        t.area = int(np.count_nonzero(t.mask))
        if t.area >= MIN_AREA:
            things.append(t)

    while True:  # drop (nearly) hidden things, give tiny stuff regions to their neighbours; terminates
        seg = _compose(layout, things, n_stuff)
        area = np.bincount(seg.ravel(), minlength=n_stuff + len(things) + 1)
        small = [i for i, t in enumerate(things)
                 if area[n_stuff + 1 + i] < max(MIN_AREA, MIN_VISIBLE_FRACTION * t.area)]
        if small:
            drop = min(small, key=lambda i: (area[n_stuff + 1 + i], i))
            del things[drop]
            continue
        tiny = [k for k in range(n_stuff) if 0 < area[k + 1] < STUFF_MIN_AREA]
        if not tiny:
            break
        if (layout != tiny[0]).any():
            _give_to_neighbours(layout, tiny[0])
        else:  # the only stuff, nearly all covered: remove the front thing
            things.pop()

    # paint from the final map; ids renumbered 1..N in listing order
    img = np.empty((h, w, 3), np.float32)
    lut = np.zeros(n_stuff + len(things) + 1, np.int32)
    segments: list[GTSegment] = []
    for k, name in enumerate(stuff):
        if not area[k + 1]:
            continue
        region = seg == k + 1
        paste(img, domain.recolor_stuff(STUFF_TEXTURES[name](rng, h, w, region)), region)
        segments.append(GTSegment(id=len(segments) + 1, category_id=CLASS_INDEX[name], isthing=False))
        lut[k + 1] = len(segments)
    for i, t in enumerate(things):
        y0, y1, x0, x1 = t.box
        visible = seg[y0:y1, x0:x1] == n_stuff + 1 + i
        tex = thing_texture(rng, t.mask.shape, y0, x0, t, domain)
        # an outline along the shape's own border (not along the image border)
        if rng.random() < domain.outline_probability:
            width_px = 1 + int(rng.random() < 0.4 and t.size > 24)
            inner = cv2.erode(t.mask.view(np.uint8), np.ones((3, 3), np.uint8), iterations=width_px)
            edge = t.mask & ~inner.view(bool)
            tex[edge] = tex[edge] * 0.35 if rng.random() < 0.75 else tex[edge] * 0.4 + 0.6
        paste(img[y0:y1, x0:x1], tex, visible)
        segments.append(GTSegment(id=len(segments) + 1, category_id=CLASS_INDEX[t.kind], isthing=True))
        lut[n_stuff + 1 + i] = len(segments)
    image = _photometric(rng, img, domain)
    result = PanopticResult(lut[seg], segments).update_stats()
    return image, result.segment_map, result.segments
