"""Inference speed, PyTorch vs onnxruntime, side by side in one process on the same images.

Both run through `cnnlab.backends.load_predictor` (uint8 in, x / 255, logits out), so the
figures are what `predict`, `evaluate` and `serve` get. Throughput: batches of --batch real
test images, the backends alternating round by round (median images/s). Latency: one image
per call, --calls calls per backend in alternating blocks (p50 / p99). Also prints the
largest |logit| difference between the two on those images.

    .venv/bin/python benchmarks/bench_backends.py /tmp/tr/mnist-s0 --data mnist
    .venv/bin/python benchmarks/bench_backends.py /tmp/tr/neu-s0 --data neu --rounds 3
    .venv/bin/python benchmarks/bench_backends.py /tmp/tr/mnist-s0 --data mnist --threads 1
    .venv/bin/python benchmarks/bench_backends.py /tmp/tr/neu-s0 --data neu --aten-pool
    python3 benchmarks/bench_backends.py /tmp/runs/neu-best --data neu --device cuda

`--aten-pool` adds a third contestant, `torch-aten`: the PyTorch predictor with ATen's
max-pool and ReLU instead of cnnlab's fused kernel (`cnnlab.models.pool_relu`).
`--device cuda` runs the PyTorch predictor on the GPU (logits come back to the CPU each call,
as `predict` and `serve` need them); onnxruntime stays on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

BLOCK = 50  # single-image calls per backend before switching to the other


def real_images(data: str, meta: dict, n: int) -> torch.Tensor:
    """n test images of `data` at the model's channels and size (uint8 N, C, H, W)."""
    from cnnlab.data import load_dataset

    c, size = int(meta["input"]["channels"]), tuple(meta["input"]["size"])
    ds = load_dataset(data, channels=c, size=size, download=False, progress=False)
    part = ds.split("test") if len(ds.split("test")) else ds.split("all")
    idx = torch.arange(n) % len(part)  # cycle when the split is smaller than n
    return part.images[idx].contiguous()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="run folder or .safetensors (exported to ONNX here)")
    p.add_argument("--data", required=True, help="dataset whose test images are used")
    p.add_argument("--onnx", help="use this exported .onnx instead of exporting")
    p.add_argument("--batch", type=int, default=256, help="images per throughput call (256)")
    p.add_argument("--rounds", type=int, default=5, help="throughput rounds per backend (5)")
    p.add_argument("--calls", type=int, default=300, help="single-image calls per backend (300)")
    p.add_argument("--threads", type=int, help="CPU threads per backend (default: physical cores)")
    p.add_argument("--out", help="write the JSON result here")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="the PyTorch predictor's (cpu)"
    )
    p.add_argument(
        "--aten-pool", action="store_true", help="also time torch with ATen's max-pool + ReLU"
    )
    args = p.parse_args()

    from cnnlab.backends import TorchPredictor, load_predictor
    from cnnlab.export import export_model

    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = args.onnx or export_model(args.model, Path(tmp) / "m.onnx", n_check=8)["path"]
        backends = {
            "torch": load_predictor(args.model, device=args.device, threads=args.threads),
            "onnxruntime": load_predictor(onnx_file, threads=args.threads),
        }
        if args.aten_pool:
            backends["torch-aten"] = TorchPredictor(
                args.model, device=args.device, threads=args.threads, fuse_pool=False
            )
        meta = backends["torch"].meta
        batch = real_images(args.data, meta, args.batch)
        singles = batch[: min(64, args.batch)]
        ref = backends["torch"].logits(batch)
        diff = (ref - backends["onnxruntime"].logits(batch)).abs()
        same = torch.equal(ref, backends["torch-aten"].logits(batch)) if args.aten_pool else None
        for pred in backends.values():  # warm-up: allocations, kernel choice
            pred.logits(batch[:16])
            for i in range(10):
                pred.logits(singles[i : i + 1])

        thr: dict[str, list[float]] = {k: [] for k in backends}
        for _ in range(args.rounds):
            for name, pred in backends.items():
                t0 = time.perf_counter()
                pred.logits(batch)
                thr[name].append(args.batch / (time.perf_counter() - t0))

        lat: dict[str, list[float]] = {k: [] for k in backends}
        done = 0
        while done < args.calls:
            for name, pred in backends.items():
                for j in range(done, min(done + BLOCK, args.calls)):
                    x = singles[j % len(singles)].unsqueeze(0)
                    t0 = time.perf_counter()
                    pred.logits(x)
                    lat[name].append(time.perf_counter() - t0)
            done += BLOCK

    result = {
        "model": args.model,
        "architecture": meta.get("architecture"),
        "batch": args.batch,
        "torch_device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "threads": torch.get_num_threads(),
        "max_abs_diff_logits": float(diff.max()),
        "pool_relu": backends["torch"].pool_relu,  # type: ignore[attr-defined]
        "torch_equals_torch_aten": same,
        "backends": {
            name: {
                "throughput_img_s": round(statistics.median(thr[name]), 1),
                "throughput_rounds": [round(v, 1) for v in thr[name]],
                "latency_ms_p50": round(1000 * float(np.percentile(lat[name], 50)), 3),
                "latency_ms_p99": round(1000 * float(np.percentile(lat[name], 99)), 3),
            }
            for name in backends
        },
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    print(
        f"{meta.get('architecture')}: batch {args.batch}, {result['threads']} thread(s), "
        f"torch on {result['gpu'] or 'the CPU'}, "
        f"max |logit diff| {diff.max():.3g}; max-pool + ReLU: {result['pool_relu']}"
        + ("" if same is None else f"; torch == torch-aten bit for bit: {same}")
    )
    print(f"{'backend':<12} {'img/s (batch)':>14} {'p50 ms (1 img)':>15} {'p99 ms':>9}")
    for name, r in result["backends"].items():
        print(
            f"{name:<12} {r['throughput_img_s']:>14.1f} {r['latency_ms_p50']:>15.3f} "
            f"{r['latency_ms_p99']:>9.3f}"
        )
    print(f"load average after: {result['loadavg_after']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
