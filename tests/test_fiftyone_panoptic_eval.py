"""PQ as a FiftyOne evaluation (``app.fiftyone_bridge.panoptic_eval``) on the real MongoDB of fiftyone-db.

A hand-built two-sample case whose every outcome is known (a match at IoU 0.8, one at 0.55, one at exactly
0.5 that does not match, a wrong class, a crowd region, a prediction on void, missed stuff): the run is
listed and reloads, its PQ equals ``python -m m2f_core.evaluate panoptic`` on the same data written as COCO
panoptic files, every segment carries its outcome, the saved views hold exactly the segments in question,
two runs compare, the Model Evaluation panel reads the run, the App defaults, the one-line operator error.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from browser_helpers import BROWSER_MARKS
from conftest import SHARED_DATA
from fiftyone_helpers import fiftyone_env
from PIL import Image

pytestmark = [  # FiftyOne's own dependencies (psutil, mongoengine), not our code
    pytest.mark.filterwarnings("ignore:connections\\(\\) is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:No uuidRepresentation is specified:DeprecationWarning"),
]

# contiguous index: person 0, car 1, grass 2, sky 3 (dataset ids 1, 3, 7, 9)
CATS = [{"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
        {"id": 3, "name": "car", "isthing": 1, "color": [0, 0, 142]},
        {"id": 7, "name": "grass", "isthing": 0, "color": [152, 251, 152]},
        {"id": 9, "name": "sky", "isthing": 0, "color": [70, 130, 180]}]
PERSON, CAR, GRASS, SKY = range(4)
KEY = "pred_pan"
PQ = {"person": 1.8 / 2.5, "car": 0.0, "grass": 0.0, "sky": 0.55}  # fractions, by hand


def _scene_a():
    """GT: person (1), car (2), grass (3), a person crowd (4). Pred: person at IoU 0.8 (11), a person on the
    car (12: wrong class), grass on half the grass (13: IoU exactly 0.5, no match), a person on the crowd (14)."""
    gt = np.zeros((40, 40), np.int32)
    gt[0:10, 0:10], gt[0:10, 20:30], gt[20:40, :], gt[10:20, 30:40] = 1, 2, 3, 4
    gt_segs = [(1, PERSON, False), (2, CAR, False), (3, GRASS, False), (4, PERSON, True)]
    pred = np.zeros((40, 40), np.int32)
    pred[0:10, 0:8], pred[0:10, 20:30], pred[20:40, 0:20], pred[10:20, 30:40] = 11, 12, 13, 14
    pred_segs = [(11, PERSON), (12, PERSON), (13, GRASS), (14, PERSON)]
    return gt, gt_segs, pred, pred_segs


def _scene_b():
    """GT: sky (1), person (2), grass around it (3). Pred: sky at IoU 0.55 (21), the person exactly (22), a car
    on the grass (23)."""
    gt = np.full((40, 40), 3, np.int32)
    gt[0:20, :] = 1
    gt[25:35, 5:15] = 2
    gt_segs = [(1, SKY, False), (2, PERSON, False), (3, GRASS, False)]
    pred = np.zeros((40, 40), np.int32)
    pred[0:11, :], pred[25:35, 5:15], pred[36:40, 30:40] = 21, 22, 23
    pred_segs = [(21, SKY), (22, PERSON), (23, CAR)]
    return gt, gt_segs, pred, pred_segs


def _panoptic(seg_map, segs, gt: bool):
    from m2f_core.data.records import GTSegment
    from m2f_core.structures import PanopticResult, Segment

    isthing = {PERSON: True, CAR: True, GRASS: False, SKY: False}
    if gt:
        segments = [GTSegment(id=i, category_id=c, isthing=isthing[c], iscrowd=crowd) for i, c, crowd in segs]
    else:
        segments = [Segment(id=i, category_id=c, isthing=isthing[c], score=0.9) for i, c in segs]
    return PanopticResult(seg_map, segments).update_stats()


@pytest.fixture(scope="module")
def fo_env(tmp_path_factory):
    """FiftyOne on a database in a temporary folder (tests/fiftyone_helpers.py)."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared real data not found at {SHARED_DATA}")
    with fiftyone_env(tmp_path_factory.mktemp("fiftyone_pq")) as env:
        yield env


@pytest.fixture(scope="module")
def hand(fo_env, tmp_path_factory):
    """The two scenes as a FiftyOne dataset (gt_panoptic, pred_panoptic), evaluated by ``evaluate_view``."""
    from app.fiftyone_bridge.convert import ClassIndex, panoptic_to_detections
    from app.fiftyone_bridge.evaluate import evaluate_view

    fo = fo_env.fo
    root = tmp_path_factory.mktemp("pq_scenes")
    name = f"pq-eval-{uuid.uuid4().hex[:8]}"
    fo_env.made.append(name)
    ds = fo.Dataset(name)
    ds.info["m2f"] = {"categories": CATS, "predictions": {"pred": {"weights": "hand"}}}
    ds.save()
    classes = ClassIndex(CATS)
    scenes = {"a": _scene_a(), "b": _scene_b()}
    for stem, (gt, gt_segs, pred, pred_segs) in scenes.items():
        path = root / f"{stem}.png"
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)
        ds.add_sample(fo.Sample(filepath=str(path), metadata=fo.ImageMetadata(width=40, height=40),
                                gt_panoptic=panoptic_to_detections(_panoptic(gt, gt_segs, True), classes),
                                pred_panoptic=panoptic_to_detections(_panoptic(pred, pred_segs, False), classes,
                                                                     scores=True)))
    summary = evaluate_view(ds, progress=False)
    return SimpleNamespace(ds=ds, root=root, scenes=scenes, summary=summary)


def _execute(uri: str, ctx: dict):
    """FiftyOne's ``execute_operator`` from a thread with no event loop (as tests/test_fiftyone_bridge.py)."""
    from concurrent.futures import ThreadPoolExecutor

    import fiftyone.operators as foo

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(foo.execute_operator, uri, ctx=ctx).result()


def _segments(ds, field: str) -> dict[tuple[str, int], object]:
    """(scene, segment_id) -> detection, over the dataset."""
    out = {}
    for sample in ds:
        for d in sample[field].detections:
            out[(Path(sample.filepath).stem, d["segment_id"])] = d
    return out


def _view_segments(view, field: str) -> set[tuple[str, int]]:
    out = set()
    for sample in view:
        for d in sample[field].detections:
            out.add((Path(sample.filepath).stem, d["segment_id"]))
    return out


def test_run_is_listed_reloads_and_equals_m2f_evaluate(hand, tmp_path):
    from app.fiftyone_bridge.panoptic_eval import PanopticResults
    from m2f_core.data.coco_panoptic import write_coco_panoptic
    from m2f_core.data.records import Sample
    from m2f_core.evaluate import main as evaluate_main

    ds = hand.ds
    assert KEY in ds.list_evaluations()
    info = ds.get_evaluation_info(KEY)
    assert (info.config.type, info.config.method) == ("detection", "panoptic")
    assert (info.config.pred_field, info.config.gt_field) == ("pred_panoptic", "gt_panoptic")
    ds.clear_cache()
    results = ds.load_evaluation_results(KEY, cache=False)
    assert isinstance(results, PanopticResults) and results.key == KEY
    pq = results.pq()
    assert pq["PQ"] == pytest.approx(100 * sum(PQ.values()) / 4)
    assert pq["PQ_th"] == pytest.approx(100 * (PQ["person"] + PQ["car"]) / 2)
    assert pq["PQ_st"] == pytest.approx(100 * (PQ["grass"] + PQ["sky"]) / 2)
    assert hand.summary["panoptic"]["PQ"] == pytest.approx(pq["PQ"], abs=1e-12)
    assert hand.summary["panoptic"]["images"] == 2 and hand.summary["panoptic"]["fiftyone_eval_key"] == KEY

    # the same data as COCO panoptic files, through python -m m2f_core.evaluate panoptic (hotcoco)
    samples = {True: [], False: []}
    for i, (stem, (gt, gt_segs, pred, pred_segs)) in enumerate(sorted(hand.scenes.items()), start=1):
        for is_gt, (seg_map, segs) in ((True, (gt, gt_segs)), (False, (pred, pred_segs))):
            pan = _panoptic(seg_map, segs, is_gt)
            samples[is_gt].append(Sample(i, hand.root / f"{stem}.png", 40, 40, panoptic=pan))
    write_coco_panoptic(tmp_path / "gt.json", samples[True], CATS)
    write_coco_panoptic(tmp_path / "pred.json", samples[False], CATS)
    out = io.StringIO()
    with redirect_stdout(out):
        assert evaluate_main(["panoptic", "--gt-json", str(tmp_path / "gt.json"), "--gt-dir", str(tmp_path / "gt"),
                              "--pred-json", str(tmp_path / "pred.json"), "--pred-dir", str(tmp_path / "pred")]) == 0
    files = json.loads(out.getvalue())
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "SQ_th", "RQ_st", "n"):
        assert pq[key] == pytest.approx(files[key], abs=1e-9), key

    # per sample: FiftyOne's counts, our PQ (also under the bridge's names)
    a, b = (ds.match({"filepath": {"$regex": f"/{s}.png$"}}).first() for s in ("a", "b"))
    assert (a[f"{KEY}_tp"], a[f"{KEY}_fp"], a[f"{KEY}_fn"]) == (1, 2, 2)
    assert (b[f"{KEY}_tp"], b[f"{KEY}_fp"], b[f"{KEY}_fn"]) == (2, 1, 1)
    assert a[f"{KEY}_pq"] == pytest.approx(100 * (0.8 / 1.5) / 3) and a.pred_pq == a[f"{KEY}_pq"]
    assert b[f"{KEY}_pq"] == pytest.approx(100 * (0.55 + 1.0) / 4) and b.pred_sq == b[f"{KEY}_sq"]


def test_every_segment_carries_its_outcome(hand):
    ds = hand.ds
    gt, pred = _segments(ds, "gt_panoptic"), _segments(ds, "pred_panoptic")
    expected_gt = {("a", 1): ("tp", 0.8, ("a", 11)), ("a", 2): ("fn", 1.0, ("a", 12)), ("a", 3): ("fn", None, None),
                   ("a", 4): ("crowd", None, None), ("b", 1): ("tp", 0.55, ("b", 21)),
                   ("b", 2): ("tp", 1.0, ("b", 22)), ("b", 3): ("fn", None, None)}
    expected_pred = {("a", 11): ("tp", 0.8, ("a", 1)), ("a", 12): ("fp", 1.0, ("a", 2)),
                     ("a", 13): ("fp", None, None), ("a", 14): ("ignored", None, None),
                     ("b", 21): ("tp", 0.55, ("b", 1)), ("b", 22): ("tp", 1.0, ("b", 2)),
                     ("b", 23): ("fp", None, None)}
    for dets, other, expected in ((gt, pred, expected_gt), (pred, gt, expected_pred)):
        assert set(dets) == set(expected)
        for where, (outcome, iou, match) in expected.items():
            d = dets[where]
            assert d[KEY] == outcome, where
            assert d.get_attribute_value(f"{KEY}_iou", None) == (None if iou is None else pytest.approx(iou)), where
            assert d[f"{KEY}_id"] == ("" if match is None else other[match].id), where
    # the wrong class, both ways
    assert pred[("a", 12)][f"{KEY}_cls_gt"] == "car" and gt[("a", 2)][f"{KEY}_cls_pred"] == "person"
    assert sum(d.get_attribute_value(f"{KEY}_cls_gt", None) is not None for d in pred.values()) == 1


def test_saved_views_hold_exactly_the_segments_in_question(hand):
    from app.fiftyone_bridge.panoptic_eval import saved_views

    ds = hand.ds
    names = saved_views(KEY)
    assert set(names) <= set(ds.list_saved_views())
    fn, fp, wrong, low, stuff = (ds.load_saved_view(n) for n in names)
    assert _view_segments(fn, "gt_panoptic") == {("a", 2), ("a", 3), ("b", 3)}
    assert _view_segments(fp, "pred_panoptic") == {("a", 12), ("a", 13), ("b", 23)}
    assert _view_segments(wrong, "pred_panoptic") == {("a", 12)}
    assert _view_segments(wrong, "gt_panoptic") == {("a", 2)}
    assert _view_segments(low, "pred_panoptic") == {("b", 21)} and _view_segments(low, "gt_panoptic") == {("b", 1)}
    assert _view_segments(stuff, "gt_panoptic") == {("a", 3), ("b", 3)}
    assert len(fn) == 2 and len(wrong) == 1


def test_report_metrics_and_the_panel(hand, capsys):
    ds = hand.ds
    results = ds.load_evaluation_results(KEY)
    report = results.report()
    assert report["person"]["PQ"] == pytest.approx(100 * PQ["person"])
    assert (report["person"]["tp"], report["person"]["fp"], report["person"]["fn"]) == (2, 1, 0)
    assert (report["grass"]["tp"], report["grass"]["fp"], report["grass"]["fn"]) == (0, 1, 2)
    assert report["person"]["f1-score"] == pytest.approx(report["person"]["RQ"] / 100)  # F1 is RQ
    assert report["stuff"]["PQ"] == pytest.approx(100 * (PQ["grass"] + PQ["sky"]) / 2)
    results.print_report()
    table = capsys.readouterr().out
    assert "person" in table and f"{100 * PQ['person']:.2f}" in table and "stuff" in table
    metrics = results.metrics()
    assert metrics["PQ"] == pytest.approx(results.pq()["PQ"]) and "precision" in metrics
    # subsets: PQ follows FiftyOne's use_subset (here: sample b only)
    with results.use_subset(ds.match({"filepath": {"$regex": "/b.png$"}})):
        assert results.pq()["per_class"][SKY]["PQ"] == pytest.approx(55.0)
        assert results.pq()["per_class"][CAR]["fp"] == 1

    # FiftyOne's Model Evaluation panel: the run is a detection evaluation, PQ among its metrics
    from plugins.panels.model_evaluation import EvaluationPanel

    ctx = SimpleNamespace(dataset=ds, params={"key": KEY},
                          panel=SimpleNamespace(get_state=lambda *a, **k: {"key": KEY}, set_data=lambda *a: None))
    data = EvaluationPanel().get_evaluation_data(ctx)
    shown = {m["label"]: m["value"] for m in data["custom_metrics"].values()}
    assert shown["PQ (%)"] == pytest.approx(results.pq()["PQ"]) and "PQ stuff (%)" in shown
    assert data["metrics"]["tp"] == 3 and data["per_class_metrics"]["person"]["support"] == 2


def _oracle_run(ds, key: str):
    """The ground truth fed back as predictions (``oracle_panoptic``), evaluated under ``key``: PQ 100."""
    from app.fiftyone_bridge.panoptic_eval import evaluate_panoptic

    for sample in ds.iter_samples(autosave=True):
        oracle = sample.gt_panoptic.copy()
        for d in oracle.detections:
            d.confidence = 1.0
        sample["oracle_panoptic"] = oracle
    return evaluate_panoptic(ds, "oracle_panoptic", "gt_panoptic", eval_key=key, progress=False)


def test_two_runs_compare_and_a_run_deletes_cleanly(hand, capsys):
    from app.fiftyone_bridge.panoptic_eval import saved_views

    ds = hand.ds
    other = _oracle_run(ds, "oracle_pan")
    assert other.pq()["PQ"] == pytest.approx(100.0)
    base = ds.load_evaluation_results(KEY)
    cmp = base.compare(other)
    assert cmp["overall"]["PQ"]["a"] == pytest.approx(base.pq()["PQ"])
    assert cmp["overall"]["PQ"]["delta"] == pytest.approx(100.0 - base.pq()["PQ"])
    assert cmp["per_class"]["car"]["PQ"]["delta"] == pytest.approx(100.0)
    base.print_compare(other)
    assert "oracle_pan" in capsys.readouterr().out

    ds.rename_evaluation("oracle_pan", "oracle2_pan")  # fields, attributes and saved views follow the run
    assert ds.has_field("oracle2_pan_pq") and ds.has_field("oracle_panoptic.detections.oracle2_pan_cls_gt")
    assert set(saved_views("oracle2_pan")) <= set(ds.list_saved_views())
    assert not set(saved_views("oracle_pan")) & set(ds.list_saved_views())
    assert len(ds.load_saved_view("oracle2_pan false negatives")) == 0
    ds.delete_evaluation("oracle2_pan")  # and go with it
    assert "oracle2_pan" not in ds.list_evaluations()
    assert not ds.has_field("oracle2_pan_pq") and not ds.has_field("oracle_panoptic.detections.oracle2_pan")
    assert not set(saved_views("oracle2_pan")) & set(ds.list_saved_views())
    assert set(saved_views(KEY)) <= set(ds.list_saved_views())


def test_app_defaults(hand, fo_env):
    from app.fiftyone_bridge.core import THRESHOLD_VIEW, apply_colors

    fo = fo_env.fo
    ds = hand.ds
    sample = ds.first()
    sample["pred_instances"] = fo.Detections(detections=[
        fo.Detection(label="person", bounding_box=[0, 0, 0.2, 0.2], confidence=0.9),
        fo.Detection(label="car", bounding_box=[0.5, 0, 0.2, 0.2], confidence=0.2)])
    sample.save()
    apply_colors(ds)
    ds.reload()
    assert ds.app_config.active_fields.paths == ["gt_panoptic", "pred_panoptic"]  # new fields stay off
    assert not ds.app_config.active_fields.exclude
    colors = {f["path"]: {v["value"]: v["color"] for v in f["valueColors"]} for f in ds.app_config.color_scheme.fields}
    assert colors["pred_panoptic"]["person"] == "#dc143c" == colors["pred_instances"]["person"]
    assert colors["gt_panoptic"]["grass"] == "#670467"  # stuff: the complement of (152, 251, 152)
    assert colors["pred_instances"]["grass"] == "#98fb98"
    view = ds.load_saved_view(THRESHOLD_VIEW)
    assert view.count("pred_instances.detections") == 1 and ds.count("pred_instances.detections") == 2


def test_operator_errors_are_one_line(hand, fo_env, caplog):
    from app.fiftyone_bridge import MONGODB_NOTICE, PLUGIN_NAME
    from app.fiftyone_bridge.core import install_plugin

    install_plugin()
    ds = hand.ds
    with caplog.at_level(logging.ERROR):
        result = _execute(f"{PLUGIN_NAME}/evaluate", ctx={"dataset": ds, "view": ds.view(),
                                                                      "params": {"pred": "nothere"}})
    assert result.error is None
    message = result.result["error"]
    assert len(message.splitlines()) == 1 and "Traceback" not in message and "nothing to compare" in message
    assert "Traceback" in caplog.text  # the traceback is in the log
    result = _execute(f"{PLUGIN_NAME}/evaluate", ctx={"dataset": ds, "view": ds.view(), "params": {}})
    assert result.error is None and result.result["eval_key"] == KEY and "PQ" in result.result["panoptic"]

    # MongoDB's deprecation notice is dropped; any other message of FiftyOne's database logger is not
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fiftyone.core.odm.database"):
        logging.getLogger("fiftyone.core.odm.database").warning(MONGODB_NOTICE + ". Please refer to ...")
        logging.getLogger("fiftyone.core.odm.database").warning("something else")
    assert MONGODB_NOTICE not in caplog.text and "something else" in caplog.text


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _browser(test):
    for mark in BROWSER_MARKS:
        test = mark(test)
    return test


@pytest.mark.slow
@_browser
def test_model_evaluation_panel_shows_and_compares_pq_in_chromium(hand, fo_env, page):
    """The App's Model Evaluation panel, in Chromium: PQ / SQ / RQ (things, stuff) of the run, and two runs side
    by side with the difference. The App server imports our classes through the plugin (``app`` installs it)."""
    from app.fiftyone_bridge.core import install_plugin

    fo = fo_env.fo
    ds = hand.ds
    install_plugin()
    _oracle_run(ds, "oracle3_pan")
    port = _free_port()
    panel = fo.Panel(type="model_evaluation_panel_builtin", pinned=True)
    session = fo.launch_app(ds, port=port, remote=True, auto=False, spaces=fo.Space(children=[panel]))
    try:
        page.goto(f"http://127.0.0.1:{port}/datasets/{ds.name}", timeout=120_000)
        page.get_by_text(KEY, exact=True).first.wait_for(timeout=120_000)
        dismiss = page.get_by_text("Dismiss", exact=True)  # FiftyOne's own promotion, when it shows
        if dismiss.count():
            dismiss.first.click()
        page.get_by_text(KEY, exact=True).first.click()
        page.get_by_text("PQ stuff (%)", exact=True).wait_for(timeout=60_000)
        page.get_by_text("Select a comparison").click()
        page.get_by_role("option", name="oracle3_pan").click()
        row = page.get_by_role("row").filter(has=page.get_by_text("PQ (%)", exact=True))
        row.filter(has_text="100").wait_for(timeout=60_000)  # the compared run's values arrive after its column
        row = row.inner_text()
        values = [float(v) for v in row.replace("%", " ").split() if v.lstrip("-").replace(".", "").isdigit()]
        assert values[:3] == [31.75, 100.0, -68.25], row
    finally:
        session.close()
        ds.delete_evaluation("oracle3_pan")
