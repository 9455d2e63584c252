"""Checkpoints survive faults: checksums catch damage, writes are atomic, the previous good
checkpoint is kept, a full disk is an error that loses nothing, and the training state
round-trips exactly."""

from __future__ import annotations

import errno
import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.train.checkpoint import (
    CHECKSUM_KEY,
    META_KEY,
    check_free_space,
    disk_bytes_needed,
    load_model,
    model_meta,
    read_safetensors,
    save_last,
    save_model,
)
from cnnlab.train.resume import RunState, load_checkpoint, restore, save_checkpoint

ST_DTYPES = {"F32": "torch.float32", "I64": "torch.int64", "U8": "torch.uint8"}


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("seed-mnist", num_classes=3, image_size=(12, 12))


def _meta() -> dict:
    kwargs = {"in_channels": 1, "num_classes": 3, "image_size": [12, 12]}
    return model_meta("seed-mnist", kwargs, ["aa", "bb", "cc"])


def _trained(
    steps: int = 2, seed: int = 0, *, channels_last: bool = False
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _model(seed)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7, fused=True)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(8, 1, 12, 12, generator=g)
        y = torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def _parse(path: Path) -> tuple[dict, bytes]:
    """The safetensors header and data section, read by hand from the format's spec."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_checksum_covers_every_tensor_and_metadata_entry(tmp_path: Path) -> None:
    """Recompute the stored sha256 from the raw file (format spec), not through cnnlab."""
    path = save_model(tmp_path / "m.safetensors", _model(), _meta())
    header, data = _parse(path)
    meta = header.pop("__metadata__")
    h = hashlib.sha256()
    for key in sorted(header):
        info = header[key]
        start, end = info["data_offsets"]
        h.update(f"tensor\0{key}\0{ST_DTYPES[info['dtype']]}\0{info['shape']}\0".encode())
        h.update(data[start:end])
    for key in sorted(k for k in meta if k != CHECKSUM_KEY):
        h.update(f"meta\0{key}\0{meta[key]}\0".encode())
    assert meta[CHECKSUM_KEY] == h.hexdigest()
    assert len(header) == len(_model().state_dict())


def test_a_flipped_weight_byte_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = save_model(tmp_path / "m.safetensors", _model(), _meta())
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x40  # one bit of the last weight
    path.write_bytes(bytes(raw))
    load_file(path)  # safetensors alone does not notice
    with pytest.raises(CnnlabError, match=r"m\.safetensors: corrupted .*sha256"):
        read_safetensors(path)
    with pytest.raises(CnnlabError, match="corrupted"):
        load_model(path)


def test_edited_metadata_is_refused(tmp_path: Path) -> None:
    path = save_model(tmp_path / "m.safetensors", _model(), _meta())
    raw = path.read_bytes()
    assert raw.count(b'\\"bb\\"') == 1  # the class name inside the embedded model JSON
    path.write_bytes(raw.replace(b'\\"bb\\"', b'\\"zz\\"'))  # same length: header still parses
    assert json.loads(_parse(path)[0]["__metadata__"][META_KEY])["class_names"][1] == "zz"
    with pytest.raises(CnnlabError, match="corrupted"):
        load_model(path)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_truncated_checkpoint_is_refused(tmp_path: Path, keep: float) -> None:
    model, opt = _trained()
    path = save_last(tmp_path / "last.safetensors", model, opt, _meta(), epoch=1)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(CnnlabError, match=r"last\.safetensors: not a readable"):
        read_safetensors(path)


def test_the_previous_checkpoint_is_kept(tmp_path: Path) -> None:
    model, opt = _trained(1)
    save_last(tmp_path / "last.safetensors", model, opt, _meta(), epoch=1)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    model, opt = _trained(3)
    save_last(tmp_path / "last.safetensors", model, opt, _meta(), epoch=2)
    prev, prev_meta = read_safetensors(tmp_path / "previous.safetensors")
    last, last_meta = read_safetensors(tmp_path / "last.safetensors")
    assert json.loads(prev_meta["cnnlab_optimizer"])["epoch"] == 1
    assert json.loads(last_meta["cnnlab_optimizer"])["epoch"] == 2
    assert all(torch.equal(prev[f"model.{k}"], v) for k, v in first.items())
    assert not torch.equal(prev["model.fc2.weight"], last["model.fc2.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.safetensors",
        "previous.safetensors",
    ]


def test_disk_full_mid_write_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC after half the bytes: an error naming the file; earlier files are untouched."""
    import safetensors.torch

    model, opt = _trained(1)
    save_last(tmp_path / "last.safetensors", model, opt, _meta(), epoch=1)
    save_last(tmp_path / "last.safetensors", model, opt, _meta(), epoch=2)
    save_model(tmp_path / "model.safetensors", model, _meta())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    model, opt = _trained(3)
    with pytest.raises(CnnlabError, match=r"last\.safetensors: cannot write checkpoint \(No space"):
        save_last(tmp_path / "last.safetensors", model, opt, _meta(), epoch=3)
    with pytest.raises(CnnlabError, match=r"model\.safetensors: cannot write model \(No space"):
        save_model(tmp_path / "model.safetensors", model, _meta())
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # no temporary file left, nothing replaced
    read_safetensors(tmp_path / "last.safetensors")  # still intact


def test_free_space_is_checked_against_the_model_size(tmp_path: Path, monkeypatch) -> None:
    import shutil

    model = _model()
    params = sum(p.numel() for p in model.parameters()) * 4  # float32 bytes
    need = disk_bytes_needed(model)
    assert 9 * params < need < 12 * params + 2**21
    check_free_space(tmp_path, 1)  # this disk has a byte to spare
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=need - 1))
    with pytest.raises(CnnlabError, match=r"not enough free disk space .* MB needed"):
        check_free_space(tmp_path, need)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_training_state_round_trips_exactly(tmp_path: Path, channels_last: bool) -> None:
    """Restore into fresh objects, then one more step on both: bit-identical weights, EMA
    and random stream. (channels_last: torch's fused CPU Adam goes wrong when a restored
    moment's layout differs from its parameter's; load_optimizer_state aligns them.)"""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model, opt = _trained(3, channels_last=channels_last)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ema.update_parameters(model)
    torch.manual_seed(123)
    state = RunState(epoch=4, best_epoch=3, bad_epochs=1, history=[{"epoch": 1}])
    save_checkpoint(tmp_path / "last.safetensors", model, opt, _meta(), state, ema=ema)
    expect_rand = torch.rand(4)

    model2 = _model(seed=9)
    if channels_last:
        model2 = model2.to(memory_format=torch.channels_last)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3, eps=1e-7, fused=True)
    ema2 = AveragedModel(model2, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    torch.manual_seed(0)
    ckpt = load_checkpoint(tmp_path, log=lambda _m: None)
    assert ckpt is not None
    assert restore(ckpt, model2, opt2, ema=ema2) == state
    assert torch.equal(torch.rand(4), expect_rand)
    x, y = torch.rand(8, 1, 12, 12), torch.randint(0, 3, (8,))
    for m, o, e in ((model, opt, ema), (model2, opt2, ema2)):
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        o.step()
        e.update_parameters(m)
    for a, b in ((model, model2), (ema, ema2)):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(va, vb), k


def test_run_state_survives_json_and_reads_older_checkpoints() -> None:
    s = RunState(epoch=1)
    assert RunState.from_json(s.to_json()) == s
    # checkpoints written before best_loss became derivable from history still load
    old = json.dumps({**json.loads(s.to_json()), "best_loss": None})
    assert RunState.from_json(old) == s


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    model, opt = _trained(1)
    for epoch in (1, 2):
        save_checkpoint(tmp_path / "last.safetensors", model, opt, _meta(), RunState(epoch=epoch))
    last = tmp_path / "last.safetensors"
    last.write_bytes(last.read_bytes()[:-100])  # truncated
    logs: list[str] = []
    ckpt = load_checkpoint(tmp_path, log=logs.append)
    assert ckpt is not None and ckpt.state.epoch == 1
    assert ckpt.path.name == "previous.safetensors"
    assert "cannot resume from last.safetensors" in logs[0] and "epoch 1" in logs[1]
    prev = tmp_path / "previous.safetensors"
    raw = bytearray(prev.read_bytes())
    raw[-1] ^= 1
    prev.write_bytes(bytes(raw))
    with pytest.raises(CnnlabError, match=r"no intact checkpoint.*corrupted"):
        load_checkpoint(tmp_path, log=logs.append)
    assert load_checkpoint(tmp_path / "nothing-here", log=logs.append) is None


def test_metadata_updates_get_a_fresh_checksum(tmp_path: Path) -> None:
    """update_model_meta (calibration) rewrites the JSON: the file must still verify."""
    from cnnlab.train.checkpoint import update_model_meta

    path = save_model(tmp_path / "model.safetensors", _model(), _meta())
    old = read_safetensors(path)[1][CHECKSUM_KEY]
    update_model_meta(path, calibration={"temperature": 1.5})
    _, meta = read_safetensors(path)  # verifies
    assert meta[CHECKSUM_KEY] != old
    assert json.loads(meta[META_KEY])["calibration"] == {"temperature": 1.5}
