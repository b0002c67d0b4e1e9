"""Recurrent layers: LSTMUnit and Caffe's unrolled LSTM and RNN."""

from __future__ import annotations

import numpy as np

from .base import typed
from .params import sub_param
from .registry import registers

__all__ = ["lstm", "lstm_unit", "rnn"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return typed(x, 1) / (typed(x, 1) + np.exp(-x))


def lstm_unit(
    c_prev: np.ndarray, gates: np.ndarray, cont: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One LSTMUnit step: gates (..., 4H) = [i', f', o', g']; ``f = cont sigmoid(f')``.

    ``c = f c_prev + sigmoid(i') tanh(g')``, ``h = sigmoid(o') tanh(c)``.
    """
    hd = c_prev.shape[-1]
    i = _sigmoid(gates[..., :hd])
    f = np.where(
        cont[..., None] == 0, typed(c_prev, 0), cont[..., None] * _sigmoid(gates[..., hd : 2 * hd])
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


@registers("LSTMUnit")
def _lstm_unit(layer, bottoms, weights):
    c, h = lstm_unit(bottoms[0][0], bottoms[1][0], bottoms[2][0])
    return [c[None], h[None]]


def _recurrent_bottoms(layer, bottoms, n_states):
    p = sub_param(layer, "recurrent_param")
    exposed = n_states if p.expose_hidden else 0
    static = bottoms[2] if len(bottoms) - 2 - exposed == 1 else None
    states = list(bottoms[2 + (static is not None) :])
    return bool(p.expose_hidden), static, states


@registers("LSTM")
def _lstm(layer, bottoms, weights):
    expose, static, states = _recurrent_bottoms(layer, bottoms, 2)
    w = list(weights)
    w_s = w.pop(2) if static is not None else None
    h0, c0 = states if states else (None, None)
    h, h_t, c_t = lstm(
        bottoms[0], bottoms[1], w[0], w[1], w[2], static=static, w_s=w_s, h0=h0, c0=c0
    )
    return [h, h_t, c_t] if expose else [h]


@registers("RNN")
def _rnn(layer, bottoms, weights):
    expose, static, states = _recurrent_bottoms(layer, bottoms, 1)
    w = list(weights)
    w_s = w.pop(2) if static is not None else None
    o, h_t = rnn(
        bottoms[0], bottoms[1], *w, static=static, w_s=w_s, h0=states[0] if states else None
    )
    return [o, h_t] if expose else [o]
