"""Pieces every command line of the project shares: the one-line usage error, positive counts and HxW sizes."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn


def program_name(module_form: str) -> str:
    """The command as the user typed it: its console script (``m2f-evaluate``) or ``module_form``
    (``python -m m2f_core.evaluate``), so usage lines and messages name what was run."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script if script.startswith("m2f-") else module_form


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit code 2, as argparse)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def non_negative_int(text: str) -> int:
    """An argparse type for counts and seeds: a whole number >= 0."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type for counts such as ``--limit``: a whole number >= 1 (0 or less would do nothing)."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number (1 or more), got {value}")
    return value


def parse_size(text: str, multiple: int = 32, allow_square: bool = True) -> tuple[int, int]:
    """``800x1088`` -> (800, 1088) (height x width); ``512`` -> (512, 512) when ``allow_square``.
    Each side must be a positive multiple of ``multiple`` (the network's size divisibility)."""
    parts = text.lower().split("x")
    if len(parts) not in ((1, 2) if allow_square else (2,)) or not all(p.strip().isdigit() for p in parts):
        shapes = "HxW or N" if allow_square else "HxW"
        raise argparse.ArgumentTypeError(f"size must be {shapes}, e.g. 256x256, got {text!r}")
    h, w = int(parts[0]), int(parts[-1])
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        what = "positive" if multiple == 1 else f"positive multiples of {multiple}"
        raise argparse.ArgumentTypeError(f"size must be {what}, got {text!r}")
    return h, w
