"""The editor round trip: a FiftyOne sample opened in the Gradio editor, corrected, exported, and brought
back into ``edited_*`` fields of that sample (``app.fiftyone_bridge.edits.pull_edits``).

The real MongoDB that fiftyone-db ships (database in a temporary folder), synthetic scenes with the
classes of the built-in model. The link's ``fo_dataset`` / ``fo_sample`` checks and the export
manifest's ``user`` / ``fiftyone`` need no database; the browser test edits in Chromium (the app of
``conftest.server``) and reads the edit back from the dataset.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from browser_helpers import BROWSER_MARKS, click_pixel, inner_point, wait_canvas, wait_status
from fiftyone_helpers import fiftyone_env
from PIL import Image

from app.errors import UserError
from app.fiftyone_bridge.editor import editor_url, link_origin

pytestmark = [  # FiftyOne's own dependencies (psutil, mongoengine), not our code
    pytest.mark.filterwarnings("ignore:connections\\(\\) is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:No uuidRepresentation is specified:DeprecationWarning"),
]

SAMPLE_ID = "0123456789abcdef01234567"


# ------------------------------------------------------------------------------------------ no database


def test_link_names_the_sample_and_is_checked():
    url = editor_url("http://127.0.0.1:7860/", "/tmp/c/x/images/a.png", "/tmp/c/x",
                     {"dataset": "my data", "sample_id": SAMPLE_ID})
    query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    assert query["fo_dataset"] == "my data" and query["fo_sample"] == SAMPLE_ID
    assert link_origin(query) == {"dataset": "my data", "sample_id": SAMPLE_ID}
    assert link_origin({"image": "/x.png"}) is None  # a plain link names no sample
    for params, fragment in (({"fo_dataset": "d"}, "go together"), ({"fo_sample": SAMPLE_ID}, "go together"),
                             ({"fo_dataset": "d", "fo_sample": "../../etc"}, "24 hex digits"),
                             ({"fo_dataset": "d", "fo_sample": SAMPLE_ID.upper()}, "24 hex digits"),
                             ({"fo_dataset": "a\nb", "fo_sample": SAMPLE_ID}, "not valid"),
                             ({"fo_dataset": "x" * 201, "fo_sample": SAMPLE_ID}, "not valid")):
        with pytest.raises(UserError, match=fragment):
            link_origin(params)


def test_manifest_records_user_time_and_sample(tmp_path, monkeypatch):
    from app.editing import EditSession
    from app.export import ExportItem, export_corrections, export_user
    from m2f_core.data.synthetic import generate_scene
    from m2f_core.structures import PanopticResult

    image, seg_map, segments = generate_scene(np.random.default_rng(1), 128, 160)
    path = tmp_path / "a.png"
    Image.fromarray(image).save(path)
    cats = [{"id": i + 1, "name": n, "isthing": i < 6} for i, n in enumerate(
        ["disc", "box", "triangle", "star", "ring", "bar", "sky", "grass", "water", "brick wall", "road"])]
    session = EditSession.from_panoptic(PanopticResult(seg_map, segments), cats)
    monkeypatch.setenv("M2F_USER", "ana")
    assert export_user() == "ana"
    origin = {"dataset": "ds", "sample_id": SAMPLE_ID}
    folder = export_corrections([ExportItem(path, session, "reviewed", fiftyone=origin)], cats, tmp_path / "out",
                                "one", manifest={"source": None, "weights": "w"})
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["user"] == "ana" and manifest["weights"] == "w"
    assert abs(datetime.fromisoformat(manifest["created"]) - datetime.now(timezone.utc)) < timedelta(minutes=5)
    assert manifest["images"][0]["fiftyone"] == origin
    monkeypatch.delenv("M2F_USER")
    assert export_user()  # the login name


# ------------------------------------------------------------------------------------------ FiftyOne


@pytest.fixture(scope="module")
def fo_env(tmp_path_factory):
    """FiftyOne on a database in a temporary folder (tests/fiftyone_helpers.py)."""
    with fiftyone_env(tmp_path_factory.mktemp("fiftyone")) as env:
        yield env


def _scenes_dataset(tmp_path_factory, name: str, seeds: tuple[int, ...]):
    """Synthetic scenes (the built-in model's classes) as a corrections folder, imported as ``name``."""
    from app.fiftyone_bridge.core import import_dataset
    from m2f_core.checkpoint import load_model
    from m2f_core.data.categories import categories_from_config
    from m2f_core.data.corrections import write_corrections
    from m2f_core.data.records import Sample
    from m2f_core.data.synthetic import generate_scene
    from m2f_core.structures import PanopticResult

    src = tmp_path_factory.mktemp(f"{name}_src")
    samples = []
    for i, seed in enumerate(seeds):
        image, seg_map, segments = generate_scene(np.random.default_rng(seed), 256, 320)
        path = src / f"scene_{i}.png"
        Image.fromarray(image).save(path)
        samples.append(Sample(image_id=i + 1, file_name=path, height=256, width=320,
                              panoptic=PanopticResult(seg_map, segments)))
    root = tmp_path_factory.mktemp(name) / "scenes"
    write_corrections(root, samples, categories_from_config(load_model().config))
    return import_dataset("corrections", root, name, progress=False, overwrite=True)


def _truth(sample, prefix: str = "gt"):
    """The sample's ``prefix`` panoptic labels as (segment map, class map with -1 = void)."""
    from app.fiftyone_bridge.convert import ClassIndex, detections_to_panoptic
    from app.fiftyone_bridge.core import categories

    classes = ClassIndex(categories(sample._dataset))
    pan = detections_to_panoptic(sample[f"{prefix}_panoptic"], classes, 256, 320)
    lut = np.full(int(pan.segment_map.max()) + 1, -1)
    for s in pan.segments:
        lut[s.id] = s.category_id
    return pan, lut[pan.segment_map]


def _editor_export(sample, corrections: Path, name: str, edit=None, user: str = "ana") -> Path:
    """What the editor writes when a user opened ``sample`` by its link, edited it and exported as ``name``."""
    from app.editing import EditSession
    from app.export import ExportItem, export_corrections
    from app.fiftyone_bridge.core import categories

    pan, _ = _truth(sample)
    cats = categories(sample._dataset)
    session = EditSession.from_panoptic(pan, cats)
    if edit is not None:
        edit(session)
    origin = {"dataset": sample._dataset.name, "sample_id": sample.id}
    item = ExportItem(Path(sample.filepath), session, "edited" if session.has_edits else "reviewed", fiftyone=origin)
    os.environ["M2F_USER"] = user
    try:
        return export_corrections([item], cats, corrections, name, overwrite=True,
                                  manifest={"source": None, "weights": "builtin"})
    finally:
        del os.environ["M2F_USER"]


def _delete_largest_thing(session) -> None:
    sid = max((s for s in session.segments if s.isthing), key=lambda s: s.area).id
    session.delete(sid)


def test_pull_imports_replaces_is_idempotent_and_refuses(fo_env, tmp_path_factory, tmp_path):
    from app.fiftyone_bridge.edits import pull_edits

    ds = _scenes_dataset(tmp_path_factory, "roundtrip-unit", (100, 101, 102, 103))
    a, b, c, d = list(ds)
    corrections = tmp_path / "corrections"
    first = _editor_export(a, corrections, "first", _delete_largest_thing)
    _editor_export(b, corrections, "b-reviewed")

    report = pull_edits(ds, corrections)
    assert sorted(r["sample_id"] for r in report.imported) == sorted([a.id, b.id]) and not report.refused
    a.reload()
    gt_pan, gt_cls = _truth(a)
    _, edited_cls = _truth(a, "edited")
    deleted = max((s for s in gt_pan.segments if s.isthing), key=lambda s: s.area).id
    where = gt_pan.segment_map == deleted
    assert (edited_cls[where] == -1).all() and np.array_equal(edited_cls[~where], gt_cls[~where])
    assert "edited" in a.tags and a["edited_by"] == "ana" and a["edited_export"] == str(first.resolve())
    assert a["edited_instances"] is not None and a["edited_semantic"] is not None
    assert "edited_semantic" in ds.mask_targets

    again = pull_edits(ds, corrections)  # idempotent
    assert again.imported == [] and again.unchanged == 2 and len(ds.match_tags("edited")) == 2

    # a newer export of the same sample replaces the older one, and the log says so
    newer = _editor_export(a, corrections, "second", user="bo")  # reviewed: the ground truth as it was
    report = pull_edits(ds, corrections)
    assert [(r["sample_id"], r["replaced"]) for r in report.imported] == [(a.id, str(first.resolve()))]
    a.reload()
    assert a["edited_by"] == "bo" and a["edited_export"] == str(newer.resolve())
    assert np.array_equal(_truth(a, "edited")[1], gt_cls)
    assert ds.info["m2f_edits"][-1]["imported"][0]["replaced"] == str(first.resolve())
    shutil.rmtree(newer)  # the newer export gone: the older one never reverts the sample
    assert pull_edits(ds, corrections).kept_newer == 1
    a.reload()
    assert a["edited_by"] == "bo"

    # refused: another image under the sample's name (bytes, then size), a class the dataset lacks, a deleted sample
    bad = _editor_export(c, corrections, "bytes")
    img = np.asarray(Image.open(bad / "images" / Path(c.filepath).name)).copy()
    img[0, 0] ^= 1
    Image.fromarray(img).save(bad / "images" / Path(c.filepath).name)
    small = _editor_export(d, corrections, "size")
    Image.new("RGB", (32, 32)).save(small / "images" / Path(d.filepath).name)
    report = pull_edits(ds, corrections)
    lines = " | ".join(report.refused)
    assert "differs from the sample's file" in lines and "32x32, the sample's 320x256" in lines, lines
    c.reload()
    assert report.imported == [] and "edited" not in c.tags
    shutil.rmtree(bad)
    shutil.rmtree(small)
    linked = _editor_export(c, corrections, "linked")  # an image that is a link out of the export: not read
    (linked / "images" / Path(c.filepath).name).unlink()
    (linked / "images" / Path(c.filepath).name).symlink_to(c.filepath)
    assert "leads out of the export" in " ".join(pull_edits(ds, corrections).refused)
    shutil.rmtree(linked)

    unknown = _editor_export(c, corrections, "unknown")
    data = json.loads((unknown / "panoptic.json").read_text())
    used = data["annotations"][0]["segments_info"][0]["category_id"]
    for cat in data["categories"]:  # the editor's model knew a class the dataset does not have
        if cat["id"] == used:
            cat["name"] = "zebra"
    (unknown / "panoptic.json").write_text(json.dumps(data))
    d_id = d.id
    ds.delete_samples([d_id])
    gone = _editor_export(b, corrections, "gone")
    manifest = json.loads((gone / "manifest.json").read_text())
    manifest["images"][0]["fiftyone"]["sample_id"] = d_id
    (gone / "manifest.json").write_text(json.dumps(manifest))
    report = pull_edits(ds, corrections)
    lines = " | ".join(report.refused)
    assert "classes the dataset does not have: zebra" in lines, lines
    assert f"sample {d_id}: not in dataset" in lines, lines


def test_export_and_finetune_prefer_the_edited_labels(fo_env, tmp_path_factory, tmp_path, capsys):
    from app.fiftyone_bridge.__main__ import main
    from app.fiftyone_bridge.core import export_view
    from app.fiftyone_bridge.edits import pull_edits
    from m2f_core.data.corrections import CorrectionsDataset

    ds = _scenes_dataset(tmp_path_factory, "roundtrip-export", (110, 111))
    a, b = list(ds)
    corrections = tmp_path / "corrections"
    _editor_export(a, corrections, "fix-a", _delete_largest_thing)
    assert main(["pull-edits", "--name", ds.name, "--corrections-dir", str(corrections)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["imported"]) == 1 and out["fields"][0] == "edited_panoptic"

    folder = export_view(ds, tmp_path / "train", prefix="edited,gt")
    read = {Path(r.file_name).name: r for r in (CorrectionsDataset(folder)[i] for i in range(2))}
    a.reload()
    for sample, prefix in ((a, "edited"), (b, "gt")):
        record = read[Path(sample.filepath).name]
        classes = np.full(int(record.panoptic.segment_map.max()) + 1, -1)
        for s in record.panoptic.segments:
            classes[s.id] = s.category_id
        assert np.array_equal(classes[record.panoptic.segment_map], _truth(sample, prefix)[1]), prefix
    # opened again in the editor, a sample shows its correction
    from app.fiftyone_bridge.editor import editor_link

    _, opened = editor_link(ds.select(a.id), corrections)
    record = CorrectionsDataset(opened)[0]
    classes = np.full(int(record.panoptic.segment_map.max()) + 1, -1)
    for s in record.panoptic.segments:
        classes[s.id] = s.category_id
    assert np.array_equal(classes[record.panoptic.segment_map], _truth(a, "edited")[1])
    # the CLI's default is that preference; only the edited samples: --view-tag edited
    assert main(["export", "--name", ds.name, "--view-tag", "edited", "--out", str(tmp_path / "cli")]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 1
    assert pull_edits(ds, corrections).unchanged == 1


def test_plugin_operator_brings_the_corrections_back(fo_env, tmp_path_factory, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    import fiftyone.operators as foo

    from app.fiftyone_bridge import PLUGIN_NAME
    from app.fiftyone_bridge.core import install_plugin

    install_plugin()
    ds = _scenes_dataset(tmp_path_factory, "roundtrip-plugin", (120,))
    corrections = tmp_path / "corrections"
    _editor_export(ds.first(), corrections, "fix", _delete_largest_thing)
    uri = f"{PLUGIN_NAME}/pull_edits"
    assert uri in {op.uri for op in foo.list_operators()}
    ctx = {"dataset": ds, "view": ds.view(), "params": {"corrections_dir": str(corrections)}}
    with ThreadPoolExecutor(1) as pool:  # FiftyOne's execute_operator wants a thread without an event loop
        result = pool.submit(foo.execute_operator, uri, ctx=ctx).result()
    assert result.result["imported"] == 1 and result.result["refused"] == []
    assert len(ds.match_tags("edited")) == 1


def test_open_link_then_export_records_the_sample(fo_env, tmp_path_factory, tmp_path):
    """In process, no browser: the page-load hook remembers the link's sample, the app's export writes it."""
    from app.fiftyone_bridge.editor import editor_link, open_from_query
    from app.workbench import Workbench
    from m2f_core.predictor import Predictor

    ds = _scenes_dataset(tmp_path_factory, "roundtrip-link", (130,))
    sample = ds.first()
    corrections = tmp_path / "corrections"
    url, _ = editor_link(ds.select(sample.id), corrections)
    query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    wb = Workbench(Predictor(), corrections, work_dir=tmp_path / "work")
    s = wb.new_session()
    screen = open_from_query(wb, s, query)
    assert "opened" in screen.status and f"FiftyOne sample {sample.id}" in screen.status, screen.status
    wb.mark_reviewed(s, True)
    wb.export(s, "linked")
    manifest = json.loads((corrections / "linked" / "manifest.json").read_text())
    assert manifest["images"][0]["fiftyone"] == {"dataset": ds.name, "sample_id": sample.id}
    bad = open_from_query(wb, wb.new_session(), {**query, "fo_sample": "nope"})
    assert "24 hex digits" in bad.status


# ------------------------------------------------------------------------------------------ the browser


def browser_test(test):
    """The marks of every browser test (Chromium present, Playwright's warnings)."""
    for mark in BROWSER_MARKS:
        test = mark(test)
    return test


@pytest.mark.slow
@browser_test
def test_edit_in_the_browser_comes_back_to_the_sample(fo_env, tmp_path_factory, page, server):
    """Open the link in Chromium, delete a segment, Ctrl+S, pull-edits: the sample's ``edited_panoptic``
    differs from its ground truth exactly there, is tagged and says who and when; pulling again changes nothing."""
    from app.export import export_user
    from app.fiftyone_bridge.editor import editor_link
    from app.fiftyone_bridge.edits import pull_edits

    ds = _scenes_dataset(tmp_path_factory, "roundtrip-browser", (140,))
    sample = ds.first()
    gt_pan, gt_cls = _truth(sample)
    target = max((s for s in gt_pan.segments if s.isthing), key=lambda s: s.area)
    url, _ = editor_link(ds.select(sample.id), server["corrections"], base_url=server["url"])

    page.set_default_timeout(90_000)
    page.goto(url, wait_until="load")
    wait_status(page, "opened", timeout=120_000)
    wait_canvas(page, "d.image === arg", Path(sample.filepath).name)
    click_pixel(page, *inner_point(gt_pan.segment_map == target.id))
    selected = wait_canvas(page, "d.selected && d.selected !== ''")["selected"]
    assert selected == str(target.id)  # the editor keeps the sample's segment ids
    page.keyboard.press("Delete")
    wait_status(page, f"deleted #{selected}")
    name_box = page.locator("#export-name textarea, #export-name input").first
    name_box.fill("fo-roundtrip")
    name_box.blur()
    page.keyboard.press("Control+s")
    wait_status(page, "exported 1 image")

    started = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=10)
    report = pull_edits(ds, server["corrections"])
    assert [r["sample_id"] for r in report.imported] == [sample.id] and not report.refused, report
    sample.reload()
    _, edited_cls = _truth(sample, "edited")
    where = gt_pan.segment_map == target.id
    assert where.any() and (edited_cls[where] == -1).all()  # deleted: void exactly there
    assert np.array_equal(edited_cls[~where], gt_cls[~where])  # the rest as it was
    assert "edited" in sample.tags and sample["edited_by"] == export_user()
    assert sample["edited_at"] > started and sample["edited_export"].endswith("fo-roundtrip")
    again = pull_edits(ds, server["corrections"])
    assert again.imported == [] and again.unchanged == 1
