"""One-shot checks of m2f_core on a CUDA machine: numerics, AMP, training, DDP (NCCL) and speed.

    PYTHONPATH=. python3 tools/gpu_check.py --out gpu_check.json                 # on the GPU machine
    PYTHONPATH=. python3 tools/gpu_check.py --device cpu --quick --out dry.json  # dry run, tiny sizes

Every part runs on its own: a failure is recorded (error and traceback tail) and the next part
runs. The JSON is rewritten atomically after each part, so a run killed by a time limit still
leaves the results so far. Needs torch, numpy, scipy, safetensors, pillow and (for the parts that
compare against it) transformers; m2f_core is imported from the repository, not installed.
With ``--device cpu`` every part runs on the CPU (the DDP part on gloo) so the code paths can be
tested without a GPU; with ``--device cuda`` and no CUDA the CUDA parts are skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # m2f_core and training are imported from the repository (inside the parts)
    sys.path.insert(0, str(ROOT))

R50, SWIN_T = "coco_panoptic_r50", "coco_panoptic_swin_t"
PART_NAMES = ("env", "forward_equivalence", "transformers_equivalence_cuda", "amp_forward", "train_step_amp",
              "ddp_nccl", "speed")


class Skip(Exception):
    """Raised by a part that does not apply here; its message is the reason."""


@dataclass
class Context:
    """What the parts share: the device, the sizes and the temporary weight folders."""

    device: torch.device
    quick: bool
    work_dir: Path
    deadline: float  # time.perf_counter() after which no part starts
    weights: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def size(self) -> int:
        """Input side of the numerical checks."""
        return 128 if self.quick else 384

    def require_cuda_if_asked(self) -> None:
        """Skip a part when CUDA was asked for but is not there (on --device cpu, parts run on the CPU)."""
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise Skip("no CUDA")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def prepared(self, preset: str) -> tuple[Path, Path]:
        """(transformers folder, our folder) of one seeded random model, built once per run."""
        from tools.benchmark import prepare_weights

        if preset not in self.weights:
            self.weights[preset] = prepare_weights(preset, self.work_dir, seed=0)
        return self.weights[preset]


# ------------------------------------------------------------------------------------------ helpers
def strict_fp32() -> None:
    """No TF32 anywhere: fp32 comparisons and the fp32 timings are true fp32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def max_abs(a: torch.Tensor) -> float:
    return a.detach().double().abs().max().item()


def inference_model(model):
    """Our model converted for inference in place, as the Predictor runs it (``prepare_for_inference``)."""
    from m2f_core.accelerate import prepare_for_inference

    return prepare_for_inference(model, inplace=True)


def ours_outputs(model, x: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred_logits, pred_masks) in fp32, run as the Predictor runs it (``return_aux=False``; the callers
    pass the model through ``inference_model``)."""
    from tools.benchmark import model_outputs

    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, masks = model_outputs("ours", model, x)
    return logits.float(), masks.float()


def hf_outputs(model, x: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(class_queries_logits, masks_queries_logits) of a ``transformers`` model in fp32."""
    from tools.benchmark import model_outputs

    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, masks = model_outputs("transformers", model, x)
    return logits.float(), masks.float()


def seeded_model(preset: str, seed: int = 0):
    """Our model of a preset with the official random init, seeded (on the CPU)."""
    from m2f_core.config import get_preset
    from m2f_core.model import build_model

    torch.manual_seed(seed)
    return build_model(get_preset(preset))


def load_hf(folder: Path, device: torch.device):
    from transformers import Mask2FormerForUniversalSegmentation

    return Mask2FormerForUniversalSegmentation.from_pretrained(folder).to(device).eval()


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 3)


# -------------------------------------------------------------------------------------------- parts
def part_env(ctx: Context) -> dict[str, Any]:
    """Versions, the CUDA device and whether our C kernel (a CPU kernel, built with cc) loads."""
    import numpy
    import scipy

    res: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "numpy": numpy.__version__, "scipy": scipy.__version__, "device": str(ctx.device), "quick": ctx.quick,
        "torch_threads": torch.get_num_threads(),
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
    }
    try:
        import transformers

        res["transformers"] = transformers.__version__
    except ImportError as e:
        res["transformers"] = f"missing ({e})"
    for name in ("pycocotools", "cv2", "gradio"):
        try:
            __import__(name)
            res[f"has_{name}"] = True
        except ImportError:
            res[f"has_{name}"] = False
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        res.update(cuda_device=torch.cuda.get_device_name(0), cuda_capability=f"{props.major}.{props.minor}",
                   cuda_memory_gib=round(props.total_memory / 2**30, 1), cuda_bf16=torch.cuda.is_bf16_supported(),
                   cudnn=torch.backends.cudnn.version(), nccl_available=torch.distributed.is_nccl_available())
        try:
            version = torch.cuda.nccl.version()
            res["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        except Exception as e:  # informational only
            res["nccl"] = f"unknown ({e})"
    from m2f_core.ops import native

    start = time.perf_counter()
    res["native_kernel_available"] = native.available()
    res["native_kernel_seconds"] = round(time.perf_counter() - start, 2)
    return res


def part_forward_equivalence(ctx: Context) -> dict[str, Any]:
    """Our fp32 eval forward on the device vs on the CPU (same seeded weights and input), R50 and Swin-T."""
    from tools.benchmark import random_input

    ctx.require_cuda_if_asked()
    res: dict[str, Any] = {"size": ctx.size, "compared": f"{ctx.device.type} vs cpu"}
    for preset in (R50, SWIN_T):
        model = inference_model(seeded_model(preset))
        x = random_input((ctx.size, ctx.size))
        with torch.inference_mode():
            ref_logits, ref_masks = ours_outputs(model, x)
            model.to(ctx.device)
            logits, masks = ours_outputs(model, x.to(ctx.device))
        res[preset] = {
            "pred_logits_max_abs_diff": max_abs_diff(logits, ref_logits),
            "pred_masks_max_abs_diff": max_abs_diff(masks, ref_masks),
            "pred_logits_max_abs": max_abs(ref_logits), "pred_masks_max_abs": max_abs(ref_masks),
            "mask_sign_flips": float(((masks > 0) != (ref_masks.to(masks.device) > 0)).float().mean()),
        }
        del model
        release()
    return res


def part_transformers_equivalence(ctx: Context) -> dict[str, Any]:
    """Ours vs ``transformers`` with the same seeded random weights, fp32 on the device, R50."""
    from m2f_core.checkpoint import load_model
    from tools.benchmark import random_input

    ctx.require_cuda_if_asked()
    hf_dir, ours_dir = ctx.prepared(R50)
    ours = inference_model(load_model(ours_dir, device=ctx.device))
    hf = load_hf(hf_dir, ctx.device)
    x = random_input((ctx.size, ctx.size)).to(ctx.device)
    with torch.inference_mode():
        logits, masks = ours_outputs(ours, x)
        hf_logits, hf_masks = hf_outputs(hf, x)
    res = {
        "preset": R50, "size": ctx.size, "device": str(ctx.device),
        "pred_logits_max_abs_diff": max_abs_diff(logits, hf_logits),
        "pred_masks_max_abs_diff": max_abs_diff(masks, hf_masks),
        "pred_logits_max_abs": max_abs(hf_logits), "pred_masks_max_abs": max_abs(hf_masks),
    }
    res["max_abs_diff"] = max(res["pred_logits_max_abs_diff"], res["pred_masks_max_abs_diff"])
    del ours, hf
    release()
    return res


def part_amp_forward(ctx: Context) -> dict[str, Any]:
    """bf16 autocast forward vs fp32 (R50): logit differences and thresholded-mask disagreement."""
    from tools.benchmark import random_input

    ctx.require_cuda_if_asked()
    model = inference_model(seeded_model(R50).to(ctx.device))
    x = random_input((ctx.size, ctx.size)).to(ctx.device)
    with torch.inference_mode():
        logits, masks = ours_outputs(model, x)
        bf_logits, bf_masks = ours_outputs(model, x, bf16=True)
    disagree = (masks.sigmoid() > 0.5) != (bf_masks.sigmoid() > 0.5)
    confident = masks.abs() > 1.0
    res = {
        "preset": R50, "size": ctx.size, "device": str(ctx.device),
        "pred_logits_max_abs_diff": max_abs_diff(bf_logits, logits),
        "pred_masks_max_abs_diff": max_abs_diff(bf_masks, masks),
        "pred_masks_mean_abs_diff": (bf_masks - masks).abs().mean().item(),
        "pred_logits_max_abs": max_abs(logits), "pred_masks_max_abs": max_abs(masks),
        "mask_disagree_fraction": disagree.float().mean().item(),
        "mask_disagree_fraction_where_abs_logit_gt_1": (disagree & confident).float().sum().item()
        / max(int(confident.sum()), 1),
        "top_class_agree_fraction": (logits.argmax(-1) == bf_logits.argmax(-1)).float().mean().item(),
    }
    del model
    release()
    return res


def _train_steps(model, criterion, optimizer, clip_norm: float, x, targets, steps: int, bf16: bool,
                 ctx: Context, forward: Callable | None = None) -> dict[str, Any]:
    """``steps`` optimiser steps on one batch (same point sampling each step, as the Trainer steps)."""
    from training.optim import clip_full_model

    forward = forward or model
    losses, grad_norms, times = [], [], []
    for _ in range(steps):
        torch.manual_seed(1)  # the criterion's random point sampling is the same at every step
        ctx.sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = forward(x)
        total = criterion.weighted_total(criterion(outputs, targets))
        total.backward()
        grad_norms.append(clip_full_model(model, clip_norm))  # non-finite if any gradient is
        optimizer.step()
        ctx.sync()
        times.append(time.perf_counter() - start)
        losses.append(float(total.detach()))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    all_finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else False
    return {
        "losses": [round(v, 5) for v in losses],
        "grad_norms": [round(v, 5) for v in grad_norms],
        "losses_finite": all(math.isfinite(v) for v in losses),
        "grads_finite": all_finite and all(math.isfinite(v) for v in grad_norms),
        "params_with_grad": len(grads),
        "loss_decreased": len(losses) > 1 and losses[-1] < losses[0],
        "step_ms_median": median_ms(times[1:] if len(times) > 1 else times),
        "step_ms": [round(t * 1000, 1) for t in times],
    }


def part_train_step_amp(ctx: Context) -> dict[str, Any]:
    """A few training steps (R50, batch 2, our criterion, the recipe's AdamW groups and clipping), fp32 and bf16."""
    from m2f_core.config import get_preset
    from m2f_core.criterion import build_criterion
    from tools.benchmark import train_batch
    from training.config import TrainConfig
    from training.optim import build_optimizer

    ctx.require_cuda_if_asked()
    config, train_cfg = get_preset(R50), TrainConfig()
    steps = 2 if ctx.quick else 5
    x, targets = train_batch(config, (ctx.size, ctx.size), batch=2)
    x = x.to(ctx.device)
    targets = [{k: v.to(ctx.device) for k, v in t.items()} for t in targets]
    res: dict[str, Any] = {"preset": R50, "size": ctx.size, "batch": 2, "steps": steps, "lr": train_cfg.lr,
                           "clip_norm": train_cfg.clip_norm, "device": str(ctx.device)}
    problems = []
    for mode in ("fp32", "bf16"):
        model = seeded_model(R50).to(ctx.device).train()
        criterion = build_criterion(config).to(ctx.device)
        optimizer = build_optimizer(model, train_cfg)
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        out = _train_steps(model, criterion, optimizer, train_cfg.clip_norm, x, targets, steps, mode == "bf16", ctx)
        if ctx.cuda:
            out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 2)
        res[mode] = out
        problems += [f"{mode}: {key} is false" for key in ("losses_finite", "grads_finite", "loss_decreased")
                     if not out[key]]
        del model, criterion, optimizer
        release()
    if problems:
        res["status"] = "failed"
        res["error"] = "; ".join(problems)
    return res


def part_ddp(ctx: Context) -> dict[str, Any]:
    """A 1-process DDP run (nccl on CUDA, gloo on CPU) in a subprocess: 2 training steps."""
    ctx.require_cuda_if_asked()
    out = ctx.work_dir / "ddp_result.json"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
               LOCAL_RANK="0", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ddp-worker", "--device", ctx.device.type,
           "--out", str(out)] + (["--quick"] if ctx.quick else [])
    timeout = max(30.0, min(150.0, ctx.deadline - time.perf_counter() + 60))  # a normal run takes < 40 s
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    res: dict[str, Any] = {"returncode": proc.returncode, "stderr_tail": proc.stderr[-2000:]}
    if out.exists():
        res.update(json.loads(out.read_text()))
    if proc.returncode != 0 or not out.exists():
        res["status"] = "failed"
        res.setdefault("error", f"worker exited with {proc.returncode}")
    elif not (res.get("losses_finite") and res.get("grads_finite")):
        res["status"] = "failed"
        res["error"] = "non-finite loss or gradient under DDP"
    return res


def ddp_worker(args: argparse.Namespace) -> int:
    """The DDP subprocess: joins a 1-process group from the env, wraps the model as the Trainer does."""
    import torch.distributed as dist
    from torch import nn

    from m2f_core.config import get_preset
    from m2f_core.criterion import build_criterion
    from tools.benchmark import train_batch
    from training.config import TrainConfig
    from training.distributed import all_reduce_mean, cleanup
    from training.optim import build_optimizer

    strict_fp32()
    cuda = args.device == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    result: dict[str, Any] = {"backend": backend, "device": str(device), "world_size": int(os.environ["WORLD_SIZE"])}
    start = time.perf_counter()
    # training.distributed.init_distributed is a no-op for WORLD_SIZE=1, so the group is joined here
    dist.init_process_group(backend=backend)
    result["init_seconds"] = round(time.perf_counter() - start, 2)
    try:
        ctx = Context(device=device, quick=args.quick, work_dir=Path(args.out).parent, deadline=math.inf)
        config, train_cfg = get_preset(R50), TrainConfig()
        model = seeded_model(R50).to(device).train()
        # as training/loop.py Trainer: DDP(model, device_ids=[cuda index] or None), find_unused_parameters left False
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        result["find_unused_parameters"] = False
        criterion = build_criterion(config).to(device)
        optimizer = build_optimizer(model, train_cfg)
        x, targets = train_batch(config, (ctx.size, ctx.size), batch=2)
        x = x.to(device)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        bf16 = cuda  # the GPU recipe's AMP; plain fp32 on the CPU dry run
        steps = _train_steps(model, criterion, optimizer, train_cfg.clip_norm, x, targets, 2, bf16, ctx,
                             forward=ddp_model)
        result.update(steps, amp="bf16" if bf16 else "none")
        result["all_reduced_last_loss"] = all_reduce_mean({"loss": steps["losses"][-1]}, device)["loss"]
        result["status"] = "ok"
    except Exception as e:
        result.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
    finally:
        cleanup()
        Path(args.out).write_text(json.dumps(result, default=str))
    return 0 if result["status"] == "ok" else 1


def _time_forward(fn: Callable[[], object], ctx: Context, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        ctx.sync()
        start = time.perf_counter()
        fn()
        ctx.sync()
        times.append(time.perf_counter() - start)
    return times


def part_speed(ctx: Context) -> dict[str, Any]:
    """Forward latency (batch 1, median of 10 after 3 warm-ups), ours vs ``transformers``, fp32 and bf16.

    On --quick one untimed-warm-up run per case: it only checks that every combination runs."""
    from m2f_core.checkpoint import load_model
    from tools.benchmark import random_input

    ctx.require_cuda_if_asked()
    sizes = [(128, 128)] if ctx.quick else [(512, 512), (800, 1088)]
    warmup, repeats = (0, 1) if ctx.quick else (3, 10)
    budget_end = min(ctx.deadline, time.perf_counter() + (600 if ctx.quick else 150))
    runners = {"ours": ours_outputs, "transformers": hf_outputs}
    rows, errors, skipped = [], [], []
    for preset in (R50, SWIN_T):
        if time.perf_counter() > budget_end:
            skipped.append(preset)
            continue
        hf_dir, ours_dir = ctx.prepared(preset)
        models = {"ours": inference_model(load_model(ours_dir, device=ctx.device)),
                  "transformers": load_hf(hf_dir, ctx.device)}
        for size in sizes:
            x = random_input(size).to(ctx.device)
            for precision in ("fp32", "bf16"):
                if time.perf_counter() > budget_end:
                    skipped.append(f"{preset} {size[0]}x{size[1]} {precision}")
                    continue
                row: dict[str, Any] = {"preset": preset, "size": f"{size[0]}x{size[1]}", "precision": precision}
                for impl, model in models.items():
                    def fn(run=runners[impl], model=model, x=x, bf16=precision == "bf16"):
                        return run(model, x, bf16=bf16)

                    try:
                        with torch.inference_mode():
                            row[f"{impl}_ms"] = median_ms(_time_forward(fn, ctx, warmup, repeats))
                    except Exception as e:  # one failing implementation / precision does not stop the rest
                        row[f"{impl}_error"] = f"{type(e).__name__}: {e}"[:500]
                        errors.append(f"{preset} {row['size']} {precision} {impl}: {type(e).__name__}")
                if "ours_ms" in row and "transformers_ms" in row:
                    row["speedup_transformers_over_ours"] = round(row["transformers_ms"] / row["ours_ms"], 3)
                rows.append(row)
                print(f"  speed {json.dumps(row)}", flush=True)
        del models
        release()
    res: dict[str, Any] = {"device": str(ctx.device), "warmup": warmup, "repeats": repeats, "rows": rows}
    if skipped:
        res["skipped_for_time"] = skipped
    if errors:
        res["errors"] = errors
        if not any("ours_ms" in r for r in rows):
            res["status"] = "failed"
    return res


PARTS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "env": part_env,
    "forward_equivalence": part_forward_equivalence,
    "transformers_equivalence_cuda": part_transformers_equivalence,
    "amp_forward": part_amp_forward,
    "train_step_amp": part_train_step_amp,
    "ddp_nccl": part_ddp,
    "speed": part_speed,
}


# --------------------------------------------------------------------------------------------- main
def write_json(path: Path, data: dict) -> None:
    """Atomic: a temporary file in the same folder, then renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def run_part(name: str, ctx: Context, report: dict, out: Path) -> None:
    print(f"[{name}] start", flush=True)
    start = time.perf_counter()
    if start > ctx.deadline:
        result: dict[str, Any] = {"status": "skipped", "reason": "time budget spent"}
    else:
        try:
            result = PARTS[name](ctx)
            result.setdefault("status", "ok")
        except Skip as e:
            result = {"status": "skipped", "reason": str(e)}
        except Exception as e:  # a failing part is recorded; the next part still runs
            tb = traceback.format_exc()
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000], "traceback": tb[-3000:]}
            print(tb[-3000:], flush=True)
        finally:
            release()
    result["seconds"] = round(time.perf_counter() - start, 2)
    report["parts"][name] = result
    report["total_seconds"] = round(time.perf_counter() - report["_start"], 2)
    write_json(out, {k: v for k, v in report.items() if not k.startswith("_")})
    brief = {k: v for k, v in result.items() if k not in ("traceback", "stderr_tail", "rows")}
    reason = f" ({result['reason']})" if result["status"] == "skipped" else ""
    print(f"[{name}] {result['status']}{reason} in {result['seconds']} s: {json.dumps(brief, default=str)[:1500]}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON report (rewritten after each part)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a dry run of every part")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (for the CPU dry run)")
    p.add_argument("--parts", nargs="+", choices=PART_NAMES, default=list(PART_NAMES), help="run only these")
    p.add_argument("--budget-s", type=float, default=420.0, help="no part starts after this many seconds")
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    strict_fp32()
    start = time.perf_counter()
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    report: dict[str, Any] = {"_start": start, "argv": sys.argv, "parts": {}}
    print(f"gpu_check: device {device}, quick={args.quick}, torch {torch.__version__}, "
          f"cuda available {torch.cuda.is_available()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="m2f-gpu-check-") as tmp:
        ctx = Context(device=device, quick=args.quick, work_dir=Path(tmp), deadline=start + args.budget_s)
        for name in args.parts:
            run_part(name, ctx, report, args.out)
    statuses = {name: r["status"] for name, r in report["parts"].items()}
    print(f"gpu_check done in {time.perf_counter() - start:.1f} s: {json.dumps(statuses)}; report: {args.out}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
