"""The fully connected product of a small batch on a CPU, streamed at memory speed (``skinny.c``).

At a batch of a few rows ``x @ W.T`` reads every weight once for ~2 flops per row, so its speed is
the rate at which the weights stream from memory. torch's CPU paths (MKL's GEMM and GEMV, and the
port's blocked product built on ``bmm``) run CaffeNet's fc6 at batch 10 at 6-9 GB/s; the compiled
kernel reads the same weights at 17-19 GB/s with AVX-512 (8.4 against 18.6 ms for fc6 forward,
measured on AMD Zen 4, 2 threads), and sums in short blocks, so it rounds no worse than the blocked
product (see ``skinny.c``). :func:`matmul_nt` is the whole interface; :mod:`port.layers.blocked`
decides when to use it.

The kernel is built on first use by :mod:`port.native`; without a C compiler (or with
``CAFFE_MFV_NATIVE=0``) :func:`available` is False and the blocked product runs instead.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import torch

from .. import native
from .base import capturing_graph

__all__ = [
    "MAX_ROWS",
    "TransposedWeights",
    "available",
    "linear",
    "matmul_nt",
    "usable",
    "vector_bytes",
]

_SOURCE = Path(__file__).with_name("skinny.c")
# -fno-math-errno changes no value. Nothing is contracted into a fused multiply-add behind the
# source's back: the kernel writes its vector FMAs out, so a row's sums do not depend on its tile.
_FLAGS = ["-ffp-contract=off", "-fno-math-errno"]
#: The most rows of x the kernel takes: it keeps x in cache and streams the weights once per
#: few rows, which beats the blocked product at every batch up to 64 (measured on Zen 4; 34 against
#: 111 ms for fc6 at 64 rows) but would re-read a large x from memory per weight rows.
MAX_ROWS = 64


@cache
def _library() -> ctypes.CDLL | None:
    lib = native.load(_SOURCE, "skinny", _FLAGS, fallback="the blocked product")
    if lib is None:
        return None
    lib.skinny_vector_lanes.restype = ctypes.c_int
    lib.skinny_matmul_nt.restype = None
    lib.skinny_matmul_nt.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_int]
    return lib


def available() -> bool:
    """Whether the compiled kernel can be used (compiling it now if needed)."""
    return _library() is not None


def vector_bytes() -> int:
    """Width in bytes of the kernel's vectors (64: AVX-512, 32: AVX2, 16: SSE2), 0 without it."""
    lib = _library()
    return 0 if lib is None else 4 * int(lib.skinny_vector_lanes())


def usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether :func:`matmul_nt` takes these operands: 2-D float32 CPU tensors, contiguous weights,
    at most :data:`MAX_ROWS` rows, outside tracing, export and compilation (which follow torch
    operators only), with the kernel available."""
    if capturing_graph():
        return False  # before any test of a (possibly symbolic) size
    return (
        x.dim() == 2
        and w.dim() == 2
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and x.device.type == "cpu"
        and w.device.type == "cpu"
        and w.is_contiguous()
        and 0 < x.shape[0] <= MAX_ROWS
        and available()
    )


def matmul_nt(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` for float32 CPU ``x`` (M, K) and ``w`` (N, K), M at most :data:`MAX_ROWS`.

    Parameters
    ----------
    x : torch.Tensor
        (M, K) rows; copied to a contiguous layout if need be (it is small).
    w : torch.Tensor
        (N, K) weights; must already be contiguous (copying them would cost more than the product).

    Returns
    -------
    torch.Tensor
        (M, N) float32, not attached to autograd (callers wrap it).
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("the compiled fully connected kernel is unavailable")
    if not w.is_contiguous():
        raise ValueError("matmul_nt needs contiguous weights")
    m, k = x.shape
    n, k_w = w.shape
    if k != k_w:
        raise ValueError(f"inner dimensions differ: x has {k}, w has {k_w}")
    x = x.detach().contiguous()
    y = torch.empty((m, n), dtype=torch.float32)
    lib.skinny_matmul_nt(
        x.data_ptr(), w.detach().data_ptr(), y.data_ptr(), m, n, k, torch.get_num_threads()
    )
    return y


class TransposedWeights:
    """A contiguous copy of ``weight.T``, kept for the input gradient ``grad @ weight``.

    The kernel streams rows; the gradient needs the weights' columns as rows. The copy is made on
    the first backward and remade whenever the weights change (another tensor, new storage, or an
    in-place write: torch's version counter), so it never goes stale. One per layer.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._copy: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        return {"_key": None, "_copy": None}  # a saved or copied layer remakes its own copy

    def __deepcopy__(self, memo) -> TransposedWeights:
        return TransposedWeights()

    def of(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight.T`` as a contiguous (K, N) tensor (``weight.T`` itself if already so)."""
        t = weight.detach().t()
        if t.is_contiguous():
            return t
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
        if self._key != key or self._copy is None:
            self._copy = None  # release the old copy before making the new one
            self._copy = t.contiguous()
            self._key = key
        return self._copy


class _SkinnyLinear(torch.autograd.Function):
    """``y = x W^T + b`` with both products in the compiled kernel."""

    @staticmethod
    def forward(ctx, x, weight, bias, transposed):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.transposed = transposed
        y = matmul_nt(x, weight)
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = matmul_nt(grad, ctx.transposed.of(weight))
        if ctx.needs_input_grad[1]:
            gw = grad.t() @ x  # sums over the batch only: short, exact enough
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum(0)
        return gx, gw, gb, None


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    transposed: TransposedWeights,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through the compiled kernel, forward and input gradient.

    Parameters
    ----------
    x : torch.Tensor
        (M, K) input; :func:`usable` must hold for it and ``weight``.
    weight : torch.Tensor
        (N, K) weights, contiguous.
    bias : torch.Tensor, optional
        (N,) bias.
    transposed : TransposedWeights
        The layer's cache of ``weight.T`` for the input gradient.

    Returns
    -------
    torch.Tensor
        (M, N), differentiable in ``x``, ``weight`` and ``bias``.
    """
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    ):
        return _SkinnyLinear.apply(x, weight, bias, transposed)
    y = matmul_nt(x, weight)
    return y if bias is None else y + bias
