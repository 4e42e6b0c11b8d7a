"""m2f_core: Mask2Former (Cheng et al., CVPR 2022) in plain PyTorch.

Public API: ``load_model``, ``save_model``, ``build_model``, ``Predictor`` / ``Prediction``,
``prepare_for_inference`` (the explicit conversion for fast inference), ``Mask2FormerConfig``,
``list_presets``, ``get_preset`` and the result types. Names are imported on first use, so
command-line tools that need no network (metrics, data) start without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_model": ".checkpoint",
    "save_model": ".checkpoint",
    "BackboneConfig": ".config",
    "Mask2FormerConfig": ".config",
    "get_preset": ".config",
    "list_presets": ".config",
    "Mask2Former": ".model",
    "build_model": ".model",
    "Predictor": ".predictor",
    "prepare_for_inference": ".accelerate",
    "Prediction": ".prediction",
    "PanopticResult": ".structures",
    "InstanceResult": ".structures",
    "SemanticResult": ".structures",
    "Segment": ".structures",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
