"""Runtime set-up: glibc's malloc keeps freed memory (checked with the kernel's page-fault
count); the CPU description in reports."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from cnnlab.runtime import cpu_flags, cpu_model

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# A 64 MB tensor allocated and freed 5 times after 10 warm-ups (aligned blocks take a few
# rounds before glibc reuses them): the minor page faults of those 5.
_SCRIPT = """
import resource, torch
from cnnlab.runtime import keep_freed_memory
applied = keep_freed_memory()
n = 16 * 2**20  # float32 numbers: 64 MB, above glibc's largest mmap threshold (32 MB)
for _ in range(10):
    t = torch.ones(n); del t
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    t = torch.ones(n); del t
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(malloc: str) -> tuple[bool, int]:
    env = {**os.environ, "CNNLAB_MALLOC": malloc}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@glibc_only
def test_keep_freed_memory_stops_page_faults_on_big_tensors() -> None:
    pages = 5 * 64 * 2**20 // 4096  # every page of every fresh 64 MB block: 81920
    applied, faults = _faults("keep")
    assert applied and faults < pages // 20
    applied, faults = _faults("default")  # the opt-out: glibc mmaps and unmaps each block
    assert not applied and faults > pages // 2


def test_cpu_model_names_family_and_vector_units() -> None:
    """A VM's bare "AMD EPYC" gets the family / model and ISA of its first processor."""
    zen5 = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
        "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
        "processor\t: 1\ncpu family\t: 99\n"
    )
    assert cpu_model(zen5) == "AMD EPYC (family 26 model 2, AVX-512, native bf16)"
    assert cpu_flags(zen5) == {"fpu", "avx2", "avx512f", "avx512_bf16"}  # processor 0 only
    zen3 = zen5.replace("26", "25").replace(" avx512f avx512_bf16", "")
    assert cpu_model(zen3) == "AMD EPYC (family 25 model 2, AVX2)"
    assert cpu_model("model name\t: Some CPU\n") == "Some CPU"
