"""Round trips with CVAT, Label Studio and LabelMe: files written as each tool writes them, import ->
export -> import equal (pixel-equal for mask formats, within the stated IoU for polygons), the real
LabelMe file against labelme2voc's own output, the polygon IoU bound on real COCO masks, unknown labels,
malformed files, and the CLI end to end down to a trainable corrections folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2f_core.data.annotation_tools import ToolDataset
from m2f_core.data.coco_panoptic import CocoPanoptic
from m2f_core.data.cvat import (
    cvat_coco_dataset,
    cvat_mask_rle,
    cvat_xml_dataset,
    decode_cvat_mask_rle,
    write_cvat_coco,
    write_cvat_xml,
)
from m2f_core.data.errors import DatasetError
from m2f_core.data.interchange import main as interchange_main
from m2f_core.data.label_studio import (
    decode_brush_rle,
    encode_brush_rle,
    label_studio_dataset,
    write_label_studio,
)
from m2f_core.data.labelme import labelme_dataset, write_labelme
from m2f_core.data.polygons import mask_to_polygons, polygon_iou, polygons_to_mask
from m2f_core.data.records import Sample
from m2f_core.data.specs import open_dataset

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
LABELME = REAL / "voc_labelme" / "examples" / "instance_segmentation"
PANAPI = REAL / "coco_panoptic_panopticapi"

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

H, W = 30, 40
# car and person are things, road is stuff
CATEGORIES = [{"id": 1, "name": "car", "isthing": 1}, {"id": 2, "name": "road", "isthing": 0},
              {"id": 3, "name": "person", "isthing": 1}]


def real_data(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared real data not found at {path}")
    return path


def save_image(path: Path, h: int = H, w: int = W) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def panoptic_key(s: Sample) -> list:
    """The panoptic annotation up to segment ids: (class, crowd, mask bytes) per segment, sorted."""
    pan = s.panoptic
    return sorted((seg.category_id, bool(seg.iscrowd), pan.mask(seg.id).tobytes()) for seg in pan.segments)


def instances_key(s: Sample) -> list:
    return [(a.category_id, bool(a.iscrowd), a.mask().tobytes()) for a in s.instances]


def assert_same(a: ToolDataset, b: ToolDataset, crowd: bool = True) -> None:
    """Pixel-equal; ``crowd=False`` for Label Studio, whose format has no crowd flag."""
    def strip(key: list) -> list:
        return key if crowd else sorted((c, False, m) for c, _, m in key)

    assert len(a) == len(b)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert Path(sa.file_name).name == Path(sb.file_name).name
        assert (sa.height, sa.width) == (sb.height, sb.width)
        assert strip(panoptic_key(sa)) == strip(panoptic_key(sb))
        assert [k if crowd else (k[0], k[2]) for k in instances_key(sa)] == \
            [k if crowd else (k[0], k[2]) for k in instances_key(sb)]


def assert_within(a: ToolDataset, b: ToolDataset, max_iou_loss: float) -> None:
    """Same instances in order and classes; each mask within the polygon bound."""
    for i in range(len(a)):
        ia, ib = a[i].instances, b[i].instances
        assert [x.category_id for x in ia] == [y.category_id for y in ib]
        for x, y in zip(ia, ib):
            mx, my = x.mask(), y.mask()
            assert (mx & my).sum() / (mx | my).sum() >= 1 - max_iou_loss - 1e-9


# --------------------------------------------------------------------------------------------
# Files as the tools write them


def cvat_mask_attr(mask: np.ndarray) -> str:
    """CVAT's own writer: ``rle`` is ``str(list)[1:-1]`` of the box's runs (formats/cvat.py)."""
    runs, left, top, w, h = cvat_mask_rle(mask)
    return f'rle="{", ".join(map(str, runs))}" left="{left}" top="{top}" width="{w}" height="{h}"'


def car_mask() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[18:22, 10:15] = True
    m[19, 12] = False  # a hole
    m[21, 10] = False
    return m


CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>7</id>
      <name>street</name>
      <size>2</size>
      <mode>annotation</mode>
      <overlap>0</overlap>
      <labels>
        <label><name>car</name><color>#fa3253</color><type>any</type><attributes>
          <attribute><name>is_crowd</name><mutable>False</mutable><input_type>checkbox</input_type>
          <default_value>false</default_value><values>false
true</values></attribute></attributes></label>
        <label><name>road</name><color>#3d3df5</color><type>any</type><attributes></attributes></label>
        <label><name>person</name><color>#34d1b7</color><type>any</type><attributes></attributes></label>
      </labels>
    </task>
    <dumped>2024-01-01 00:00:00.000000+00:00</dumped>
  </meta>
  <image id="0" name="street1.jpg" width="40" height="30">
    <polygon label="road" source="manual" occluded="0" z_order="0"
             points="0.00,20.00;40.00,20.00;40.00,30.00;0.00,30.00">
      <attribute name="is_crowd">false</attribute>
    </polygon>
    <mask label="car" source="semi-auto" occluded="0" {car} z_order="1">
      <attribute name="is_crowd">false</attribute>
    </mask>
    <box label="person" source="manual" occluded="1" xtl="2.00" ytl="2.00" xbr="8.00" ybr="12.00" z_order="2"
         group_id="1">
    </box>
    <polygon label="person" source="manual" occluded="0" z_order="2" group_id="1"
             points="5.00,12.00;9.00,12.00;9.00,18.00;5.00,18.00">
    </polygon>
    <box label="car" source="manual" occluded="0" xtl="30.00" ytl="2.00" xbr="38.00" ybr="9.00" z_order="3">
      <attribute name="is_crowd">true</attribute>
    </box>
    <polyline label="car" source="manual" occluded="0" points="1.00,1.00;3.00,3.00" z_order="0">
    </polyline>
    <tag label="road" source="manual"></tag>
  </image>
  <image id="1" name="street2.jpg" width="40" height="30">
  </image>
</annotations>
"""


def write_cvat_task(root: Path) -> Path:
    (root / "annotations.xml").parent.mkdir(parents=True, exist_ok=True)
    (root / "annotations.xml").write_text(CVAT_XML.replace("{car}", cvat_mask_attr(car_mask())))
    save_image(root / "images" / "street1.jpg")
    save_image(root / "images" / "street2.jpg")
    return root / "annotations.xml"


def cvat_coco_json(root: Path) -> Path:
    """CVAT's COCO 1.0 as datumaro writes it: masks uncompressed RLE with iscrowd 1, categories from 1."""
    mask = car_mask()
    runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(mask.reshape(-1, order="F"))) + 1, [mask.size]]))
    counts = ([0] if mask.reshape(-1, order="F")[0] else []) + runs.tolist()
    data = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"contributor": "", "date_created": "", "description": "", "url": "", "version": "", "year": ""},
        "categories": [{"id": 1, "name": "car", "supercategory": ""}, {"id": 2, "name": "road", "supercategory": ""},
                       {"id": 3, "name": "person", "supercategory": ""}],
        "images": [{"id": 1, "width": W, "height": H, "file_name": "street1.jpg", "license": 0, "flickr_url": "",
                    "coco_url": "", "date_captured": 0}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "segmentation": [[0.0, 20.0, 40.0, 20.0, 40.0, 30.0, 0.0, 30.0]],
             "area": 400.0, "bbox": [0.0, 20.0, 40.0, 10.0], "iscrowd": 0, "attributes": {"occluded": False}},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": {"counts": counts, "size": [H, W]},
             "area": float(mask.sum()), "bbox": [10.0, 18.0, 5.0, 4.0], "iscrowd": 1,
             "attributes": {"occluded": False}},
            {"id": 3, "image_id": 1, "category_id": 3, "segmentation": [[2.0, 2.0, 8.0, 2.0, 8.0, 12.0, 2.0, 12.0]],
             "area": 60.0, "bbox": [2.0, 2.0, 6.0, 10.0], "iscrowd": 0, "attributes": {"occluded": True}},
            {"id": 4, "image_id": 1, "category_id": 1, "segmentation": [[30.0, 2.0, 38.0, 2.0, 38.0, 9.0, 30.0, 9.0]],
             "area": 56.0, "bbox": [30.0, 2.0, 8.0, 7.0], "iscrowd": 0,
             "attributes": {"occluded": False, "is_crowd": True}},
            # a CVAT rectangle: no segmentation, the bbox is the region
            {"id": 5, "image_id": 1, "category_id": 3, "segmentation": [], "area": 20.0, "bbox": [20.0, 2.0, 4.0, 5.0],
             "iscrowd": 0, "attributes": {"occluded": False}},
        ]}
    path = root / "annotations" / "instances_default.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    save_image(root / "images" / "default" / "street1.jpg")
    return path


def label_studio_export(root: Path, brush_rle) -> Path:
    """A Label Studio JSON export: an upload-prefixed image, a brush, a polygon and a rectangle in percent."""
    road = np.zeros((H, W), bool)
    road[20:, :] = True
    common = {"original_width": W, "original_height": H, "image_rotation": 0, "to_name": "image"}
    tasks = [{
        "id": 11, "data": {"image": "/data/upload/3/1a2b3c4d-street1.jpg"}, "meta": {}, "project": 3,
        "annotations": [
            {"id": 1, "completed_by": 1, "was_cancelled": True, "updated_at": "2024-05-01T10:00:00Z",
             "result": []},
            {"id": 2, "completed_by": 1, "was_cancelled": False, "ground_truth": False,
             "updated_at": "2024-05-01T09:00:00Z", "lead_time": 12.5, "result": [
                 {**common, "id": "aaa", "from_name": "tag", "type": "brushlabels", "origin": "manual",
                  "value": {"format": "rle", "rle": brush_rle(road), "brushlabels": ["road"]}},
                 {**common, "id": "bbb", "from_name": "tag", "type": "brushlabels", "origin": "manual",
                  "value": {"format": "rle", "rle": brush_rle(car_mask()), "brushlabels": ["car"]}},
                 {**common, "id": "ccc", "from_name": "poly", "type": "polygonlabels", "origin": "manual",
                  "value": {"points": [[5.0, 6.666666666666667], [20.0, 6.666666666666667], [20.0, 40.0],
                                       [5.0, 40.0]], "closed": True, "polygonlabels": ["person"]}},
                 {**common, "id": "ddd", "from_name": "rect", "type": "rectanglelabels", "origin": "manual",
                  "value": {"x": 75.0, "y": 6.666666666666667, "width": 20.0, "height": 23.333333333333332,
                            "rotation": 0, "rectanglelabels": ["car"]}},
                 {"id": "eee", "from_name": "weather", "to_name": "image", "type": "choices",
                  "value": {"choices": ["sunny"]}},
             ]}],
        "predictions": []},
        {"id": 12, "data": {"image": "/data/upload/3/99aa88bb-street2.jpg"}, "annotations": [], "predictions": []}]
    path = root / "export.json"
    path.write_text(json.dumps(tasks))
    save_image(root / "images" / "street1.jpg")
    return path


# --------------------------------------------------------------------------------------------
# Polygons


def test_polygon_bound_holds_on_real_coco_masks():
    root = real_data(PANAPI)
    cats = json.loads((root / "panoptic_coco_categories.json").read_text())
    data = root / "sample_data"
    sample = CocoPanoptic(data / "panoptic_examples.json", png_dir=data / "panoptic_examples",
                          image_dir=data / "input_images", categories=cats)[0]
    assert len(sample.panoptic.segments) > 10
    for rasterizer in ("coco", "pil"):
        vertices = []
        for loss in (0.002, 0.01, 0.05):
            total = 0
            for seg in sample.panoptic.segments:
                mask = sample.panoptic.mask(seg.id)
                fit = mask_to_polygons(mask, loss, rasterizer)
                assert fit.ok, (rasterizer, loss, seg.id, fit.iou)
                assert fit.iou == pytest.approx(polygon_iou(mask, fit.polygons, rasterizer), abs=1e-12)
                assert fit.iou >= 1 - loss
                total += sum(len(p) for p in fit.polygons)
            vertices.append(total)
        assert vertices[0] > vertices[1] > vertices[2]  # a looser bound buys fewer vertices
    exact = [mask_to_polygons(sample.panoptic.mask(s.id), 0.0, "coco") for s in sample.panoptic.segments]
    assert all(f.ok and f.iou == 1.0 for f in exact)  # edge-following polygons reproduce COCO's masks


def test_polygons_handle_holes_and_report_misses():
    ring = np.zeros((40, 40), bool)
    ring[5:35, 5:35] = True
    ring[15:25, 15:25] = False
    for rasterizer in ("coco", "pil"):
        fit = mask_to_polygons(ring, 0.01, rasterizer)
        assert fit.ok and len(fit.polygons) == 1  # the hole spliced in, not filled
        drawn = polygons_to_mask(fit.polygons, 40, 40, rasterizer)
        assert not drawn[17:23, 17:23].any()
    assert mask_to_polygons(np.zeros((5, 5), bool)).polygons == []
    with pytest.raises(ValueError, match="max_iou_loss"):
        mask_to_polygons(ring, 1.0)


# --------------------------------------------------------------------------------------------
# CVAT


def test_cvat_mask_rle_matches_the_documented_layout():
    mask = np.zeros((6, 8), bool)
    mask[2, 3:6] = True
    mask[3, 4] = True
    runs, left, top, w, h = cvat_mask_rle(mask)
    assert (left, top, w, h) == (3, 2, 3, 2)  # the box of the mask
    assert runs == [0, 3, 1, 1, 1]  # row-major over the box, starting with a (here empty) background run
    assert (decode_cvat_mask_rle(runs, left, top, w, h, 6, 8) == mask).all()
    with pytest.raises(ValueError, match="cover"):
        decode_cvat_mask_rle([1, 2], left, top, w, h, 6, 8)
    with pytest.raises(ValueError, match="outside"):
        decode_cvat_mask_rle(runs, 7, top, w, h, 6, 8)


def test_cvat_xml_import(tmp_path, caplog):
    xml = write_cvat_task(tmp_path / "task")
    with caplog.at_level(logging.WARNING):
        ds = open_dataset(f"cvat:{xml.parent}", categories=CATEGORIES)
    assert "not regions" in caplog.text  # the polyline and the tag are said, not dropped in silence
    assert [c["name"] for c in ds.categories] == ["car", "road", "person"]
    assert len(ds) == 2 and ds[1].panoptic.segments == [] and ds[1].file_name.is_file()
    s = ds[0]
    assert s.file_name == tmp_path / "task" / "images" / "street1.jpg"
    assert [(a.category_id, a.iscrowd) for a in s.instances] == [(0, False), (2, False), (0, True)]
    assert (s.instances[0].mask() == car_mask()).all()  # the mask RLE, pixel-exact
    person = s.instances[1].mask()  # box + polygon of group 1: one object
    assert person[2:12, 2:8].all() and person[12:18, 5:9].all() and person.sum() == 6 * 10 + 4 * 6
    seg_map = s.panoptic.segment_map
    road = [g for g in s.panoptic.segments if not g.isthing]
    assert len(road) == 1 and (seg_map[20:, :][~car_mask()[20:, :]] == road[0].id).all()
    assert {(g.category_id, g.iscrowd) for g in s.panoptic.segments} == {(1, False), (0, False), (2, False), (0, True)}
    # without categories: the task's labels, in its order, all things
    assert [c["name"] for c in cvat_xml_dataset(xml).categories] == ["car", "road", "person"]


@pytest.mark.parametrize("polygons", [False, True])
def test_cvat_xml_round_trip(tmp_path, polygons):
    first = cvat_xml_dataset(write_cvat_task(tmp_path / "task"), categories=CATEGORIES)
    report = write_cvat_xml(tmp_path / "out", first, first.categories, polygons=polygons, max_iou_loss=0.01)
    assert report.path == tmp_path / "out" / "annotations.xml" and report.images == 2
    text = report.path.read_text()
    assert ("<polygon" in text) == polygons and ("<mask" in text) != polygons
    assert 'name="is_crowd"' in text
    second = cvat_xml_dataset(report.path, image_dir=tmp_path / "task" / "images", categories=CATEGORIES)
    if polygons:
        assert report.polygons == report.regions and report.min_iou >= 0.99
        assert_within(first, second, 0.01)
    else:
        assert_same(first, second)
    third = cvat_xml_dataset(write_cvat_xml(tmp_path / "again.xml", second, CATEGORIES).path,
                             image_dir=tmp_path / "task" / "images", categories=CATEGORIES)
    assert_same(second, third)


def test_cvat_coco_import_and_round_trip(tmp_path):
    path = cvat_coco_json(tmp_path / "coco")
    ds = open_dataset(f"cvat_coco:{tmp_path / 'coco'}", categories=CATEGORIES)
    assert ds.image_dir == tmp_path / "coco" / "images" / "default" and ds[0].file_name.is_file()
    s = ds[0]
    # iscrowd 1 is how CVAT stores a mask; only attributes.is_crowd makes a crowd
    assert [(a.category_id, a.iscrowd) for a in s.instances] == [(0, False), (2, False), (0, True), (2, False)]
    assert (s.instances[0].mask() == car_mask()).all()
    assert s.instances[3].mask()[2:7, 20:24].all() and s.instances[3].mask().sum() == 20
    assert isinstance(open_dataset(f"cvat:{path}"), ToolDataset)
    for polygons in (False, True):
        report = write_cvat_coco(tmp_path / f"out{polygons}", ds, ds.categories, polygons=polygons)
        written = json.loads(report.path.read_text())
        assert [c["id"] for c in written["categories"]] == [1, 2, 3]
        crowd = [a for a in written["annotations"] if a["attributes"].get("is_crowd")]
        assert len(crowd) == 1
        if not polygons:
            assert all(a["iscrowd"] == 1 and isinstance(a["segmentation"]["counts"], list)
                       for a in written["annotations"])
        again = cvat_coco_dataset(report.path, image_dir=ds.image_dir, categories=CATEGORIES)
        if polygons:
            assert_within(ds, again, 0.01)
        else:
            assert_same(ds, again)


# --------------------------------------------------------------------------------------------
# Label Studio


def test_brush_rle_agrees_with_label_studio_converter():
    brush = pytest.importorskip("label_studio_converter.brush")
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (7, 9), (48, 64), (2, 40000)]:
        mask = rng.random(shape) > 0.7
        mask[: shape[0] // 2] = mask[: shape[0] // 2] | (rng.random((shape[0] // 2, shape[1])) > 0.1)  # long runs
        theirs = brush.mask2rle(mask.astype(np.uint8) * 255)
        assert encode_brush_rle(mask) == theirs  # byte-identical to the tool's encoder
        assert (decode_brush_rle(theirs, *shape) == mask).all()
        assert (brush.decode_rle(encode_brush_rle(mask)).reshape(*shape, 4)[:, :, 3] > 0).sum() == mask.sum()
    with pytest.raises(ValueError, match="holds"):
        decode_brush_rle(encode_brush_rle(np.ones((3, 3), bool)), 3, 4)
    with pytest.raises(ValueError):
        decode_brush_rle([1, 2, 3], 3, 3)


def _tool_brush_encoder():
    try:
        from label_studio_converter import brush
    except ImportError:
        return encode_brush_rle
    return lambda mask: brush.mask2rle(mask.astype(np.uint8) * 255)


def test_label_studio_import(tmp_path, caplog):
    path = label_studio_export(tmp_path, _tool_brush_encoder())
    with caplog.at_level(logging.WARNING):
        ds = open_dataset(f"label_studio:{path}", categories=CATEGORIES)
    assert "without annotations" in caplog.text  # task 12 is not labelled yet: said, and skipped
    assert len(ds) == 1
    s = ds[0]
    assert s.file_name == tmp_path / "images" / "street1.jpg"  # upload prefix 1a2b3c4d- dropped
    assert s.image_id == 11
    assert [(a.category_id) for a in s.instances] == [0, 2, 0]
    assert (s.instances[0].mask() == car_mask()).all()
    person = s.instances[1].mask()
    assert person.sum() == 6 * 10 and person[2:12, 2:8].all()  # percent -> pixels, COCO's rasteriser
    assert s.instances[2].mask()[2:9, 30:38].all() and s.instances[2].mask().sum() == 56
    assert len(label_studio_dataset(path, source="predictions")) == 0


@pytest.mark.parametrize("polygons", [False, True])
def test_label_studio_round_trip(tmp_path, polygons):
    first = label_studio_dataset(label_studio_export(tmp_path, encode_brush_rle), categories=CATEGORIES)
    out = tmp_path / "out.json"
    report = write_label_studio(out, first, first.categories, polygons=polygons, as_predictions=False,
                                image_url_prefix="/data/local-files/?d=images/")
    tasks = json.loads(out.read_text())
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=images/street1.jpg"
    types = {r["type"] for r in tasks[0]["annotations"][0]["result"]}
    assert "polygonlabels" in types if polygons else types == {"brushlabels"}
    second = label_studio_dataset(out, categories=CATEGORIES)
    assert second[0].file_name == first[0].file_name  # found through the local-files URL
    if polygons:
        assert report.polygons >= 3 and report.min_iou >= 0.99
        assert_within(first, second, 0.01)
    else:
        assert_same(first, second)
    preds = write_label_studio(tmp_path / "pre.json", first, first.categories)
    assert "predictions" in json.loads(preds.path.read_text())[0]
    assert_same(first, label_studio_dataset(preds.path, image_dir=tmp_path / "images", categories=CATEGORIES,
                                            source="predictions"))


# --------------------------------------------------------------------------------------------
# LabelMe


def test_labelme_real_file_matches_labelme2voc():
    root = real_data(LABELME)
    ds = open_dataset(f"labelme:{root / 'data_annotated'}")
    assert [c["name"] for c in ds.categories] == ["bottle", "chair", "person", "sofa"]  # __ignore__ is void
    names = (root / "data_dataset_voc" / "class_names.txt").read_text().splitlines()  # "potted plant"
    for i in range(len(ds)):
        s = ds[i]
        assert s.file_name.is_file()
        voc_cls = np.array(Image.open(root / "data_dataset_voc" / "SegmentationClass" / f"{s.file_name.stem}.png"))
        voc_obj = np.array(Image.open(root / "data_dataset_voc" / "SegmentationObject" / f"{s.file_name.stem}.png"))
        ours = np.zeros(voc_cls.shape, np.int64)  # our classes in VOC's numbering, void = VOC's ignore
        for seg in s.panoptic.segments:
            ours[s.panoptic.mask(seg.id)] = names.index(ds.categories[seg.category_id]["name"])
        ignore = voc_cls == 255
        assert (s.panoptic.segment_map[ignore] == 0).all()
        assert (ours[~ignore] == voc_cls[~ignore]).mean() > 0.9995  # same polygons, same rasteriser
        assert len(s.instances) == len(np.unique(voc_obj[~ignore & (voc_obj > 0)]))
        pairs = set(zip(s.panoptic.segment_map[~ignore].tolist(), voc_obj[~ignore].tolist()))
        assert len(pairs) <= len(s.instances) + 2  # one VOC object per segment, but for a boundary pixel or so


def test_labelme_round_trip_real_file(tmp_path):
    first = labelme_dataset(real_data(LABELME) / "data_annotated")
    report = write_labelme(tmp_path / "lm", first, first.categories, max_iou_loss=0.01)
    assert report.images == 2 and report.polygons + report.masks == report.regions
    assert (tmp_path / "lm" / "2011_000003.jpg").is_file()
    data = json.loads((tmp_path / "lm" / "2011_000003.json").read_text())
    assert data["imagePath"] == "2011_000003.jpg" and data["imageData"] is None
    assert {s["shape_type"] for s in data["shapes"]} <= {"polygon", "mask"}
    second = labelme_dataset(tmp_path / "lm", categories=first.categories)
    assert_within(first, second, 0.01)
    third = labelme_dataset(write_labelme(tmp_path / "lm2", second, second.categories, max_iou_loss=0.01).path,
                            categories=first.categories)
    assert_within(second, third, 0.01)


def test_labelme_shapes_and_mask_round_trip(tmp_path):
    save_image(tmp_path / "a.png")
    crop = np.zeros((4, 5), np.uint8)
    crop[1:3, 1:4] = 255
    import base64
    import io
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG")
    shapes = [
        {"label": "road", "points": [[0, 20], [39, 29]], "group_id": None, "shape_type": "rectangle", "flags": {}},
        {"label": "car", "points": [[10, 18], [14, 21]], "group_id": None, "shape_type": "mask", "flags": {},
         "mask": base64.b64encode(buf.getvalue()).decode()},
        {"label": "person", "points": [[5, 5], [8, 5]], "group_id": None, "shape_type": "circle", "flags": {}},
        {"label": "person", "points": [[1, 1], [3, 3]], "group_id": None, "shape_type": "line", "flags": {}},
    ]
    (tmp_path / "a.json").write_text(json.dumps({"version": "5.4.1", "flags": {}, "shapes": shapes,
                                                 "imagePath": "a.png", "imageData": None,
                                                 "imageHeight": H, "imageWidth": W}))
    ds = labelme_dataset(tmp_path / "a.json", categories=CATEGORIES)
    s = ds[0]
    car = s.instances[0].mask()
    assert car.sum() == 6 and car[19:21, 11:14].all()  # the PNG placed at points[0]
    assert s.instances[1].mask().sum() > 9 * 3  # a circle of radius 3
    report = write_labelme(tmp_path / "out", ds, ds.categories, max_iou_loss=0.0)
    assert_within(ds, labelme_dataset(report.path, categories=CATEGORIES), 0.0)


# --------------------------------------------------------------------------------------------
# Labels and malformed files


def test_unknown_labels_are_errors_or_mapped(tmp_path):
    xml = write_cvat_task(tmp_path / "task")
    with pytest.raises(DatasetError, match="'person'") as e:
        cvat_xml_dataset(xml, categories=[c for c in CATEGORIES if c["name"] != "person"])
    assert "--map" in str(e.value) and "\n" not in str(e.value)
    renamed = [dict(c, name="pedestrian") if c["name"] == "person" else c for c in CATEGORIES]
    ds = cvat_xml_dataset(xml, categories=renamed, label_map={"person": "pedestrian"})
    assert ds.categories[2]["name"] == "pedestrian"
    assert [a.category_id for a in ds[0].instances] == [0, 2, 0]
    upper = [dict(c, name=c["name"].upper()) for c in CATEGORIES]  # a case-only difference still matches
    assert [a.category_id for a in cvat_xml_dataset(xml, categories=upper)[0].instances] == [0, 2, 0]


@pytest.mark.parametrize("fmt,text,fragment", [
    ("cvat_xml", "<annotations><image id='0' name='a.jpg' width='4' height='4'>", "not valid XML"),
    ("cvat_xml", "<?xml version='1.0'?><!DOCTYPE a [<!ENTITY x 'y'>]><annotations/>", "DOCTYPE"),
    ("cvat_xml", "<root/>", "not a CVAT XML file"),
    ("cvat_xml", "<annotations><image id='0' name='a.jpg' width='4' height='4'><mask label='car' rle='1, 2' "
                 "left='0' top='0' width='2' height='2'/></image></annotations>", "cover"),
    ("cvat_xml", "<annotations><image id='0' name='a.jpg' width='4' height='4'><polygon label='car' "
                 "points='1,1;2,x;3,3'/></image></annotations>", "points"),
    ("cvat_xml", "<annotations><track id='0' label='car'/></annotations>", "CVAT for video"),
    ("cvat_xml", "<annotations><image id='0' name='a.jpg' width='4' height='4'><polygon label='car' "
                 "points='1,1;2,2;1e12,3'/></image></annotations>", "far outside"),
    ("cvat_xml", "<annotations><image id='0' name='a.jpg' width='100000' height='100000'/></annotations>",
     "pixels"),
    ("label_studio", "[{\"data\": {\"image\": \"a.jpg\"}, \"annotations\": [{\"result\": [", "not valid JSON"),
    ("label_studio", "{\"tasks\": []}", "list of tasks"),
    ("label_studio", json.dumps([{"data": {"image": "a.jpg"}, "annotations": [{"result": [
        {"type": "brushlabels", "original_width": 4, "original_height": 4,
         "value": {"format": "rle", "rle": [0, 0, 0, 100, 7, 0, 0], "brushlabels": ["car"]}}]}]}]), "holds"),
    ("label_studio", json.dumps([{"data": {"image": "a.jpg"}, "annotations": [{"result": [
        {"type": "polygonlabels", "original_width": 4, "original_height": 4,
         "value": {"points": [[1, 1], [2, 2], [3, 1]], "polygonlabels": ["car", "road"]}}]}]}]), "exactly one label"),
    ("label_studio", json.dumps([{"data": {"image": "a.jpg"}, "annotations": [{"result": [
        {"type": "polygonlabels", "original_width": 4, "original_height": 4,
         "value": {"points": [[1, 1], [2, 2], [1e9, 1]], "polygonlabels": ["car"]}}]}]}]), "far outside"),
    ("labelme", "{\"shapes\": [", "not valid JSON"),
    ("labelme", json.dumps({"shapes": [{"label": "car", "points": [[1, 1]], "shape_type": "blob"}],
                            "imagePath": "a.jpg", "imageHeight": 4, "imageWidth": 4}), "unknown shape_type"),
    ("labelme", json.dumps({"shapes": [], "imagePath": "missing.jpg"}), "imageHeight"),
])
def test_malformed_files_give_one_line_errors(tmp_path, fmt, text, fragment):
    path = tmp_path / ("a.xml" if fmt == "cvat_xml" else "a.json")
    path.write_text(text)
    with pytest.raises(DatasetError) as e:
        open_dataset(f"{fmt}:{path}", categories=CATEGORIES)
    assert fragment in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value)


# --------------------------------------------------------------------------------------------
# The CLI, end to end on disk


def test_cli_import_cvat_then_train_then_export_everywhere(tmp_path, capsys):
    from m2f_core.config import Mask2FormerConfig
    from m2f_core.data.train_dataset import TrainingDataset

    xml = write_cvat_task(tmp_path / "task")
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"categories": CATEGORIES}))
    out = tmp_path / "corrections" / "cvat1"
    assert interchange_main(["import", "--from", f"cvat_xml:{xml}", "--to", str(out), "--classes", str(classes)]) == 0
    assert json.loads(capsys.readouterr().out)["train_with"] == f"corrections:{out}"
    assert interchange_main(["import", "--from", f"cvat_xml:{xml}", "--to", str(out)]) == 2  # exists
    assert "already exists" in capsys.readouterr().err

    ds = open_dataset(f"corrections:{out}")
    first = cvat_xml_dataset(xml, categories=CATEGORIES)
    assert [c["name"] for c in ds.categories] == ["car", "road", "person"] and len(ds) == 2
    assert panoptic_key(ds[0]) == panoptic_key(first[0])
    assert [(a.category_id, a.iscrowd) for a in ds[0].instances] == [(0, False), (2, False), (0, True)]
    cfg = Mask2FormerConfig(class_names=["car", "road", "person"], is_thing=[True, False, True], image_size=64,
                            crop_size=(32, 32))
    for task in ("panoptic", "instance", "semantic"):
        example = TrainingDataset(ds, cfg, task=task, augmentation="none")[0]
        assert example["masks"].shape[1:] == (H, W) and len(example["labels"]) > 0

    for target in ("cvat_xml:" + str(tmp_path / "x"), "cvat_coco:" + str(tmp_path / "c"),
                   "label_studio:" + str(tmp_path / "ls.json"), "labelme:" + str(tmp_path / "lm")):
        assert interchange_main(["export", "--from", f"corrections:{out}", "--to", target]) == 0
        assert "2 image(s)" in capsys.readouterr().out
    assert interchange_main(["export", "--from", f"corrections:{out}", "--to", f"cvat_xml:{tmp_path / 'p.xml'}",
                             "--polygons", "--max-iou-loss", "0.02"]) == 0
    assert "as polygons (lowest IoU" in capsys.readouterr().out
    images = out / "images"
    back = [cvat_xml_dataset(tmp_path / "x" / "annotations.xml", image_dir=images, categories=CATEGORIES),
            cvat_coco_dataset(tmp_path / "c" / "annotations" / "instances_default.json", image_dir=images,
                              categories=CATEGORIES),
            label_studio_dataset(tmp_path / "ls.json", image_dir=images, categories=CATEGORIES, source="predictions")]
    for again in back:
        assert_same(first, again, crowd=again is not back[-1])
    assert_within(first, labelme_dataset(tmp_path / "lm", categories=CATEGORIES), 0.01)

    # user mistakes: one line, exit 2
    assert interchange_main(["export", "--from", f"corrections:{out}", "--to", f"pascal:{tmp_path}"]) == 2
    assert interchange_main(["import", "--from", f"corrections:{out}", "--to", str(tmp_path / "z")]) == 2
    assert interchange_main(["import", "--from", f"cvat_xml:{xml}", "--to", str(tmp_path / "z"), "--classes",
                             "coco_panoptic", "--map", "road=tarmac"]) == 2
    err = capsys.readouterr().err
    assert "FORMAT:PATH" in err and "tool's export" in err and "labels not among the categories" in err
    with pytest.raises(SystemExit):
        interchange_main(["export", "--from", f"corrections:{out}", "--to", "labelme:x", "--max-iou-loss", "2"])


def test_app_export_writes_the_tools_files(tmp_path):
    """The app's export can add the tools' files beside the corrections; each reads back as the export."""
    from app.editing import EditSession
    from app.export import TOOL_LAYOUT, ExportError, ExportItem, export_corrections
    from m2f_core.structures import PanopticResult, Segment

    first = cvat_xml_dataset(write_cvat_task(tmp_path / "task"), categories=CATEGORIES)
    s = first[0]
    model = Segment(id=1, category_id=0, isthing=True, score=0.75, source="model")
    segments = [model if g.id == 1 else g for g in s.panoptic.segments]
    session = EditSession.from_panoptic(PanopticResult(s.panoptic.segment_map.copy(), segments), CATEGORIES)
    items = [ExportItem(s.file_name, session, "edited")]
    with pytest.raises(ExportError, match="unknown tool format"):
        export_corrections(items, CATEGORIES, tmp_path / "out", "bad", tools=["yolo"])
    root = export_corrections(items, CATEGORIES, tmp_path / "out", "x", tools=list(TOOL_LAYOUT), polygons=True)
    for fmt, rel in TOOL_LAYOUT.items():
        assert (root / rel).exists(), fmt
    exported = open_dataset(f"corrections:{root}")[0]
    read = [open_dataset(f"cvat_xml:{root / 'cvat'}", image_dir=root / "images", categories=CATEGORIES),
            open_dataset(f"cvat_coco:{root / 'cvat_coco'}", image_dir=root / "images", categories=CATEGORIES),
            open_dataset(f"label_studio:{root / 'label_studio.json'}", image_dir=root / "images",
                         categories=CATEGORIES),
            open_dataset(f"labelme:{root / 'labelme'}", categories=CATEGORIES)]
    for ds in read:
        back = ds[0]
        assert back.file_name == root / "images" / "street1.jpg"
        assert sorted(seg.category_id for seg in back.panoptic.segments) == \
            sorted(seg.category_id for seg in exported.panoptic.segments)
        assert (back.panoptic.segment_map > 0).sum() == pytest.approx((exported.panoptic.segment_map > 0).sum(),
                                                                       rel=0.02)
    assert 'source="auto"' in (root / "cvat" / "annotations.xml").read_text()  # the model's segment
    task = json.loads((root / "label_studio.json").read_text())[0]
    assert task["data"]["image"] == "/data/local-files/?d=images/street1.jpg"
    # a correction is a person's work: Label Studio annotations (pre-labels are `export --ls-as predictions`)
    assert "predictions" not in task and task["annotations"][0]["result"]


def test_predictions_pushed_as_prelabels(tmp_path, capsys):
    """m2f_core.predict's output -> Label Studio pre-labels and CVAT polygons, read back as predicted."""
    from m2f_core.predict import run as predict

    image = save_image(tmp_path / "images" / "a.jpg", 64, 80)
    assert predict(None, tmp_path / "pred", [str(image)], ("panoptic",), device="cpu", overlays=False) == 0
    spec = f"coco_panoptic:{tmp_path / 'pred' / 'panoptic.json'}"
    predicted = open_dataset(spec, image_dir=tmp_path / "images")
    pred = predicted[0]
    images = ["--images", str(tmp_path / "images")]
    assert interchange_main(["export", "--from", spec, "--to", f"label_studio:{tmp_path / 'pre.json'}", *images]) == 0
    assert interchange_main(["export", "--from", spec, "--to", f"cvat_xml:{tmp_path / 'cvat'}", "--polygons",
                             *images]) == 0
    out = capsys.readouterr().out
    assert "as polygons (lowest IoU" in out
    tasks = json.loads((tmp_path / "pre.json").read_text())
    assert "predictions" in tasks[0] and "annotations" not in tasks[0]
    back = label_studio_dataset(tmp_path / "pre.json", image_dir=tmp_path / "images",
                                categories=predicted.categories, source="predictions")[0]
    assert back.file_name == image
    assert panoptic_key(back) == panoptic_key(pred)  # brushes: pixel-equal
    cvat = cvat_xml_dataset(tmp_path / "cvat" / "annotations.xml", image_dir=tmp_path / "images",
                            categories=predicted.categories)[0]
    assert sorted(s.category_id for s in cvat.panoptic.segments) == \
        sorted(s.category_id for s in pred.panoptic.segments)
