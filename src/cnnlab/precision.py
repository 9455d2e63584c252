"""Whether bf16 autocast pays off on this CPU: measured once, then remembered.

The AVX512-BF16 / AMX flags say the CPU *has* bf16 instructions, not that torch's bf16
kernels beat its float32 ones there: on AMD Zen 4 / Zen 5 the bf16 matmul peak is 2.9x /
4.4x float32's and training epochs run 1.4-2.1x faster in bf16, but on an Intel Xeon
(family 6 model 207) whose hypervisor exposes AVX512-BF16 without AMX this probe runs at
0.61x and training epochs at 0.80-0.85x (README, "Levers on the Intel box"). So a CPU with
the flags gets a short probe, a 3x3 convolution timed in both precisions (about 0.2 s), and
bf16 autocast only where bf16 is at least `BF16_MIN_SPEEDUP` times faster. The verdict is
cached per CPU, torch version and thread count in `$CNNLAB_CACHE/bf16-probe.json`, so every
run on a machine trains in the same precision; delete the file to measure again, or pass
`--bf16` / `--no-bf16`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import torch

from cnnlab.atomic import write_json
from cnnlab.paths import cache_root
from cnnlab.runtime import BF16_FLAGS, cpu_flags, cpu_model

try:
    import fcntl
except ImportError:  # Windows: no lock; parallel first runs may each measure
    fcntl = None  # type: ignore[assignment]

BF16_MIN_SPEEDUP = 1.2  # bf16's probe speed over float32's that turns autocast on
PROBE_SHAPE = (32, 64, 28, 28)  # batch, channels, height, width: ~0.9 GFLOP, ms in fp32
PROBE_ROUNDS = 5  # best of this many timed calls per precision, alternating


def probe_file() -> Path:
    """Where verdicts are kept: `$CNNLAB_CACHE/bf16-probe.json`."""
    return cache_root() / "bf16-probe.json"


def probe_key(threads: int) -> str:
    """What a verdict depends on: the CPU (model, family, bf16 flags), torch and threads."""
    flags = sorted(cpu_flags() & (BF16_FLAGS | {"amx_tile"}))
    return f"{cpu_model()} [{' '.join(flags)}] | torch {torch.__version__} | {threads} threads"


def probe_flops() -> float:
    """FLOPs of the probe convolution: 2 x outputs x (input channels x 3 x 3) multiply-adds."""
    n, c, h, w = PROBE_SHAPE
    return 2.0 * n * h * w * c * c * 9


def conv_gflops(dtype: torch.dtype) -> Callable[[], float]:
    """A timer of one 3x3 convolution (64 -> 64 channels, channels_last) in `dtype`.

    Each call of the returned function times one forward pass and returns its GFLOP/s,
    so that two precisions can be timed in turns.
    """
    n, c, h, w = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=gen).to(dtype, memory_format=torch.channels_last)
    k = torch.randn(c, c, 3, 3, generator=gen).to(dtype, memory_format=torch.channels_last)
    flops = probe_flops()
    torch.nn.functional.conv2d(x, k, padding=1)  # warm-up: oneDNN picks and packs its kernel

    def timed() -> float:
        t0 = time.perf_counter()
        torch.nn.functional.conv2d(x, k, padding=1)
        return flops / max(time.perf_counter() - t0, 1e-9) / 1e9

    return timed


def measure_bf16_speedup(threads: int, rounds: int = PROBE_ROUNDS) -> dict[str, object]:
    """Time the probe convolution in float32 and bf16, alternating, with `threads` threads.

    Returns the best GFLOP/s of each and their ratio, bf16 / float32; alternating keeps a
    machine's drift from favouring either.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fp32, bf16 = conv_gflops(torch.float32), conv_gflops(torch.bfloat16)
        best32 = best16 = 0.0
        for _ in range(max(1, rounds)):
            best32, best16 = max(best32, fp32()), max(best16, bf16())
    finally:
        torch.set_num_threads(before)
    return {
        "fp32_gflops": round(best32, 1),
        "bf16_gflops": round(best16, 1),
        "speedup": round(best16 / best32, 3),
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _lock(path: Path) -> IO[str] | None:
    """Open and exclusively lock a file beside `path`, so that processes started together
    (torchrun ranks, parallel tests) measure once and read the same verdict; None where
    the folder cannot be written. Closing the file releases the lock."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")  # returned open: the caller closes it
    except OSError:
        return None
    if fcntl is not None:
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _read(path: Path) -> dict:
    """The cached verdicts ({} when there is no file or it is not a JSON object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def bf16_probe(threads: int) -> dict[str, object]:
    """This CPU's bf16 / float32 probe record for `threads` threads, measured on first use
    and read from the cache after (a cache that cannot be written only costs a re-measure)."""
    path, key = probe_file(), probe_key(threads)
    lock = _lock(path)
    if lock is None:  # read-only cache folder: measure every time, keep nothing
        return measure_bf16_speedup(threads)
    with lock:
        cached = _read(path)
        record = cached.get(key)
        if not isinstance(record, dict) or not isinstance(record.get("speedup"), int | float):
            record = measure_bf16_speedup(threads)
            with contextlib.suppress(OSError):
                write_json(path, {**cached, key: record})
    return record


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX); bf16 is emulated,
    several times slower than float32, without them."""
    return bool(cpu_flags() & BF16_FLAGS)


def bf16_choice(threads: int) -> tuple[bool, str]:
    """Whether to train a CPU model under bf16 autocast by default, and why (one line)."""
    if not cpu_has_native_bf16():
        return False, "float32: this CPU has no native bf16"
    record = bf16_probe(threads)
    speedup = float(record["speedup"])  # type: ignore[arg-type]
    on = speedup >= BF16_MIN_SPEEDUP
    return on, (
        f"{'bf16 autocast' if on else 'float32'}: a bf16 convolution ran at {speedup:.2f}x "
        f"float32's speed on this CPU ({probe_file()}; bf16 from {BF16_MIN_SPEEDUP}x)"
    )
