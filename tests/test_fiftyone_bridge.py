"""FiftyOne bridge: the real MongoDB that fiftyone-db ships, its database under a temporary folder, tracking off.

Real data of ``../shared/data/real`` for import -> predict -> evaluate and the metric checks (ground
truth fed back scores 100; perturbed predictions score exactly what ``m2f_core.evaluate`` gives on
the same files; FiftyOne's mIoU equals ours). Synthetic scenes (the classes the built-in model
knows) for the loop through the plugin: open in the Gradio editor, fine-tune, compare.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode, urlparse

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA
from fiftyone_helpers import fiftyone_env
from PIL import Image

CITY = SHARED_DATA / "cityscapes_mmseg" / "tests" / "data" / "pseudo_cityscapes_dataset"
ADE = SHARED_DATA / "ade20k_sceneparsing150" / "sampleData"
LABELME = SHARED_DATA / "voc_labelme" / "examples" / "instance_segmentation" / "data_dataset_coco"

pytestmark = [  # FiftyOne's own dependencies (psutil, mongoengine), not our code
    pytest.mark.filterwarnings("ignore:connections\\(\\) is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:No uuidRepresentation is specified:DeprecationWarning"),
]

def execute_operator(uri: str, ctx: dict):
    """FiftyOne's ``execute_operator`` from a thread with no event loop.

    It returns a pending ``asyncio.Task`` instead of the result when the calling thread has a running
    loop, which is the case after Playwright's sync API ran in the same pytest process.
    """
    from concurrent.futures import ThreadPoolExecutor

    import fiftyone.operators as foo

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(foo.execute_operator, uri, ctx=ctx).result()


@pytest.fixture(scope="module")
def fo_env(tmp_path_factory):
    """FiftyOne on a database in a temporary folder (tests/fiftyone_helpers.py)."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared real data not found at {SHARED_DATA}")
    with fiftyone_env(tmp_path_factory.mktemp("fiftyone")) as env:
        yield env


def _coco(tmp_path_factory) -> Path:
    """The real COCO panoptic sample as a folder: images/, panoptic/, panoptic.json (conftest's layout)."""
    root = tmp_path_factory.mktemp("coco")
    source = SHARED_DATA / "coco_panoptic_panopticapi"
    data = source / "sample_data"
    shutil.copytree(data / "input_images", root / "images")
    shutil.copytree(data / "panoptic_examples", root / "panoptic")
    ann = json.loads((data / "panoptic_examples.json").read_text())
    ann.setdefault("categories", json.loads((source / "panoptic_coco_categories.json").read_text()))
    ann.setdefault("images", json.loads((data / "images_info_examples.json").read_text())["images"])
    (root / "panoptic.json").write_text(json.dumps(ann))
    return root


@pytest.fixture(scope="module")
def coco(fo_env, tmp_path_factory):
    """The COCO sample imported as ``coco`` (format coco_panoptic, images given with --images)."""
    from app.fiftyone_bridge.core import import_dataset

    root = _coco(tmp_path_factory)
    ds = import_dataset("coco_panoptic", root / "panoptic.json", "coco", image_dir=root / "images", progress=False)
    return SimpleNamespace(ds=ds, root=root)


@pytest.fixture(scope="module")
def synthetic(fo_env, tmp_path_factory):
    """Three synthetic scenes (the built-in model's classes) as a corrections folder, imported as ``synthetic``."""
    from app.fiftyone_bridge.core import import_dataset
    from m2f_core.checkpoint import load_model
    from m2f_core.data.categories import categories_from_config
    from m2f_core.data.corrections import write_corrections
    from m2f_core.data.records import Sample
    from m2f_core.data.synthetic import generate_scene
    from m2f_core.structures import PanopticResult

    src = tmp_path_factory.mktemp("synthetic_src")
    samples = []
    for i in range(3):
        image, seg_map, segments = generate_scene(np.random.default_rng(100 + i), 256, 320)
        path = src / f"scene_{i}.png"
        Image.fromarray(image).save(path)
        samples.append(Sample(image_id=i + 1, file_name=path, height=256, width=320,
                              panoptic=PanopticResult(seg_map, segments)))
    root = tmp_path_factory.mktemp("synthetic") / "scenes"
    config = load_model().config
    write_corrections(root, samples, categories_from_config(config))
    ds = import_dataset("corrections", root, "synthetic", progress=False)
    return SimpleNamespace(ds=ds, root=root, config=config)


def _copy_labels(ds, src: str, dst: str, confidence: bool = False) -> None:
    """Ground truth fed back as predictions: ``src_*`` fields copied to ``dst_*``."""
    for sample in ds.iter_samples(autosave=True):
        for kind in ("panoptic", "instances", "semantic"):
            label = sample[f"{src}_{kind}"]
            if label is None:
                continue
            label = label.copy()
            if confidence and kind != "semantic":
                for d in label.detections:
                    d.confidence = 1.0
            sample[f"{dst}_{kind}"] = label


def _one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _run_main(argv: list[str]) -> tuple[int, str]:
    from app.fiftyone_bridge.__main__ import main

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


# --------------------------------------------------------------------------------------------
# conversion (no database)


def test_labels_round_trip_without_loss(fo_env, coco_sample):
    """Panoptic (things and stuff, crowd), instances and semantic maps survive FiftyOne labels unchanged."""
    from app.fiftyone_bridge.convert import (
        ClassIndex,
        detections_to_instance_annotations,
        detections_to_panoptic,
        instance_annotations_to_detections,
        panoptic_to_detections,
        segmentation_to_semantic,
        semantic_to_segmentation,
    )
    from m2f_core.data.specs import open_dataset

    ds = open_dataset(f"corrections:{coco_sample}")
    record = ds[0]
    classes = ClassIndex(ds.categories)
    dets = panoptic_to_detections(record.panoptic, classes)
    assert len(dets.detections) == len(record.panoptic.segments)
    assert {d.isthing for d in dets.detections} == {True, False}  # things and stuff
    for d, s in zip(dets.detections, record.panoptic.segments):
        assert d.segment_id == s.id and d.label == ds.categories[s.category_id]["name"]
        assert d.category_id == ds.categories[s.category_id]["id"] and d.area == s.area
    back = detections_to_panoptic(dets, classes, record.height, record.width)
    assert np.array_equal(back.segment_map, record.panoptic.segment_map)
    assert [(s.id, s.category_id, s.isthing, s.iscrowd, s.area) for s in back.segments] == \
           [(s.id, s.category_id, s.isthing, s.iscrowd, s.area) for s in record.panoptic.segments]
    seg = semantic_to_segmentation(record.semantic_map(), len(classes))
    assert seg.mask.dtype == np.uint8 and seg.mask.min() == 0  # 0 = void
    assert np.array_equal(segmentation_to_semantic(seg, len(classes)), record.semantic_map())
    annotations = record.instance_annotations()
    ins = instance_annotations_to_detections(annotations, classes)
    for a, b in zip(annotations, detections_to_instance_annotations(ins, classes, record.height, record.width)):
        assert np.array_equal(a.mask(), b.mask()) and a.category_id == b.category_id and a.iscrowd == b.iscrowd


def test_labels_edited_in_fiftyone_are_read_back(fo_env):
    """A box drawn without a mask, a detection without segment id, overlaps, an unknown class."""
    import fiftyone as fo

    from app.fiftyone_bridge import BridgeError
    from app.fiftyone_bridge.convert import ClassIndex, detections_to_panoptic

    classes = ClassIndex([{"id": 7, "name": "Car", "isthing": True}, {"id": 9, "name": "road", "isthing": False}])
    dets = fo.Detections(detections=[
        fo.Detection(label="road", bounding_box=[0, 0, 1, 0.5], segment_id=5),
        fo.Detection(label="car", bounding_box=[0.25, 0.25, 0.5, 0.5]),  # names match case-insensitively
        fo.Detection(label="renamed", bounding_box=[0, 0.75, 0.25, 0.25], category_id=9, segment_id=5)])
    pan = detections_to_panoptic(dets, classes, 4, 8)
    assert pan.segment_map.tolist() == [[5, 5, 5, 5, 5, 5, 5, 5], [5, 5, 6, 6, 6, 6, 5, 5],
                                        [0, 0, 6, 6, 6, 6, 0, 0], [7, 7, 0, 0, 0, 0, 0, 0]]
    assert [(s.id, s.category_id, s.isthing) for s in pan.segments] == [(5, 1, False), (6, 0, True), (7, 1, False)]
    with pytest.raises(BridgeError, match="sample 3: unknown class 'truck'"):
        detections_to_panoptic(fo.Detections(detections=[fo.Detection(label="truck", bounding_box=[0, 0, 1, 1])]),
                               classes, 4, 8, where="sample 3")
    assert detections_to_panoptic(dets, classes, 4, 8, gt=False).segments[1].score == 1.0  # no confidence: 1


# --------------------------------------------------------------------------------------------
# import -> predict -> evaluate on the real COCO sample


def test_import_predict_evaluate_real_coco(coco, monkeypatch):
    from app.fiftyone_bridge.core import predict_view
    from app.fiftyone_bridge.evaluate import evaluate_view
    from m2f_core.data.specs import open_dataset
    from m2f_core.predictor import Predictor

    ds = coco.ds
    reader = open_dataset(f"coco_panoptic:{coco.root / 'panoptic.json'}", image_dir=coco.root / "images")
    record = reader[0]
    assert ds.persistent and len(ds) == 1
    sample = ds.first()
    assert Path(sample.filepath) == (coco.root / "images" / "000000142238.jpg").resolve()
    assert (sample.metadata.width, sample.metadata.height) == (record.width, record.height)
    # panoptic ground truth: things and stuff with category, isthing, segment id; semantic map; mask targets
    assert len(sample.gt_panoptic.detections) == len(record.panoptic.segments)
    assert len(sample.gt_instances.detections) == sum(s.isthing for s in record.panoptic.segments)
    assert ds.mask_targets["gt_semantic"][1] == reader.categories[0]["name"]
    assert len(ds.default_mask_targets) == len(reader.categories) == 133
    assert ds.info["m2f"]["format"] == "coco_panoptic"
    assert ds.info["m2f"]["ground_truth"] == {"panoptic": True, "instances": True, "semantic": True}

    calls = []
    original = Predictor.predict
    monkeypatch.setattr(Predictor, "predict", lambda self, image: calls.append(image) or original(self, image))
    report = predict_view(ds, progress=False)
    assert len(calls) == 1 and report.samples == 1 and not report.errors  # one forward pass for the three tasks
    # the built-in model knows 11 synthetic classes; "road" is also a COCO class, the shapes are not
    assert "disc" in report.unmapped_classes and "road" not in report.unmapped_classes
    sample.reload()
    assert sample.pred_semantic.mask.shape == (record.height, record.width)
    assert isinstance(sample.pred_panoptic, ds.get_field("pred_panoptic").document_type)
    assert 0.0 <= sample.pred_uncertainty <= 1.0
    assert sample.pred_uncertainty_map.map.shape == (record.height, record.width)
    assert all(d.confidence is not None for d in sample.pred_instances.detections)

    summary = evaluate_view(ds, progress=False)
    assert summary["panoptic"]["n"] > 0 and summary["semantic"]["miou_agree"]
    assert summary["instance"]["AP"] is not None and "mAP_fiftyone" in summary["instance"]
    stored = ds.info["m2f_evaluations"]["pred"]
    assert stored["panoptic"]["PQ"] == summary["panoptic"]["PQ"]
    sample.reload()
    assert sample.pred_pq == summary["panoptic"]["PQ"]  # one image: per-sample = dataset
    assert sample.pred_miou == pytest.approx(summary["semantic"]["mIoU"])
    assert {"pred_sem", "pred_ins"} <= set(ds.list_evaluations())  # FiftyOne's own, for its panels
    assert ds.sort_by("pred_pq").first().id == sample.id  # the App can sort by the worst samples


def test_ground_truth_as_predictions_scores_100(coco, fo_env):
    from app.fiftyone_bridge.evaluate import evaluate_view

    ds = coco.ds
    _copy_labels(ds, "gt", "oracle", confidence=True)
    summary = evaluate_view(ds, pred="oracle", progress=False)
    assert summary["panoptic"]["PQ"] == pytest.approx(100.0)
    assert summary["panoptic"]["SQ"] == pytest.approx(100.0) and summary["panoptic"]["RQ"] == pytest.approx(100.0)
    assert summary["semantic"]["mIoU"] == pytest.approx(100.0)
    assert summary["semantic"]["mIoU_fiftyone"] == pytest.approx(100.0)
    assert summary["instance"]["AP"] == pytest.approx(100.0)
    assert summary["instance"]["mAP_fiftyone"] == pytest.approx(100.0)
    s = ds.first()
    assert (s.oracle_pq, s.oracle_miou, s.oracle_ap) == (pytest.approx(100.0),) * 3


def _perturb(record, categories, rng):
    """A wrong prediction: one thing relabelled, one segment dropped, one stuff segment shifted."""
    from m2f_core.structures import PanopticResult, Segment

    seg_map = record.panoptic.segment_map.copy()
    segments = [Segment(s.id, s.category_id, s.isthing, 0.9) for s in record.panoptic.segments]
    things = [s for s in segments if s.isthing]
    stuff = [s for s in segments if not s.isthing]
    things[0].category_id = next(i for i, c in enumerate(categories) if c["isthing"] and i != things[0].category_id)
    seg_map[seg_map == things[-1].id] = 0
    segments.remove(things[-1])
    moved = stuff[0].id
    mask = seg_map == moved
    seg_map[mask] = 0
    seg_map[np.roll(mask, 25, axis=1) & (seg_map == 0)] = moved
    scores = rng.uniform(0.3, 1.0, len(segments))
    for s, score in zip(segments, scores):
        s.score = float(score)
    return PanopticResult(seg_map, segments).update_stats()


def test_perturbed_predictions_equal_m2f_evaluate_on_files(coco, fo_env, tmp_path):
    """PQ, mIoU and mask AP computed inside FiftyOne equal ``python -m m2f_core.evaluate`` on the same files."""
    from app.fiftyone_bridge.convert import (
        ClassIndex,
        instance_result_to_detections,
        panoptic_to_detections,
        semantic_to_segmentation,
    )
    from app.fiftyone_bridge.core import categories, sample_record
    from app.fiftyone_bridge.evaluate import evaluate_view
    from m2f_core.data.coco_instances import write_coco_instance_results, write_coco_instances
    from m2f_core.data.coco_panoptic import write_coco_panoptic
    from m2f_core.data.records import Sample
    from m2f_core.data.semantic import write_semantic_png
    from m2f_core.evaluate import main as evaluate_main
    from m2f_core.structures import InstanceResult

    ds = coco.ds
    cats = categories(ds)
    classes = ClassIndex(cats)
    sample = ds.first()
    record = sample_record(sample, classes)
    pred = _perturb(record, cats, np.random.default_rng(0))
    things = [s for s in pred.segments if s.isthing]
    masks = np.stack([pred.segment_map == s.id for s in things])
    boxes = np.array([[s.bbox[0], s.bbox[1], s.bbox[0] + s.bbox[2], s.bbox[1] + s.bbox[3]] for s in things])
    instances = InstanceResult(masks, boxes, [s.score for s in things], [s.category_id for s in things])
    identity = np.arange(len(cats))
    sample["noisy_panoptic"] = panoptic_to_detections(pred, classes, scores=True)
    names = [c["name"] for c in cats]
    sample["noisy_instances"] = instance_result_to_detections(instances, classes, names, identity)
    sample["noisy_semantic"] = semantic_to_segmentation(pred.semantic_map(), len(cats))
    sample.save()
    summary = evaluate_view(ds, pred="noisy", progress=False)
    assert 0 < summary["panoptic"]["PQ"] < 100

    gt_sample = Sample(1, Path(sample.filepath), record.height, record.width, panoptic=record.panoptic)
    pred_sample = Sample(1, Path(sample.filepath), record.height, record.width, panoptic=pred)
    write_coco_panoptic(tmp_path / "gt.json", [gt_sample], cats)
    write_coco_panoptic(tmp_path / "pred.json", [pred_sample], cats)
    write_semantic_png(tmp_path / "gt_sem" / "a.png", record.semantic_map(), num_classes=len(cats))
    write_semantic_png(tmp_path / "pred_sem" / "a.png", pred.semantic_map(), num_classes=len(cats))
    write_coco_instances(tmp_path / "gt_ins.json", [gt_sample], cats)
    write_coco_instance_results(tmp_path / "pred_ins.json", [(1, instances)], cats)

    def run(*argv):
        out = io.StringIO()
        with redirect_stdout(out):
            assert evaluate_main(list(argv)) == 0
        return json.loads(out.getvalue())

    files_pq = run("panoptic", "--gt-json", str(tmp_path / "gt.json"), "--gt-dir", str(tmp_path / "gt"),
                   "--pred-json", str(tmp_path / "pred.json"), "--pred-dir", str(tmp_path / "pred"))
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "n"):
        assert summary["panoptic"][key] == pytest.approx(files_pq[key], abs=1e-9), key
    files_sem = run("semantic", "--gt-dir", str(tmp_path / "gt_sem"), "--pred-dir", str(tmp_path / "pred_sem"),
                    "--num-classes", str(len(cats)))
    assert summary["semantic"]["mIoU"] == pytest.approx(files_sem["mIoU"], abs=1e-9)
    assert summary["semantic"]["mIoU_fiftyone"] == pytest.approx(files_sem["mIoU"], abs=1e-9)
    assert summary["semantic"]["miou_agree"] and 0 < files_sem["mIoU"] < 100
    files_ap = run("instance", "--gt-json", str(tmp_path / "gt_ins.json"),
                   "--pred-json", str(tmp_path / "pred_ins.json"))
    assert summary["instance"]["AP"] == pytest.approx(files_ap["AP"], abs=1e-9)
    assert summary["instance"]["mAP_fiftyone"] is not None


# --------------------------------------------------------------------------------------------
# the other formats


def test_import_other_formats(fo_env, coco_sample):
    from app.fiftyone_bridge.convert import ClassIndex
    from app.fiftyone_bridge.core import import_dataset, sample_record
    from m2f_core.data.specs import open_dataset

    cases = [("ade20k", ADE, "", {"panoptic": False, "instances": False, "semantic": True}, 150),
             ("cityscapes", CITY, "", {"panoptic": True, "instances": True, "semantic": True}, 19),
             ("coco_instances", LABELME / "annotations.json", None,
              {"panoptic": False, "instances": True, "semantic": True}, None),
             ("corrections", coco_sample, None, {"panoptic": True, "instances": True, "semantic": True}, 133)]
    for fmt, path, split, has, num_classes in cases:
        reader = open_dataset(f"{fmt}:{path}", split=split)
        ds = import_dataset(fmt, path, f"fmt-{fmt}", split=split, progress=False)
        assert len(ds) == len(reader) and ds.info["m2f"]["ground_truth"] == has, fmt
        if num_classes is not None:
            assert len(ds.info["m2f"]["categories"]) == num_classes
        classes = ClassIndex(ds.info["m2f"]["categories"])
        for sample, i in zip(ds.iter_samples(), range(len(reader))):
            original = reader[i]
            back = sample_record(sample, classes)
            assert np.array_equal(back.semantic, original.semantic_map()), fmt
            if has["panoptic"]:
                assert np.array_equal(back.panoptic.segment_map, original.panoptic.segment_map), fmt
            if has["instances"]:
                assert len(back.instances) == len(original.instance_annotations()), fmt


def test_bad_import_input_one_line_error_no_traceback(fo_env, coco_sample, tmp_path, capsys):
    """Malformed JSON, a missing file, an unknown category, a corrupt image: one line, exit 2, nothing left."""
    fo = fo_env.fo
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"annotations": [')
    root = tmp_path / "broken"
    shutil.copytree(coco_sample, root)
    ann = json.loads((root / "panoptic.json").read_text())
    ann["annotations"][0]["segments_info"][0]["category_id"] = 9999
    (root / "unknown.json").write_text(json.dumps(ann))
    shutil.copytree(root / "panoptic", root / "unknown")
    (root / "images" / "000000142238.jpg").write_bytes(b"not a jpeg at all")
    before = set(fo.list_datasets())
    cases = [(["--format", "coco_panoptic", "--path", str(bad_json)], ("bad.json", "not valid JSON")),
             (["--format", "ade20k", "--path", str(tmp_path / "nowhere")], ("nowhere",)),
             (["--format", "coco_panoptic", "--path", str(root / "unknown.json"), "--images", str(root / "images")],
              ("unknown.json", "unknown category id 9999")),
             (["--format", "corrections", "--path", str(root)], ("000000142238.jpg", "not an image"))]
    for args, fragments in cases:
        code, out = _run_main(["import", *args, "--name", "broken"])
        err = capsys.readouterr().err
        assert code == 2 and out == ""
        _one_line_error(err, *fragments)
    assert set(fo.list_datasets()) == before  # a failed import leaves no dataset, not even a temporary one
    # the same through a real process (fails before FiftyOne is even imported)
    proc = subprocess.run([sys.executable, "-m", "app.fiftyone_bridge", "import", "--format", "coco_panoptic",
                           "--path", str(bad_json), "--name", "x"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **fo_env.env}, timeout=120)
    assert proc.returncode == 2
    _one_line_error(proc.stderr, "not valid JSON")


# --------------------------------------------------------------------------------------------
# CLI, export, App


@pytest.mark.slow  # ~60 s on a busy 2-core machine
def test_cli_import_predict_evaluate_export(fo_env, coco_sample, tmp_path, capsys):
    """The CLI end to end: import in its own process (same database), then predict, evaluate, export."""
    from m2f_core.data.specs import open_dataset

    proc = subprocess.run([sys.executable, "-m", "app.fiftyone_bridge", "import", "--format", "corrections",
                           "--path", str(coco_sample), "--name", "cli"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **fo_env.env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["samples"] == 1
    code, out = _run_main(["predict", "--name", "cli"])
    assert code == 0 and json.loads(out)["samples"] == 1
    code, out = _run_main(["evaluate", "--name", "cli"])
    summary = json.loads(out)
    assert code == 0 and summary["semantic"]["miou_agree"] and "per_class" not in summary["panoptic"]
    code, _ = _run_main(["export", "--name", "cli", "--view-tag", "fix", "--out", str(tmp_path / "c" / "fix")])
    _one_line_error(capsys.readouterr().err, "no sample", "tagged 'fix'")
    assert code == 2
    ds = fo_env.fo.load_dataset("cli")
    sample = ds.first()
    sample.tags.append("fix")
    sample.save()
    code, out = _run_main(["export", "--name", "cli", "--view-tag", "fix", "--out", str(tmp_path / "c" / "fix")])
    assert code == 0 and json.loads(out)["samples"] == 1
    exported = open_dataset(f"corrections:{tmp_path / 'c' / 'fix'}")  # what training.train reads
    original = open_dataset(f"corrections:{coco_sample}")
    assert np.array_equal(exported[0].panoptic.segment_map, original[0].panoptic.segment_map)
    assert [c["name"] for c in exported.categories] == [c["name"] for c in original.categories]
    code, _ = _run_main(["evaluate", "--name", "no-such-dataset"])
    _one_line_error(capsys.readouterr().err, "no FiftyOne dataset named 'no-such-dataset'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, data: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        return json.loads(r.read())


def test_app_command_serves_the_app_with_the_plugin(coco, fo_env, tmp_path):
    """``app --name coco`` serves the App on 127.0.0.1; its server lists our operators and runs one."""
    port = _free_port()
    log = open(tmp_path / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "app.fiftyone_bridge", "app", "--name", "coco", "--port", str(port)],
                            cwd=REPO, env={**os.environ, **fo_env.env}, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, status, page = time.monotonic() + 180, None, ""
        while time.monotonic() < deadline and status != 200:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    status, page = r.status, r.read(4000).decode("utf-8", "replace")
            except OSError:
                time.sleep(1)
        assert status == 200 and "<html" in page.lower()
        listed = _post(f"http://127.0.0.1:{port}/operators", {"dataset_name": "coco"})
        uris = {op["uri"] for op in listed["operators"]}
        assert "@m2f/workbench/evaluate" in uris and "@m2f/workbench/finetune" in uris, listed["errors"]
        # the bridge imports inside the App server too (whose folder has an app.py of its own)
        done = _post(f"http://127.0.0.1:{port}/operators/execute",
                     {"operator_uri": "@m2f/workbench/finetune_status", "dataset_name": "coco", "params": {}})
        assert "no fine-tuning run" in json.dumps(done), done
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


# --------------------------------------------------------------------------------------------
# the plugin: discovery, operators, editor link, fine-tuning


def test_plugin_operators_discovered_and_run(synthetic, fo_env, tmp_path):
    import fiftyone.operators as foo
    import fiftyone.plugins as fop

    from app.fiftyone_bridge import PLUGIN_NAME
    from app.fiftyone_bridge.core import install_plugin

    link = install_plugin()
    assert link.parent == Path(fo_env.env["FIFTYONE_PLUGINS_DIR"]) and install_plugin() == link  # idempotent
    assert PLUGIN_NAME in [p.name for p in fop.list_plugins()]
    uris = {op.uri for op in foo.list_operators()}
    expected = {f"{PLUGIN_NAME}/{n}" for n in ("run_model", "evaluate", "open_in_editor", "finetune",
                                               "finetune_status", "load_finetuned")}
    assert expected <= uris, sorted(uris)
    ds = synthetic.ds
    result = execute_operator(f"{PLUGIN_NAME}/run_model", ctx={"dataset": ds, "view": ds.view(), "params": {}})
    assert result.result["samples"] == 3 and result.result["unmapped_classes"] == []
    result = execute_operator(f"{PLUGIN_NAME}/evaluate", ctx={"dataset": ds, "view": ds.view(), "params": {}})
    assert "PQ" in result.result["summary"]
    assert ds.info["m2f_evaluations"]["pred"]["semantic"]["miou_agree"]


def test_open_in_editor_link_loads_image_and_labels(synthetic, fo_env, coco_sample, tmp_path):
    """FiftyOne operator -> link -> the Gradio page-load handler of app/ui.py opens that image with those labels."""
    import gradio as gr
    from gradio.helpers import special_args
    from starlette.requests import Request as StarletteRequest

    from app.fiftyone_bridge import PLUGIN_NAME
    from app.fiftyone_bridge.core import install_plugin
    from app.ui import build_app
    from app.workbench import Workbench
    from m2f_core.data.specs import open_dataset
    from m2f_core.predictor import Predictor

    install_plugin()
    ds = synthetic.ds
    sample = ds.skip(1).first()
    corrections = tmp_path / "corrections"
    result = execute_operator(f"{PLUGIN_NAME}/open_in_editor", ctx={
        "dataset": ds, "view": ds.view(), "selected": [sample.id],
        "params": {"corrections_dir": str(corrections), "editor_url": "http://127.0.0.1:7860"}})
    url = result.result["url"]
    query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    assert url.startswith("http://127.0.0.1:7860/?") and Path(query["labels"]).parent == corrections.resolve()
    assert Path(query["image"]).name == Path(sample.filepath).name and Path(query["image"]).is_file()

    wb = Workbench(Predictor(), corrections, work_dir=tmp_path / "work")
    demo = build_app(wb)
    on_load = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "on_load")
    # the page-load handler of app/ui.py, with the gr.Request that Gradio injects for GET /?image=...&labels=...
    http = StarletteRequest({"type": "http", "method": "GET", "path": "/", "headers": [],
                             "query_string": urlencode(query).encode()})
    args, *_ = special_args(on_load, [None], request=gr.Request(request=http))
    state, canvas, *_rest = out = on_load(*args)
    status = out[3]
    assert canvas is not None and "opened" in status, status
    truth = open_dataset(f"corrections:{synthetic.root}")[1].panoptic
    session = state.workspace.session()
    assert np.array_equal(session.segment_map, truth.segment_map)  # the labels, not the model's prediction
    assert state.model_runs == 1

    # refused: a file the app was not started with, a relative path, labels the model cannot express
    from app.fiftyone_bridge.editor import open_from_query

    outside = tmp_path / "outside.png"
    shutil.copy(query["image"], outside)
    for params, fragment in (({"image": str(outside)}, "not one of the app's images"),
                             ({"image": "scene_1.png"}, "must be absolute"),
                             ({"image": query["image"], "labels": "/etc"}, "not one of the app's images")):
        screen = open_from_query(wb, wb.new_session(), params)
        assert fragment in screen.status, screen.status
    assert open_from_query(wb, wb.new_session(), {}) is None  # no link: the normal start page
    coco_labels = corrections / "coco"
    shutil.copytree(coco_sample, coco_labels)
    screen = open_from_query(wb, wb.new_session(), {"image": str(coco_labels / "images" / "000000142238.jpg"),
                                                    "labels": str(coco_labels)})
    assert "cannot open the link" in screen.status and "classes the model does not know" in screen.status


@pytest.fixture(scope="module")
def fewshot(fo_env, tmp_path_factory):
    """Six small shifted synthetic scenes (classes of the built-in model) imported as ``fewshot``; five are
    tagged ``fix`` (what a user corrected), the sixth is never exported."""
    from app.fiftyone_bridge.core import import_dataset
    from m2f_core.data.synthetic import generate_dataset
    from training.finetune_recipe import FinetuneRecipe

    root = tmp_path_factory.mktemp("fewshot")
    generate_dataset(root, 6, seed=5, split="train", domain="shifted", size=(128, 128))
    ds = import_dataset("corrections", root / "train", "fewshot", progress=False)
    for sample in ds.limit(5).iter_samples(autosave=True):
        sample.tags.append("fix")
    recipe = root / "recipe.json"  # a few quick iterations (tests/test_finetune.py's FAST), no retained set
    fast = {"batch_size": 1, "eval_period": 2, "replay_images": 4, "min_iterations": 1, "retain_images": 0}
    known = {f.name for f in dataclasses.fields(FinetuneRecipe)}
    recipe.write_text(json.dumps({k: v for k, v in fast.items() if k in known}))
    return SimpleNamespace(ds=ds, root=root / "train", recipe=recipe)


def _form(ds, view=None, selected=(), params=None):
    """The fine-tune operator's form as the App would resolve it (its properties by name)."""
    from fiftyone.operators.executor import ExecutionContext

    from app.fiftyone_plugin import FineTune

    ctx = ExecutionContext({"dataset_name": ds.name, "view": (view if view is not None else ds.view())._serialize(),
                            "selected": list(selected), "params": dict(params or {})})
    return FineTune().resolve_input(ctx).type.properties


def test_finetune_form_states_the_samples_and_defaults_to_the_whole_view(fewshot, fo_env, tmp_path, capsys):
    """The number of samples is said before starting; one selected sample is not the default target."""
    from app.fiftyone_bridge import BridgeError
    from app.fiftyone_bridge.finetune import start_finetune, training_plan

    ds = fewshot.ds
    one = ds.first().id
    form = _form(ds, selected=[one])
    assert form["view_target"].default == "DATASET"  # not "SELECTED_SAMPLES", though a sample is selected
    assert "SELECTED_SAMPLES" in form["view_target"].type.values  # offered: the user may choose it
    assert form["plan"].view.label == "Training on 5 of 6 samples, 1 held out to measure the gain"
    assert type(form["plan"].view).__name__ == "Notice"
    form = _form(ds, view=ds.match_tags("fix"))
    assert form["view_target"].default == "CURRENT_VIEW" and form["plan"].view.label.startswith("Training on 4 of 5")
    # the selection when chosen: one sample, said so, with the warning that nothing can be held out
    form = _form(ds, selected=[one], params={"view_target": "SELECTED_SAMPLES"})
    assert form["plan"].view.label == "Training on 1 sample, none held out"
    assert type(form["plan"].view).__name__ == "Warning" and "nothing can be held out" in form["plan"].view.description
    form = _form(ds, view=ds.limit(0))
    assert form["plan"].invalid and "empty" in form["plan"].view.label
    with pytest.raises(BridgeError, match="empty"):
        start_finetune(ds.limit(0), tmp_path / "export", tmp_path / "run")
    assert training_plan(3)[1] is not None and training_plan(4)[1] is None
    assert training_plan(2, val="corrections:/x") == ("training on 2 samples, validated on corrections:/x", None)
    # the CLI says it before starting (here the run directory is taken, so nothing starts)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("")
    code, _ = _run_main(["finetune", "--name", "fewshot", "--limit", "1", "--run-dir", str(taken),  # confirmed
                         "--export-out", str(tmp_path / "export"), "--max-minutes", "1", "--confirm-few"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and err[0] == "fine-tune: training on 1 sample, none held out", err
    assert err[1].startswith("warning: only 1 sample") and err[2].startswith("error: ") and "not empty" in err[2]
    with pytest.raises(SystemExit) as e:  # --limit 0 would be an empty view: refused as an argument
        _run_main(["finetune", "--name", "fewshot", "--limit", "0"])
    assert e.value.code == 2 and "positive" in capsys.readouterr().err


@pytest.mark.slow  # a real run of two iterations, then predictions and evaluations of six samples
def test_finetune_run_status_and_compare_trained_held_out_unseen(fewshot, fo_env, tmp_path):
    """The operator starts a real run on the tagged view; its status says n / N and the result; the
    comparison reports the trained-on, held-out and unseen samples apart, the headline without the trained."""
    from app.fiftyone_bridge import PLUGIN_NAME
    from app.fiftyone_bridge.core import install_plugin, predict_view
    from app.fiftyone_bridge.finetune import list_runs, run_status
    from m2f_core.checkpoint import load_model

    install_plugin()
    ds = fewshot.ds
    predict_view(ds, progress=False)  # the "before" predictions
    view = ds.match_tags("fix")
    result = execute_operator(f"{PLUGIN_NAME}/finetune", ctx={
        "dataset": ds, "view": view, "selected": [view.first().id],  # a selection alone does not narrow the target
        "params": {"name": "tiny", "max_iter": 2, "max_minutes": 5, "device": "cpu",
                   "trainer_args": f"--recipe {fewshot.recipe}", "corrections_dir": str(tmp_path / "corrections"),
                   "runs_dir": str(tmp_path / "runs")}})
    out = result.result
    run_dir = Path(out["run_dir"])
    assert run_dir == (tmp_path / "runs" / "tiny").resolve() and out["pid"] > 0 and out["samples"] == 5
    assert out["plan"] == "training on 4 of 5 samples, 1 held out to measure the gain" and not out["warning"]
    assert "training.finetune" in out["command"] and "--max-minutes 5" in out["command"]
    assert "torchrun" not in out["command"] and "--max-iter 2" in out["command"]
    record = list_runs(ds)[-1]
    assert record["run_dir"] == str(run_dir) and record["pid"] == out["pid"] and record["n_images"] == 5
    assert sorted(record["sample_ids"]) == sorted(view.values("id"))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and run_status(record)["state"] == "running":
        time.sleep(1)
    status = run_status(record)
    assert status["state"] == "finished", status["summary"]
    assert (status["iteration"], status["total"]) == (2, 2) and status["trained_on"] == 4
    assert len(status["held_out"]) == 1 and [c["iter"] for c in status["curve"]] == [0, 2]
    assert status["result"]["before"]["PQ"] is not None and status["weights"] == str(run_dir / "model")
    assert "iteration 2 / 2" in status["summary"] and "trained on 4 sample(s), 1 held out" in status["summary"]
    load_model(status["weights"])
    report = execute_operator(f"{PLUGIN_NAME}/finetune_status", ctx={"dataset": ds, "view": ds.view(),
                                                                         "params": {}}).result["report"]
    assert str(run_dir) in report and "finished" in report and "iteration 2 / 2" in report
    assert "PQ" in report and "->" in report  # before -> after on the held-out samples

    # before / after on the whole dataset: 4 trained on, 1 held out, 1 never exported
    result = execute_operator(f"{PLUGIN_NAME}/load_finetuned", ctx={"dataset": ds, "view": ds.view(), "params": {}})
    shown = result.result
    assert shown["trained"].startswith("4 samples: before PQ") and shown["held_out"].startswith("1 sample: before")
    assert shown["unseen"].startswith("1 sample: before") and shown["headline"].startswith("2 samples: before")
    assert "PQ" in shown["headline"] and not shown["warning"] and shown["weights"] == str(run_dir / "model")
    field = shown["split_field"]
    assert field == "finetuned_split"
    assert ds.count_values(field) == {"trained": 4, "held_out": 1, "unseen": 1}
    held = ds.match(fo_env.fo.ViewField(field) == "held_out").first()
    assert Path(held.filepath).name in status["held_out"] and "fix" in held.tags
    assert "fix" not in ds.match(fo_env.fo.ViewField(field) == "unseen").first().tags
    stored = ds.info["m2f_comparisons"]["finetuned"]
    assert {k: v["samples"] for k, v in stored["groups"].items()} == {"trained": 4, "held_out": 1, "unseen": 1}
    assert stored["headline"]["samples"] == 2 and stored["headline"]["after"]["PQ"] is not None
    assert ds.info["m2f_evaluations"]["finetuned"]["samples"] == 2  # the stored summary leaves the trained out
    assert ds.first().finetuned_panoptic is not None

    # compared on the trained-on samples only: no headline, a warning instead
    from app.fiftyone_bridge.finetune import compare_finetuned

    trained_ids = ds.match(fo_env.fo.ViewField(field) == "trained").values("id")
    only = compare_finetuned(ds.select(trained_ids), prefix="ft_trained", progress=False)
    assert only["headline"] is None and "trained on" in only["warning"]
    assert only["groups"]["trained"]["samples"] == 4 and only["groups"]["trained"]["after"] is not None
    assert "ft_trained" not in ds.info["m2f_evaluations"]


def test_finetune_cancel_leaves_loadable_weights(fewshot, fo_env, tmp_path):
    """A real run cancelled in its first step (~35 s): it says so and its recommended weights load."""
    from app.fiftyone_bridge.finetune import run_status, start_finetune, stop_run
    from m2f_core.checkpoint import load_model

    ds = fewshot.ds
    record = start_finetune(ds.match_tags("fix"), tmp_path / "export", tmp_path / "run", max_iter=400, device="cpu",
                            extra=["--recipe", str(fewshot.recipe)]).to_dict()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run_status(record)
        assert status["state"] == "running", status["summary"]
        if status["phase"] == "training":  # validated the start, in its first step: cancelled after it
            break
        time.sleep(0.3)
    else:
        pytest.fail("the run did not start training in time")
    assert status["total"] == 400 and "/ 400" in status["summary"]
    stop_run(record)
    status = run_status(record)
    assert status["state"] == "cancelled" and status["returncode"] == 130, status["summary"]
    assert status["result"]["stopped"] == "cancelled" and 1 <= status["iteration"] < 400
    assert status["weights"] == str((tmp_path / "run" / "model").resolve())
    load_model(tmp_path / "run" / "model")
