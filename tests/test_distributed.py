"""Data-parallel training: `torchrun --nproc-per-node 2 -m cnnlab train` on the CPU (gloo)
writes one complete run folder from rank 0 only and ends where one process with the same
global batch ends, up to float summation order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_helpers import write_bars_folder

from cnnlab.train import TrainConfig, train
from cnnlab.train.checkpoint import read_safetensors

# Imported by every Python process started with this folder on PYTHONPATH: under torchrun
# (RANK set) it logs, per rank, every file cnnlab opens for writing or renames into place.
SPY = """
import builtins, io, os, tempfile
if os.environ.get("RANK") is not None and os.environ.get("CNNLAB_WRITE_LOG"):
    _log = open(os.environ["CNNLAB_WRITE_LOG"] + "." + os.environ["RANK"], "a")
    def _note(path):
        _log.write(os.path.abspath(str(path)) + "\\n"); _log.flush()
    _open, _replace, _mkstemp = builtins.open, os.replace, tempfile.mkstemp
    def open_(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            _note(file)
        return _open(file, mode, *a, **k)
    def replace(src, dst, *a, **k):
        _note(dst)
        return _replace(src, dst, *a, **k)
    def mkstemp(*a, **k):
        fd, name = _mkstemp(*a, **k)
        _note(name)
        return fd, name
    builtins.open = io.open = open_
    os.replace, tempfile.mkstemp = replace, mkstemp
"""

ARGS = [  # global batch 16 = 2 x 8; augmentation, smoothing and class weights on the shards
    *("--model", "seed-mnist", "--epochs", "2", "--batch-size", "16", "--val-split", "0.2"),
    *("--augment", "digits", "--label-smoothing", "0.1", "--class-weights", "auto"),
    *("--device", "cpu", "--threads", "1"),
    "--no-bf16",  # float32 sums, so the two runs can agree to 1e-5 on CPUs with native bf16
]


BUDGET = ("--time-budget", "1h")


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    data = write_bars_folder(tmp_path / "bars", n_per_class=40, size=16)
    (tmp_path / "spy").mkdir()
    (tmp_path / "spy" / "sitecustomize.py").write_text(SPY)
    ddp = tmp_path / "ddp"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "spy"), os.environ.get("PYTHONPATH", "")]),
        "CNNLAB_WRITE_LOG": str(tmp_path / "writes"),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    r = subprocess.run(
        # a budget that fits: both ranks time the probe and check it after every epoch in
        # step (all-reduced), and nothing is cut, so the run is still the one-process one
        [*cmd, "-m", "cnnlab", "train", "--data", str(data), *ARGS, *BUDGET, "--out", str(ddp)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("run folder:") == 1  # rank 0 reports
    assert r.stderr.count("epoch 1/2:") == 1 and "2 processes (gloo)" in r.stderr
    budget = json.loads((ddp / "config.json").read_text())["time_budget"]
    assert budget["epochs"] == 2 and "replans" not in budget

    # only rank 0 wrote into the run folder, and it wrote a complete one
    def written(rank: int) -> set[str]:
        lines = (tmp_path / f"writes.{rank}").read_text().split()
        return {Path(p).name for p in lines if Path(p).parent == ddp}

    assert written(1) == set()
    files = {
        "config.json",
        "split.json",
        "model.json",
        "model.safetensors",
        "last.safetensors",
        "previous.safetensors",
        "history.csv",
        "curves.png",
        "metrics.json",
    }
    assert files <= written(0)
    assert {p.name for p in ddp.iterdir()} == files

    # one process, same global batch: the same weights up to float summation order
    one = tmp_path / "one"
    cfg = TrainConfig(
        data=str(data),
        model="seed-mnist",
        epochs=2,
        batch_size=16,
        val_split=0.2,
        augment="digits",
        label_smoothing=0.1,
        class_weights="auto",
        device="cpu",
        threads=1,
        bf16=False,
        out=str(one),
    )
    train(cfg, progress=False, log=lambda _m: None)
    a = read_safetensors(ddp / "model.safetensors")[0]
    b = read_safetensors(one / "model.safetensors")[0]
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max |w_ddp - w_one| = {diff:.2e}")
    assert diff < 1e-5
    m_ddp = json.loads((ddp / "metrics.json").read_text())
    m_one = json.loads((one / "metrics.json").read_text())
    for key in ("train_loss", "val_loss"):  # all-reduced / full-set metrics agree too
        assert m_ddp["final"][key] == pytest.approx(m_one["final"][key], abs=1e-5)
    assert m_ddp["test"]["n"] == m_one["test"]["n"] == 24
