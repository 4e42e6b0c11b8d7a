"""The training loop: deterministic data order, AMP, accumulation, clipping, DDP, checkpoints, eval.

Data order is a pure function of (seed, iteration): iteration ``i`` consumes positions
``[i * B, (i + 1) * B)`` of an endless stream of per-epoch permutations, and each example's
augmentation is seeded by (seed, epoch, index). Together with the saved optimiser, scheduler,
scaler and RNG states, a resumed run continues exactly where the interrupted one stopped, and a
run on N processes sees the same global batch as one process.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from m2f_core.config import Mask2FormerConfig
from m2f_core.model import Mask2Former, build_model

from .config import TrainConfig
from .distributed import DistInfo, all_reduce_mean, barrier
from .optim import build_optimizer, build_scheduler, clip_full_model
from .state import last_checkpoint, load_checkpoint, save_checkpoint


def chunk_seed(seed: int, iteration: int, chunk: int) -> int:
    """A well-mixed 63-bit seed for one chunk of one iteration."""
    return int(np.random.SeedSequence([seed, iteration, chunk]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class IterationBatches:
    """Which examples (epoch, index) each process loads at each iteration and accumulation step."""

    def __init__(self, dataset_len: int, batch_size: int, seed: int, world_size: int = 1, rank: int = 0,
                 grad_accum: int = 1):
        per_step = world_size * grad_accum
        if batch_size % per_step:
            raise ValueError(f"batch size {batch_size} is not divisible by processes x accumulation = {per_step}")
        if dataset_len == 0:
            raise ValueError("the training set is empty")
        self.n, self.batch, self.seed = dataset_len, batch_size, seed
        self.world, self.rank, self.accum = world_size, rank, grad_accum
        self.micro = batch_size // per_step
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perm_cache[epoch]

    def global_batch(self, iteration: int) -> list[tuple[int, int]]:
        """(epoch, dataset index) of the B examples of an iteration, in order."""
        out = []
        for pos in range(iteration * self.batch, (iteration + 1) * self.batch):
            epoch, k = divmod(pos, self.n)
            out.append((epoch, int(self._perm(epoch)[k])))
        return out

    def local_steps(self, iteration: int) -> list[list[tuple[int, int]]]:
        """This process's micro-batches: global batch = concat over accumulation steps of each rank's share."""
        batch = self.global_batch(iteration)
        steps = []
        for a in range(self.accum):
            chunk = batch[a * self.world * self.micro:(a + 1) * self.world * self.micro]
            steps.append(chunk[self.rank * self.micro:(self.rank + 1) * self.micro])
        return steps


class _StepSampler:
    """Yields the micro-batch keys from ``start_iter`` to the end (a DataLoader batch_sampler)."""

    def __init__(self, batches: IterationBatches, start_iter: int, max_iter: int):
        self.batches, self.start, self.max_iter = batches, start_iter, max_iter

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.max_iter):
            yield from self.batches.local_steps(it)

    def __len__(self) -> int:
        return (self.max_iter - self.start) * self.batches.accum


def normalize_batch(images: torch.Tensor, image_sizes: list[tuple[int, int]], cfg: Mask2FormerConfig) -> torch.Tensor:
    """uint8 (B, 3, H, W) padded with 0 -> normalised float with 0 in the padding, as the official ImageList."""
    x = images.float()
    mean = torch.tensor(cfg.pixel_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.pixel_std, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    for i, (h, w) in enumerate(image_sizes):
        x[i, :, h:, :] = 0
        x[i, :, :, w:] = 0
    return x


def transfer_weights(model: Mask2Former, source: Mask2Former) -> list[str]:
    """Copy ``source`` weights into ``model``; class-head rows are matched by class name.

    Returns the names of the model's classes that got no trained row (re-initialised).
    """
    own = model.state_dict()
    src = source.state_dict()
    for key, value in src.items():
        if key in own and own[key].shape == value.shape and not key.startswith("sem_seg_head.predictor.class_embed"):
            own[key] = value
    new_names, old_names = model.config.class_names, source.config.class_names
    old_index = {n: i for i, n in enumerate(old_names)}
    fresh = []
    w_key, b_key = "sem_seg_head.predictor.class_embed.weight", "sem_seg_head.predictor.class_embed.bias"
    if own[w_key].shape[1] == src[w_key].shape[1]:
        for i, name in enumerate(new_names):
            if name in old_index:
                own[w_key][i] = src[w_key][old_index[name]]
                own[b_key][i] = src[b_key][old_index[name]]
            else:
                fresh.append(name)
        own[w_key][-1] = src[w_key][-1]  # the no-object row
        own[b_key][-1] = src[b_key][-1]
    else:
        fresh = list(new_names)
    model.load_state_dict(own)
    return fresh


# (model, normalised images (B,3,H,W), the model's outputs on them, the collated batch) -> a scalar loss
ExtraLoss = Callable[[nn.Module, torch.Tensor, dict, dict], torch.Tensor]


class Trainer:
    """Owns the model, optimiser, data and bookkeeping of one run directory."""

    def __init__(self, model_cfg: Mask2FormerConfig, train_cfg: TrainConfig, train_set, run_dir: Path,
                 device: str = "cpu", dist_info: DistInfo | None = None, val_set=None,
                 init_model: Mask2Former | None = None, progress: bool = True,
                 extra_loss: ExtraLoss | None = None, trainable: Callable[[str], bool] | None = None):
        """``trainable(name)``: which parameters train (default all); the others are frozen before the
        optimiser and DDP see the model (DDP expects a gradient for every parameter that requires one)."""
        from m2f_core.criterion import build_criterion

        self.model_cfg, self.cfg = model_cfg, train_cfg
        self.run_dir = Path(run_dir)
        self.dist = dist_info or DistInfo()
        self.device = torch.device(device if not device.startswith("cuda") or not self.dist.enabled
                                   else f"cuda:{self.dist.local_rank}")
        self.progress = progress and self.dist.is_main
        torch.manual_seed(train_cfg.seed)
        self.model = build_model(model_cfg)
        self.fresh_classes: list[str] = []
        if init_model is not None:
            self.fresh_classes = transfer_weights(self.model, init_model)
        if trainable is not None:
            for name, p in self.model.named_parameters():
                if not trainable(name):
                    p.requires_grad_(False)
        self.model.to(self.device).train()
        self.criterion = build_criterion(model_cfg).to(self.device)
        self.optimizer = build_optimizer(self.model, train_cfg)
        self.scheduler = build_scheduler(self.optimizer, train_cfg)
        use_scaler = train_cfg.amp == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.train_set, self.val_set = train_set, val_set
        self.batches = IterationBatches(len(train_set), train_cfg.batch_size, train_cfg.seed,
                                        self.dist.world_size, self.dist.rank, train_cfg.grad_accum)
        self.start_iter = 0
        self.best: dict[str, Any] = {}
        # an extra loss term (the few-shot fine-tune's pull towards its start, its distillation on replay)
        self.extra_loss = extra_loss

    # ------------------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Continue from the newest complete checkpoint of the run directory, if any."""
        folder = last_checkpoint(self.run_dir)
        if folder is None:
            return False
        state = load_checkpoint(folder, self.model, self.optimizer, self.scheduler, self.scaler)
        self.start_iter = int(state["iteration"])
        self.best = dict(state.get("extra", {}).get("best", {}))
        return True

    def _autocast(self):
        if self.cfg.amp == "none":
            return nullcontext()
        dtype = torch.float16 if self.cfg.amp == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def loader(self) -> DataLoader:
        """The micro-batches from ``start_iter`` to ``max_iter``, in the run's deterministic order."""
        from m2f_core.data.train_dataset import collate

        sampler = _StepSampler(self.batches, self.start_iter, self.cfg.max_iter)
        return DataLoader(
            self.train_set, batch_sampler=sampler, num_workers=self.cfg.num_workers,
            collate_fn=lambda b: collate(b, size_divisibility=self.model_cfg.size_divisibility),
            persistent_workers=False, pin_memory=self.device.type == "cuda",
        )

    def step(self, micro_batches: list[dict]) -> dict[str, float]:
        """One optimiser step over the accumulation micro-batches; returns the logged scalars."""
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        it = self.scheduler.last_epoch
        for k, batch in enumerate(micro_batches):
            # The random point sampling (and drop path) of a chunk of the global batch depends only on
            # (seed, iteration, chunk): N processes draw what one process with accumulation draws.
            torch.manual_seed(chunk_seed(self.cfg.seed, it, k * self.dist.world_size + self.dist.rank))
            images = normalize_batch(batch["images"].to(self.device, non_blocking=True), batch["image_sizes"],
                                     self.model_cfg)
            targets = [{"labels": t["labels"].to(self.device), "masks": t["masks"].to(self.device)}
                       for t in batch["targets"]]
            sync = nullcontext()
            if self.dist.enabled and k < len(micro_batches) - 1:
                sync = self.ddp_model.no_sync()
            with sync:
                with self._autocast():
                    outputs = self.ddp_model(images)
                losses = self.criterion(outputs, targets)
                total = self.criterion.weighted_total(losses)
                if self.extra_loss is not None:
                    losses["loss_reg"] = self.extra_loss(self.model, images, outputs, batch)
                    total = total + losses["loss_reg"]
                total = total / len(micro_batches)
                if self.scaler is not None:
                    self.scaler.scale(total).backward()
                else:
                    total.backward()
            logs["loss"] = logs.get("loss", 0.0) + float(total.detach())
            for name in ("loss_ce", "loss_mask", "loss_dice", "loss_reg"):
                if name in losses:
                    logs[name] = logs.get(name, 0.0) + float(losses[name].detach()) / len(micro_batches)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        logs["grad_norm"] = clip_full_model(self.model, self.cfg.clip_norm)
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(f"loss is {logs['loss']} at iteration {self.scheduler.last_epoch}")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        logs["lr"] = self.optimizer.param_groups[-1]["lr"]
        self.scheduler.step()
        return logs

    # ------------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        from tqdm import tqdm

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            self.model_cfg.to_json(self.run_dir / "model_config.json")
            self.cfg.to_json(self.run_dir / "train_config.json")
        writer = self._tensorboard()
        metrics_file = (self.run_dir / "metrics.jsonl").open("a") if self.dist.is_main else None
        bar = tqdm(total=self.cfg.max_iter, initial=self.start_iter, desc="train", unit="it",
                   disable=not self.progress, dynamic_ncols=True)
        it = self.start_iter
        last_logs: dict[str, float] = {}
        try:
            loader_iter = iter(self.loader())
            t_data = time.perf_counter()
            while it < self.cfg.max_iter:
                micro = [next(loader_iter) for _ in range(self.cfg.grad_accum)]
                data_time = time.perf_counter() - t_data
                t0 = time.perf_counter()
                logs = self.step(micro)
                logs["time"] = time.perf_counter() - t0
                logs["data_time"] = data_time
                it += 1
                logs = all_reduce_mean(logs, self.device) if self.dist.enabled else logs
                last_logs = logs
                if self.dist.is_main and (it % self.cfg.log_period == 0 or it == self.cfg.max_iter or it == 1):
                    record = {"iter": it, **{k: round(v, 6) for k, v in logs.items()}}
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    if writer is not None:
                        for k, v in logs.items():
                            writer.add_scalar(f"train/{k}", v, it)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{logs['lr']:.2e}")
                bar.update(1)
                if it % self.cfg.checkpoint_period == 0 or it == self.cfg.max_iter:
                    self.save(it)
                if self.val_set is not None and (it % self.cfg.eval_period == 0 or it == self.cfg.max_iter):
                    self.evaluate(it, writer, metrics_file)
                t_data = time.perf_counter()
        finally:
            bar.close()
            if metrics_file is not None:
                metrics_file.close()
            if writer is not None:
                writer.close()
        return {"iteration": it, "last": last_logs, "best": self.best}

    def save(self, it: int) -> None:
        if self.dist.is_main:
            save_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler, self.scaler, it, self.cfg,
                            extra={"best": self.best}, keep=self.cfg.keep_checkpoints)
        barrier()

    def evaluate(self, it: int, writer=None, metrics_file=None) -> dict[str, Any] | None:
        """Metrics on the validation set (main process); the best checkpoint is kept as ``best``."""
        result = None
        if self.dist.is_main:
            from m2f_core.metrics.model_eval import evaluate_model
            from m2f_core.predictor import Predictor

            self.model.eval()
            try:
                predictor = Predictor(self.model, device=str(self.device))
                result = evaluate_model(predictor, self.val_set, limit=self.cfg.eval_limit, progress=False)
            finally:
                self.model.train()
            key, value = primary_metric(result, self.cfg.task)
            record = {"iter": it, "eval": {k: _headline(v) for k, v in result.items() if isinstance(v, dict)}}
            if metrics_file is not None:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            if writer is not None:
                for group, values in record["eval"].items():
                    for k, v in values.items():
                        if v is not None:
                            writer.add_scalar(f"val/{group}/{k}", v, it)
            if value is not None and (not self.best or value > self.best["value"]):
                self.best = {"metric": key, "value": value, "iter": it}
                save_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler, self.scaler, it, self.cfg,
                                extra={"best": self.best}, name="best")
        barrier()
        return result

    def _tensorboard(self):
        if not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency; keep training if a minimal install lacks it
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))


def _headline(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) or v is None}


def primary_metric(result: dict, task: str) -> tuple[str, float | None]:
    """PQ for panoptic, AP for instance, mIoU for semantic (falling back to what was measured)."""
    order = {"panoptic": [("panoptic", "PQ"), ("instance", "AP"), ("semantic", "mIoU")],
             "instance": [("instance", "AP"), ("panoptic", "PQ"), ("semantic", "mIoU")],
             "semantic": [("semantic", "mIoU"), ("panoptic", "PQ"), ("instance", "AP")]}[task]
    for group, key in order:
        if group in result and result[group].get(key) is not None:
            return f"{group}/{key}", float(result[group][key])
    return "none", None
