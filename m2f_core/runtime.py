"""Process-wide settings that make CPU inference faster: opt-in, from programs only.

``tune_process()`` is what a program (the predict / evaluate CLIs, ``launch.py``, the trainer, the
benchmark) calls once at start; nothing in the library calls it, and no constructor changes the
process (a ``Predictor`` in someone else's program leaves their allocator alone).

glibc's ``malloc`` serves blocks above a (self-adjusting) threshold with a fresh ``mmap`` and gives
them back with ``munmap`` on free. PyTorch allocates every activation anew, so a forward pass maps
and unmaps the same few hundred MB each time and pays a page fault for every 4 KB page it touches:
about 29 000 faults and 8 % of a Mask2Former R50 forward at 384x384 on a 2-core machine. Raising
the mmap threshold and the trim threshold keeps freed blocks in the heap for the next pass; what
is resident after a pass is then what the peak needed anyway, so peak RSS does not grow.
``M2F_STOCK_MALLOC=1`` leaves malloc as it is. Other allocators (jemalloc, tcmalloc via
``LD_PRELOAD``) and other C libraries are left alone: the call then does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

import torch

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # largest int: never trim the top of the heap after a free

_tuned: bool | None = None


def tune_malloc() -> bool:
    """Keep freed activation memory in the heap for reuse (glibc only). True when applied; idempotent."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("M2F_STOCK_MALLOC") or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "jemalloc" in os.environ.get("LD_PRELOAD", "") or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _tuned = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError) as e:
        logger.debug("mallopt unavailable: %s", e)
    return _tuned


def tune_process() -> None:
    """Apply this module's process-wide settings (today: ``tune_malloc``). Idempotent; for programs'
    entry points, never for library code."""
    tune_malloc()


def malloc_tuned() -> bool:
    """Whether ``tune_malloc`` has applied its settings in this process."""
    return bool(_tuned)


def compile_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` (inductor) with freezing for this compilation only (inductor's global config is
    left as it is): the weights become constants, so inductor folds the frozen norms and prepacks the
    convolution and linear weights for oneDNN.

    Takes the plain model (not ``prepare_for_inference``'s: inductor does its own folding and packing
    from the official graph). An optional mode measured by the benchmark's ``--modes compile``; call
    the result under ``torch.inference_mode()`` (freezing assumes no gradients). The first call
    compiles (minutes on a small CPU); later calls at the same input size reuse the graph.
    """
    from .ops import native

    native.available()  # build / load the C kernel now, outside the traced region
    return torch.compile(model, options={"freezing": True})
