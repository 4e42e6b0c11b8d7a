"""ONNX export of the network and an onnxruntime backend that stands in for the PyTorch model.

    python -m m2f_core.onnx_backend export --weights SOURCE --out model.onnx [--size HxW]

``export_onnx(model, path)`` writes one self-describing file: the graph takes the normalised, padded
batch ``images`` (B, 3, H, W) and returns ``pred_logits`` (B, Q, K+1) and ``pred_masks``
(B, Q, H/4, W/4); batch, height and width are dynamic (any multiple of 32), and the model's config
(class names, normalisation, thresholds) is stored as JSON in the ONNX ``metadata_props``.
``OnnxModel(path)`` runs such a file with onnxruntime on the CPU and is called like the network
(``model(x, return_aux=False)``, ``.config``), so the ``Predictor`` can use either.
``load_onnx_model(source)`` takes a ``.onnx`` file, or any weights ``load_model`` accepts and
exports them once into a cache keyed by the weights, the config and the network code.

Why the TorchScript exporter (``dynamo=False``): the ``torch.export`` (dynamo) exporter of
torch 2.13 does export this network, but with dynamic H, W its symbolic shape reasoning (sympy)
over Swin's window padding takes ~8 minutes even for a tiny model, and it silently specialised
values to the example size (a batch of 1, constants derived from H, W). The traced export takes
seconds and, after three small exact rewrites in the model code (no ``int()`` on shapes, no
slice assignment in Swin's shift mask, no ``linspace``), is correct at every size we test
(tests/test_onnx_backend.py). The deformable attention is exported through its ``grid_sample``
reference (ONNX GridSample, opset 16+), not the C kernel or the fused gather (``embedding_bag``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cli import Parser, parse_size
from .config import Mask2FormerConfig
from .errors import first_line

FORMAT = "m2f_core.onnx/1"  # bump when the graph's inputs, outputs or metadata change
META_FORMAT = "m2f_format"
META_CONFIG = "m2f_config"
OPSET = 17  # GridSample needs 16
INPUT_NAME = "images"
OUTPUT_NAMES = ("pred_logits", "pred_masks")
DEFAULT_SIZE = (256, 256)
# the files whose code is traced into the graph: a change to any of them invalidates cached exports
_NETWORK_FILES = ("model.py", "layers.py", "pixel_decoder.py", "transformer_decoder.py",
                  "backbone/resnet.py", "backbone/swin.py", "ops/ms_deform_attn.py", "ops/onednn.py")


class OnnxBackendError(ValueError):
    """A model that cannot be exported or an ONNX file that cannot be used; the message says why."""


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxBackendError("onnxruntime is not installed: pip install 'm2f-workbench[onnx]'") from None
    return onnxruntime


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise OnnxBackendError("the onnx package is needed to export: pip install 'm2f-workbench[onnx]'") from None
    return onnx


# --------------------------------------------------------------------------------------------
# export

class _InferenceOutputs(nn.Module):
    """The network as a function of one tensor to two tensors (the dict and aux list do not export)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images, return_aux=False)
        return out["pred_logits"], out["pred_masks"]


@contextlib.contextmanager
def reference_deform_attn(model: nn.Module) -> Iterator[None]:
    """Run every ``MSDeformAttn`` with the ``grid_sample`` reference (exportable), restored afterwards."""
    from .ops.ms_deform_attn import MSDeformAttn, ms_deform_attn_core

    saved = [(m, m.core) for m in model.modules() if isinstance(m, MSDeformAttn)]
    try:
        for m, _ in saved:
            m.core = ms_deform_attn_core
        yield
    finally:
        for m, core in saved:
            m.core = core


def _check_size(size: Sequence[int], divisor: int) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) <= 0 or int(s) % divisor for s in size):
        raise OnnxBackendError(f"example size {tuple(size)} must be two positive multiples of {divisor}")
    return int(size[0]), int(size[1])


def export_onnx(model: nn.Module, path: str | Path, example_size: tuple[int, int] = DEFAULT_SIZE,
                dynamic: bool = True) -> Path:
    """Write ``model`` (a ``Mask2Former`` with ``.config``) to ``path`` as ONNX; returns ``path``.

    ``dynamic=True`` leaves batch, height and width free (one file serves every input size);
    ``dynamic=False`` fixes them to (1, 3, *example_size). The file is written atomically (a reader
    never sees half of it) and carries the config as JSON in its metadata.
    """
    onnx = _import_onnx()
    from .atomic import atomic_write

    config: Mask2FormerConfig | None = getattr(model, "config", None)
    if config is None:
        raise OnnxBackendError("the model has no config: build it with build_model(config) or load_model(...)")
    h, w = _check_size(example_size, config.size_divisibility)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # trace a float32 CPU model (the graph runs on the CPU); copy only if the caller's is elsewhere
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        import copy

        model = copy.deepcopy(model).to("cpu", torch.float32)
    was_training = model.training
    model.eval()
    example = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    "pred_logits": {0: "batch"},
                    "pred_masks": {0: "batch", 2: "height_4", 3: "width_4"}} if dynamic else None
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as tmp:
            raw = Path(tmp) / "model.onnx"
            with reference_deform_attn(model), torch.no_grad(), warnings.catch_warnings():
                # TracerWarning: shapes become graph values (checked at several sizes by the tests);
                # DeprecationWarning: the TorchScript exporter (see the module docstring for why)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # a static export's note
                torch.onnx.export(_InferenceOutputs(model), (example,), str(raw), dynamo=False,
                                  opset_version=OPSET, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                  dynamic_axes=dynamic_axes, do_constant_folding=True)
            proto = onnx.load(str(raw))
            meta = {META_FORMAT: FORMAT, META_CONFIG: json.dumps(config.to_dict()),
                    "m2f_dynamic": json.dumps(dynamic), "m2f_example_size": json.dumps([h, w]),
                    "m2f_torch_version": torch.__version__}
            del proto.metadata_props[:]
            for key, value in meta.items():
                proto.metadata_props.add(key=key, value=value)
            proto.producer_name = "m2f_core.onnx_backend"
            atomic_write(path, lambda p: onnx.save(proto, p))
    except OnnxBackendError:
        raise
    except Exception as e:  # the exporter raises many types; one line with the cause is what helps
        raise OnnxBackendError(f"ONNX export failed: {type(e).__name__}: {first_line(e)}") from e
    finally:
        model.train(was_training)
    return path


# --------------------------------------------------------------------------------------------
# the onnxruntime model

class OnnxModel:
    """An exported network run by onnxruntime (CPU), called like ``Mask2Former``.

    ``model(images, return_aux=False)`` -> {"pred_logits", "pred_masks", "aux_outputs": []}: the
    export holds the final prediction only, so ``aux_outputs`` is always empty. ``.config`` is the
    ``Mask2FormerConfig`` stored in the file. ``eval()`` and ``to()`` return the model unchanged so
    that code written for an ``nn.Module`` works.
    """

    def __init__(self, path: str | Path, num_threads: int | None = None):
        ort = _import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxBackendError(f"ONNX file not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its constant-folding notes are not the user's concern
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's InvalidProtobuf, Fail, ...: all mean "not a usable model"
            raise OnnxBackendError(f"{self.path}: not a readable ONNX model ({first_line(e)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(META_FORMAT) != FORMAT or META_CONFIG not in meta:
            found = meta.get(META_FORMAT)
            raise OnnxBackendError(
                f"{self.path}: not exported by m2f_core.onnx_backend (metadata {META_FORMAT}={found!r}, expected "
                f"{FORMAT!r}); export it with: python -m m2f_core.onnx_backend export --weights W --out FILE"
            )
        try:
            self.config = Mask2FormerConfig.from_dict(json.loads(meta[META_CONFIG]))
        except (ValueError, TypeError) as e:
            raise OnnxBackendError(f"{self.path}: unreadable config in the metadata ({first_line(e)})") from None
        self.metadata = dict(meta)
        self.input_shape = list(self.session.get_inputs()[0].shape)  # ints where the export fixed them

    @property
    def size_divisibility(self) -> int:
        return self.config.size_divisibility

    def __call__(self, images: torch.Tensor, return_aux: bool = False) -> dict[str, Any]:
        """images: (B, 3, H, W) normalised, H and W multiples of ``size_divisibility``."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
            raise ValueError(f"expected images of shape (B, 3, H, W), got {shape}")
        d = self.size_divisibility
        if images.shape[2] % d or images.shape[3] % d:
            raise ValueError(f"image height and width must be multiples of {d}, got {tuple(images.shape[2:])}")
        fixed = [(i, n) for i, n in enumerate(self.input_shape) if isinstance(n, int)]
        if any(images.shape[i] != n for i, n in fixed):
            raise ValueError(f"{self.path.name} was exported for input shape {tuple(self.input_shape)} only, "
                             f"got {tuple(images.shape)}; export it with dynamic=True")
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        logits, masks = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return {"pred_logits": torch.from_numpy(logits), "pred_masks": torch.from_numpy(masks), "aux_outputs": []}

    forward = __call__

    def eval(self) -> OnnxModel:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OnnxModel:
        """A no-op (the session runs on the CPU; the Predictor refuses other devices for this backend)."""
        return self

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, config={self.config.name!r})"


# --------------------------------------------------------------------------------------------
# load (and export once into a cache)

def default_cache_dir() -> Path:
    """``$M2F_ONNX_CACHE`` or ``~/.cache/m2f_workbench/onnx``."""
    env = os.environ.get("M2F_ONNX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "m2f_workbench" / "onnx"


def _network_code_digest() -> str:
    root = Path(__file__).parent
    h = hashlib.sha256()
    for name in _NETWORK_FILES:
        h.update(name.encode() + b"\0" + (root / name).read_bytes())
    return h.hexdigest()


def _source_fingerprint(source: str | Path | None) -> str:
    """What identifies the weights: the resolved path with the size and mtime of each file, or the hub id."""
    from .checkpoint import BUILTIN_WEIGHTS

    path = BUILTIN_WEIGHTS if source is None or str(source) == "builtin" else Path(source)
    if not path.exists():
        return f"id:{source}"  # a hub id: load_model resolves (and reports) it
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    stats = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return f"path:{path.resolve()}|" + "|".join(stats)


def _config_fingerprint(config: Any) -> str:
    if config is None:
        return "none"
    if isinstance(config, Mask2FormerConfig):
        return json.dumps(config.to_dict(), sort_keys=True)
    if isinstance(config, dict):
        return json.dumps(config, sort_keys=True)
    path = Path(config)
    return f"file:{path.resolve()}:{path.stat().st_mtime_ns}" if path.is_file() else f"preset:{config}"


def _module_fingerprint(model: nn.Module) -> str:
    """Digest of a model's weights and config (for a module passed in rather than a weights source)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(_config_fingerprint(getattr(model, "config", None)).encode())
    return "module:" + h.hexdigest()


def cached_onnx_path(fingerprint: str, cache_dir: str | Path | None = None) -> Path:
    """Where the export of weights with this fingerprint lives; the key also holds the export format,
    the torch version and the network code, so a change to any of them exports again."""
    parts = [FORMAT, str(OPSET), torch.__version__, _network_code_digest(), fingerprint]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"{key}.onnx"


def load_onnx_model(source: str | Path | nn.Module | OnnxModel | None = None, cache_dir: str | Path | None = None,
                    config: Any = None, num_threads: int | None = None) -> OnnxModel:
    """An ``OnnxModel`` from a ``.onnx`` file, a ``Mask2Former`` module, or any weights ``load_model`` accepts.

    Weights (``None`` = built-in) are exported once to ``cache_dir`` (default ``default_cache_dir()``)
    under a key of the weights (path, sizes, mtimes), ``config`` and the network code, then loaded;
    later calls load the cached file. ``config`` is for weights only: an ``.onnx`` file carries its own.
    """
    _import_onnxruntime()  # fail early and clearly, before any export work
    if isinstance(source, OnnxModel):
        return source
    if isinstance(source, (str, Path)) and str(source).lower().endswith(".onnx"):
        if config is not None:
            raise OnnxBackendError(f"{source}: an .onnx file carries its own config; do not pass config=")
        return OnnxModel(source, num_threads=num_threads)
    if isinstance(source, nn.Module):
        fingerprint = _module_fingerprint(source)
    else:
        fingerprint = _source_fingerprint(source) + "|config:" + _config_fingerprint(config)
    path = cached_onnx_path(fingerprint, cache_dir)
    if path.is_file():
        try:
            return OnnxModel(path, num_threads=num_threads)
        except OnnxBackendError:
            pass  # a damaged cache entry: export again over it
    if isinstance(source, nn.Module):
        model = source
    else:
        from .checkpoint import load_model

        model = load_model(source, config=config)
    export_onnx(model, path)
    return OnnxModel(path, num_threads=num_threads)


# --------------------------------------------------------------------------------------------
# command line

PROG = "python -m m2f_core.onnx_backend"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Export Mask2Former to ONNX for the onnxruntime backend.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("export", help="export weights to a self-describing .onnx file",
                       description="Export weights (anything load_model accepts) to one .onnx file with "
                                   "dynamic batch, height and width; the config travels in its metadata. "
                                   "Then run it once next to PyTorch and print the largest difference.")
    p.add_argument("--weights", default=None,
                   help="weights folder, .pkl/.pth file, Hugging Face folder or hub id (default: built-in)")
    p.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    p.add_argument("--size", type=functools.partial(parse_size, allow_square=False), default=DEFAULT_SIZE,
                   help="example input HxW used for tracing and the check (default 256x256)")
    p.add_argument("--config", default=None, help="preset name or config JSON, for weights that need one")
    p.add_argument("--static", action="store_true", help="fix the input to 1x3xHxW instead of dynamic sizes")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch after the export")
    return parser


def compare_with_torch(model: nn.Module, onnx_model: OnnxModel, size: tuple[int, int],
                       seed: int = 0) -> dict[str, float]:
    """Largest absolute differences of the two outputs on one random input of ``size``."""
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model(x, return_aux=False)
    out = onnx_model(x)
    return {k: float((out[k] - ref[k]).abs().max()) for k in OUTPUT_NAMES}


def _run_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_model

    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise OnnxBackendError(f"--out must end in .onnx, got {str(out)!r}")
    if out.is_dir():
        raise OnnxBackendError(f"--out {str(out)!r} is a folder; give a file name ending in .onnx")
    model = load_model(args.weights, config=args.config)
    print(f"exporting {model.config.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters) "
          f"to {out} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    export_onnx(model, out, example_size=args.size, dynamic=not args.static)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"out": str(out), "bytes": out.stat().st_size, "export_seconds": round(seconds, 2),
                              "dynamic": not args.static}
    if not args.no_check:
        diffs = compare_with_torch(model, OnnxModel(out), args.size)
        result["max_abs_diff"] = diffs
        result["check_size"] = list(args.size)
    print(json.dumps(result, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0, or 2 on a bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return _run_export(args)
    except ValueError as e:  # OnnxBackendError, CheckpointError and config errors are all ValueErrors
        message = first_line(e).replace("\r", " ")
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
