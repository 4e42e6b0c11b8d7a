"""Keys for weights that inference derives once (folded, packed, rescaled) and caches between calls.

A key holds each source tensor's storage address and version counter, so a new tensor or an
in-place update (an optimizer step, ``load_state_dict``) invalidates the cached copy. Inference
tensors (parameters created or moved under ``inference_mode``) keep no version counter; they count
as version -1 (found on CUDA, where ``.to(device)`` under ``inference_mode`` copies).
"""

from __future__ import annotations

import torch


def version_key(*tensors: torch.Tensor | None) -> tuple[tuple[int, int], ...]:
    """(address, version) of every tensor given (``None`` entries skipped)."""
    return tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors if t is not None)
