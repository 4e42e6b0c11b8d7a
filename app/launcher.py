"""Start the Mask2Former workbench: predict, switch task, correct masks, export (Gradio, in the browser).

    python launch.py                                  # built-in model, http://127.0.0.1:7860
    python launch.py --weights weights/coco_panoptic_r50 --images photos/
    python launch.py --dataset coco_panoptic:datasets/coco --corrections-dir datasets/corrections

Binds 127.0.0.1 unless --host says otherwise (--host 0.0.0.0 makes it reachable from other machines);
opens the browser when run on a desktop, unless --no-browser. ``launch.py`` (a checkout) and ``m2f-app``
(installed) both run ``main``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from m2f_core.cli import positive_int

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home

DEFAULT_MAX_PIXELS = 50_000_000
NUM_EXAMPLES = 4


def _prog() -> str:
    """The command as the user typed it: ``launch.py`` or ``m2f-app``."""
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "launch.py"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as every CLI of the project
        self.exit(2, f"{self.prog}: error: {message}\n")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {value}")
    return value


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=_prog(), description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="The page: upload or pick an image, switch Panoptic / Instance / Semantic, click a segment to "
                       "select it, relabel / delete / merge / split / paint / recover, undo / redo, export.")
    p.add_argument("--weights", default=None, metavar="SOURCE",
                   help="model weights: our folder, a Detectron2 .pkl/.pth, a Hugging Face folder or hub id "
                        "(default: the built-in model trained on synthetic scenes)")
    p.add_argument("--config", default=None, help="preset name or config JSON, for weights without one")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="run the network in PyTorch (default) or exported to ONNX in onnxruntime (CPU)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also ask Gradio for a public share link (off by default)")
    p.add_argument("--images", type=Path, default=None, metavar="DIR", help="a folder of images to browse "
                   "(recursive) with next / previous")
    p.add_argument("--dataset", default=None, metavar="FORMAT:PATH",
                   help="a dataset to browse, its ground truth shown beside the prediction "
                        "(coco_panoptic, coco_instances, ade20k, cityscapes, semantic, corrections)")
    p.add_argument("--split", default=None,
                   help="split inside the --dataset root (default: its validation split: val2017, validation, val)")
    p.add_argument("--corrections-dir", type=Path, default=Path("datasets/corrections"), metavar="DIR",
                   help="where exports go: DIR/<name>/ (default datasets/corrections)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), metavar="DIR",
                   help="where fine-tuning runs go: DIR/<export name>/ (default runs)")
    p.add_argument("--finetune-minutes", type=_minutes, default=10.0, metavar="M",
                   help="default time budget of a fine-tuning run, validation included (default 10)")
    p.add_argument("--finetune-recipe", type=Path, default=None, metavar="FILE",
                   help="a FinetuneRecipe JSON for the trainer (keys of training/finetune_recipe.py)")
    p.add_argument("--max-upload", default="50mb", help="largest upload accepted (default 50mb)")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest image accepted, in pixels (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--log-file", type=Path, default=None, metavar="FILE",
                   help="where the app logs (besides stderr), internal errors with their traceback "
                        "(default RUNS_DIR/app.log)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--no-examples", action="store_true", help="do not offer the synthetic example scenes")
    return p


def is_desktop() -> bool:
    """True where a browser can be opened for the user (a display, or macOS / Windows)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def make_examples(folder: Path, count: int = NUM_EXAMPLES) -> list[Path]:
    """A few fixed synthetic scenes (what the built-in model knows) as PNGs in ``folder``."""
    import numpy as np
    from PIL import Image

    from m2f_core.data.synthetic import generate_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"scene_{i:02d}.png"
        if not path.is_file():
            image, _, _ = generate_scene(np.random.default_rng(1000 + i), 384, 512)
            Image.fromarray(image).save(path)
        paths.append(path)
    return paths


LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def log_to_file(log_file: Path) -> Path | None:
    """Also log to ``log_file`` (appended); returns the file, or None when it cannot be written."""
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    except OSError as e:
        print(f"{_prog()}: warning: cannot log to {log_file} ({' '.join(str(e).split())}): stderr only",
              file=sys.stderr)
        return None
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    logging.getLogger("app").setLevel(logging.INFO)
    logging.getLogger("app").info("logging to %s", log_file)
    return log_file


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)  # stderr (a no-op where logging is set up already)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from m2f_core.predictor import Predictor, list_images
    from m2f_core.runtime import tune_process

    tune_process()  # the app's process: keep freed activation memory in the heap (m2f_core/runtime.py)

    try:
        images = list_images(args.images) if args.images is not None else []
        if args.images is not None and not images:
            raise ValueError(f"{args.images}: no images found")
        if args.finetune_recipe is not None and not args.finetune_recipe.is_file():
            raise ValueError(f"{args.finetune_recipe}: no such recipe file")
        dataset = spec = None
        if args.dataset is not None:
            from m2f_core.data.specs import open_dataset, parse_dataset_spec

            dataset = open_dataset(args.dataset, split=args.split)
            if len(dataset) == 0:
                raise ValueError(f"{args.dataset}: the dataset has no images")
            print(f"dataset {args.dataset}: {dataset.describe()}", file=sys.stderr)
            fmt, path = parse_dataset_spec(args.dataset)
            spec = f"{fmt}:{path.resolve()}"  # absolute: the export manifest names the dataset from anywhere
        print(f"loading model {args.weights or '(built-in)'} ...", file=sys.stderr)
        predictor = Predictor(args.weights, device=args.device, config=args.config, backend=args.backend)
    except (ValueError, OSError, RuntimeError) as e:
        hint = "" if args.weights else " (use --weights SOURCE)"
        msg = " ".join(str(e).split())
        print(f"{_prog()}: error: {msg}{hint if 'built-in' in msg else ''}", file=sys.stderr)
        return 2

    import gradio as gr  # noqa: F401  (imported late: --help and argument errors stay fast)

    from app.ui import CSS, build_app
    from app.workbench import Workbench

    log_file = log_to_file(args.log_file or args.runs_dir / "app.log")  # the app started: its log file
    work_dir = Path(tempfile.mkdtemp(prefix="m2f-workbench-"))
    examples = [] if args.no_examples else make_examples(work_dir / "examples")
    wb = Workbench(predictor, args.corrections_dir, images=images, dataset=dataset, dataset_spec=spec,
                   dataset_split=dataset.split if dataset is not None else None, examples=examples,
                   work_dir=work_dir, max_pixels=args.max_pixels,
                   weights_label=str(args.weights) if args.weights else "built-in synthetic_small",
                   weights_source=str(args.weights) if args.weights else "builtin", runs_dir=args.runs_dir,
                   finetune_minutes=args.finetune_minutes,
                   finetune_args=["--recipe", str(args.finetune_recipe.resolve())] if args.finetune_recipe else [],
                   log_path=log_file.resolve() if log_file is not None else None)
    demo = build_app(wb)
    demo.queue(default_concurrency_limit=4)
    open_browser = is_desktop() and not args.no_browser
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` cleans up like Ctrl-C
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, inbrowser=open_browser,
                    max_file_size=args.max_upload, allowed_paths=[str(args.corrections_dir.resolve()), str(work_dir)],
                    css=CSS, show_error=True, ssr_mode=False, footer_links=["gradio"])
    except OSError as e:
        print(f"{_prog()}: error: cannot serve on {args.host}:{args.port} ({' '.join(str(e).split())})",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        wb.close()  # a fine-tuning run does not outlive the app (it saves its best weights)
        shutil.rmtree(work_dir, ignore_errors=True)  # uploads and examples (exports are elsewhere)
    return 0


if __name__ == "__main__":
    sys.exit(main())
