"""The C kernel of multi-scale deformable attention (forward and backward), built on first use.

``csrc/ms_deform_attn.c`` is plain C (no Python or torch headers), compiled with the system C
compiler (``$CC``, else ``cc``) into ``$M2F_EXT_CACHE`` (default ``~/.cache/m2f_workbench/ext``),
once per source, flags and CPU, in about a second, and called through ``ctypes``. Built with
OpenMP (``-fopenmp``), its libgomp resolves to the copy PyTorch has already loaded, and the queries
are split over torch's own OpenMP threads (``torch.get_num_threads()``); those threads spin for a
while after each of torch's parallel regions, and separate threads of ours would compete with them
for the cores (the kernel took 1.6x longer in the model). Without OpenMP (``M2F_NO_OPENMP=1``, or a
compiler without it) the queries are split over Python threads (ctypes releases the GIL). Where
there is no compiler, or ``M2F_NO_NATIVE=1``, ``available()`` is False and the pure-PyTorch gather
is used: the kernel only makes inference and training faster, it is never needed.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "ms_deform_attn.c"
MAX_HEAD_DIM = 4096  # the kernel keeps one head's D floats on the stack
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-shared", "-fPIC", "-std=c99"]
OPENMP_FLAGS = ["-fopenmp"]  # libgomp: at run time the copy PyTorch has loaded, and its threads

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_pool: ThreadPoolExecutor | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("M2F_EXT_CACHE", Path.home() / ".cache" / "m2f_workbench" / "ext"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def _library_path(compiler: str, flags: list[str]) -> Path:
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, *flags, platform.machine(), _cpu_model()])
                         .encode()).hexdigest()[:16]
    return cache_dir() / f"ms_deform_attn_{key}.so"


def _compile(compiler: str, flags: list[str], path: Path) -> None:
    """Compile into ``path`` atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{result.stderr.strip()}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(force: bool = False) -> Path:
    """Compile the kernel (with OpenMP where the compiler has it, unless ``M2F_NO_OPENMP=1``) and
    return its path. A failed OpenMP build is remembered (a ``.failed`` file) and not retried."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise RuntimeError("no C compiler (set CC or install gcc)")
    if not os.environ.get("M2F_NO_OPENMP"):
        path = _library_path(compiler, FLAGS + OPENMP_FLAGS)
        failed = path.with_suffix(".failed")
        if path.exists() and not force:
            return path
        if force or not failed.exists():
            try:
                _compile(compiler, FLAGS + OPENMP_FLAGS, path)
                return path
            except RuntimeError as e:
                logger.info("building the kernel with OpenMP failed, building it without: %s", e)
                failed.write_text(str(e))
    path = _library_path(compiler, FLAGS)
    if force or not path.exists():
        _compile(compiler, FLAGS, path)
    return path


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("M2F_NO_NATIVE"):
            return None
        try:
            lib = ctypes.CDLL(str(build()))
        except (OSError, RuntimeError) as e:
            logger.warning("deformable-attention C kernel unavailable (%s); using the PyTorch gather", e)
            return None
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        lib.ms_deform_attn_forward.argtypes = [ptr] * 6 + [i64] * 9
        lib.ms_deform_attn_forward.restype = None
        lib.ms_deform_attn_backward.argtypes = [ptr] * 9 + [i64] * 9
        lib.ms_deform_attn_backward.restype = None
        lib.ms_deform_attn_forward_all.argtypes = [ptr] * 6 + [i64] * 8
        lib.ms_deform_attn_forward_all.restype = None
        lib.ms_deform_attn_backward_all.argtypes = [ptr] * 9 + [i64] * 8
        lib.ms_deform_attn_backward_all.restype = None
        lib.ms_deform_attn_threaded.argtypes = []
        lib.ms_deform_attn_threaded.restype = i64
        _lib = lib
        return _lib


def available() -> bool:
    """True when the kernel is built (or builds now) and loads."""
    if not _tried:  # a plain global read after the first call: ``torch.compile`` traces it without a break
        _load()
    return _lib is not None


def _split(total: int) -> list[tuple[int, int]]:
    """Query ranges, one per thread (at least 256 queries each)."""
    threads = max(1, min(torch.get_num_threads(), total // 256))
    bounds = [total * i // threads for i in range(threads + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _parallel(fn, ranges: list[tuple[int, int]]) -> None:
    """Run ``fn(i, q0, q1)`` for every range, on a thread pool (ctypes calls release the GIL)."""
    global _pool
    if len(ranges) == 1:
        fn(0, *ranges[0])
        return
    if _pool is None or _pool._max_workers < len(ranges):
        _pool = ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="m2f-msda")
    list(_pool.map(lambda i: fn(i, *ranges[i]), range(len(ranges))))


def _level_tables(spatial_shapes: list[int], s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, 2) level shapes and (L,) first rows from the flat (H0, W0, H1, W1, ...) list."""
    shapes = torch.tensor(spatial_shapes, dtype=torch.int64).reshape(-1, 2)
    sizes = shapes[:, 0] * shapes[:, 1]
    if int(sizes.sum()) != s:
        raise ValueError(f"spatial shapes {spatial_shapes} do not add up to the {s} rows of value")
    return shapes, torch.cat([shapes.new_zeros(1), sizes.cumsum(0)[:-1]])


def _flat_shapes(spatial_shapes) -> list[int]:
    return [int(v) for hw in spatial_shapes for v in hw]


def _forward(value: torch.Tensor, spatial_shapes: list[int], locations: torch.Tensor,
             weights: torch.Tensor) -> torch.Tensor:
    """The kernel's forward; spatial_shapes flat (H0, W0, H1, W1, ...)."""
    lib = _load()
    n, s, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = locations.shape
    value, locations, weights = value.contiguous(), locations.contiguous(), weights.contiguous()
    shapes, starts = _level_tables(spatial_shapes, s)
    out = torch.empty((n, lq, m, d), dtype=torch.float32)
    sizes = (n, s, lq, m, d, num_levels, num_points)
    pointers = (value.data_ptr(), shapes.data_ptr(), starts.data_ptr(), locations.data_ptr(), weights.data_ptr())
    if lib.ms_deform_attn_threaded():  # on torch's OpenMP threads
        lib.ms_deform_attn_forward_all(*pointers, out.data_ptr(), *sizes, torch.get_num_threads())
    else:
        _parallel(lambda i, q0, q1: lib.ms_deform_attn_forward(*pointers, out.data_ptr(), *sizes, q0, q1),
                  _split(n * lq))
    return out.view(n, lq, m * d)


def _backward(value: torch.Tensor, spatial_shapes: list[int], locations: torch.Tensor, weights: torch.Tensor,
              grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for value, locations and weights."""
    lib = _load()
    n, s, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = locations.shape
    value, locations, weights = value.contiguous(), locations.contiguous(), weights.contiguous()
    grad_out = grad_out.contiguous().float()
    shapes, starts = _level_tables(spatial_shapes, s)
    grad_locations = torch.empty_like(locations)
    grad_weights = torch.empty_like(weights)
    sizes = (n, s, lq, m, d, num_levels, num_points)
    pointers = (value.data_ptr(), shapes.data_ptr(), starts.data_ptr(), locations.data_ptr(), weights.data_ptr(),
                grad_out.data_ptr())
    if lib.ms_deform_attn_threaded():  # on torch's OpenMP threads, one value gradient each
        threads = torch.get_num_threads()
        grad_values = value.new_zeros((threads, *value.shape))
        lib.ms_deform_attn_backward_all(*pointers, grad_values.data_ptr(), grad_locations.data_ptr(),
                                        grad_weights.data_ptr(), *sizes, threads)
        return grad_values.sum(0) if threads > 1 else grad_values[0], grad_locations, grad_weights
    ranges = _split(n * lq)
    grad_values = [torch.zeros_like(value) for _ in ranges]  # one per thread: rows are shared
    _parallel(lambda i, q0, q1: lib.ms_deform_attn_backward(
        *pointers, grad_values[i].data_ptr(), grad_locations.data_ptr(), grad_weights.data_ptr(), *sizes, q0, q1),
        ranges)
    grad_value = grad_values[0]
    for g in grad_values[1:]:
        grad_value += g
    return grad_value, grad_locations, grad_weights


def _save(ctx, value, spatial_shapes, locations, weights) -> None:
    ctx.save_for_backward(value, locations, weights)
    ctx.spatial_shapes = spatial_shapes


def _grads(ctx, grad_out, backward) -> tuple:
    """Autograd's gradients (None for the shapes) from the saved inputs, by ``backward``."""
    value, locations, weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = backward(value, ctx.spatial_shapes, locations, weights, grad_out)
    return grad_value, None, grad_locations, grad_weights


class _MSDeformAttnFunction(torch.autograd.Function):
    """The eager path: a plain autograd function (a custom op's first call would import torch._dynamo,
    about 2.7 s, into every process that runs the model once)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, locations, weights):
        _save(ctx, value, spatial_shapes, locations, weights)
        return _forward(value, spatial_shapes, locations, weights)

    @staticmethod
    def backward(ctx, grad_out):
        return _grads(ctx, grad_out, _backward)


# The same kernel as torch operators, for ``torch.compile``: one opaque node in the graph (a ctypes
# call inside a traced function would break the graph) with its shapes and autograd declared.
_forward_op = torch.library.custom_op("m2f_core::ms_deform_attn", mutates_args=(), device_types="cpu")(_forward)
_backward_op = torch.library.custom_op("m2f_core::ms_deform_attn_backward", mutates_args=(),
                                       device_types="cpu")(_backward)


@_forward_op.register_fake
def _(value, spatial_shapes, locations, weights):
    n, _, m, d = value.shape
    return value.new_empty((n, locations.shape[1], m * d))


@_backward_op.register_fake
def _(value, spatial_shapes, locations, weights, grad_out):
    return torch.empty_like(value), torch.empty_like(locations), torch.empty_like(weights)


_forward_op.register_autograd(lambda ctx, grad_out: _grads(ctx, grad_out, _backward_op),
                              setup_context=lambda ctx, inputs, output: _save(ctx, *inputs))


def ms_deform_attn_native(value: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                          sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Same inputs and output as ``ms_deform_attn_core`` (float32, CPU), with gradients."""
    if not available():
        raise RuntimeError("the deformable-attention C kernel is not available")
    if value.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"head size {value.shape[-1]} is above the C kernel's {MAX_HEAD_DIM}")
    shapes = _flat_shapes(spatial_shapes)
    if torch.compiler.is_compiling():
        return _forward_op(value, shapes, sampling_locations, attention_weights)
    return _MSDeformAttnFunction.apply(value, shapes, sampling_locations, attention_weights)
