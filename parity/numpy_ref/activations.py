"""Point-wise layers: ReLU, Sigmoid, TanH, Dropout (TEST), Softmax and the rest of Caffe's neurons."""

from __future__ import annotations

import math

import numpy as np

from .base import typed
from .params import sub_param
from .registry import registers

__all__ = [
    "absval",
    "bnll",
    "clip",
    "dropout",
    "elu",
    "exp",
    "log",
    "power",
    "prelu",
    "relu",
    "sigmoid",
    "softmax",
    "swish",
    "tanh",
    "threshold",
]


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


def absval(x: np.ndarray) -> np.ndarray:
    """``|x|``."""
    return np.abs(x)


def bnll(x: np.ndarray) -> np.ndarray:
    """Binomial normal log likelihood: ``x + log(1 + e^-x)`` for x > 0, else ``log(1 + e^x)``."""
    with np.errstate(over="ignore"):
        pos = x + np.log(typed(x, 1) + np.exp(-np.maximum(x, typed(x, 0))))
        neg = np.log(typed(x, 1) + np.exp(np.minimum(x, typed(x, 0))))
    return np.where(x > 0, pos, neg)


def elu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """``x`` for x > 0, else ``alpha (e^x - 1)``."""
    return np.where(x > 0, x, typed(x, alpha) * (np.exp(np.minimum(x, typed(x, 0))) - typed(x, 1)))


def exp(x: np.ndarray, *, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """``base^(shift + scale x)``; base -1 means e."""
    if base == -1:
        return np.exp(typed(x, shift) + typed(x, scale) * x)
    return np.power(typed(x, base), typed(x, shift) + typed(x, scale) * x)


def log(x: np.ndarray, *, base: float = -1.0, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """``log_base(shift + scale x)``; base -1 means e."""
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(typed(x, shift) + typed(x, scale) * x)
    return y if base == -1 else y / typed(x, math.log(base))


def power(
    x: np.ndarray, *, power: float = 1.0, scale: float = 1.0, shift: float = 0.0
) -> np.ndarray:
    """``(shift + scale x)^power``; a constant when ``power * scale == 0`` (0^0 = 1)."""
    if power == 0:
        return np.ones_like(x)
    if scale == 0:
        return np.full_like(x, shift**power)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.power(typed(x, shift) + typed(x, scale) * x, typed(x, power))


def prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """``max(x, 0) + a_c min(x, 0)``; ``slope`` has one value per channel (axis 1) or one in all."""
    a = np.asarray(slope, dtype=x.dtype)
    a = a.reshape(()) if a.size == 1 else a.reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.maximum(x, typed(x, 0)) + a * np.minimum(x, typed(x, 0))


def clip(x: np.ndarray, *, lo: float, hi: float) -> np.ndarray:
    """``max(lo, min(x, hi))``."""
    return np.maximum(typed(x, lo), np.minimum(x, typed(x, hi)))


def swish(x: np.ndarray, *, beta: float = 1.0) -> np.ndarray:
    """``x sigmoid(beta x)``."""
    return x / (typed(x, 1) + np.exp(-typed(x, beta) * x))


def threshold(x: np.ndarray, *, t: float = 0.0) -> np.ndarray:
    """1 where ``x > t``, else 0."""
    return (x > typed(x, t)).astype(x.dtype)


@registers("ReLU")
def _relu(layer, bottoms, weights):
    return [relu(bottoms[0], negative_slope=float(sub_param(layer, "relu_param").negative_slope))]


@registers("Dropout")
def _dropout(layer, bottoms, weights):
    return [dropout(bottoms[0])]


@registers("Sigmoid")
def _sigmoid(layer, bottoms, weights):
    return [sigmoid(bottoms[0])]


@registers("TanH")
def _tanh(layer, bottoms, weights):
    return [tanh(bottoms[0])]


@registers("Softmax")
def _softmax(layer, bottoms, weights):
    return [softmax(bottoms[0], axis=int(sub_param(layer, "softmax_param").axis))]


@registers("AbsVal")
def _absval(layer, bottoms, weights):
    return [absval(bottoms[0])]


@registers("BNLL")
def _bnll(layer, bottoms, weights):
    return [bnll(bottoms[0])]


@registers("ELU")
def _elu(layer, bottoms, weights):
    return [elu(bottoms[0], alpha=float(sub_param(layer, "elu_param").alpha))]


@registers("Exp")
def _exp(layer, bottoms, weights):
    p = sub_param(layer, "exp_param")
    return [exp(bottoms[0], base=float(p.base), scale=float(p.scale), shift=float(p.shift))]


@registers("Log")
def _log(layer, bottoms, weights):
    p = sub_param(layer, "log_param")
    return [log(bottoms[0], base=float(p.base), scale=float(p.scale), shift=float(p.shift))]


@registers("Power")
def _power(layer, bottoms, weights):
    p = sub_param(layer, "power_param")
    return [power(bottoms[0], power=float(p.power), scale=float(p.scale), shift=float(p.shift))]


@registers("PReLU")
def _prelu(layer, bottoms, weights):
    return [prelu(bottoms[0], weights[0])]


@registers("Clip")
def _clip(layer, bottoms, weights):
    p = sub_param(layer, "clip_param")
    return [clip(bottoms[0], lo=float(p.min), hi=float(p.max))]


@registers("Swish")
def _swish(layer, bottoms, weights):
    return [swish(bottoms[0], beta=float(sub_param(layer, "swish_param").beta))]


@registers("Threshold")
def _threshold(layer, bottoms, weights):
    return [threshold(bottoms[0], t=float(sub_param(layer, "threshold_param").threshold))]
