"""Compare training recipes over several seeds, ranked by VALIDATION accuracy (never the test).

Each recipe is a name and extra `cnnlab train` flags; every (recipe, seed) pair is one
`python -m cnnlab train` process (`--jobs` at a time, `--threads` each), its run folder under
`--out`. The table shows, per recipe, the mean validation accuracy of the chosen checkpoint
and of the last epoch (what recipes are chosen by) and, beside them, the test accuracy (what
is reported once a recipe is chosen). Results go to `--out/sweep.json`.

    python benchmarks/sweep.py --data neu --seeds 0 1 2 --jobs 2 --threads 1 \
        --common "--model seed-neu --epochs 10 --val-split 0.1" \
        --recipe "notes=" --recipe "flips=--augment texture --schedule onecycle"
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_one(args: argparse.Namespace, name: str, flags: str, seed: int) -> dict:
    """Train one (recipe, seed) and read back its metrics."""
    out = Path(args.out) / f"{name}-s{seed}"
    cmd = [sys.executable, "-m", "cnnlab", "train", "--data", args.data, "--seed", str(seed)]
    cmd += ["--out", str(out), "--quiet", "--threads", str(args.threads)]
    cmd += shlex.split(args.common) + shlex.split(flags)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    row = {"recipe": name, "seed": seed, "flags": flags, "wall_s": round(wall, 1)}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{name} s{seed}: FAILED {row['error']}", flush=True)
        return row
    m = json.loads((out / "metrics.json").read_text())
    hist = m.get("final", {})
    best = m["best_epoch"]
    chosen = next((r for r in _history(out) if int(r["epoch"]) == best), hist)
    row.update(
        test=m["test"].get("accuracy"),
        val_best=_f(chosen.get("val_accuracy")),
        val_last=_f(hist.get("val_accuracy")),
        train_last=_f(hist.get("train_accuracy")),
        best_epoch=best,
        train_s=m["train_seconds"],
    )
    print(
        f"{name} s{seed}: val {row['val_best']} (last {row['val_last']}) test {row['test']}"
        f" train {row['train_s']:.0f}s",
        flush=True,
    )
    return row


def _f(v: object) -> float | None:
    return None if v in (None, "") else float(v)  # type: ignore[arg-type]


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def summarise(rows: list[dict], recipes: list[list[str]]) -> list[dict]:
    """Per recipe: means over seeds of val (kept / last), test and train s; best val first."""

    def mean(name: str, key: str) -> float | None:
        vals = [r[key] for r in rows if r["recipe"] == name and r.get(key) is not None]
        return statistics.mean(vals) if vals else None

    summary = [
        {
            "recipe": name,
            "flags": flags,
            **{k: mean(name, k) for k in ("val_best", "val_last", "test", "train_s")},
        }
        for name, flags in recipes
    ]
    return sorted(summary, key=lambda s: -(s["val_best"] or 0))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--common", default="", help="flags for every run")
    p.add_argument("--recipe", action="append", required=True, help="NAME=FLAGS")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/sweep")
    args = p.parse_args(argv)
    if any("=" not in r for r in args.recipe):
        p.error("--recipe takes NAME=FLAGS (FLAGS may be empty: 'notes=')")
    recipes = [r.split("=", 1) for r in args.recipe]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    work = [(n, f, s) for n, f in recipes for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda w: run_one(args, *w), work))

    summary = summarise(rows, recipes)
    print(f"\n{'recipe':<22}{'val(chosen)':>12}{'val(last)':>11}{'test':>9}{'train s':>9}")
    for s in summary:
        cells = zip(("val_best", "val_last", "test"), (12, 11, 9), strict=True)
        txt = "".join(f"{'-' if s[k] is None else f'{100 * s[k]:.2f}':>{w}}" for k, w in cells)
        print(f"{s['recipe']:<22}{txt}{(s['train_s'] or 0):>9.0f}")
    Path(args.out, "sweep.json").write_text(
        json.dumps({"common": args.common, "runs": rows, "summary": summary}, indent=1)
    )


if __name__ == "__main__":
    main()
