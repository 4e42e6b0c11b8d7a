"""Error types shared across layers, and the one-line message helper every CLI uses.

Bottom layer: imports nothing of the project, so the weight loaders (``checkpoint``,
``hf_convert``), the predictor and the programs can all raise and catch these without importing
each other.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "first_line"]


def first_line(e: BaseException) -> str:
    """The first line of an exception message (or its type), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says why and what to do."""
