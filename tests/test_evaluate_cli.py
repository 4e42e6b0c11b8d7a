"""``python -m m2f_core.evaluate``: one JSON object on stdout, one ``error:`` line and exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA
from PIL import Image

from m2f_core.evaluate import build_parser, main

# these tests read the real photos of ../shared/data/real (test use only); skip without them
pytestmark = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared real data not found at {SHARED_DATA}")
PAN = SHARED_DATA / "coco_panoptic_panopticapi" / "sample_data"
VOC = SHARED_DATA / "voc_labelme" / "examples" / "instance_segmentation"
PAN_ARGS = ["--gt-json", str(PAN / "panoptic_examples.json"), "--gt-dir", str(PAN / "panoptic_examples"),
            "--pred-json", str(PAN / "panoptic_examples.json"), "--pred-dir", str(PAN / "panoptic_examples")]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "m2f_core.evaluate", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def assert_one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def semantic_dirs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sem")
    (root / "gt").mkdir()
    (root / "pred").mkdir()
    for path in sorted((VOC / "data_dataset_voc" / "SegmentationClass").glob("*.png")):
        gt = np.array(Image.open(path))
        Image.fromarray(gt).save(root / "gt" / path.name)
        pred = np.where(gt == 255, 0, gt).astype(np.uint8)
        pred[:, :40] = 0  # a strip of background over everything: errors on person/bottle/...
        Image.fromarray(pred).save(root / "pred" / path.name)
    return root


@pytest.fixture(scope="module")
def instance_results(tmp_path_factory) -> tuple[Path, Path]:
    """The VOC GT (polygons) and its masks as RLE results with scores (AP = 100)."""
    from pycocotools import mask as mask_util

    root = tmp_path_factory.mktemp("inst")
    gt = json.loads((VOC / "data_dataset_coco" / "annotations.json").read_text())
    images = {img["id"]: img for img in gt["images"]}
    results = []
    for a in gt["annotations"]:
        img = images[a["image_id"]]
        rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], img["height"], img["width"]))
        results.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.8,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
    (root / "results.json").write_text(json.dumps(results))
    return VOC / "data_dataset_coco" / "annotations.json", root / "results.json"


def test_panoptic_subprocess_prints_json():
    proc = cli("panoptic", *PAN_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)  # the whole stdout is one JSON object
    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "per_class"):
        assert key in out
    assert out["PQ"] == 100.0 and out["per_class"]["1"]["tp"] == 13 and out["per_class"]["2"]["PQ"] is None


def test_semantic_and_instance_subprocess(semantic_dirs, instance_results):
    proc = cli("semantic", "--gt-dir", str(semantic_dirs / "gt"), "--pred-dir", str(semantic_dirs / "pred"),
               "--num-classes", "21")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {"mIoU", "fwIoU", "mACC", "pACC", "per_class"} <= set(out) and out["images"] == 2
    assert 30 < out["mIoU"] < 100 and out["per_class"]["1"]["IoU"] is None  # aeroplane: no GT

    gt_json, results = instance_results
    proc = cli("instance", "--gt-json", str(gt_json), "--pred-json", str(results))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # pycocotools' prints did not leak into stdout
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"} <= set(out)
    assert out["AP"] == 100.0 and out["per_class"]["15"]["name"] == "person"


def test_bad_input_subprocess_exit_2_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"annotations": [')
    proc = cli("panoptic", *PAN_ARGS[:6], "--pred-json", str(bad), "--pred-dir", str(tmp_path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "bad.json: malformed JSON" in assert_one_error_line(proc.stderr)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse: --help and usage errors
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_help(capsys):
    rc, out, _ = run_main(capsys, "--help")
    assert rc == 0 and all(name in out for name in ("panoptic", "semantic", "instance"))
    rc, out, _ = run_main(capsys, "semantic", "--help")
    assert rc == 0 and "--num-classes" in out and "--ignore-index" in out


def test_usage_errors_are_one_line(capsys):
    rc, out, err = run_main(capsys, "panoptic", "--gt-json", "x.json")
    assert rc == 2 and out == "" and "required" in assert_one_error_line(err)
    rc, _, err = run_main(capsys, "nosuchtask")
    assert rc == 2 and "invalid choice" in assert_one_error_line(err)
    rc, _, err = run_main(capsys, "semantic", "--gt-dir", "a", "--pred-dir", "b", "--num-classes", "many")
    assert rc == 2 and "many" in assert_one_error_line(err)


def test_bad_inputs_in_process(capsys, tmp_path, semantic_dirs, instance_results):
    rc, out, err = run_main(capsys, "panoptic", *PAN_ARGS[:6], "--pred-json", str(tmp_path / "no.json"),
                            "--pred-dir", str(tmp_path))
    assert rc == 2 and out == "" and "no.json: prediction JSON not found" in assert_one_error_line(err)

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for path in (semantic_dirs / "gt").glob("*.png"):
        Image.fromarray(np.zeros((7, 9), np.uint8)).save(wrong / path.name)
    rc, out, err = run_main(capsys, "semantic", "--gt-dir", str(semantic_dirs / "gt"), "--pred-dir", str(wrong),
                            "--num-classes", "21")
    assert rc == 2 and out == "" and "size (9, 7) (W, H) differs" in assert_one_error_line(err)
    rc, _, err = run_main(capsys, "semantic", "--gt-dir", str(semantic_dirs / "gt"), "--pred-dir",
                          str(semantic_dirs / "pred"), "--num-classes", "5")
    assert rc == 2 and "ground-truth label 15 is outside [0, 5)" in assert_one_error_line(err)

    gt_json, results = instance_results
    bad = json.loads(results.read_text())
    bad[0]["category_id"] = 999
    (tmp_path / "r.json").write_text(json.dumps(bad))
    rc, out, err = run_main(capsys, "instance", "--gt-json", str(gt_json), "--pred-json", str(tmp_path / "r.json"))
    assert rc == 2 and out == "" and "r.json: result 0: unknown category_id 999" in assert_one_error_line(err)


def test_parser_has_every_subcommand():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"panoptic", "semantic", "instance", "model"}
    args = parser.parse_args(["model", "--weights", "w", "--format", "coco_panoptic", "--ann", "a.json"])
    assert args.func.__name__ == "run_model" and args.limit is None
