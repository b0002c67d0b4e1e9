"""The blocked fully connected product: same values as F.linear, float32 error at Caffe's level."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import port.layers.blocked as blocked
from port.layers.blocked import blocked_linear, blocked_matmul


def _rel(a: torch.Tensor, truth: torch.Tensor) -> float:
    return float((a.detach().double() - truth).abs().max() / truth.abs().max())


@pytest.mark.parametrize("k", [64, 100, 1000, 4096 + 7])
@pytest.mark.parametrize("batch", [1, 3, 10])
def test_values_and_gradients_match_float64(k: int, batch: int) -> None:
    g = torch.Generator().manual_seed(k * 10 + batch)
    x = torch.randn(batch, k, generator=g)
    w = torch.randn(33, k, generator=g) * 0.05
    b = torch.randn(33, generator=g)
    seed = torch.randn(batch, 33, generator=g)
    xs = x.clone().requires_grad_()
    ws = w.clone().requires_grad_()
    bs = b.clone().requires_grad_()
    y = blocked_linear(xs, ws, bs)
    y.backward(seed)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    y64 = F.linear(x64, w64, b64)
    y64.backward(seed.double())
    # Every result is the float64 value up to float32 rounding of a k-term sum.
    for mine, truth in ((y, y64), (xs.grad, x64.grad), (ws.grad, w64.grad), (bs.grad, b64.grad)):
        assert mine.dtype == torch.float32 and mine.shape == truth.shape
        assert _rel(mine, truth.detach()) < 1e-6


def test_long_sums_stay_at_caffe_level() -> None:
    # CaffeNet's fc6 backward at batch 1: a 4096-term sum per output, half the gradient masked as
    # after a ReLU. Measured: torch's GEMV 1.2e-6 from float64 (relative to range), OpenBLAS 4.9e-7,
    # blocks of 64 terms 1.5e-7; the bound sits between the blocked figure and Caffe's BLAS.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4096, 9216, generator=g) * 0.01
    grad = torch.randn(1, 4096, generator=g)
    grad[:, ::2] = 0
    truth = grad.double() @ w.double()
    assert _rel(blocked_matmul(grad, w), truth) < 3e-7
    x = torch.randn(1, 9216, generator=g)
    truth = x.double() @ w.double().t()
    assert _rel(blocked_matmul(x, w.t()), truth) < 3e-7


def test_row_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(9, 640, generator=g)
    b = torch.randn(640, 20, generator=g)
    truth = a.double() @ b.double()
    whole = blocked_matmul(a, b)
    # A partials budget of one row: the batch goes in 9 slices (the BLAS may round a 1-row
    # product differently from a 9-row one, so the check is against float64, not bytes).
    monkeypatch.setattr(blocked, "_PARTIALS_BYTES", 10 * 20 * 4)
    sliced = blocked_matmul(a, b)
    assert _rel(sliced, truth) < 1e-6 and _rel(whole, truth) < 1e-6


def test_other_dtypes_and_shapes_use_f_linear() -> None:
    x = torch.randn(2, 300, dtype=torch.float64)
    w = torch.randn(5, 300, dtype=torch.float64)
    assert torch.equal(blocked_linear(x, w), F.linear(x, w))
    x3 = torch.randn(2, 4, 300)
    assert torch.equal(blocked_linear(x3, w.float()), F.linear(x3, w.float()))


def test_plain_operators_when_no_gradient_is_needed() -> None:
    # Exporters (ONNX's tracer) cannot follow a custom autograd function: without gradients the
    # forward is plain operators, with the same values.
    x = torch.randn(2, 700)
    w = torch.randn(6, 700)
    with torch.no_grad():
        plain = blocked_linear(x, w)
    assert torch.equal(plain, blocked_linear(x, w.clone().requires_grad_()).detach())
    traced = torch.jit.trace(lambda t: blocked_linear(t, w), (x,))
    assert torch.equal(traced(x), plain)
