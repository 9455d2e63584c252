"""The shared plumbing: atomic writes, image decoding errors, preprocessing, the CLI shell."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnlab.atomic import atomic_open, write_json
from cnnlab.data.preprocess import to_model_input
from cnnlab.errors import CnnlabError
from cnnlab.images import read_image, write_image


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("boom")
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os

    write_json(tmp_path / "p.json", {})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert os.stat(tmp_path / "p.json").st_mode & 0o777 == os.stat(plain).st_mode & 0o777


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_read_image_modes(tmp_path, mode):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    if mode == "I;16":
        img = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode == "L":
        img = Image.fromarray(gray)
    else:
        img = Image.fromarray(np.stack([gray] * 3, axis=2)).convert(mode)
    path = tmp_path / "x.png"
    img.save(path)
    arr = read_image(path, mode="L")
    assert arr.shape == (9, 7) and arr.dtype == np.uint8
    if mode in ("L", "I;16", "RGB", "RGBA"):
        np.testing.assert_array_equal(arr, gray)
    kept = read_image(path)
    assert kept.dtype == (np.uint16 if mode == "I;16" else np.uint8)


def test_read_image_errors(tmp_path):
    with pytest.raises(CnnlabError, match="no such file"):
        read_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(CnnlabError, match=r"bad\.png: not an image"):
        read_image(bad)
    good = tmp_path / "t.jpg"
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(good)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CnnlabError, match=r"trunc\.jpg: unreadable or truncated"):
        read_image(trunc)


def test_write_image_roundtrip(tmp_path):
    arr = np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000
    write_image(tmp_path / "a.png", arr)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), arr)


def test_to_model_input_channels_and_size():
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[..., 0] = 255
    out = to_model_input(rgb, 1, (5, 10))
    assert out.shape == (1, 5, 10) and out.dtype == np.uint8
    assert int(out[0, 2, 5]) == 76  # ITU-R 601 luma of pure red: 0.299 * 255
    assert to_model_input(out[0], 3, None).shape == (3, 5, 10)


def test_cli_without_command_prints_help(cli):
    r = cli()
    assert r.returncode == 2 and "examples:" in r.stdout


def _console(*args: str, env: dict[str, str] | None = None):
    """The console script's entry in a child process, with an atexit hook that says whether
    the interpreter's teardown ran."""
    import os
    import subprocess
    import sys

    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('teardown ran\\n'))\n"
        f"sys.argv = ['cnnlab', *{list(args)!r}]\n"
        "from cnnlab.cli import console\n"
        "console()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_console_script_exits_fast_with_its_output_and_exit_code():
    """`cnnlab`'s console script skips the interpreter's teardown (no atexit hook runs) yet
    delivers all its output and main()'s exit code; CNNLAB_FAST_EXIT=0 exits normally."""
    from cnnlab.filters.bank import list_kernels

    fast = _console("kernels")
    assert fast.returncode == 0 and "teardown ran" not in fast.stderr
    lines = fast.stdout.splitlines()
    assert len(lines) == len(list_kernels()) and lines[0].startswith("edge-horizontal")
    bad = _console("convolve", "--signal", "1,x", "--kernel", "1")
    assert bad.returncode == 2 and "teardown ran" not in bad.stderr
    assert bad.stderr.strip() == "cnnlab: error: signal '1,x': entry 'x' is not a number"
    slow = _console("kernels", env={"CNNLAB_FAST_EXIT": "0"})
    assert slow.returncode == 0 and slow.stdout == fast.stdout
    assert "teardown ran" in slow.stderr
