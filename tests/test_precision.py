"""bf16 autocast by measurement (`cnnlab.precision`): the probe's FLOP count against torch's
counter, the cache (measured once, per key, corrupt or read-only files), the lock that makes
processes started together measure once, and the choice it feeds into `setup`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cnnlab.precision as precision
from cnnlab.runtime import setup


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $CNNLAB_CACHE; returns the probe file's path in it."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    return precision.probe_file()


def fake_measure(monkeypatch: pytest.MonkeyPatch, speedup: float) -> list[int]:
    """Replace the timing with a fixed answer; returns the list of thread counts measured."""
    calls: list[int] = []

    def measure(threads: int, rounds: int = 5) -> dict[str, object]:
        calls.append(threads)
        return {"fp32_gflops": 100.0, "bf16_gflops": 100.0 * speedup, "speedup": speedup}

    monkeypatch.setattr(precision, "measure_bf16_speedup", measure)
    return calls


def test_probe_flops_match_torch_counter_and_the_probe_runs() -> None:
    n, c, h, w = precision.PROBE_SHAPE
    x, k = torch.randn(n, c, h, w), torch.randn(c, c, 3, 3)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.conv2d(x, k, padding=1)
    assert precision.probe_flops() == counter.get_total_flops()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # real timing: only the record's shape is sure, and that threads are put back
        record = precision.measure_bf16_speedup(2, rounds=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert record["fp32_gflops"] > 0 and record["bf16_gflops"] > 0
    assert record["speedup"] == pytest.approx(
        record["bf16_gflops"] / record["fp32_gflops"], rel=0.01
    )


def test_verdict_is_measured_once_per_key_and_cached(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_measure(monkeypatch, 0.6)
    assert precision.bf16_probe(2)["speedup"] == 0.6
    assert precision.bf16_probe(2)["speedup"] == 0.6
    assert calls == [2]  # the second came from the file
    precision.bf16_probe(1)  # another thread count is another key
    assert calls == [2, 1]
    stored = json.loads(cache.read_text())
    assert set(stored) == {precision.probe_key(2), precision.probe_key(1)}
    assert "torch " + torch.__version__ in precision.probe_key(2)
    # a verdict measured on another machine (another key) is not used here
    cache.write_text(json.dumps({"another CPU": {"speedup": 3.0}}))
    calls.clear()
    assert precision.bf16_probe(2)["speedup"] == 0.6 and calls == [2]
    assert "another CPU" in json.loads(cache.read_text())  # others' verdicts kept


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"KEY": {"speedup": "fast"}}'])
def test_a_corrupt_cache_is_measured_again_and_replaced(
    cache: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    calls = fake_measure(monkeypatch, 2.5)
    cache.parent.mkdir(parents=True)
    cache.write_text(text.replace("KEY", precision.probe_key(2)))
    assert precision.bf16_probe(2)["speedup"] == 2.5 and calls == [2]
    assert json.loads(cache.read_text())[precision.probe_key(2)]["speedup"] == 2.5


def test_a_cache_folder_that_cannot_be_made_measures_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$CNNLAB_CACHE under a file (the same error as a read-only folder, even for root)."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "a-file" / "cache"))
    calls = fake_measure(monkeypatch, 2.5)
    assert precision.bf16_probe(2)["speedup"] == 2.5
    assert precision.bf16_probe(2)["speedup"] == 2.5
    assert calls == [2, 2]  # measured each time, no error


@pytest.mark.parametrize(("speedup", "on"), [(0.6, False), (1.19, False), (1.2, True), (2.9, True)])
def test_bf16_only_where_it_measured_faster(
    cache: Path, monkeypatch: pytest.MonkeyPatch, speedup: float, on: bool
) -> None:
    fake_measure(monkeypatch, speedup)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    choice, why = precision.bf16_choice(2)
    assert choice is on
    assert why.startswith("bf16 autocast" if on else "float32") and f"{speedup:.2f}x" in why
    rt = setup("cpu", threads=2)
    assert rt.amp_dtype == (torch.bfloat16 if on else None) and rt.amp_reason == why
    assert rt.describe()["amp_reason"] == why


def test_no_probe_without_native_bf16_or_when_asked(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_measure(monkeypatch, 2.5)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert setup("cpu").amp_dtype is None
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert setup("cpu", bf16=False).amp_dtype is None
    assert setup("cpu", bf16=True).amp_dtype == torch.bfloat16
    assert setup("cpu", bf16=True).amp_reason == "bf16 autocast: as asked"
    assert calls == [] and not cache.exists()


_RACE = """
import sys, time
import cnnlab.precision as p
def measure(threads, rounds=5):
    with open(sys.argv[1], "a") as f:
        f.write("measured\\n")
    time.sleep(0.5)  # long enough for the others to be waiting on the lock
    return {"speedup": float(sys.argv[2])}
p.measure_bf16_speedup = measure
print(p.bf16_probe(2)["speedup"])
"""


def test_processes_started_together_measure_once(cache: Path, tmp_path: Path) -> None:
    """torchrun ranks start together: the lock makes one measure and all read its verdict
    (each process would report its own number, 1.0 / 2.0 / 3.0, had it measured)."""
    log = tmp_path / "measured.log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE, str(log), str(float(i))],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "CNNLAB_CACHE": str(cache.parent)},
        )
        for i in (1, 2, 3)
    ]
    answers = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text() == "measured\n" and len(answers) == 1
