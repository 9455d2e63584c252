"""Single-image latency of a model while other processes hold the cores.

For each number of busy-looping "hog" processes (0, 1, 2 by default), calls the model on one
random uint8 image for `--seconds` and prints p50 / p99 latency: how `--threads` behaves on a
CPU shared with the rest of a production line's software.

    python benchmarks/contention.py RUN --threads 1
    GOMP_SPINCOUNT=1000 python benchmarks/contention.py RUN --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from cnnlab.backends import load_predictor


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="run folder or exported model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hogs", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = ap.parse_args(argv)

    pred = load_predictor(args.model, device="cpu", threads=args.threads)
    c, h, w = pred.meta["input"]["channels"], *pred.meta["input"]["size"]
    x = torch.randint(0, 256, (1, c, h, w), dtype=torch.uint8)
    for _ in range(20):  # warm-up
        pred.logits(x)
    rows = []
    for hogs in args.hogs:
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        try:
            time.sleep(1.0)
            times = []
            end = time.perf_counter() + args.seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                pred.logits(x)
                times.append(time.perf_counter() - t0)
        finally:
            for p in procs:
                p.kill()
        ms = np.array(times) * 1000
        row = {
            "threads": args.threads,
            "hogs": hogs,
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "calls": len(ms),
        }
        rows.append(row)
        print(
            f"threads {args.threads}, {hogs} busy processes: p50 {row['p50_ms']} ms, "
            f"p99 {row['p99_ms']} ms ({row['calls']} calls)",
            flush=True,
        )
    if args.json:
        print(json.dumps({"model": args.model, "rows": rows}))


if __name__ == "__main__":
    main()
