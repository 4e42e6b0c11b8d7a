"""Panoptic quality as a FiftyOne evaluation: a detection evaluation method whose matching is panopticapi's.

A panoptic annotation is a ``Detections`` field (``convert``), so panoptic evaluation plugs into FiftyOne's
own detection evaluation API the way its COCO / Open Images methods do: ``evaluate_panoptic`` runs
``evaluate_detections(method=PanopticEvaluationConfig)``, the run is stored under its eval key
(``list_evaluations``, ``get_evaluation_info``, ``load_evaluation_results``, ``delete_evaluation``) and
FiftyOne writes what it writes for every detection evaluation:

- per sample ``<key>_tp``, ``<key>_fp``, ``<key>_fn``; this method adds ``<key>_pq``, ``<key>_sq``, ``<key>_rq``;
- per segment (both fields) ``<key>`` = ``"tp"`` / ``"fp"`` / ``"fn"``, ``<key>_id`` (the matched segment's
  id, ``""`` when none) and ``<key>_iou``. Segments PQ does not count get ``"crowd"`` (a ground-truth crowd
  region) or ``"ignored"`` (a prediction more than half on void + the crowd region of its class, or of a class
  the dataset lacks) and no id. A prediction overlapping a ground-truth segment of another class with
  IoU > 0.5 is a wrong class: the prediction (FP) gets ``<key>_cls_gt`` = the ground truth's class, the ground
  truth (FN) ``<key>_cls_pred``, and both get each other's id and the IoU.

The matching is ``m2f_core.metrics.panoptic.pq_match_single`` (the one behind ``python -m m2f_core.evaluate
panoptic``), so PQ / SQ / RQ equal it. ``PanopticResults`` is a ``DetectionResults``: FiftyOne's
``report`` / ``confusion_matrix`` / ``use_subset`` and its Model Evaluation panel work on it (the run's type
is ``"detection"``, its method ``"panoptic"``); PQ / SQ / RQ, things / stuff, are in ``metrics()`` and in the
results' custom metrics (shown and compared by the panel); ``report()`` / ``print_report()`` give the per-class
table, ``compare(other)`` / ``print_compare(other)`` two runs side by side. The evaluation saves a view per usual
question (``saved_views``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fiftyone as fo
import fiftyone.core.fields as fof
import numpy as np
from fiftyone import ViewField as F
from fiftyone.utils.eval.detection import DetectionEvaluation, DetectionEvaluationConfig, DetectionResults

from m2f_core.data.fileio import image_size
from m2f_core.metrics.panoptic import PQMatch, PQStat, pq_match_single, pq_results

from . import BridgeError
from .convert import ClassIndex, full_mask

__all__ = ["PanopticEvaluation", "PanopticEvaluationConfig", "PanopticResults", "SampleMatch", "evaluate_panoptic",
           "match_sample", "metric_categories", "saved_views"]

HEADLINE = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")
LOW_IOU = 0.6


def evaluate_panoptic(samples: fo.Dataset | fo.DatasetView, pred_field: str, gt_field: str,
                      eval_key: str | None = None, categories: list[dict] | None = None,
                      progress: bool | None = None) -> PanopticResults:
    """PQ of ``pred_field`` against ``gt_field`` (panoptic ``Detections``), stored under ``eval_key`` if given.

    ``categories``: the dataset's class list (``id``, ``name``, ``isthing``); default ``dataset.info``'s.
    """
    if categories is None:
        from .core import categories as dataset_categories

        categories = dataset_categories(samples)
    cats = [{"id": int(c["id"]), "name": str(c["name"]), "isthing": bool(c.get("isthing", True))} for c in categories]
    return samples.evaluate_detections(pred_field, gt_field=gt_field, eval_key=eval_key,
                                       method=PanopticEvaluationConfig, categories=cats, progress=progress)


class PanopticEvaluationConfig(DetectionEvaluationConfig):
    """Configuration of a panoptic evaluation: the two fields and the dataset's categories.

    PQ's rule is fixed (same class, IoU > 0.5, one-to-one), so ``iou`` must be 0.5 and ``classwise`` True;
    the masks are always used. ``categories`` are stored with the run so its results load on their own.
    """

    def __init__(self, pred_field: str, gt_field: str, categories: list[dict] | None = None, iou: float = 0.5,
                 classwise: bool = True, use_masks: bool = True, use_boxes: bool = False, custom_metrics=None,
                 **kwargs) -> None:
        if iou != 0.5 or not classwise or use_boxes:
            raise BridgeError("panoptic quality matches segments of the same class with IoU > 0.5 on their masks: "
                              "iou=0.5, classwise=True, use_boxes=False")
        if not categories:
            raise BridgeError("a panoptic evaluation needs the dataset's categories (id, name, isthing)")
        super().__init__(pred_field, gt_field, iou=0.5, classwise=True, custom_metrics=custom_metrics, **kwargs)
        self.categories = [dict(c) for c in categories]
        self.use_masks = True
        self.use_boxes = False

    @property
    def method(self) -> str:
        return "panoptic"


@dataclass
class _Side:
    """One field of one sample as a segment-id map: segment id i + 1 is the i-th detection."""

    seg_map: np.ndarray
    segments: list[dict]  # pq_match_single's input, segments with pixels only
    dets: dict[int, fo.Detection]
    classes: dict[int, int]  # segment id -> contiguous class
    unknown: list[fo.Detection]  # predictions of a class the dataset lacks


def metric_categories(classes: ClassIndex) -> list[dict]:
    """The categories as ``m2f_core.metrics`` counts them: contiguous ids, ``isthing`` 0 / 1."""
    return [{"id": i, "name": str(c["name"]), "isthing": int(bool(c.get("isthing", True)))}
            for i, c in enumerate(classes.categories)]


@dataclass
class SampleMatch:
    """One sample's matching and the detections behind the segment ids (``gt.dets[i]``, ``pred.dets[i]``)."""

    match: PQMatch
    gt: _Side
    pred: _Side


def match_sample(sample, pred_field: str, gt_field: str, classes: ClassIndex) -> SampleMatch | None:
    """``pq_match_single`` on one sample's panoptic fields; None when either is missing (not evaluated, as
    ``m2f_core.evaluate`` evaluates only the images that have both)."""
    gts, preds = sample[gt_field], sample[pred_field]
    if gts is None or preds is None:
        return None
    meta = sample.metadata
    h, w = (int(meta.height), int(meta.width)) if meta is not None and meta.height else image_size(sample.filepath)
    where = f"sample {sample.id}"
    gt, pred = _side(gts, classes, h, w, True, where), _side(preds, classes, h, w, False, where)
    match = pq_match_single(gt.seg_map, gt.segments, pred.seg_map, pred.segments, metric_categories(classes),
                            where=where)
    return SampleMatch(match, gt, pred)


def _side(dets: fo.Detections, classes: ClassIndex, h: int, w: int, is_gt: bool, where: str) -> _Side:
    seg_map = np.zeros((h, w), dtype=np.int64)
    side = _Side(seg_map, [], {}, {}, [])
    for i, d in enumerate(dets.detections, start=1):
        cls = classes.index(d.label, d.get_attribute_value("category_id", None))
        if cls < 0:
            if is_gt:
                raise BridgeError(f"{where}: unknown ground-truth class {d.label!r} (not in the dataset's "
                                  "categories)")
            side.unknown.append(d)
            continue
        seg_map[full_mask(d, h, w)] = i  # where masks overlap the later one wins, as convert does
        side.dets[i], side.classes[i] = d, cls
    present = set(np.unique(seg_map).tolist())
    side.segments = [{"id": i, "category_id": cls,
                      "iscrowd": int(bool(side.dets[i].get_attribute_value("iscrowd", False)))}
                     for i, cls in side.classes.items() if i in present]
    return side


class PanopticEvaluation(DetectionEvaluation):
    """Matches each image's panoptic segments with ``pq_match_single`` and records every segment's outcome."""

    def __init__(self, config: PanopticEvaluationConfig) -> None:
        super().__init__(config)
        self.classes = ClassIndex(config.categories)

    def register_samples(self, samples, eval_key, dynamic=True):
        super().register_samples(samples, eval_key, dynamic=dynamic)
        if eval_key is None:
            return
        ds = samples._dataset
        for name in _sample_fields(eval_key):
            ds.add_sample_field(name, fof.FloatField)
        if dynamic:
            for path in self._class_paths(samples, eval_key):
                ds.add_sample_field(path, fof.StringField)

    def evaluate(self, doc, eval_key=None):
        """The ``(gt_label, pred_label, iou, pred_confidence, gt_id, pred_id)`` matches of one sample."""
        one = match_sample(doc, self.pred_field, self.gt_field, self.classes)
        if one is None:
            return []
        if eval_key is not None:
            cats = metric_categories(self.classes)
            scores = pq_results(one.match.add_to(PQStat()), cats)
            for name, metric in zip(_sample_fields(eval_key), ("PQ", "SQ", "RQ")):
                doc[name] = scores[metric]
            _flag_segments(one.match, one.gt, one.pred, eval_key)
        return self._matches(one.match, one.gt, one.pred)

    def _matches(self, match: PQMatch, gt: _Side, pred: _Side) -> list[tuple]:
        """FiftyOne's match tuples; a wrong-class pair is one tuple (counted FP + FN, as FiftyOne counts it)."""
        name = self.classes.name
        out = [(name(gt.classes[g]), name(pred.classes[p]), iou, pred.dets[p].confidence, gt.dets[g].id,
                pred.dets[p].id) for g, p, iou in match.matches]
        fn, fp = set(match.false_negatives), set(match.false_positives)
        for g, p, iou in match.confusions:
            if g in fn and p in fp:
                fn.discard(g)
                fp.discard(p)
                out.append((name(gt.classes[g]), name(pred.classes[p]), iou, pred.dets[p].confidence,
                            gt.dets[g].id, pred.dets[p].id))
        out += [(name(gt.classes[g]), None, None, None, gt.dets[g].id, None) for g in match.false_negatives if g in fn]
        out += [(None, name(pred.classes[p]), None, pred.dets[p].confidence, None, pred.dets[p].id)
                for p in match.false_positives if p in fp]
        return out

    def generate_results(self, samples, matches, eval_key=None, classes=None, missing=None, progress=None):
        results = PanopticResults(samples, self.config, eval_key, matches,
                                  classes=classes or [c["name"] for c in self.config.categories], missing=missing,
                                  backend=self)
        results.custom_metrics = results.panel_metrics()
        if eval_key is not None:
            save_views(samples._dataset.load_evaluation_view(eval_key), eval_key, self.config)
        return results

    def _class_paths(self, samples, eval_key: str) -> list[str]:
        _, pred_root = samples._get_label_field_path(self.config.pred_field)
        _, gt_root = samples._get_label_field_path(self.config.gt_field)
        return [f"{pred_root}.{eval_key}_cls_gt", f"{gt_root}.{eval_key}_cls_pred"]

    def get_fields(self, samples, eval_key, include_custom_metrics=True):
        fields = super().get_fields(samples, eval_key, include_custom_metrics=include_custom_metrics)
        return fields + _sample_fields(eval_key) + self._class_paths(samples, eval_key)

    def cleanup(self, samples, eval_key):
        super().cleanup(samples, eval_key)
        ds = samples._dataset
        ds.delete_sample_fields(_sample_fields(eval_key), error_level=1)
        try:
            ds.delete_sample_fields(self._class_paths(ds, eval_key), error_level=1)
        except ValueError:  # a label field deleted since
            pass
        for name in saved_views(eval_key):
            if ds.has_saved_view(name):
                ds.delete_saved_view(name)

    def rename(self, samples, eval_key, new_eval_key):
        super().rename(samples, eval_key, new_eval_key)
        ds = samples._dataset
        for name in saved_views(eval_key):
            if ds.has_saved_view(name):
                ds.delete_saved_view(name)
        save_views(ds.load_evaluation_view(eval_key), new_eval_key, self.config)  # renamed after this returns


def _sample_fields(eval_key: str) -> list[str]:
    return [f"{eval_key}_pq", f"{eval_key}_sq", f"{eval_key}_rq"]


def _link(a: fo.Detection, b: fo.Detection, key: str, iou: float) -> None:
    a[f"{key}_id"], a[f"{key}_iou"] = b.id, float(iou)
    b[f"{key}_id"], b[f"{key}_iou"] = a.id, float(iou)


def _flag_segments(match: PQMatch, gt: _Side, pred: _Side, key: str) -> None:
    """Every segment's outcome, as FiftyOne's detection evaluations record it (see the module's docstring)."""
    for d in list(gt.dets.values()) + list(pred.dets.values()) + pred.unknown:
        d[key], d[f"{key}_id"], d[f"{key}_iou"] = None, "", None
    for d in pred.unknown:
        d[key] = "ignored"
    for g, p, iou in match.matches:
        gt.dets[g][key] = pred.dets[p][key] = "tp"
        _link(gt.dets[g], pred.dets[p], key, iou)
    for g in match.false_negatives:
        gt.dets[g][key] = "fn"
    for g in match.crowd:
        gt.dets[g][key] = "crowd"
    for p in match.false_positives:
        pred.dets[p][key] = "fp"
    for p in match.ignored:
        pred.dets[p][key] = "ignored"
    for g, p, iou in match.confusions:
        g_det, p_det = gt.dets[g], pred.dets[p]
        p_det[f"{key}_cls_gt"], g_det[f"{key}_cls_pred"] = g_det.label, p_det.label
        _link(g_det, p_det, key, iou)


# --------------------------------------------------------------------------------------------
# saved views


def saved_views(eval_key: str) -> list[str]:
    """The names of the views an evaluation saves (the usual questions about its segments)."""
    return [f"{eval_key} {q}" for q in ("false negatives", "false positives", "wrong class",
                                        f"IoU below {LOW_IOU}", "missed stuff")]


def save_views(evaluated: fo.Dataset | fo.DatasetView, eval_key: str, config: PanopticEvaluationConfig) -> None:
    """Save one view per usual question on the ``evaluated`` samples: the segments in question are kept
    (``filter_labels``), the other field is left whole for context."""
    ds = evaluated._dataset
    base = evaluated.view() if isinstance(evaluated, fo.Dataset) else evaluated
    gt, pred, k = config.gt_field, config.pred_field, eval_key
    stuff = [c["name"] for c in config.categories if not c["isthing"]]
    low = (F(k) == "tp") & (F(f"{k}_iou") < LOW_IOU)
    views = [
        base.filter_labels(gt, F(k) == "fn"),
        base.filter_labels(pred, F(k) == "fp"),
        base.filter_labels(pred, F(f"{k}_cls_gt").exists()).filter_labels(gt, F(f"{k}_cls_pred").exists()),
        base.filter_labels(pred, low).filter_labels(gt, low),
        base.filter_labels(gt, (F(k) == "fn") & F("label").is_in(stuff)),
    ]
    for name, view in zip(saved_views(eval_key), views):
        ds.save_view(name, view, description=f"panoptic evaluation {eval_key!r} ({gt} vs {pred})", overwrite=True)


# --------------------------------------------------------------------------------------------
# results


class PanopticResults(DetectionResults):
    """The per-segment matches of a panoptic evaluation, and PQ / SQ / RQ computed from them.

    PQ is a function of the matches alone (TP IoUs, FP, FN per class), so it follows ``use_subset``.
    Scores are percent, as ``m2f_core.metrics.pq_results`` gives them; ``None`` where nothing was counted.
    """

    def use_subset(self, subset_def):
        """FiftyOne's ``use_subset``, with the IoUs kept in step (FiftyOne subsets the labels, not the IoUs)."""
        ious, pairs = self.ious, list(zip(self.ytrue_ids.tolist(), self.ypred_ids.tolist()))
        super().use_subset(subset_def)
        keep = set(zip(self.ytrue_ids.tolist(), self.ypred_ids.tolist()))  # one entry per (gt, pred) pair
        self._ious_orig = ious
        self.ious = np.array([iou for iou, pair in zip(ious.tolist(), pairs) if pair in keep], dtype=object)
        return self

    def clear_subset(self):
        if self.has_subset:
            self.ious = self._ious_orig
        super().clear_subset()

    def _stat(self) -> PQStat:
        ids = {}
        for i, c in enumerate(self.config.categories):
            ids.setdefault(c["name"], i)
        stat = PQStat()
        for t, p, iou in zip(self.ytrue.tolist(), self.ypred.tolist(), self.ious.tolist()):
            if t == p and t != self.missing:
                stat[ids[t]].tp += 1
                stat[ids[t]].iou += float(iou)
                continue
            if t != self.missing:
                stat[ids[t]].fn += 1
            if p != self.missing:
                stat[ids[p]].fp += 1
        return stat

    def pq(self) -> dict[str, Any]:
        """``m2f_core.metrics.pq_results`` of these matches: PQ, SQ, RQ (``_th`` things, ``_st`` stuff), ``n``,
        ``per_class``."""
        cats = [{"id": i, "name": c["name"], "isthing": int(bool(c["isthing"]))}
                for i, c in enumerate(self.config.categories)]
        return pq_results(self._stat(), cats)

    def metrics(self, classes=None, average="micro", beta=1.0) -> dict[str, Any]:
        """FiftyOne's detection metrics (accuracy, precision, recall, fscore, support) plus PQ / SQ / RQ."""
        out = super().metrics(classes=classes, average=average, beta=beta)
        pq = self.pq()
        return out | {k: pq[k] for k in HEADLINE}

    def panel_metrics(self) -> dict[str, dict]:
        """PQ / SQ / RQ in the form of FiftyOne's custom metrics, which the Model Evaluation panel lists and
        compares between two runs."""
        pq = self.pq()
        labels = {"": "", "_th": " things", "_st": " stuff"}
        return {f"@m2f/workbench/{k.lower()}": {"key": k, "value": pq[k], "label": f"{k[:2]}{labels[k[2:]]} (%)",
                                                 "lower_is_better": False} for k in HEADLINE}

    def report(self, classes=None) -> dict[str, dict]:
        """Per class: PQ, SQ, RQ, TP, FP, FN, isthing and FiftyOne's precision / recall / f1-score (= RQ) /
        support; then ``all``, ``things`` and ``stuff``."""
        fo_report = super().report(classes=classes)
        pq = self.pq()
        out: dict[str, dict] = {}
        for row in pq["per_class"].values():
            if classes is not None and row["name"] not in classes:
                continue
            extra = {k: v for k, v in fo_report.get(row["name"], {}).items()}
            out[row["name"]] = {k: row[k] for k in ("PQ", "SQ", "RQ", "tp", "fp", "fn", "isthing")} | extra
        for name, suffix in (("all", ""), ("things", "_th"), ("stuff", "_st")):
            out[name] = {m: pq[f"{m}{suffix}"] for m in ("PQ", "SQ", "RQ")} | {"classes": pq[f"n{suffix}"]}
        return out

    def print_report(self, classes=None, digits=2) -> None:
        """The per-class table (classes counted at least once, or ``classes``), then all / things / stuff."""
        report = self.report(classes=classes)
        rows = []
        for name, row in report.items():
            if name in ("all", "things", "stuff"):
                continue
            if classes is None and row["tp"] + row["fp"] + row["fn"] == 0:
                continue
            rows.append([name, "thing" if row["isthing"] else "stuff", *(_fmt(row[m], digits) for m in
                         ("PQ", "SQ", "RQ")), row["tp"], row["fp"], row["fn"]])
        rows.append([])
        for name in ("all", "things", "stuff"):
            row = report[name]
            rows.append([name, f"{row['classes']} classes", *(_fmt(row[m], digits) for m in ("PQ", "SQ", "RQ")),
                         "", "", ""])
        print(_table(rows, ["class", "", "PQ", "SQ", "RQ", "TP", "FP", "FN"]))

    def compare(self, other: PanopticResults) -> dict[str, Any]:
        """This run (``a``) against ``other`` (``b``): headline and per-class PQ / SQ / RQ with ``b - a``."""
        a, b = self.pq(), other.pq()
        overall = {k: _delta(a[k], b[k]) for k in HEADLINE}
        names = {row["name"]: row for row in a["per_class"].values()}
        per_class = {}
        for row_b in b["per_class"].values():
            row_a = names.get(row_b["name"])
            if row_a is None or (row_a["PQ"] is None and row_b["PQ"] is None):
                continue
            per_class[row_b["name"]] = {m: _delta(row_a[m], row_b[m]) for m in ("PQ", "SQ", "RQ")}
        return {"a": self.key, "b": other.key, "overall": overall, "per_class": per_class}

    def print_compare(self, other: PanopticResults, digits=2) -> None:
        """``compare`` as two tables: the headline, then the classes by PQ change (worst first)."""
        cmp = self.compare(other)
        a, b = cmp["a"] or "a", cmp["b"] or "b"
        print(_table([[k, _fmt(v["a"], digits), _fmt(v["b"], digits), _fmt(v["delta"], digits)]
                      for k, v in cmp["overall"].items()], ["", a, b, "change"]))
        rows = sorted(cmp["per_class"].items(), key=lambda kv: kv[1]["PQ"]["delta"] or 0.0)
        print()
        print(_table([[n, _fmt(v["PQ"]["a"], digits), _fmt(v["PQ"]["b"], digits), _fmt(v["PQ"]["delta"], digits)]
                      for n, v in rows], ["class (PQ)", a, b, "change"]))


def _table(rows: list[list], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _delta(a: float | None, b: float | None) -> dict[str, float | None]:
    return {"a": a, "b": b, "delta": None if a is None or b is None else b - a}


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
