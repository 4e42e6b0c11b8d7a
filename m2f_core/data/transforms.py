"""Training augmentations of Mask2Former, re-implemented in numpy / PIL / OpenCV without Detectron2.

Same arithmetic and the same order of random draws as the official mappers (Detectron2's
``RandomFlip``, ``ResizeScale``, ``FixedSizeCrop``, ``ResizeShortestEdge``,
``RandomCrop_CategoryAreaConstraint`` and PointRend's ``ColorAugSSDTransform``), but every random
number comes from an explicit ``np.random.Generator``: an example is a pure function of its seed, so
a resumed run or a re-seeded worker reproduces it exactly.

A ``Geometry`` records the geometric steps of one example (flip, resize, crop, pad) and applies
them to the image (bilinear resize through PIL, as Detectron2's ``ResizeTransform`` on uint8) and to
any number of label maps and masks (nearest neighbour, bit-exact with PIL's ``NEAREST``), so every
map of a sample stays aligned with the image. Maps are gathered with index arrays of the output
size only, which keeps many instance masks cheap under large-scale jitter.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

# Detectron2's FixedSizeCrop(pad_value=128) and MaskFormerSemanticDatasetMapper (F.pad value=128) pad images with 128
IMAGE_PAD_VALUE = 128
IGNORE_VALUE = 255

Maps = np.ndarray | Sequence[np.ndarray] | None


# --------------------------------------------------------------------------------------------
# Geometry


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel of a nearest-neighbour resize, exactly as PIL computes it.

    PIL (``ImagingScaleAffine``) starts at ``scale / 2`` and adds ``scale`` per pixel in double
    precision; the running sum (not ``(i + 0.5) * scale``) decides the ties, so we reproduce it.
    """
    scale = n_in / n_out
    steps = np.full(n_out, scale, dtype=np.float64)
    steps[0] = scale * 0.5
    return np.minimum(np.cumsum(steps).astype(np.int64), n_in - 1)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 image through PIL (antialiased when shrinking), as Detectron2 does."""
    if image.shape[:2] == (height, width):
        return image
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BILINEAR))


@dataclass
class Geometry:
    """Flip / resize / crop / pad steps of one example, in order; applied alike to image, maps and masks.

    ``crop`` clips to the current size like Detectron2's ``CropTransform`` (a slice); ``pad`` adds
    rows and columns at the bottom and right up to the given size, as ``FixedSizeCrop`` does.
    """

    height: int
    width: int
    ops: list[tuple] = field(default_factory=list)

    @property
    def output_size(self) -> tuple[int, int]:
        h, w = self.height, self.width
        for op in self.ops:
            if op[0] == "resize":
                h, w = op[1], op[2]
            elif op[0] == "crop":
                _, y0, x0, ch, cw = op
                h, w = max(0, min(ch, h - y0)), max(0, min(cw, w - x0))
            elif op[0] == "pad":
                h, w = max(h, op[1]), max(w, op[2])
        return h, w

    def hflip(self) -> Geometry:
        self.ops.append(("hflip",))
        return self

    def resize(self, height: int, width: int) -> Geometry:
        if height < 1 or width < 1:
            raise ValueError(f"cannot resize to {width}x{height}")
        self.ops.append(("resize", int(height), int(width)))
        return self

    def crop(self, y0: int, x0: int, height: int, width: int) -> Geometry:
        self.ops.append(("crop", int(y0), int(x0), int(height), int(width)))
        return self

    def pad(self, height: int, width: int) -> Geometry:
        self.ops.append(("pad", int(height), int(width)))
        return self

    def then(self, other: Geometry) -> Geometry:
        """Append the steps of ``other`` (which must start from this geometry's output size)."""
        if (other.height, other.width) != self.output_size:
            raise ValueError(f"geometry starts at {other.width}x{other.height}, expected {self.output_size}")
        self.ops.extend(other.ops)
        return self

    def apply_image(self, image: np.ndarray, pad_value: float = IMAGE_PAD_VALUE) -> np.ndarray:
        """The image after every step in order (bilinear resize), padding with ``pad_value``."""
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, geometry expects {self.width}x{self.height}")
        out = image
        for op in self.ops:
            if op[0] == "hflip":
                out = out[:, ::-1]
            elif op[0] == "resize":
                out = resize_image(np.ascontiguousarray(out), op[1], op[2])
            elif op[0] == "crop":
                _, y0, x0, ch, cw = op
                out = out[y0:y0 + ch, x0:x0 + cw]
            elif op[0] == "pad":
                ph, pw = max(0, op[1] - out.shape[0]), max(0, op[2] - out.shape[1])
                if ph or pw:
                    widths = ((0, ph), (0, pw)) + ((0, 0),) * (out.ndim - 2)
                    out = np.pad(out, widths, mode="constant", constant_values=pad_value)
        return np.ascontiguousarray(out)

    def indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Source row and column of every output row / column (-1 = padding); the steps are separable."""
        iy = np.arange(self.height, dtype=np.int64)
        ix = np.arange(self.width, dtype=np.int64)
        for op in self.ops:
            if op[0] == "hflip":
                ix = ix[::-1]
            elif op[0] == "resize":
                iy = iy[nearest_indices(len(iy), op[1])]
                ix = ix[nearest_indices(len(ix), op[2])]
            elif op[0] == "crop":
                _, y0, x0, ch, cw = op
                iy, ix = iy[y0:y0 + ch], ix[x0:x0 + cw]
            elif op[0] == "pad":
                iy = np.concatenate([iy, np.full(max(0, op[1] - len(iy)), -1, dtype=np.int64)])
                ix = np.concatenate([ix, np.full(max(0, op[2] - len(ix)), -1, dtype=np.int64)])
        return iy, ix

    def apply_segmentation(self, seg: np.ndarray, pad_value: int = 0) -> np.ndarray:
        """An (H, W) or (H, W, C) map of any dtype, nearest neighbour; padding gets ``pad_value``."""
        if seg.shape[:2] != (self.height, self.width):
            raise ValueError(f"map is {seg.shape[1]}x{seg.shape[0]}, geometry expects {self.width}x{self.height}")
        iy, ix = self.indices()
        out = seg[np.maximum(iy, 0)[:, None], np.maximum(ix, 0)[None, :]]
        out[iy < 0] = pad_value
        out[:, ix < 0] = pad_value
        return out

    def apply_masks(self, masks: np.ndarray) -> np.ndarray:
        """(N, H, W) masks, nearest neighbour; padding is False (0)."""
        if masks.shape[1:3] != (self.height, self.width):
            raise ValueError(f"masks are {masks.shape[2]}x{masks.shape[1]}, geometry expects "
                             f"{self.width}x{self.height}")
        iy, ix = self.indices()
        out = masks[:, np.maximum(iy, 0)[:, None], np.maximum(ix, 0)[None, :]]
        out[:, iy < 0] = 0
        out[:, :, ix < 0] = 0
        return out


def _apply_maps(geometry: Geometry, seg: Maps, pad_value: int | Sequence[int]) -> Maps:
    """``seg`` (None, one map or a sequence of maps) through ``geometry``, same structure back."""
    if seg is None:
        return None
    if isinstance(seg, np.ndarray):
        pv = pad_value if isinstance(pad_value, (int, np.integer)) else pad_value[0]
        return geometry.apply_segmentation(seg, int(pv))
    values = [pad_value] * len(seg) if isinstance(pad_value, (int, np.integer)) else list(pad_value)
    if len(values) != len(seg):
        raise ValueError(f"{len(values)} pad values for {len(seg)} maps")
    return [geometry.apply_segmentation(m, int(v)) for m, v in zip(seg, values)]


def _first_map(seg: Maps) -> np.ndarray | None:
    if seg is None or isinstance(seg, np.ndarray):
        return seg
    return seg[0] if len(seg) else None


# --------------------------------------------------------------------------------------------
# Random geometry (the parameters only; the same draws as Detectron2)


def random_flip(rng: np.random.Generator, prob: float = 0.5) -> bool:
    """``RandomFlip``: flip when a uniform draw in [0, 1) is below ``prob``."""
    return bool(rng.uniform() < prob)


def resize_scale_size(height: int, width: int, scale: float, target_height: int, target_width: int) -> tuple[int, int]:
    """``ResizeScale._get_resize``: fit the image, aspect kept, inside ``scale`` x the target box."""
    target_scale_size = np.multiply((target_height, target_width), scale)
    output_scale = np.minimum(target_scale_size[0] / height, target_scale_size[1] / width)
    out = np.round(np.multiply((height, width), output_scale)).astype(int)
    return max(1, int(out[0])), max(1, int(out[1]))


def shortest_edge_size(height: int, width: int, short_edge: int, max_size: int = sys.maxsize) -> tuple[int, int]:
    """``ResizeShortestEdge.get_output_shape``: short side to ``short_edge``, long side at most ``max_size``."""
    size = short_edge * 1.0
    scale = size / min(height, width)
    newh, neww = (size, scale * width) if height < width else (scale * height, size)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def sample_lsj(height: int, width: int, rng: np.random.Generator, image_size: int = 1024, min_scale: float = 0.1,
               max_scale: float = 2.0, flip: bool = True) -> Geometry:
    """The geometry of COCO large-scale jitter: RandomFlip, ResizeScale, FixedSizeCrop (random crop + pad).

    Draws: flip, scale ~ U(min_scale, max_scale), one crop fraction ~ U(0, 1) shared by both axes
    (``FixedSizeCrop`` multiplies the maximal offset by a single scalar).
    """
    geo = Geometry(height, width)
    if flip and random_flip(rng):
        geo.hflip()
    scale = rng.uniform(min_scale, max_scale)
    rh, rw = resize_scale_size(height, width, scale, image_size, image_size)
    geo.resize(rh, rw)
    max_offset = np.maximum(np.subtract((rh, rw), (image_size, image_size)), 0)
    offset = np.round(np.multiply(max_offset, rng.uniform(0.0, 1.0))).astype(int)
    geo.crop(int(offset[0]), int(offset[1]), image_size, image_size)
    geo.pad(image_size, image_size)
    return geo


def sample_shortest_edge(height: int, width: int, rng: np.random.Generator, short_edges: Sequence[int],
                         max_size: int = sys.maxsize, sample_style: str = "choice") -> Geometry:
    """The geometry of ``ResizeShortestEdge``: a short side drawn from ``short_edges`` ("choice") or the
    closed range ``[short_edges[0], short_edges[1]]`` ("range"); 0 = leave the size as it is."""
    if sample_style == "choice":
        size = int(rng.choice(np.asarray(short_edges)))
    elif sample_style == "range":
        size = int(rng.integers(short_edges[0], short_edges[1] + 1))
    else:
        raise ValueError(f"sample_style must be 'choice' or 'range', got {sample_style!r}")
    geo = Geometry(height, width)
    if size:
        geo.resize(*shortest_edge_size(height, width, size, max_size))
    return geo


def sample_category_area_crop(label_map: np.ndarray, rng: np.random.Generator, crop_size: tuple[int, int],
                              single_category_max_area: float = 1.0,
                              ignore_value: int | None = IGNORE_VALUE) -> tuple[int, int, int, int]:
    """``RandomCrop_CategoryAreaConstraint`` ("absolute" crop): (y0, x0, h, w) of the crop.

    The crop is ``crop_size`` clipped to the map. Below a ratio of 1.0, up to 10 windows are drawn
    and the first where no single category (``ignore_value`` excluded) covers ``single_category_max_area``
    or more of the labelled pixels, and more than one category is present, wins; else the 10th.
    """
    h, w = label_map.shape[:2]
    ch, cw = min(int(crop_size[0]), h), min(int(crop_size[1]), w)
    if single_category_max_area >= 1.0:
        y0 = int(rng.integers(h - ch + 1))
        x0 = int(rng.integers(w - cw + 1))
        return y0, x0, ch, cw
    y0 = x0 = 0
    for _ in range(10):
        y0 = int(rng.integers(h - ch + 1))
        x0 = int(rng.integers(w - cw + 1))
        labels, cnt = np.unique(label_map[y0:y0 + ch, x0:x0 + cw], return_counts=True)
        if ignore_value is not None:
            cnt = cnt[labels != ignore_value]
        if len(cnt) > 1 and np.max(cnt) < np.sum(cnt) * single_category_max_area:
            break
    return y0, x0, ch, cw


# --------------------------------------------------------------------------------------------
# Convenience functions: image + maps in, image + maps out


def hflip(image: np.ndarray, seg: Maps = None) -> tuple[np.ndarray, Maps]:
    """Horizontal flip of the image and of every map."""
    geo = Geometry(*image.shape[:2]).hflip()
    return geo.apply_image(image), _apply_maps(geo, seg, 0)


def large_scale_jitter(image: np.ndarray, seg: Maps, rng: np.random.Generator, image_size: int = 1024,
                       min_scale: float = 0.1, max_scale: float = 2.0, seg_pad_value: int | Sequence[int] = 0,
                       image_pad_value: float = IMAGE_PAD_VALUE, flip: bool = True) -> tuple[np.ndarray, Maps]:
    """COCO LSJ (``coco_panoptic_lsj`` / ``coco_instance_lsj`` mappers): output is image_size x image_size.

    Images are padded with 128 (``FixedSizeCrop``); maps with ``seg_pad_value``: 0 (void) for a
    panoptic id map, 255 (ignore) for a semantic label map, one value per map if they differ.
    """
    geo = sample_lsj(image.shape[0], image.shape[1], rng, image_size, min_scale, max_scale, flip)
    return geo.apply_image(image, image_pad_value), _apply_maps(geo, seg, seg_pad_value)


def resize_shortest_edge(image: np.ndarray, seg: Maps, rng: np.random.Generator, short_edges: Sequence[int],
                         max_size: int = sys.maxsize, sample_style: str = "choice") -> tuple[np.ndarray, Maps]:
    """``ResizeShortestEdge`` on the image (bilinear) and every map (nearest)."""
    geo = sample_shortest_edge(image.shape[0], image.shape[1], rng, short_edges, max_size, sample_style)
    return geo.apply_image(image), _apply_maps(geo, seg, 0)


def crop_with_category_area(image: np.ndarray, seg: Maps, rng: np.random.Generator, crop_size: tuple[int, int],
                            single_category_max_area: float = 1.0,
                            ignore_value: int = IGNORE_VALUE) -> tuple[np.ndarray, Maps]:
    """Random crop of image and maps where no category dominates (see ``sample_category_area_crop``).

    The constraint is checked on the first map of ``seg`` (the semantic label map); the other maps
    are cropped alike. Without a map the crop is unconstrained.
    """
    label_map = _first_map(seg)
    ref = label_map if label_map is not None else np.zeros(image.shape[:2], np.uint8)
    ratio = single_category_max_area if label_map is not None else 1.0
    y0, x0, ch, cw = sample_category_area_crop(ref, rng, crop_size, ratio, ignore_value)
    geo = Geometry(*image.shape[:2]).crop(y0, x0, ch, cw)
    return geo.apply_image(image), _apply_maps(geo, seg, 0)


# --------------------------------------------------------------------------------------------
# Colour


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def color_aug_ssd(image: np.ndarray, rng: np.random.Generator, brightness_delta: float = 32,
                  contrast_low: float = 0.5, contrast_high: float = 1.5, saturation_low: float = 0.5,
                  saturation_high: float = 1.5, hue_delta: int = 18) -> np.ndarray:
    """SSD photometric distortion (PointRend's ``ColorAugSSDTransform``) of an RGB uint8 image.

    Brightness (p=0.5, +-32), then either contrast, saturation, hue or saturation, hue, contrast
    (each p=0.5; contrast and saturation x U(0.5, 1.5), hue +-18 on OpenCV's 0..179 scale), with
    truncation to uint8 after every step as the original. Geometry is untouched.
    """
    img = np.ascontiguousarray(image)

    def brightness(x: np.ndarray) -> np.ndarray:
        return _convert(x, beta=rng.uniform(-brightness_delta, brightness_delta)) if rng.integers(2) else x

    def contrast(x: np.ndarray) -> np.ndarray:
        return _convert(x, alpha=rng.uniform(contrast_low, contrast_high)) if rng.integers(2) else x

    def saturation(x: np.ndarray) -> np.ndarray:
        if not rng.integers(2):
            return x
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)  # = BGR2HSV on the BGR image the original uses
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(saturation_low, saturation_high))
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    def hue(x: np.ndarray) -> np.ndarray:
        if not rng.integers(2):
            return x
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + int(rng.integers(-hue_delta, hue_delta + 1))) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    img = brightness(img)
    if rng.integers(2):
        img = hue(saturation(contrast(img)))
    else:
        img = contrast(hue(saturation(img)))
    return img
