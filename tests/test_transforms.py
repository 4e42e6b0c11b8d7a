"""Training data: augmentations, targets, TrainingDataset / collate and the corrections folder.

Alignment is checked with synthetic images whose colour encodes the segment id: after any
geometry, every pixel away from a segment border must still have its segment's colour.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2f_core.config import Mask2FormerConfig, get_preset
from m2f_core.data.coco_instances import write_coco_instances
from m2f_core.data.coco_panoptic import CocoPanoptic, write_coco_panoptic
from m2f_core.data.corrections import CorrectionsDataset, write_corrections
from m2f_core.data.errors import DatasetError
from m2f_core.data.records import GTSegment, Sample
from m2f_core.data.semantic import write_semantic_png
from m2f_core.data.specs import open_dataset
from m2f_core.data.targets import instance_targets, panoptic_targets, semantic_targets
from m2f_core.data.train_dataset import TrainingDataset, build_class_map, collate, short_edge_choices
from m2f_core.data.transforms import (
    Geometry,
    color_aug_ssd,
    crop_with_category_area,
    hflip,
    large_scale_jitter,
    nearest_indices,
    resize_shortest_edge,
    sample_category_area_crop,
)
from m2f_core.structures import PanopticResult

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
PANAPI = REAL / "coco_panoptic_panopticapi" / "sample_data"

# pycocotools' decode under numpy 2 (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": True, "color": [220, 20, 60]},
    {"id": 3, "name": "car", "isthing": True, "color": [0, 0, 142]},
    {"id": 7, "name": "road", "isthing": False, "color": [128, 64, 128]},
    {"id": 9, "name": "sky", "isthing": False, "color": [70, 130, 180]},
]


def palette(n: int) -> np.ndarray:
    """Distinct colours; index 0 unused (void)."""
    rng = np.random.default_rng(123)
    return rng.integers(0, 256, (n, 3)).astype(np.uint8)


def block_segments(h: int = 96, w: int = 128, rows: int = 4, cols: int = 4) -> np.ndarray:
    """(h, w) int32 map of rows x cols rectangles with ids 1..rows*cols."""
    ys = np.minimum(np.arange(h) * rows // h, rows - 1)
    xs = np.minimum(np.arange(w) * cols // w, cols - 1)
    return (ys[:, None] * cols + xs[None, :] + 1).astype(np.int32)


def colour_image(seg: np.ndarray, pal: np.ndarray) -> np.ndarray:
    return pal[seg]


def interior(seg: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood has one id (away from borders and the map's edge)."""
    h, w = seg.shape
    out = np.zeros_like(seg, dtype=bool)
    core = np.ones((h - 2 * radius, w - 2 * radius), dtype=bool)
    centre = seg[radius:h - radius, radius:w - radius]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            core &= seg[radius + dy:h - radius + dy, radius + dx:w - radius + dx] == centre
    out[radius:h - radius, radius:w - radius] = core
    return out


def assert_aligned(image: np.ndarray, seg: np.ndarray, pal: np.ndarray, void: int = 0) -> int:
    """Colours match ids away from borders; returns how many pixels were checked."""
    ok = interior(seg) & (seg != void)
    diff = np.abs(image[ok].astype(int) - pal[seg[ok]].astype(int))
    assert diff.size == 0 or diff.max() <= 2, f"{(diff > 2).any(axis=1).sum()} misaligned pixels"
    return int(ok.sum())


# --------------------------------------------------------------------------------------------
# Geometry


def test_nearest_matches_pil_and_sequential_ops():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n_in, n_out = (int(v) for v in rng.integers(1, 700, 2))
        a = rng.integers(0, 2**31 - 1, (3, n_in)).astype(np.int32)
        ref = np.asarray(Image.fromarray(a).resize((n_out, 3), Image.NEAREST))
        np.testing.assert_array_equal(ref, a[:, nearest_indices(n_in, n_out)])
    # flip / resize / crop / pad composed as index arrays == the steps done one by one with PIL
    for _ in range(10):
        h, w = (int(v) for v in rng.integers(20, 120, 2))
        seg = rng.integers(0, 2**31 - 1, (h, w)).astype(np.int32)
        rh, rw = (int(v) for v in rng.integers(10, 200, 2))
        y0, x0 = int(rng.integers(0, rh)), int(rng.integers(0, rw))
        geo = Geometry(h, w).hflip().resize(rh, rw).crop(y0, x0, 64, 64).pad(64, 64)
        ref = np.asarray(Image.fromarray(np.ascontiguousarray(seg[:, ::-1])).resize((rw, rh), Image.NEAREST))
        ref = ref[y0:y0 + 64, x0:x0 + 64]
        ref = np.pad(ref, ((0, 64 - ref.shape[0]), (0, 64 - ref.shape[1])), constant_values=7)
        np.testing.assert_array_equal(geo.apply_segmentation(seg, 7), ref)
        assert geo.output_size == (64, 64)
        masks = np.stack([seg % 2 == 0, seg % 3 == 0])
        np.testing.assert_array_equal(geo.apply_masks(masks), np.stack([ref % 2 == 0, (ref % 3 == 0) & (ref != 7)]))


def test_lsj_size_alignment_and_padding():
    seg = block_segments(120, 160)
    pal = palette(seg.max() + 1)
    image = colour_image(seg, pal)
    semantic = ((seg - 1) % 3).astype(np.uint8)
    checked = 0
    for s in range(12):
        out, (pan, sem) = large_scale_jitter(image, [seg, semantic], np.random.default_rng(s), image_size=128,
                                             seg_pad_value=[0, 255])
        assert out.shape == (128, 128, 3) and out.dtype == np.uint8
        assert pan.shape == sem.shape == (128, 128) and pan.dtype == np.int32
        checked += assert_aligned(out, pan, pal)
        pad = pan == 0
        assert (out[pad] == 128).all()  # the image is padded with 128 exactly where the id map is void
        assert (sem[pad] == 255).all() and (sem[~pad] == (pan[~pad] - 1) % 3).all()
    assert checked > 20000


def test_lsj_flips_image_and_maps_together():
    seg = block_segments(64, 64)
    pal = palette(seg.max() + 1)
    image = colour_image(seg, pal)
    seen = set()
    for s in range(10):
        out, pan = large_scale_jitter(image, seg, np.random.default_rng(s), image_size=64, min_scale=1.0,
                                      max_scale=1.0)
        flipped = bool(np.array_equal(pan, seg[:, ::-1]))
        assert flipped or np.array_equal(pan, seg)
        np.testing.assert_array_equal(out, image[:, ::-1] if flipped else image)
        seen.add(flipped)
    assert seen == {True, False}
    fi, (fs,) = hflip(image, [seg])
    np.testing.assert_array_equal(fi, image[:, ::-1])
    np.testing.assert_array_equal(fs, seg[:, ::-1])


def test_resize_shortest_edge():
    seg = block_segments(90, 150)
    pal = palette(seg.max() + 1)
    image = colour_image(seg, pal)
    choices = short_edge_choices((64, 64))
    assert choices == [int(x * 0.1 * 64) for x in range(5, 21)]
    for s in range(6):
        out, m = resize_shortest_edge(image, seg, np.random.default_rng(s), choices, max_size=200)
        h, w = out.shape[:2]
        assert m.shape == (h, w) and max(h, w) <= 200
        assert min(h, w) in choices or max(h, w) == 200
        assert abs(w / h - 150 / 90) < 0.05
        assert_aligned(out, m, pal)


def test_crop_with_category_area_constraint():
    # class 1 fills 60% (left), class 2 40% (right), ignore 255 stripe on top: few 50x50 windows are mixed enough
    label = np.ones((100, 100), np.uint8)
    label[:, 60:] = 2
    label[:10] = 255
    image = np.zeros((100, 100, 3), np.uint8)
    image[..., 0] = label
    violations_free = 0
    for s in range(20):
        out, crop = crop_with_category_area(image, label, np.random.default_rng(s), (50, 50),
                                            single_category_max_area=0.75)
        assert crop.shape == (50, 50) and out.shape == (50, 50, 3)
        np.testing.assert_array_equal(out[..., 0], crop)
        labels, counts = np.unique(crop, return_counts=True)
        counts = counts[labels != 255]
        assert len(counts) > 1 and counts.max() < 0.75 * counts.sum()
        y0, x0, _, _ = sample_category_area_crop(label, np.random.default_rng(s), (50, 50), 1.0)
        window = label[y0:y0 + 50, x0:x0 + 50]
        c = np.unique(window[window != 255], return_counts=True)[1]
        violations_free += len(c) > 1 and c.max() < 0.75 * c.sum()
    assert violations_free < 20  # without the constraint some crops are dominated by one class
    # a crop larger than the map is clipped to it
    out, crop = crop_with_category_area(image, label, np.random.default_rng(0), (512, 80))
    assert crop.shape == (100, 80)


def test_color_aug_changes_colours_not_geometry():
    seg = block_segments(48, 64)
    pal = palette(seg.max() + 1)
    image = colour_image(seg, pal)
    changed = 0
    for s in range(10):
        out = color_aug_ssd(image, np.random.default_rng(s))
        assert out.shape == image.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, color_aug_ssd(image, np.random.default_rng(s)))
        # a per-pixel colour function: pixels of one segment stay one colour
        for i in np.unique(seg):
            assert len(np.unique(out[seg == i], axis=0)) == 1
        changed += not np.array_equal(out, image)
    assert changed >= 7


# --------------------------------------------------------------------------------------------
# Targets


def test_panoptic_targets():
    seg = np.zeros((6, 8), np.int32)
    seg[:3] = 5
    seg[3:, :4] = 9
    seg[3:, 4:] = 11
    segments = [GTSegment(id=5, category_id=2, isthing=False), GTSegment(id=9, category_id=0, isthing=True),
                GTSegment(id=11, category_id=1, isthing=True, iscrowd=True),
                GTSegment(id=13, category_id=1, isthing=True)]  # no pixels left (cropped away)
    labels, masks = panoptic_targets(seg, segments)
    assert labels.dtype == np.int64 and masks.dtype == bool
    assert labels.tolist() == [2, 0]
    np.testing.assert_array_equal(masks[0], seg == 5)
    np.testing.assert_array_equal(masks[1], seg == 9)
    assert masks.sum(axis=0).max() == 1  # disjoint
    # COCO segments_info dicts work too; class_map drops unmapped classes
    infos = [{"id": 5, "category_id": 2, "iscrowd": 0}, {"id": 9, "category_id": 0, "iscrowd": 0}]
    labels, masks = panoptic_targets(seg, infos, class_map=np.array([-1, 4, 3]))
    assert labels.tolist() == [3] and masks.shape == (1, 6, 8)
    labels, masks = panoptic_targets(seg, [])
    assert labels.shape == (0,) and masks.shape == (0, 6, 8)


def test_instance_and_semantic_targets():
    masks = np.zeros((3, 4, 5), bool)
    masks[0, :2] = True
    masks[1, 1:] = True  # overlaps the first
    labels, out = instance_targets(masks, [3, 1, 2], iscrowd=[False, False, True])
    assert labels.tolist() == [3, 1] and out.shape == (2, 4, 5)  # crowd and the empty mask are gone
    labels, out = instance_targets(masks, [3, 1, 2])
    assert labels.tolist() == [3, 1]

    label_map = np.array([[0, 0, 3, 255], [3, 3, 7, 255]], np.uint8)
    labels, out = semantic_targets(label_map)
    assert labels.tolist() == [0, 3, 7]
    for c, m in zip(labels, out):
        np.testing.assert_array_equal(m, label_map == c)
    # two dataset classes onto one model class share one mask; unmapped classes become ignore
    lut = np.full(8, -1)
    lut[[0, 3]] = 1
    labels, out = semantic_targets(label_map, class_map=lut)
    assert labels.tolist() == [1]
    np.testing.assert_array_equal(out[0], (label_map == 0) | (label_map == 3))
    assert semantic_targets(np.full((2, 2), 255, np.uint8))[1].shape == (0, 2, 2)


def test_build_class_map():
    model = ["a", "b", "c"]
    assert build_class_map(["a", "b"], model, None) is None
    assert build_class_map(["c", "x", "a"], model, "by_name").tolist() == [2, -1, 0]
    assert build_class_map(["p", "q"], model, {1: 0}).tolist() == [-1, 0]
    with pytest.raises(ValueError, match="class_map"):
        build_class_map(["a", "b", "c", "d"], model, None)
    with pytest.raises(ValueError, match="outside"):
        build_class_map(["a"], model, [5])


# --------------------------------------------------------------------------------------------
# TrainingDataset and collate


class ListDataset(list):
    """Samples in memory with a category list, like a reader."""

    categories = CATEGORIES


def synthetic_samples(tmp_path: Path, n: int = 3) -> ListDataset:
    """Block images whose colour encodes the segment; segment i has class (i - 1) % 4; the last is crowd."""
    seg = block_segments(96, 128)
    pal = palette(seg.max() + 1)
    samples = ListDataset()
    for k in range(n):
        s = np.roll(seg, 8 * k, axis=1)
        path = tmp_path / f"img{k}.png"
        Image.fromarray(colour_image(s, pal)).save(path)
        segments = [GTSegment(id=i, category_id=(i - 1) % 4, isthing=(i - 1) % 4 < 2, iscrowd=i == 16)
                    for i in range(1, 17)]
        samples.append(Sample(image_id=k, file_name=path, height=96, width=128,
                              panoptic=PanopticResult(s, segments).update_stats()))
    return samples


def small_config(**kw) -> Mask2FormerConfig:
    base = dict(class_names=[c["name"] for c in CATEGORIES], is_thing=[c["isthing"] for c in CATEGORIES],
                image_size=128, crop_size=(64, 64))
    return Mask2FormerConfig(**{**base, **kw})


def test_training_dataset_determinism(tmp_path):
    data = synthetic_samples(tmp_path)
    cfg = small_config()
    a = TrainingDataset(data, cfg, task="panoptic", augmentation="lsj", seed=3)
    b = TrainingDataset(data, cfg, task="panoptic", augmentation="lsj", seed=3)

    def same(x: dict, y: dict) -> bool:
        return (torch.equal(x["image"], y["image"]) and torch.equal(x["labels"], y["labels"])
                and torch.equal(x["masks"], y["masks"]))

    a.set_epoch(2)
    b.set_epoch(2)
    for i in range(len(data)):
        assert same(a[i], b[i])
        assert same(a[i], b[(2, i)])
    b.set_epoch(3)
    assert not any(same(a[i], b[i]) for i in range(len(data)))
    assert not same(a[0], TrainingDataset(data, cfg, seed=4, epoch=2)[0])
    assert not same(a[0], a[1])


@pytest.mark.parametrize("augmentation", ["lsj", "resize_crop", "none"])
def test_training_dataset_alignment(tmp_path, augmentation):
    data = synthetic_samples(tmp_path, n=1)
    pal = palette(17)
    cfg = small_config(single_category_max_area=0.5)
    ds = TrainingDataset(data, cfg, task="panoptic", augmentation=augmentation)
    for epoch in range(4):
        ex = ds[(epoch, 0)]
        image = ex["image"].permute(1, 2, 0).numpy()
        masks = ex["masks"].numpy()
        expected = {"lsj": (128, 128), "resize_crop": (64, 64), "none": (96, 128)}[augmentation]
        assert image.shape[:2] == expected and masks.shape[1:] == expected
        assert ex["image"].dtype == torch.uint8 and ex["masks"].dtype == torch.bool
        assert ex["labels"].dtype == torch.int64 and len(ex["labels"]) == len(masks)
        assert masks.sum(axis=0).max() <= 1 and masks.any(axis=(1, 2)).all()
        # each mask covers pixels of one colour (away from its border); without colour jitter that colour
        # is the palette entry of a segment of the mask's class
        seg = np.zeros(expected, np.int32)
        for k, m in enumerate(masks):
            seg[m] = k + 1
        inside = interior(seg) & (seg > 0)
        checked = 0
        for k, label in enumerate(ex["labels"].tolist()):
            px = image[inside & (seg == k + 1)].astype(int)
            if not len(px):
                continue
            checked += len(px)
            assert np.abs(px - px[0]).max() <= 2
            if augmentation != "resize_crop":
                segment = int(np.abs(pal.astype(int) - px[0]).max(axis=1).argmin())
                assert np.abs(pal[segment].astype(int) - px[0]).max() <= 2 and (segment - 1) % 4 == label
        assert checked > 0.3 * expected[0] * expected[1] or augmentation == "lsj"


def test_training_dataset_tasks_and_class_map(tmp_path):
    data = synthetic_samples(tmp_path, n=1)
    cfg = small_config()
    pan = TrainingDataset(data, cfg, task="panoptic", augmentation="none")[0]
    assert len(pan["labels"]) == 15  # 16 segments, one crowd
    for lab, m in zip(pan["labels"], pan["masks"]):
        ids = np.unique(data[0].panoptic.segment_map[m.numpy()])
        assert len(ids) == 1 and (ids[0] - 1) % 4 == int(lab)
    ins = TrainingDataset(data, cfg, task="instance", augmentation="none")[0]
    assert sorted(set(ins["labels"].tolist())) == [0, 1] and len(ins["labels"]) == 8  # things only
    sem = TrainingDataset(data, cfg, task="semantic", augmentation="none")[0]
    assert sem["labels"].tolist() == [0, 1, 2, 3]  # crowd pixels keep their class (official semseg maps)
    assert sem["masks"].sum() == 96 * 128
    # by name: "sky" and "person" are in the model, "car" and "road" are not
    other = Mask2FormerConfig(class_names=["sky", "tree", "person"])
    mapped = TrainingDataset(data, other, task="panoptic", augmentation="none", class_map="by_name")[0]
    assert sorted(set(mapped["labels"].tolist())) == [0, 2]
    with pytest.raises(ValueError, match="class_map"):
        TrainingDataset(data, Mask2FormerConfig(class_names=["x"]), task="panoptic")


def test_collate_pads_to_multiple_of_32():
    def example(h: int, w: int, n: int) -> dict:
        return {"image": torch.full((3, h, w), 9, dtype=torch.uint8), "labels": torch.arange(n),
                "masks": torch.ones((n, h, w), dtype=torch.bool), "image_id": f"{h}x{w}", "file_name": "f"}

    batch = collate([example(100, 70, 2), example(50, 130, 0)])
    assert batch["images"].shape == (2, 3, 128, 160) and batch["images"].dtype == torch.uint8
    assert batch["image_sizes"] == [(100, 70), (50, 130)]
    assert batch["image_ids"] == ["100x70", "50x130"]
    assert (batch["images"][0, :, :100, :70] == 9).all() and batch["images"][0].sum() == 9 * 3 * 100 * 70
    t0, t1 = batch["targets"]
    assert t0["masks"].shape == (2, 128, 160) and t0["masks"].sum() == 2 * 100 * 70
    assert t1["masks"].shape == (0, 128, 160) and t1["labels"].shape == (0,)
    assert collate([example(64, 64, 1)])["images"].shape == (1, 3, 64, 64)
    assert collate([example(65, 64, 1)], size_divisibility=0)["images"].shape == (1, 3, 65, 64)


# --------------------------------------------------------------------------------------------
# Corrections folder and the real COCO sample


@pytest.fixture()
def real_panoptic(tmp_path) -> CocoPanoptic:
    if not PANAPI.is_dir():
        pytest.skip(f"shared real data not found at {PANAPI}")
    root = tmp_path / "coco"
    shutil.copytree(PANAPI / "input_images", root / "images")
    shutil.copytree(PANAPI / "panoptic_examples", root / "png")
    shutil.copy(PANAPI / "panoptic_examples.json", root / "panoptic.json")
    return CocoPanoptic(root / "panoptic.json", png_dir=root / "png", image_dir=root / "images")


def test_corrections_round_trip(real_panoptic, tmp_path):
    sample = real_panoptic[0]
    root = write_corrections(tmp_path / "corrections" / "mine", [sample], real_panoptic.categories)
    assert sorted(p.name for p in root.iterdir()) == ["images", "instances.json", "panoptic", "panoptic.json",
                                                      "semantic"]
    for ds in (CorrectionsDataset(root), open_dataset(f"corrections:{root}"),
               open_dataset(f"corrections:{root.parent}", split="mine")):
        assert isinstance(ds, CorrectionsDataset) and len(ds) == 1
        assert ds.class_names == real_panoptic.class_names
        got = ds[0]
        assert got.image_id == sample.image_id and got.file_name == root / "images" / sample.file_name.name
        np.testing.assert_array_equal(got.panoptic.segment_map, sample.panoptic.segment_map)
        assert [(s.id, s.category_id, s.iscrowd) for s in got.panoptic.segments] == \
               [(s.id, s.category_id, s.iscrowd) for s in sample.panoptic.segments]
        assert len(got.instances) == 15 and sum(a.iscrowd for a in got.instances) == 1
        np.testing.assert_array_equal(got.semantic, sample.semantic_map())
    # the same folder written with the plain writers reads the same
    raw = tmp_path / "raw"
    shutil.copytree(root / "images", raw / "images")
    write_coco_panoptic(raw / "panoptic.json", [sample], real_panoptic.categories, png_dir=raw / "panoptic")
    write_coco_instances(raw / "instances.json", [sample], real_panoptic.categories)
    write_semantic_png(raw / "semantic" / "000000142238.png", sample.semantic_map())
    np.testing.assert_array_equal(CorrectionsDataset(raw)[0].panoptic.segment_map, sample.panoptic.segment_map)


def test_corrections_keep_the_exporters_class_order(tmp_path):
    data = synthetic_samples(tmp_path, n=2)
    cats = CATEGORIES[::-1]  # dataset ids not sorted: the file order is the class order
    flipped = ListDataset()
    for s in data:
        segs = [GTSegment(id=g.id, category_id=3 - g.category_id, isthing=g.isthing, iscrowd=g.iscrowd)
                for g in s.panoptic.segments]
        flipped.append(Sample(s.image_id, s.file_name, s.height, s.width, panoptic=PanopticResult(
            s.panoptic.segment_map, segs).update_stats()))
    ds = CorrectionsDataset(write_corrections(tmp_path / "c", flipped, cats))
    assert ds.class_names == [c["name"] for c in cats]
    for a, b in zip(ds, flipped):
        assert [g.category_id for g in a.panoptic.segments] == [g.category_id for g in b.panoptic.segments]
        np.testing.assert_array_equal(a.semantic, b.semantic_map())
        assert [i.category_id for i in a.instances] == [i.category_id for i in b.instance_annotations()]


def test_corrections_missing_pieces(real_panoptic, tmp_path):
    root = write_corrections(tmp_path / "c", [real_panoptic[0]], real_panoptic.categories)

    def error(path: Path, *fragments: str) -> None:
        with pytest.raises(DatasetError) as e:
            CorrectionsDataset(path)
        msg = str(e.value)
        assert "\n" not in msg and all(f in msg for f in fragments), msg

    error(tmp_path / "nope", "no such corrections folder")
    broken = tmp_path / "b1"
    shutil.copytree(root, broken)
    shutil.rmtree(broken / "images")
    error(broken, "images")
    broken = tmp_path / "b2"
    shutil.copytree(root, broken)
    shutil.rmtree(broken / "panoptic")
    error(broken, "panoptic", "PNGs of panoptic.json")
    broken = tmp_path / "b3"
    shutil.copytree(root, broken)
    (broken / "panoptic.json").unlink()
    error(broken, "panoptic.json", "missing")
    broken = tmp_path / "b4"
    (broken / "images").mkdir(parents=True)
    error(broken, "no annotations")
    broken = tmp_path / "b5"
    shutil.copytree(root, broken)
    (broken / "semantic" / "000000142238.png").unlink()
    error(broken, "no semantic PNG", "000000142238")
    # semantic only: needs categories, then works
    only = tmp_path / "b6"
    shutil.copytree(root / "images", only / "images")
    shutil.copytree(root / "semantic", only / "semantic")
    error(only, "needs categories")
    sem = CorrectionsDataset(only, categories="coco_panoptic")[0]
    assert sem.semantic.shape == (427, 640) and sem.panoptic is None
    # instances only
    ins = tmp_path / "b7"
    shutil.copytree(root / "images", ins / "images")
    shutil.copy(root / "instances.json", ins / "instances.json")
    got = CorrectionsDataset(ins)[0]
    assert len(got.instances) == 15 and got.panoptic is None
    data = json.loads((root / "instances.json").read_text())
    assert all(isinstance(a["segmentation"]["counts"], str) for a in data["annotations"])  # compressed RLE


def test_training_dataset_real_coco_sample(real_panoptic, tmp_path):
    root = write_corrections(tmp_path / "c", [real_panoptic[0]], real_panoptic.categories)
    data = open_dataset(f"corrections:{root}")
    sample = data[0]
    non_crowd = [s for s in sample.panoptic.segments if not s.iscrowd]
    cfg = get_preset("coco_panoptic_r50").replace(image_size=256, crop_size=(128, 128), single_category_max_area=0.9)
    ds = TrainingDataset(data, cfg, task="panoptic", augmentation="none")
    ex = ds[0]
    assert ex["image"].shape == (3, 427, 640) and ex["image_id"] == 142238
    assert ex["labels"].tolist() == [s.category_id for s in non_crowd]
    for s, m in zip(non_crowd, ex["masks"]):
        np.testing.assert_array_equal(m.numpy(), sample.panoptic.segment_map == s.id)

    lsj = TrainingDataset(data, cfg, task="panoptic", augmentation="lsj", seed=1)
    for epoch in range(3):
        lsj.set_epoch(epoch)
        ex = lsj[0]
        assert ex["image"].shape == (3, 256, 256) and ex["masks"].shape[1:] == (256, 256)
        assert set(ex["labels"].tolist()) <= {s.category_id for s in non_crowd}
        assert ex["masks"].sum(0).max() <= 1 and ex["masks"].any(2).any(1).all()
    crop = TrainingDataset(data, cfg, task="semantic", augmentation="resize_crop")[0]
    assert crop["image"].shape == (3, 128, 128)
    ins = TrainingDataset(data, cfg, task="instance", augmentation="lsj")[0]
    things = {i for i, c in enumerate(data.categories) if c["isthing"]}
    assert set(ins["labels"].tolist()) <= things and len(ins["labels"]) <= 14
    batch = collate([ds[0], lsj[0]])
    assert batch["images"].shape == (2, 3, 448, 640)
