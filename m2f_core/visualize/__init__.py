"""Rendering of results as RGB overlays: pure functions, numpy/PIL/cv2 in, ``(H, W, 3)`` uint8 RGB out.

Used by the predict CLI and the Gradio editor. Nothing here modifies its inputs.

Colours. A class has one colour (``colors[class_id]`` of the config, or the config's default palette).
Stuff segments are drawn in their class colour; thing segments in a colour derived from the class colour
and the segment id only (:func:`segment_color`), so a segment keeps its colour when the result is
re-rendered after an unrelated edit, and two things of one class differ.

Fills are ``round(image * (1 - alpha) + colour * alpha)``; void (id 0, or an id missing from the segment
table) keeps the image's pixels. Outlines are the pixels of a segment that touch another segment or void
(4-neighbourhood), drawn opaque in the segment's colour: 1 px on each side of a border between two
segments. Labels ("class score") sit at the point of the segment farthest from its border, white on a
dark box, with a font scaled to the image size.

Everything is vectorised (a colour lookup table indexed by the segment map, borders from the map and its
shifted copies); the only loops over segments draw labels.

The package is split by responsibility: ``overlays`` (the drawing functions), ``legend``,
``colors`` (class and segment colours), ``raster`` (vectorised building blocks), ``text`` (label
text) and ``checks`` (input checks). Import the public names from ``m2f_core.visualize``.
"""

from __future__ import annotations

from .colors import Color as Color  # the type of a colour argument, as before the split
from .colors import default_color, segment_color
from .legend import append_legend, legend
from .overlays import draw_instances, draw_panoptic, draw_semantic, draw_uncertainty

__all__ = [
    "append_legend",
    "default_color",
    "draw_instances",
    "draw_panoptic",
    "draw_semantic",
    "draw_uncertainty",
    "legend",
    "segment_color",
]
