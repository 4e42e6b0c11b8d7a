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

from .cli import program_name

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


def _predict_one(predictor, path: Path, name: str, out: Path, tasks: tuple[str, ...], categories: list[dict],
                 overlays: bool) -> dict:
    """Predict one image and write its PNGs; returns its JSON record (the entries of the merged JSON files).

    Why a record: the COCO JSON files list every image, so they are written once from the records of
    all images, in input order, whichever process predicted them (``m2f_core.parallel``).
    """
    from .data.coco_instances import instance_results_to_coco
    from .data.coco_panoptic import coco_panoptic_segments_info, write_panoptic_png
    from .data.semantic import write_semantic_png
    from .visualize import draw_instances, draw_panoptic, draw_semantic

    try:
        pred = predictor.predict(path)
    except ValueError as e:  # unreadable or odd image: report it, go on with the others
        return {"error": str(e)}
    cfg = predictor.config
    h, w = pred.size
    record: dict = {"error": None}
    if "panoptic" in tasks:
        pan = pred.panoptic()
        png = out / "panoptic" / f"{name}.png"
        record["image"] = {"id": image_id_for(name), "file_name": name + path.suffix, "height": h, "width": w}
        record["annotation"] = {"image_id": image_id_for(name), "file_name": png.name,
                                "segments_info": coco_panoptic_segments_info(pan, categories, source=png)}
        write_panoptic_png(png, pan.segment_map)
        if overlays:
            _save_png(out / "overlays" / f"{name}_panoptic.png",
                      draw_panoptic(pred.image, pan, cfg.class_names, cfg.colors, cfg.is_thing))
    if "instance" in tasks:
        ins = pred.instance()
        record["instances"] = instance_results_to_coco(image_id_for(name), ins, categories)
        if overlays:
            _save_png(out / "overlays" / f"{name}_instance.png",
                      draw_instances(pred.image, ins, cfg.class_names, cfg.colors))
    if "semantic" in tasks:
        sem = pred.semantic()
        write_semantic_png(out / "semantic" / f"{name}.png", sem.label_map.astype(np.uint8))
        if overlays:
            _save_png(out / "overlays" / f"{name}_semantic.png",
                      draw_semantic(pred.image, sem.label_map, cfg.class_names, cfg.colors))
    return record


def _write_json(out: Path, records: list[dict], tasks: tuple[str, ...], categories: list[dict]) -> None:
    """The COCO panoptic JSON and the instance results of every predicted image, in input order (atomic)."""
    from .atomic import atomic_write_json
    from .data.coco_json import categories_for_json
    from .data.errors import DatasetError

    done = [r for r in records if r["error"] is None]
    if "panoptic" in tasks and done:
        ids = [r["image"]["id"] for r in done]
        if len(set(ids)) != len(ids):
            raise DatasetError(out / "panoptic.json", "two images have the same image id (e.g. 7.jpg and 007.jpg)")
        atomic_write_json(out / "panoptic.json", {"images": [r["image"] for r in done],
                                                  "annotations": [r["annotation"] for r in done],
                                                  "categories": categories_for_json(categories)})
    if "instance" in tasks and done:
        atomic_write_json(out / "instances.json", [e for r in done for e in r["instances"]])


def _manifest(paths: list[Path], tasks: tuple[str, ...], overlays: bool, weights: str | None, cfg) -> dict:
    """What a resumed run must share with the killed one: the same images, options, weights and config."""
    from .parallel import weights_fingerprint

    return {"program": "predict", "images": [str(p.resolve()) for p in paths], "tasks": list(tasks),
            "overlays": overlays, "weights": weights_fingerprint(weights), "config": cfg.to_dict()}


def run(weights: str | None, out: Path, images: list[str], tasks: tuple[str, ...], config: str | None = None,
        device: str | None = None, overlays: bool = True, compile: bool = False) -> int:
    """Predict every image and write the outputs; under torchrun the images are split over the processes
    and ``OUT/.shards`` keeps the finished chunks so that a killed run resumes (``m2f_core.parallel``)."""
    from . import parallel
    from .atomic import remove_stale_temporaries
    from .data.categories import categories_from_config
    from .predictor import Predictor

    group = parallel.init()
    paths = group.share(lambda: _collect_images(images))  # rank 0 lists the images for every process
    predictor = group.each(lambda: Predictor(weights, device=parallel.device_for(group, device), config=config,
                                             compile=compile))
    categories = categories_from_config(predictor.config)
    names = _unique_names(paths)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".shards" if group.launched else None
    if work is not None and group.is_main:  # before run_items: no other rank writes yet
        for folder in (out, out / "panoptic", out / "semantic", out / "overlays"):
            remove_stale_temporaries(folder)
    records = parallel.run_items(
        group, len(paths), lambda i: _predict_one(predictor, paths[i], names[i], out, tasks, categories, overlays),
        work=work, manifest=_manifest(paths, tasks, overlays, weights, predictor.config))
    code, error = 0, None
    if records is not None:
        try:
            records = list(records)  # from the chunk files under torchrun
            _write_json(out, records, tasks, categories)
        except (ValueError, OSError, parallel.ParallelError) as e:
            if not group.launched:
                raise
            error = str(e)
        else:
            parallel.remove_work(group, work)
            failures = [r["error"] for r in records if r["error"] is not None]
            for message in failures:
                print(f"skipped: {message}", file=sys.stderr)
            print(f"{len(paths) - len(failures)} image(s) -> {out}")
            code = 1 if failures else 0
    return parallel.finish(group, code, error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program_name("python -m m2f_core.predict"),
                                     description=__doc__.split("\n\n")[0])
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
    from . import parallel

    try:
        return run(args.weights, args.out, args.images, tasks, args.config, args.device, not args.no_overlays,
                   args.compile)
    except (ValueError, OSError, parallel.ParallelError) as e:  # bad weights, paths or images: one line
        parallel.report_error(e)
        return 2
    finally:
        parallel.close()


if __name__ == "__main__":
    sys.exit(main())
