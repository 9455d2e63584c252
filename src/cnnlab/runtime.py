"""Device and thread set-up, done once for every command that runs a model.

Threads are set to the physical cores (hyper-threads slow convolutions down), denormals are
flushed (tiny activations late in training otherwise take a slow path), freed memory is kept
for reuse (`keep_freed_memory`), and the device is picked from "auto" / "cpu" / "cuda" with a
clear error when CUDA is asked for but absent.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from functools import cache

import torch

from cnnlab.errors import CnnlabError
from cnnlab.switches import switched_off  # noqa: F401  (re-exported: the kernels import it here)

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@cache
def physical_cores() -> int:
    """Physical CPU cores available to this process (logical CPUs / threads per core)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        logical = os.cpu_count() or 1
    per_core = 1
    try:
        with open("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list") as f:
            text = f.read().strip()
        # "0,8" or "0-1": count the siblings of cpu0
        per_core = sum(
            (int(b) - int(a) + 1) if "-" in part else 1
            for part in text.split(",")
            for a, _, b in [part.partition("-")]
        )
    except (OSError, ValueError):
        pass
    return max(1, logical // max(1, per_core))


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo flags of native bf16 math


@cache
def _proc_cpuinfo() -> str:
    """/proc/cpuinfo's text, read once a process ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_fields(cpuinfo: str | None = None) -> dict[str, str]:
    """The first processor's "key: value" lines of /proc/cpuinfo (or of `cpuinfo`)."""
    text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The first processor's feature flags (/proc/cpuinfo's "flags" line, or `cpuinfo`'s)."""
    return set(cpu_fields(cpuinfo).get("flags", "").split())


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU for reports: /proc/cpuinfo's model name, family / model numbers and vector ISA.

    Virtual machines often show a bare "AMD EPYC"; the family (25 = Zen 3/4, 26 = Zen 5) and
    whether AVX-512 and native bf16 are there tell two such boxes apart (whether cnnlab trains
    in bf16 is measured: `cnnlab.precision`). `cpuinfo` is the file's text (read from /proc
    when None).
    """
    import platform

    fields = cpu_fields(cpuinfo)
    name = fields.get("model name") or platform.processor() or "unknown"
    flags = cpu_flags(cpuinfo)
    extra = []
    if "cpu family" in fields:
        extra.append(f"family {fields['cpu family']} model {fields.get('model', '?')}")
    if "avx512f" in flags or "avx2" in flags:
        extra.append("AVX-512" if "avx512f" in flags else "AVX2")
    if flags & BF16_FLAGS:
        extra.append("native bf16")
    return f"{name} ({', '.join(extra)})" if extra else name


def eager() -> bool:
    """False while TorchScript scripts or traces, or torch.compile captures, a model: graphs
    record ATen's ops, so cnnlab's hand-made autograd functions stay out of them."""
    return not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling())


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt() parameters, glibc's malloc.h


@cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of giving it back to the OS.

    Tensors over 32 MB (seed-neu's first-layer activations: 256 MB a batch) are otherwise
    mmap-ed afresh and unmapped again every step, and the kernel zero-fills each new page:
    seed-neu spent about a quarter of its CPU time there; kept, it trains 2.0x the images/s
    (README "Levers"). The process keeps its peak memory until it exits.
    `CNNLAB_MALLOC=default` opts out. Returns True when applied (glibc only), once a process.
    """
    if os.environ.get("CNNLAB_MALLOC", "keep") != "keep":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # no glibc (macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # no mmap for big blocks (they come from the heap), and never trim the heap's free top
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def setup_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: physical cores), flush denormals and keep freed
    memory (`keep_freed_memory`); returns n."""
    keep_freed_memory()
    n = threads or int(os.environ.get("CNNLAB_THREADS", 0)) or physical_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    torch.set_flush_denormal(True)
    return n


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" -> cuda when available else cpu; "cuda" without CUDA is a user error."""
    if name not in DEVICE_CHOICES:
        raise CnnlabError(f"--device must be one of {', '.join(DEVICE_CHOICES)}, got '{name}'")
    if name == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("--device cuda asked for, but this torch build sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass(frozen=True)
class Runtime:
    """Where and how a model runs: device, threads, memory format and autocast dtype."""

    device: torch.device
    threads: int
    channels_last: bool
    amp_dtype: torch.dtype | None  # autocast dtype, None = float32 throughout
    amp_reason: str = field(default="", compare=False)  # why that precision, for the log

    def autocast(self) -> torch.autocast:
        """An autocast context (a no-op when amp_dtype is None)."""
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=bool(self.amp_dtype)
        )

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move a model to this runtime's device and memory format (the one place that does)."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def describe(self) -> dict[str, object]:
        """A JSON-able record of this runtime, for config.json."""
        return {
            "device": str(self.device),
            "threads": self.threads,
            "channels_last": self.channels_last,
            "amp_dtype": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else None,
            "amp_reason": self.amp_reason,
        }


def setup(
    device: str = "auto",
    *,
    threads: int | None = None,
    channels_last: bool | None = None,
    bf16: bool | None = None,
) -> Runtime:
    """Set threads once and pick the device; defaults are what measured fastest.

    channels_last: None = on (seed-mnist training on 2 Zen3 cores: median 2793 vs 1635
    images/s channels_last vs NCHW, benchmarks/bench_levers.py; on CUDA it feeds the
    tensor cores). bf16: None = on for CPUs where a bf16 convolution measured at least 1.2x
    float32's speed (`cnnlab.precision`: the flags alone mislead, an Intel Xeon with
    AVX512-BF16 but no AMX trains slower in bf16), off otherwise: emulated bf16 is several
    times slower than float32 on AVX2-only CPUs, and on an H100 these small CNNs are bound
    by kernel launches, where autocast's casts cost more than they save (seed-mnist 3 epochs:
    10.9 s bf16 vs 7.8 s float32; NEU best: 22.0 vs 19.3 s; README, "On a GPU").
    `--bf16` still turns it on.
    """
    dev = resolve_device(device)
    n = setup_threads(threads)
    if channels_last is None:
        channels_last = True
    if bf16 is not None:
        reason = f"{'bf16 autocast' if bf16 else 'float32'}: as asked"
    elif dev.type == "cpu":
        from cnnlab.precision import bf16_choice  # it imports this module

        bf16, reason = bf16_choice(n)
    else:
        bf16, reason = False, "float32: the default on CUDA (bf16 was slower for these models)"
    dtype = torch.bfloat16 if bf16 else None
    return Runtime(dev, n, bool(channels_last), dtype, amp_reason=reason)
