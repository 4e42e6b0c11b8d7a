"""The synthetic panoptic dataset generator (m2f_core.data.synthetic): format, content, determinism, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from m2f_core.data.coco_panoptic import CocoPanoptic, read_panoptic_png
from m2f_core.data.synthetic import (
    CATEGORIES,
    MIN_AREA,
    STUFF_NAMES,
    THING_HUES,
    THING_NAMES,
    generate_dataset,
    generate_scene,
    main,
    scene_rng,
    synthetic_dataset,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = (128, 160)  # non-square: catches a swapped height / width


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "m2f_core.data.synthetic", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    assert main(["--out", str(out), "--train", "16", "--val", "4", "--seed", "3",
                 "--size", f"{SIZE[0]}x{SIZE[1]}"]) == 0
    return out


def _masks(root: Path, split: str = "train") -> list[tuple[np.ndarray, list[dict]]]:
    """(segment map, segments_info) of every image of a split, read from the files."""
    data = json.loads((root / split / "panoptic.json").read_text())
    return [(read_panoptic_png(root / split / "panoptic" / ann["file_name"]), ann["segments_info"])
            for ann in data["annotations"]]


def _names(data: dict) -> dict[int, str]:
    return {c["id"]: c["name"] for c in data["categories"]}


def test_layout_and_reader(dataset: Path) -> None:
    for split, n in (("train", 16), ("val", 4)):
        root = dataset / split
        assert len(list((root / "images").glob("*.jpg"))) == n
        assert len(list((root / "panoptic").glob("*.png"))) == n
        data = json.loads((root / "panoptic.json").read_text())
        assert len(data["images"]) == len(data["annotations"]) == n
        assert [c["id"] for c in data["categories"]] == list(range(1, len(THING_NAMES) + len(STUFF_NAMES) + 1))
        for c in data["categories"]:
            assert c["isthing"] == int(c["name"] in THING_NAMES)
            assert len(c["color"]) == 3
        ds = CocoPanoptic(root / "panoptic.json", image_dir=root / "images")
        assert len(ds) == n
        assert ds.class_names == [c["name"] for c in CATEGORIES]
        for sample in ds:
            assert (sample.height, sample.width) == SIZE
            with Image.open(sample.file_name) as img:
                assert img.format == "JPEG" and img.mode == "RGB" and img.size == (SIZE[1], SIZE[0])
            assert all(s.area >= MIN_AREA for s in sample.panoptic.segments)
        assert len(synthetic_dataset(dataset, split)) == n


def test_segments_match_png(dataset: Path) -> None:
    data = json.loads((dataset / "train" / "panoptic.json").read_text())
    names = _names(data)
    stuff_ids = {c["id"] for c in data["categories"] if not c["isthing"]}
    for seg_map, infos in _masks(dataset):
        ids = [s["id"] for s in infos]
        assert len(ids) == len(set(ids))
        assert set(np.unique(seg_map).tolist()) == set(ids)  # every pixel in a segment: no void
        for s in infos:
            mask = seg_map == s["id"]
            ys, xs = np.nonzero(mask)
            assert s["area"] == mask.sum() >= MIN_AREA
            assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert s["iscrowd"] == 0
        stuff = [names[s["category_id"]] for s in infos if s["category_id"] in stuff_ids]
        assert 1 <= len(stuff) == len(set(stuff)) <= 4  # one segment per stuff class
        assert 1 <= len(infos) - len(stuff) <= 8


def test_scene_content(dataset: Path) -> None:
    """Classes repeat, same-class instances touch / overlap, rings have real holes, borders cut things."""
    data = json.loads((dataset / "train" / "panoptic.json").read_text())
    names = _names(data)
    counts: dict[str, int] = {}
    touching = holes = cut = 0
    kinds = set()
    for seg_map, infos in _masks(dataset):
        things = [(names[s["category_id"]], seg_map == s["id"]) for s in infos
                  if names[s["category_id"]] in THING_NAMES]
        for name, mask in things:
            counts[name] = counts.get(name, 0) + 1
            kinds.add(name)
            if name == "ring" and (ndimage.binary_fill_holes(mask) != mask).any():
                holes += 1
            cut += bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        for i, (name_a, a) in enumerate(things):
            grown = ndimage.binary_dilation(a)  # 4-neighbours
            touching += sum(name_b == name_a and (grown & b).any() for name_b, b in things[i + 1:])
    print(f"\nthings per class over 16 images: {counts}; same-class touching pairs: {touching}; "
          f"rings with a hole: {holes}; things cut by the border: {cut}")
    assert len(kinds) >= 5
    assert max(counts.values()) >= 4
    assert touching >= 1
    assert holes >= 1
    assert cut >= 1


def test_thing_sizes_and_class_colours() -> None:
    """Things are mostly large enough to tell apart (v2's median of 409 px was not) and each class
    keeps to its hue band: the median hue of an instance's pixels is near its class's."""
    areas, hue_ok, total = [], 0, 0
    for i in range(40):
        image, seg_map, segments = generate_scene(scene_rng(5, "train", i))
        hsv = np.asarray(Image.fromarray(image).convert("HSV"), dtype=np.float32) / 255.0
        for s in segments:
            name = CATEGORIES[s.category_id]["name"]
            if name not in THING_NAMES:
                continue
            areas.append(s.area)
            mask = ndimage.binary_erosion(seg_map == s.id, iterations=2)  # away from outlines and blur
            if mask.sum() < 30 or np.median(hsv[..., 1][mask]) < 0.25:  # too small / washed out to judge
                continue
            total += 1
            d = abs(float(np.median(hsv[..., 0][mask])) - THING_HUES[name])
            hue_ok += min(d, 1 - d) < 0.1
    assert np.median(areas) > 700 and np.mean(np.asarray(areas) < 256) < 0.25
    print(f"\nthings: median area {np.median(areas):.0f} px, in their hue band {hue_ok}/{total}")
    assert total >= 50 and hue_ok / total > 0.85, (hue_ok, total)


def test_generate_scene_api() -> None:
    image, seg_map, segments = generate_scene(np.random.default_rng(0), 96, 112)
    assert image.shape == (96, 112, 3) and image.dtype == np.uint8
    assert seg_map.shape == (96, 112) and seg_map.dtype == np.int32
    assert [s.id for s in segments] == list(range(1, len(segments) + 1))
    assert set(np.unique(seg_map).tolist()) == {s.id for s in segments}
    for s in segments:
        assert s.area == int((seg_map == s.id).sum()) >= MIN_AREA
        assert s.isthing == CATEGORIES[s.category_id]["isthing"]
    assert image.std() > 10  # not a blank picture
    again = generate_scene(np.random.default_rng(0), 96, 112)
    assert np.array_equal(again[0], image) and np.array_equal(again[1], seg_map)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", 6, seed=7, split="train", size=(96, 96))
    b = generate_dataset(tmp_path / "b", 6, seed=7, split="train", size=(96, 96), workers=2)  # parallel
    c = generate_dataset(tmp_path / "c", 3, seed=7, split="train", size=(96, 96))  # a prefix ("resumed")
    d = generate_dataset(tmp_path / "d", 6, seed=8, split="train", size=(96, 96))
    e = generate_dataset(tmp_path / "e", 6, seed=7, split="val", size=(96, 96))
    fa, fb, fc = _files(a.parent), _files(b.parent), _files(c.parent)
    assert len(fa) == 13 and fa == fb
    assert all(fa[name] == data for name, data in fc.items() if name != "panoptic.json")
    for other in (d, e):
        fo = _files(other.parent)
        assert fo["panoptic.json"] != fa["panoptic.json"]
        assert all(fo[n] != fa[n] for n in fa if n.endswith((".png", ".jpg")))
    assert all(scene_rng(7, "train", i).random() == scene_rng(7, "train", i).random() for i in range(3))


def test_png_images_and_defaults(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--train", "2", "--val", "0", "--image-format", "png", "--seed", "1"]) == 0
    assert not (tmp_path / "val").exists()
    ds = synthetic_dataset(tmp_path, "train")
    with Image.open(ds[0].file_name) as img:
        assert img.format == "PNG" and img.size == (256, 256)  # default size


def test_cli_help_and_errors(tmp_path: Path) -> None:
    r = _run_cli("--help")
    assert r.returncode == 0 and "--size" in r.stdout and "--seed" in r.stdout
    for args in (["--size", "0x10"], ["--size", "abc"], ["--train", "-1"], ["--train", "0", "--val", "0"], []):
        r = _run_cli(*(["--out", str(tmp_path / "x")] if args else []), *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (args, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, (args, r.stderr)
    (tmp_path / "file").write_text("x")
    r = _run_cli("--out", str(tmp_path / "file"), "--train", "1", "--val", "0")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_speed_report(tmp_path: Path) -> None:
    """Reports images/s at 256x256 (scene only, and written to disk); no assertion on timing."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        generate_scene(scene_rng(0, "speed", 0), 256, 256)  # warm up
        t = time.perf_counter()
        for i in range(20):
            generate_scene(scene_rng(0, "speed", i), 256, 256)
        scenes = 20 / (time.perf_counter() - t)
        t = time.perf_counter()
        generate_dataset(tmp_path, 20, seed=0, split="speed")
        written = 20 / (time.perf_counter() - t)
    finally:
        cv2.setNumThreads(threads)
    print(f"\nsynthetic 256x256 on one core: {scenes:.0f} scenes/s, {written:.0f} images/s written (jpg + png + json)")
