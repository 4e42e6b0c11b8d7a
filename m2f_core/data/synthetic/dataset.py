"""Synthetic datasets on disk: scenes written as COCO panoptic splits, deterministic per image, and read back.

Why a module of its own: image ``i`` of a split depends only on ``(seed, split, i)`` (``scene_rng``),
so the files are byte-identical whatever the number of worker processes; this module owns that
seeding, the worker pool and the atomic writes.
"""

from __future__ import annotations

import io
import multiprocessing
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ...atomic import atomic_write_bytes
from ...structures import PanopticResult
from ..coco_panoptic import CocoPanoptic, write_coco_panoptic
from ..records import GTSegment, Sample
from .constants import CATEGORIES, DEFAULT_SIZE, JPEG_QUALITY, MAX_SIDE, MIN_SIDE
from .domain import get_domain
from .scene import generate_scene

__all__ = ["generate_dataset", "scene_rng", "synthetic_dataset"]

# --------------------------------------------------------------------------------------------
# Dataset


def _split_key(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: depends only on (seed, split, index)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _split_key(split), int(index)]))


def _encode_image(image: np.ndarray, image_format: str) -> bytes:
    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(image).save(buf, format="PNG")
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _make_image(job: tuple[int, int, str, int, int, str, str, str]) -> tuple[int, np.ndarray, list[GTSegment]]:
    """Generate image ``index`` and write its photo; returns (index, segment map, segments)."""
    index, seed, split, h, w, image_format, image_dir, domain = job
    image, seg, segments = generate_scene(scene_rng(seed, split, index), h, w, domain)
    atomic_write_bytes(Path(image_dir) / f"{index:06d}.{image_format}", _encode_image(image, image_format))
    return index, seg, segments


def _worker_init() -> None:
    cv2.setNumThreads(1)


def generate_dataset(out_dir: str | Path, num_images: int, seed: int = 0, split: str = "train",
                     size: tuple[int, int] = DEFAULT_SIZE, image_format: str = "jpg", workers: int = 1,
                     progress: bool = False, domain: str = "original") -> Path:
    """Write ``num_images`` scenes as ``out_dir/<split>/{images/, panoptic/, panoptic.json}``; returns the JSON.

    Every file is written atomically (the JSON last). ``workers`` > 1 generates in that many processes;
    the files are the same whatever ``workers`` is. ``domain`` ("original" or "shifted") is how the
    scenes are painted (``domain.py``); the classes and ground-truth rules are the same.
    """
    domain = get_domain(domain).name
    h, w = (int(v) for v in size)
    if h < MIN_SIDE or w < MIN_SIDE or h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(f"image size {h}x{w} outside {MIN_SIDE}..{MAX_SIDE} per side")
    if num_images < 0:
        raise ValueError(f"number of images must be >= 0, got {num_images}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image format must be 'jpg' or 'png', got {image_format!r}")
    if not split or not re.fullmatch(r"[A-Za-z0-9_.-]+", split) or split in (".", ".."):
        raise ValueError(f"split must be a plain folder name, got {split!r}")
    root = Path(out_dir) / split
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(i, int(seed), split, h, w, image_format, str(image_dir), domain) for i in range(int(num_images))]

    def samples(results: Iterator[tuple[int, np.ndarray, list[GTSegment]]]) -> Iterator[Sample]:
        from tqdm import tqdm

        for index, seg, segments in tqdm(results, total=len(jobs), desc=f"synthetic {split}", unit="img",
                                         file=sys.stderr, disable=None if progress else True):
            yield Sample(image_id=index, file_name=image_dir / f"{index:06d}.{image_format}", height=h, width=w,
                         panoptic=PanopticResult(seg, segments))

    json_file = root / "panoptic.json"
    if workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ctx.Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
            write_coco_panoptic(json_file, samples(pool.imap(_make_image, jobs, chunksize=4)), CATEGORIES)
    else:
        write_coco_panoptic(json_file, samples(map(_make_image, jobs)), CATEGORIES)
    return json_file


def synthetic_dataset(out_dir: str | Path, split: str = "train") -> CocoPanoptic:
    """Read a split written by ``generate_dataset`` (a ``CocoPanoptic`` with the right image folder)."""
    root = Path(out_dir) / split
    return CocoPanoptic(root / "panoptic.json", png_dir=root / "panoptic", image_dir=root / "images")
