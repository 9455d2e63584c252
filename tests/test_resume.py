"""Runs survive faults: a training process killed with SIGKILL mid-epoch resumes to the
bit-identical result of an uninterrupted run; damaged checkpoints fall back or are refused;
changed settings or data are refused; a full disk or a read-only folder is a clear error
that loses nothing, before training or at the failing write."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_helpers import bars_dataset, write_bars_folder

from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, train
from cnnlab.train.checkpoint import read_safetensors
from cnnlab.train.resume import KILL_ENV, RunState, resume_config

TIMING = ("seconds", "images_per_s")  # history columns that measure the machine, not the run


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path)[0]


def _assert_same_tensors(a: Path, b: Path, *, skip: tuple[str, ...] = ()) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        if not k.startswith(skip):
            assert torch.equal(ta[k], tb[k]), f"{a.name}: {k} differs"


def _history(run: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((run / "history.csv").open()))
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _quiet(_msg: str) -> None:
    pass


# --- a real SIGKILL ---------------------------------------------------------------------

RECIPE = [  # every piece of state a resume must bring back: EMA, schedule, augmentation
    *("--model", "seed-mnist", "--epochs", "4", "--batch-size", "16", "--val-split", "0.2"),
    *("--schedule", "onecycle", "--ema", "0.9", "--augment", "digits"),
    *("--label-smoothing", "0.1", "--threads", "1", "--quiet"),
]
STEPS_PER_EPOCH = 4  # 76 training images // batch 16


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path: Path, cli) -> None:
    data = write_bars_folder(tmp_path / "bars", n_per_class=40, size=16)
    full, part = tmp_path / "full", tmp_path / "part"
    kill_at = 2 * STEPS_PER_EPOCH + 2  # the middle of epoch 3
    ref = _start("train", "--data", str(data), *RECIPE, "--out", str(full))  # side by side
    killed = _start(
        "train", "--data", str(data), *RECIPE, "--out", str(part), env={KILL_ENV: str(kill_at)}
    )
    assert killed.wait(timeout=300) == -signal.SIGKILL, killed.communicate()[1]
    assert ref.wait(timeout=300) == 0, ref.communicate()[1]
    assert not (part / "metrics.json").exists()
    assert len(_history(part)) == 2
    meta = read_safetensors(part / "last.safetensors")[1]
    assert json.loads(meta["cnnlab_train_state"])["epoch"] == 2
    assert not [p.name for p in part.iterdir() if p.name.startswith(".")]  # no temp files

    r = cli("train", "--resume", str(part), "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert f"resuming {part} after epoch 2 of 4" in r.stderr
    _assert_same_tensors(full / "model.safetensors", part / "model.safetensors")
    _assert_same_tensors(full / "last.safetensors", part / "last.safetensors")  # + Adam, EMA
    assert _history(full) == _history(part)
    m_full = json.loads((full / "metrics.json").read_text())
    m_part = json.loads((part / "metrics.json").read_text())
    assert m_full["test"] == m_part["test"] and m_full["best_epoch"] == m_part["best_epoch"]


# --- in-process interruptions -----------------------------------------------------------


def _cfg(out: Path, epochs: int = 4, **kw) -> TrainConfig:
    return TrainConfig(
        data="synthetic",
        model="seed-mnist",
        epochs=epochs,
        batch_size=16,
        val_split=0.2,
        ema=0.9,
        out=str(out),
        device="cpu",
        threads=1,
        **kw,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 4-epoch run to compare against."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(_cfg(out), bars_dataset(120, 12), progress=False, log=_quiet)
    return out


def test_a_corrupted_last_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, reference: Path
) -> None:
    """3 epochs, then epoch 3's checkpoint is damaged: resume from epoch 2, end identical."""
    out = tmp_path / "run"
    train(_cfg(out, epochs=3), bars_dataset(120, 12), progress=False, log=_quiet)
    last = out / "last.safetensors"
    raw = bytearray(last.read_bytes())
    raw[-5] ^= 0x10
    last.write_bytes(bytes(raw))
    logs: list[str] = []
    cfg = resume_config(out, epochs=4, threads=1)
    train(cfg, bars_dataset(120, 12), progress=False, log=logs.append, resume=True)
    assert any("cannot resume from last.safetensors" in m and "corrupted" in m for m in logs)
    assert any("resuming from previous.safetensors (epoch 2)" in m for m in logs)
    _assert_same_tensors(reference / "model.safetensors", out / "model.safetensors")
    assert _history(reference) == _history(out)


def test_truncated_checkpoints_are_refused(tmp_path: Path, cli) -> None:
    out = tmp_path / "run"
    train(_cfg(out, epochs=2), bars_dataset(120, 12), progress=False, log=_quiet)
    for name in ("last.safetensors", "previous.safetensors"):
        f = out / name
        f.write_bytes(f.read_bytes()[:1000])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CnnlabError, match=r"no intact checkpoint .*not a readable"):
        train(resume_config(out, epochs=3), bars_dataset(120, 12), log=_quiet, resume=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing overwritten


def test_killed_in_epoch_one_starts_over(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(out, epochs=1), bars_dataset(120, 12), progress=False, log=_quiet)
    for name in ("last.safetensors", "previous.safetensors", "metrics.json", "history.csv"):
        (out / name).unlink(missing_ok=True)  # as if killed before epoch 1 ended
    logs: list[str] = []
    train(resume_config(out, epochs=4), bars_dataset(120, 12), log=logs.append, resume=True)
    assert any("no checkpoint yet" in m for m in logs)
    _assert_same_tensors(reference / "model.safetensors", out / "model.safetensors")


def test_resume_refuses_changed_settings_and_data(tmp_path: Path, cli) -> None:
    out = tmp_path / "run"
    train(_cfg(out, epochs=2), bars_dataset(120, 12), progress=False, log=_quiet)
    with pytest.raises(CnnlabError, match=r"--lr 0\.5 differs from the run's 0\.001"):
        resume_config(out, lr=0.5)
    with pytest.raises(CnnlabError, match=r"already finished its 2 epoch\(s\); pass --epochs"):
        train(resume_config(out), bars_dataset(120, 12), log=_quiet, resume=True)
    other = bars_dataset(120, 12, seed=1)  # same file names and split, other pixels
    with pytest.raises(CnnlabError, match="training images differ"):
        train(resume_config(out, epochs=3), other, log=_quiet, resume=True)
    r = cli("train", "--resume", str(out), "--batch-size", "8")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"cnnlab: error: {out}: --batch-size 8 differs from the run's 16: a resumed run keeps "
        "its settings (only --epochs, --patience, --device, --threads may change); start a new "
        "run for other settings"
    ]
    with pytest.raises(CnnlabError, match=r"no config\.json"):
        resume_config(tmp_path / "nope")


def test_extending_a_finished_run_with_constant_lr_equals_a_longer_run(
    tmp_path: Path, reference: Path
) -> None:
    out = tmp_path / "run"
    train(_cfg(out, epochs=2), bars_dataset(120, 12), progress=False, log=_quiet)
    train(resume_config(out, epochs=4), bars_dataset(120, 12), log=_quiet, resume=True)
    _assert_same_tensors(reference / "model.safetensors", out / "model.safetensors")
    _assert_same_tensors(reference / "last.safetensors", out / "last.safetensors")


# --- full disk, read-only folder --------------------------------------------------------


def test_disk_full_at_epoch_three_keeps_epoch_two_and_resumes(
    tmp_path: Path, reference: Path, monkeypatch
) -> None:
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def fill_up(tensors, filename, metadata=None):
        if "cnnlab_train_state" in (metadata or {}):
            calls["n"] += 1
            if calls["n"] == 3:  # epoch 3's checkpoint: half written, then the disk is full
                real(tensors, filename, metadata=metadata)
                Path(filename).write_bytes(Path(filename).read_bytes()[:500])
                raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", fill_up)
    out = tmp_path / "run"
    with pytest.raises(CnnlabError) as info:
        train(_cfg(out), bars_dataset(120, 12), progress=False, log=_quiet)
    msg = str(info.value)
    assert "last.safetensors: cannot write checkpoint (No space left on device)" in msg
    assert f"cnnlab train --resume {out}" in msg
    state = json.loads(read_safetensors(out / "last.safetensors")[1]["cnnlab_train_state"])
    assert state["epoch"] == 2 and len(_history(out)) == 2
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]

    monkeypatch.setattr(safetensors.torch, "save_file", real)  # space freed
    train(resume_config(out), bars_dataset(120, 12), log=_quiet, resume=True)
    _assert_same_tensors(reference / "model.safetensors", out / "model.safetensors")


def test_too_little_free_space_stops_before_training(tmp_path: Path, monkeypatch) -> None:
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=10_000))
    out = tmp_path / "run"
    with pytest.raises(CnnlabError, match=r"run: not enough free disk space .*0\.0 MB free"):
        train(_cfg(out), bars_dataset(120, 12), progress=False, log=_quiet)
    assert list(out.iterdir()) == []  # nothing trained, nothing written


def test_a_folder_turned_read_only_mid_run_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    import cnnlab.train.run as run_mod

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(run_mod, "write_text", read_only)  # history.csv, after epoch 1
    out = tmp_path / "run"
    with pytest.raises(CnnlabError, match=r"cannot write the run folder \(Read-only file system"):
        train(_cfg(out), bars_dataset(120, 12), progress=False, log=_quiet)
    assert (
        RunState.from_json(
            read_safetensors(out / "last.safetensors")[1]["cnnlab_train_state"]
        ).epoch
        == 1
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_training(tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(CnnlabError, match="cannot write the run folder"):
            train(_cfg(out), bars_dataset(120, 12), progress=False, log=_quiet)
    finally:
        out.chmod(0o755)
