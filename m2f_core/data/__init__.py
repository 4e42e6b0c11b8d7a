"""Data: image loading, dataset readers and writers, shipped class lists (``classes/``)."""

from .images import ImageError, load_image

__all__ = ["ImageError", "load_image"]
