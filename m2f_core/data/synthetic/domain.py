"""Domains of the synthetic scenes: the original look, and a shifted one for domain-shift experiments.

Why a module of its own: the correction loop has to prove that fine-tuning on a few corrected
images helps where the model is weak. A *domain* changes how scenes look, never what they mean
(classes, shapes, ground-truth rules are the same), so a model trained on the original domain can
be measured on the shifted one, fine-tuned on a few shifted images, and measured again on both.

``shifted`` ("dusk") differs from the original in three ways at once:

- stuff colours: every stuff texture's hue is turned by ``stuff_hue_shift`` (sky and water turn
  orange, grass purple, brick wall teal; the grey road stays grey) and its saturation scaled;
- things: drawn smaller (``thing_size_scale``), with an outline more often, their colours kept in
  the class's hue band but darker (``thing_value``);
- light: a warm, dim cast over the whole image and more sensor noise.

The original domain consumes no random numbers here, so its scenes are byte-identical to those
generated before domains existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["DOMAINS", "Domain", "get_domain"]


@dataclass(frozen=True)
class Domain:
    """How a scene is painted (the defaults are the original domain)."""

    name: str = "original"
    stuff_hue_shift: float = 0.0  # added to the hue (0..1) of every stuff texture
    stuff_saturation: float = 1.0  # multiplies the saturation of every stuff texture
    thing_size_scale: float = 1.0  # multiplies the size of every large thing (small things keep theirs)
    thing_value: tuple[float, float] = (0.6, 1.0)  # range of a thing's main colour value (HSV)
    outline_probability: float = 0.35  # share of things drawn with an outline along their border
    light: tuple[float, float, float] = (1.0, 1.0, 1.0)  # RGB multipliers of the painted image
    noise: tuple[float, float] = (0.005, 0.03)  # range of the pixel-noise strength (share of 255)

    @property
    def is_original(self) -> bool:
        return self == DOMAINS["original"]

    def recolor_stuff(self, texture: np.ndarray) -> np.ndarray:
        """(h, w, 3) float32 RGB texture with this domain's stuff hue shift and saturation."""
        if self.stuff_hue_shift == 0.0 and self.stuff_saturation == 1.0:
            return texture
        hsv = cv2.cvtColor(np.clip(texture, 0.0, 1.0), cv2.COLOR_RGB2HSV)  # float: H in degrees
        h, s, v = cv2.split(hsv)
        h = (h + np.float32(360.0 * self.stuff_hue_shift)) % np.float32(360.0)
        s = np.clip(s * np.float32(self.stuff_saturation), 0.0, 1.0)
        return cv2.cvtColor(cv2.merge([h, s, v]), cv2.COLOR_HSV2RGB)


DOMAINS: dict[str, Domain] = {
    "original": Domain(),
    "shifted": Domain(name="shifted", stuff_hue_shift=0.5, stuff_saturation=0.8, thing_size_scale=0.6,
                      thing_value=(0.35, 0.65), outline_probability=0.7, light=(1.08, 0.9, 0.72),
                      noise=(0.03, 0.06)),
}


def get_domain(name: str | Domain) -> Domain:
    """A domain by name ("original" or "shifted"), or the domain itself."""
    if isinstance(name, Domain):
        return name
    try:
        return DOMAINS[name]
    except KeyError:
        raise ValueError(f"unknown synthetic domain {name!r}: choose {', '.join(DOMAINS)}") from None
