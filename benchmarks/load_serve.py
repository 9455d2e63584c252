"""Load test for `cnnlab serve`: the real server on 127.0.0.1, N requests from C clients.

Starts `python -m cnnlab serve MODEL` on a free loopback port, waits for /health, then C
asyncio clients (httpx2) share N POST /predict requests of one image each, cycling through
real test images (PNG-encoded in memory). Prints throughput, latency p50 / p99 / max and the
error count, and writes one JSON object (--out, or stdout with --json). Clients and server
share the machine's cores, as a sidecar would; the load average is recorded before and after.

    .venv/bin/python benchmarks/load_serve.py /tmp/tr/mnist-s0 --data mnist
    .venv/bin/python benchmarks/load_serve.py /tmp/tr/neu-s0 --data neu -n 300 -c 16
    .venv/bin/python benchmarks/load_serve.py mnist.onnx --data mnist --out load-onnx.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cnnlab.runtime import cpu_model

HEALTH_TIMEOUT_S = 120  # the server imports torch and loads the model first
REQUEST_TIMEOUT_S = 60


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_images(data: str, meta: dict, k: int) -> list[tuple[str, bytes]]:
    """k real test images of `data` at their stored size, as PNG bytes."""
    from PIL import Image

    from cnnlab.data import load_dataset

    ds = load_dataset(data, download=False, progress=False)
    part = ds.split("test") if len(ds.split("test")) else ds.split("all")
    idx = np.linspace(0, len(part) - 1, k).round().astype(int)
    out = []
    for i in idx:
        arr = part.images[i].permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
        out.append((Path(part.files[i]).name.rsplit(".", 1)[0] + ".png", buf.getvalue()))
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation as numpy's default."""
    return float(np.percentile(np.asarray(values), q))


async def run_load(url: str, images: list[tuple[str, bytes]], n: int, c: int) -> dict:
    """n requests from c concurrent clients; latencies in seconds and the errors seen."""
    import httpx2

    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n))
    limits = httpx2.Limits(max_connections=c, max_keepalive_connections=c)

    async def client(session: httpx2.AsyncClient) -> None:
        for i in counter:  # shared iterator: each request is taken by exactly one client
            name, data = images[i % len(images)]
            t0 = time.perf_counter()
            try:
                r = await session.post(url, files=[("files", (name, data, "image/png"))])
                ok = r.status_code == 200 and len(r.json()["predictions"]) == 1
                if not ok:
                    errors.append(f"HTTP {r.status_code}: {r.text[:120]}")
            except Exception as e:  # count it and go on: the figure is the error count
                errors.append(f"{type(e).__name__}: {e}")
            latencies.append(time.perf_counter() - t0)

    async with httpx2.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as session:
        # warm-up outside the timing: first requests allocate and pick kernels
        for name, data in images[: min(8, len(images))]:
            await session.post(url, files=[("files", (name, data, "image/png"))])
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(c)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "wall_s": wall}


def start_server(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cnnlab", "serve", model, "--port", str(port), "--quiet", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_healthy(proc: subprocess.Popen, base: str) -> None:
    import urllib.request

    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"server did not answer /health within {HEALTH_TIMEOUT_S} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="run folder, .safetensors, .onnx or .pt to serve")
    p.add_argument("--data", required=True, help="dataset whose test images are sent (mnist, neu)")
    p.add_argument("-n", "--requests", type=int, default=1000, help="requests in all (1000)")
    p.add_argument("-c", "--clients", type=int, default=16, help="concurrent clients (16)")
    p.add_argument("--distinct", type=int, default=64, help="distinct images cycled (64)")
    p.add_argument(
        "--server-arg", action="append", default=[], help="extra `cnnlab serve` option (repeat)"
    )
    p.add_argument("--out", help="write the JSON result here")
    p.add_argument("--json", action="store_true", help="print the JSON result on stdout")
    args = p.parse_args()

    from cnnlab.backends import load_predictor

    meta = load_predictor(args.model, device="cpu").meta
    images = sample_images(args.data, meta, args.distinct)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()
    proc = start_server(args.model, port, args.server_arg)
    try:
        wait_healthy(proc, base)
        res = asyncio.run(run_load(base + "/predict", images, args.requests, args.clients))
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    lat = res["latencies"]
    result = {
        "model": args.model,
        "data": args.data,
        "requests": args.requests,
        "clients": args.clients,
        "server_args": args.server_arg,
        "errors": len(res["errors"]),
        "error_examples": res["errors"][:5],
        "wall_s": round(res["wall_s"], 3),
        "throughput_rps": round(args.requests / res["wall_s"], 1),
        "latency_ms": {
            "p50": round(1000 * percentile(lat, 50), 2),
            "p99": round(1000 * percentile(lat, 99), 2),
            "max": round(1000 * max(lat), 2),
            "mean": round(1000 * statistics.fmean(lat), 2),
        },
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lm = result["latency_ms"]
        print(
            f"{args.requests} requests, {args.clients} clients: {result['throughput_rps']} req/s, "
            f"p50 {lm['p50']} ms, p99 {lm['p99']} ms, max {lm['max']} ms, "
            f"errors {result['errors']} (load average before {result['loadavg_before'][0]}, "
            f"after {result['loadavg_after'][0]})"
        )


if __name__ == "__main__":
    main()
