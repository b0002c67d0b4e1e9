"""SSD's Permute and Normalize as pycaffe Python layers (numpy only; run by any pycaffe built with
WITH_PYTHON_LAYER, e.g. the project's Caffe root).

Semantics follow the SSD fork's C++ layers: Permute reorders the axes by ``order``; Normalize divides
each sample by ``sqrt(sum x^2 + eps)`` (over channels at each position, or over the whole sample
with ``across_spatial``) and multiplies by a learned scale (one per channel, or one shared). The
options come as JSON in ``param_str``. Backward is the exact derivative, including the scale's.
"""

import json

import caffe
import numpy as np


def _options(layer, defaults):
    opts = dict(defaults)
    opts.update(json.loads(layer.param_str or "{}"))
    return opts


class Permute(caffe.Layer):
    def setup(self, bottom, top):
        self.order = [int(a) for a in _options(self, {"order": []})["order"]]
        n = len(bottom[0].data.shape)
        # SSD's rule: unlisted axes follow in their own order.
        self.order += [a for a in range(n) if a not in self.order]

    def reshape(self, bottom, top):
        top[0].reshape(*[bottom[0].data.shape[a] for a in self.order])

    def forward(self, bottom, top):
        top[0].data[...] = np.transpose(bottom[0].data, self.order)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = np.transpose(top[0].diff, np.argsort(self.order))


class Normalize(caffe.Layer):
    def setup(self, bottom, top):
        opts = _options(self, {"across_spatial": True, "channel_shared": True, "eps": 1e-10})
        self.across_spatial = bool(opts["across_spatial"])
        self.channel_shared = bool(opts["channel_shared"])
        self.eps = float(opts["eps"])
        if len(self.blobs) == 0:
            self.blobs.add_blob(1 if self.channel_shared else bottom[0].data.shape[1])
            self.blobs[0].data[...] = 1.0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def _axes(self, x):
        return tuple(range(1, x.ndim)) if self.across_spatial else (1,)

    def _scale(self, x):
        s = self.blobs[0].data
        return s.reshape((1, -1) + (1,) * (x.ndim - 2)) if not self.channel_shared else s[0]

    def forward(self, bottom, top):
        x = bottom[0].data
        norm = np.sqrt((x * x).sum(axis=self._axes(x), keepdims=True) + self.eps)
        top[0].data[...] = x / norm * self._scale(x)

    def backward(self, top, propagate_down, bottom):
        x = bottom[0].data
        g = top[0].diff
        axes = self._axes(x)
        norm = np.sqrt((x * x).sum(axis=axes, keepdims=True) + self.eps)
        xn = x / norm
        s = self._scale(x)
        if self.channel_shared:
            self.blobs[0].diff[...] += (g * xn).sum()
        else:
            self.blobs[0].diff[...] += (g * xn).sum(axis=tuple(a for a in range(x.ndim) if a != 1))
        if propagate_down[0]:
            gs = g * s
            bottom[0].diff[...] = (gs - xn * (gs * xn).sum(axis=axes, keepdims=True)) / norm
