"""Float32 blobs with float64 arithmetic: the port's accurate numeric mode.

The fast path computes every layer in the blobs' own float32; the kernels behind it (oneDNN's
convolutions above all) sum long products in orders that land farther from float64 than Caffe's
im2col + BLAS does, by up to 7x when the CPU is capped at AVX2 (issue 26). Splitting channels per
kernel shape would tune the error to one kernel on one machine; computing each layer in float64
instead bounds it everywhere: the only float32 error left is the rounding of each blob (and, going
backwards, of each blob's gradient), which is what a float32 framework cannot avoid.

:func:`run_layer_float64` runs one layer that way. Its bottoms are widened to float64, the layer
runs on float64 copies of its parameters and buffers (kept per layer and rebuilt only when the
float32 tensor changes), and its tops are rounded back to the storage dtype. Autograd then does the
backward the same way: the rounding cast's backward widens the incoming float32 gradient, the layer's
backward runs in float64, and the widening cast's backward rounds the bottom's gradient to float32.
A parameter's gradient is rounded to its own dtype on the way back (:class:`_Widen`), so training
code sees the same float32 parameters and gradients as on the fast path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ACCUMULATE", "WideParams", "check_accumulate", "run_layer_float64"]

#: The accumulation modes a net can run in: ``"float32"`` (the blobs' own dtype, fast) and
#: ``"float64"`` (float32 storage, float64 arithmetic inside each layer).
ACCUMULATE = ("float32", "float64")


def check_accumulate(value: str) -> str:
    """``value`` when it is one of :data:`ACCUMULATE`, else ``ValueError``."""
    if value not in ACCUMULATE:
        raise ValueError(f"accumulate must be one of {', '.join(ACCUMULATE)}, not {value!r}")
    return value


class _Widen(torch.autograd.Function):
    """A cached float64 copy of a parameter that still routes the gradient to the parameter.

    Forward returns the copy (no cast per call); backward rounds the float64 gradient to the
    parameter's dtype, as a float32 framework stores it.
    """

    @staticmethod
    def forward(ctx, param, wide):
        ctx.dtype = param.dtype
        return wide.view_as(wide)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.dtype), None


def _stamp(t: torch.Tensor) -> tuple:
    # In-place writes bump the version counter; `param.data = ...` or `.to()` changes the storage.
    return (t._version, t.data_ptr(), t.dtype, t.device, tuple(t.shape))


class WideParams:
    """Float64 copies of the floating parameters and buffers of each layer, rebuilt when stale.

    Held by the net outside its module tree, so that ``state_dict``, ``parameters()`` and saved
    artefacts see only the float32 tensors.
    """

    def __init__(self) -> None:
        self._cache: dict[int, dict[str, tuple[tuple, torch.Tensor]]] = {}

    def clear(self) -> None:
        """Drop every copy (the next call rebuilds them)."""
        self._cache.clear()

    def __deepcopy__(self, memo) -> WideParams:
        return WideParams()  # copies belong to the original's tensors; a copy starts empty

    def of(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The float64 stand-ins of ``module``'s floating tensors, by their qualified names."""
        slot = self._cache.setdefault(id(module), {})
        named = [*module.named_parameters(), *module.named_buffers()]
        out: dict[str, torch.Tensor] = {}
        for name, t in named:
            if not t.is_floating_point() or t.dtype == torch.float64:
                continue
            stamp = _stamp(t)
            held = slot.get(name)
            if held is None or held[0] != stamp:
                held = (stamp, t.detach().to(torch.float64))
                slot[name] = held
            wide = held[1]
            if isinstance(t, nn.Parameter) and t.requires_grad and torch.is_grad_enabled():
                wide = _Widen.apply(t, wide)
            out[name] = wide
        return out


def run_layer_float64(
    module: nn.Module,
    bottoms: Sequence[torch.Tensor],
    params: WideParams,
    storage: torch.dtype,
) -> list[torch.Tensor]:
    """Run ``module`` in float64 on ``bottoms`` and round its floating tops to ``storage``.

    Parameters
    ----------
    module : nn.Module
        A layer module (its ``forward`` takes the bottoms and returns a list of tops).
    bottoms : sequence of Tensor
        Already widened by the caller (one float64 tensor per blob, shared by all its consumers, so
        that a blob's gradient from several consumers is summed in float64 and rounded once).
    params : WideParams
        The net's cache of float64 parameter copies.
    storage : torch.dtype
        The blobs' dtype (float32).

    Returns
    -------
    list of Tensor
        The tops, floating ones in ``storage``; others (indices) as the layer made them.
    """
    wide = params.of(module)
    if wide:
        tops = torch.func.functional_call(module, wide, tuple(bottoms), strict=False)
    else:
        tops = module(*bottoms)
    return [t.to(storage) if t.is_floating_point() else t for t in tops]


def widen(t: torch.Tensor) -> torch.Tensor:
    """A floating blob as float64 (other tensors as they are)."""
    return t.to(torch.float64) if t.is_floating_point() else t
