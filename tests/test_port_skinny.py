"""The compiled small-batch fully connected kernel (port.layers.skinny) and the channels-last MAX
pooling (port.layers.maxpool): values against float64 within their summation-order error bound,
gradients, the cache of transposed weights, the fallbacks, and the pooling's exact agreement with
``F.max_pool2d`` (values, ties, NaN and gradients)."""

from __future__ import annotations

import contextlib
import copy
import os
import pickle
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import port
from port import native
from port.layers import maxpool, skinny

needs_kernel = pytest.mark.skipif(not skinny.available(), reason="no C compiler")
U = 2.0**-24  # float32 unit roundoff


@pytest.mark.skipif(
    not native.enabled() or shutil.which(os.environ.get("CC", "cc")) is None,
    reason="compiled kernels disabled or no C compiler",
)
def test_shipped_kernels_build_where_a_compiler_exists():
    # The kernel tests skip when the kernel is unavailable; a source that no longer compiles must
    # fail here instead of turning them into skips.
    from mfv import _tv_native

    assert skinny.available()
    assert _tv_native.available()


def _operands(m: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g, dtype=torch.float64), torch.randn(
        n, k, generator=g, dtype=torch.float64
    )


def _bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Worst-case error of the kernel's order: at most 512 / 4 products per lane, K / 512 block
    sums, a pairwise sum over at most 16 lanes and the tail (see skinny.c); every term counted."""
    k = x.shape[1]
    depth = 128 + k // 512 + 4 + 16 + 2
    return depth * U * (x.abs() @ w.abs().t())


@needs_kernel
@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(1, 1, 1), (1, 5, 3), (2, 15, 4), (3, 17, 7), (5, 512, 9), (6, 513, 8), (7, 1000, 13),
     (10, 2048, 6), (13, 700, 5), (64, 300, 21)],
)  # fmt: skip
def test_product_lies_within_its_error_bound_of_float64(m, k, n):
    x, w = _operands(m, k, n, seed=m * 1000 + k + n)
    got = skinny.matmul_nt(x.float(), w.float()).double()
    # The operands' own float32 rounding is part of the distance: compare with their exact product.
    exact = x.float().double() @ w.float().double().t()
    assert bool(((got - exact).abs() <= _bound(x, w)).all())
    assert got.shape == (m, n)


@needs_kernel
def test_product_is_far_tighter_than_one_long_sum_on_a_wide_layer():
    """CaffeNet's fc6 depth: the kernel's error relative to range stays at blocked-sum level."""
    x, w = _operands(4, 9216, 256, seed=3)
    x, w = x.relu().float(), (w * 0.01).float()
    exact = x.double() @ w.double().t()
    span = float(exact.max() - exact.min())
    err = float((skinny.matmul_nt(x, w).double() - exact).abs().max()) / span
    sequential = np.cumsum(
        (x[0].double() * w[0].double()).numpy().astype(np.float32), dtype=np.float32
    )[-1]
    seq_err = abs(float(sequential) - float(exact[0, 0])) / span
    assert err < 3e-7
    assert err < max(seq_err, 1e-7)


@needs_kernel
def test_linear_gradients_match_float64():
    x, w = _operands(10, 1100, 37, seed=7)
    b = torch.randn(37, dtype=torch.float64)
    g = torch.randn(10, 37, dtype=torch.float64)
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    (F.linear(*ref) * g).sum().backward()
    got = [t.float().requires_grad_() for t in (x, w, b)]
    y = skinny.linear(*got, skinny.TransposedWeights())
    (y * g.float()).sum().backward()
    torch.testing.assert_close(y.double(), F.linear(x, w, b), rtol=1e-5, atol=1e-4)
    for r, t in zip(ref, got, strict=True):
        torch.testing.assert_close(t.grad.double(), r.grad, rtol=1e-5, atol=1e-4)


@needs_kernel
def test_transposed_copy_follows_in_place_writes():
    w = torch.randn(6, 40)
    cache = skinny.TransposedWeights()
    first = cache.of(w)
    assert torch.equal(first, w.t()) and first.is_contiguous()
    assert cache.of(w) is first  # unchanged weights: the same copy
    with torch.no_grad():
        w.mul_(2)
    assert torch.equal(cache.of(w), w.t())
    wt = torch.randn(40, 6)
    assert cache.of(wt.t()).data_ptr() == wt.data_ptr()  # already contiguous: no copy
    cache.of(w)
    assert copy.deepcopy(cache)._copy is None and pickle.loads(pickle.dumps(cache))._copy is None


def test_usable_refuses_what_the_kernel_does_not_take():
    w = torch.randn(8, 16)
    assert not skinny.usable(torch.randn(skinny.MAX_ROWS + 1, 16), w)
    assert not skinny.usable(torch.randn(2, 16, dtype=torch.float64), w.double())
    assert not skinny.usable(torch.randn(0, 16), w)
    assert not skinny.usable(torch.randn(2, 2, 16), w)
    assert not skinny.usable(torch.randn(2, 8), w.t())  # strided weights: the blocked product


@needs_kernel
def test_strided_weights_are_refused_not_copied():
    with pytest.raises(ValueError, match="contiguous"):
        skinny.matmul_nt(torch.randn(2, 16), torch.randn(16, 8).t())


def _fc_net() -> port.CaffeNet:
    text = """
    name: "fc" input: "data" input_shape { dim: 3 dim: 4 dim: 5 dim: 6 }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 11 } }
    """
    net = port.CaffeNet(port.netdef_from_text(text))
    net.load_blobs(port.seed_weights(net.netdef, 4))
    return net


def test_inner_product_without_the_kernel_falls_back_to_the_blocked_product(monkeypatch):
    net = _fc_net()
    x = torch.randn(3, 4, 5, 6)
    with_kernel = net(x)["ip"]
    monkeypatch.setattr(skinny, "available", lambda: False)
    without = net(x)["ip"]
    ref = net.double()(x.double())["ip"]
    torch.testing.assert_close(with_kernel.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(without.double(), ref, rtol=1e-5, atol=1e-6)


def _pool_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ties = torch.randint(0, 3, (2, 5, 13, 11), generator=g).float()  # many equal maxima
    relu = torch.randn(3, 7, 17, 17, generator=g).relu()  # zeros tie, as after a ReLU
    nan = torch.randn(1, 4, 9, 9, generator=g)
    nan[0, 1, 2, 3] = float("nan")
    padded = F.pad(torch.randn(2, 3, 8, 8, generator=g), (1, 2, 1, 2), value=-float("inf"))
    return [ties, relu, nan, padded, ties.double()]


@pytest.mark.parametrize("kernel_stride", [((3, 3), (2, 2)), ((2, 2), (2, 2)), ((3, 2), (1, 2))])
@pytest.mark.parametrize("case", range(5))
def test_max_pool_equals_torch_values_and_gradients(case, kernel_stride):
    kernel, stride = kernel_stride
    x = _pool_inputs()[case]
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = maxpool.max_pool2d(a, list(kernel), list(stride))
    yb = F.max_pool2d(b, kernel, stride)
    assert torch.equal(ya.isnan(), yb.isnan()) and torch.equal(ya.nan_to_num(), yb.nan_to_num())
    assert ya.is_contiguous()
    grad = torch.randn_like(yb)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(a.grad, b.grad)  # the same argmax, tie for tie
    with torch.no_grad():
        assert torch.equal(maxpool.max_pool2d(x, list(kernel), list(stride)).nan_to_num(),
                           yb.detach().nan_to_num())  # fmt: skip


@contextlib.contextmanager
def _kernel_built_for(monkeypatch, isa: str) -> Iterator[None]:
    """The kernel as a machine capped at ``isa`` builds it (skips where this CPU lacks it)."""
    monkeypatch.setenv("CAFFE_MFV_NATIVE_ISA", isa)
    try:
        native.isa()
    except ValueError as e:
        pytest.skip(str(e))
    skinny._library.cache_clear()
    try:
        yield
    finally:
        skinny._library.cache_clear()


@needs_kernel
@pytest.mark.parametrize(("isa", "width"), [("avx2", 32), ("avx", 32), ("sse2", 16)])
def test_capped_builds_stay_within_the_bound(monkeypatch, isa, width):
    """What an AVX2, AVX or SSE machine builds (narrower vectors, so other partial sums)."""
    x, w = _operands(10, 1500, 23, seed=11)
    with _kernel_built_for(monkeypatch, isa):
        got = skinny.matmul_nt(x.float(), w.float()).double()
        assert skinny.vector_bytes() == width
    exact = x.float().double() @ w.float().double().t()
    assert bool(((got - exact).abs() <= _bound(x, w)).all())


@needs_kernel
@pytest.mark.parametrize("isa", ["native", "avx2", "avx", "sse2"])
def test_each_row_is_the_same_sum_in_any_batch(monkeypatch, isa):
    """The tiles differ with the batch (their heights, and on AVX2 the rows of w per tile), but
    no sum may: a row's output is bit for bit the same alone or in any batch, the K % VL tail
    included (GCC fused the products into FMAs in some tile shapes and not in others)."""
    x, w = _operands(20, 1007, 37, seed=5)  # K % 512 = 495: a tail of 15, 7 or 3 terms
    x, w = x.float(), w.float()
    with _kernel_built_for(monkeypatch, isa):
        alone = torch.cat([skinny.matmul_nt(x[i : i + 1], w) for i in range(20)])
        for m in (2, 3, 5, 7, 10, 11, 12, 13, 20):
            assert torch.equal(skinny.matmul_nt(x[:m], w), alone[:m]), m
