"""An independent numpy implementation of the forward pass of every layer the port supports.

Written from the layer rules in ``shared/spec/caffe-semantics.md`` only; it shares nothing with
``port/`` except the parsed definition (``NetDef``/``LayerDef``) that :func:`forward_net` walks. The
layer functions are plain functions with explicit keyword parameters so that tests elsewhere (the
port's layer tests, hypothesis over shapes) can call them as the reference.

Every function computes in the dtype of its input: pass float32 arrays for the "numpy32" column and
float64 arrays for the "numpy64" (truth) column. Weights are cast to the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from port.blobkeys import data_key

from . import numpy_layers as nl

__all__ = [
    "conv2d",
    "pool_output_size",
    "pool2d",
    "pool_windows",
    "max_pool_argmax",
    "lrn",
    "inner_product",
    "relu",
    "dropout",
    "sigmoid",
    "tanh",
    "softmax",
    "concat",
    "batch_norm",
    "scale",
    "eltwise",
    "flatten",
    "split",
    "forward_layer",
    "forward_net",
    "SUPPORTED_TYPES",
]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(i) for i in v)
    if len(v) == 1:
        return v[0], v[0]
    if len(v) != 2:
        raise ValueError(f"expected one or two values, got {v}")
    return v  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------------


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    stride: int | Sequence[int] = 1,
    pad: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    group: int = 1,
) -> np.ndarray:
    """Caffe convolution (cross-correlation) by im2col and one matrix product per group.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        Input; its dtype is the computation dtype.
    w : ndarray, shape (O, C // group, KH, KW)
        Filters.
    b : ndarray, shape (O,), optional
        Bias (``bias_term: false`` -> None).
    stride, pad, dilation : int or (int, int)
        Per axis (h, w) or one value for both. Padding is with zeros.
    group : int
        Input and output channels are split into ``group`` equal slices; slice g of the output sees
        only slice g of the input.

    Returns
    -------
    ndarray, shape (N, O, OH, OW)
        ``OH = (H + 2 pad_h - (dilation_h (KH - 1) + 1)) // stride_h + 1`` (floor, as Caffe).
    """
    x = np.asarray(x)
    dt = x.dtype
    w = np.asarray(w, dtype=dt)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if c % group or o % group or cg != c // group:
        raise ValueError(f"channels {c} / outputs {o} / weight {w.shape} do not fit group {group}")
    sh, sw = _pair(stride)
    ph, pw = _pair(pad)
    dh, dw = _pair(dilation)
    ekh, ekw = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    oh = (h + 2 * ph - ekh) // sh + 1
    ow = (wd + 2 * pw - ekw) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"convolution output would be empty ({oh}x{ow})")
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=dt)
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    s = xp.strides
    win = as_strided(
        xp,
        shape=(n, c, oh, ow, kh, kw),
        strides=(s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw),
        writeable=False,
    )
    og = o // group
    out = np.empty((n, o, oh, ow), dtype=dt)
    for g in range(group):
        # (N, OH, OW, Cg, KH, KW) rows so each output pixel is one row of the column matrix.
        cols = win[:, g * cg : (g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, -1)
        wg = w[g * og : (g + 1) * og].reshape(og, -1)
        out[:, g * og : (g + 1) * og] = (cols @ wg.T).reshape(n, oh, ow, og).transpose(0, 3, 1, 2)
    if b is not None:
        out += np.asarray(b, dtype=dt).reshape(1, o, 1, 1)
    return out


# --------------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------------


def pool_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's pooled size along one axis.

    ``ceil((size + 2 pad - kernel) / stride) + 1``, minus one when ``pad > 0`` and the last window
    would start at or beyond ``size + pad`` (Caffe clips it so every window starts inside the image
    or its padding).
    """
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_windows(
    x: np.ndarray,
    *,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    fill: float,
) -> np.ndarray:
    """Strided view (N, C, OH, OW, KH, KW) of every pooling window, cells outside the image = fill.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel, stride, pad : (int, int)
        Per axis (h, w).
    fill : float
        Value of window cells that fall outside the image (padding and the ceil-mode overhang):
        ``-inf`` for MAX (so they never win), 0 for AVE.
    """
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    oh, ow = pool_output_size(h, kh, sh, ph), pool_output_size(w, kw, sw, pw)
    # Cover index range [-pad, (out-1)*stride - pad + kernel) on each axis.
    right_h = max((oh - 1) * sh - ph + kh - h, 0)
    right_w = max((ow - 1) * sw - pw + kw - w, 0)
    xp = np.full((n, c, ph + h + right_h, pw + w + right_w), fill, dtype=x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    s = xp.strides
    return as_strided(
        xp,
        shape=(n, c, oh, ow, kh, kw),
        strides=(s[0], s[1], s[2] * sh, s[3] * sw, s[2], s[3]),
        writeable=False,
    )


def _pool_geometry(
    x: np.ndarray, kernel, stride, pad, global_pooling: bool
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    if global_pooling:
        return (x.shape[2], x.shape[3]), (1, 1), (0, 0)
    return _pair(kernel), _pair(stride), _pair(pad)


def pool2d(
    x: np.ndarray,
    *,
    method: str = "max",
    kernel: int | Sequence[int] = 1,
    stride: int | Sequence[int] = 1,
    pad: int | Sequence[int] = 0,
    global_pooling: bool = False,
) -> np.ndarray:
    """Caffe pooling (MAX or AVE), with Caffe's output size and window clipping.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    method : {"max", "ave"}
    kernel, stride, pad : int or (int, int)
        Ignored (kernel = whole image, stride 1, pad 0) when ``global_pooling``.
    global_pooling : bool

    Returns
    -------
    ndarray, shape (N, C, OH, OW)
        Sizes from :func:`pool_output_size`. MAX takes the maximum over the window clipped to the
        image. AVE sums over the window clipped to the image and divides by the window clipped to
        ``H + pad`` (padding counts, the ceil-mode overhang beyond the padding does not).
    """
    x = np.asarray(x)
    k, s, p = _pool_geometry(x, kernel, stride, pad, global_pooling)
    if method == "max":
        return pool_windows(x, kernel=k, stride=s, pad=p, fill=-np.inf).max(axis=(4, 5))
    if method != "ave":
        raise ValueError(f"unsupported pooling method {method!r}")
    win = pool_windows(x, kernel=k, stride=s, pad=p, fill=0.0)
    oh, ow = win.shape[2:4]
    h, w = x.shape[2:]

    def extent(out: int, size: int, kk: int, ss: int, pp: int) -> np.ndarray:
        start = np.arange(out) * ss - pp
        return np.minimum(start + kk, size + pp) - start

    div = extent(oh, h, k[0], s[0], p[0])[:, None] * extent(ow, w, k[1], s[1], p[1])[None, :]
    return win.sum(axis=(4, 5)) / div.astype(x.dtype)


def max_pool_argmax(
    x: np.ndarray,
    *,
    kernel: int | Sequence[int] = 1,
    stride: int | Sequence[int] = 1,
    pad: int | Sequence[int] = 0,
    global_pooling: bool = False,
) -> np.ndarray:
    """For each MAX window, the flat index ``h * W + w`` into the input plane of the element chosen.

    Ties go to the first element in row-major window order (Caffe scans rows then columns and
    replaces only on a strictly greater value).

    Returns
    -------
    ndarray of int64, shape (N, C, OH, OW)
    """
    x = np.asarray(x)
    k, s, p = _pool_geometry(x, kernel, stride, pad, global_pooling)
    win = pool_windows(x, kernel=k, stride=s, pad=p, fill=-np.inf)
    n, c, oh, ow, kh, kw = win.shape
    arg = win.reshape(n, c, oh, ow, kh * kw).argmax(axis=-1)
    hh = (np.arange(oh) * s[0] - p[0])[:, None] + arg // kw
    ww = (np.arange(ow) * s[1] - p[1])[None, :] + arg % kw
    return (hh * x.shape[3] + ww).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Normalisation and point-wise layers
# --------------------------------------------------------------------------------------------------


def lrn(
    x: np.ndarray,
    *,
    local_size: int = 5,
    alpha: float = 1.0,
    beta: float = 0.75,
    k: float = 1.0,
    region: str = "across",
) -> np.ndarray:
    """Caffe local response normalisation.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    local_size : int
        n, odd.
    alpha, beta, k : float
        ACROSS: ``y = x (k + alpha/n sum_{n channels centred on c, zero padded} x^2)^-beta``.
        WITHIN: ``y = x (1 + alpha avgpool_{n x n, pad (n-1)/2}(x^2))^-beta``; k is ignored.
    region : {"across", "within"}
    """
    x = np.asarray(x)
    dt = x.dtype
    if local_size % 2 != 1:
        raise ValueError("LRN local_size must be odd")
    half = (local_size - 1) // 2
    sq = x * x
    if region == "across":
        c = x.shape[1]
        padded = np.zeros((x.shape[0], c + 2 * half) + x.shape[2:], dtype=dt)
        padded[:, half : half + c] = sq
        acc = np.zeros_like(x)
        for i in range(local_size):
            acc += padded[:, i : i + c]
        scl = dt.type(k) + dt.type(alpha / local_size) * acc
    elif region == "within":
        avg = pool2d(sq, method="ave", kernel=local_size, stride=1, pad=half)
        scl = dt.type(1.0) + dt.type(alpha) * avg
    else:
        raise ValueError(f"unsupported LRN region {region!r}")
    return x * np.power(scl, dt.type(-beta))


def inner_product(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    axis: int = 1,
    transpose: bool = False,
) -> np.ndarray:
    """Caffe InnerProduct: flatten from ``axis``, ``y = x W^T + b`` (``y = x W + b`` if transpose).

    Parameters
    ----------
    x : ndarray
    w : ndarray, shape (num_output, K), or (K, num_output) when ``transpose``
        Any shape with those element counts (V1 caffemodels store it as (1, 1, N, K)).
    b : ndarray, shape (num_output,), optional
    axis : int
        First axis that is flattened into K; may be negative.

    Returns
    -------
    ndarray, shape ``x.shape[:axis] + (num_output,)``
    """
    x = np.asarray(x)
    dt = x.dtype
    axis = axis % x.ndim
    lead = x.shape[:axis]
    kdim = int(np.prod(x.shape[axis:]))
    x2 = x.reshape(int(np.prod(lead)), kdim)
    w = np.asarray(w, dtype=dt)
    w2 = w.reshape(kdim, -1) if transpose else w.reshape(-1, kdim).T
    y = x2 @ w2
    if b is not None:
        y = y + np.asarray(b, dtype=dt).reshape(1, -1)
    return y.reshape(lead + (y.shape[1],))


def relu(x: np.ndarray, *, negative_slope: float = 0.0) -> np.ndarray:
    """Caffe ReLU: ``max(x, 0) + negative_slope * min(x, 0)``."""
    x = np.asarray(x)
    if negative_slope == 0:
        return np.maximum(x, x.dtype.type(0))
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic sigmoid ``1 / (1 + exp(-x))``."""
    x = np.asarray(x)
    return x.dtype.type(1) / (x.dtype.type(1) + np.exp(-x))


def tanh(x: np.ndarray) -> np.ndarray:
    """Hyperbolic tangent."""
    return np.tanh(np.asarray(x))


def dropout(x: np.ndarray) -> np.ndarray:
    """Dropout at TEST time: the identity (Caffe scales at TRAIN time, not at TEST time)."""
    return np.array(x, copy=True)


def softmax(x: np.ndarray, *, axis: int = 1) -> np.ndarray:
    """Softmax along ``axis`` (max subtracted first, as Caffe does, to avoid overflow)."""
    x = np.asarray(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def concat(xs: Sequence[np.ndarray], *, axis: int = 1) -> np.ndarray:
    """Caffe Concat along ``axis``."""
    return np.concatenate([np.asarray(a) for a in xs], axis=axis)


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


def flatten(x: np.ndarray, *, axis: int = 1, end_axis: int = -1) -> np.ndarray:
    """Caffe Flatten: merge axes ``axis..end_axis`` (inclusive, negatives count from the end)."""
    x = np.asarray(x)
    a, e = axis % x.ndim, end_axis % x.ndim
    return x.reshape(x.shape[:a] + (int(np.prod(x.shape[a : e + 1])),) + x.shape[e + 1 :])


def split(x: np.ndarray, n: int) -> list[np.ndarray]:
    """Caffe Split: ``n`` copies of the input."""
    return [np.array(x, copy=True) for _ in range(n)]


# --------------------------------------------------------------------------------------------------
# Driving the layer functions from a parsed definition
# --------------------------------------------------------------------------------------------------


def _has(msg: Any, field: str) -> bool:
    try:
        return bool(msg.HasField(field))
    except (AttributeError, ValueError):
        v = getattr(msg, field, None)
        return v is not None and v != 0


def _spatial(p: Any, name: str, default: int, hw: str | None = None) -> tuple[int, int]:
    """(h, w) of a convolution/pooling field given as ``name``, ``<hw>_h``/``<hw>_w`` or repeated."""
    hw = hw or name
    if _has(p, f"{hw}_h") or _has(p, f"{hw}_w"):
        return int(getattr(p, f"{hw}_h")), int(getattr(p, f"{hw}_w"))
    v = getattr(p, name, None)
    if v is None:
        return default, default
    if isinstance(v, (int, np.integer)):
        # Pooling's fields are optional scalars; an unset one reads as the proto default.
        return int(v), int(v)
    v = list(v)
    if not v:
        return default, default
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


_POOL = {0: "max", 1: "ave", "MAX": "max", "AVE": "ave"}
_LRN_REGION = {0: "across", 1: "within", "ACROSS_CHANNELS": "across", "WITHIN_CHANNEL": "within"}
_ELTWISE = {0: "prod", 1: "sum", 2: "max", "PROD": "prod", "SUM": "sum", "MAX": "max"}


def _sub(layer: Any, name: str) -> Any:
    return getattr(layer.param, name)


LayerFn = Callable[[Any, Sequence[np.ndarray], Sequence[np.ndarray]], list[np.ndarray]]
#: Caffe layer type -> ``(layer, bottoms, weights) -> tops`` adapter.
LAYERS: dict[str, LayerFn] = {}


def _registers(*types: str) -> Callable[[LayerFn], LayerFn]:
    """Register a ``(layer, bottoms, weights) -> tops`` adapter for Caffe layer types."""

    def deco(fn: LayerFn) -> LayerFn:
        for t in types:
            LAYERS[t] = fn
        return fn

    return deco


def forward_layer(
    layer: Any, bottoms: Sequence[np.ndarray], weights: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Run one parsed layer on numpy inputs.

    Parameters
    ----------
    layer : LayerDef
        ``.type`` (V2 type string) and ``.param`` (protobuf ``LayerParameter``).
    bottoms : sequence of ndarray
        Bottom blobs; their dtype is the computation dtype.
    weights : sequence of ndarray
        The layer's learned blobs, in Caffe's order (empty for layers without any).

    Returns
    -------
    list of ndarray
        One array per top.
    """
    fn = layer_function(layer)
    if fn is None:
        hint = (
            f'parity.numpy_ref.register("Python", fn, module={layer.param.python_param.module!r}, '
            f"layer={layer.param.python_param.layer!r})"
            if layer.type == "Python"
            else f"parity.numpy_ref.register({layer.type!r}, fn)"
        )
        raise UnknownLayerError(
            f"layer {layer.name!r}: numpy reference has no layer type "
            f"{layer.type!r}; register one with {hint}"
        )
    return fn(layer, bottoms, weights)


class UnknownLayerError(ValueError):
    """A layer type the numpy reference has no function for (a fork's or a Python layer)."""


#: (``"Python"``, module, layer) -> adapter, for Python layers told apart by their python_param.
PYTHON_LAYERS: dict[tuple[str, str], LayerFn] = {}


def register(
    layer_type: str, fn: LayerFn, *, module: str | None = None, layer: str | None = None
) -> None:
    """Give the numpy reference a custom layer: ``fn(layer, bottoms, weights) -> list of tops``.

    The counterpart of :func:`port.register_layer` for the independent reference; ``fn`` should be
    written from the layer's own definition (the fork's C++ or the Python layer), not from the
    port's module. ``module``/``layer`` select one Python layer (``layer_type="Python"``).
    """
    if (module is None) != (layer is None):
        raise ValueError("give both module and layer (a Python layer's python_param), or neither")
    if module is not None:
        if layer_type != "Python":
            raise ValueError(f"module/layer match Python layers only, not type {layer_type!r}")
        PYTHON_LAYERS[(module, layer)] = fn
    else:
        LAYERS[layer_type] = fn


def unregister(layer_type: str, *, module: str | None = None, layer: str | None = None) -> None:
    """Remove a registration made by :func:`register` (no error when there is none)."""
    if module is not None:
        PYTHON_LAYERS.pop((module, layer), None)
    else:
        LAYERS.pop(layer_type, None)


def layer_function(layer: Any) -> LayerFn | None:
    """The adapter that computes ``layer``, or None where the reference has none."""
    if layer.type == "Python":
        p = layer.param.python_param
        found = PYTHON_LAYERS.get((p.module, p.layer))
        if found is not None:
            return found
    return LAYERS.get(layer.type)


def missing_layers(netdef: Any) -> list[str]:
    """Names of the layers of ``netdef`` the numpy reference cannot compute."""
    return [layer.name for layer in netdef.layers if layer_function(layer) is None]


@_registers("Convolution")
def _convolution(layer, bottoms, weights):
    x = bottoms[0]
    p = _sub(layer, "convolution_param")
    kh, kw = _spatial(p, "kernel_size", 1, "kernel")
    w = np.asarray(weights[0]).reshape(-1, x.shape[1] // max(int(p.group), 1), kh, kw)
    b = weights[1] if (p.bias_term and len(weights) > 1) else None
    return [
        conv2d(
            x,
            w,
            b,
            stride=_spatial(p, "stride", 1),
            pad=_spatial(p, "pad", 0),
            dilation=_spatial(p, "dilation", 1),
            group=int(p.group) or 1,
        )
    ]


@_registers("Pooling")
def _pooling(layer, bottoms, weights):
    p = _sub(layer, "pooling_param")
    if p.pool == 2:  # STOCHASTIC: its TEST-phase rule
        k = bottoms[0].shape[2:] if p.global_pooling else _spatial(p, "kernel_size", 1, "kernel")
        return [nl.stochastic_pool_test(bottoms[0], kernel=k, stride=_spatial(p, "stride", 1))]
    method = _POOL.get(p.pool)
    if method is None:
        raise ValueError(f"layer {layer.name}: unsupported pooling method {p.pool}")
    return [
        pool2d(
            bottoms[0],
            method=method,
            kernel=_spatial(p, "kernel_size", 1, "kernel"),
            stride=_spatial(p, "stride", 1),
            pad=_spatial(p, "pad", 0),
            global_pooling=bool(p.global_pooling),
        )
    ]


@_registers("LRN")
def _lrn(layer, bottoms, weights):
    p = _sub(layer, "lrn_param")
    return [
        lrn(
            bottoms[0],
            local_size=int(p.local_size),
            alpha=float(p.alpha),
            beta=float(p.beta),
            k=float(p.k),
            region=_LRN_REGION[p.norm_region],
        )
    ]


@_registers("InnerProduct")
def _inner_product(layer, bottoms, weights):
    p = _sub(layer, "inner_product_param")
    b = weights[1] if (p.bias_term and len(weights) > 1) else None
    return [inner_product(bottoms[0], weights[0], b, axis=int(p.axis), transpose=bool(p.transpose))]


@_registers("ReLU")
def _relu(layer, bottoms, weights):
    return [relu(bottoms[0], negative_slope=float(_sub(layer, "relu_param").negative_slope))]


@_registers("Dropout")
def _dropout(layer, bottoms, weights):
    return [dropout(bottoms[0])]


@_registers("Sigmoid")
def _sigmoid(layer, bottoms, weights):
    return [sigmoid(bottoms[0])]


@_registers("TanH")
def _tanh(layer, bottoms, weights):
    return [tanh(bottoms[0])]


@_registers("Softmax")
def _softmax(layer, bottoms, weights):
    return [softmax(bottoms[0], axis=int(_sub(layer, "softmax_param").axis))]


@_registers("Concat")
def _concat(layer, bottoms, weights):
    p = _sub(layer, "concat_param")
    axis = int(p.concat_dim) if _has(p, "concat_dim") else int(p.axis)
    return [concat(bottoms, axis=axis)]


@_registers("BatchNorm")
def _batch_norm(layer, bottoms, weights):
    p = _sub(layer, "batch_norm_param")
    return [batch_norm(bottoms[0], weights[0], weights[1], weights[2], eps=float(p.eps))]


@_registers("Scale")
def _scale(layer, bottoms, weights):
    x = bottoms[0]
    p = _sub(layer, "scale_param")
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


@_registers("Eltwise")
def _eltwise(layer, bottoms, weights):
    p = _sub(layer, "eltwise_param")
    return [eltwise(bottoms, operation=_ELTWISE[p.operation], coeff=list(p.coeff))]


@_registers("Flatten")
def _flatten(layer, bottoms, weights):
    p = _sub(layer, "flatten_param")
    return [flatten(bottoms[0], axis=int(p.axis), end_axis=int(p.end_axis))]


@_registers("Split")
def _split(layer, bottoms, weights):
    return split(bottoms[0], len(layer.tops))


def _enum(msg: Any, field: str) -> str:
    """Name of an enum field's value (protobuf message) or the value itself (plain objects)."""
    v = getattr(msg, field)
    try:
        return msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[v].name
    except (AttributeError, KeyError):
        return str(v)


@_registers("AbsVal")
def _absval(layer, bottoms, weights):
    return [nl.absval(bottoms[0])]


@_registers("BNLL")
def _bnll(layer, bottoms, weights):
    return [nl.bnll(bottoms[0])]


@_registers("ELU")
def _elu(layer, bottoms, weights):
    return [nl.elu(bottoms[0], alpha=float(_sub(layer, "elu_param").alpha))]


@_registers("Exp")
def _exp(layer, bottoms, weights):
    p = _sub(layer, "exp_param")
    return [nl.exp(bottoms[0], base=float(p.base), scale=float(p.scale), shift=float(p.shift))]


@_registers("Log")
def _log(layer, bottoms, weights):
    p = _sub(layer, "log_param")
    return [nl.log(bottoms[0], base=float(p.base), scale=float(p.scale), shift=float(p.shift))]


@_registers("Power")
def _power(layer, bottoms, weights):
    p = _sub(layer, "power_param")
    return [nl.power(bottoms[0], power=float(p.power), scale=float(p.scale), shift=float(p.shift))]


@_registers("PReLU")
def _prelu(layer, bottoms, weights):
    return [nl.prelu(bottoms[0], weights[0])]


@_registers("Clip")
def _clip(layer, bottoms, weights):
    p = _sub(layer, "clip_param")
    return [nl.clip(bottoms[0], lo=float(p.min), hi=float(p.max))]


@_registers("Swish")
def _swish(layer, bottoms, weights):
    return [nl.swish(bottoms[0], beta=float(_sub(layer, "swish_param").beta))]


@_registers("Threshold")
def _threshold(layer, bottoms, weights):
    return [nl.threshold(bottoms[0], t=float(_sub(layer, "threshold_param").threshold))]


@_registers("Bias")
def _bias(layer, bottoms, weights):
    x = bottoms[0]
    p = _sub(layer, "bias_param")
    if len(bottoms) == 2:
        b = bottoms[1]
        axis = 0 if b.ndim == 0 else int(p.axis) % x.ndim
    else:
        axis = int(p.axis) % x.ndim
        end = x.ndim if int(p.num_axes) == -1 else axis + int(p.num_axes)
        b = np.asarray(weights[0]).reshape(x.shape[axis:end])
    return [nl.bias(x, b, axis=axis)]


@_registers("MVN")
def _mvn(layer, bottoms, weights):
    p = _sub(layer, "mvn_param")
    return [
        nl.mvn(
            bottoms[0],
            normalize_variance=bool(p.normalize_variance),
            across_channels=bool(p.across_channels),
            eps=float(p.eps),
        )
    ]


@_registers("Reduction")
def _reduction(layer, bottoms, weights):
    p = _sub(layer, "reduction_param")
    return [
        nl.reduction(
            bottoms[0], operation=_enum(p, "operation"), axis=int(p.axis), coeff=float(p.coeff)
        )
    ]


@_registers("ArgMax")
def _argmax(layer, bottoms, weights):
    p = _sub(layer, "argmax_param")
    return [
        nl.argmax(
            bottoms[0],
            top_k=int(p.top_k),
            out_max_val=bool(p.out_max_val),
            axis=int(p.axis) if _has(p, "axis") else None,
        )
    ]


@_registers("Embed")
def _embed(layer, bottoms, weights):
    p = _sub(layer, "embed_param")
    w = np.asarray(weights[0]).reshape(int(p.input_dim), int(p.num_output))
    return [nl.embed(bottoms[0], w, weights[1] if (p.bias_term and len(weights) > 1) else None)]


def _conv_fields(p: Any) -> dict:
    return {
        "kernel": _spatial(p, "kernel_size", 1, "kernel"),
        "stride": _spatial(p, "stride", 1),
        "pad": _spatial(p, "pad", 0),
        "dilation": _spatial(p, "dilation", 1),
    }


@_registers("Deconvolution")
def _deconvolution(layer, bottoms, weights):
    x = bottoms[0]
    p = _sub(layer, "convolution_param")
    f = _conv_fields(p)
    group = int(p.group) or 1
    w = np.asarray(weights[0]).reshape(x.shape[1], int(p.num_output) // group, *f["kernel"])
    b = weights[1] if (p.bias_term and len(weights) > 1) else None
    return [
        nl.deconv2d(x, w, b, stride=f["stride"], pad=f["pad"], dilation=f["dilation"], group=group)
    ]


@_registers("Im2col")
def _im2col(layer, bottoms, weights):
    f = _conv_fields(_sub(layer, "convolution_param"))
    return [nl.im2col(bottoms[0], **f)]


@_registers("SPP")
def _spp(layer, bottoms, weights):
    x = bottoms[0]
    p = _sub(layer, "spp_param")
    method = _enum(p, "pool")
    outs = []
    for lv in nl.spp_levels(x.shape[2], x.shape[3], int(p.pyramid_height)):
        if method == "STOCHASTIC":
            outs.append(nl.stochastic_pool_test(x, kernel=lv["kernel"], stride=lv["stride"]))
        else:
            outs.append(pool2d(x, method=_POOL[method], **lv))
    if len(outs) == 1:
        return outs
    return [np.concatenate([o.reshape(o.shape[0], -1) for o in outs], axis=1)]


@_registers("Crop")
def _crop(layer, bottoms, weights):
    p = _sub(layer, "crop_param")
    return [
        nl.crop(bottoms[0], bottoms[1].shape, axis=int(p.axis), offset=[int(o) for o in p.offset])
    ]


@_registers("Reshape")
def _reshape(layer, bottoms, weights):
    p = _sub(layer, "reshape_param")
    x = bottoms[0]
    return [
        x.reshape(
            nl.reshape_shape(
                x.shape, [int(d) for d in p.shape.dim], axis=int(p.axis), num_axes=int(p.num_axes)
            )
        )
    ]


@_registers("Slice")
def _slice(layer, bottoms, weights):
    p = _sub(layer, "slice_param")
    x = bottoms[0]
    axis = (int(p.slice_dim) if _has(p, "slice_dim") else int(p.axis)) % x.ndim
    sizes = nl.slice_sizes(x.shape[axis], len(layer.tops), [int(s) for s in p.slice_point])
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


@_registers("Tile")
def _tile(layer, bottoms, weights):
    p = _sub(layer, "tile_param")
    return [nl.tile(bottoms[0], axis=int(p.axis), tiles=int(p.tiles))]


@_registers("Silence")
def _silence(layer, bottoms, weights):
    return []


@_registers("BatchReindex")
def _batch_reindex(layer, bottoms, weights):
    return [nl.batch_reindex(bottoms[0], bottoms[1])]


@_registers("Filter")
def _filter(layer, bottoms, weights):
    return nl.filter_rows(bottoms[:-1], bottoms[-1])


@_registers("Parameter")
def _parameter(layer, bottoms, weights):
    shape = tuple(int(d) for d in _sub(layer, "parameter_param").shape.dim)
    return [np.asarray(weights[0]).reshape(shape)]


@_registers("LSTMUnit")
def _lstm_unit(layer, bottoms, weights):
    c, h = nl.lstm_unit(bottoms[0][0], bottoms[1][0], bottoms[2][0])
    return [c[None], h[None]]


def _recurrent_bottoms(layer, bottoms, n_states):
    p = _sub(layer, "recurrent_param")
    exposed = n_states if p.expose_hidden else 0
    static = bottoms[2] if len(bottoms) - 2 - exposed == 1 else None
    states = list(bottoms[2 + (static is not None) :])
    return bool(p.expose_hidden), static, states


@_registers("LSTM")
def _lstm(layer, bottoms, weights):
    expose, static, states = _recurrent_bottoms(layer, bottoms, 2)
    w = list(weights)
    w_s = w.pop(2) if static is not None else None
    h0, c0 = states if states else (None, None)
    h, h_t, c_t = nl.lstm(
        bottoms[0], bottoms[1], w[0], w[1], w[2], static=static, w_s=w_s, h0=h0, c0=c0
    )
    return [h, h_t, c_t] if expose else [h]


@_registers("RNN")
def _rnn(layer, bottoms, weights):
    expose, static, states = _recurrent_bottoms(layer, bottoms, 1)
    w = list(weights)
    w_s = w.pop(2) if static is not None else None
    o, h_t = nl.rnn(
        bottoms[0], bottoms[1], *w, static=static, w_s=w_s, h0=states[0] if states else None
    )
    return [o, h_t] if expose else [o]


SUPPORTED_TYPES = frozenset(LAYERS)


def forward_net(
    netdef: Any,
    weights: Mapping[str, Sequence[np.ndarray]],
    inputs: np.ndarray | Mapping[str, np.ndarray],
    *,
    dtype: type | np.dtype = np.float64,
    record: str = "final",
) -> dict[str, np.ndarray]:
    """Forward a whole parsed net with the numpy layers, honouring in-place layers.

    Parameters
    ----------
    netdef : NetDef
        ``.inputs`` (name -> shape, in order) and ``.layers`` (TEST-phase layers, in order).
    weights : mapping of layer name -> list of ndarray
        As ``port.read_caffemodel`` or ``port.seed_weights`` return them.
    inputs : ndarray or mapping of input name -> ndarray
        One array for single-input nets.
    dtype : numpy dtype
        Computation dtype (float32 or float64); inputs and weights are cast to it.
    record : {"final", "first"}
        "final": each blob's value after the last layer that writes it (pycaffe's ``.data``);
        "first": the value its producer wrote (before in-place layers), used for local checks.

    Returns
    -------
    dict
        ``"data/<blob>" -> ndarray`` for every input and every top.
    """
    dt = np.dtype(dtype)
    if not isinstance(inputs, Mapping):
        names = list(netdef.inputs)
        if len(names) != 1:
            raise ValueError(f"net has inputs {names}; pass a mapping")
        inputs = {names[0]: inputs}
    blobs: dict[str, np.ndarray] = {k: np.asarray(v, dtype=dt) for k, v in inputs.items()}
    first: dict[str, np.ndarray] = dict(blobs)
    for layer in netdef.layers:
        bottoms = [blobs[b] for b in layer.bottoms]
        ws = [np.asarray(a, dtype=dt) for a in weights.get(layer.name, [])]
        tops = forward_layer(layer, bottoms, ws)
        for name, val in zip(layer.tops, tops, strict=True):
            val = np.asarray(val, dtype=dt)
            blobs[name] = val
            first.setdefault(name, val)
    src = blobs if record == "final" else first
    return {data_key(k): v for k, v in src.items()}


def window_geometry(layer: Any) -> dict:
    """The sliding-window parameters of a Convolution or Pooling layer, read as Caffe reads them.

    Returns
    -------
    dict
        ``kernel``, ``stride``, ``pad``, ``dilation`` (each ``(h, w)``), ``group`` and, for
        pooling, ``method`` ("max", "ave" or None for others) and ``global_pooling``.
    """
    if layer.type == "Convolution":
        p = _sub(layer, "convolution_param")
        return {
            "kernel": _spatial(p, "kernel_size", 1, "kernel"),
            "stride": _spatial(p, "stride", 1),
            "pad": _spatial(p, "pad", 0),
            "dilation": _spatial(p, "dilation", 1),
            "group": int(p.group) or 1,
        }
    if layer.type == "Pooling":
        p = _sub(layer, "pooling_param")
        return {
            "kernel": _spatial(p, "kernel_size", 1, "kernel"),
            "stride": _spatial(p, "stride", 1),
            "pad": _spatial(p, "pad", 0),
            "dilation": (1, 1),
            "group": 1,
            "method": _POOL.get(p.pool),
            "global_pooling": bool(p.global_pooling),
        }
    raise ValueError(f"layer {layer.name}: {layer.type} has no sliding window")


def lrn_region(layer: Any) -> str:
    """``"across"`` or ``"within"`` for an LRN layer."""
    return _LRN_REGION[_sub(layer, "lrn_param").norm_region]


def eltwise_operation(layer: Any) -> str:
    """``"sum"``, ``"prod"`` or ``"max"`` for an Eltwise layer."""
    return _ELTWISE[_sub(layer, "eltwise_param").operation]


def concat_axis(layer: Any) -> int:
    """The concatenation axis of a Concat layer (legacy ``concat_dim`` honoured)."""
    p = _sub(layer, "concat_param")
    return int(p.concat_dim) if _has(p, "concat_dim") else int(p.axis)
