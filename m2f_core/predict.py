"""Predict on images and write the standard formats plus overlays.

    python -m m2f_core.predict [--weights W] --out DIR [--task panoptic|instance|semantic|all] IMAGES...

IMAGES are files or folders (searched recursively). One forward pass per image gives every task:
- panoptic: ``DIR/panoptic/<name>.png`` (id = R + 256 G + 256^2 B) and ``DIR/panoptic.json``
  (COCO panoptic, dataset category ids);
- instance: ``DIR/instances.json`` (COCO results, compressed RLE, never polygons);
- semantic: ``DIR/semantic/<name>.png`` (uint8 class ids, 255 = ignore);
- overlays: ``DIR/overlays/<name>_<task>.png``.
Unreadable images are reported on stderr and skipped; the exit code is 1 if any was skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TASKS = ("panoptic", "instance", "semantic")


def _collect_images(items: list[str]) -> list[Path]:
    from .predictor import list_images

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths.extend(list_images(p))
        elif p.exists():
            paths.append(p)
        else:
            raise ValueError(f"{p}: no such file or folder")
    if not paths:
        raise ValueError("no images found in " + ", ".join(items))
    return paths


def _unique_names(paths: list[Path]) -> list[str]:
    """Output names from file stems, made unique when two folders hold the same name."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        names.append(p.stem if n == 0 else f"{p.stem}_{n}")
    return names


def image_id_for(name: str) -> int | str:
    """COCO names images by their id (000000142238.jpg is id 142238): keep that id so the outputs evaluate."""
    return int(name) if name.isdigit() else name


def _save_png(path: Path, array: np.ndarray) -> None:
    from .atomic import atomic_write_bytes
    from .data.fileio import encode_png

    atomic_write_bytes(path, encode_png(array))


def run(weights: str | None, out: Path, images: list[str], tasks: tuple[str, ...], config: str | None = None,
        device: str | None = None, overlays: bool = True, compile: bool = False) -> int:
    from .data.categories import categories_from_config
    from .data.coco_instances import write_coco_instance_results
    from .data.coco_panoptic import write_coco_panoptic
    from .data.records import Sample
    from .data.semantic import write_semantic_png
    from .predictor import Predictor
    from .visualize import draw_instances, draw_panoptic, draw_semantic

    paths = _collect_images(images)
    predictor = Predictor(weights, device=device, config=config, compile=compile)
    cfg = predictor.config
    categories = categories_from_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    panoptic_samples, instance_results, failures = [], [], 0
    for (path, pred), name in zip(predictor.predict_many(paths), _unique_names(paths)):
        if isinstance(pred, Exception):
            print(f"skipped: {pred}", file=sys.stderr)
            failures += 1
            continue
        h, w = pred.size
        if "panoptic" in tasks:
            pan = pred.panoptic()
            file_name = Path(path).with_name(name + Path(path).suffix)  # unique PNG names
            panoptic_samples.append(Sample(image_id=image_id_for(name), file_name=file_name, height=h, width=w,
                                           panoptic=pan))
            if overlays:
                _save_png(out / "overlays" / f"{name}_panoptic.png",
                          draw_panoptic(pred.image, pan, cfg.class_names, cfg.colors, cfg.is_thing))
        if "instance" in tasks:
            ins = pred.instance()
            instance_results.append((image_id_for(name), ins))
            if overlays:
                _save_png(out / "overlays" / f"{name}_instance.png",
                          draw_instances(pred.image, ins, cfg.class_names, cfg.colors))
        if "semantic" in tasks:
            sem = pred.semantic()
            write_semantic_png(out / "semantic" / f"{name}.png", sem.label_map.astype(np.uint8))
            if overlays:
                _save_png(out / "overlays" / f"{name}_semantic.png",
                          draw_semantic(pred.image, sem.label_map, cfg.class_names, cfg.colors))
    if panoptic_samples:
        write_coco_panoptic(out / "panoptic.json", panoptic_samples, categories, png_dir=out / "panoptic")
    if instance_results:
        write_coco_instance_results(out / "instances.json", instance_results, categories)
    print(f"{len(paths) - failures} image(s) -> {out}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m m2f_core.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--weights", default=None,
                        help="weights: our folder, HF folder or id, .pkl, .pth (default: the built-in model)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--task", choices=(*TASKS, "all"), default="all")
    parser.add_argument("--config", default=None, help="preset or config JSON (for .pkl/.pth without one)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network: at most ~10 %% faster per image, minutes to compile "
                             "each new size")
    args = parser.parse_args(argv)
    tasks = TASKS if args.task == "all" else (args.task,)
    from .runtime import tune_process

    tune_process()  # a program: keep freed activation memory in the heap (runtime.py)
    try:
        return run(args.weights, args.out, args.images, tasks, args.config, args.device, not args.no_overlays,
                   args.compile)
    except (ValueError, OSError) as e:  # bad weights, paths or images: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
