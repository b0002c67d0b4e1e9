"""Every supported layer of the port against the independent numpy implementation (parity.numpy_ref).

Hypothesis draws shapes and parameters; each case builds a one-layer definition, seeds its weights,
runs the port in float64 and compares with numpy in float64, where only summation order differs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import port
from parity import numpy_ref as ref
from port.layers import pooled_size

SETTINGS = settings(max_examples=40, deadline=None)
RTOL = 1e-10  # float64 vs float64: only summation order differs


def run_layer(
    tmp_path_factory,
    layer_text: str,
    shapes: list[tuple[int, ...]],
    seed: int = 0,
    blobs_seed: int = 1,
):
    names = [f"in{i}" for i in range(len(shapes))]
    head = "\n".join(
        f'input: "{n}" input_shape {{ {" ".join(f"dim: {d}" for d in s)} }}'
        for n, s in zip(names, shapes, strict=True)
    )
    path = tmp_path_factory.mktemp("layer") / "net.prototxt"
    path.write_text(head + "\n" + layer_text)
    netdef = port.load_prototxt(path)
    net = port.CaffeNet(netdef)
    weights = port.seed_weights(netdef, blobs_seed)
    net.load_blobs(weights)
    net = net.double()
    rng = np.random.default_rng(seed)
    xs = [rng.normal(0, 2, s) for s in shapes]
    with torch.no_grad():
        out = net({n: torch.from_numpy(x) for n, x in zip(names, xs, strict=True)}, blobs="all")
    w = [b.astype(np.float64) for b in weights.get(netdef.layers[0].name, [])]
    return xs, w, {k: v.numpy() for k, v in out.items()}


def close(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(np.abs(b).max(), 1e-300)
    assert np.abs(a - b).max() <= RTOL * scale + 1e-300, np.abs(a - b).max() / scale


@SETTINGS
@given(
    n=st.integers(1, 2),
    c_per_g=st.integers(1, 3),
    group=st.integers(1, 3),
    o_per_g=st.integers(1, 3),
    h=st.integers(5, 12),
    w=st.integers(5, 12),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    stride=st.integers(1, 3),
    sw=st.integers(1, 3),
    pad=st.integers(0, 2),
    pw=st.integers(0, 2),
    dil=st.integers(1, 2),
    bias=st.booleans(),
)
def test_convolution(
    tmp_path_factory, n, c_per_g, group, o_per_g, h, w, kh, kw, stride, sw, pad, pw, dil, bias
):
    c, o = c_per_g * group, o_per_g * group
    if (h + 2 * pad - dil * (kh - 1) - 1) < 0 or (w + 2 * pw - dil * (kw - 1) - 1) < 0:
        return
    text = (
        f'layer {{ name: "conv" type: "Convolution" bottom: "in0" top: "y" convolution_param {{'
        f" num_output: {o} kernel_h: {kh} kernel_w: {kw} stride_h: {stride} stride_w: {sw}"
        f" pad_h: {pad} pad_w: {pw} dilation: {dil} group: {group}"
        f" bias_term: {str(bias).lower()} }} }}"
    )
    (x,), wb, out = run_layer(tmp_path_factory, text, [(n, c, h, w)])
    expect = ref.conv2d(
        x,
        wb[0],
        wb[1] if bias else None,
        stride=(stride, sw),
        pad=(pad, pw),
        dilation=dil,
        group=group,
    )
    close(out["y"], expect)


@SETTINGS
@given(
    h=st.integers(3, 40),
    w=st.integers(3, 40),
    k=st.integers(1, 5),
    s=st.integers(1, 4),
    p=st.integers(0, 2),
    method=st.sampled_from(["MAX", "AVE"]),
    glob=st.booleans(),
)
def test_pooling(tmp_path_factory, h, w, k, s, p, method, glob):
    if glob:
        params = f"pool: {method} global_pooling: true"
    else:
        if p >= k or k > h + 2 * p or k > w + 2 * p:
            return
        # Stride > kernel can leave a last window wholly outside the image, where Caffe itself
        # returns -FLT_MAX (MAX) or divides by zero (AVE): not a configuration worth matching.
        if any((pooled_size(n, k, s, p) - 1) * s - p >= n for n in (h, w)):
            return
        params = f"pool: {method} kernel_size: {k} stride: {s} pad: {p}"
    text = f'layer {{ name: "pool" type: "Pooling" bottom: "in0" top: "y" pooling_param {{ {params} }} }}'
    (x,), _, out = run_layer(tmp_path_factory, text, [(2, 3, h, w)])
    expect = ref.pool2d(x, method=method.lower(), kernel=k, stride=s, pad=p, global_pooling=glob)
    close(out["y"], expect)


@pytest.mark.parametrize("size", [224, 227, 231, 239])
def test_pooling_ceil_rule_at_network_sizes(tmp_path_factory, size):
    """CaffeNet's and GoogLeNet's pooling geometries at sizes where ceil and floor differ."""
    for k, s, p in [(3, 2, 0), (3, 2, 1), (2, 2, 0), (3, 1, 1), (7, 1, 0), (5, 3, 0)]:
        text = (
            f'layer {{ name: "pool" type: "Pooling" bottom: "in0" top: "y" '
            f"pooling_param {{ pool: AVE kernel_size: {k} stride: {s} pad: {p} }} }}"
        )
        (x,), _, out = run_layer(tmp_path_factory, text, [(1, 1, size, size)])
        expect = ref.pool2d(x, method="ave", kernel=k, stride=s, pad=p)
        close(out["y"], expect)


@SETTINGS
@given(
    c=st.integers(1, 9),
    n=st.sampled_from([1, 3, 5, 7]),
    alpha=st.floats(1e-4, 2.0),
    beta=st.floats(0.1, 1.5),
    k=st.floats(0.5, 3.0),
    within=st.booleans(),
)
def test_lrn(tmp_path_factory, c, n, alpha, beta, k, within):
    region = "WITHIN_CHANNEL" if within else "ACROSS_CHANNELS"
    text = (
        f'layer {{ name: "lrn" type: "LRN" bottom: "in0" top: "y" lrn_param {{ local_size: {n}'
        f" alpha: {alpha!r} beta: {beta!r} k: {k!r} norm_region: {region} }} }}"
    )
    (x,), _, out = run_layer(tmp_path_factory, text, [(2, c, 6, 5)])
    # the definition stores float32; the reference gets exactly those values
    a, b, kk = (float(np.float32(v)) for v in (alpha, beta, k))
    expect = ref.lrn(
        x, local_size=n, alpha=a, beta=b, k=kk, region="within" if within else "across"
    )
    close(out["y"], expect)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    axis=st.integers(1, 3),
    nout=st.integers(1, 6),
    transpose=st.booleans(),
    bias=st.booleans(),
)
def test_inner_product(tmp_path_factory, shape, axis, nout, transpose, bias):
    axis = min(axis, len(shape) - 1)
    text = (
        f'layer {{ name: "ip" type: "InnerProduct" bottom: "in0" top: "y" inner_product_param {{'
        f" num_output: {nout} axis: {axis} transpose: {str(transpose).lower()}"
        f" bias_term: {str(bias).lower()} }} }}"
    )
    (x,), wb, out = run_layer(tmp_path_factory, text, [tuple(shape)])
    expect = ref.inner_product(x, wb[0], wb[1] if bias else None, axis=axis, transpose=transpose)
    close(out["y"], expect)


@SETTINGS
@given(slope=st.sampled_from([0.0, 0.1, 0.5]), axis=st.integers(-3, 2))
def test_elementwise_layers(tmp_path_factory, slope, axis):
    text = "\n".join(
        [
            f'layer {{ name: "relu" type: "ReLU" bottom: "in0" top: "r" relu_param {{ negative_slope: {slope} }} }}',
            'layer { name: "drop" type: "Dropout" bottom: "r" top: "d" }',
            f'layer {{ name: "sm" type: "Softmax" bottom: "d" top: "s" softmax_param {{ axis: {axis} }} }}',
            'layer { name: "sig" type: "Sigmoid" bottom: "in0" top: "g" }',
            'layer { name: "th" type: "TanH" bottom: "in0" top: "t" }',
            'layer { name: "fl" type: "Flatten" bottom: "in0" top: "f" flatten_param { axis: 1 end_axis: 2 } }',
            'layer { name: "sp" type: "Split" bottom: "in0" top: "a" top: "b" }',
        ]
    )
    (x,), _, out = run_layer(tmp_path_factory, text, [(2, 3, 4, 5)])
    slope = float(np.float32(slope))  # as the definition stores it
    close(out["r"], ref.relu(x, negative_slope=slope))
    close(out["d"], ref.dropout(ref.relu(x, negative_slope=slope)))
    close(out["s"], ref.softmax(ref.relu(x, negative_slope=slope), axis=axis % 4))
    close(out["g"], ref.sigmoid(x))
    close(out["t"], ref.tanh(x))
    close(out["f"], ref.flatten(x, axis=1, end_axis=2))
    close(out["a"], x)
    close(out["b"], x)


@SETTINGS
@given(
    n_in=st.integers(2, 4),
    axis=st.integers(0, 3),
    op=st.sampled_from(["SUM", "PROD", "MAX"]),
    coeffs=st.booleans(),
)
def test_concat_and_eltwise(tmp_path_factory, n_in, axis, op, coeffs):
    shape = (2, 3, 4, 2)
    bottoms = " ".join(f'bottom: "in{i}"' for i in range(n_in))
    coeff = [0.5 + i for i in range(n_in)] if coeffs and op == "SUM" else []
    coeff_text = " ".join(f"coeff: {c}" for c in coeff)
    text = "\n".join(
        [
            f'layer {{ name: "cat" type: "Concat" {bottoms} top: "c" concat_param {{ axis: {axis} }} }}',
            f'layer {{ name: "elt" type: "Eltwise" {bottoms} top: "e" eltwise_param {{ operation: {op} {coeff_text} }} }}',
        ]
    )
    xs, _, out = run_layer(tmp_path_factory, text, [shape] * n_in)
    close(out["c"], ref.concat(xs, axis=axis))
    close(out["e"], ref.eltwise(xs, operation=op.lower(), coeff=coeff or None))


@SETTINGS
@given(
    c=st.integers(1, 5),
    bias=st.booleans(),
    axis=st.integers(1, 2),
    num_axes=st.integers(1, 2),
    eps=st.sampled_from([1e-5, 1e-3]),
)
def test_batchnorm_and_scale(tmp_path_factory, c, bias, axis, num_axes, eps):
    text = "\n".join(
        [
            f'layer {{ name: "bn" type: "BatchNorm" bottom: "in0" top: "bn" batch_norm_param {{ eps: {eps} }} }}',
            f'layer {{ name: "sc" type: "Scale" bottom: "bn" top: "sc" scale_param {{ axis: {axis} '
            f"num_axes: {num_axes} bias_term: {str(bias).lower()} }} }}",
        ]
    )
    shape = (2, c, 3, 4)
    names = ["in0"]
    head = f'input: "in0" input_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}'
    path = tmp_path_factory.mktemp("bn") / "net.prototxt"
    path.write_text(head + "\n" + text)
    netdef = port.load_prototxt(path)
    net = port.CaffeNet(netdef)
    weights = port.seed_weights(netdef, 4)
    net.load_blobs(weights)
    net = net.double()
    x = np.random.default_rng(0).normal(0, 2, shape)
    with torch.no_grad():
        out = {k: v.numpy() for k, v in net({names[0]: torch.from_numpy(x)}, blobs="all").items()}
    bn_w = [w.astype(np.float64) for w in weights["bn"]]
    expect_bn = ref.batch_norm(x, bn_w[0], bn_w[1], bn_w[2], eps=float(np.float32(eps)))
    close(out["bn"], expect_bn)
    sc_w = [w.astype(np.float64) for w in weights["sc"]]
    close(out["sc"], ref.scale(expect_bn, sc_w[0], sc_w[1] if bias else None, axis=axis))


def test_scale_with_two_bottoms(tmp_path_factory):
    text = 'layer { name: "sc" type: "Scale" bottom: "in0" bottom: "in1" top: "y" scale_param { axis: 1 } }'
    (x, f), _, out = run_layer(tmp_path_factory, text, [(2, 3, 4, 5), (3, 4)])
    close(out["y"], ref.scale(x, f, axis=1))
