"""Arithmetic and statistics layers: BatchNorm, Scale, Bias, Eltwise, MVN, Reduction, ArgMax, Embed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import typed
from .params import ELTWISE, enum_name, has_field, sub_param
from .registry import registers

__all__ = [
    "argmax",
    "batch_norm",
    "bias",
    "embed",
    "eltwise",
    "mvn",
    "reduction",
    "scale",
]


def batch_norm(
    x: np.ndarray,
    mean_sum: np.ndarray,
    var_sum: np.ndarray,
    scale_factor: np.ndarray | float,
    *,
    eps: float = 1e-5,
) -> np.ndarray:
    """Caffe BatchNorm with stored statistics (TEST phase, ``use_global_stats``).

    Parameters
    ----------
    x : ndarray, shape (N, C, ...)
    mean_sum, var_sum : ndarray, shape (C,)
        Caffe's blobs 0 and 1: running sums, divided by the factor.
    scale_factor : ndarray of shape (1,) or float
        Blob 2, s. The statistics are ``blob / s``, and 0 when s == 0.
    eps : float
    """
    x = np.asarray(x)
    dt = x.dtype
    s = float(np.asarray(scale_factor).reshape(-1)[0])
    f = 0.0 if s == 0 else 1.0 / s
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mean = (np.asarray(mean_sum, dtype=np.float64) * f).astype(dt).reshape(shape)
    var = (np.asarray(var_sum, dtype=np.float64) * f).astype(dt).reshape(shape)
    return (x - mean) / np.sqrt(var + dt.type(eps))


def scale(
    x: np.ndarray,
    factor: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    axis: int = 1,
) -> np.ndarray:
    """Caffe Scale: ``y = x * factor + bias``, factor broadcast from ``axis`` on.

    Parameters
    ----------
    x : ndarray
    factor : ndarray
        Its shape must equal ``x.shape[axis:axis + factor.ndim]`` (the learned blob, whose shape
        encodes ``num_axes``, or the second bottom); a scalar (shape () or (1,) with num_axes 0)
        scales everything.
    bias : ndarray, optional
        Same shape as ``factor``.
    axis : int
        May be negative.
    """
    x = np.asarray(x)
    dt = x.dtype
    f = np.asarray(factor, dtype=dt)
    if f.size == 1 and (f.ndim == 0 or f.shape != x.shape[axis % x.ndim :][: f.ndim]):
        shape: tuple[int, ...] = (1,) * x.ndim
    else:
        ax = axis % x.ndim
        if f.shape != x.shape[ax : ax + f.ndim]:
            raise ValueError(f"scale shape {f.shape} does not match {x.shape} from axis {ax}")
        shape = (1,) * ax + f.shape + (1,) * (x.ndim - ax - f.ndim)
    y = x * f.reshape(shape)
    if bias is not None:
        y = y + np.asarray(bias, dtype=dt).reshape(shape)
    return y


def eltwise(
    xs: Sequence[np.ndarray], *, operation: str = "sum", coeff: Sequence[float] | None = None
) -> np.ndarray:
    """Caffe Eltwise: SUM (with optional per-bottom coefficients), PROD or MAX."""
    xs = [np.asarray(a) for a in xs]
    dt = xs[0].dtype
    if operation == "sum":
        coeff = list(coeff) if coeff else [1.0] * len(xs)
        if len(coeff) != len(xs):
            raise ValueError("Eltwise coeff must have one value per bottom")
        y = np.zeros_like(xs[0])
        for c, a in zip(coeff, xs, strict=True):
            y += a if c == 1 else dt.type(c) * a
        return y
    if operation == "prod":
        y = xs[0].copy()
        for a in xs[1:]:
            y *= a
        return y
    if operation == "max":
        y = xs[0].copy()
        for a in xs[1:]:
            y = np.maximum(y, a)
        return y
    raise ValueError(f"unsupported Eltwise operation {operation!r}")


def bias(x: np.ndarray, b: np.ndarray, *, axis: int) -> np.ndarray:
    """``x + b``, ``b`` laid along the axes of x from ``axis`` on (a one-value b adds everywhere)."""
    b = np.asarray(b, dtype=x.dtype)
    if b.ndim == 0:
        return x + b
    return x + b.reshape((1,) * axis + b.shape + (1,) * (x.ndim - axis - b.ndim))


def mvn(
    x: np.ndarray,
    *,
    normalize_variance: bool = True,
    across_channels: bool = False,
    eps: float = 1e-9,
) -> np.ndarray:
    """Mean-variance normalisation per sample (and per channel unless ``across_channels``).

    ``y = (x - mean) / (sqrt(mean((x - mean)^2)) + eps)``: eps is added to the standard deviation.
    """
    rows = x.shape[0] if across_channels else x.shape[0] * x.shape[1]
    flat = x.reshape(rows, -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    if normalize_variance:
        sd = np.sqrt((centred * centred).mean(axis=1, keepdims=True)) + typed(x, eps)
        centred = centred / sd
    return centred.reshape(x.shape)


def reduction(
    x: np.ndarray, *, operation: str = "SUM", axis: int = 0, coeff: float = 1.0
) -> np.ndarray:
    """Reduce all axes from ``axis`` on (SUM, ASUM, SUMSQ or MEAN), times ``coeff``."""
    axis %= x.ndim
    flat = x.reshape(x.shape[:axis] + (-1,))
    y = {
        "SUM": lambda a: a.sum(-1),
        "ASUM": lambda a: np.abs(a).sum(-1),
        "SUMSQ": lambda a: (a * a).sum(-1),
        "MEAN": lambda a: a.mean(-1),
    }[operation](flat)
    return np.asarray(y * typed(x, coeff), dtype=x.dtype)


def argmax(
    x: np.ndarray, *, top_k: int = 1, out_max_val: bool = False, axis: int | None = None
) -> np.ndarray:
    """Caffe ArgMax: indices (or values) of the ``top_k`` largest, ties to the larger index.

    Without ``axis`` each sample is flattened and the top is (N, 1 or 2, top_k, 1...): indices, then
    (``out_max_val``) values. With ``axis`` the top keeps x's shape with ``top_k`` along it, holding
    values if ``out_max_val`` else indices.
    """

    def top(a: np.ndarray, ax: int) -> tuple[np.ndarray, np.ndarray]:
        moved = np.moveaxis(a, ax, -1)
        n = moved.shape[-1]
        rows = moved.reshape(-1, n)
        pos = np.broadcast_to(np.arange(n), rows.shape)
        # Ascending by (value, index), reversed: descending, the larger index first on ties.
        order = np.lexsort((pos, rows), axis=-1)[:, ::-1][:, :top_k]
        vals = np.take_along_axis(rows, order, axis=-1)
        shape = moved.shape[:-1] + (top_k,)
        return (np.moveaxis(order.reshape(shape), -1, ax), np.moveaxis(vals.reshape(shape), -1, ax))

    if axis is not None:
        idx, val = top(x, axis % x.ndim)
        return val if out_max_val else idx.astype(x.dtype)
    idx, val = top(x.reshape(x.shape[0], -1), 1)
    parts = [idx.astype(x.dtype)] + ([val] if out_max_val else [])
    out = np.stack(parts, axis=1)
    return out.reshape(out.shape + (1,) * (max(x.ndim, 3) - 3))


def embed(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``w`` (input_dim, num_output) at the indices ``int(x)`` (truncated), plus ``b``."""
    idx = np.trunc(x).astype(np.int64)
    if idx.min(initial=0) < 0 or idx.max(initial=0) >= w.shape[0]:
        raise ValueError(f"Embed index outside [0, {w.shape[0]})")
    y = np.asarray(w, dtype=x.dtype)[idx]
    return y if b is None else y + np.asarray(b, dtype=x.dtype)


@registers("BatchNorm")
def _batch_norm(layer, bottoms, weights):
    p = sub_param(layer, "batch_norm_param")
    return [batch_norm(bottoms[0], weights[0], weights[1], weights[2], eps=float(p.eps))]


@registers("Scale")
def _scale(layer, bottoms, weights):
    x = bottoms[0]
    p = sub_param(layer, "scale_param")
    axis = int(p.axis) % x.ndim
    if len(bottoms) == 2:
        factor = bottoms[1]
        bias = weights[0] if (p.bias_term and weights) else None
    else:
        num_axes = int(p.num_axes)
        end = x.ndim if num_axes == -1 else axis + num_axes
        # Learned blobs may be stored flat; give them the shape num_axes implies.
        factor = np.asarray(weights[0]).reshape(x.shape[axis:end])
        bias = (
            np.asarray(weights[1]).reshape(x.shape[axis:end])
            if (p.bias_term and len(weights) > 1)
            else None
        )
    return [scale(x, factor, bias, axis=axis)]


@registers("Eltwise")
def _eltwise(layer, bottoms, weights):
    p = sub_param(layer, "eltwise_param")
    return [eltwise(bottoms, operation=ELTWISE[p.operation], coeff=list(p.coeff))]


@registers("Bias")
def _bias(layer, bottoms, weights):
    x = bottoms[0]
    p = sub_param(layer, "bias_param")
    if len(bottoms) == 2:
        b = bottoms[1]
        axis = 0 if b.ndim == 0 else int(p.axis) % x.ndim
    else:
        axis = int(p.axis) % x.ndim
        end = x.ndim if int(p.num_axes) == -1 else axis + int(p.num_axes)
        b = np.asarray(weights[0]).reshape(x.shape[axis:end])
    return [bias(x, b, axis=axis)]


@registers("MVN")
def _mvn(layer, bottoms, weights):
    p = sub_param(layer, "mvn_param")
    return [
        mvn(
            bottoms[0],
            normalize_variance=bool(p.normalize_variance),
            across_channels=bool(p.across_channels),
            eps=float(p.eps),
        )
    ]


@registers("Reduction")
def _reduction(layer, bottoms, weights):
    p = sub_param(layer, "reduction_param")
    return [
        reduction(
            bottoms[0], operation=enum_name(p, "operation"), axis=int(p.axis), coeff=float(p.coeff)
        )
    ]


@registers("ArgMax")
def _argmax(layer, bottoms, weights):
    p = sub_param(layer, "argmax_param")
    return [
        argmax(
            bottoms[0],
            top_k=int(p.top_k),
            out_max_val=bool(p.out_max_val),
            axis=int(p.axis) if has_field(p, "axis") else None,
        )
    ]


@registers("Embed")
def _embed(layer, bottoms, weights):
    p = sub_param(layer, "embed_param")
    w = np.asarray(weights[0]).reshape(int(p.input_dim), int(p.num_output))
    return [embed(bottoms[0], w, weights[1] if (p.bias_term and len(weights) > 1) else None)]
