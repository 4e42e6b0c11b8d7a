"""The command line of the synthetic dataset generator: ``python -m m2f_core.data.synthetic``.

Why a module of its own: argument checking and error reporting (exit code 2 with a one-line message)
are kept apart from the generator, which the trainer and the tests call directly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2

from ...cli import Parser, non_negative_int, parse_size, positive_int
from ..errors import DatasetError
from .constants import DEFAULT_SIZE, JPEG_QUALITY, MAX_SIDE, MIN_SIDE
from .dataset import generate_dataset
from .domain import DOMAINS

__all__ = ["PROG", "build_parser", "main"]

PROG = "python -m m2f_core.data.synthetic"


def _size(text: str) -> tuple[int, int]:
    h, w = parse_size(text, multiple=1)
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"size {h}x{w}: each side must be in {MIN_SIDE}..{MAX_SIDE}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Write a synthetic COCO panoptic dataset (stuff textures + overlapping "
                                       "shapes) to OUT/train and OUT/val; the same seed gives identical files.")
    p.add_argument("--out", required=True, type=Path, help="output folder (gets train/ and val/)")
    p.add_argument("--train", type=non_negative_int, default=1000, metavar="N", help="training images (default 1000)")
    p.add_argument("--val", type=non_negative_int, default=100, metavar="M", help="validation images (default 100)")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="S", help="random seed >= 0 (default 0)")
    p.add_argument("--size", type=_size, default=DEFAULT_SIZE, metavar="HxW",
                   help=f"image size, e.g. 256x256 or 256 (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg",
                   help=f"photo format (default jpg, quality {JPEG_QUALITY})")
    p.add_argument("--domain", choices=tuple(DOMAINS), default="original",
                   help="how scenes are painted: original (the built-in model's training data) or shifted "
                        "(other stuff colours, smaller darker things, dusk light; for domain-shift tests)")
    p.add_argument("--workers", type=positive_int, default=1, metavar="K",
                   help="processes (default 1; the output does not depend on it)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.train == 0 and args.val == 0:
        parser.error("nothing to generate (--train and --val are both 0)")
    cv2.setNumThreads(1)
    try:
        if args.out.exists() and not args.out.is_dir():
            raise DatasetError(args.out, "exists and is not a folder")
        for split, n in (("train", args.train), ("val", args.val)):
            if n:
                path = generate_dataset(args.out, n, args.seed, split, args.size, args.image_format, args.workers,
                                        progress=True, domain=args.domain)
                print(f"{split}: {n} images -> {path}")
    except (DatasetError, OSError, ValueError) as e:
        message = " ".join(str(e).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
