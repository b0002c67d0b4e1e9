"""The space-to-depth form of strided convolutions (port.layers.strided) is Caffe's convolution."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from port.layers.strided import caffe_conv2d, folds_space_to_depth

CASES = [
    # channels, groups, height, width, kernel, stride, pad
    (c, g, h, w, k, s, p)
    for c, g, (h, w), k, s, p in itertools.product(
        (1, 3, 4),
        (1,),
        ((9, 11), (13, 14)),
        ((2, 3), (5, 5), (11, 11)),
        ((2, 2), (4, 4), (3, 1)),
        ((0, 0), (1, 2), (3, 3)),
    )  # fmt: skip
    if k[0] >= s[0] and k[1] >= s[1] and h + 2 * p[0] >= k[0] and w + 2 * p[1] >= k[1]
] + [(4, 2, 20, 17, (5, 5), (2, 2), (1, 1)), (6, 3, 16, 16, (3, 3), (2, 2), (0, 0))]


@pytest.mark.parametrize(("c", "g", "h", "w", "k", "s", "p"), CASES)
def test_fold_gives_conv2d_values_and_input_gradient(c, g, h, w, k, s, p):
    gen = torch.Generator().manual_seed(c * 100 + h + k[0])
    x = torch.randn(2, c, h, w, dtype=torch.float64, generator=gen, requires_grad=True)
    wt = torch.randn(6, c // g, *k, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, generator=gen)
    assert folds_space_to_depth(c // g, k, s, (1, 1))
    want = F.conv2d(x, wt, b, s, p, 1, g)
    got = caffe_conv2d(x, wt, b, s, p, (1, 1), g)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    gy = torch.randn(want.shape, dtype=torch.float64, generator=gen)
    want_gx, want_gw = torch.autograd.grad(want, (x, wt), gy)
    got_gx, got_gw = torch.autograd.grad(got, (x, wt), gy)
    torch.testing.assert_close(got_gx, want_gx, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_gw, want_gw, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("channels", "kernel", "stride", "dilation", "folds"),
    [
        (3, (11, 11), (4, 4), (1, 1), True),  # CaffeNet's conv1
        (3, (7, 7), (2, 2), (1, 1), True),  # GoogLeNet's conv1
        (3, (3, 3), (1, 1), (1, 1), False),  # no stride: nothing to fold
        (64, (3, 3), (2, 2), (1, 1), False),  # many channels: oneDNN's own kernels do well
        (3, (1, 1), (2, 2), (1, 1), False),  # kernel under the stride: the fold adds work
        (3, (3, 3), (2, 2), (2, 2), False),  # dilated
    ],
)
def test_which_convolutions_fold(channels, kernel, stride, dilation, folds):
    assert folds_space_to_depth(channels, kernel, stride, dilation) is folds


def test_a_traced_graph_gets_the_plain_operator():
    x = torch.randn(1, 3, 23, 23)
    wt = torch.randn(4, 3, 11, 11)
    traced = torch.jit.trace(lambda a: caffe_conv2d(a, wt, None, (4, 4), (0, 0), (1, 1), 1), x)
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert "aten::_convolution" in kinds and "aten::permute" not in kinds
