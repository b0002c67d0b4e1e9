"""Numpy forward passes of the Caffe layers beyond the ImageNet classifiers' set.

Written from Caffe 1.0's layer rules (``src/caffe/layers/*.cpp``: what each ``Forward_cpu`` computes,
in which order), sharing nothing with ``port/``. Plain functions with explicit keyword parameters;
:mod:`parity.numpy_ref` maps parsed layers onto them. Every function computes in its input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "absval",
    "bnll",
    "elu",
    "exp",
    "log",
    "power",
    "prelu",
    "clip",
    "swish",
    "threshold",
    "bias",
    "mvn",
    "reduction",
    "argmax",
    "embed",
    "deconv2d",
    "im2col",
    "spp_levels",
    "stochastic_pool_test",
    "crop",
    "reshape_shape",
    "slice_sizes",
    "tile",
    "batch_reindex",
    "filter_rows",
]


def _t(x: np.ndarray, v: float):
    return x.dtype.type(v)


# --- point-wise ---------------------------------------------------------------------------------


def absval(x: np.ndarray) -> np.ndarray:
    """``|x|``."""
    return np.abs(x)


def bnll(x: np.ndarray) -> np.ndarray:
    """Binomial normal log likelihood: ``x + log(1 + e^-x)`` for x > 0, else ``log(1 + e^x)``."""
    with np.errstate(over="ignore"):
        pos = x + np.log(_t(x, 1) + np.exp(-np.maximum(x, _t(x, 0))))
        neg = np.log(_t(x, 1) + np.exp(np.minimum(x, _t(x, 0))))
    return np.where(x > 0, pos, neg)


def elu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """``x`` for x > 0, else ``alpha (e^x - 1)``."""
    return np.where(x > 0, x, _t(x, alpha) * (np.exp(np.minimum(x, _t(x, 0))) - _t(x, 1)))


def exp(x: np.ndarray, *, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """``base^(shift + scale x)``; base -1 means e."""
    if base == -1:
        return np.exp(_t(x, shift) + _t(x, scale) * x)
    return np.power(_t(x, base), _t(x, shift) + _t(x, scale) * x)


def log(x: np.ndarray, *, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """``log_base(shift + scale x)``; base -1 means e."""
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(_t(x, shift) + _t(x, scale) * x)
    return y if base == -1 else y / _t(x, math.log(base))


def power(
    x: np.ndarray, *, power: float = 1.0, scale: float = 1.0, shift: float = 0.0
) -> np.ndarray:
    """``(shift + scale x)^power``; a constant when ``power * scale == 0`` (0^0 = 1)."""
    if power == 0:
        return np.ones_like(x)
    if scale == 0:
        return np.full_like(x, shift**power)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.power(_t(x, shift) + _t(x, scale) * x, _t(x, power))


def prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """``max(x, 0) + a_c min(x, 0)``; ``slope`` has one value per channel (axis 1) or one in all."""
    a = np.asarray(slope, dtype=x.dtype)
    a = a.reshape(()) if a.size == 1 else a.reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.maximum(x, _t(x, 0)) + a * np.minimum(x, _t(x, 0))


def clip(x: np.ndarray, *, lo: float, hi: float) -> np.ndarray:
    """``max(lo, min(x, hi))``."""
    return np.maximum(_t(x, lo), np.minimum(x, _t(x, hi)))


def swish(x: np.ndarray, *, beta: float = 1.0) -> np.ndarray:
    """``x sigmoid(beta x)``."""
    return x / (_t(x, 1) + np.exp(-_t(x, beta) * x))


def threshold(x: np.ndarray, *, t: float = 0.0) -> np.ndarray:
    """1 where ``x > t``, else 0."""
    return (x > _t(x, t)).astype(x.dtype)


# --- arithmetic and statistics ------------------------------------------------------------------


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
        sd = np.sqrt((centred * centred).mean(axis=1, keepdims=True)) + _t(x, eps)
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
    return np.asarray(y * _t(x, coeff), dtype=x.dtype)


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


# --- spatial ------------------------------------------------------------------------------------


def deconv2d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    stride: Sequence[int] = (1, 1),
    pad: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    group: int = 1,
) -> np.ndarray:
    """Caffe Deconvolution: every input pixel adds ``x * w`` at ``i * stride + k * dilation - pad``.

    ``w`` is (C, O / group, KH, KW). Output size ``stride (H - 1) + dilation (K - 1) + 1 - 2 pad``.
    """
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    w = np.asarray(w, dtype=x.dtype)
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    full_h, full_w = sh * (h - 1) + dh * (kh - 1) + 1, sw * (wd - 1) + dw * (kw - 1) + 1
    full = np.zeros((n, og * group, full_h, full_w), dtype=x.dtype)
    cg = c // group
    for g in range(group):
        xs = x[:, g * cg : (g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                # (N, Cg, H, W) x (Cg, Og) -> (N, Og, H, W), placed on the strided grid.
                contrib = np.einsum("nchw,co->nohw", xs, w[g * cg : (g + 1) * cg, :, i, j])
                full[
                    :,
                    g * og : (g + 1) * og,
                    i * dh : i * dh + sh * (h - 1) + 1 : sh,
                    j * dw : j * dw + sw * (wd - 1) + 1 : sw,
                ] += contrib
    out = full[:, :, ph : full_h - ph, pw : full_w - pw]
    if b is not None:
        out = out + np.asarray(b, dtype=x.dtype).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(out)


def im2col(
    x: np.ndarray,
    *,
    kernel: Sequence[int],
    stride: Sequence[int] = (1, 1),
    pad: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
) -> np.ndarray:
    """Caffe Im2col: (N, C * KH * KW, OH, OW), rows ordered channel, kernel row, kernel column."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    out = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i, j] = xp[
                :,
                :,
                i * dh : i * dh + sh * (oh - 1) + 1 : sh,
                j * dw : j * dw + sw * (ow - 1) + 1 : sw,
            ]
    return out.reshape(n, c * kh * kw, oh, ow)


def spp_levels(h: int, w: int, pyramid_height: int) -> list[dict]:
    """Pooling kernel, stride and pad of each SPP level: 2^l bins covering the whole image."""
    levels = []
    for level in range(pyramid_height):
        bins = 2**level
        kh, kw = math.ceil(h / bins), math.ceil(w / bins)
        levels.append(
            {
                "kernel": (kh, kw),
                "stride": (kh, kw),
                "pad": ((kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2),
            }
        )
    return levels


def stochastic_pool_test(
    x: np.ndarray, *, kernel: Sequence[int], stride: Sequence[int]
) -> np.ndarray:
    """STOCHASTIC pooling at TEST: ``sum(x^2) / sum(x)`` per window (0 where the sum is <= 0).

    Windows start at ``o * stride``, are clipped to the image, and the output size is Caffe's
    ceil rule without padding. The sum starts at FLT_MIN, as in Caffe's kernel.
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = math.ceil((h - kh) / sh) + 1, math.ceil((w - kw) / sw) + 1
    out = np.zeros((n, c, oh, ow), dtype=x.dtype)
    tiny = _t(x, np.finfo(np.float32).tiny)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * sh : min(i * sh + kh, h), j * sw : min(j * sw + kw, w)]
            total = tiny + win.sum(axis=(2, 3))
            sq = (win * win).sum(axis=(2, 3))
            with np.errstate(divide="ignore", invalid="ignore"):
                out[:, :, i, j] = np.where(total > 0, sq / total, _t(x, 0))
    return out


# --- moving values ------------------------------------------------------------------------------


def crop(
    x: np.ndarray, ref_shape: Sequence[int], *, axis: int = 2, offset: Sequence[int] = ()
) -> np.ndarray:
    """Crop axes from ``axis`` on to ``ref_shape``, starting at ``offset`` (none, one or per axis)."""
    axis %= x.ndim
    n = x.ndim - axis
    off = list(offset) * n if len(offset) == 1 else (list(offset) or [0] * n)
    index = [slice(None)] * axis + [
        slice(o, o + s) for o, s in zip(off, ref_shape[axis:], strict=True)
    ]
    return x[tuple(index)]


def reshape_shape(
    shape: Sequence[int], dims: Sequence[int], *, axis: int = 0, num_axes: int = -1
) -> tuple[int, ...]:
    """Caffe Reshape's top shape: ``dims`` replace axes [axis, axis + num_axes); 0 copies, -1 infers."""
    ndim = len(shape)
    start = axis if axis >= 0 else ndim + axis + 1
    end = ndim if num_axes == -1 else start + num_axes
    new = [shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
    out = list(shape[:start]) + new + list(shape[end:])
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(shape) // known
    return tuple(out)


def slice_sizes(size: int, n_tops: int, points: Sequence[int]) -> list[int]:
    """Sizes of Slice's tops along the axis: between slice points, else ``size / n_tops`` each."""
    if points:
        bounds = [0, *points, size]
        return [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]
    return [size // n_tops] * n_tops


def tile(x: np.ndarray, *, axis: int = 1, tiles: int = 1) -> np.ndarray:
    """The block of axes from ``axis`` on, repeated ``tiles`` times along ``axis``."""
    axis %= x.ndim
    return np.concatenate([x] * tiles, axis=axis)


def batch_reindex(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``x[int(idx[i])]``."""
    return x[np.asarray(idx).astype(np.int64)]


def filter_rows(xs: Sequence[np.ndarray], selector: np.ndarray) -> list[np.ndarray]:
    """The rows of each ``x`` whose selector value is non-zero."""
    keep = np.flatnonzero(np.asarray(selector).reshape(selector.shape[0]) != 0)
    return [x[keep] for x in xs]


# --- recurrent ----------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return _t(x, 1) / (_t(x, 1) + np.exp(-x))


def lstm_unit(
    c_prev: np.ndarray, gates: np.ndarray, cont: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One LSTMUnit step: gates (..., 4H) = [i', f', o', g']; ``f = cont sigmoid(f')``.

    ``c = f c_prev + sigmoid(i') tanh(g')``, ``h = sigmoid(o') tanh(c)``.
    """
    hd = c_prev.shape[-1]
    i = _sigmoid(gates[..., :hd])
    f = np.where(
        cont[..., None] == 0, _t(c_prev, 0), cont[..., None] * _sigmoid(gates[..., hd : 2 * hd])
    )
    o = _sigmoid(gates[..., 2 * hd : 3 * hd])
    g = np.tanh(gates[..., 3 * hd :])
    c = f * c_prev + i * g
    return c, o * np.tanh(c)


def lstm(
    x: np.ndarray,
    cont: np.ndarray,
    w_x: np.ndarray,
    b_x: np.ndarray,
    w_h: np.ndarray,
    *,
    static: np.ndarray | None = None,
    w_s: np.ndarray | None = None,
    h0: np.ndarray | None = None,
    c0: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Caffe's unrolled LSTM: returns [h (T, N, H), h_T (1, N, H), c_T (1, N, H)].

    Per step: ``gates = W_hc (cont_t h_{t-1}) + (W_xc x_t + b_c) [+ W_xc_static x_static]``, then
    :func:`lstm_unit` with ``c_{t-1}``.
    """
    t_steps, n = x.shape[:2]
    xp = x.reshape(t_steps, n, -1) @ w_x.T + b_x
    sp = static.reshape(n, -1) @ w_s.T if static is not None else None
    hd = w_h.shape[1]
    h = h0[0] if h0 is not None else np.zeros((n, hd), dtype=x.dtype)
    c = c0[0] if c0 is not None else np.zeros((n, hd), dtype=x.dtype)
    hs = []
    for t in range(t_steps):
        gates = (h * cont[t][:, None]) @ w_h.T + xp[t]
        if sp is not None:
            gates = gates + sp
        c, h = lstm_unit(c, gates, cont[t])
        hs.append(h)
    return [np.stack(hs), h[None], c[None]]


def rnn(
    x: np.ndarray,
    cont: np.ndarray,
    w_x: np.ndarray,
    b_x: np.ndarray,
    w_h: np.ndarray,
    w_o: np.ndarray,
    b_o: np.ndarray,
    *,
    static: np.ndarray | None = None,
    w_s: np.ndarray | None = None,
    h0: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Caffe's unrolled RNN: returns [o (T, N, H), h_T (1, N, H)].

    ``h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])``,
    ``o_t = tanh(W_ho h_t + b_o)``.
    """
    t_steps, n = x.shape[:2]
    xp = x.reshape(t_steps, n, -1) @ w_x.T + b_x
    sp = static.reshape(n, -1) @ w_s.T if static is not None else None
    h = h0[0] if h0 is not None else np.zeros((n, w_h.shape[1]), dtype=x.dtype)
    outs = []
    for t in range(t_steps):
        pre = (h * cont[t][:, None]) @ w_h.T + xp[t]
        if sp is not None:
            pre = pre + sp
        h = np.tanh(pre)
        outs.append(np.tanh(h @ w_o.T + b_o))
    return [np.stack(outs), h[None]]
