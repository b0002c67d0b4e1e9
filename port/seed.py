"""Deterministic weights for any definition, so that the port and real Caffe load the same file.

Distributions (all float32, drawn from ``numpy.random.default_rng(seed)`` layer by layer in
definition order, blob by blob):

- Convolution / InnerProduct weights: He-normal, N(0, 2 / fan_in) with fan_in the number of inputs
  one output sees (``channels / group * kh * kw``, or the flattened input size).
- Biases of those layers: N(0, 0.01^2) -- small, so that ReLUs are neither all on nor all off.
- BatchNorm: valid stored statistics with a non-trivial scale factor s = 0.5: blob0 = s * mean with
  mean ~ N(0, 0.1^2), blob1 = s * var with var ~ U(0.5, 1.5), blob2 = [s].
- Scale: gamma ~ U(0.8, 1.2); its bias (bias_term) ~ N(0, 0.01^2).
- Every other learnable layer: its module's ``seed_blobs(rng)`` (Deconvolution He-normal like
  Convolution, PReLU slopes U(0.1, 0.4), Bias N(0, 0.1^2), Embed and Parameter N(0, 1), ...).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import CaffeError
from .layers import BatchNorm, Convolution, InnerProduct, Scale
from .net import CaffeNet
from .netdef import NetDef


def seed_weights(netdef: NetDef, seed: int) -> dict[str, list[np.ndarray]]:
    """Seeded weights for every learnable layer of ``netdef`` (layer name -> Caffe blobs).

    Parameters
    ----------
    netdef : NetDef
    seed : int
        Same seed, same definition -> bit-identical weights on any machine.

    Returns
    -------
    dict of str to list of numpy.ndarray
    """
    rng = np.random.default_rng(seed)
    net = CaffeNet(netdef, zero_init=False)  # only its shapes are needed
    weights: dict[str, list[np.ndarray]] = {}
    for layer in netdef.layers:
        module = net.module(layer.name)
        shapes = module.blob_shapes()
        if not shapes:
            continue
        blobs: list[np.ndarray] = []
        if isinstance(module, (Convolution, InnerProduct)):
            w_shape = shapes[0]
            fan_in = math.prod(w_shape[1:]) if isinstance(module, Convolution) else module.k_in
            blobs.append(rng.normal(0.0, math.sqrt(2.0 / fan_in), w_shape))
            blobs.extend(rng.normal(0.0, 0.01, s) for s in shapes[1:])
        elif isinstance(module, BatchNorm):
            s = 0.5
            mean = rng.normal(0.0, 0.1, shapes[0])
            var = rng.uniform(0.5, 1.5, shapes[1])
            blobs = [s * mean, s * var, np.full(shapes[2], s)]
        elif isinstance(module, Scale):
            if module.learned_scale:
                blobs.append(rng.uniform(0.8, 1.2, shapes[0]))
            if module.bias_term:
                blobs.append(rng.normal(0.0, 0.01, shapes[-1]))
        elif hasattr(module, "seed_blobs"):
            # Layers added after the rules above carry their own distribution (see the class).
            blobs = module.seed_blobs(rng)
        else:  # a learnable layer type added later must choose its distribution explicitly
            raise CaffeError(
                f"no seeding rule for layer type {layer.type}: give its module a "
                "seed_blobs(rng) method returning its blobs",
                path=netdef.path,
                layer=layer.name,
                field="type",
            )
        weights[layer.name] = [_to_float32(b) for b in blobs]
    return weights


def _to_float32(blob: np.ndarray) -> np.ndarray:
    """float64 -> float32, rounded to nearest as numpy's cast; on torch's threads: CaffeNet's
    61 M weights cast in ~0.1 s instead of ~0.35 s, in every run that seeds them."""
    return torch.from_numpy(np.asarray(blob, dtype=np.float64)).to(torch.float32).numpy()
