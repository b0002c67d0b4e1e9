"""Sliding-window layers: convolution, deconvolution, im2col, pooling (MAX, AVE, STOCHASTIC at TEST,
SPP), LRN, InnerProduct and Crop, as :mod:`port.layers.vision` groups them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .base import pair, typed
from .params import LRN_REGION, POOL, conv_fields, enum_name, spatial, sub_param
from .registry import registers

__all__ = [
    "conv2d",
    "crop",
    "deconv2d",
    "im2col",
    "inner_product",
    "lrn",
    "max_pool_argmax",
    "pool2d",
    "pool_output_size",
    "pool_windows",
    "spp_levels",
    "stochastic_pool_test",
]


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
    sh, sw = pair(stride)
    ph, pw = pair(pad)
    dh, dw = pair(dilation)
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
    return pair(kernel), pair(stride), pair(pad)


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
    tiny = typed(x, np.finfo(np.float32).tiny)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * sh : min(i * sh + kh, h), j * sw : min(j * sw + kw, w)]
            total = tiny + win.sum(axis=(2, 3))
            sq = (win * win).sum(axis=(2, 3))
            with np.errstate(divide="ignore", invalid="ignore"):
                out[:, :, i, j] = np.where(total > 0, sq / total, typed(x, 0))
    return out


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


@registers("Convolution")
def _convolution(layer, bottoms, weights):
    x = bottoms[0]
    p = sub_param(layer, "convolution_param")
    kh, kw = spatial(p, "kernel_size", 1, "kernel")
    w = np.asarray(weights[0]).reshape(-1, x.shape[1] // max(int(p.group), 1), kh, kw)
    b = weights[1] if (p.bias_term and len(weights) > 1) else None
    return [
        conv2d(
            x,
            w,
            b,
            stride=spatial(p, "stride", 1),
            pad=spatial(p, "pad", 0),
            dilation=spatial(p, "dilation", 1),
            group=int(p.group) or 1,
        )
    ]


@registers("Pooling")
def _pooling(layer, bottoms, weights):
    p = sub_param(layer, "pooling_param")
    if p.pool == 2:  # STOCHASTIC: its TEST-phase rule
        k = bottoms[0].shape[2:] if p.global_pooling else spatial(p, "kernel_size", 1, "kernel")
        return [stochastic_pool_test(bottoms[0], kernel=k, stride=spatial(p, "stride", 1))]
    method = POOL.get(p.pool)
    if method is None:
        raise ValueError(f"layer {layer.name}: unsupported pooling method {p.pool}")
    return [
        pool2d(
            bottoms[0],
            method=method,
            kernel=spatial(p, "kernel_size", 1, "kernel"),
            stride=spatial(p, "stride", 1),
            pad=spatial(p, "pad", 0),
            global_pooling=bool(p.global_pooling),
        )
    ]


@registers("LRN")
def _lrn(layer, bottoms, weights):
    p = sub_param(layer, "lrn_param")
    return [
        lrn(
            bottoms[0],
            local_size=int(p.local_size),
            alpha=float(p.alpha),
            beta=float(p.beta),
            k=float(p.k),
            region=LRN_REGION[p.norm_region],
        )
    ]


@registers("InnerProduct")
def _inner_product(layer, bottoms, weights):
    p = sub_param(layer, "inner_product_param")
    b = weights[1] if (p.bias_term and len(weights) > 1) else None
    return [inner_product(bottoms[0], weights[0], b, axis=int(p.axis), transpose=bool(p.transpose))]


@registers("Deconvolution")
def _deconvolution(layer, bottoms, weights):
    x = bottoms[0]
    p = sub_param(layer, "convolution_param")
    f = conv_fields(p)
    group = int(p.group) or 1
    w = np.asarray(weights[0]).reshape(x.shape[1], int(p.num_output) // group, *f["kernel"])
    b = weights[1] if (p.bias_term and len(weights) > 1) else None
    return [
        deconv2d(x, w, b, stride=f["stride"], pad=f["pad"], dilation=f["dilation"], group=group)
    ]


@registers("Im2col")
def _im2col(layer, bottoms, weights):
    f = conv_fields(sub_param(layer, "convolution_param"))
    return [im2col(bottoms[0], **f)]


@registers("SPP")
def _spp(layer, bottoms, weights):
    x = bottoms[0]
    p = sub_param(layer, "spp_param")
    method = enum_name(p, "pool")
    outs = []
    for lv in spp_levels(x.shape[2], x.shape[3], int(p.pyramid_height)):
        if method == "STOCHASTIC":
            outs.append(stochastic_pool_test(x, kernel=lv["kernel"], stride=lv["stride"]))
        else:
            outs.append(pool2d(x, method=POOL[method], **lv))
    if len(outs) == 1:
        return outs
    return [np.concatenate([o.reshape(o.shape[0], -1) for o in outs], axis=1)]


@registers("Crop")
def _crop(layer, bottoms, weights):
    p = sub_param(layer, "crop_param")
    return [crop(bottoms[0], bottoms[1].shape, axis=int(p.axis), offset=[int(o) for o in p.offset])]
