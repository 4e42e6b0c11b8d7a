"""Train or fine-tune Mask2Former.

    python -m training.train --config PRESET_OR_FILE --train FORMAT:PATH [--val FORMAT:PATH] --out RUN_DIR
        [--init SOURCE] [--max-iter N] [--batch-size N] [--lr X] [--amp] [--device D] [--resume]
    torchrun --nproc-per-node N -m training.train ...      (DDP: gloo on CPU, nccl on GPU)

FORMAT is coco_panoptic, coco_instances, ade20k, cityscapes or corrections (a folder exported by
the app). Defaults follow the official recipe of the dataset (step schedule + large-scale jitter
for COCO, poly schedule + resize/crop for ADE20K and Cityscapes). Fine-tuning from ``--init``
onto a different class set re-initialises the class head and keeps the rows of classes whose
name is unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from m2f_core.cli import positive_int, program_name
from m2f_core.config import Mask2FormerConfig, resolve_config

from .config import TrainConfig, recipe_for


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("python -m training.train"), description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config", default=None, help="model preset name or config JSON (default: that of --init)")
    p.add_argument("--train", required=True, help="training data as FORMAT:PATH")
    p.add_argument("--val", default=None, help="validation data as FORMAT:PATH (evaluated every --eval-period)")
    p.add_argument("--train-split", default=None,
                   help="split inside the --train root (default: its training split: train2017, training, train)")
    p.add_argument("--val-split", default=None,
                   help="split inside the --val root (default: its validation split: val2017, validation, val)")
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, metrics.jsonl, tensorboard/)")
    p.add_argument("--init", default=None, help="start from these weights (any load_model source)")
    p.add_argument("--max-iter", type=int, default=None, help="optimiser steps (default: the preset's schedule)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step over all processes (default 16)")
    p.add_argument("--lr", type=float, default=None, help="base learning rate (default 1e-4)")
    p.add_argument("--amp", nargs="?", const="fp16", default=None, choices=["fp16", "bf16"],
                   help="mixed precision: fp16 on CUDA (the default with --amp), bf16 on CUDA or CPU")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--grad-accum", type=int, default=None, help="accumulation steps per optimiser step")
    p.add_argument("--num-workers", type=int, default=None, help="data loading worker processes (default 2)")
    p.add_argument("--seed", type=int, default=None, help="seed of data order, augmentation and init (default 0)")
    p.add_argument("--task", choices=["panoptic", "instance", "semantic"], default=None,
                   help="targets to train on (default: from the data format)")
    p.add_argument("--augmentation", choices=["lsj", "resize_crop", "none"], default=None,
                   help="lsj (COCO), resize_crop (ADE20K/Cityscapes), none")
    p.add_argument("--schedule", choices=["step", "poly"], default=None)
    p.add_argument("--checkpoint-period", type=int, default=None, help="save every N iterations (default 5000)")
    p.add_argument("--eval-period", type=int, default=None, help="evaluate every N iterations (default 5000)")
    p.add_argument("--eval-limit", type=positive_int, default=None, help="evaluate on the first N validation images")
    p.add_argument("--log-period", type=int, default=None, help="write metrics.jsonl every N iterations")
    p.add_argument("--train-config", type=Path, default=None, help="TrainConfig JSON (CLI options override it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _train_config(args: argparse.Namespace, fmt: str) -> TrainConfig:
    data = TrainConfig.from_json(args.train_config).to_dict() if args.train_config else TrainConfig().to_dict()
    if not args.train_config:
        data.update(recipe_for(fmt))
    overrides = {"max_iter": args.max_iter, "batch_size": args.batch_size, "lr": args.lr, "amp": args.amp,
                 "grad_accum": args.grad_accum, "num_workers": args.num_workers, "seed": args.seed,
                 "task": args.task, "augmentation": args.augmentation, "schedule": args.schedule,
                 "checkpoint_period": args.checkpoint_period, "eval_period": args.eval_period,
                 "eval_limit": args.eval_limit, "log_period": args.log_period}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data)


def classes_from_dataset(cfg: Mask2FormerConfig, dataset) -> Mask2FormerConfig:
    """The model's class list becomes the dataset's when they differ (fine-tuning to new classes)."""
    names = [c["name"] for c in dataset.categories]
    if names == cfg.class_names:
        return cfg
    return cfg.replace(
        class_names=names,
        is_thing=[bool(c.get("isthing", True)) for c in dataset.categories],
        dataset_ids=[int(c["id"]) for c in dataset.categories],
        colors=[list(c["color"]) if c.get("color") else [128, 128, 128] for c in dataset.categories],
        dataset="custom",
    )


def run(args: argparse.Namespace) -> dict:
    import torch

    from m2f_core.checkpoint import load_model
    from m2f_core.data.specs import open_dataset, parse_dataset_spec
    from m2f_core.data.train_dataset import TrainingDataset

    from .distributed import cleanup, init_distributed
    from .loop import Trainer
    from .state import last_checkpoint

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dist_info = init_distributed(device)
    try:
        fmt, _ = parse_dataset_spec(args.train)
        train_cfg = _train_config(args, fmt)
        train_data = open_dataset(args.train, split=args.train_split, purpose="train")
        val_data = open_dataset(args.val, split=args.val_split, purpose="eval") if args.val else None
        if dist_info.is_main:
            print(f"train {args.train}: {train_data.describe()}", file=sys.stderr)
            if val_data is not None:
                print(f"val {args.val}: {val_data.describe()}", file=sys.stderr)
        has_ckpt = last_checkpoint(args.out) is not None
        if has_ckpt and not args.resume:
            raise ValueError(f"{args.out} already has checkpoints: pass --resume to continue, or another --out")
        init_model = load_model(args.init) if args.init else None
        if args.resume and (args.out / "model_config.json").exists():
            model_cfg = Mask2FormerConfig.from_json(args.out / "model_config.json")
        elif args.config:
            model_cfg = classes_from_dataset(resolve_config(args.config), train_data)
        elif init_model is not None:
            model_cfg = classes_from_dataset(init_model.config, train_data)
        else:
            raise ValueError("give --config (a preset or config JSON) or --init (weights to start from)")
        train_set = TrainingDataset(train_data, model_cfg, task=train_cfg.task,
                                    augmentation=train_cfg.augmentation, seed=train_cfg.seed)
        trainer = Trainer(model_cfg, train_cfg, train_set, args.out, device=device, dist_info=dist_info,
                          val_set=val_data, init_model=init_model if not has_ckpt else None,
                          progress=not args.no_progress)
        if args.resume and trainer.resume() and dist_info.is_main:
            print(f"resumed at iteration {trainer.start_iter}", file=sys.stderr)
        if trainer.fresh_classes and dist_info.is_main:
            print(f"class head re-initialised for: {', '.join(trainer.fresh_classes[:10])}"
                  + (" ..." if len(trainer.fresh_classes) > 10 else ""), file=sys.stderr)
        return trainer.train()
    finally:
        cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from m2f_core.data.errors import DatasetError
    from m2f_core.errors import CheckpointError
    from m2f_core.images import ImageError
    from m2f_core.runtime import tune_process

    tune_process()  # every step allocates the same activations again: keep them in the heap
    try:
        result = run(args)
    except (ValueError, CheckpointError, DatasetError, ImageError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: resume with --resume", file=sys.stderr)
        return 130
    print(json.dumps({"iteration": result["iteration"], "best": result["best"],
                      "last": {k: round(v, 6) for k, v in result["last"].items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
