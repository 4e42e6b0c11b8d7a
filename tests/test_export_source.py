"""An app export of dataset images evaluates against the dataset it came from (issue 18, part 5).

A synthetic dataset (image ids 0..2: the case that used to fail with "no prediction for the image with
id 0") browsed in a ``Workbench`` with the built-in model; the exports are real folders on disk, read
back with the trainer's readers and evaluated with ``python -m m2f_core.evaluate panoptic``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from app_helpers import make_test_scene

from app.workbench import Workbench
from m2f_core.data.corrections import CorrectionsDataset
from m2f_core.data.synthetic import generate_dataset, synthetic_dataset
from m2f_core.evaluate import main as evaluate_main
from training.finetune_data import image_status, read_manifest

NAMES = ["000000.jpg", "000001.jpg", "000002.jpg"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A 3-image synthetic split (ids 0..2) in the corrections layout."""
    root = tmp_path_factory.mktemp("source")
    generate_dataset(root, len(NAMES), seed=4242, split="val")
    return root / "val"


@pytest.fixture(scope="module")
def predictor():
    from m2f_core.predictor import Predictor

    return Predictor(device="cpu")  # the built-in model: it knows the synthetic classes


@pytest.fixture(scope="module")
def wb(source, predictor, tmp_path_factory) -> Workbench:
    tmp = tmp_path_factory.mktemp("wb")
    return Workbench(predictor, tmp / "corrections", dataset=synthetic_dataset(source.parent, "val"),
                     dataset_spec=f"corrections:{source}", work_dir=tmp / "work",
                     weights_label="built-in", weights_source="builtin")


@pytest.fixture(scope="module")
def corrected(wb, tmp_path_factory):
    """One session: image 0 edited, image 1 reviewed, image 2 opened and left, an upload reviewed."""
    s = wb.new_session()
    wb.start(s)
    session = s.workspace.session()
    session.delete(max(session.segments, key=lambda seg: seg.area).id)
    wb.step(s, 1)
    assert "marked reviewed" in wb.mark_reviewed(s).status
    wb.step(s, 1)
    upload = make_test_scene(tmp_path_factory.mktemp("upload") / "scene.png")
    assert "image" in wb.open_upload(s, upload).canvas
    assert "marked reviewed" in wb.mark_reviewed(s).status
    return s


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_default_export_keeps_source_ids_and_names(wb, corrected):
    screen = wb.export(corrected, "default")
    assert "exported 3 image(s) (1 edited, 2 reviewed)" in screen.status, screen.status
    assert "1 untouched image(s) left out" in screen.status
    folder = wb.corrections_dir / "default"
    pan, ins = _json(folder / "panoptic.json"), _json(folder / "instances.json")
    # source ids kept; the upload gets an id above every id of the dataset (not 2, which image 2 has)
    expected = {0: "000000.jpg", 1: "000001.jpg", 3: "scene.png"}
    assert {im["id"]: im["file_name"] for im in pan["images"]} == expected
    assert {im["id"]: im["file_name"] for im in ins["images"]} == expected
    assert {a["image_id"]: a["file_name"] for a in pan["annotations"]} == {0: "000000.png", 1: "000001.png",
                                                                          3: "scene.png"}
    assert sorted(p.name for p in (folder / "semantic").glob("*.png")) == ["000000.png", "000001.png", "scene.png"]
    assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(expected.values())
    assert {im["image_id"] for im in _json(folder / "edits.json")["images"]} == set(expected)


def test_manifest(wb, corrected, source):
    wb.export(corrected, "manifest")
    folder = wb.corrections_dir / "manifest"
    manifest = _json(folder / "manifest.json")
    assert manifest["source"] == f"corrections:{source}" and manifest["weights"] == "built-in"
    assert manifest["weights_source"] == "builtin"
    datetime.fromisoformat(manifest["created"])
    images = {im["file_name"]: im for im in manifest["images"]}
    assert list(images) == ["000000.jpg", "000001.jpg", "scene.png"]
    assert {n: (im["image_id"], im["source_image_id"], im["status"], im["edits"]) for n, im in images.items()} == {
        "000000.jpg": (0, 0, "edited", 1), "000001.jpg": (1, 1, "reviewed", 0), "scene.png": (3, None, "reviewed", 0)}
    for im in images.values():
        assert im["weights"] == "built-in"
        datetime.fromisoformat(im["opened"])
    # what the fine-tuner reads from it
    data = CorrectionsDataset(folder)
    assert image_status(data, read_manifest(folder)) == ["edited", "reviewed", "reviewed"]


def test_include_untouched_and_review_toggle(wb, corrected):
    screen = wb.export(corrected, "all", include_untouched=True)
    assert "exported 4 image(s) (1 edited, 2 reviewed, 1 untouched)" in screen.status, screen.status
    folder = wb.corrections_dir / "all"
    statuses = {im["file_name"]: im["status"] for im in _json(folder / "manifest.json")["images"]}
    assert statuses == {"000000.jpg": "edited", "000001.jpg": "reviewed", "000002.jpg": "untouched",
                        "scene.png": "reviewed"}
    assert image_status(CorrectionsDataset(folder), read_manifest(folder)).count("untouched") == 1
    assert {im["id"] for im in _json(folder / "panoptic.json")["images"]} == {0, 1, 2, 3}
    # the current image is the upload: a second press unmarks it, and the default export leaves it out
    assert "no longer marked reviewed" in wb.mark_reviewed(corrected).status
    assert "exported 2 image(s)" in wb.export(corrected, "unmarked").status
    assert "marked reviewed" in wb.mark_reviewed(corrected).status


def test_export_evaluates_against_its_source(wb, predictor, source, capsys):
    """The unedited model output of every image, exported, gives through the CLI the PQ that the library
    computes in-process from the same predictions; a partial export evaluates with --only-predicted."""
    from m2f_core.metrics.model_eval import evaluate_model

    s = wb.new_session()
    wb.start(s)
    for _ in NAMES[1:]:
        wb.step(s, 1)
    status = wb.export(s, "nothing").status  # all predicted, none edited or reviewed: say so, and the way out
    assert "nothing to export" in status and "no image is edited or marked reviewed" in status
    assert "Include untouched images" in status and not (wb.corrections_dir / "nothing").exists()
    assert "exported 3 image(s)" in wb.export(s, "model", include_untouched=True).status
    export = wb.corrections_dir / "model"
    gt = ["--gt-json", str(source / "panoptic.json"), "--gt-dir", str(source / "panoptic")]
    proc = subprocess.run([sys.executable, "-m", "m2f_core.evaluate", "panoptic", *gt,
                           "--pred-json", str(export / "panoptic.json"), "--pred-dir", str(export / "panoptic")],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)
    lib = evaluate_model(predictor, synthetic_dataset(source.parent, "val"), progress=False)["panoptic"]
    assert cli["PQ"] > 10.0  # the built-in model segments synthetic scenes: a real comparison, not 0 == 0
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert cli[key] == pytest.approx(lib[key], abs=1e-6), key

    # one edited image of three: the whole ground truth needs every image, --only-predicted takes the one
    session = s.workspace.session()
    session.delete(max(session.segments, key=lambda seg: seg.area).id)
    assert "exported 1 image(s)" in wb.export(s, "one").status
    one = wb.corrections_dir / "one"
    pred = ["--pred-json", str(one / "panoptic.json"), "--pred-dir", str(one / "panoptic")]
    assert evaluate_main(["panoptic", *gt, *pred]) == 2
    assert "no prediction for the image with id 0" in capsys.readouterr().err
    assert evaluate_main(["panoptic", *gt, *pred, "--only-predicted"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 1 and result["PQ"] is not None


def test_export_items_ids_and_no_manifest_for_plain_pairs(tmp_path):
    """Fresh ids avoid the reserved ones; a source id given twice is refused; plain (path, session) pairs
    (the FiftyOne bridge's labels) get ids 1..N and no manifest, so the trainer takes them all as edited."""
    import numpy as np
    from PIL import Image

    from app.editing import EditSession
    from app.export import ExportError, ExportItem, export_corrections
    from m2f_core.structures import PanopticResult, Segment

    cats = [{"id": 1, "name": "disc", "isthing": 1}, {"id": 7, "name": "sky", "isthing": 0}]
    seg_map = np.zeros((20, 30), np.int32)
    seg_map[:10] = 1

    def session() -> EditSession:
        sky = Segment(id=1, category_id=1, isthing=False, score=1.0)
        return EditSession.from_panoptic(PanopticResult(seg_map.copy(), [sky]), cats)

    paths = []
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    items = [ExportItem(paths[0], session(), "reviewed", source_image_id=5), ExportItem(paths[1], session())]
    root = export_corrections(items, cats, tmp_path / "out", "kept", manifest={"source": None},
                              reserved_ids={5, 9, "x"})
    assert [im["id"] for im in _json(root / "panoptic.json")["images"]] == [5, 10]
    assert [im["status"] for im in _json(root / "manifest.json")["images"]] == ["reviewed", "edited"]
    with pytest.raises(ExportError, match="source image id 5"):
        export_corrections([items[0], ExportItem(paths[1], session(), source_image_id=5)], cats, tmp_path / "out",
                           "twice")
    plain = export_corrections([(p, session()) for p in paths], cats, tmp_path / "out", "plain")
    assert [im["id"] for im in _json(plain / "panoptic.json")["images"]] == [1, 2]
    assert not (plain / "manifest.json").exists()
