"""cnnlab.filters: the kernel bank, image filtering against scipy, display scaling, files."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.errors import CnnlabError
from cnnlab.filters import (
    BANK,
    demo_gallery,
    filter_file,
    filter_image,
    get_kernel,
    list_kernels,
    load_kernel_file,
    sample_image,
    sobel_magnitude,
    to_display,
)
from cnnlab.images import read_image

SCIPY_BOUNDARY = {"fill": "fill", "reflect": "symm", "wrap": "wrap"}


def distinct_kernel(shape, rng):
    n = int(np.prod(shape))
    return (rng.permutation(np.arange(1, n + 1)) * rng.choice([-1, 1], n)).reshape(shape) / n


# -- the bank ----------------------------------------------------------------------------------


def test_notes_kernels_exactly():
    np.testing.assert_array_equal(get_kernel("edge-horizontal").weights, [[1, 0, -1]] * 3)
    np.testing.assert_array_equal(
        get_kernel("edge-vertical").weights, [[1, 1, 1], [0, 0, 0], [-1, -1, -1]]
    )
    np.testing.assert_array_equal(get_kernel("box").weights, np.ones([5, 5]) / 25)
    np.testing.assert_array_equal(
        get_kernel("sharpen").weights, [[-1, -1, -1], [-1, 9, -1], [-1, -1, -1]]
    )
    assert "vertical edges" in BANK["edge-horizontal"].description


def test_every_bank_entry_builds_and_is_described():
    rows = list_kernels()
    names = {r["name"] for r in rows}
    assert {
        "edge-horizontal",
        "edge-vertical",
        "box",
        "sharpen",
        "sobel-x",
        "sobel-y",
        "prewitt-x",
        "prewitt-y",
        "laplacian",
        "gaussian",
        "emboss",
        "identity",
        "sobel-magnitude",
    } <= names
    for r in rows:
        assert r["description"]
        if r["kind"] == "kernel":
            w = get_kernel(r["name"]).weights
            assert w.ndim == 2 and np.isfinite(w).all() and list(w.shape) == r["shape"]


def test_parametrised_kernels():
    assert get_kernel("box:7").weights.shape == (7, 7)
    g = get_kernel("gaussian:9:2.0").weights
    d = np.arange(9) - 4
    want = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * 2.0**2))
    np.testing.assert_allclose(g, want / want.sum())
    np.testing.assert_array_equal(
        get_kernel("laplacian:8").weights, [[1, 1, 1], [1, -8, 1], [1, 1, 1]]
    )
    np.testing.assert_array_equal(
        get_kernel("laplacian").weights, [[0, 1, 0], [1, -4, 1], [0, 1, 0]]
    )
    for bad, msg in [
        ("laplacian:6", "4 or 8"),
        ("box:0", "between"),
        ("gaussian:5:-1", "sigma"),
        ("box:3:4", "at most 1"),
        ("box:x", "not a number"),
        ("nosuch", "unknown kernel"),
    ]:
        with pytest.raises(CnnlabError, match=msg):
            get_kernel(bad)


def test_sobel_signs_on_ramps():
    ramp_x = np.tile(np.arange(8.0), (8, 1))  # brighter to the right
    assert (filter_image(ramp_x, "sobel-x", mode="valid") > 0).all()
    assert (filter_image(ramp_x, "prewitt-x", mode="valid") == 6).all()
    assert (filter_image(ramp_x, "sobel-y", mode="valid") == 0).all()
    assert (filter_image(ramp_x.T, "sobel-y", mode="valid") == 8).all()
    assert (filter_image(ramp_x, "laplacian", mode="valid") == 0).all()  # linear: no curvature
    np.testing.assert_array_equal(filter_image(ramp_x, "identity"), ramp_x)


def test_user_kernels_inline_text_csv_npy(tmp_path):
    want = np.array([[1.0, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(get_kernel("1,2,3;4,5,6").weights, want)
    np.testing.assert_array_equal(get_kernel("1 2 3; 4 5 6").weights, want)
    (tmp_path / "k.txt").write_text("# my kernel\n1 2 3\n4 5 6\n")
    (tmp_path / "k.csv").write_text("1,2,3\n4,5,6\n")
    np.save(tmp_path / "k.npy", want)
    for name in ("k.txt", "k.csv", "k.npy"):
        k = get_kernel(str(tmp_path / name))
        np.testing.assert_array_equal(k.weights, want)
        assert k.name == "k"
    np.testing.assert_array_equal(get_kernel("1,0,-1").weights, [1, 0, -1])


@pytest.mark.parametrize(
    "content, msg",
    [
        ("1,2\n3,nan\n", "NaN or infinite"),
        ("1,2\n3,x\n", "'x' is not a number"),
        ("1,2\n3\n", "different lengths"),
        ("\n# nothing\n", "empty kernel"),
    ],
)
def test_bad_kernel_text_files_name_the_file(tmp_path, content, msg):
    p = tmp_path / "bad.txt"
    p.write_text(content)
    with pytest.raises(CnnlabError, match=msg) as e:
        get_kernel(str(p))
    assert str(e.value).startswith(str(p))


def test_bad_kernel_npy_files(tmp_path):
    np.save(tmp_path / "k3.npy", np.ones((2, 2, 2)))
    with pytest.raises(CnnlabError, match="3 dimensions"):
        load_kernel_file(tmp_path / "k3.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CnnlabError, match=r"obj\.npy: not a readable \.npy"):
        load_kernel_file(tmp_path / "obj.npy")  # never unpickled
    (tmp_path / "trunc.npy").write_bytes(b"\x93NUMPY\x01\x00")
    with pytest.raises(CnnlabError, match=r"trunc\.npy"):
        load_kernel_file(tmp_path / "trunc.npy")
    with pytest.raises(CnnlabError, match="no such kernel file"):
        get_kernel(str(tmp_path / "missing.npy"))
    with pytest.raises(CnnlabError, match="NaN"):
        get_kernel("1,nan;0,1")
    with pytest.raises(CnnlabError, match="operation"):
        get_kernel("sobel-magnitude")


# -- filtering against scipy -------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(st.integers(6, 20), st.integers(6, 20)),
    st.tuples(st.integers(1, 6), st.integers(1, 6)),
    st.sampled_from(["same", "full", "valid"]),
    st.sampled_from(["fill", "reflect", "wrap"]),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_filter_image_matches_scipy_convolve2d(shape, ks, mode, boundary, rgb, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*shape, 3) if rgb else shape).astype(np.uint8)
    k = distinct_kernel(ks, rng)
    got = filter_image(img, k, mode=mode, boundary=boundary)
    planes = [img[..., c] for c in range(3)] if rgb else [img]
    want = [
        scipy.signal.convolve2d(p.astype(float), k, mode, boundary=SCIPY_BOUNDARY[boundary])
        for p in planes
    ]
    want = np.stack(want, axis=2) if rgb else want[0]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize(
    "ndimage_mode, boundary", [("reflect", "reflect"), ("wrap", "wrap"), ("constant", "fill")]
)
def test_same_mode_odd_kernel_matches_ndimage(ndimage_mode, boundary):
    rng = np.random.default_rng(3)
    img = rng.standard_normal((40, 33))
    k = distinct_kernel((5, 3), rng)
    want = scipy.ndimage.convolve(img, k, mode=ndimage_mode)
    np.testing.assert_allclose(filter_image(img, k, boundary=boundary), want, atol=1e-10)


def test_large_kernel_fft_path_matches_scipy():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (150, 140)).astype(np.uint8)
    k = distinct_kernel((15, 15), rng)
    got = filter_image(img, k, boundary="reflect")
    want = scipy.signal.convolve2d(img.astype(float), k, "same", boundary="symm")
    np.testing.assert_allclose(got, want, atol=1e-8 * np.abs(want).max())


def test_sobel_magnitude_matches_ndimage():
    img = sample_image(64).astype(float)
    want = np.hypot(
        scipy.ndimage.sobel(img, axis=1, mode="reflect"),
        scipy.ndimage.sobel(img, axis=0, mode="reflect"),
    )
    np.testing.assert_allclose(sobel_magnitude(img), want, atol=1e-9)


def test_filter_errors():
    with pytest.raises(CnnlabError, match="larger than the image"):
        filter_image(np.zeros((4, 4)), "box:5", mode="valid")
    with pytest.raises(CnnlabError, match="non-empty"):
        filter_image(np.zeros((0, 4)), "box")
    with pytest.raises(CnnlabError, match="unknown boundary"):
        filter_image(np.zeros((4, 4)), "box:3", boundary="mirror")


def test_to_display_scalings():
    raw = np.array([[-12.0, 0.0], [51.0, 100.0]])
    # by hand: clip 51 * 255 / 100 = 130.05; minmax (51 + 12) * 255 / 112 = 143.4; abs 12 -> 30.6
    np.testing.assert_array_equal(to_display(raw, "clip"), [[0, 0], [130, 255]])
    np.testing.assert_array_equal(to_display(raw, "minmax"), [[0, 27], [143, 255]])
    np.testing.assert_array_equal(to_display(raw, "abs"), [[31, 0], [130, 255]])
    np.testing.assert_array_equal(to_display(raw, "none"), [[0, 0], [51, 100]])
    np.testing.assert_array_equal(to_display(raw, "clip", np.uint16), [[0, 0], [33423, 65535]])
    assert (to_display(np.full((2, 2), -3.0), "clip") == 0).all()  # no division by zero


# -- files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, mode",
    [
        (".png", "L"),
        (".png", "I;16"),
        (".jpg", "L"),
        (".bmp", "RGB"),
        (".tif", "L"),
        (".tif", "RGB"),
    ],
)
def test_filter_file_formats(tmp_path, suffix, mode):
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, (30, 24), dtype=np.uint8)
    if mode == "I;16":
        img = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode == "RGB":
        img = Image.fromarray(np.stack([gray, 255 - gray, gray // 2], axis=2))
    else:
        img = Image.fromarray(gray)
    src = tmp_path / f"in{suffix}"
    img.save(src)
    arr = read_image(src)
    summary = filter_file(
        src, ["sobel-x", "box:3"], out=tmp_path / "out", raw=True, gallery=tmp_path / "g.png"
    )
    assert [r["kernel"] for r in summary["results"]] == ["sobel-x", "box:3"]
    out = read_image(tmp_path / "out" / "in_sobel-x.png")
    assert out.dtype == (np.uint16 if mode == "I;16" else np.uint8) and out.shape == arr.shape
    raw = np.load(tmp_path / "out" / "in_sobel-x.npy", allow_pickle=False)
    np.testing.assert_allclose(raw, filter_image(arr, "sobel-x"))
    np.testing.assert_array_equal(out, to_display(raw, "clip", out.dtype))
    assert (tmp_path / "g.png").stat().st_size > 0


def test_filter_file_naming(tmp_path):
    s = filter_file(None, ["box:3"], out=tmp_path / "one.png")
    assert s["results"][0]["outputs"] == [str(tmp_path / "one.png")]
    s = filter_file(None, ["box:3", "laplacian:8"], out=tmp_path / "many.png")
    assert [r["outputs"][0] for r in s["results"]] == [
        str(tmp_path / "many_box-3.png"),
        str(tmp_path / "many_laplacian-8.png"),
    ]


def test_failing_run_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CnnlabError, match="not a number"):
        filter_file(None, ["sobel-x", "1,x"], out=out, gallery=tmp_path / "g.png")
    assert not out.exists() and not (tmp_path / "g.png").exists()


def test_sample_image_and_demo_gallery(tmp_path):
    a, b = sample_image(), sample_image()
    np.testing.assert_array_equal(a, b)
    assert a.shape == (256, 256) and a.dtype == np.uint8 and a.std() > 40
    # edges in both directions: both of the notes' edge detectors respond strongly somewhere
    for k in ("edge-horizontal", "edge-vertical"):
        assert np.abs(filter_image(a, k, mode="valid")).max() > 300
    path = demo_gallery(tmp_path / "demo")
    assert path == tmp_path / "demo" / "filters_gallery.png"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 500


@pytest.mark.parametrize("spec", ["laplacian:4.5", "laplacian:6"])
def test_laplacian_needs_4_or_8_exactly(spec):
    with pytest.raises(CnnlabError, match="4 or 8"):
        get_kernel(spec)
    np.testing.assert_array_equal(
        get_kernel("laplacian:4.0").weights, [[0, 1, 0], [1, -4, 1], [0, 1, 0]]
    )
