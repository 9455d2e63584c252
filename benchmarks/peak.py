"""This machine's measured matmul peak (GFLOP/s, fp32 and bf16) with torch, as a yardstick.

The training benchmarks report their achieved GFLOP/s as a fraction of this number, measured
in the same run on the same machine: a square n x n @ n x n matmul costs 2 n^3 FLOPs, and the
best of a few timed calls (after one warm-up) is the machine's practical peak for that dtype.

Usage:
    .venv/bin/python benchmarks/peak.py                 # sizes 2048 4096, JSON on stdout
    .venv/bin/python benchmarks/peak.py --sizes 512 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch

from cnnlab.runtime import physical_cores

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROBE_N = 256  # probe matmul size: milliseconds in fp32, well under a second in slow bf16


def matmul_gflops(
    n: int, dtype: torch.dtype, *, repeats: int = 3, budget_s: float = 4.0
) -> dict[str, float]:
    """Best-of-`repeats` GFLOP/s of one n x n matmul in `dtype` (stops early past `budget_s`).

    The budget keeps slow cases (bf16 on a CPU without native bf16 units) from taking minutes:
    at least one timed call always runs.
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool start, packing buffers
    best = float("inf")
    spent = 0.0
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        torch.mm(a, b)
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        if spent > budget_s:
            break
    return {"n": n, "best_s": best, "gflops": 2.0 * n**3 / best / 1e9}


def matmul_peak(
    sizes: Sequence[int] = (2048, 4096),
    *,
    dtypes: Sequence[str] = ("fp32", "bf16"),
    repeats: int = 3,
    threads: int | None = None,
    budget_s: float = 4.0,
) -> dict:
    """Measured matmul peak per dtype: the best GFLOP/s over `sizes`, plus every measurement.

    Parameters
    ----------
    sizes : square matrix sizes to try; the peak is the best of them.
    dtypes : any of "fp32", "bf16".
    repeats : timed calls per size (best kept), after one warm-up call.
    threads : torch threads; default the physical cores (the thread count training uses).
    budget_s : seconds after which a size stops repeating (per size and dtype); a size whose
        predicted time (from the fastest rate so far) exceeds it is skipped, and recorded so.

    Returns
    -------
    dict with "fp32_gflops" / "bf16_gflops" (peaks), "threads", "torch" and "runs"
    (one entry per dtype and size).

    Examples
    --------
    >>> peak = matmul_peak(sizes=(64,), repeats=1)
    >>> peak["fp32_gflops"] > 0 and peak["bf16_gflops"] > 0
    True
    """
    threads = threads or physical_cores()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out: dict = {"threads": threads, "torch": torch.__version__, "runs": []}
        for name in dtypes:
            if name not in DTYPES:
                raise ValueError(f"unknown dtype {name!r}: choose from {', '.join(DTYPES)}")
            # A small probe predicts each size's time, so a dtype this CPU runs slowly (bf16
            # without native units: about 1 GFLOP/s) skips sizes that would take minutes.
            probe = matmul_gflops(min(PROBE_N, *sizes), DTYPES[name], repeats=1)
            rate, best = probe["gflops"], 0.0
            for n in sorted(sizes):
                predicted_s = 2.0 * n**3 / (rate * 1e9)
                if (predicted_s > budget_s and best > 0) or predicted_s > 4 * budget_s:
                    out["runs"].append({"dtype": name, "n": n, "skipped_predicted_s": predicted_s})
                    continue
                run = matmul_gflops(n, DTYPES[name], repeats=repeats, budget_s=budget_s)
                out["runs"].append({"dtype": name, **run})
                rate = max(rate, run["gflops"])
                best = max(best, run["gflops"])
            if best == 0.0:  # every requested size too slow: the probe is the best we have
                out["runs"].append({"dtype": name, **probe, "probe": True})
                best = probe["gflops"]
            out[f"{name}_gflops"] = best
        return out
    finally:
        torch.set_num_threads(before)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print `matmul_peak(...)` as one JSON object."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096], help="matrix sizes")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per size (best kept)")
    p.add_argument("--threads", type=int, default=None, help="default: physical cores")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    args = p.parse_args(argv)
    if any(n <= 0 for n in args.sizes) or args.repeats <= 0:
        p.error("--sizes and --repeats must be positive")
    res = matmul_peak(args.sizes, dtypes=args.dtypes, repeats=args.repeats, threads=args.threads)
    json.dump(res, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
