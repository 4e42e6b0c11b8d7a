"""m2f_core: Mask2Former (Cheng et al., CVPR 2022) in plain PyTorch.

Public API: ``build_model``, ``load_model``, ``save_model``, ``list_presets``, ``get_preset``,
``Mask2FormerConfig``.
"""

from .checkpoint import load_model, save_model
from .config import BackboneConfig, Mask2FormerConfig, get_preset, list_presets
from .model import Mask2Former, build_model

__all__ = [
    "BackboneConfig",
    "Mask2Former",
    "Mask2FormerConfig",
    "build_model",
    "get_preset",
    "list_presets",
    "load_model",
    "save_model",
]
