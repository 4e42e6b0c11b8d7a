"""Throughput of data-parallel predict / ``evaluate model``: 1 process vs N processes on the same images.

    python tools/parallel_benchmark.py                          # 32 synthetic 480x640 scenes, 1 vs 2 processes
    python tools/parallel_benchmark.py --procs 1 2 4 --num 64 --weights W --device cuda

Each configuration runs the real command line in fresh processes (``torchrun --standalone`` for the
parallel ones; the plain ``python -m`` one for the baseline), each process with ``--threads`` CPU
threads (default: the cores divided by the processes), so the machine is used alike. The wall time
includes start-up (imports, loading the weights), as a user sees it. Prints a table and writes the
rows, the command and the machine to ``--out`` (default ``docs/data_parallel_results.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _images(args: argparse.Namespace, tmp: Path) -> Path:
    """The annotation JSON of the benchmark images (synthetic scenes unless ``--dataset`` is given)."""
    if args.dataset:
        return Path(args.dataset)
    from m2f_core.data.synthetic.dataset import generate_dataset

    h, w = (int(v) for v in args.size.split("x"))
    return generate_dataset(tmp / "scenes", args.num, seed=0, split="val", size=(h, w))


def _command(program: str, procs: int, ann: Path, out: Path, args: argparse.Namespace) -> list[str]:
    launcher = [sys.executable] if procs == 0 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      "--nproc-per-node", str(procs)]
    extra = ["--weights", args.weights] if args.weights else []
    extra += ["--device", args.device] if args.device else []
    if program == "predict":
        return launcher + ["-m", "m2f_core.predict", "--out", str(out), "--no-overlays", *extra,
                           str(ann.parent / "images")]
    return launcher + ["-m", "m2f_core.evaluate", "model", "--format", "coco_panoptic", "--ann", str(ann), *extra]


def _run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/parallel_benchmark.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare (default 1 2)")
    p.add_argument("--num", type=int, default=32, help="synthetic images (default 32)")
    p.add_argument("--size", default="480x640", help="synthetic image size HxW (default 480x640)")
    p.add_argument("--dataset", default=None, help="a COCO panoptic JSON with images/ beside it instead")
    p.add_argument("--weights", default=None, help="weights (default: the built-in model)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: what the programs choose)")
    p.add_argument("--threads", type=int, default=None, help="threads per process (default: cores / processes)")
    p.add_argument("--programs", nargs="+", choices=("predict", "evaluate"), default=["predict", "evaluate"])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "data_parallel_results.json")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ann = _images(args, Path(tmp))
        n = len(json.loads(ann.read_text())["annotations"])
        for program in args.programs:
            base = None
            for procs in args.procs:
                threads = args.threads or max(1, cores // procs)
                # one process: the plain command (no torchrun), as a user runs it today
                cmd = _command(program, 0 if procs == 1 else procs, ann, Path(tmp) / f"out-{program}-{procs}", args)
                seconds = _run(cmd, threads)
                base = base or seconds
                rows.append({"program": program, "processes": procs, "threads_each": threads, "images": n,
                             "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 3),
                             "speedup": round(base / seconds, 2)})
                r = rows[-1]
                print(f"{program:9s} {procs:3d} proc x {threads:2d} thr  {r['seconds']:8.2f} s  "
                      f"{r['images_per_s']:7.3f} img/s  x{r['speedup']:.2f}", flush=True)
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "machine": {"cpus": cores, "platform": platform.platform(), "python": platform.python_version(),
                          "torch": __import__("torch").__version__},
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
