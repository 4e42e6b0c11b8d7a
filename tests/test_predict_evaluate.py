"""The predict CLI and ``evaluate model`` end to end, on the real COCO panoptic sample.

A small random network with the 133 COCO panoptic classes exercises the plumbing (formats, class
mapping, one pass per image); an oracle that answers with the ground truth proves the scoring:
PQ, mask AP and mIoU must all be 100.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from m2f_core import build_model, get_preset, save_model
from m2f_core.data.coco_panoptic import CocoPanoptic
from m2f_core.metrics.model_eval import class_mapping, evaluate_model
from m2f_core.structures import InstanceResult, SemanticResult


@pytest.fixture(scope="module")
def small_coco_model(tmp_path_factory) -> Path:
    cfg = get_preset("coco_panoptic_r50").replace(
        backbone=get_preset("coco_panoptic_r50").backbone.__class__(
            type="resnet", stage_blocks=(1, 1, 1, 1), res2_out_channels=64, stem_out_channels=32),
        conv_dim=64, mask_dim=64, hidden_dim=64, nheads=4, enc_layers=1, dec_layers=3, dim_feedforward=64,
        enc_dim_feedforward=64, num_queries=20, min_size_test=256, max_size_test=400)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    save_model(build_model(cfg), folder)
    return folder


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


def test_predict_cli_writes_every_format(tmp_path, coco_sample, small_coco_model):
    out = tmp_path / "out"
    run = _run("m2f_core.predict", "--weights", str(small_coco_model), "--out", str(out), str(coco_sample / "images"))
    assert run.returncode == 0, run.stderr
    pan = json.loads((out / "panoptic.json").read_text())
    assert len(pan["annotations"]) == 1 and len(pan["categories"]) == 133
    png = out / "panoptic" / "000000142238.png"
    assert png.exists()
    # the written prediction is valid COCO panoptic: the evaluator accepts it against the real ground truth
    ev = _run("m2f_core.evaluate", "panoptic", "--gt-json", str(coco_sample / "panoptic.json"),
              "--gt-dir", str(coco_sample / "panoptic"), "--pred-json", str(out / "panoptic.json"),
              "--pred-dir", str(out / "panoptic"))
    assert ev.returncode == 0, ev.stderr
    assert 0 <= json.loads(ev.stdout)["PQ"] <= 100
    instances = json.loads((out / "instances.json").read_text())
    assert all(isinstance(r["segmentation"]["counts"], str) for r in instances)
    assert (out / "semantic" / "000000142238.png").exists()
    for task in ("panoptic", "instance", "semantic"):
        assert (out / "overlays" / f"000000142238_{task}.png").exists()


def test_predict_cli_bad_input_is_one_line(tmp_path, small_coco_model):
    run = _run("m2f_core.predict", "--weights", str(small_coco_model), "--out", str(tmp_path), str(tmp_path / "nope"))
    assert run.returncode == 2 and run.stderr.startswith("error:") and "Traceback" not in run.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    run = _run("m2f_core.predict", "--weights", str(small_coco_model), "--out", str(tmp_path / "o"), str(bad))
    assert run.returncode == 1 and "skipped" in run.stderr and "Traceback" not in run.stderr


def test_evaluate_model_cli(coco_sample, small_coco_model):
    run = _run("m2f_core.evaluate", "model", "--weights", str(small_coco_model), "--format", "coco_panoptic",
               "--ann", str(coco_sample / "panoptic.json"), "--images", str(coco_sample / "images"))
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert {"panoptic", "instance", "semantic"} <= set(result) and result["images"] == 1
    assert "PQ" in result["panoptic"] and "AP" in result["instance"] and "mIoU" in result["semantic"]
    assert result["unmapped_classes"] == []


class _Oracle:
    """Answers every image with its ground truth, through the same interface as a Prediction."""

    def __init__(self, sample):
        self.sample = sample
        self.size = (sample.height, sample.width)

    def panoptic(self):
        return self.sample.panoptic

    def semantic(self):
        return SemanticResult(np.where(self.sample.semantic_map() == 255, 0, self.sample.semantic_map()))

    def instance(self):
        anns = [a for a in self.sample.instance_annotations() if not a.iscrowd]
        masks = np.stack([a.mask() for a in anns])
        return InstanceResult(masks, np.zeros((len(anns), 4)), np.ones(len(anns)), [a.category_id for a in anns])


class _OraclePredictor:
    def __init__(self, dataset):
        self.dataset = dataset
        self.config = get_preset("coco_panoptic_r50")
        self._by_file = {str(s.file_name): s for s in dataset}

    def predict(self, path):
        return _Oracle(self._by_file[str(path)])


def test_ground_truth_scores_100_everywhere(coco_sample):
    dataset = CocoPanoptic(coco_sample / "panoptic.json", image_dir=coco_sample / "images")
    result = evaluate_model(_OraclePredictor(dataset), dataset, progress=False)
    assert result["panoptic"]["PQ"] == pytest.approx(100.0)
    assert result["instance"]["AP"] == pytest.approx(100.0)
    assert result["semantic"]["pACC"] == pytest.approx(100.0)


def test_class_mapping_by_name_then_id():
    cats = [{"id": 7, "name": "Road"}, {"id": 24, "name": "person"}]
    assert class_mapping(["person", "road", "sky"], [1, 2, 3], cats).tolist() == [1, 0, -1]
    assert class_mapping(["pedestrian"], [24], cats).tolist() == [1]  # same dataset, renamed class
    assert class_mapping(["sky"], None, cats).tolist() == [-1]  # a custom model: names only
