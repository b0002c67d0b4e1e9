"""Forwarding a whole parsed net through the numpy layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from port.blobkeys import data_key

from .registry import forward_layer

__all__ = ["forward_net"]


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
