"""Every standard layout of each dataset format is found, from its root and from its annotation file.

The layouts are built on disk in tmp_path the way the tools write them (the raw COCO download,
Detectron2's ``datasets/``, ``prepare_ade20k_pan_seg.py``, cityscapesScripts' ``createPanopticImgs``,
our synthetic generator), from the real sample files of ``../shared/data/real``. Also: the split
defaults and the printed split, the error naming every place looked, ADE20K's 1-based labels, the
Cityscapes labelIds / labelTrainIds choice, the console commands, the FiftyOne CLI's output folders
and ``--limit``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2f_core.data.categories import shipped_categories
from m2f_core.data.coco_panoptic import id2rgb
from m2f_core.data.errors import DatasetError
from m2f_core.data.layouts import choose_splits
from m2f_core.data.specs import open_dataset

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
PANAPI = REAL / "coco_panoptic_panopticapi" / "sample_data"
ADE = REAL / "ade20k_sceneparsing150" / "sampleData"
CITY = REAL / "cityscapes_mmseg" / "tests" / "data" / "pseudo_cityscapes_dataset"
STEM = "frankfurt_000000_000294"

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"shared real data not found at {REAL}")


def error_of(spec: str, **kwargs) -> str:
    with pytest.raises(DatasetError) as e:
        open_dataset(spec, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------------------------
# COCO panoptic and instances


def coco_root(tmp_path: Path, raw: bool, images_sub: bool = False, splits=("val2017",)) -> Path:
    """A COCO root: Detectron2's layout (PNGs in ROOT/panoptic_{s}) or the raw download's
    (ROOT/annotations/panoptic_{s}/); images in ROOT/{s} or ROOT/images/{s}."""
    root = tmp_path / ("coco_raw" if raw else "coco")
    for split in splits:
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        shutil.copy(PANAPI / "panoptic_examples.json", root / "annotations" / f"panoptic_{split}.json")
        shutil.copy(PANAPI / "panoptic_coco_detection_format.json", root / "annotations" / f"instances_{split}.json")
        png_dir = root / "annotations" / f"panoptic_{split}" if raw else root / f"panoptic_{split}"
        shutil.copytree(PANAPI / "panoptic_examples", png_dir)
        image_dir = root / "images" / split if images_sub else root / split
        image_dir.mkdir(parents=True)
        shutil.copy(PANAPI / "input_images" / "000000142238.jpg", image_dir)
    return root


@pytest.mark.parametrize("raw,images_sub", [(False, False), (True, False), (True, True)],
                         ids=["detectron2", "raw-download", "raw-download-images-folder"])
def test_coco_panoptic_layouts(tmp_path, raw, images_sub):
    root = coco_root(tmp_path, raw, images_sub)
    png_dir = root / "annotations" / "panoptic_val2017" if raw else root / "panoptic_val2017"
    image = (root / "images" / "val2017" if images_sub else root / "val2017") / "000000142238.jpg"
    json_file = root / "annotations" / "panoptic_val2017.json"
    for spec in (f"coco_panoptic:{root}", f"coco_panoptic:{json_file}"):
        ds = open_dataset(spec)
        assert ds.png_dir == png_dir and ds[0].file_name == image and image.is_file()
        assert len(ds[0].panoptic.segments) > 0
    ds = open_dataset(f"coco_panoptic:{root}")
    assert ds.split == "val2017" and "split 'val2017' (the default for evaluation" in ds.describe()
    inst = open_dataset(f"coco_instances:{root}")
    assert inst.split == "val2017" and inst[0].file_name == image and len(inst[0].instances) == 18
    assert open_dataset(f"coco_instances:{root / 'annotations' / 'instances_val2017.json'}")[0].file_name == image


def test_coco_split_defaults_and_errors(tmp_path):
    root = coco_root(tmp_path, raw=True, splits=("train2017", "val2017"))
    assert open_dataset(f"coco_panoptic:{root}").split == "val2017"
    train = open_dataset(f"coco_panoptic:{root}", purpose="train")
    assert train.split == "train2017" and "the default for training" in train.describe()
    assert train[0].file_name == root / "train2017" / "000000142238.jpg"
    assert open_dataset(f"coco_panoptic:{root}", split="train2017").describe().count("the default for") == 0
    msg = error_of(f"coco_panoptic:{root}", split="test2017")
    assert str(root / "annotations" / "panoptic_test2017.json") in msg and "val2017" not in msg
    # nothing there: every place looked at is named
    msg = error_of(f"coco_panoptic:{tmp_path / 'empty'}")
    for place in ("annotations/panoptic_val2017.json", "val/panoptic.json", "ade20k_panoptic_val.json",
                  "gtFine/cityscapes_panoptic_val.json"):
        assert place in msg, msg
    msg = error_of(f"coco_instances:{tmp_path / 'empty'}", purpose="train")
    assert "annotations/instances_train2017.json" in msg and "val" not in msg
    # PNG folder or images missing: the candidates are named
    shutil.rmtree(root / "annotations" / "panoptic_val2017")
    msg = error_of(f"coco_panoptic:{root}")
    assert str(root / "annotations" / "panoptic_val2017") in msg and str(root / "panoptic_val2017") in msg
    (root / "train2017" / "000000142238.jpg").unlink()
    msg = error_of(f"coco_panoptic:{root}", purpose="train")
    assert "000000142238.jpg not found" in msg and str(root / "images" / "train2017") in msg


def test_synthetic_generator_output(tmp_path):
    from m2f_core.data.synthetic import generate_dataset

    out = tmp_path / "D"
    for split in ("train", "val"):
        generate_dataset(out, 2, seed=0, split=split, size=(96, 96))
    val = open_dataset(f"coco_panoptic:{out}")
    assert val.split == "val" and "layout: synthetic generator" in val.describe()
    assert val[0].file_name == out / "val" / "images" / "000000.jpg" and val[0].file_name.is_file()
    assert open_dataset(f"coco_panoptic:{out}", purpose="train")[1].file_name == out / "train" / "images" / "000001.jpg"
    assert open_dataset(f"coco_panoptic:{out}", split="val").split == "val"
    by_json = open_dataset(f"coco_panoptic:{out / 'val' / 'panoptic.json'}")
    assert by_json.image_dir == out / "val" / "images" and by_json.png_dir == out / "val" / "panoptic"
    assert np.array_equal(by_json[1].panoptic.segment_map, val[1].panoptic.segment_map)


# --------------------------------------------------------------------------------------------
# ADE20K


def ade_challenge(tmp_path: Path, split: str = "validation") -> Path:
    """ADEChallengeData2016 with the two real validation images (labels: 0 = ignore, 1..150)."""
    root = tmp_path / "ADEChallengeData2016"
    for sub in ("images", "annotations"):
        (root / sub / split).mkdir(parents=True, exist_ok=True)
    for stem in ("ADE_val_00000001", "ADE_val_00000002"):
        shutil.copy(ADE / "images" / f"{stem}.jpg", root / "images" / split)
        shutil.copy(ADE / "annotations" / f"{stem}.png", root / "annotations" / split)
    return root


def write_ade_panoptic(root: Path, split: str = "validation") -> Path:
    """ade20k_panoptic_{val}.json + PNGs as prepare_ade20k_pan_seg.py writes them (category ids 0..149,
    image ids = file stems), one segment per class here."""
    short = {"validation": "val", "training": "train"}[split]
    cats = shipped_categories("ade20k")
    png_dir = root / f"ade20k_panoptic_{short}"
    png_dir.mkdir()
    images, annotations = [], []
    for label in sorted((root / "annotations" / split).glob("*.png")):
        raw = np.asarray(Image.open(label)).astype(np.int64)
        seg = np.zeros(raw.shape, np.int32)
        info = []
        for k, value in enumerate(v for v in np.unique(raw).tolist() if v):
            sid = 1000 + 37 * k
            seg[raw == value] = sid
            ys, xs = np.nonzero(raw == value)
            info.append({"id": sid, "category_id": value - 1, "iscrowd": 0, "area": int(len(xs)),
                         "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]})
        Image.fromarray(id2rgb(seg)).save(png_dir / label.name)
        images.append({"id": label.stem, "file_name": f"{label.stem}.jpg", "height": raw.shape[0],
                       "width": raw.shape[1]})
        annotations.append({"image_id": label.stem, "file_name": label.name, "segments_info": info})
    json_cats = [{"id": c["id"], "name": c["name"], "isthing": int(c["isthing"]), "color": c["color"]} for c in cats]
    out = root / f"ade20k_panoptic_{short}.json"
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": json_cats}))
    return out


def test_ade20k_semantic_layouts(tmp_path):
    root = ade_challenge(tmp_path)
    ds = open_dataset(f"ade20k:{root}")
    assert ds.split == "validation" and len(ds) == 2 and "0 = ignore" in ds.describe()
    raw = np.asarray(Image.open(root / "annotations" / "validation" / "ADE_val_00000001.png")).astype(int)
    assert np.array_equal(ds[0].semantic.astype(int), np.where(raw == 0, 255, raw - 1))
    assert open_dataset(f"ade20k:{tmp_path}").split == "validation"  # the datasets/ folder holding it
    assert open_dataset(f"ade20k:{ADE}").split == ""  # sampleData: no split folders
    msg = error_of(f"ade20k:{root}", purpose="train")
    assert str(root / "images" / "training") in msg and "val" not in msg.split("looked for:")[1]


def test_semantic_format_refuses_ade_labels(tmp_path):
    root = ade_challenge(tmp_path)
    msg = error_of(f"semantic:{root}", categories="ade20k")
    assert "ADEChallengeData2016" in msg and f"ade20k:{root}" in msg and "shift every label by one" in msg
    # the same 1-based PNGs in a folder of another name: found by the values (150 with 150 classes, no 255)
    other = tmp_path / "mine"
    shutil.copytree(root, other)
    for p in (other / "annotations" / "validation").glob("*.png"):
        p.rename(p.with_name(p.name.replace("ADE_val_", "img_")))
        shutil.move(other / "images" / "validation" / p.name.replace(".png", ".jpg"),
                    other / "images" / "validation" / p.name.replace("ADE_val_", "img_").replace(".png", ".jpg"))
    label = other / "annotations" / "validation" / "img_00000001.png"
    arr = np.asarray(Image.open(label)).copy()
    arr[0, 0] = 150
    Image.fromarray(arr).save(label)
    assert "value 150 occurs with 150 classes" in error_of(f"semantic:{other}", categories="ade20k")
    # 0-based with 255 = ignore (Detectron2's annotations_detectron2): read as is; ade20k: refuses it
    ref = list(open_dataset(f"ade20k:{root}"))
    for s in ref:
        Image.fromarray(s.semantic).save(root / "annotations" / "validation" / s.annotation_file.name)
    ok = open_dataset(f"semantic:{root}", categories="ade20k")
    assert ok.split == "validation" and np.array_equal(ok[0].semantic, ref[0].semantic)
    with pytest.raises(DatasetError, match="already 0-based"):
        open_dataset(f"ade20k:{root}")[0]


def test_ade20k_panoptic_layout(tmp_path):
    root = ade_challenge(tmp_path)
    json_file = write_ade_panoptic(root)
    semantic = open_dataset(f"ade20k:{root}")
    for spec in (f"coco_panoptic:{root}", f"coco_panoptic:{tmp_path}", f"coco_panoptic:{json_file}"):
        ds = open_dataset(spec)
        assert len(ds) == 2 and ds.png_dir == root / "ade20k_panoptic_val"
        assert [c["id"] for c in ds.categories] == list(range(150))
        s = ds[1]
        assert s.file_name == root / "images" / "validation" / "ADE_val_00000002.jpg"
        for seg in s.panoptic.segments:  # the panoptic class is the semantic class of its pixels
            assert np.all(semantic[1].semantic[s.panoptic.segment_map == seg.id] == seg.category_id)
    ds = open_dataset(f"coco_panoptic:{root}")
    assert ds.split == "val" and "ADE20K panoptic" in ds.describe() and "ADE20K 0..149" in ds.describe()


# --------------------------------------------------------------------------------------------
# Cityscapes


def cityscapes_root(tmp_path: Path, files=("labelIds", "labelTrainIds", "instanceIds")) -> Path:
    root = tmp_path / "cityscapes"
    img_dir, gt_dir = root / "leftImg8bit" / "val" / "frankfurt", root / "gtFine" / "val" / "frankfurt"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    shutil.copy(CITY / "leftImg8bit" / f"{STEM}_leftImg8bit.png", img_dir)
    for kind in files:
        shutil.copy(CITY / "gtFine" / f"{STEM}_gtFine_{kind}.png", gt_dir)
    return root


def write_cityscapes_panoptic(root: Path, split: str = "val") -> Path:
    """gtFine/cityscapes_panoptic_{split}.json + PNGs as createPanopticImgs writes them: category ids are
    label ids, image ids the stems, images' file_name '<stem>_gtFine_leftImg8bit.png', segments of labels
    ignored in evaluation dropped, a thing label < 1000 a crowd."""
    cats = shipped_categories("cityscapes")
    by_id = {c["id"]: c for c in cats}
    out_dir = root / "gtFine" / f"cityscapes_panoptic_{split}"
    out_dir.mkdir()
    images, annotations = [], []
    for f in sorted((root / "gtFine" / split).glob("*/*_gtFine_instanceIds.png")):
        inst = np.asarray(Image.open(f)).astype(np.int64)
        image_id = f.name.replace("_gtFine_instanceIds.png", "")
        pan = np.zeros(inst.shape, np.int32)
        info = []
        for sid in np.unique(inst).tolist():
            label = sid if sid < 1000 else sid // 1000
            if label not in by_id:
                continue
            mask = inst == sid
            pan[mask] = sid
            ys, xs = np.nonzero(mask)
            info.append({"id": sid, "category_id": label, "area": int(mask.sum()),
                         "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                         "iscrowd": int(sid < 1000 and by_id[label]["isthing"])})
        name = f.name.replace("_instanceIds.png", "_panoptic.png")
        Image.fromarray(id2rgb(pan)).save(out_dir / name)
        images.append({"id": image_id, "width": inst.shape[1], "height": inst.shape[0],
                       "file_name": f.name.replace("_instanceIds.png", "_leftImg8bit.png")})
        annotations.append({"image_id": image_id, "file_name": name, "segments_info": info})
    json_cats = [{"id": c["id"], "name": c["name"], "color": c["color"], "isthing": int(c["isthing"])} for c in cats]
    out = root / "gtFine" / f"cityscapes_panoptic_{split}.json"
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": json_cats}, indent=4))
    return out


def test_cityscapes_label_files(tmp_path):
    root = cityscapes_root(tmp_path)
    gt = root / "gtFine" / "val" / "frankfurt"
    ds = open_dataset(f"cityscapes:{root}")
    assert ds.split == "val" and "labelIds.png (Cityscapes label ids" in ds.describe()
    from_ids = ds[0].semantic
    (gt / f"{STEM}_gtFine_labelIds.png").unlink()
    ds = open_dataset(f"cityscapes:{root}")
    assert "labelTrainIds.png (train ids 0..18 as stored" in ds.describe()
    train_ids = np.asarray(Image.open(gt / f"{STEM}_gtFine_labelTrainIds.png"))
    assert np.array_equal(ds[0].semantic, np.where(train_ids < 19, train_ids, 255))
    assert np.mean(ds[0].semantic == from_ids) > 0.99  # the mmseg sample's two files were downscaled apart
    (gt / f"{STEM}_gtFine_labelTrainIds.png").unlink()
    msg = error_of(f"cityscapes:{root}")
    assert f"{STEM}_gtFine_labelIds.png" in msg and f"{STEM}_gtFine_labelTrainIds.png" in msg
    # mmsegmentation's flat sample (no split or city folders) is read whole; a missing split names its places
    assert open_dataset(f"cityscapes:{CITY}").split == ""
    msg = error_of(f"cityscapes:{root}", purpose="train")
    assert str(root / "leftImg8bit" / "train") in msg


def test_cityscapes_panoptic_layout(tmp_path):
    root = cityscapes_root(tmp_path)
    json_file = write_cityscapes_panoptic(root)
    ref = open_dataset(f"cityscapes:{root}")[0].panoptic
    for spec in (f"coco_panoptic:{root}", f"coco_panoptic:{json_file}"):
        ds = open_dataset(spec)
        s = ds[0]
        assert s.file_name == root / "leftImg8bit" / "val" / "frankfurt" / f"{STEM}_leftImg8bit.png"
        assert ds.categories[13]["id"] == 26 and ds.categories[13]["name"] == "car"  # label ids, train-id order
        assert np.array_equal(s.panoptic.segment_map, ref.segment_map)
        assert sorted((g.id, g.category_id, g.iscrowd) for g in s.panoptic.segments) == \
            sorted((g.id, g.category_id, g.iscrowd) for g in ref.segments)
    assert "Cityscapes label ids 7..33" in open_dataset(f"coco_panoptic:{root}").describe()


# --------------------------------------------------------------------------------------------
# splits, printed split


def test_split_choice():
    assert choose_splits(None, "train").names[0] == "train2017" and not choose_splits(None, "eval").given
    assert choose_splits("", "eval").names == ("",) and choose_splits("x", "train").given
    with pytest.raises(ValueError):
        choose_splits(None, "test")


def test_programs_print_the_split(tmp_path, capsys):
    from m2f_core.data.synthetic import generate_dataset
    from m2f_core.evaluate import main as evaluate_main
    from training.train import main as train_main

    out = tmp_path / "D"
    generate_dataset(out, 1, seed=0, split="val", size=(96, 96))
    generate_dataset(out, 2, seed=0, split="train", size=(96, 96))
    code = evaluate_main(["model", "--format", "coco_panoptic", "--ann", str(out), "--weights",
                          str(tmp_path / "missing-weights")])
    err = capsys.readouterr().err
    assert code == 2 and f"dataset coco_panoptic:{out}: 1 images" in err and "split 'val'" in err
    # the trainer reads the training split of the same root, its --val the validation split, and says so
    code = train_main(["--train", f"coco_panoptic:{out}", "--val", f"coco_panoptic:{out}", "--out",
                       str(tmp_path / "run"), "--init", str(tmp_path / "missing-weights"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "missing-weights" in err
    assert f"train coco_panoptic:{out}: 2 images" in err and "split 'train' (the default for training" in err
    assert f"val coco_panoptic:{out}: 1 images" in err and "split 'val' (the default for evaluation" in err


# --------------------------------------------------------------------------------------------
# console commands, --limit, the FiftyOne CLI's folders


SCRIPTS = {"m2f-app": "app.launcher", "m2f-predict": "m2f_core.predict", "m2f-evaluate": "m2f_core.evaluate",
           "m2f-train": "training.train", "m2f-finetune": "training.finetune", "m2f-convert": "m2f_core.convert",
           "m2f-fiftyone": "app.fiftyone_bridge.__main__"}


def test_console_scripts_declared():
    import importlib

    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {name: f"{module}:main" for name, module in SCRIPTS.items()}
    for module in SCRIPTS.values():
        assert callable(importlib.import_module(module).main)


@pytest.mark.parametrize("name", ["m2f-evaluate", "m2f-fiftyone"])
def test_console_script_has_the_module_options(name):
    exe = Path(sys.executable).parent / name
    if not exe.exists():
        pytest.skip(f"{name} not installed (pip install -e .)")
    module = SCRIPTS[name].removesuffix(".__main__")
    installed = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO.parent)
    by_module = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                               timeout=120, cwd=REPO)
    assert installed.returncode == by_module.returncode == 0
    # the same options and help; only the usage line names the command as it was typed
    assert installed.stdout.startswith(f"usage: {name} ") and by_module.stdout.startswith(f"usage: python -m {module}")
    assert installed.stdout.split("\n\n", 1)[1] == by_module.stdout.split("\n\n", 1)[1]


def test_app_script_runs_the_launcher():
    exe = Path(sys.executable).parent / "m2f-app"
    if not exe.exists():
        pytest.skip("m2f-app not installed (pip install -e .)")
    installed = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO.parent)
    by_file = subprocess.run([sys.executable, "launch.py", "--help"], capture_output=True, text=True, timeout=120,
                             cwd=REPO)
    assert installed.returncode == by_file.returncode == 0
    assert installed.stdout.replace("m2f-app", "launch.py").split() == by_file.stdout.split()


@pytest.mark.parametrize("argv", [
    ["m2f_core.evaluate", "model", "--format", "coco_panoptic", "--ann", "x", "--limit", "0"],
    ["m2f_core.evaluate", "model", "--format", "coco_panoptic", "--ann", "x", "--limit", "-1"],
    ["app.fiftyone_bridge.__main__", "predict", "--name", "x", "--limit", "0"],
    ["app.fiftyone_bridge.__main__", "evaluate", "--name", "x", "--limit", "-3"],
    ["training.train", "--train", "coco_panoptic:x", "--out", "o", "--eval-limit", "0"],
], ids=["evaluate-0", "evaluate-neg", "bridge-predict-0", "bridge-evaluate-neg", "train-eval-limit-0"])
def test_limit_must_be_positive(argv, capsys):
    import importlib

    parser = importlib.import_module(argv[0]).build_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv[1:])
    assert e.value.code == 2 and "positive" in capsys.readouterr().err
    assert parser.parse_args([*argv[1:-1], "3"]).__dict__.get("limit", 3) == 3


def test_workspace_folders(tmp_path, monkeypatch):
    from app import workspace

    monkeypatch.delenv("M2F_CORRECTIONS_DIR", raising=False)
    monkeypatch.delenv("M2F_RUNS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert workspace.corrections_dir() == tmp_path.resolve() / "datasets" / "corrections"
    assert workspace.runs_dir() == tmp_path.resolve() / "runs"
    monkeypatch.setenv("M2F_CORRECTIONS_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("M2F_RUNS_DIR", str(tmp_path / "r"))
    assert workspace.corrections_dir() == tmp_path.resolve() / "c" and workspace.runs_dir() == tmp_path.resolve() / "r"
    assert workspace.workspace_env() == {"M2F_CORRECTIONS_DIR": str(tmp_path.resolve() / "c"),
                                         "M2F_RUNS_DIR": str(tmp_path.resolve() / "r")}
    # run from installed code (the FiftyOne App server's working folder): never written there
    monkeypatch.delenv("M2F_CORRECTIONS_DIR")
    monkeypatch.delenv("M2F_RUNS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for cwd in (REPO / "app", REPO / "m2f_core" / "data", Path(np.__file__).parent):
        monkeypatch.chdir(cwd)
        for folder in (workspace.corrections_dir(), workspace.runs_dir()):
            assert folder.is_relative_to(tmp_path / "home" / "m2f-workbench"), folder


def test_fiftyone_cli_finetune_folders(tmp_path, monkeypatch):
    pytest.importorskip("fiftyone")
    import app.fiftyone_bridge.__main__ as cli
    from app.fiftyone_bridge import finetune

    class Record:
        def to_dict(self):
            return {}

    started = []
    monkeypatch.setattr(cli, "_view", lambda args: (type("DS", (), {"slug": "ds"})(), [1, 2, 3]))
    monkeypatch.setattr(finetune, "training_plan", lambda n, val, extra=(): ("plan", None))
    monkeypatch.setattr(finetune, "start_finetune", lambda view, export, run_dir, **kw: started.append(
        (export, run_dir)) or Record())
    args = cli.build_parser().parse_args(["finetune", "--name", "ds", "--view-tag", "fixed", "--confirm-few"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("M2F_CORRECTIONS_DIR", raising=False)
    monkeypatch.delenv("M2F_RUNS_DIR", raising=False)
    assert cli.cmd_finetune(args) == 0
    monkeypatch.setenv("M2F_CORRECTIONS_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("M2F_RUNS_DIR", str(tmp_path / "r"))
    assert cli.cmd_finetune(args) == 0
    here = tmp_path.resolve()
    assert started == [(here / "datasets" / "corrections" / "fixed", here / "runs" / "fiftyone-fixed"),
                       (here / "c" / "fixed", here / "r" / "fiftyone-fixed")]
    assert not any(p.is_relative_to(REPO) for pair in started for p in pair)
    assert os.environ.get("M2F_RUNS_DIR") == str(tmp_path / "r")


def test_app_prints_the_split(tmp_path, monkeypatch, capsys):
    gr = pytest.importorskip("gradio")
    from app import launcher
    from m2f_core.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "D", 1, seed=0, split="val", size=(96, 96))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: None)
    monkeypatch.setattr(launcher.signal, "signal", lambda *args: None)  # keep pytest's own SIGTERM handling
    assert launcher.main(["--no-browser", "--no-examples", "--dataset", f"coco_panoptic:{tmp_path / 'D'}",
                          "--corrections-dir", str(tmp_path / "c"), "--runs-dir", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert f"dataset coco_panoptic:{tmp_path / 'D'}: 1 images" in err
    assert "split 'val' (the default for evaluation" in err
