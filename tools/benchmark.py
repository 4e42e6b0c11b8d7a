"""Side-by-side speed benchmark against Hugging Face ``transformers`` (same architecture, same weights).

    python tools/benchmark.py --compare transformers --preset coco_panoptic_r50 --sizes 384 512 800x1088

Each measurement runs in a fresh process (so peak RSS is that implementation's alone), ours and the
peer interleaved round by round (so drifting machine load hits both alike), each after a warm-up.
The weights are one seeded random ``transformers`` model saved with ``save_pretrained``; ours loads
the same tensors converted to our format. Reported: median / min latency, peak RSS, per-stage
times, the largest absolute difference of the outputs and the speed ratio (peer / ours).

Tasks: ``forward`` (the network), ``postprocess`` (all three task results from the raw outputs, at
the input size), ``switch`` (one task view from a cached prediction; ours only, the peer has no such
cache) and ``train`` (forward + loss + backward + AdamW step on a batch of 2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # m2f_core from this checkout, also when it is not installed
    sys.path.insert(0, str(REPO))

from m2f_core.cli import parse_size  # noqa: E402
from m2f_core.config import Mask2FormerConfig, get_preset  # noqa: E402

TASKS = ("forward", "postprocess", "switch", "train")


# ------------------------------------------------------------------------------------------ weights
def hf_config_for(config: Mask2FormerConfig):
    """The ``transformers`` config of the same architecture as one of our configs."""
    from transformers import Mask2FormerConfig as HFConfig
    from transformers import ResNetConfig, SwinConfig

    bb = config.backbone
    stages = ["stage1", "stage2", "stage3", "stage4"]
    if bb.type == "resnet":
        depths = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[bb.depth]
        backbone = ResNetConfig(depths=depths, hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                                out_features=stages)
    else:
        backbone = SwinConfig(embed_dim=bb.embed_dim, depths=list(bb.depths), num_heads=list(bb.num_heads),
                              window_size=bb.window_size, image_size=bb.pretrain_img_size, out_features=stages)
    id2label = dict(enumerate(config.class_names))
    return HFConfig(backbone_config=backbone, num_labels=config.num_classes, id2label=id2label,
                    label2id={v: k for k, v in id2label.items()}, num_queries=config.num_queries,
                    hidden_dim=config.hidden_dim, feature_size=config.conv_dim, mask_feature_size=config.mask_dim,
                    encoder_layers=config.enc_layers, decoder_layers=config.num_decoder_layers + 1,
                    num_attention_heads=config.nheads, dim_feedforward=config.dim_feedforward,
                    encoder_feedforward_dim=config.enc_dim_feedforward)


def prepare_weights(preset: str, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A seeded random ``transformers`` model (its own init) and the same weights in our format."""
    from transformers import Mask2FormerForUniversalSegmentation

    from m2f_core.checkpoint import load_model, save_model

    hf_dir, ours_dir = folder / f"{preset}-hf", folder / f"{preset}-ours"
    if not (hf_dir / "config.json").exists():
        torch.manual_seed(seed)
        Mask2FormerForUniversalSegmentation(hf_config_for(get_preset(preset))).save_pretrained(hf_dir)
    if not (ours_dir / "config.json").exists():
        save_model(load_model(hf_dir), ours_dir)
    return hf_dir, ours_dir


# ------------------------------------------------------------------------------------------- worker
def _rss_mb() -> float:
    """Current resident set size (MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_input(size: tuple[int, int], batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1234))


class _StageTimer:
    """Wall time of named stages: (object, method name) pairs, wrapped on the instance."""

    def __init__(self, stages: dict[str, tuple[object, str]]):
        self.times: dict[str, list[float]] = {name: [] for name in stages}
        for name, (obj, method) in stages.items():
            setattr(obj, method, self._timed(name, getattr(obj, method)))

    def _timed(self, name: str, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.times[name].append(time.perf_counter() - start)
            return out
        return wrapper


def _time(fn, repeats: int, warmup: int = 1, first: list[float] | None = None) -> list[float]:
    """``repeats`` timed calls after ``warmup`` untimed ones; the first call's time goes to ``first``."""
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        if i == 0 and first is not None:
            first.append(time.perf_counter() - start)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _load(impl: str, weights: Path):
    """The model of an implementation and its stages as (object, method) pairs to time."""
    if impl == "ours-onnxruntime":
        from m2f_core.onnx_backend import load_onnx_model

        return load_onnx_model(weights), {}
    if impl == "ours-compile":
        from m2f_core.checkpoint import load_model
        from m2f_core.runtime import compile_for_inference

        return compile_for_inference(load_model(weights).eval()), {}  # stage timers would break the graph
    if impl.startswith("ours"):
        from m2f_core.accelerate import prepare_for_inference
        from m2f_core.checkpoint import load_model

        model = prepare_for_inference(load_model(weights), inplace=True)  # as the Predictor runs it
        stages = {"backbone": (model.backbone, "forward_features"),
                  "pixel_decoder": (model.sem_seg_head.pixel_decoder, "forward_features"),
                  "transformer_decoder": (model.sem_seg_head.predictor, "forward")}
    else:
        from transformers import Mask2FormerForUniversalSegmentation

        model = Mask2FormerForUniversalSegmentation.from_pretrained(weights)
        stages = {"backbone": (model.model.pixel_level_module.encoder, "forward"),
                  "pixel_decoder": (model.model.pixel_level_module.decoder, "forward"),
                  "transformer_decoder": (model.model.transformer_module, "forward")}
    return model.eval(), stages


def model_outputs(impl: str, model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if impl == "ours-bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, return_aux=False)
        return out["pred_logits"].float(), out["pred_masks"].float()
    if impl.startswith("ours"):
        out = model(x, return_aux=False)  # as the Predictor runs it
        return out["pred_logits"], out["pred_masks"]
    out = model(pixel_values=x)
    return out.class_queries_logits, out.masks_queries_logits


def _worker_forward(impl: str, weights: Path, size, repeats: int, out_path: Path) -> dict:
    model, stages = _load(impl, weights)
    timer = _StageTimer(stages)
    x = random_input(size)
    first: list[float] = []
    with torch.inference_mode():
        times = _time(lambda: model_outputs(impl, model, x), repeats, first=first)  # compile: compiles in the first
        logits, masks = model_outputs(impl, model, x)
    torch.save({"pred_logits": logits[0].clone(), "pred_masks": masks[0].clone()}, out_path.with_suffix(".pt"))
    stage_times = {k: statistics.median(v[1:]) for k, v in timer.times.items() if len(v) > 1}
    return {"times": times, "stages": stage_times, "first_call_s": first[0]}


def trained_like_outputs(num_queries: int, num_classes: int, size: tuple[int, int], seed: int = 0,
                         things: int = 15, stuff: int = 5) -> dict[str, torch.Tensor]:
    """Raw outputs shaped like a trained model's, for timing post-processing.

    A random-weight network gives near-uniform class probabilities (about 1/(K+1) everywhere),
    which no trained model produces and which would time a case that never occurs. Here ``stuff``
    queries tile the image (Voronoi cells with soft borders), ``things`` queries have elliptic
    masks on top (cut out of what they occlude, as a trained model's masks are), each with a
    confident class (p about 0.8-0.99); the other queries predict
    no-object with diffuse negative masks. Logits at 1/4 of ``size``.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = size[0] // 4, size[1] // 4
    logits = torch.randn(num_queries, num_classes + 1, generator=g)
    logits[:, -1] += 8.0  # no-object
    things = min(things, num_queries - stuff)
    active = torch.randperm(num_queries, generator=g)[:things + stuff]
    if num_classes >= len(active):
        classes = torch.randperm(num_classes, generator=g)[:len(active)]
    else:  # few classes (e.g. the built-in model's 11): repeat them
        classes = torch.randint(0, num_classes, (len(active),), generator=g)
    logits[active, -1] -= 8.0
    logits[active, classes] += torch.empty(len(active)).uniform_(7.0, 10.0, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32) / h, torch.arange(w, dtype=torch.float32) / w,
                            indexing="ij")
    masks = torch.randn(num_queries, h, w, generator=g) * 0.5 - 4.0
    centres = torch.rand(stuff, 2, generator=g)
    dist = torch.stack([(yy - cy) ** 2 + (xx - cx) ** 2 for cy, cx in centres.tolist()]).sqrt()  # (S, h, w)
    for i, q in enumerate(active[:stuff].tolist()):
        others = torch.cat([dist[:i], dist[i + 1:]]).min(0).values if stuff > 1 else torch.ones_like(dist[0])
        masks[q] = 8.0 * ((others - dist[i]) / 0.05).clamp(-1, 1)
    for i, q in enumerate(active[stuff:].tolist()):  # later things occlude earlier things and the stuff
        cy, cx, ry, rx = (float(v) for v in torch.rand(4, generator=g))
        d = ((yy - cy) / (0.05 + 0.2 * ry)) ** 2 + ((xx - cx) / (0.05 + 0.2 * rx)) ** 2
        masks[q] = 8.0 * (1.0 - d).clamp(-1, 1)
        below = active[:stuff + i]
        masks[below] = torch.minimum(masks[below], -masks[q])
    return {"pred_logits": logits, "pred_masks": masks}


def _worker_postprocess(impl: str, weights: Path, size, repeats: int, out_path: Path, raw: Path) -> dict:
    from m2f_core.config import Mask2FormerConfig as OurConfig

    raw_outputs = torch.load(raw, weights_only=True)
    logits, masks = raw_outputs["pred_logits"], raw_outputs["pred_masks"]
    if impl == "ours":
        import numpy as np

        from m2f_core.prediction import Prediction

        config = OurConfig.from_json(weights / "config.json")
        image = np.zeros((*size, 3), dtype=np.uint8)
        stage_times: dict[str, list[float]] = {"panoptic": [], "instance": [], "semantic": []}

        def run():
            pred = Prediction(image, logits, masks, size, size, config).prepare()
            for task in stage_times:
                start = time.perf_counter()
                getattr(pred, task)()
                stage_times[task].append(time.perf_counter() - start)
    else:
        from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil
        from transformers.models.mask2former.modeling_mask2former import Mask2FormerForUniversalSegmentationOutput

        processor = Mask2FormerImageProcessorPil()
        outputs = Mask2FormerForUniversalSegmentationOutput(class_queries_logits=logits[None],
                                                             masks_queries_logits=masks[None])
        stage_times = {"panoptic": [], "instance": [], "semantic": []}

        def run():
            for task in stage_times:
                start = time.perf_counter()
                getattr(processor, f"post_process_{task}_segmentation")(outputs, target_sizes=[size])
                stage_times[task].append(time.perf_counter() - start)

    times = _time(run, repeats)
    return {"times": times, "stages": {k: statistics.median(v[1:]) for k, v in stage_times.items()}}


def _worker_switch(weights: Path, size, repeats: int, raw: Path) -> dict:
    """Server time of each task view on a prepared (cached) prediction."""
    import numpy as np

    from m2f_core.config import Mask2FormerConfig as OurConfig
    from m2f_core.prediction import Prediction

    raw_outputs = torch.load(raw, weights_only=True)
    config = OurConfig.from_json(weights / "config.json")
    image = np.zeros((*size, 3), dtype=np.uint8)
    views = {"panoptic": [], "instance": [], "semantic": [], "uncertainty": []}

    def run():
        pred = Prediction(image, raw_outputs["pred_logits"], raw_outputs["pred_masks"], size, size, config).prepare()
        for view in views:
            start = time.perf_counter()
            getattr(pred, view)()
            views[view].append(time.perf_counter() - start)

    _time(run, repeats)
    worst = [max(v[i] for v in views.values()) for i in range(1, repeats + 1)]
    return {"times": worst, "stages": {k: statistics.median(v[1:]) for k, v in views.items()}}


def train_batch(config: Mask2FormerConfig, size, batch: int = 2):
    """A fixed batch: random images, 5 random-rectangle masks per image with random classes."""
    g = torch.Generator().manual_seed(99)
    h, w = size
    targets = []
    for _ in range(batch):
        masks = torch.zeros(5, h, w)
        for m in masks:
            y0, x0 = int(torch.randint(0, h // 2, (1,), generator=g)), int(torch.randint(0, w // 2, (1,), generator=g))
            m[y0:y0 + h // 3, x0:x0 + w // 3] = 1
        targets.append({"labels": torch.randint(0, config.num_classes, (5,), generator=g), "masks": masks})
    return random_input(size, batch), targets


def _worker_train(impl: str, weights: Path, size, repeats: int) -> dict:
    model, _ = _load(impl, weights)
    model.train()
    if impl == "ours":
        from m2f_core.checkpoint import load_model
        from m2f_core.criterion import build_criterion

        config = load_model(weights).config
        criterion = build_criterion(config)
        x, targets = train_batch(config, size)

        def loss_fn():
            return criterion.weighted_total(criterion(model(x), targets))
    else:
        from m2f_core.config import Mask2FormerConfig as OurConfig

        config = OurConfig.from_json(weights.parent / weights.name.replace("-hf", "-ours") / "config.json")
        x, targets = train_batch(config, size)
        mask_labels = [t["masks"] for t in targets]
        class_labels = [t["labels"] for t in targets]

        def loss_fn():
            return model(pixel_values=x, mask_labels=mask_labels, class_labels=class_labels).loss

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()

    return {"times": _time(step, repeats), "stages": {}}


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.worker.startswith("ours"):
        from m2f_core.runtime import tune_process

        tune_process()  # as our CLIs, the app and the trainer run, for every task (the peer's process is left stock)
    baseline = _rss_mb()
    if args.task == "forward":
        result = _worker_forward(args.worker, args.weights, args.size, args.repeats, args.out)
    elif args.task == "postprocess":
        result = _worker_postprocess(args.worker, args.weights, args.size, args.repeats, args.out, args.raw)
    elif args.task == "switch":
        result = _worker_switch(args.weights, args.size, args.repeats, args.raw)
    else:
        result = _worker_train(args.worker, args.weights, args.size, args.repeats)
    result.update(peak_rss_mb=_peak_rss_mb(), baseline_rss_mb=baseline)
    args.out.write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------- parent
def _spawn(impl: str, task: str, weights: Path, size, threads: int, repeats: int, out: Path,
           raw: Path | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--task", task, "--weights", str(weights),
           "--sizes", f"{size[0]}x{size[1]}", "--threads", str(threads), "--repeats", str(repeats), "--out", str(out)]
    if raw is not None:
        cmd += ["--raw", str(raw)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise RuntimeError(f"{impl} {task} at {size}: {tail}")
    return json.loads(out.read_text())


def _max_abs_diff(a: Path, b: Path) -> float:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return max((x[k].double() - y[k].double()).abs().max().item() for k in ("pred_logits", "pred_masks"))


def benchmark(presets: list[str], sizes: list[tuple[int, int]], tasks: list[str], compare: str | None,
              threads: int, repeats: int, rounds: int, work_dir: Path, modes: tuple[str, ...] = (),
              progress: bool = True) -> list[dict]:
    """Rows of results: one per (preset, size, task, implementation).

    ``modes`` adds our optional modes to the forward task (``bf16``: autocast; ``onnxruntime``: the
    exported network; ``compile``: ``torch.compile`` with inductor freezing, whose compilation is
    the row's ``first_call_s``), each with its largest difference from our fp32 outputs.
    """
    from tqdm import tqdm

    from m2f_core.checkpoint import load_model

    peers = [compare] if compare else []
    rows = []
    for preset in presets:
        hf_dir, ours_dir = prepare_weights(preset, work_dir)
        config = load_model(ours_dir).config
        weights = {"ours": ours_dir, "transformers": hf_dir}
        weights.update({f"ours-{mode}": ours_dir for mode in modes})
        for size in sizes:
            tag = f"{preset}-{size[0]}x{size[1]}"
            raw = work_dir / f"{tag}-trained-like.pt"  # post-processing input: see trained_like_outputs
            torch.save(trained_like_outputs(config.num_queries, config.num_classes, size), raw)
            for task in tasks:
                if task == "forward":
                    impls = ["ours"] + [f"ours-{mode}" for mode in modes] + peers
                elif task == "switch":
                    impls = ["ours"]  # the peer has no cached views
                else:
                    impls = ["ours"] + peers
                results: dict[str, list[dict]] = {impl: [] for impl in impls}
                outputs: dict[str, Path] = {}
                bar = tqdm(total=rounds * len(impls), desc=f"{tag} {task}", disable=not progress)
                for r in range(rounds):
                    for impl in (impls if r % 2 == 0 else impls[::-1]):  # alternate who goes first
                        out = work_dir / f"{tag}-{task}-{impl}-{r}.json"
                        results[impl].append(_spawn(impl, task, weights[impl], size, threads, repeats, out, raw))
                        if task == "forward":
                            outputs.setdefault(impl, out.with_suffix(".pt"))
                        bar.update(1)
                bar.close()
                for impl, runs in results.items():
                    times = [t for res in runs for t in res["times"]]
                    row = {"preset": preset, "size": f"{size[0]}x{size[1]}", "task": task, "impl": impl,
                           "median_s": statistics.median(times), "min_s": min(times), "n": len(times),
                           "peak_rss_mb": max(res["peak_rss_mb"] for res in runs),
                           "baseline_rss_mb": min(res["baseline_rss_mb"] for res in runs),
                           "stages": {k: statistics.median(res["stages"][k] for res in runs)
                                      for k in runs[0]["stages"]}}
                    if task == "forward":
                        row["first_call_s"] = max(res["first_call_s"] for res in runs)
                    if task == "forward" and impl != "ours":
                        row["max_abs_diff"] = _max_abs_diff(outputs["ours"], outputs[impl])
                    rows.append(row)
    _add_ratios(rows, compare)
    return rows


def _add_ratios(rows: list[dict], compare: str | None) -> None:
    """speed-up = the peer's median / ours, for each of our implementations."""
    if not compare:
        return
    peers = {(r["preset"], r["size"], r["task"]): r for r in rows if r["impl"] == compare}
    for r in rows:
        peer = peers.get((r["preset"], r["size"], r["task"]))
        if r["impl"] != compare and peer is not None:
            r["speedup"] = peer["median_s"] / r["median_s"]


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the rows."""
    header = ["preset", "size", "task", "impl", "median ms", "min ms", "first call ms", "peak RSS MB", "max abs diff",
              "speed-up", "stages (ms)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        stages = ", ".join(f"{k} {v * 1000:.0f}" for k, v in r["stages"].items())
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""
        speedup = f"{r['speedup']:.2f}x" if "speedup" in r else ""
        first = f"{r['first_call_s'] * 1000:.0f}" if "first_call_s" in r else ""
        lines.append(f"| {r['preset']} | {r['size']} | {r['task']} | {r['impl']} | {r['median_s'] * 1000:.0f} | "
                     f"{r['min_s'] * 1000:.0f} | {first} | {r['peak_rss_mb']:.0f} | {diff} | {speedup} | {stages} |")
    return "\n".join(lines)


def machine_description() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/benchmark.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", choices=["transformers"], default=None, help="run the peer too and report ratios")
    p.add_argument("--preset", nargs="+", default=["coco_panoptic_r50"], help="model presets (random weights)")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(512, 512)], help="input sizes: N or HxW")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=["forward", "postprocess", "switch"])
    p.add_argument("--modes", nargs="*", choices=["bf16", "onnxruntime", "compile"], default=[],
                   help="also time our faster modes (forward task) and their difference from fp32")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per process")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per process, after one warm-up")
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per implementation, interleaved")
    p.add_argument("--work-dir", type=Path, default=None, help="weights and raw outputs (default: a temp folder)")
    p.add_argument("--json", type=Path, default=None, help="write the rows and the machine here")
    p.add_argument("--no-progress", action="store_true")
    # worker mode (internal)
    p.add_argument("--worker", choices=["ours", "ours-bf16", "ours-onnxruntime", "ours-compile", "transformers"],
                   help=argparse.SUPPRESS)
    p.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    p.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.size = args.sizes[0]
        run_worker(args)
        return 0
    unknown = [name for name in args.preset if name not in _presets()]
    if unknown:
        p.error(f"unknown preset {unknown[0]!r}")
    try:
        import transformers  # noqa: F401  (the weights are built with it, with or without --compare)
    except ImportError:
        print("error: the benchmark builds its weights with `transformers` (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="m2f-bench-") as tmp:
        work_dir = args.work_dir or Path(tmp)
        work_dir.mkdir(parents=True, exist_ok=True)
        try:
            rows = benchmark(args.preset, args.sizes, args.tasks, args.compare, args.threads, args.repeats,
                             args.rounds, work_dir, modes=tuple(args.modes), progress=not args.no_progress)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    machine = machine_description()
    print(f"\n{machine}, {args.threads} threads\n")
    print(format_table(rows))
    if args.json:
        from m2f_core.atomic import atomic_write_json

        atomic_write_json(args.json, {"machine": machine, "threads": args.threads, "rows": rows})
    return 0


def _presets() -> list[str]:
    from m2f_core.config import list_presets

    return list_presets()


if __name__ == "__main__":
    sys.exit(main())
