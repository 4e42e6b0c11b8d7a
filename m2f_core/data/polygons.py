"""Masks <-> polygons for the annotation tools that want polygons, within a stated IoU loss.

Why a module of its own: CVAT, LabelMe and Label Studio users often want polygons (they edit
them by dragging vertices), while the workbench's annotation is a pixel map. ``mask_to_polygons``
simplifies a mask (OpenCV contours, ``approxPolyDP``) with the LARGEST epsilon whose polygons,
rasterised the way the target tool's importer rasterises them, keep ``IoU >= 1 - max_iou_loss``
with the mask, and reports the IoU it reached. A mask whose polygons cannot reach the bound at
any epsilon (a one-pixel-wide line under COCO's rasteriser) gets ``ok=False``; the writers then
keep it as a mask (or fail, where the format has no mask).

Two pixel conventions, because the tools differ:

- ``"coco"`` (pycocotools; CVAT and Label Studio, whose canvases put pixel i on [i, i+1)): the
  polygon runs along pixel EDGES. Contours are traced on the mask upsampled 2x (sub-pixel u maps
  to edge (u + 1) // 2), so an unsimplified polygon reproduces the mask up to its 8-connected
  corners.
- ``"pil"`` (LabelMe's ``shape_to_mask``: PIL ``ImageDraw.polygon`` with outline): the polygon
  runs through the CENTRES of the boundary pixels (OpenCV's contour points as they are).

Holes: each hole is spliced into its outer contour through a zero-width bridge at their closest
vertices (a "keyhole"), so formats without holes (COCO polygons, LabelMe) still exclude it;
both rasterisers fill with the even-odd rule, so the bridge cancels out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PolygonFit", "RASTERIZERS", "mask_to_polygons", "polygons_to_mask", "polygon_iou"]

RASTERIZERS = ("coco", "pil")

# epsilons tried (pixels), largest first: the first that meets the bound wins
_EPSILONS = (16.0, 12.0, 8.0, 6.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.25, 1.0, 0.75, 0.5, 0.25, 0.0)


@dataclass
class PolygonFit:
    """Polygons of one mask (each an (N, 2) float array of x, y), the IoU they reach, the epsilon used.

    ``ok`` is False when no epsilon reached the bound (the polygons are then the closest fit).
    """

    polygons: list[np.ndarray]
    iou: float
    epsilon: float
    ok: bool

    def flat(self) -> list[list[float]]:
        """COCO's form: one flat [x0, y0, x1, y1, ...] list per polygon."""
        return [[float(v) for v in p.reshape(-1)] for p in self.polygons]


def _check_rasterizer(rasterizer: str) -> None:
    if rasterizer not in RASTERIZERS:
        raise ValueError(f"rasterizer must be one of {', '.join(RASTERIZERS)}, got {rasterizer!r}")


def polygons_to_mask(polygons: list, height: int, width: int, rasterizer: str = "coco") -> np.ndarray:
    """(H, W) bool union of polygons (each (N, 2) or flat [x0, y0, ...]), filled even-odd as the tool does."""
    _check_rasterizer(rasterizer)
    flat = [np.asarray(p, dtype=np.float64).reshape(-1) for p in polygons]
    flat = [p for p in flat if p.size >= 6]
    if not flat:
        return np.zeros((height, width), dtype=bool)
    if rasterizer == "coco":
        from pycocotools import mask as mask_util

        rles = mask_util.frPyObjects([p.tolist() for p in flat], height, width)
        return mask_util.decode(mask_util.merge(rles)).astype(bool)
    from PIL import Image, ImageDraw

    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    for p in flat:
        draw.polygon([(float(x), float(y)) for x, y in p.reshape(-1, 2)], fill=1, outline=1)
    return np.asarray(image, dtype=bool)


def polygon_iou(mask: np.ndarray, polygons: list, rasterizer: str = "coco") -> float:
    """IoU of a mask and the rasterised polygons (1.0 when both are empty)."""
    drawn = polygons_to_mask(polygons, mask.shape[0], mask.shape[1], rasterizer)
    return _iou(mask.astype(bool), drawn)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def _contours(crop: np.ndarray, rasterizer: str) -> tuple[list[np.ndarray], np.ndarray | None]:
    """OpenCV contours (outer and holes, RETR_CCOMP) in the rasteriser's convention, and the hierarchy."""
    import cv2

    if rasterizer == "coco":
        up = np.kron(crop.astype(np.uint8), np.ones((2, 2), dtype=np.uint8))
        contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        contours = [((c.reshape(-1, 2) + 1) // 2).astype(np.int32).reshape(-1, 1, 2) for c in contours]
    else:
        contours, hierarchy = cv2.findContours(crop.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    return list(contours), (None if hierarchy is None else hierarchy[0])


def _dedupe(points: np.ndarray) -> np.ndarray:
    """Drop consecutive repeated vertices (the 2x trace maps neighbouring sub-pixels to one edge)."""
    if len(points) < 2:
        return points
    keep = np.ones(len(points), dtype=bool)
    keep[1:] = np.any(points[1:] != points[:-1], axis=1)
    return points[keep]


def _splice_hole(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """One polygon: ``outer`` with ``hole`` inserted through a zero-width bridge at their closest vertices."""
    d = ((outer[:, None, :].astype(np.float64) - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    hole_loop = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outer[: i + 1], hole_loop, outer[i:]])


def _simplify(contours: list[np.ndarray], hierarchy: np.ndarray | None, epsilon: float) -> list[np.ndarray]:
    """approxPolyDP of every contour, holes spliced into their parents; polygons under 3 vertices dropped."""
    import cv2

    if hierarchy is None:
        return []
    approx = []
    for c in contours:
        p = cv2.approxPolyDP(c, epsilon, True) if epsilon > 0 else c
        approx.append(_dedupe(p.reshape(-1, 2)))
    out = []
    for k, (_, _, _, parent) in enumerate(hierarchy):
        if parent >= 0:
            continue
        poly = approx[k]
        if len(poly) < 3:
            continue
        for h, (_, _, _, hp) in enumerate(hierarchy):
            if hp == k and len(approx[h]) >= 3:
                poly = _splice_hole(poly, approx[h])
        out.append(poly.astype(np.float64))
    return out


def mask_to_polygons(mask: np.ndarray, max_iou_loss: float = 0.01, rasterizer: str = "coco") -> PolygonFit:
    """Polygons of a mask with the largest epsilon that keeps IoU >= 1 - ``max_iou_loss`` (see the module doc).

    ``max_iou_loss`` in [0, 1); 0 asks for the unsimplified contours (exact up to 8-connected corners
    under ``"coco"``). Works on the mask's bounding box, so the cost follows the object, not the image.
    """
    _check_rasterizer(rasterizer)
    if not 0 <= max_iou_loss < 1:
        raise ValueError(f"max_iou_loss must be in [0, 1), got {max_iou_loss}")
    mask = np.asarray(mask).astype(bool)
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if ys.size == 0:
        return PolygonFit([], 1.0, 0.0, True)
    pad = 1
    y0, x0 = max(int(ys[0]) - pad, 0), max(int(xs[0]) - pad, 0)
    y1, x1 = min(int(ys[-1]) + pad + 1, mask.shape[0]), min(int(xs[-1]) + pad + 1, mask.shape[1])
    crop = mask[y0:y1, x0:x1]
    contours, hierarchy = _contours(crop, rasterizer)
    target = 1.0 - max_iou_loss
    best: PolygonFit | None = None
    for eps in _EPSILONS:
        polys = _simplify(contours, hierarchy, eps)
        iou = polygon_iou(crop, polys, rasterizer)
        if best is None or iou > best.iou:
            best = PolygonFit(polys, iou, eps, False)
        if iou >= target - 1e-12:
            best = PolygonFit(polys, iou, eps, True)
            break
    assert best is not None
    offset = np.array([x0, y0], dtype=np.float64)
    return PolygonFit([p + offset for p in best.polygons], best.iou, best.epsilon, best.ok)
