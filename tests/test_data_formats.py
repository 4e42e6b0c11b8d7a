"""Dataset readers and writers on real annotation files (COCO panoptic/instances, ADE20K, Cityscapes).

The real files live in the read-only shared folder; anything a test changes is copied to tmp_path.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from m2f_core.atomic import atomic_write_bytes
from m2f_core.data.ade20k import ADE20KSemantic
from m2f_core.data.categories import shipped_categories
from m2f_core.data.cityscapes import CityscapesDataset
from m2f_core.data.coco_instances import CocoInstances, write_coco_instance_results, write_coco_instances
from m2f_core.data.coco_panoptic import CocoPanoptic, id2rgb, rgb2id, write_coco_panoptic
from m2f_core.data.errors import DatasetError
from m2f_core.data.records import GTSegment, InstanceAnnotation, Sample, panoptic_to_semantic
from m2f_core.data.semantic import SemanticFolder, read_semantic_png, write_semantic_png
from m2f_core.data.specs import open_dataset, parse_dataset_spec
from m2f_core.structures import InstanceResult, PanopticResult, Segment

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
PANAPI = REAL / "coco_panoptic_panopticapi"
PAN_JSON = PANAPI / "sample_data" / "panoptic_examples.json"
PAN_PNG_DIR = PANAPI / "sample_data" / "panoptic_examples"
PAN_IMAGES = PANAPI / "sample_data" / "input_images"
HF = REAL / "coco_hf_transformers" / "tests" / "fixtures" / "tests_samples" / "COCO"
ADE = REAL / "ade20k_sceneparsing150"
CITY = REAL / "cityscapes_mmseg" / "tests" / "data" / "pseudo_cityscapes_dataset"
LABELME = REAL / "voc_labelme" / "examples" / "instance_segmentation"

# pycocotools' decode under numpy 2 (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def real() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"shared real data not found at {REAL} (the sibling checkout 'shared/data/real')")
    return REAL


def one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    """The error is a DatasetError (a ValueError) on one line containing every fragment."""
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


def copy_panoptic(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A writable copy of the panopticapi sample: (json, png_dir, parsed json)."""
    png_dir = tmp_path / "panoptic_examples"
    shutil.copytree(PAN_PNG_DIR, png_dir)
    json_file = tmp_path / "panoptic_examples.json"
    shutil.copy(PAN_JSON, json_file)
    return json_file, png_dir, json.loads(json_file.read_text())


def fortran_uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE written independently of pycocotools: column-major runs, zeros first."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


# --------------------------------------------------------------------------------------------
# id <-> RGB


def test_rgb2id_id2rgb():
    rgb = np.array([[[1, 2, 3], [0, 0, 0]], [[255, 255, 255], [7, 0, 1]]], dtype=np.uint8)
    ids = rgb2id(rgb)
    assert ids.tolist() == [[1 + 2 * 256 + 3 * 65536, 0], [2**24 - 1, 7 + 65536]]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 2**24, size=(17, 23), dtype=np.int64)
    assert np.array_equal(rgb2id(id2rgb(ids)), ids)
    with pytest.raises(ValueError):
        id2rgb(np.array([[2**24]]))


# --------------------------------------------------------------------------------------------
# COCO panoptic


def test_coco_panoptic_real(real):
    data = json.loads(PAN_JSON.read_text())
    ds = CocoPanoptic(PAN_JSON, image_dir=PAN_IMAGES)
    assert len(ds) == 1 and len(ds.categories) == 133
    s = ds[0]
    assert s.image_id == 142238 and (s.height, s.width) == (427, 640)
    assert s.file_name == PAN_IMAGES / "000000142238.jpg" and s.file_name.is_file()
    info = {d["id"]: d for d in data["annotations"][0]["segments_info"]}
    segs = {seg.id: seg for seg in s.panoptic.segments}
    assert set(segs) == set(info) and len(segs) == 18
    assert sum(seg.isthing for seg in segs.values()) == 15
    assert [seg.id for seg in segs.values() if seg.iscrowd] == [d["id"] for d in info.values() if d["iscrowd"]]
    assert len(s.crowd_ids) == 1
    assert len({seg.category_id for seg in segs.values()}) == 5
    for sid, seg in segs.items():
        assert isinstance(seg, GTSegment)
        assert ds.categories[seg.category_id]["id"] == info[sid]["category_id"]
        assert seg.area == info[sid]["area"] == np.count_nonzero(s.panoptic.segment_map == sid)
        assert list(seg.bbox) == info[sid]["bbox"]
    # the same annotation in panopticapi's 2-channel format: channel 0 = dataset category id
    two_ch = np.asarray(Image.open(PANAPI / "sample_data" / "panoptic_examples_2ch_format" / "000000142238.png"))
    lut = {seg.id: ds.categories[seg.category_id]["id"] for seg in segs.values()}
    labelled = s.panoptic.segment_map > 0
    expected = np.vectorize(lambda i: lut.get(i, 0))(s.panoptic.segment_map)
    assert np.array_equal(two_ch[..., 0][labelled], expected[labelled])
    # semantic view: void and (by default) crowd -> 255
    crowd = s.panoptic.segment_map == next(iter(s.crowd_ids))
    sem = s.semantic_map()
    assert sem.dtype == np.uint8 and np.all(sem[~labelled] == 255) and np.all(sem[crowd] == 255)
    sem_all = panoptic_to_semantic(s.panoptic, crowd_ignore=False)
    assert np.all(sem_all[crowd] == segs[next(iter(s.crowd_ids))].category_id)
    assert np.array_equal(sem[~crowd], sem_all[~crowd])
    # instance view of the panoptic: things only, crowd flagged
    inst = s.instance_annotations()
    assert len(inst) == 15 and sum(a.iscrowd for a in inst) == 1


def test_coco_panoptic_matches_detection_format(real):
    """panopticapi's detection-format JSON (compressed RLE) decodes to the PNG's segments."""
    pan = CocoPanoptic(PAN_JSON, image_dir=PAN_IMAGES)[0]
    det_file = PANAPI / "sample_data" / "panoptic_coco_detection_format.json"
    det_json = json.loads(det_file.read_text())
    ds = CocoInstances(det_file, image_dir=PAN_IMAGES)
    s = ds[0]
    assert len(s.instances) == len(det_json["annotations"]) == 18
    by_area = {seg.area: seg for seg in pan.panoptic.segments}
    for a, raw in zip(s.instances, det_json["annotations"]):
        assert isinstance(a.segmentation["counts"], str)
        seg = by_area[raw["area"]]
        assert np.array_equal(a.mask(), pan.panoptic.segment_map == seg.id)
        assert a.area == raw["area"] and a.iscrowd == bool(raw["iscrowd"])
        assert a.category_id == seg.category_id


def test_coco_panoptic_hf_bare_segments_info(real, tmp_path):
    """transformers' fixture is a bare segments_info list: wrap it as its tests do."""
    segments_info = json.loads((HF / "coco_panoptic_annotations.txt").read_text())
    cats = json.loads((PANAPI / "panoptic_coco_categories.json").read_text())
    json_file = tmp_path / "panoptic_hf.json"
    json_file.write_text(json.dumps({"annotations": [{"image_id": 39769, "file_name": "000000039769.png",
                                                      "segments_info": segments_info}], "categories": cats}))
    shutil.copytree(HF / "coco_panoptic", tmp_path / "panoptic_hf")
    ds = CocoPanoptic(json_file, image_dir=HF)
    s = ds[0]
    assert (s.height, s.width) == (480, 640)  # no 'images': size from the PNG
    assert s.file_name == HF / "000000039769.jpg"
    assert len(s.panoptic.segments) == 6
    for seg, raw in zip(s.panoptic.segments, segments_info):
        assert seg.id == raw["id"] and seg.area == raw["area"]
        assert ds.categories[seg.category_id]["id"] == raw["category_id"]
    names = sorted(ds.categories[seg.category_id]["name"] for seg in s.panoptic.segments)
    assert names == ["blanket", "cat", "cat", "couch", "remote", "remote"]


def test_shipped_categories_match_coco_files(real):
    ds = CocoPanoptic(PAN_JSON, image_dir=PAN_IMAGES)
    shipped = CocoPanoptic(PAN_JSON, image_dir=PAN_IMAGES, categories="coco_panoptic")
    assert shipped.dataset_id_to_contiguous == ds.dataset_id_to_contiguous
    assert [c["isthing"] for c in shipped.categories] == [c["isthing"] for c in ds.categories]
    assert shipped[0].panoptic.segments == ds[0].panoptic.segments


def test_coco_panoptic_round_trip(real, tmp_path):
    ds = CocoPanoptic(PAN_JSON, image_dir=PAN_IMAGES)
    original = ds[0]
    out_json = tmp_path / "export" / "panoptic_out.json"
    write_coco_panoptic(out_json, [original], ds.categories)
    assert sorted(p.name for p in out_json.parent.iterdir()) == ["panoptic_out", "panoptic_out.json"]
    assert [p.name for p in (tmp_path / "export" / "panoptic_out").iterdir()] == ["000000142238.png"]
    again = CocoPanoptic(out_json, image_dir=PAN_IMAGES)
    assert again.categories == ds.categories
    s = again[0]
    assert s.image_id == original.image_id and s.file_name == original.file_name
    assert np.array_equal(s.panoptic.segment_map, original.panoptic.segment_map)
    assert s.panoptic.segments == original.panoptic.segments
    # the JSON written equals the original segments_info (dataset ids, areas, boxes, crowd)
    src_info = json.loads(PAN_JSON.read_text())["annotations"][0]["segments_info"]
    out_info = json.loads(out_json.read_text())["annotations"][0]["segments_info"]
    keys = ("id", "category_id", "iscrowd", "area", "bbox")
    assert [{k: d[k] for k in keys} for d in out_info] == [{k: d[k] for k in keys} for d in src_info]
    # the PNG bytes decode to the same ids as panopticapi's PNG
    src_ids = rgb2id(np.asarray(Image.open(PAN_PNG_DIR / "000000142238.png")))
    assert np.array_equal(rgb2id(np.asarray(Image.open(out_json.with_suffix("") / "000000142238.png"))), src_ids)


def test_coco_panoptic_writer_from_prediction(tmp_path):
    """A model-style result: contiguous classes -> dataset ids, empty segments dropped, orphans refused."""
    cats = [{"id": 7, "name": "a", "isthing": 1, "color": [1, 2, 3]}, {"id": 40, "name": "b", "isthing": 0}]
    seg_map = np.zeros((5, 6), np.int32)
    seg_map[:2, :3] = 1
    seg_map[3:, :] = 2
    segments = [Segment(1, 0, True, 0.9), Segment(2, 1, False, 0.8), Segment(3, 0, True, 0.7)]  # 3 has no pixel
    sample = Sample(image_id="img", file_name=Path("x/img.jpg"), height=5, width=6,
                    panoptic=PanopticResult(seg_map, segments))
    out = write_coco_panoptic(tmp_path / "pred.json", [sample], cats)
    info = json.loads(out.read_text())["annotations"][0]["segments_info"]
    assert info == [{"id": 1, "category_id": 7, "iscrowd": 0, "area": 6, "bbox": [0, 0, 3, 2]},
                    {"id": 2, "category_id": 40, "iscrowd": 0, "area": 12, "bbox": [0, 3, 6, 2]}]
    back = CocoPanoptic(out)[0]
    assert np.array_equal(back.panoptic.segment_map, seg_map)
    assert [c["isthing"] for c in CocoPanoptic(out).categories] == [True, False]
    seg_map[0, 5] = 9
    with pytest.raises(DatasetError) as e:
        write_coco_panoptic(tmp_path / "bad.json", [sample], cats)
    one_line_error(e, "img.png", "segment ids 9")
    seg_map[0, 5] = 0
    segments[1].category_id = 5
    with pytest.raises(DatasetError) as e:
        write_coco_panoptic(tmp_path / "bad.json", [sample], cats)
    one_line_error(e, "class 5 outside 0..1")
    assert not (tmp_path / "bad.json").exists()


# malformed COCO panoptic inputs, made from the real sample: (edit, the item it fails on, message fragment)
def _edit_first_segment(key, value):
    def edit(data, png_dir):
        data["annotations"][0]["segments_info"][0][key] = value
    return edit


def _drop_key(key):
    def edit(data, png_dir):
        del data["annotations"][0][key]
    return edit


def _duplicate_segment(data, png_dir):
    infos = data["annotations"][0]["segments_info"]
    infos.append(dict(infos[0]))


def _segment_not_in_png(data, png_dir):
    data["annotations"][0]["segments_info"].append({"id": 4242, "category_id": 1, "iscrowd": 0})


def _png_id_not_in_json(data, png_dir):
    data["annotations"][0]["segments_info"].pop(0)


def _crop_png(data, png_dir):
    p = png_dir / "000000142238.png"
    Image.open(p).crop((0, 0, 600, 427)).save(p)


def _garbage_png(data, png_dir):
    (png_dir / "000000142238.png").write_bytes(b"not a png at all")


def _truncated_png(data, png_dir):
    p = png_dir / "000000142238.png"
    p.write_bytes(p.read_bytes()[:2000])


def _grey_png(data, png_dir):
    p = png_dir / "000000142238.png"
    Image.open(p).convert("L").save(p)


def _missing_png(data, png_dir):
    (png_dir / "000000142238.png").unlink()


def _unknown_image(data, png_dir):
    data["annotations"][0]["image_id"] = 1


def _list_top_level(data, png_dir):
    return [data]


PANOPTIC_CASES = {
    "missing segments_info": (_drop_key("segments_info"), "init", "has no 'segments_info'"),
    "missing file_name": (_drop_key("file_name"), "init", "has no 'file_name'"),
    "category id as string": (_edit_first_segment("category_id", "1"), "init", "category_id must be an int"),
    "unknown category": (_edit_first_segment("category_id", 9999), "init", "unknown category id 9999"),
    "segment id out of range": (_edit_first_segment("id", 2**24), "init", "outside 1..16777215"),
    "bad iscrowd": (_edit_first_segment("iscrowd", 3), "init", "iscrowd must be 0 or 1"),
    "duplicate segment id": (_duplicate_segment, "init", "duplicate segment id"),
    "image not in images": (_unknown_image, "init", "image 1 is not in 'images'"),
    "top level is a list": (_list_top_level, "init", "top level must be an object"),
    "segment absent from png": (_segment_not_in_png, "item", "segment ids 4242 of segments_info are absent"),
    "png id absent from json": (_png_id_not_in_json, "item", "PNG has segment ids 3937500"),
    "wrong-size png": (_crop_png, "item", "annotation is 600x427 but image 142238 is 640x427"),
    "png not an image": (_garbage_png, "item", "not an image"),
    "truncated png": (_truncated_png, "item", "unreadable image"),
    "grey png": (_grey_png, "item", "not an RGB panoptic PNG"),
    "missing png": (_missing_png, "item", "no such file"),
}


@pytest.mark.parametrize("case", list(PANOPTIC_CASES))
def test_coco_panoptic_malformed(real, tmp_path, case):
    edit, when, fragment = PANOPTIC_CASES[case]
    json_file, png_dir, data = copy_panoptic(tmp_path)
    data = edit(data, png_dir) or data
    json_file.write_text(json.dumps(data))
    if when == "init":
        with pytest.raises(DatasetError) as e:
            CocoPanoptic(json_file)
        one_line_error(e, "panoptic_examples.json", fragment)
    else:
        ds = CocoPanoptic(json_file)
        with pytest.raises(DatasetError) as e:
            ds[0]
        one_line_error(e, "000000142238.png", fragment)


def test_coco_json_unreadable(real, tmp_path):
    json_file, _, _ = copy_panoptic(tmp_path)
    json_file.write_text(json_file.read_text()[: len(json_file.read_text()) // 2])  # truncated
    with pytest.raises(DatasetError) as e:
        CocoPanoptic(json_file)
    one_line_error(e, str(json_file), "not valid JSON")
    with pytest.raises(DatasetError) as e:
        CocoInstances(json_file)
    one_line_error(e, "not valid JSON")
    json_file.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError) as e:
        CocoPanoptic(json_file)
    one_line_error(e, "not valid JSON")
    with pytest.raises(DatasetError) as e:
        CocoPanoptic(tmp_path / "nope.json")
    one_line_error(e, "nope.json", "no such file")
    with pytest.raises(DatasetError) as e:
        CocoPanoptic(PAN_JSON, png_dir=tmp_path / "no_pngs")
    one_line_error(e, "no_pngs", "no such folder")


# --------------------------------------------------------------------------------------------
# COCO instances


def test_coco_instances_hf_polygons(real, tmp_path):
    """transformers' bare annotation list (polygons), wrapped; masks agree with the panoptic PNG."""
    anns = json.loads((HF / "coco_annotations.txt").read_text())
    all_cats = json.loads((PANAPI / "panoptic_coco_categories.json").read_text())
    cats = [c for c in all_cats if c["isthing"]]
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps({"images": [{"id": 39769, "file_name": "000000039769.png", "height": 480,
                                                 "width": 640}], "annotations": anns, "categories": cats}))
    ds = CocoInstances(json_file, image_dir=HF)
    s = ds[0]
    assert s.file_name.is_file() and s.panoptic is None
    assert len(s.instances) == 6
    names = [ds.categories[a.category_id]["name"] for a in s.instances]
    assert sorted(names) == ["bed", "cat", "cat", "couch", "remote", "remote"]
    for a, raw in zip(s.instances, anns):
        assert isinstance(a.segmentation, list) and a.id == raw["id"]
        assert a.mask().shape == (480, 640)
        assert a.area == pytest.approx(raw["area"], rel=0.05)  # polygon area vs rasterised pixels
        assert a.box() == tuple(raw["bbox"])
        assert np.allclose(mask_util.toBbox(a.rle()), raw["bbox"], atol=1.5)
    # the two cats overlap the panoptic cat segments
    pan_json = tmp_path / "pan.json"
    pan_json.write_text(json.dumps({"annotations": [{"image_id": 39769, "file_name": "000000039769.png",
                                                     "segments_info": json.loads(
                                                         (HF / "coco_panoptic_annotations.txt").read_text())}],
                                    "categories": all_cats}))
    pan_ds = CocoPanoptic(pan_json, png_dir=HF / "coco_panoptic")
    pan = pan_ds[0]
    cat_masks = [a.mask() for a, n in zip(s.instances, names) if n == "cat"]
    for seg in pan.panoptic.segments:
        if pan_ds.categories[seg.category_id]["name"] == "cat":
            pm = pan.panoptic.mask(seg.id)
            assert max((pm & m).sum() / (pm | m).sum() for m in cat_masks) > 0.85


def test_coco_instances_labelme(real):
    ds = open_dataset(f"coco_instances:{LABELME / 'data_dataset_coco' / 'annotations.json'}")
    assert isinstance(ds, CocoInstances) and len(ds) == 2
    assert ds.categories[0]["name"] == "_background_" and ds.dataset_id_to_contiguous[15] == 15
    samples = [ds[0], ds[1]]
    assert [s.file_name.is_file() for s in samples] == [True, True]
    assert [len(s.instances) for s in samples] == [3, 6]
    raw = json.loads((LABELME / "data_dataset_coco" / "annotations.json").read_text())["annotations"]
    assert [a.area for s in samples for a in s.instances] == pytest.approx([a["area"] for a in raw], rel=0.07)
    # the VOC SegmentationObject PNG of the same polygons
    objects = np.asarray(Image.open(LABELME / "data_dataset_voc" / "SegmentationObject" / "2011_000003.png"))
    for k, a in enumerate(samples[0].instances, start=1):
        o, m = objects == k, a.mask()
        assert (o & m).sum() / (o | m).sum() > 0.9


def test_coco_instances_all_segmentation_kinds(tmp_path):
    """Polygons, uncompressed RLE (crowd) and compressed RLE decode to the right masks."""
    h, w = 20, 30
    ring = np.zeros((h, w), bool)
    ring[2:15, 3:20] = True
    ring[6:10, 8:14] = False
    crowd = np.zeros((h, w), bool)
    crowd[15:, 20:] = True
    compressed = mask_util.encode(np.asfortranarray(ring.astype(np.uint8)))
    anns = [
        {"id": 1, "image_id": 5, "category_id": 3, "iscrowd": 0, "bbox": [3, 2, 17, 13],
         "segmentation": [[3, 2, 20, 2, 20, 15, 3, 15]]},
        {"id": 2, "image_id": 5, "category_id": 9, "iscrowd": 1, "segmentation": fortran_uncompressed_rle(crowd)},
        {"id": 3, "image_id": 5, "category_id": 3, "iscrowd": 0,
         "segmentation": {"size": [h, w], "counts": compressed["counts"].decode()}},
        {"id": 4, "image_id": 5, "category_id": 3, "segmentation": [[1, 1, 2, 2]]},  # < 3 points: skipped
    ]
    json_file = tmp_path / "inst.json"
    json_file.write_text(json.dumps({"images": [{"id": 5, "file_name": "a.jpg", "height": h, "width": w},
                                                {"id": 6, "file_name": "b.jpg", "height": h, "width": w}],
                                     "annotations": anns,
                                     "categories": [{"id": 9, "name": "crowdy"}, {"id": 3, "name": "box"}]}))
    ds = CocoInstances(json_file)
    assert [c["id"] for c in ds.categories] == [3, 9]  # sorted by dataset id
    assert len(ds) == 2 and ds[1].instances == []
    a, b, c = ds[0].instances
    box = np.zeros((h, w), bool)
    box[2:15, 3:20] = True
    assert np.array_equal(a.mask(), box)  # pycocotools rasterises the polygon's closed pixel area
    assert (a.category_id, a.iscrowd) == (0, False)
    assert np.array_equal(b.mask(), crowd) and b.iscrowd and b.category_id == 1
    assert np.array_equal(c.mask(), ring) and not c.mask()[7, 10]
    sem = ds[0].semantic_map()
    assert np.all(sem[crowd] == 255) and np.all(sem[ring] == 0) and np.all(sem[~(box | crowd)] == 255)


def _instances_json(tmp_path: Path, **change) -> Path:
    ann = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4]], "iscrowd": 0}
    ann.update(change)
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}], "annotations": [ann],
            "categories": [{"id": 1, "name": "x"}]}
    p = tmp_path / "inst.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize("change, when, fragment", [
    ({"category_id": 2}, "init", "unknown category id 2"),
    ({"image_id": 2}, "init", "image 2 is not in 'images'"),
    ({"segmentation": None}, "init", "segmentation must be polygons or an RLE object"),
    ({"category_id": 1.0}, "init", "category_id must be an int"),
    ({"segmentation": [[0, 0, 4, 0, 4]]}, "item", "odd number of coordinates"),
    ({"segmentation": [[0, 0, 4, "a", 4, 4]]}, "item", "must be a list of numbers"),
    ({"segmentation": {"size": [8, 9], "counts": "abc"}}, "item", "RLE size 9x8 does not match the image's 8x8"),
    ({"segmentation": {"size": [8, 8], "counts": [10, 5]}}, "item", "uncompressed RLE covers 15 pixels"),
    ({"segmentation": {"size": [8, 8], "counts": 5}}, "item", "counts must be a string or a list"),
    ({"bbox": [1, 2, 3]}, "item", "bbox must be 4 numbers"),
])
def test_coco_instances_malformed(tmp_path, change, when, fragment):
    p = _instances_json(tmp_path, **change)
    with pytest.raises(DatasetError) as e:
        CocoInstances(p) if when == "init" else CocoInstances(p)[0]
    one_line_error(e, "inst.json", fragment)


def test_coco_instances_duplicates(tmp_path):
    p = _instances_json(tmp_path)
    data = json.loads(p.read_text())
    data["annotations"].append(dict(data["annotations"][0]))
    p.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as e:
        CocoInstances(p)
    one_line_error(e, "duplicate annotation id 1")
    data["annotations"].pop()
    data["images"].append(dict(data["images"][0]))
    p.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as e:
        CocoInstances(p)
    one_line_error(e, "duplicate image id 1")
    data["images"].pop()
    data["categories"].append({"id": 1, "name": "again"})
    p.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as e:
        CocoInstances(p)
    one_line_error(e, "duplicate category id 1")
    data["categories"].pop()
    del data["images"][0]["height"]
    p.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as e:
        CocoInstances(p)
    one_line_error(e, "images[0] has no 'height'")


def test_instance_results_rle_ring(tmp_path):
    """Predictions as compressed RLE (str counts): the hole of a ring survives; COCOeval scores them 1.0."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    h, w = 40, 50
    ring = np.zeros((h, w), bool)
    ring[5:35, 5:45] = True
    ring[12:28, 15:35] = False
    blob = np.zeros((h, w), bool)
    blob[30:38, 2:10] = True
    cats = [{"id": 17, "name": "cat", "isthing": 1}, {"id": 90, "name": "toothbrush", "isthing": 1}]
    masks = np.stack([ring, blob])
    result = InstanceResult(masks=masks, boxes=np.array([[5, 5, 45, 35], [2, 30, 10, 38]]),
                            scores=np.array([0.9, 0.6]), labels=np.array([0, 1]))
    res_file = write_coco_instance_results(tmp_path / "segm.json", [(7, result)], cats)
    entries = json.loads(res_file.read_text())
    assert [e["category_id"] for e in entries] == [17, 90] and [e["image_id"] for e in entries] == [7, 7]
    assert entries[0]["bbox"] == [5.0, 5.0, 40.0, 30.0] and entries[0]["score"] == pytest.approx(0.9)
    for e, m in zip(entries, masks):
        assert isinstance(e["segmentation"]["counts"], str) and e["segmentation"]["size"] == [h, w]
        rle = {"size": e["segmentation"]["size"], "counts": e["segmentation"]["counts"].encode()}
        assert np.array_equal(mask_util.decode(rle).astype(bool), m)
    assert mask_util.decode({"size": [h, w], "counts": entries[0]["segmentation"]["counts"].encode()})[20, 25] == 0
    # the ground truth of the same masks, written as a COCO instance file, read back and evaluated
    gt = Sample(image_id=7, file_name=tmp_path / "img.jpg", height=h, width=w, instances=[
        InstanceAnnotation(0, ring, h, w), InstanceAnnotation(1, blob, h, w)])
    gt_file = write_coco_instances(tmp_path / "gt.json", [gt], cats)
    back = CocoInstances(gt_file)[0]
    assert [np.array_equal(a.mask(), m) for a, m in zip(back.instances, masks)] == [True, True]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(res_file)), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    bad = InstanceResult(masks=masks[:1], boxes=np.zeros((1, 4)), scores=np.ones(1), labels=np.array([2]))
    with pytest.raises(DatasetError) as e:
        write_coco_instance_results(tmp_path / "bad.json", [(7, bad)], cats)
    one_line_error(e, "image 7", "class 2 outside 0..1")


def test_coco_instances_written_from_panoptic(real, tmp_path):
    """GT instances exported from a panoptic annotation: thing masks and crowd flags survive."""
    ds = CocoPanoptic(PAN_JSON, image_dir=PAN_IMAGES)
    s = ds[0]
    out = write_coco_instances(tmp_path / "instances.json", [s], ds.categories)
    back = CocoInstances(out, image_dir=PAN_IMAGES, categories=ds.categories)[0]
    assert back.file_name == s.file_name
    things = [seg for seg in s.panoptic.segments if seg.isthing]
    assert len(back.instances) == len(things) == 15
    for a, seg in zip(back.instances, things):
        assert np.array_equal(a.mask(), s.panoptic.mask(seg.id))
        assert (a.category_id, a.iscrowd) == (seg.category_id, seg.iscrowd)
        assert a.box() == seg.bbox
    assert "polygon" not in out.read_text() and all(
        isinstance(a["segmentation"]["counts"], str) for a in json.loads(out.read_text())["annotations"])


# --------------------------------------------------------------------------------------------
# ADE20K and semantic PNGs


def test_ade20k_real(real):
    ds = ADE20KSemantic(ADE / "sampleData", split="")
    assert len(ds) == 2 and len(ds.categories) == 150 and ds.categories[0]["name"] == "wall"
    for s, (size, n_labels) in zip([ds[0], ds[1]], [((512, 683), 7), ((364, 500), 6)]):
        raw = np.asarray(Image.open(s.annotation_file)).astype(np.int64)
        assert (s.height, s.width) == size and s.file_name.is_file()
        assert s.semantic.dtype == np.uint8
        assert np.array_equal(s.semantic[raw == 0], np.full((raw == 0).sum(), 255))
        assert np.array_equal(s.semantic[raw > 0].astype(np.int64), raw[raw > 0] - 1)
        assert len(set(np.unique(s.semantic).tolist()) - {255}) == n_labels
    assert ds[0].image_id == "ADE_val_00000001"


def test_ade20k_challenge_layout_and_errors(real, tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for sub in ("images", "annotations"):
        (root / sub / "validation").mkdir(parents=True)
    for stem in ("ADE_val_00000001", "ADE_val_00000002"):
        shutil.copy(ADE / "sampleData" / "images" / f"{stem}.jpg", root / "images" / "validation")
        shutil.copy(ADE / "sampleData" / "annotations" / f"{stem}.png", root / "annotations" / "validation")
    ds = open_dataset(f"ade20k:{root}")
    assert isinstance(ds, ADE20KSemantic) and len(ds) == 2
    ref = ADE20KSemantic(ADE / "sampleData", split="")
    assert np.array_equal(ds[1].semantic, ref[1].semantic)
    # a wrong-size annotation, values above 150, an annotation without image
    label = root / "annotations" / "validation" / "ADE_val_00000002.png"
    Image.fromarray(np.asarray(Image.open(label))[:100]).save(label)
    with pytest.raises(DatasetError) as e:
        ds[1]
    one_line_error(e, "ADE_val_00000002.png", "annotation is 500x100 but its image ADE_val_00000002.jpg is 500x364")
    Image.fromarray(np.full((364, 500), 151, np.uint8)).save(label)
    with pytest.raises(DatasetError) as e:
        ds[1]
    one_line_error(e, "value 151 above 150")
    (root / "images" / "validation" / "ADE_val_00000002.jpg").unlink()
    with pytest.raises(DatasetError) as e:
        ADE20KSemantic(root)
    one_line_error(e, "ADE_val_00000002.png", "no image ADE_val_00000002.*")
    with pytest.raises(DatasetError) as e:
        ADE20KSemantic(root, split="training")
    one_line_error(e, "training", "no such image folder")


def test_semantic_png_round_trip(real, tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 19, size=(33, 47)).astype(np.uint8)
    labels[:5] = 255
    p = write_semantic_png(tmp_path / "a.png", labels, num_classes=19)
    assert Image.open(p).mode == "L"
    assert np.array_equal(read_semantic_png(p, num_classes=19), labels)
    assert np.array_equal(read_semantic_png(write_semantic_png(p, labels.astype(np.int64))), labels)  # overwrite
    with pytest.raises(DatasetError) as e:
        write_semantic_png(tmp_path / "b.png", labels.astype(np.int32) + 300)
    one_line_error(e, "b.png", "do not fit in a uint8 PNG")
    with pytest.raises(DatasetError) as e:
        read_semantic_png(p, num_classes=10)
    one_line_error(e, "a.png", "outside 0..9")
    with pytest.raises(DatasetError) as e:
        read_semantic_png(PAN_PNG_DIR / "000000142238.png")
    one_line_error(e, "not a single-channel class map")
    assert not (tmp_path / "b.png").exists() and [q.name for q in tmp_path.iterdir()] == ["a.png"]
    # real ADE20K maps -> written -> a semantic folder of our own format -> identical maps
    ade = ADE20KSemantic(ADE / "sampleData", split="")
    (tmp_path / "export" / "images").mkdir(parents=True)
    for s in (ade[0], ade[1]):
        shutil.copy(s.file_name, tmp_path / "export" / "images")
        write_semantic_png(tmp_path / "export" / "annotations" / f"{s.image_id}.png", s.semantic, num_classes=150)
    exported = open_dataset(f"semantic:{tmp_path / 'export'}", categories="ade20k")
    assert isinstance(exported, SemanticFolder) and len(exported) == 2
    for i in range(2):
        assert np.array_equal(exported[i].semantic, ade[i].semantic)
        assert exported[i].image_id == ade[i].image_id


# --------------------------------------------------------------------------------------------
# Cityscapes


def _cityscapes_copy(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    img_dir = root / "leftImg8bit" / "val" / "frankfurt"
    gt_dir = root / "gtFine" / "val" / "frankfurt"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    shutil.copy(CITY / "leftImg8bit" / "frankfurt_000000_000294_leftImg8bit.png", img_dir)
    for f in (CITY / "gtFine").iterdir():
        shutil.copy(f, gt_dir)
    return root


def test_cityscapes_real(real, tmp_path):
    root = _cityscapes_copy(tmp_path)
    ds = open_dataset(f"cityscapes:{root}")
    assert isinstance(ds, CityscapesDataset) and len(ds) == 1 and len(ds.categories) == 19
    assert ds.dataset_id_to_contiguous[26] == 13  # car: labelId 26 -> trainId 13
    s = ds[0]
    gt = root / "gtFine" / "val" / "frankfurt"
    assert s.image_id == "frankfurt_000000_000294" and (s.height, s.width) == (128, 256)
    # our labelId -> trainId mapping against cityscapesScripts' labelTrainIds file (downscaled separately,
    # so 77 boundary pixels of 32768 differ): every labelId maps to the trainId most of its pixels have there
    label_ids = np.asarray(Image.open(gt / "frankfurt_000000_000294_gtFine_labelIds.png"))
    train_file = np.asarray(Image.open(gt / "frankfurt_000000_000294_gtFine_labelTrainIds.png"))
    assert np.mean(s.semantic == train_file) > 0.99
    for lid in np.unique(label_ids):
        values, counts = np.unique(train_file[label_ids == lid], return_counts=True)
        assert np.all(s.semantic[label_ids == lid] == values[counts.argmax()])
    assert len(np.unique(label_ids)) == 14 and set(np.unique(s.semantic)) == set(np.unique(train_file))
    inst_ids = np.asarray(Image.open(gt / "frankfurt_000000_000294_gtFine_instanceIds.png")).astype(np.int64)
    things = [v for v in np.unique(inst_ids).tolist() if v >= 1000]
    assert len(things) == 7 and len(s.instances) == 7
    for a in s.instances:
        assert np.array_equal(a.mask(), inst_ids == a.id) and not a.iscrowd
        assert ds.categories[a.category_id]["id"] == a.id // 1000
    assert {ds.categories[a.category_id]["name"] for a in s.instances} == {"person", "car"}
    # panoptic: stuff segments by labelId, void where the label is not one of the 19 classes
    assert np.array_equal(panoptic_to_semantic(s.panoptic, crowd_ignore=False), s.semantic)
    assert np.all(s.panoptic.segment_map[s.semantic == 255] == 0)
    assert sum(seg.area for seg in s.panoptic.segments) == np.count_nonzero(s.semantic != 255)
    assert len(s.panoptic.segments) == 15  # 8 stuff labels + 7 instances


def test_cityscapes_crowd_and_errors(real, tmp_path):
    root = _cityscapes_copy(tmp_path)
    gt = root / "gtFine" / "val" / "frankfurt"
    inst_file = gt / "frankfurt_000000_000294_gtFine_instanceIds.png"
    inst = np.asarray(Image.open(inst_file)).astype(np.uint16)
    inst = inst.copy()
    inst[inst == 26002] = 26  # a crowd of cars: labelId without an instance index
    Image.fromarray(inst).save(inst_file)
    s = CityscapesDataset(root)[0]
    crowd = [seg for seg in s.panoptic.segments if seg.iscrowd]
    assert [(seg.id, seg.category_id) for seg in crowd] == [(26, 13)]
    assert sum(a.iscrowd for a in s.instances) == 1 and len(s.instances) == 7
    assert np.all(s.semantic_map() == s.semantic)  # the stored semantic map wins
    assert np.all(panoptic_to_semantic(s.panoptic)[inst == 26] == 255)
    inst_file.unlink()
    assert CityscapesDataset(root, load_instances=False)[0].panoptic is None
    with pytest.raises(DatasetError) as e:
        CityscapesDataset(root)[0]
    one_line_error(e, "frankfurt_000000_000294_gtFine_instanceIds.png", "no such file")
    with pytest.raises(DatasetError) as e:
        CityscapesDataset(root, split="train")
    one_line_error(e, "leftImg8bit/train", "no such folder")


# --------------------------------------------------------------------------------------------
# specs, atomic writes


def test_dataset_specs(real, tmp_path):
    assert parse_dataset_spec("coco_panoptic:datasets/coco") == ("coco_panoptic", Path("datasets/coco"))
    for bad, fragment in [("coco", "expected FORMAT:PATH"), ("voc:/x", "unknown dataset format 'voc'"),
                          ("ade20k:", "expected FORMAT:PATH")]:
        with pytest.raises(DatasetError) as e:
            parse_dataset_spec(bad)
        one_line_error(e, fragment)
    with pytest.raises(DatasetError) as e:
        open_dataset(f"semantic:{tmp_path}")
    one_line_error(e, "needs categories=")
    # Detectron2's COCO layout from the root folder
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    shutil.copy(PAN_JSON, root / "annotations" / "panoptic_val2017.json")
    shutil.copytree(PAN_PNG_DIR, root / "panoptic_val2017")
    shutil.copy(PAN_IMAGES / "000000142238.jpg", root / "val2017")
    ds = open_dataset(f"coco_panoptic:{root}", split="val2017")
    assert ds.png_dir == root / "panoptic_val2017"
    assert ds[0].file_name == root / "val2017" / "000000142238.jpg" and ds[0].file_name.is_file()
    ds2 = open_dataset(f"coco_panoptic:{root / 'annotations' / 'panoptic_val2017.json'}")
    assert ds2.png_dir == ds.png_dir and ds2.image_dir == ds.image_dir
    shutil.copy(PANAPI / "sample_data" / "panoptic_coco_detection_format.json",
                root / "annotations" / "instances_val2017.json")
    inst = open_dataset(f"coco_instances:{root}")
    assert inst[0].file_name == ds[0].file_name and len(inst[0].instances) == 18


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert (target.stat().st_mode & 0o777) == 0o644

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"newer")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_shipped_categories():
    cats = shipped_categories("cityscapes")
    assert [c["train_id"] for c in cats] == list(range(19))
    assert all(isinstance(c["isthing"], bool) for c in cats)
    with pytest.raises(DatasetError) as e:
        shipped_categories("voc")
    one_line_error(e, "no shipped class list 'voc'")
