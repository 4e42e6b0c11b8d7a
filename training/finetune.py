"""Few-shot fine-tuning: a few tens of corrected images in, a model that is better on new images out.

    python -m training.finetune --train FORMAT:PATH --out RUN [--init WEIGHTS] [--val FORMAT:PATH]
        [--max-minutes M] [--max-iter N] [--recipe FILE] [--device D]

Made for what the app and the FiftyOne bridge export (a ``corrections`` folder), and for any other
dataset spec. What it does, and why:

- **Validation on images it never trains on.** Without ``--val``, a fifth of the corrected images
  (at least one; only images a person edited or reviewed, never the model's own untouched output,
  which would measure nothing) are held out. The held-out images are listed in ``RUN/result.json``.
- **Before and after on the same images.** The starting weights are evaluated first; the run keeps
  the weights with the best validation score, the starting weights included, and stops early when
  the score has not improved for ``patience`` evaluations, at ``--max-iter`` or at ``--max-minutes``.
- **Replay, so that what the model knew is not forgotten.** Each batch mixes the corrections with
  data the starting model already handles: the synthetic generator's scenes for the built-in model
  (its training data), else the untouched images of the export (the model's own predictions), else
  ``--replay FORMAT:PATH``. See ``docs/finetuning.md`` for the recipes compared and their numbers.
- **A run you can follow and stop.** ``RUN/progress.json`` (rewritten atomically after every step:
  phase, iteration / total, seconds left, the validation curve) and ``RUN/metrics.jsonl``; SIGTERM or
  Ctrl-C stops after the current step, saves a checkpoint and still writes the recommended weights.

Several GPUs: ``torchrun --nproc_per_node=N -m training.finetune ...`` trains with DDP, each process on
its GPU and its share of every batch (the app's runner, ``app.finetune``, launches it so when more than
one GPU is visible). Process 0 alone validates and writes the run folder; it decides when to stop
(cancel, early stop, time budget) and the others follow at the same step.

Outputs: ``RUN/model/`` (our format: the recommended weights), ``RUN/result.json`` and, as the last
line on stdout, one JSON object ``{"before": {...}, "after": {...}, "iterations", "seconds", ...}``.
Exit status: 0 when finished, 130 when cancelled (the outputs are written either way), 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from m2f_core.cli import program_name
from m2f_core.metrics.model_eval import per_class_pq, primary_value

from .finetune_data import MixedTrainingSet, holdout_split, image_status, read_manifest, replay_source, retain_source
from .finetune_losses import ReplayDistillation, anchor_loss
from .finetune_recipe import FinetuneRecipe
from .finetune_validation import Validator

PROGRESS_NAME, RESULT_NAME, MODEL_NAME = "progress.json", "result.json", "model"
# the targets a dataset format can give (formats without panoptic annotations)
_TASKS = {"coco_instances": "instance", "ade20k": "semantic", "cityscapes": "semantic", "semantic": "semantic"}
SAVE_SECONDS = 15.0  # kept from the time budget for the checkpoint, the weights and the process start


# ------------------------------------------------------------------------------------------------
# The run


class Cancel:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step (a second signal kills)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Cancel:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling (the caller stops us otherwise)
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Progress:
    """``RUN/progress.json``: what the app and the bridge show while the run goes on."""

    def __init__(self, run_dir: Path, total: int, started: float, write: bool = True) -> None:
        self.path = run_dir / PROGRESS_NAME
        self.write = write  # False on the processes other than 0 of a DDP run
        self.state: dict[str, Any] = {"phase": "starting", "iteration": 0, "total": total, "elapsed_s": 0.0,
                                      "eta_s": None, "val": [], "best": None, "loss": None, "pid": None}
        self.started = started

    def update(self, **changes: Any) -> None:
        from m2f_core.atomic import atomic_write_json

        self.state.update(changes)
        self.state["elapsed_s"] = round(time.monotonic() - self.started, 1)
        if self.write:
            atomic_write_json(self.path, self.state)


def _agreed(reason: str | None, dist_info) -> str | None:
    """Process 0's stop reason (None: go on), the same on every process of a DDP run."""
    if not dist_info.enabled:
        return reason
    import torch.distributed as tdist

    box = [reason]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def run_finetune(args: argparse.Namespace, recipe: FinetuneRecipe, cancel: Cancel | None = None) -> dict[str, Any]:
    """The whole run; returns the result written to ``RUN/result.json``. ``cancel.requested`` (set by
    SIGTERM / SIGINT under ``main``) stops it after the current step, with every output written."""
    import torch

    from m2f_core.atomic import atomic_write_json
    from m2f_core.checkpoint import load_model, save_model
    from m2f_core.data.records import Subset
    from m2f_core.data.specs import open_dataset, parse_dataset_spec
    from m2f_core.data.train_dataset import TrainingDataset
    from m2f_core.runtime import tune_process

    from .config import TrainConfig
    from .distributed import cleanup, init_distributed
    from .loop import Trainer
    from .state import save_checkpoint
    from .train import classes_from_dataset

    t_start = time.monotonic()
    tune_process()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dist_info = init_distributed(device)  # under torchrun: DDP, process 0 validates and writes
    is_main = dist_info.is_main
    run_dir: Path = args.out
    if (run_dir / MODEL_NAME).exists() or (run_dir / RESULT_NAME).exists():
        raise ValueError(f"{run_dir} holds a finished run already: choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(run_dir, 0, t_start, write=is_main)
    progress.update(phase="loading", pid=os.getpid())

    fmt, train_path = parse_dataset_spec(args.train)
    train_data = open_dataset(args.train, split=args.train_split, purpose="train")
    if is_main:
        print(f"train {args.train}: {train_data.describe()}", file=sys.stderr)
    if len(train_data) == 0:
        raise ValueError(f"{args.train}: no images")
    manifest = read_manifest(train_path) if fmt == "corrections" else None
    status = image_status(train_data, manifest)
    train_idx, held_idx, untouched = holdout_split(status, recipe.holdout_fraction, recipe.min_images_for_holdout,
                                                   recipe.seed)
    if args.val:
        val_set = open_dataset(args.val, split=args.val_split, purpose="eval")
        if is_main:
            print(f"val {args.val}: {val_set.describe()}", file=sys.stderr)
        train_idx = sorted(train_idx + held_idx)
        held_idx = []
    else:
        val_set = Subset(train_data, held_idx, name="held-out") if held_idx else None
    if not train_idx:
        raise ValueError(f"{args.train}: no edited or reviewed image to train on ({len(untouched)} untouched)")

    init_model = load_model(args.init)
    model_cfg = classes_from_dataset(init_model.config, train_data)
    replay_data, replay_what = replay_source(recipe, args.replay, model_cfg, train_data, untouched, run_dir)
    retain_set, retain_what = retain_source(recipe, replay_what, train_data, untouched, run_dir)

    max_iter = args.max_iter or recipe.iterations(len(train_idx))
    eval_period = recipe.eval_period or max(10, max_iter // 10)
    train_cfg = TrainConfig(max_iter=max_iter, batch_size=recipe.batch_size, lr=recipe.lr,
                            backbone_multiplier=recipe.backbone_multiplier, schedule=recipe.schedule,
                            warmup_iters=recipe.warmup_iters, warmup_factor=0.01, clip_norm=recipe.clip_norm,
                            augmentation=recipe.augmentation, task=_TASKS.get(fmt, "panoptic"), num_workers=0,
                            seed=recipe.seed,
                            checkpoint_period=max_iter, eval_period=eval_period, log_period=1, keep_checkpoints=1)
    primary = TrainingDataset(Subset(train_data, train_idx, name="train"), model_cfg, task=train_cfg.task,
                              augmentation=recipe.augmentation, seed=recipe.seed)
    replay = TrainingDataset(replay_data, model_cfg, task=train_cfg.task, augmentation=recipe.augmentation,
                             seed=recipe.seed, class_map="by_name") if replay_data is not None else None
    mixed = MixedTrainingSet(primary, replay, recipe.replay_fraction, recipe.seed)

    def trainable(name: str) -> bool:
        if recipe.backbone_multiplier == 0 and name.startswith("backbone."):  # a frozen backbone
            return False
        # surgical fine-tuning: only these parts of the model train
        return not recipe.train_only or name.startswith(tuple(recipe.train_only))

    trainer = Trainer(model_cfg, train_cfg, mixed, run_dir, device=device, dist_info=dist_info, init_model=init_model,
                      progress=False, trainable=trainable)
    terms = []  # extra loss terms against forgetting
    if recipe.anchor_weight > 0:
        terms.append(anchor_loss(trainer.model, recipe.anchor_weight))
    if recipe.distill_weight > 0 and replay is not None:
        terms.append(ReplayDistillation(trainer.model, recipe.distill_weight))
    if terms:
        trainer.extra_loss = lambda *a: sum(t(*a) for t in terms)
    del init_model

    if is_main:
        model_cfg.to_json(run_dir / "model_config.json")
        train_cfg.to_json(run_dir / "train_config.json")
        (run_dir / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=2) + "\n")
    else:  # the other processes of a DDP run only train
        val_set = retain_set = None
    say = _Say(args.no_progress or not is_main)
    say(f"fine-tune: {len(train_idx)} training image(s), {len(held_idx) if val_set is not None and not args.val else 0}"
        f" held out{', validation ' + args.val if args.val else ''}, replay {replay_what}; up to {max_iter} "
        f"iterations / {args.max_minutes:g} min on {device}")
    if val_set is None:
        say("note: fewer than "
            f"{recipe.min_images_for_holdout} corrected images: nothing held out, so no validation and no "
            "before / after numbers; the final weights are written")

    progress.state["total"] = max_iter
    progress.update(phase="validating", iteration=0)
    metrics_file = (run_dir / "metrics.jsonl").open("a") if is_main else open(os.devnull, "w")
    validator = Validator(trainer.model, val_set, retain_set, device, recipe, metrics_file)
    before_result = validator.validate(0)
    before, retained_before = validator.best["metrics"], validator.best["retained"]
    if before:
        say(f"before: {_fmt(before)}" + (f"; on {retain_what}: {_fmt(retained_before)}" if retained_before else ""))
    deadline = t_start + 60.0 * args.max_minutes - SAVE_SECONDS  # the outputs are written inside the budget
    stopped, it = "max_iter", 0
    step_time = None
    progress.update(phase="training", val=validator.curve, best=validator.best_view())
    cancel = cancel or Cancel()
    if _agreed("cancelled" if cancel.requested else None, dist_info):
        stopped = "cancelled"
    else:
        batches = iter(trainer.loader())
        while it < max_iter:
            t0 = time.monotonic()
            logs = trainer.step([next(batches) for _ in range(train_cfg.grad_accum)])
            it += 1
            dt = time.monotonic() - t0
            step_time = dt if step_time is None else 0.9 * step_time + 0.1 * dt
            metrics_file.write(json.dumps({"iter": it, **{k: round(float(v), 6) for k, v in logs.items()},
                                           "time": round(dt, 4)}) + "\n")
            metrics_file.flush()
            stop = "cancelled" if cancel.requested else None
            if stop is None and val_set is not None and (it % eval_period == 0 or it == max_iter):
                progress.update(phase="validating", iteration=it)
                validator.validate(it)
                m = validator.curve[-1]
                say(f"iter {it}/{max_iter}: {_fmt(m)}" + ("  (best)" if validator.best["iteration"] == it else ""))
                if validator.bad_evals >= recipe.patience:
                    stop = "early_stop"
            remaining = max_iter - it
            eval_time = validator.seconds or 0.0
            eta = remaining * step_time + eval_time * (remaining // eval_period + 1 if val_set is not None else 0)
            now = time.monotonic()
            # stop when the next step and the last validation would not fit in the time budget
            if stop is None and now + step_time + eval_time > deadline and it < max_iter:
                stop = "time_limit"
            stop = _agreed(stop, dist_info)  # process 0 decides for all
            if stop is not None:
                stopped = stop
                break
            progress.update(phase="training", iteration=it, eta_s=round(min(eta, max(0.0, deadline - now)), 1),
                            loss=round(float(logs["loss"]), 5), val=validator.curve, best=validator.best_view())
        # the weights moved on since the last validation when the time ran out: validate them too
        if val_set is not None and stopped == "time_limit" and validator.curve[-1]["iter"] != it:
            progress.update(phase="validating", iteration=it)
            validator.validate(it)
    metrics_file.close()
    if dist_info.enabled:
        cleanup()  # every process stopped at the same step; process 0 writes the outputs
        if not is_main:
            return {"stopped": stopped}
    best = validator.best
    curve = validator.curve

    progress.update(phase="saving", iteration=it)
    save_checkpoint(run_dir, trainer.model, trainer.optimizer, trainer.scheduler, None, it, train_cfg,
                    extra={"best": {"iter": best["iteration"], "value": best["value"]}}, keep=1)
    if val_set is not None:
        trainer.model.load_state_dict(validator.best_state)
    save_model(trainer.model, run_dir / MODEL_NAME, config=model_cfg)

    after = best["metrics"] if val_set is not None else {}
    seconds = round(time.monotonic() - t_start, 1)
    improved = bool(before and after and best["iteration"] > 0)
    kept_before, kept_after = primary_value(retained_before or {}), primary_value(best["retained"] or {})
    forgot = round(kept_before - kept_after, 3) if kept_before is not None and kept_after is not None else None
    if not before:
        recommendation = "not validated"
    elif not improved:
        recommendation = "keep the current model"
    elif forgot is not None and forgot > recipe.retain_warning:
        recommendation = "keep the current model (it forgot what it knew)"
    else:
        recommendation = "adopt"
    per_class = {}
    if before_result is not None:
        pc_before, pc_after = per_class_pq(before_result), per_class_pq(best.get("result"))
        per_class = {name: {"before": pc_before.get(name), "after": pc_after.get(name)}
                     for name in sorted(set(pc_before) | set(pc_after))}
    result = {
        "before": before, "after": after, "iterations": it, "best_iteration": best["iteration"],
        "seconds": seconds, "stopped": stopped, "improved": improved,
        "recommendation": recommendation, "forgetting": forgot,
        "model": str(run_dir / MODEL_NAME), "init": str(args.init or "builtin"),
        "train_images": len(train_idx), "held_out": [str(Path(train_data[i].file_name).name) for i in held_idx],
        "validation": args.val or ("held-out corrections" if held_idx else None), "replay": replay_what,
        "per_class_PQ": per_class, "curve": curve,
        "retained": {"on": retain_what, "before": retained_before, "after": best["retained"]} if retain_set is not None
        else None,
    }
    atomic_write_json(run_dir / RESULT_NAME, result)
    progress.update(phase="cancelled" if stopped == "cancelled" else "done", iteration=it, eta_s=0.0, val=curve,
                    best=validator.best_view())
    return result


def _fmt(m: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in m.items() if isinstance(v, (int, float)) and k != "iter")


class _Say:
    """Human-readable lines on stderr (stdout's last line is the JSON result)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("python -m training.finetune"), description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--train", required=True, help="the corrections as FORMAT:PATH (e.g. corrections:DIR)")
    p.add_argument("--out", required=True, type=Path, help="run folder (model/, result.json, progress.json, ...)")
    p.add_argument("--init", default=None, help="starting weights, any load_model source (default: the built-in model)")
    p.add_argument("--val", default=None, help="validation data as FORMAT:PATH (default: hold out a fifth of --train)")
    p.add_argument("--train-split", default=None,
                   help="split inside the --train root (default: its training split: train2017, training, train)")
    p.add_argument("--val-split", default=None,
                   help="split inside the --val root (default: its validation split: val2017, validation, val)")
    p.add_argument("--max-minutes", type=float, default=10.0, help="time budget, validation included (default 10)")
    p.add_argument("--max-iter", type=int, default=None, help="iterations (default: from the number of images)")
    p.add_argument("--replay", default=None, help="auto, none, synthetic, untouched or FORMAT:PATH (default: recipe)")
    p.add_argument("--recipe", type=Path, default=None,
                   help="FinetuneRecipe JSON (keys of training/finetune_recipe.py)")
    p.add_argument("--seed", type=int, default=None, help="seed of the split, data order and augmentation")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # stop requests are honoured from the start: a cancel while loading still ends with every output written
    with Cancel() as cancel:
        from m2f_core.data.errors import DatasetError
        from m2f_core.errors import CheckpointError
        from m2f_core.images import ImageError

        try:
            if args.max_minutes <= 0 or not math.isfinite(args.max_minutes):
                raise ValueError(f"--max-minutes must be > 0, got {args.max_minutes}")
            if args.max_iter is not None and args.max_iter < 1:
                raise ValueError(f"--max-iter must be >= 1, got {args.max_iter}")
            recipe = FinetuneRecipe.from_json(args.recipe) if args.recipe else FinetuneRecipe()
            if args.seed is not None:
                recipe = dataclasses.replace(recipe, seed=args.seed)
            result = run_finetune(args, recipe, cancel)
        except (ValueError, CheckpointError, DatasetError, ImageError, FileNotFoundError) as e:
            print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            return 2
    if "model" in result:  # process 0 (the others of a DDP run return only how it stopped)
        line = {k: result[k] for k in ("before", "after", "iterations", "seconds", "best_iteration", "stopped",
                                       "recommendation", "model")}
        print(json.dumps(line), flush=True)
    return 130 if result["stopped"] == "cancelled" else 0


if __name__ == "__main__":
    sys.exit(main())
