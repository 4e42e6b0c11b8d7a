"""Does correcting the images the model is most uncertain about help more than correcting random ones?

    PYTHONPATH=. .venv/bin/python tools/selection_benchmark.py --work /tmp/selbench \
        --out docs/selection_results.json --seeds 0,1,2
    PYTHONPATH=. .venv/bin/python tools/selection_benchmark.py --table docs/selection_results.json

Scenario (the synthetic domain shift of ``tools/finetune_benchmark.py``; the built-in model, trained on the
original domain, is poor on the shifted one), for each seed:

1. a pool of shifted scenes (a new pool per seed) imported into FiftyOne, the model run on it
   (``predict``: the per-pixel uncertainty of every sample);
2. two picks of N samples from the pool: the N most uncertain (``selection.rank_samples``, what the
   ``rank`` command and the App's operator do) and N at random;
3. each pick exported with its ground truth standing in for the user's corrections (``export_view``)
   and fine-tuned on with the app's runner and recipe (``app.finetune.finetune_command``: the command the
   App's and the bridge's Fine-tune start; the runner holds a fifth of the pick out to select its weights);
4. the starting model and both runs' recommended weights (what the user adopts: the starting weights
   when the run found nothing better) and last weights evaluated on the same test scenes, shifted scenes
   of another seed that no pool holds.

The result (per seed, with the mean and the paired difference) goes to ``--out``; ``--table`` prints
the markdown table of ``docs/finetuning.md``. The budget options (``--max-iter``, ``--retain-images``,
``--replay-images``) shrink the default recipe so that the whole measurement fits in about 20 minutes of a
2-core CPU; both picks of a seed run under the same budget and recipe seed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POOL_SEED, TEST_SEED = 600, 909  # pool of seed s: POOL_SEED + s; the test scenes: TEST_SEED (no pool has it)
ARMS = ("uncertainty", "random")


def private_database(work: Path) -> subprocess.Popen:
    """A MongoDB of our own (fiftyone-db's ``mongod``, its data under ``work``) that FiftyOne is pointed at
    before it is imported: FiftyOne processes otherwise share the first database service started on the
    machine, whatever their database folder, so another program's clean-up could delete our datasets."""
    import importlib.util
    import socket

    mongod = Path(importlib.util.find_spec("fiftyone").submodule_search_locations[0]) / "db" / "bin" / "mongod"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = work / "mongodb"
    db.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(mongod), "--dbpath", str(db), "--port", str(port), "--bind_ip", "127.0.0.1",
                             "--nounixsocket", "--logpath", str(db / "mongod.log")], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{mongod} did not start (see {db / 'mongod.log'})") from None
            time.sleep(0.2)
    os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)  # a port inherited from a parent FiftyOne process
    os.environ.update({"FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{port}", "FIFTYONE_DO_NOT_TRACK": "true",
                       "FIFTYONE_DATABASE_VALIDATION": "false", "FIFTYONE_SHOW_PROGRESS_BARS": "false"})
    return proc


def scenes(root: Path, n: int, seed: int, split: str, size: int) -> Path:
    """``n`` shifted scenes of ``size`` px (reused when already written)."""
    from m2f_core.data.synthetic import generate_dataset

    if not (root / split / "panoptic.json").is_file():
        generate_dataset(root, n, seed=seed, split=split, domain="shifted", size=(size, size), workers=1)
    return root / split


def evaluate(weights: str | None, data: Path) -> dict:
    """PQ (th / st) of ``weights`` (None: the built-in model) on a scenes folder."""
    from m2f_core import Predictor
    from m2f_core.data.specs import open_dataset
    from m2f_core.metrics.model_eval import evaluate_model, headline

    return headline(evaluate_model(Predictor(weights, device="cpu"), open_dataset(f"corrections:{data}"),
                                   progress=False))


def prepare(pool: Path, name: str, n: int, seed: int, exports: Path) -> dict:
    """The pool in FiftyOne, the model run on it, the two picks (the ``n`` most uncertain by ``rank_samples``,
    and ``n`` at random) exported with their ground truth as the corrections; returns what was picked.

    Done in one go, and the dataset deleted after."""
    import fiftyone as fo
    import numpy as np

    from app.fiftyone_bridge.core import export_view, import_dataset, predict_view
    from app.fiftyone_bridge.selection import rank_samples

    ds = import_dataset("corrections", pool, name, overwrite=True, progress=False)
    try:
        predict_view(ds, device="cpu", progress=False)
        report = rank_samples(ds, by="uncertainty", top=n, tag="uncertainty")
        ids = [str(i) for i in ds.values("id")]
        chosen = np.random.default_rng([seed, 4242]).choice(len(ids), size=n, replace=False)
        arms = {"uncertainty": [t["id"] for t in report.top], "random": [ids[i] for i in sorted(chosen.tolist())]}
        unc = ds.values("pred_uncertainty")
        out = {"pool_uncertainty": round(float(np.mean(unc)), 4)}
        for arm, arm_ids in arms.items():
            view = ds.select(arm_ids)
            export_view(view, exports / arm, overwrite=True)
            out[arm] = {"files": sorted(Path(p).name for p in view.values("filepath")),
                        "mean_uncertainty": round(float(np.mean(view.values("pred_uncertainty"))), 4),
                        "export": str(exports / arm)}
        return out
    finally:
        fo.delete_dataset(name)


def finetune(export: Path, run: Path, recipe: dict, max_minutes: float) -> dict:
    """Run the app's fine-tune command on an export (synchronously, timed)."""
    import shutil

    from app.finetune import finetune_command

    if run.exists():
        shutil.rmtree(run)
    recipe_file = run.parent / f"{run.name}.recipe.json"
    run.parent.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(json.dumps(recipe))
    cmd = finetune_command("builtin", export, run, max_minutes=max_minutes, device="cpu",
                           extra=["--recipe", str(recipe_file)])
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.monotonic() - t0
    (run.parent / f"{run.name}.log").write_text(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    keep = ("iterations", "best_iteration", "stopped", "recommendation", "before", "after")
    return {"wall_s": round(wall, 1), **{k: line.get(k) for k in keep}}


def summarize(results: dict) -> dict:
    """Mean test PQ of each arm over the seeds done, and the paired difference (uncertainty - random)."""
    seeds = [s for s in results.get("seeds", {}).values() if all(a in s for a in ARMS)]
    if not seeds:
        return {}
    out = {"seeds": len(seeds)}
    for arm in ARMS:
        out[arm] = round(sum(s[arm]["test"]["PQ"] for s in seeds) / len(seeds), 2)
    diffs = [s["uncertainty"]["test"]["PQ"] - s["random"]["test"]["PQ"] for s in seeds]
    out["uncertainty_minus_random"] = [round(d, 2) for d in diffs]
    out["mean_difference"] = round(sum(diffs) / len(diffs), 2)
    out["uncertainty_wins"] = sum(d > 0 for d in diffs)
    for arm in ARMS:
        out[f"{arm}_last_weights"] = round(sum(s[arm]["test_last"]["PQ"] for s in seeds) / len(seeds), 2)
    return out


def markdown(results: dict) -> str:
    """The table of docs/finetuning.md: test PQ per seed and arm, with the starting model."""
    base = results["baseline"]["PQ"]
    rows = ["| seed | pick | mean uncertainty of the pick (pool) | test PQ (th / st), recommended weights | gain "
            "| test PQ, last weights | run's held-out PQ before -> after | iterations (best) | wall |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| | starting model | | {base:.1f} ({results['baseline']['PQ_th']:.1f} / "
            f"{results['baseline']['PQ_st']:.1f}) | | | | | |"]
    for seed, s in results.get("seeds", {}).items():
        for arm in ARMS:
            if arm not in s:
                continue
            e, t = s[arm], s[arm]["test"]
            r = e["run"]
            held = f"{r['before']['PQ']:.1f} -> {r['after']['PQ']:.1f}" if r.get("before") else "not measured"
            rows.append(f"| {seed} | {arm} | {s['picks'][arm]['mean_uncertainty']:.3f} "
                        f"({s['picks']['pool_uncertainty']:.3f}) | **{t['PQ']:.1f}** ({t['PQ_th']:.1f} / "
                        f"{t['PQ_st']:.1f}) | {t['PQ'] - base:+.1f} | {e['test_last']['PQ']:.1f} | {held} | "
                        f"{r['iterations']} "
                        f"({r['best_iteration']}) | {r['wall_s'] / 60:.1f} min |")
    return "\n".join(rows)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="scratch folder (scenes, FiftyOne's database, runs)")
    p.add_argument("--out", type=Path, required=True, help="results JSON (rewritten after each run; resumed)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (pool, random pick, recipe seed)")
    p.add_argument("--pool", type=int, default=32, help="shifted scenes in each pool (default 32)")
    p.add_argument("--n", type=int, default=8, help="samples corrected per pick (default 8)")
    p.add_argument("--test", type=int, default=40, help="held-out shifted test scenes (default 40)")
    p.add_argument("--size", type=int, default=192, help="scene size in pixels (default 192)")
    p.add_argument("--max-iter", type=int, default=100, help="iterations of each run (the recipe's "
                   "min_iterations and max_iterations; default 100, the recipe's least)")
    p.add_argument("--retain-images", type=int, default=24, help="the recipe's retained scenes (default 24)")
    p.add_argument("--replay-images", type=int, default=64, help="the recipe's replay scenes (default 64)")
    p.add_argument("--max-minutes", type=float, default=4.0, help="time budget of each run (default 4)")
    args = p.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    database = private_database(args.work)
    try:
        return measure(args)
    finally:
        database.terminate()
        database.wait(timeout=60)


def measure(args: argparse.Namespace) -> int:
    """The measurement itself (FiftyOne on the private database)."""
    test = scenes(args.work / "test", args.test, TEST_SEED, "test", args.size)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    budget = {"min_iterations": args.max_iter, "max_iterations": args.max_iter,
              "retain_images": args.retain_images, "replay_images": args.replay_images}
    results["setup"] = {"pool": f"{args.pool} shifted scenes of {args.size} px per seed (seed {POOL_SEED} + s)",
                        "pick": args.n, "test": f"{args.test} shifted scenes (seed {TEST_SEED}), in no pool",
                        "recipe": "training.finetune's default with " + json.dumps(budget) + " and seed = s",
                        "cpu_count": os.cpu_count()}
    t_all = time.monotonic()
    if "baseline" not in results:
        results["baseline"] = evaluate(None, test)
    print(f"starting model: test PQ {results['baseline']['PQ']:.1f}", flush=True)
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        entry = results.setdefault("seeds", {}).setdefault(str(seed), {})
        pool = scenes(args.work / f"pool{seed}", args.pool, POOL_SEED + seed, "pool", args.size)
        if "picks" not in entry:
            entry["picks"] = prepare(pool, f"selbench-{os.getpid()}-{seed}", args.n, seed,
                                     args.work / "exports" / str(seed))
        for arm in ARMS:
            if arm in entry:
                continue
            run = args.work / "runs" / f"{seed}-{arm}"
            line = finetune(Path(entry["picks"][arm]["export"]), run, budget | {"seed": seed}, args.max_minutes)
            last = run / "checkpoints" / (run / "checkpoints" / "last").read_text().strip()
            entry[arm] = {"run": line, "test": evaluate(str(run / "model"), test),
                          "test_last": evaluate(str(last), test)}  # the last weights, whatever the selection
            results["summary"] = summarize(results)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
            print(f"seed {seed} {arm}: test PQ {results['baseline']['PQ']:.1f} -> {entry[arm]['test']['PQ']:.1f} "
                  f"({line['iterations']} it, best {line['best_iteration']}, {line['wall_s']:.0f} s)", flush=True)
    results["summary"] = summarize(results) | {"wall_min": round((time.monotonic() - t_all) / 60, 1)}
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["summary"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
