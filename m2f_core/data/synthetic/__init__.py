"""Synthetic panoptic scenes written as a COCO panoptic dataset (offline training data for the built-in model).

    python -m m2f_core.data.synthetic --out datasets/synthetic --train 2000 --val 200 --seed 0 [--size 256x256]

writes, for each split with images::

    OUT/<split>/images/000000.jpg ...      the photos (JPEG quality 92, or PNG with --image-format png)
    OUT/<split>/panoptic/000000.png ...    segment ids, id = R + 256 G + 256^2 B (no void pixels)
    OUT/<split>/panoptic.json              COCO panoptic: images, annotations (segments_info), categories

Read a split back with ``synthetic_dataset(OUT, "train")`` (a ``CocoPanoptic`` whose ``image_dir`` is
``OUT/<split>/images``), or name it as any dataset: ``coco_panoptic:OUT`` (the ``train`` split for
training, ``val`` elsewhere), ``coco_panoptic:OUT --split val`` or ``coco_panoptic:OUT/val/panoptic.json``.

A scene: 2-4 *stuff* regions (``STUFF_NAMES``: sky, grass, water, brick wall, road, each with its own
texture and at most one segment per image) tile the background with irregular borders (a horizon-like
stack of bands displaced by smoothed noise, or a warped Voronoi partition); 2-8 *things*
(``THING_NAMES``: disc, box, triangle, star, ring with a real hole, thin bar) of random size (12% small,
10-20 px; the others 36 px to half the scene), rotation, colour (a hue band per class, as real object
classes have typical colours) and texture (flat, stripes, dots, gradient; sometimes an outline) are
painted in a random depth order, often in touching / overlapping groups of one class, some cut by the
image border. The ground truth keeps the visible part of each instance; instances left with fewer than
``MIN_AREA`` visible pixels (or under 10% of their in-image area) are removed before the image is
painted, and a stuff class left with fewer than ``STUFF_MIN_AREA`` visible pixels is given to its
neighbours, so every segment has at least ``MIN_AREA`` pixels and the image is painted from the final
segment map. Mild global photometric jitter (brightness, contrast, colour cast, blur, noise) follows.

Image ``i`` of a split depends only on ``(seed, split, i)``: the same seed gives byte-identical files,
whatever the number of worker processes.

The package is split by responsibility: ``constants`` (classes and size limits), ``pixels`` (noise and
colour helpers), ``stuff`` (background layout and textures), ``things`` (shapes, placement,
textures), ``scene`` (``generate_scene``), ``dataset`` (``generate_dataset``, ``scene_rng``,
``synthetic_dataset``) and ``cli`` (the command line). The public names are re-exported here.
"""

from __future__ import annotations

from .cli import PROG, build_parser, main
from .constants import (
    CATEGORIES,
    DEFAULT_SIZE,
    JPEG_QUALITY,
    MIN_AREA,
    MIN_VISIBLE_FRACTION,
    SMALL_FRACTION,
    STUFF_MIN_AREA,
    STUFF_NAMES,
    THING_HUE_BAND,
    THING_HUES,
    THING_NAMES,
)
from .dataset import generate_dataset, scene_rng, synthetic_dataset
from .domain import DOMAINS, Domain, get_domain
from .scene import generate_scene

__all__ = [
    "CATEGORIES", "DEFAULT_SIZE", "DOMAINS", "Domain", "JPEG_QUALITY", "MIN_AREA", "MIN_VISIBLE_FRACTION", "PROG",
    "SMALL_FRACTION",
    "STUFF_MIN_AREA", "STUFF_NAMES", "THING_HUE_BAND", "THING_HUES", "THING_NAMES", "build_parser",
    "generate_dataset", "generate_scene", "get_domain", "main", "scene_rng", "synthetic_dataset",
]
