"""Fully connected products summed in short blocks, so float32 rounding stays at Caffe's level.

Caffe's InnerProduct runs one BLAS call per direction (``caffe_cpu_gemm``, or ``caffe_cpu_gemv``
at batch 1); the BLAS accumulates the long inner dimension (9216 for CaffeNet's fc6) in blocks, so
its float32 error grows with the block length, not with the whole sum. torch's CPU kernels, at batch
1 to 3 (GEMV) and in the forward ``x @ W.T`` at any batch, accumulate the whole dimension in a few
vector registers: measured on CaffeNet-sized layers (random data, weights of std 0.01, AMD Zen 4) the
result lands 6e-7 to 1.3e-6 (relative to range) from float64, against 1.5e-7 to 2.4e-7 when the
same product is summed as partial products of 64 to 256 terms, and Caffe's own 2.4e-7 to 4e-7 on
the same layers. The excess then flows into every blob below (issue 26: every backward diff of
CaffeNet was farther from float64 than both Caffe builds).

:func:`blocked_linear` computes ``x @ W.T + b`` and both gradients as sums of products over
``BLOCK`` consecutive terms (one batched matrix product), adding the partial results with torch's
reduction (pairwise within a vector). The bound no longer depends on which BLAS path a CPU or a
batch size picks. float64 and other dtypes keep ``F.linear`` (no float32 rounding to control).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BLOCK", "blocked_linear", "blocked_matmul"]

#: Terms per partial product. 64 gave the lowest float32 error of 64/256/1024 on CaffeNet's fc
#: layers (1.5e-7 against 2.4e-7 and 5.5e-7 relative to range) at no measurable cost.
BLOCK = 64

# Bytes of partial products held at once; larger batches are processed in row slices so that the
# (terms / BLOCK) x rows x outputs partials never exceed it (64 MiB: CaffeNet's fc6 at 27 rows).
_PARTIALS_BYTES = 64 << 20


def blocked_matmul(a: torch.Tensor, b: torch.Tensor, *, block: int = BLOCK) -> torch.Tensor:
    """``a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, N), summed over blocks of ``block`` terms.

    Parameters
    ----------
    a, b : torch.Tensor
        2-D operands with matching inner dimension; any strides.
    block : int
        Terms of the inner dimension per partial product.

    Returns
    -------
    torch.Tensor
        (M, N), the same values as ``a @ b`` up to float rounding, with the rounding of a sum of
        ``ceil(K / block)`` partial products instead of one K-term accumulation.
    """
    m, k = a.shape
    n = b.shape[1]
    full = (k // block) * block
    if full <= block or a.dtype != torch.float32:
        return a @ b
    blocks = full // block
    # (blocks, block, N) view of b's first `full` rows: no copy when b's rows are evenly strided.
    b_blocks = b[:full].unflatten(0, (blocks, block))

    def rows_product(part: torch.Tensor) -> torch.Tensor:
        a_blocks = part[:, :full].unflatten(1, (blocks, block)).transpose(0, 1)
        y = torch.bmm(a_blocks, b_blocks).sum(0)
        return y + part[:, full:] @ b[full:] if full < k else y

    # An exported graph keeps the batch symbolic: no loop over it there (one slice).
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return rows_product(a)
    rows = max(1, _PARTIALS_BYTES // max(1, blocks * n * a.element_size()))
    parts = [rows_product(a[s : s + rows]) for s in range(0, m, rows)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class _BlockedLinear(torch.autograd.Function):
    """``y = x W^T + b`` with blocked sums forward and for the input gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = blocked_matmul(x, weight.t())
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        gx = blocked_matmul(grad, weight) if ctx.needs_input_grad[0] else None
        # The weight gradient sums over the batch only (an outer product at batch 1): exact enough.
        gw = grad.t() @ x if ctx.needs_input_grad[1] else None
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def blocked_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for 2-D ``x``, float32 sums taken in blocks of ``BLOCK``.

    Parameters
    ----------
    x : torch.Tensor
        (batch, K) input.
    weight : torch.Tensor
        (N, K) weights, as ``F.linear`` takes them.
    bias : torch.Tensor, optional
        (N,) bias.

    Returns
    -------
    torch.Tensor
        (batch, N). Differentiable; the input gradient ``grad @ weight`` is blocked the same way.
    """
    if x.dtype != torch.float32 or x.dim() != 2:
        return F.linear(x, weight, bias)
    if _needs_custom_backward(x, weight, bias):
        return _BlockedLinear.apply(x, weight, bias)
    # Plain operators: what exporters (ONNX's tracer, torch.export) can follow.
    y = blocked_matmul(x, weight.t())
    return y if bias is None else y + bias


def _needs_custom_backward(*tensors: torch.Tensor | None) -> bool:
    if not torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    return any(t is not None and t.requires_grad for t in tensors)
