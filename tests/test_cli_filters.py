"""`cnnlab filter`, `kernels`, `convolve` through a subprocess, on generated images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.signal
from PIL import Image

from cnnlab.images import read_image


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(arr).save(path)
    return path, arr


def test_convolve_steps_notes_example(cli):
    r = cli("convolve", "--signal", "1,3,2,3,0,1,5,4", "--kernel", "1,3,0,-1", "--steps")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[-1] for ln in lines[2:7]] == ["8", "6", "-1", "5", "19"]
    assert lines[-1].split() == ["8", "6", "-1", "5", "19"]


def test_convolve_2d_json_and_correlate(cli, tmp_path):
    img = "3,0,1,2,7;1,5,8,9,3;2,7,2,5,1;0,1,3,1,7;4,2,1,6,2"
    (tmp_path / "k.txt").write_text("1 2 0\n-1 3 4\n5 -2 6\n")
    k = np.loadtxt(tmp_path / "k.txt")
    x = np.array([[float(v) for v in row.split(",")] for row in img.split(";")])
    for extra, ref in (([], scipy.signal.convolve2d), (["--correlate"], scipy.signal.correlate2d)):
        r = cli(
            "convolve",
            "--signal",
            img,
            "--kernel",
            str(tmp_path / "k.txt"),
            "--steps",
            "--json",
            *extra,
        )
        assert r.returncode == 0, r.stderr
        obj = json.loads(r.stdout)
        np.testing.assert_array_equal(obj["result"], ref(x, k, "valid"))
        assert len(obj["steps"]) == 9 and obj["steps"][0]["sum"] == obj["result"][0][0]


def test_kernels_list_and_json(cli):
    r = cli("kernels", "--json")
    assert r.returncode == 0, r.stderr
    names = {k["name"] for k in json.loads(r.stdout)}
    assert {"edge-horizontal", "sobel-magnitude", "gaussian"} <= names
    r = cli("kernels", "sharpen")
    assert r.returncode == 0 and "9" in r.stdout


def test_filter_writes_images_raw_and_gallery(cli, image, tmp_path):
    path, arr = image
    out = tmp_path / "out"
    r = cli(
        "filter",
        str(path),
        "--kernel",
        "edge-vertical",
        "--kernel",
        "gaussian:5:1.0",
        "-o",
        str(out),
        "--raw",
        "--gallery",
        str(tmp_path / "g.png"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert len(summary["results"]) == 2 and (tmp_path / "g.png").exists()
    raw = np.load(out / "in_edge-vertical.npy", allow_pickle=False)
    want = scipy.signal.convolve2d(
        arr.astype(float), [[1, 1, 1], [0, 0, 0], [-1, -1, -1]], "same", boundary="symm"
    )
    np.testing.assert_allclose(raw, want)
    shown = read_image(out / "in_edge-vertical.png")
    np.testing.assert_array_equal(shown, np.round(np.clip(want, 0, None) * 255 / want.max()))


def test_filter_sample_valid_mode(cli, tmp_path):
    r = cli(
        "filter", "--sample", "--kernel", "box:5", "--mode", "valid", "-o", str(tmp_path / "b.png")
    )
    assert r.returncode == 0, r.stderr
    assert read_image(tmp_path / "b.png").shape == (252, 252)


def _assert_clean_failure(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1, err
    assert err.startswith("cnnlab: error:")
    for n in needles:
        assert n in err, err


def test_bad_inputs_exit_2_and_write_nothing(cli, image, tmp_path):
    path, _ = image
    out = tmp_path / "out"
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(path.read_bytes()[:60])
    (tmp_path / "nan.txt").write_text("1,2\nnan,4\n")
    (tmp_path / "word.csv").write_text("1,2\nabc,4\n")
    (tmp_path / "empty.txt").write_text("")
    np.save(tmp_path / "k3.npy", np.ones((2, 2, 2)))
    cases = [
        ([str(tmp_path / "missing.png"), "-k", "box"], ["missing.png", "no such file"]),
        ([str(trunc), "-k", "box"], ["trunc.png", "truncated"]),
        ([str(path), "-k", "box", "-k", str(tmp_path / "nan.txt")], ["nan.txt", "NaN"]),
        ([str(path), "-k", str(tmp_path / "word.csv")], ["word.csv", "'abc' is not a number"]),
        ([str(path), "-k", str(tmp_path / "empty.txt")], ["empty.txt", "empty"]),
        ([str(path), "-k", str(tmp_path / "k3.npy")], ["k3.npy", "3 dimensions"]),
        ([str(path), "-k", "nosuch"], ["unknown kernel"]),
        (["--sample", str(path), "-k", "box"], ["exactly one"]),
    ]
    for args, needles in cases:
        r = cli("filter", *args, "-o", str(out), "--gallery", str(tmp_path / "g.png"))
        _assert_clean_failure(r, *needles)
    assert not out.exists() and not (tmp_path / "g.png").exists()
    r = cli("convolve", "--signal", "1,2,3", "--kernel", "1,2;3,4")
    _assert_clean_failure(r, "more than the signal")


def test_bad_signal_is_named_as_signal(cli):
    r = cli("convolve", "--signal", "1,2,nan", "--kernel", "1,2")
    assert r.returncode == 2
    assert r.stderr.strip() == "cnnlab: error: signal '1,2,nan': signal has NaN or infinite entries"


def test_steps_accept_a_row_kernel_on_a_2d_signal(cli):
    """A 1-D kernel slides along the rows of a 2-D signal, as in scipy.signal.convolve."""
    import scipy.signal

    r = cli("convolve", "--signal", "1,2,3;4,5,6", "--kernel", "1,2,3", "--steps", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    want = scipy.signal.convolve(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[1, 2, 3]]), "valid")
    assert out["result"] == want.tolist()
    assert [s["sum"] for s in out["steps"]] == want.ravel().tolist()


def test_signal_file_errors_keep_the_path(cli, tmp_path):
    missing = tmp_path / "my_kernels" / "sig.txt"
    r = cli("convolve", "--signal", str(missing), "--kernel", "1,2")
    assert r.returncode == 2
    assert r.stderr.strip() == f"cnnlab: error: {missing}: no such signal file"
