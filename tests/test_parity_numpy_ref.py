"""Self-checks of the numpy reference against direct definitions (never against the port)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parity import numpy_ref as R

# -- direct-loop definitions, written from the spec, deliberately naive --------------------------


def conv_loops(x, w, b, stride, pad, dilation, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    out = np.zeros((n, o, oh, ow))
    og = o // group
    for ni in range(n):
        for oc in range(o):
            g = oc // og
            for y in range(oh):
                for xx in range(ow):
                    s = 0.0 if b is None else b[oc]
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                yy = y * sh - ph + i * dh
                                xj = xx * sw - pw + j * dw
                                if 0 <= yy < h and 0 <= xj < wd:
                                    s += x[ni, g * cg + ci, yy, xj] * w[oc, ci, i, j]
                    out[ni, oc, y, xx] = s
    return out


def pool_loops(x, method, k, s, p):
    n, c, h, w = x.shape
    oh = math.ceil((h + 2 * p - k) / s) + 1
    ow = math.ceil((w + 2 * p - k) / s) + 1
    if p > 0 and (oh - 1) * s >= h + p:
        oh -= 1
    if p > 0 and (ow - 1) * s >= w + p:
        ow -= 1
    out = np.zeros((n, c, oh, ow))
    for y in range(oh):
        for xx in range(ow):
            hs, ws = y * s - p, xx * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we]
            out[:, :, y, xx] = (
                win.max(axis=(2, 3)) if method == "max" else win.sum(axis=(2, 3)) / size
            )
    return out


# -- convolution ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    group=st.sampled_from([1, 2, 3]),
    cg=st.integers(1, 2),
    og=st.integers(1, 2),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dil=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    hw=st.tuples(st.integers(5, 8), st.integers(5, 8)),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv_matches_direct_loops(group, cg, og, k, stride, pad, dil, hw, bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, group * cg) + hw)
    w = rng.standard_normal((group * og, cg) + k)
    b = rng.standard_normal(group * og) if bias else None
    got = R.conv2d(x, w, b, stride=stride, pad=pad, dilation=dil, group=group)
    want = conv_loops(x, w, b, stride, pad, dil, group)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv_group_slices_are_independent():
    # With group 2, output slice 0 must not change when input slice 1 changes.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 6, 6))
    w = rng.standard_normal((6, 2, 3, 3))
    y0 = R.conv2d(x, w, group=2)
    x2 = x.copy()
    x2[:, 2:] += 1.0
    y1 = R.conv2d(x2, w, group=2)
    np.testing.assert_array_equal(y0[:, :3], y1[:, :3])
    assert np.abs(y0[:, 3:] - y1[:, 3:]).min() > 0


def test_conv_float32_stays_float32():
    x = np.ones((1, 2, 4, 4), np.float32)
    assert R.conv2d(x, np.ones((1, 2, 3, 3))).dtype == np.float32


# -- pooling -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,k,s,p,expected",
    [
        (227, 3, 2, 0, 113),  # CaffeNet pool after a 227 input: ceil and floor agree
        (224, 3, 2, 0, 112),  # ceil((224-3)/2)+1 = 112 (floor would give 111)
        (231, 3, 2, 0, 115),
        (55, 3, 2, 0, 27),
        (56, 3, 2, 0, 28),  # ceil: 28, floor: 27
        (13, 3, 2, 0, 6),
        (14, 3, 2, 0, 7),  # ceil: 7, floor: 6
        (14, 2, 2, 1, 8),  # ceil((14+2-2)/2)+1 = 8, (8-1)*2 = 14 < 14+1: kept
        (13, 2, 2, 1, 7),  # ceil((13+2-2)/2)+1 = 8, (8-1)*2 = 14 >= 13+1: clipped to 7
        (7, 3, 3, 1, 3),  # ceil((7+2-3)/3)+1 = 3, (3-1)*3 = 6 < 8
        (6, 3, 3, 2, 3),  # ceil((6+4-3)/3)+1 = 4, (4-1)*3 = 9 >= 6+2: clipped to 3
    ],
)
def test_pool_output_size_formula_and_clip(size, k, s, p, expected):
    assert R.pool_output_size(size, k, s, p) == expected
    x = np.zeros((1, 1, size, size))
    assert R.pool2d(x, method="max", kernel=k, stride=s, pad=p).shape[-1] == expected


@pytest.mark.parametrize("size", [13, 14, 15, 224, 227, 231])
@pytest.mark.parametrize("k,s,p", [(3, 2, 0), (3, 2, 1), (2, 2, 1), (5, 3, 2), (3, 1, 1)])
@pytest.mark.parametrize("method", ["max", "ave"])
def test_pool_matches_direct_loops(size, k, s, p, method):
    rng = np.random.default_rng(size * 31 + k)
    # Only the largest sizes need few channels to stay fast.
    x = rng.standard_normal((1, 2, size, size))
    np.testing.assert_allclose(
        R.pool2d(x, method=method, kernel=k, stride=s, pad=p),
        pool_loops(x, method, k, s, p),
        rtol=1e-13,
        atol=1e-14,
    )


def test_ave_pool_divisor_counts_padding_not_overhang():
    x = np.ones((1, 1, 4, 4))
    # k=3, s=2, p=1 on 4: windows start at -1, 1, 3; the last covers 3..5, clipped to H+p=5 -> 2 rows.
    y = R.pool2d(x, method="ave", kernel=3, stride=2, pad=1)
    # corner window: 2x2 real ones over a 3x3 divisor (padding counts)
    assert y[0, 0, 0, 0] == pytest.approx(4 / 9)
    # last window rows 3..4 (4 is padding): 1 real row x 2 real columns (2..3) over 2x3
    assert y[0, 0, 2, 1] == pytest.approx(3 / 6)
    assert y[0, 0, 2, 2] == pytest.approx(1 / 4)


def test_max_pool_over_window_clipped_to_image():
    x = -np.ones((1, 1, 3, 3))  # all negative: padding zeros must not win
    assert (R.pool2d(x, method="max", kernel=2, stride=2, pad=1) == -1).all()


def test_global_pooling():
    x = np.arange(24.0).reshape(1, 2, 3, 4)
    assert R.pool2d(x, method="ave", global_pooling=True)[0, :, 0, 0].tolist() == [5.5, 17.5]
    assert R.pool2d(x, method="max", global_pooling=True)[0, :, 0, 0].tolist() == [11.0, 23.0]


def test_max_pool_argmax_first_of_ties_and_flat_index():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = 5.0  # a tie in window (0,0) of a 3x3/s1 pool
    arg = R.max_pool_argmax(x, kernel=3, stride=1, pad=0)
    assert arg[0, 0, 0, 0] == 1 * 4 + 1  # first in row-major order
    assert arg[0, 0, 0, 1] == 1 * 4 + 1


# -- LRN -----------------------------------------------------------------------------------------


def lrn_across_loops(x, n, alpha, beta, k):
    out = np.empty_like(x)
    c = x.shape[1]
    half = (n - 1) // 2
    for ci in range(c):
        lo, hi = max(0, ci - half), min(c, ci + half + 1)
        s = (x[:, lo:hi] ** 2).sum(axis=1)
        out[:, ci] = x[:, ci] * (k + alpha / n * s) ** (-beta)
    return out


@pytest.mark.parametrize(
    "n,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (3, 2.0, 0.5, 2.0), (1, 1.0, 1.0, 1.0)]
)
def test_lrn_across_channels(n, alpha, beta, k):
    x = np.random.default_rng(1).standard_normal((2, 7, 3, 3)) * 10
    np.testing.assert_allclose(
        R.lrn(x, local_size=n, alpha=alpha, beta=beta, k=k),
        lrn_across_loops(x, n, alpha, beta, k),
        rtol=1e-13,
    )


def test_lrn_within_channel_ignores_k():
    x = np.random.default_rng(2).standard_normal((1, 2, 5, 5))
    n, alpha, beta = 3, 0.5, 0.75
    sq = np.pad(x**2, ((0, 0), (0, 0), (1, 1), (1, 1)))
    avg = np.zeros_like(x)
    for i in range(5):
        for j in range(5):
            avg[:, :, i, j] = sq[:, :, i : i + 3, j : j + 3].sum(axis=(2, 3)) / 9
    want = x * (1 + alpha * avg) ** (-beta)
    got = R.lrn(x, local_size=n, alpha=alpha, beta=beta, k=7.0, region="within")
    np.testing.assert_allclose(got, want, rtol=1e-13)


# -- the rest ------------------------------------------------------------------------------------


def test_inner_product_axis_and_transpose():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5))
    w = rng.standard_normal((6, 60))
    b = rng.standard_normal(6)
    y = R.inner_product(x, w, b)
    np.testing.assert_allclose(y, x.reshape(2, -1) @ w.T + b)
    np.testing.assert_allclose(R.inner_product(x, w.T.copy(), b, transpose=True), y)
    w2 = rng.standard_normal((7, 20))
    y2 = R.inner_product(x, w2, axis=2)
    assert y2.shape == (2, 3, 7)
    np.testing.assert_allclose(y2[1, 2], x[1, 2].reshape(-1) @ w2.T)


def test_relu_softmax_concat_flatten_eltwise():
    x = np.array([[-2.0, 0.0, 3.0]])
    assert R.relu(x).tolist() == [[0.0, 0.0, 3.0]]
    assert R.relu(x, negative_slope=0.1).tolist() == [[-0.2, 0.0, 3.0]]
    s = R.softmax(np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]]), axis=1)
    np.testing.assert_allclose(s, [[0.5, 0.5], [0.25, 0.75]])
    a, b = np.ones((1, 2, 2)), np.zeros((1, 3, 2))
    assert R.concat([a, b], axis=1).shape == (1, 5, 2)
    assert R.flatten(np.zeros((2, 3, 4, 5)), axis=1, end_axis=2).shape == (2, 12, 5)
    assert R.flatten(np.zeros((2, 3, 4, 5))).shape == (2, 60)
    p, q = np.array([1.0, -2.0]), np.array([3.0, 4.0])
    assert R.eltwise([p, q], operation="sum", coeff=[1, -1]).tolist() == [-2.0, -6.0]
    assert R.eltwise([p, q], operation="prod").tolist() == [3.0, -8.0]
    assert R.eltwise([p, q], operation="max").tolist() == [3.0, 4.0]
    assert all(np.array_equal(c, p) for c in R.split(p, 3))
    assert R.dropout(p) is not p and np.array_equal(R.dropout(p), p)


def test_batch_norm_uses_scaled_stats_and_zero_factor():
    x = np.random.default_rng(4).standard_normal((2, 3, 2, 2))
    mean, var = np.array([1.0, 2.0, 3.0]), np.array([4.0, 8.0, 12.0])
    y = R.batch_norm(x, mean, var, np.array([2.0]), eps=1e-5)
    want = (x - (mean / 2)[None, :, None, None]) / np.sqrt((var / 2)[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, want)
    # s == 0 means the statistics are 0 (Caffe's rule), not a division by zero.
    np.testing.assert_allclose(
        R.batch_norm(x, mean, var, np.array([0.0]), eps=1e-5), x / np.sqrt(1e-5)
    )


def test_scale_axis_num_axes_and_two_bottoms():
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 5))
    f = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(
        R.scale(x, f, f, axis=1), x * f[None, :, None, None] + f[None, :, None, None]
    )
    f2 = np.random.default_rng(6).standard_normal((3, 4))
    np.testing.assert_allclose(R.scale(x, f2, axis=1), x * f2[None, :, :, None])
    f3 = np.random.default_rng(7).standard_normal((4, 5))
    np.testing.assert_allclose(R.scale(x, f3, axis=-2), x * f3[None, None])
    np.testing.assert_allclose(R.scale(x, np.array([2.0])), 2 * x)


def test_forward_net_in_place_meaning():
    from port import netdef_from_text

    nd = netdef_from_text(
        """
        input: "data" input_shape { dim: 1 dim: 1 dim: 3 dim: 3 }
        layer { name: "c" type: "Convolution" bottom: "data" top: "c"
                convolution_param { num_output: 1 kernel_size: 1 } }
        layer { name: "r" type: "ReLU" bottom: "c" top: "c" }
        """
    )
    x = np.array([[[[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0], [0.0, 1.0, -1.0]]]])
    w = {"c": [np.ones((1, 1, 1, 1)), np.zeros(1)]}
    final = R.forward_net(nd, w, x)
    first = R.forward_net(nd, w, x, record="first")
    np.testing.assert_array_equal(final["data/c"], np.maximum(x, 0))
    np.testing.assert_array_equal(first["data/c"], x)
    assert (
        R.forward_net(nd, w, x.astype(np.float32), dtype=np.float32)["data/c"].dtype == np.float32
    )


ZOO_OF_LAYERS = """
name: "layers"
input: "data" input_shape { dim: 2 dim: 3 dim: 5 dim: 4 }
layer { name: "a" type: "Convolution" bottom: "data" top: "a"
        convolution_param { num_output: 2 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 } }
layer { name: "b" type: "Convolution" bottom: "data" top: "b"
        convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }
layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e"
        eltwise_param { operation: SUM coeff: 2 coeff: -1 } }
layer { name: "m" type: "Eltwise" bottom: "a" bottom: "b" top: "m" eltwise_param { operation: MAX } }
layer { name: "p" type: "Eltwise" bottom: "a" bottom: "b" top: "p" eltwise_param { operation: PROD } }
layer { name: "bn" type: "BatchNorm" bottom: "e" top: "e" batch_norm_param { eps: 0.001 } }
layer { name: "sc" type: "Scale" bottom: "e" top: "e" scale_param { bias_term: true } }
layer { name: "s" type: "InnerProduct" bottom: "data" top: "s" inner_product_param { num_output: 2 } }
layer { name: "ms" type: "Scale" bottom: "m" bottom: "s" top: "ms" scale_param { axis: 0 } }
layer { name: "cat" type: "Concat" bottom: "e" bottom: "ms" bottom: "p" top: "cat" }
layer { name: "fl" type: "Flatten" bottom: "cat" top: "fl" flatten_param { axis: 1 end_axis: 2 } }
layer { name: "sp" type: "Split" bottom: "fl" top: "f1" top: "f2" }
layer { name: "sg" type: "Sigmoid" bottom: "f1" top: "sg" }
layer { name: "th" type: "TanH" bottom: "f2" top: "th" }
layer { name: "ip" type: "InnerProduct" bottom: "sg" top: "ip"
        inner_product_param { num_output: 3 axis: 2 transpose: true } }
layer { name: "lr" type: "ReLU" bottom: "th" top: "lr" relu_param { negative_slope: 0.25 } }
layer { name: "av" type: "Pooling" bottom: "cat" top: "av"
        pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 } }
layer { name: "wn" type: "LRN" bottom: "cat" top: "wn"
        lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "sm" type: "Softmax" bottom: "ip" top: "sm" softmax_param { axis: 2 } }
"""


def test_forward_net_parses_every_layer_type_and_matches_the_float64_port():
    port = pytest.importorskip("port")
    import torch

    nd = port.netdef_from_text(ZOO_OF_LAYERS)
    weights = port.seed_weights(nd, 11)
    weights["bn"][2] = np.array([2.0], np.float32)  # a non-trivial BatchNorm scale factor
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)
    got = R.forward_net(nd, weights, x)
    # Param parsing, checked against the layer functions called by hand.
    w = {k: [np.asarray(a, np.float64) for a in v] for k, v in weights.items()}
    x64 = x.astype(np.float64)
    a = R.conv2d(x64, w["a"][0], w["a"][1], pad=(1, 0))
    b = R.conv2d(x64, w["b"][0])
    # eps is a float field: Caffe (and the parsed definition) use float32(0.001).
    e = R.batch_norm(2 * a - b, *w["bn"], eps=float(np.float32(1e-3)))
    e = R.scale(e, w["sc"][0], w["sc"][1])
    np.testing.assert_allclose(got["data/e"], e, rtol=1e-12)
    s = R.inner_product(x64, w["s"][0], w["s"][1])
    np.testing.assert_allclose(got["data/ms"], np.maximum(a, b) * s[:, :, None, None], rtol=1e-12)
    assert got["data/fl"].shape == (2, 30, 4) and got["data/ip"].shape == (2, 30, 3)
    # H: ceil((5 + 2 - 2) / 2) + 1 = 4, clipped to 3 since (4 - 1) * 2 >= 5 + 1; W: (4 - 3) / 1 + 1 = 2.
    assert got["data/av"].shape == (2, 6, 3, 2)
    # And the whole net agrees with the float64 port to the float64 floor.
    net = port.CaffeNet(nd)
    net.load_blobs(weights)
    net = net.to(torch.float64).eval()
    with torch.no_grad():
        ref = net(torch.from_numpy(x64), blobs="all")
    for name, t in ref.items():
        r = t.numpy()
        err = np.abs(got[f"data/{name}"] - r).max() / max(np.abs(r).max(), 1e-300)
        assert err < 1e-12, name
