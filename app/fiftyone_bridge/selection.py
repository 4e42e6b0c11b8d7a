"""Choose what to correct: rank a view's samples by what a correction of each would teach the model, tag the top N.

- ``uncertainty``: the mean per-pixel uncertainty of the model's prediction (``Prediction.uncertainty``:
  1 - the best query's class x mask probability at each pixel), which ``predict`` stores as
  ``<prefix>_uncertainty``; the most uncertain first. Needs predictions only, no ground truth: it is the
  one to use before anything is labelled.
- ``uniqueness``: FiftyOne Brain's ``compute_uniqueness`` on embeddings from the model's own backbone (its
  last stage, average-pooled), so that it runs offline (Brain's default embedding model is a download);
  the most unusual images first.
- ``mistakenness``: FiftyOne Brain's ``compute_mistakenness`` of the predicted instances against the
  ground-truth instances: where confident predictions disagree with the labels, the labels are the likely
  mistake; needs ground truth and instance predictions with scores.

Every ranked sample gets its score in ``rank_<by>`` (sort the App by it, highest first); the top N get
the tag (``to-correct`` by default; it is taken off the view's other samples, so that it names this
ranking); the ranking is recorded in ``dataset.info["m2f_rankings"][by]``. How much choosing by
uncertainty gains over choosing at random is measured by ``tools/selection_benchmark.py``
(``docs/finetuning.md``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fiftyone as fo
import numpy as np

from . import GT, PRED, BridgeError, fields
from .core import check_prefix

__all__ = ["METHODS", "RANKINGS_KEY", "RankReport", "image_embeddings", "rank_samples", "score_field", "top_ids"]

METHODS = ("uncertainty", "uniqueness", "mistakenness")
RANKINGS_KEY = "m2f_rankings"
DEFAULT_TAG = "to-correct"

Progress = Callable[[int, int], None]


@dataclass
class RankReport:
    """What ``rank_samples`` did: the method, the score field, the tag and the top samples with their scores."""

    by: str
    field: str
    tag: str
    samples: int
    tagged: int
    top: list[dict[str, Any]] = field(default_factory=list)  # {"id", "file", "score"}, best first
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_field(by: str) -> str:
    """The sample field holding a ranking's score (higher: correct it sooner)."""
    _check_method(by)
    return f"rank_{by}"


def _check_method(by: str) -> None:
    if by not in METHODS:
        raise BridgeError(f"unknown ranking {by!r}: choose one of {', '.join(METHODS)}")


def top_ids(ids: Sequence[str], scores: Sequence[float], top: int) -> list[str]:
    """The ``top`` ids of highest score; ties keep the view's order (a stable sort), so a ranking repeats."""
    order = sorted(range(len(ids)), key=lambda i: -float(scores[i]))
    return [ids[i] for i in order[:max(0, int(top))]]


# --------------------------------------------------------------------------------------------
# scores


def _uncertainty(view: fo.Dataset | fo.DatasetView, prefix: str) -> list[float]:
    """``<prefix>_uncertainty`` of every sample (written by ``predict``)."""
    name = fields(prefix)["uncertainty"]
    if not view.has_field(name):
        raise BridgeError(f"no {name} field: run the model first (predict --prefix {prefix})")
    values = view.values(name)
    missing = sum(v is None for v in values)
    if missing:
        raise BridgeError(f"{missing} of {len(values)} samples have no {name}: run the model on them first "
                          f"(predict --prefix {prefix})")
    return [float(v) for v in values]


def image_embeddings(paths: Sequence[str | Path], weights: str | None = None, device: str | None = None,
                     callback: Progress | None = None) -> np.ndarray:
    """(N, D) embeddings of images from the model's backbone: its last stage, average-pooled over space.

    The model that will be fine-tuned judges which images are alike, and nothing is downloaded."""
    import torch

    from m2f_core.images import load_image
    from m2f_core.predictor import Predictor

    predictor = Predictor(weights, device=device)
    backbone = predictor.model.backbone
    out = []
    with torch.inference_mode():
        for done, path in enumerate(paths, start=1):
            x, _ = predictor.preprocess(load_image(path))
            stages = backbone.forward_features(x)
            last = stages[sorted(stages)[-1]]  # res5: the deepest, most semantic stage
            out.append(last.mean(dim=(2, 3))[0].float().cpu().numpy())
            if callback is not None:
                callback(done, len(paths))
    return np.stack(out) if out else np.zeros((0, 0), np.float32)


def _uniqueness(view: fo.Dataset | fo.DatasetView, name: str, weights: str | None, device: str | None,
                callback: Progress | None) -> list[float]:
    import fiftyone.brain as fob

    if len(view) < 2:
        raise BridgeError("uniqueness compares samples with each other: the view needs at least 2 samples")
    embeddings = image_embeddings(view.values("filepath"), weights, device, callback)
    fob.compute_uniqueness(view, uniqueness_field=name, embeddings=embeddings, progress=False)
    return [float(v) for v in view.values(name)]


def _mistakenness(view: fo.Dataset | fo.DatasetView, name: str, prefix: str, gt: str) -> list[float]:
    import fiftyone.brain as fob

    pred_field, gt_field = fields(prefix)["instances"], fields(gt)["instances"]
    for needed, what in ((pred_field, f"run the model first (predict --prefix {prefix})"),
                         (gt_field, "import a dataset with ground truth")):
        if not view.has_field(needed):
            raise BridgeError(f"mistakenness needs {needed}: {what}")
    fob.compute_mistakenness(view, pred_field, gt_field, mistakenness_field=name,
                             missing_field=f"{name}_missing", spurious_field=f"{name}_spurious", progress=False)
    return [float(v or 0.0) for v in view.values(name)]


# --------------------------------------------------------------------------------------------
# rank and tag


def rank_samples(view: fo.Dataset | fo.DatasetView, by: str = "uncertainty", top: int = 8, tag: str = DEFAULT_TAG,
                 prefix: str = PRED, gt: str = GT, weights: str | None = None, device: str | None = None,
                 callback: Progress | None = None) -> RankReport:
    """Score every sample of ``view`` by ``by`` (one of ``METHODS``), store the score in ``rank_<by>`` and tag
    the ``top`` highest with ``tag`` (taken off the view's other samples first).

    ``prefix``: the predictions ranked (their uncertainty, their instances); ``gt``: the ground truth
    (mistakenness); ``weights`` / ``device``: the model whose backbone embeds the images (uniqueness;
    default: the weights of the ``prefix`` predictions, else the built-in model).
    """
    _check_method(by)
    check_prefix(prefix)
    check_prefix(gt)
    if top < 1:
        raise BridgeError(f"--top must be at least 1, got {top}")
    if not tag or not str(tag).strip():
        raise BridgeError("the tag must not be empty")
    if len(view) == 0:
        raise BridgeError("the view is empty: nothing to rank")
    ds = view._dataset if isinstance(view, fo.DatasetView) else view
    name = score_field(by)
    ids = [str(i) for i in view.values("id")]
    if by == "uncertainty":
        scores = _uncertainty(view, prefix)
        _store(ds, ids, name, scores)
    elif by == "uniqueness":
        if weights is None:
            weights = ds.info.get("m2f", {}).get("predictions", {}).get(prefix, {}).get("weights")
        scores = _uniqueness(view, name, None if weights in (None, "builtin") else weights, device, callback)
    else:
        scores = _mistakenness(view, name, prefix, gt)
    chosen = top_ids(ids, scores, top)
    view.untag_samples(tag)
    ds.select(chosen).tag_samples(tag)
    by_id = dict(zip(ids, scores))
    paths = dict(zip(ids, view.values("filepath")))
    report = RankReport(by=by, field=name, tag=tag, samples=len(ids), tagged=len(chosen),
                        top=[{"id": i, "file": Path(paths[i]).name, "score": round(by_id[i], 6)} for i in chosen])
    if len(chosen) < top:
        report.note = f"the view has only {len(ids)} samples: all are tagged"
    info = ds.info
    info.setdefault(RANKINGS_KEY, {})[by] = {"field": name, "tag": tag, "top": int(top), "prefix": prefix,
                                             "samples": len(ids), "tagged": chosen,
                                             "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    ds.info = info
    ds.save()
    return report


def _store(ds: fo.Dataset, ids: list[str], name: str, scores: list[float]) -> None:
    """Write one score per sample into the float field ``name``."""
    if not ds.has_sample_field(name):
        ds.add_sample_field(name, fo.FloatField)
    ds.select(ids, ordered=True).set_values(name, [float(s) for s in scores])
