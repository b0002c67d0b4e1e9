"""Port-side Permute and Normalize (SSD fork layers) for the custom-layer tests and README example.

Loading this file (``--plugin tests/data/custom/ssd_port.py`` on the command lines, or importing it)
registers

* torch modules with :func:`port.register_layer`: the fork's types ``Permute`` / ``Normalize``
  (options from ``permute_param`` / ``norm_param``, see ``ssd_fork.proto``) and the pycaffe Python
  layers ``ssd_layers.Permute`` / ``ssd_layers.Normalize`` (options as JSON in ``param_str``);
* numpy float64 functions with :func:`parity.numpy_ref.register`, written from the SSD fork's
  ``normalize_layer.cpp`` / ``permute_layer.cpp`` rules rather than from the torch modules.
"""

from __future__ import annotations

import json

import numpy as np
import torch

import port
from port.layers import CaffeLayer


def _python_options(layer, defaults: dict) -> dict:
    opts = dict(defaults)
    opts.update(json.loads(layer.param.python_param.param_str or "{}"))
    return opts


def _permute_order(layer) -> list[int]:
    if layer.type == "Python":
        return [int(a) for a in _python_options(layer, {"order": []})["order"]]
    return [int(a) for a in layer.param.permute_param.order]


def _norm_options(layer) -> tuple[bool, bool, float]:
    if layer.type == "Python":
        o = _python_options(layer, {"across_spatial": True, "channel_shared": True, "eps": 1e-10})
        return bool(o["across_spatial"]), bool(o["channel_shared"]), float(o["eps"])
    p = layer.param.norm_param
    return p.across_spatial, p.channel_shared, p.eps


def _full_order(order: list[int], ndim: int) -> list[int]:
    # SSD's rule: axes the order leaves out follow in their own order.
    return order + [a for a in range(ndim) if a not in order]


class Permute(CaffeLayer):
    """SSD's Permute: the bottom's axes in ``order``."""

    caffe_type = "Permute"

    def __init__(self, layer, bottom_shapes):
        super().__init__(layer, bottom_shapes)
        self.order = _full_order(_permute_order(layer), len(bottom_shapes[0]))
        if sorted(self.order) != list(range(len(bottom_shapes[0]))):
            raise port.CaffeError(
                f"order {self.order} is not a permutation of the bottom's axes",
                layer=layer.name,
                field="permute_param.order",
            )

    def top_shapes(self):
        return [tuple(self.bottom_shapes[0][a] for a in self.order)]

    def forward(self, x):
        return [x.permute(*self.order).contiguous()]


class Normalize(CaffeLayer):
    """SSD's Normalize: ``x / sqrt(sum x^2 + eps) * scale`` over channels (or the whole sample)."""

    caffe_type = "Normalize"

    def __init__(self, layer, bottom_shapes):
        super().__init__(layer, bottom_shapes)
        self.across_spatial, self.channel_shared, self.eps = _norm_options(layer)
        self._make_blobs()

    def blob_shapes(self):
        return [(1,) if self.channel_shared else (self.bottom_shapes[0][1],)]

    def top_shapes(self):
        return [tuple(self.bottom_shapes[0])]

    def seed_blobs(self, rng):
        return [rng.uniform(0.5, 2.0, self.blob_shapes()[0])]

    def forward(self, x):
        dims = tuple(range(1, x.dim())) if self.across_spatial else (1,)
        norm = torch.sqrt((x * x).sum(dim=dims, keepdim=True) + self.eps)
        scale = (
            self.blobs[0]
            if self.channel_shared
            else self.blobs[0].view(1, -1, *([1] * (x.dim() - 2)))
        )
        return [x / norm * scale]


# -- numpy reference (from the fork's C++: norm = (sum x^2 + eps)^0.5 per sample or position) ----


def numpy_permute(layer, bottoms, weights):
    x = bottoms[0]
    return [np.ascontiguousarray(np.transpose(x, _full_order(_permute_order(layer), x.ndim)))]


def numpy_normalize(layer, bottoms, weights):
    across_spatial, channel_shared, eps = _norm_options(layer)
    x = bottoms[0]
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    if across_spatial:
        norm = np.sqrt(np.sum(flat * flat, axis=(1, 2)) + eps)[:, None, None]
    else:
        norm = np.sqrt(np.sum(flat * flat, axis=1) + eps)[:, None, :]
    scale = weights[0].reshape(1, -1, 1) if not channel_shared else weights[0].reshape(())
    return [(flat / norm * scale).reshape(x.shape)]


def register() -> None:
    """Register every layer of this file with the port and with parity's numpy reference."""
    from parity import numpy_ref

    for cls, fn in ((Permute, numpy_permute), (Normalize, numpy_normalize)):
        port.register_layer(cls.caffe_type, cls, replace=True)
        port.register_layer("Python", cls, module="ssd_layers", layer=cls.caffe_type, replace=True)
        numpy_ref.register(cls.caffe_type, fn)
        numpy_ref.register("Python", fn, module="ssd_layers", layer=cls.caffe_type)


register()
