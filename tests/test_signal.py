"""cnnlab.signal against scipy.signal and torch.nn.functional (independent references)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.errors import CnnlabError
from cnnlab.signal import (
    avg_pool2d,
    conv2d,
    conv2d_reference,
    conv_output_size,
    convolve,
    convolve2d,
    correlate,
    explain_convolution,
    format_steps,
    global_avg_pool2d,
    max_pool2d,
    pool2d_reference,
    relu,
)

SETTINGS = settings(max_examples=60, deadline=None)


def distinct_kernel(shape, rng, dtype=np.float64):
    """Every weight different (a permutation of 1..n with random signs): flips cannot pass."""
    n = int(np.prod(shape))
    vals = rng.permutation(np.arange(1, n + 1)) * rng.choice([-1, 1], n)
    return vals.reshape(shape).astype(dtype)


def _valid_ok(xs, ks):
    return all(a >= b for a, b in zip(xs, ks, strict=True)) or all(
        b >= a for a, b in zip(xs, ks, strict=True)
    )


@st.composite
def pair(draw):
    ndim = draw(st.sampled_from([1, 2]))
    xs = tuple(draw(st.integers(1, 9)) for _ in range(ndim))
    ks = tuple(draw(st.integers(1, 6)) for _ in range(ndim))
    dtype = draw(st.sampled_from(["int64", "float64", "float32", "uint8", "int32"]))
    mode = draw(st.sampled_from(["full", "same", "valid"]))
    seed = draw(st.integers(0, 2**16))
    return xs, ks, dtype, mode, seed


@SETTINGS
@given(pair(), st.sampled_from(["convolve", "correlate"]))
def test_convolve_correlate_match_scipy(case, op):
    xs, ks, dtype, mode, seed = case
    rng = np.random.default_rng(seed)
    if dtype in ("uint8",):
        x = rng.integers(0, 256, xs).astype(np.uint8)
        k = (np.abs(distinct_kernel(ks, rng)) % 256).astype(np.uint8)
    elif dtype.startswith("int"):
        x = rng.integers(-50, 50, xs).astype(dtype)
        k = distinct_kernel(ks, rng, dtype)
    else:
        x = rng.standard_normal(xs).astype(dtype)
        k = distinct_kernel(ks, rng, dtype) / 7
    ours = {"convolve": convolve, "correlate": correlate}[op]
    ref = {"convolve": scipy.signal.convolve, "correlate": scipy.signal.correlate}[op]
    if mode == "valid" and not _valid_ok(xs, ks):
        with pytest.raises(CnnlabError, match="at least as large"):
            ours(x, k, mode)
        with pytest.raises(ValueError):
            ref(x, k, mode, method="direct")
        return
    got = ours(x, k, mode)
    if x.dtype.kind in "iu":
        # exact integers, computed by scipy in int64 so that nothing wraps
        want = ref(x.astype(np.int64), k.astype(np.int64), mode, method="direct")
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)
    else:
        want = ref(x.astype(np.float64), k.astype(np.float64), mode, method="direct")
        assert got.dtype == x.dtype and got.shape == want.shape
        tol = 1e-4 if dtype == "float32" else 1e-10
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@SETTINGS
@given(
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    st.tuples(st.integers(1, 7), st.integers(1, 7)),
    st.sampled_from(["full", "same", "valid"]),
    st.sampled_from(["fill", "symm", "wrap"]),
    st.integers(0, 2**16),
)
def test_convolve2d_boundaries_match_scipy(xs, ks, mode, boundary, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs)
    k = distinct_kernel(ks, rng)
    if mode == "valid" and (ks[0] > xs[0] or ks[1] > xs[1]):
        with pytest.raises(CnnlabError, match="larger than the image"):
            convolve2d(x, k, mode)
        return
    if boundary != "fill" and (ks[0] > xs[0] or ks[1] > xs[1]):
        return  # scipy's mirror of a kernel wider than the image is not a convention we copy
    got = convolve2d(x, k, mode, boundary=boundary)
    want = scipy.signal.convolve2d(x, k, mode, boundary=boundary)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("ksize", [7, 9, 15])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_fft_path_matches_scipy_direct(ksize, mode):
    rng = np.random.default_rng(ksize)
    x = rng.standard_normal((120, 97)).astype(np.float32)
    k = distinct_kernel((ksize, ksize + 2), rng, np.float32) / ksize**2
    want = scipy.signal.convolve(x.astype(np.float64), k.astype(np.float64), mode, method="direct")
    for method in ("fft", "auto", "direct"):
        got = convolve(x, k, mode, method=method)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_fft_not_used_when_input_has_nan():
    x = np.ones((64, 64))
    x[10, 10] = np.nan
    out = convolve(x, np.ones((9, 9)), "same")
    assert np.isnan(out[10, 10]) and np.isfinite(out[40, 40])
    np.testing.assert_array_equal(
        np.isnan(out), np.isnan(scipy.signal.convolve(x, np.ones((9, 9)), "same", method="direct"))
    )


def test_notes_1d_example():
    signal, kernel = [1, 3, 2, 3, 0, 1, 5, 4], [1, 3, 0, -1]
    # by hand: first window [1, 3, 2, 3] times flipped kernel [-1, 0, 3, 1] = -1 + 0 + 6 + 3 = 8
    np.testing.assert_array_equal(convolve(signal, kernel, "valid"), [8, 6, -1, 5, 19])
    np.testing.assert_array_equal(convolve(signal, kernel), np.convolve(signal, kernel, "full"))


def test_notes_5x5_image_3x3_kernel_gives_3x3_map():
    img = np.array(
        [[3, 0, 1, 2, 7], [1, 5, 8, 9, 3], [2, 7, 2, 5, 1], [0, 1, 3, 1, 7], [4, 2, 1, 6, 2]]
    )
    k = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]])
    out = convolve(img, k, "valid")
    assert out.shape == (3, 3)
    # top-left by hand: (3 + 1 + 2) - (1 + 8 + 2) = -5 under cross-correlation; flipped: +5
    assert out[0, 0] == 5 and correlate(img, k, "valid")[0, 0] == -5
    np.testing.assert_array_equal(out, scipy.signal.convolve2d(img, k, "valid"))


def test_uint8_inputs_do_not_wrap():
    x = np.array([200, 100], np.uint8)
    k = np.array([3, 2], np.uint8)
    np.testing.assert_array_equal(convolve(x, k), [600, 700, 200])  # scipy would wrap in uint8


def test_torch_in_torch_out():
    x = torch.arange(12.0).reshape(3, 4)
    k = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    got = convolve(x, k, "same")
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), scipy.signal.convolve(x.numpy(), k.numpy(), "same"))
    gi = correlate(torch.arange(5), torch.tensor([1, 2]))
    assert gi.dtype == torch.int64
    np.testing.assert_array_equal(gi.numpy(), scipy.signal.correlate(np.arange(5), [1, 2]))


def test_one_d_kernel_on_image_is_a_row():
    x = np.arange(20.0).reshape(4, 5)
    np.testing.assert_allclose(
        convolve(x, [1.0, 2.0, 4.0]), scipy.signal.convolve(x, [[1.0, 2.0, 4.0]])
    )


@pytest.mark.parametrize(
    "x, k, msg",
    [
        (np.zeros(0), [1, 2], "input is empty"),
        ([1, 2, 3], np.zeros((0,)), "kernel is empty"),
        ([1, 2, 3], np.ones((2, 2)), "more than the input"),
        ([1, 2, 3], [1j, 2], "complex"),
        (np.ones((2, 2, 2)), np.ones((1, 1, 1)), "1 or 2 dimensions"),
        (["a", "b"], [1], "not numeric"),
    ],
)
def test_bad_inputs(x, k, msg):
    with pytest.raises(CnnlabError, match=msg):
        convolve(x, k)


def test_bad_mode():
    with pytest.raises(CnnlabError, match="unknown mode"):
        convolve([1, 2], [1], "middle")


# -- explain_convolution -----------------------------------------------------------------------


@SETTINGS
@given(
    st.integers(1, 2),
    st.integers(0, 2**16),
    st.sampled_from(["full", "same", "valid"]),
    st.booleans(),
)
def test_explain_totals_equal_scipy(ndim, seed, mode, flip):
    rng = np.random.default_rng(seed)
    xs = tuple(rng.integers(3, 7, ndim))
    ks = tuple(rng.integers(1, 4, ndim))
    x = rng.integers(-9, 10, xs)
    k = distinct_kernel(ks, rng, np.int64)
    steps = explain_convolution(x, k, mode, flip=flip)
    ref = scipy.signal.convolve if flip else scipy.signal.correlate
    want = ref(x, k, mode, method="direct")
    got = np.array([s.total for s in steps]).reshape(want.shape)
    np.testing.assert_array_equal(got, want)
    for s in steps:
        np.testing.assert_array_equal(s.products, s.window * s.kernel)
        np.testing.assert_array_equal(s.kernel, np.flip(k) if flip else k)


def test_explain_notes_walk_and_table():
    steps = explain_convolution([1, 3, 2, 3, 0, 1, 5, 4], [1, 3, 0, -1])
    assert steps[0].window.tolist() == [1, 3, 2, 3]
    assert steps[1].window.tolist() == [3, 2, 3, 0]  # "shifted by 1 position", as in the notes
    table = format_steps(steps)
    lines = table.splitlines()
    assert len(lines) == 2 + 5 and lines[2].split()[-1] == "8" and lines[-1].split()[-1] == "19"
    cc = explain_convolution([1, 3, 2, 3, 0, 1, 5, 4], [1, 3, 0, -1], flip=False)
    assert cc[0].kernel.tolist() == [1, 3, 0, -1] and cc[0].total == 7


def test_explain_refuses_kernel_larger_in_valid():
    with pytest.raises(CnnlabError, match="larger than the input"):
        explain_convolution([1, 2], [1, 2, 3])


# -- CNN layer operations ---------------------------------------------------------------------


@st.composite
def conv_case(draw):
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.sampled_from([1, 2, (1, 2)]))
    dilation = draw(st.sampled_from([1, 2]))
    padding = draw(st.sampled_from([0, 1, (2, 1), "valid", "same"]))
    if padding == "same":
        stride = 1
    h = draw(st.integers(dilation * (kh - 1) + 1, 10))
    w = draw(st.integers(dilation * (kw - 1) + 1, 10))
    n = draw(st.integers(1, 2))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return n, cin, cout, h, w, kh, kw, stride, padding, dilation, groups, bias, seed


# torch's reference warns that even kernels with padding "same" copy the input: expected
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@SETTINGS
@given(conv_case())
def test_conv2d_fast_and_reference_match_torch(case):
    n, cin, cout, h, w, kh, kw, stride, padding, dilation, groups, use_bias, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cin, h, w))
    wt = distinct_kernel((cout, cin // groups, kh, kw), rng) / 10
    b = rng.standard_normal(cout) if use_bias else None
    want = F.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(wt),
        None if b is None else torch.from_numpy(b),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    ).numpy()
    got = conv2d(x, wt, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    ref = conv2d_reference(
        x, wt, b, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ref, want, rtol=1e-10, atol=1e-10)
    sh = stride if isinstance(stride, int) else stride[0]
    ph = (
        {"valid": 0, "same": None}.get(padding, padding)
        if isinstance(padding, str)
        else (padding if isinstance(padding, int) else padding[0])
    )
    if ph is not None:
        assert want.shape[2] == conv_output_size(h, kh, sh, ph, dilation)


def test_conv2d_shapes_hw_chw_and_torch():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((6, 7))
    k = distinct_kernel((3, 3), rng)
    out = conv2d(img, k)
    assert out.shape == (4, 5)
    # conv2d is cross-correlation: equal to scipy.signal.correlate2d in valid mode
    np.testing.assert_allclose(out, scipy.signal.correlate2d(img, k, "valid"))
    chw = conv2d(img[None], k[None, None])
    assert chw.shape == (1, 4, 5)
    t = conv2d(
        torch.from_numpy(img).float()[None, None],
        torch.from_numpy(k).float()[None, None],
        padding="same",
    )
    assert isinstance(t, torch.Tensor) and t.shape == (1, 1, 6, 7)


def test_conv2d_bad_inputs():
    with pytest.raises(CnnlabError, match="channels"):
        conv2d(np.zeros((1, 3, 5, 5)), np.zeros((2, 2, 3, 3)))
    with pytest.raises(CnnlabError, match="stride 1"):
        conv2d(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), stride=2, padding="same")


@SETTINGS
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from([None, 1, 2, (1, 2)]),
    st.integers(0, 1),
    st.integers(0, 2**16),
)
def test_pools_match_torch(kh, kw, stride, pad, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 9, 8))
    ks = (kh, kw)
    p = (min(pad, kh // 2), min(pad, kw // 2))
    xt = torch.from_numpy(x)
    for ours, op, tf in ((max_pool2d, "max", F.max_pool2d), (avg_pool2d, "avg", F.avg_pool2d)):
        want = tf(xt, ks, stride=stride, padding=p).numpy()
        np.testing.assert_allclose(ours(x, ks, stride, p), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            pool2d_reference(x, ks, stride, p, op=op), want, rtol=1e-12, atol=1e-12
        )


def test_pooling_known_answers_and_gap_relu():
    x = np.array([[1.0, 2, 5, 6], [3, 4, 7, 8], [-1, -2, 0, 0], [-3, -4, 0, 9]])
    np.testing.assert_array_equal(max_pool2d(x, 2), [[4, 8], [-1, 9]])
    np.testing.assert_array_equal(avg_pool2d(x, 2), [[2.5, 6.5], [-2.5, 2.25]])
    x4 = np.random.default_rng(1).standard_normal((2, 3, 5, 4))
    np.testing.assert_allclose(
        global_avg_pool2d(x4), F.adaptive_avg_pool2d(torch.from_numpy(x4), 1).numpy()[..., 0, 0]
    )
    np.testing.assert_array_equal(relu(np.array([-1.5, 0.0, 2.0])), [0.0, 0.0, 2.0])
    t = torch.tensor([-1.0, 3.0])
    assert torch.equal(relu(t), torch.relu(t))
