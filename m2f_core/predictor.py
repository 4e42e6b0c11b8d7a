"""Run a model once per image; derive panoptic, instance and semantic results from the cached outputs.

``Predictor.predict(image)`` resizes like the official test pipeline (shortest edge to
``min_size``, longest at most ``max_size``, PIL bilinear), normalises, pads to the size
divisibility, runs the network once and returns a ``Prediction`` (``m2f_core.prediction``). The
``Prediction`` keeps the raw outputs; each task is computed on demand with the official
post-processing and cached, so switching task never runs the network again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import Mask2FormerConfig
from .images import load_image
from .model import Mask2Former
from .prediction import Prediction

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def resize_shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Output (h, w) of Detectron2's ``ResizeShortestEdge`` for one short-edge length."""
    scale = short / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return max(1, int(newh + 0.5)), max(1, int(neww + 0.5))  # extreme aspect ratios keep >= 1 px


class Predictor:
    """One model, one forward pass per image. ``Predictor(source)`` accepts anything ``load_model`` does;
    ``Predictor()`` uses the built-in model (synthetic classes only)."""

    BACKENDS = ("torch", "onnxruntime")

    def __init__(self, model_or_source: Mask2Former | str | Path | None = None,
                 device: str | torch.device | None = None, min_size: int | None = None, max_size: int | None = None,
                 config=None, backend: str = "torch", compile: bool = False):
        """``backend="onnxruntime"`` runs the network exported to ONNX (CPU; exported once and cached,
        or a ``.onnx`` file given directly); post-processing is the same either way.

        ``compile=True`` runs the network through ``torch.compile`` (``runtime.compile_for_inference``):
        since the eager path calls the same oneDNN kernels it is about as fast per image on a 2-core
        CPU (up to ~10 % faster for Swin), and the first image of each new size compiles for one to
        three minutes, so it can pay off only for folders of many same-size images, not for the app.

        The torch backend runs ``accelerate.prepare_for_inference(model)``, a converted copy made from
        the weights as they are at construction (the model given is left as it is, in eval mode): to
        predict with other weights, build a new ``Predictor``. Process-wide tuning (malloc) is the
        program's choice: ``m2f_core.runtime.tune_process()``; the constructor changes nothing global."""
        from .checkpoint import load_model

        if backend not in self.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(self.BACKENDS)}")
        if compile and backend != "torch":
            raise ValueError("compile=True needs the torch backend")
        if device is None:
            device = "cuda" if torch.cuda.is_available() and backend == "torch" else "cpu"
        self.device = torch.device(device)
        self.backend = backend
        if backend == "onnxruntime":
            from .onnx_backend import load_onnx_model

            if self.device.type != "cpu":
                raise ValueError("the onnxruntime backend runs on the CPU (use --device cpu)")
            model = load_onnx_model(model_or_source, config=config)
        elif isinstance(model_or_source, torch.nn.Module):
            model = model_or_source
        else:
            model = load_model(model_or_source, device=self.device, config=config)
        if getattr(model, "config", None) is None:
            raise ValueError("the model has no config: build it with build_model(config) or load_model(...)")
        self.model = model.to(self.device).eval()  # the model as given or loaded (official names)
        # what runs: for torch, the model converted for inference (folded / packed weights made from
        # the weights as they are now; a Predictor never sees later changes to ``model``'s weights:
        # build a new one), or the plain model through torch.compile, which folds and packs by itself
        self._network = self.model
        if compile:
            from .runtime import compile_for_inference

            self._network = compile_for_inference(self.model)
        elif backend == "torch":
            from .accelerate import prepare_for_inference

            self._network = prepare_for_inference(self.model)
        self.config: Mask2FormerConfig = model.config
        self.min_size = min_size or self.config.min_size_test
        self.max_size = max_size or self.config.max_size_test
        self._mean = torch.tensor(self.config.pixel_mean, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(self.config.pixel_std, device=self.device).view(3, 1, 1)

    @property
    def class_names(self) -> list[str]:
        return self.config.class_names

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(1, 3, Hp, Wp) normalised, zero-padded input and the resized (h, w) inside it."""
        h, w = image.shape[:2]
        nh, nw = resize_shortest_edge_size(h, w, self.min_size, self.max_size)
        if (nh, nw) != (h, w):
            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        x = torch.tensor(image, device=self.device).permute(2, 0, 1).float()
        x = (x - self._mean) / self._std
        d = self.config.size_divisibility
        ph, pw = -(-nh // d) * d, -(-nw // d) * d
        x = F.pad(x, (0, pw - nw, 0, ph - nh), value=0.0)  # padding is 0 after normalisation, as official
        return x[None], (nh, nw)

    @torch.inference_mode()
    def predict(self, image) -> Prediction:
        """One forward pass: ``image`` is a path, bytes, a PIL image or an (H, W[, C]) array."""
        t0 = time.perf_counter()
        rgb = load_image(image)
        x, input_size = self.preprocess(rgb)
        t1 = time.perf_counter()
        out = self._network(x, return_aux=False)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        pred = Prediction(rgb, out["pred_logits"][0], out["pred_masks"][0], tuple(x.shape[-2:]), input_size,
                          self.config, timings={"preprocess": t1 - t0, "model": t2 - t1})
        return pred.prepare()

    def predict_many(self, images: Iterable, progress: bool = True) -> Iterator[tuple[object, Prediction | Exception]]:
        """(source, Prediction or the error for that image) for each image, with a progress bar."""
        from tqdm import tqdm

        items = list(images)
        for item in tqdm(items, desc="predict", unit="img", disable=not progress):
            try:
                yield item, self.predict(item)
            except ValueError as e:  # unreadable or odd image: report it, go on with the others
                yield item, e


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder (recursive), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
