"""Max-pool routing flips: find them, and the diff elements they can reach, so those are excused.

A MAX window whose two largest inputs are within float noise of each other can pick a different
element on each side of a comparison. The forward output is unaffected beyond noise (the two
candidates are nearly equal), but backward sends the window's gradient ``g`` to a different input:
the pooling bottom's diff differs by ``+g`` at one position and ``-g`` at the other. This module
recomputes each window's argmax from both sides' own forward data (:func:`find_flips`) and derives
the set of diff elements that such a perturbation can reach (:func:`excused_region`), and
recomputes each side's backward on its own forward data to remove the flips' effect exactly
(:func:`teacher_forced_backward`).

Two ways of handling a flip
---------------------------
Backward is linear in the top diff, so a flip adds ``delta = g (e_p - e_q)`` to the diff of the
pooling bottom (positions p and q of one channel) and, upstream, ``J^T delta`` to every diff below,
J being the Jacobian of the sub-net between that blob and each upstream blob.

1. **Corrected (the default when the float64 port is at hand).** :func:`teacher_forced_backward`
   recomputes a side's whole backward pass in float64, each layer's vector-Jacobian product taken
   at *that side's own* forward blobs. The difference of the two sides' recomputations is exactly
   what their different forward data do to the diffs: ``g (e_p - e_q)`` at the flipped window,
   ``J^T delta`` upstream, flips in several layers superposed. Within the flips' reach (below) the
   subject's diff is corrected by that difference and then compared like every other element, at
   the same tolerance. Nothing is left out: a wrong element inside the reach still fails, and the
   result records how far the flips had moved each blob (``flip_effect``). Measured on the real
   goldens: CaffeNet's one pool1 flip moves diff/data by 3.5e-2 of its range, and after the
   correction the worst residual is 1.5e-6 (port vs OpenBLAS) -- the level of every other blob;
   GoogLeNet's 4-6 flips (pool1, inception_4c/pool, inception_5a/pool) move diffs by up to 6.9e-2
   and leave residuals <= 1.1e-6.
2. **Excused (fallback without a float64 net).** The elements the flips can reach are left out of
   the comparison and counted. That is sound but weak in deep nets: in GoogLeNet a flip in a
   stride-1 inception pool reaches 82% of all diff elements upstream.

The reach
---------
:func:`excused_region` bounds where ``J^T delta`` can be non-zero: the two positions in the pooling
bottom, then, walking the layers backwards, every bottom element connected to a reached top element:

* Convolution: every input channel of the same group, over the kernel footprint (stride, pad,
  dilation honoured) of each reached output position;
* Pooling: the same channel, over the window of each reached output (the whole window, since which
  element it routes to may also differ);
* LRN: the n channels centred on the reached one (ACROSS), or the n x n neighbourhood (WITHIN);
* InnerProduct, Softmax: the whole slice the reached output depends on;
* point-wise layers (ReLU, Dropout, BatchNorm, Scale, Eltwise) and in-place layers: the same
  elements (in-place layers only rewrite the blob, so a mark on a blob name covers every version);
* Concat / Split / Flatten: the corresponding elements; any other type: the whole bottom.

Samples of a batch never mix (except through an InnerProduct with ``axis: 0``, handled as "whole").
The reach is a superset of where ``J^T delta`` is non-zero; every forward blob and every diff of a
layer after the pooling layer is outside it.

Not recognised: a ReLU whose input is within float noise of zero passes the gradient on one side
and blocks it on the other. Outside a flip's reach such a "ReLU flip" is compared as is (it has not
been observed to exceed the tolerance on the five zoo models).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import numpy_ref as R

__all__ = ["Flip", "find_flips", "excused_region", "pool_geometry", "teacher_forced_backward"]


@dataclass
class Flip:
    """The routing flips of one MAX pooling layer between two sides.

    Attributes
    ----------
    layer : str
        Pooling layer name.
    bottom : str
        Its bottom blob.
    windows : ndarray of int, shape (F, 4)
        (n, c, oh, ow) of every flipped window.
    pos_a, pos_b : ndarray of int, shape (F,)
        Flat ``h * W + w`` index in the bottom plane each side routes that window to.
    """

    layer: str
    bottom: str
    windows: np.ndarray
    pos_a: np.ndarray
    pos_b: np.ndarray

    def summary(self, limit: int = 5) -> dict:
        return {
            "layer": self.layer,
            "bottom": self.bottom,
            "count": int(len(self.windows)),
            "examples": [
                {"window": [int(v) for v in w], "a": int(pa), "b": int(pb)}
                for w, pa, pb in zip(
                    self.windows[:limit], self.pos_a[:limit], self.pos_b[:limit], strict=True
                )
            ],
        }


def pool_geometry(layer: Any) -> dict | None:
    """Keyword arguments of :func:`parity.numpy_ref.max_pool_argmax` for a MAX Pooling layer, else None."""
    if layer.type != "Pooling":
        return None
    p = layer.param.pooling_param
    if R._POOL.get(p.pool) != "max":
        return None
    return {
        "kernel": R._spatial(p, "kernel_size", 1, "kernel"),
        "stride": R._spatial(p, "stride", 1),
        "pad": R._spatial(p, "pad", 0),
        "global_pooling": bool(p.global_pooling),
    }


def find_flips(
    netdef: Any, data_a: Mapping[str, np.ndarray], data_b: Mapping[str, np.ndarray]
) -> list[Flip]:
    """Recompute every MAX window's argmax from each side's forward data and list the differences.

    Parameters
    ----------
    netdef : NetDef
    data_a, data_b : mapping
        Blob dumps of the two sides (``"data/<blob>"`` keys); the pooling bottoms must be present.

    Returns
    -------
    list of Flip
        One entry per MAX pooling layer with at least one flip.
    """
    out = []
    for layer in netdef.layers:
        geo = pool_geometry(layer)
        if geo is None:
            continue
        key = f"data/{layer.bottoms[0]}"
        if key not in data_a or key not in data_b:
            continue
        xa = np.asarray(data_a[key], np.float64)
        xb = np.asarray(data_b[key], np.float64)
        aa = R.max_pool_argmax(xa, **geo)
        ab = R.max_pool_argmax(xb, **geo)
        idx = np.argwhere(aa != ab)
        if len(idx):
            sel = tuple(idx.T)
            out.append(Flip(layer.name, layer.bottoms[0], idx, aa[sel], ab[sel]))
    return out


def _scatter_window(
    top_mask: np.ndarray,
    bottom_hw: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """Mark, in an (N, C, H, W) bottom, every input cell of each marked output's window."""
    n, c, oh, ow = top_mask.shape
    h, w = bottom_hw
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dilation
    out = np.zeros((n, c, h, w), bool)
    if not top_mask.any():
        return out
    for i in range(kh):
        for j in range(kw):
            # Output (y, x) reads input (y*sh - ph + i*dh, x*sw - pw + j*dw).
            ys = np.arange(oh) * sh - ph + i * dh
            xs = np.arange(ow) * sw - pw + j * dw
            vy = (ys >= 0) & (ys < h)
            vx = (xs >= 0) & (xs < w)
            if not vy.any() or not vx.any():
                continue
            sub = top_mask[:, :, vy][:, :, :, vx]
            out[:, :, ys[vy][:, None], xs[vx][None, :]] |= sub
    return out


def _propagate(
    layer: Any, top_masks: list[np.ndarray | None], bottom_shapes: list[tuple]
) -> list[np.ndarray | None]:
    """Marks on a layer's bottoms reached from the marks on its tops (None = nothing marked)."""
    t = layer.type
    if all(m is None or not m.any() for m in top_masks):
        return [None] * len(bottom_shapes)
    m0 = top_masks[0]
    if t == "Convolution":
        p = layer.param.convolution_param
        g = int(p.group) or 1
        n, o, oh, ow = m0.shape
        c = bottom_shapes[0][1]
        per_group = m0.reshape(n, g, o // g, oh, ow).any(axis=2)
        hit = _scatter_window(
            per_group,
            bottom_shapes[0][2:],
            R._spatial(p, "kernel_size", 1, "kernel"),
            R._spatial(p, "stride", 1),
            R._spatial(p, "pad", 0),
            R._spatial(p, "dilation", 1),
        )
        return [np.repeat(hit, c // g, axis=1)]
    if t == "Pooling":
        p = layer.param.pooling_param
        if p.global_pooling:
            return [np.broadcast_to(m0.any(axis=(2, 3), keepdims=True), bottom_shapes[0]).copy()]
        return [
            _scatter_window(
                m0,
                bottom_shapes[0][2:],
                R._spatial(p, "kernel_size", 1, "kernel"),
                R._spatial(p, "stride", 1),
                R._spatial(p, "pad", 0),
            )
        ]
    if t == "LRN":
        p = layer.param.lrn_param
        half = (int(p.local_size) - 1) // 2
        if R._LRN_REGION[p.norm_region] == "across":
            out = np.zeros_like(m0)
            c = m0.shape[1]
            for d in range(-half, half + 1):
                lo, hi = max(0, d), min(c, c + d)
                out[:, lo - d : hi - d] |= m0[:, lo:hi]
            return [out]
        k = int(p.local_size)
        return [_scatter_window(m0, bottom_shapes[0][2:], (k, k), (1, 1), (half, half))]
    if t == "InnerProduct":
        axis = int(layer.param.inner_product_param.axis) % len(bottom_shapes[0])
        if axis == 0:
            return [np.full(bottom_shapes[0], bool(m0.any()))]
        lead = m0.reshape(m0.shape[:axis] + (-1,)).any(axis=-1)
        return [
            np.broadcast_to(
                lead.reshape(lead.shape + (1,) * (len(bottom_shapes[0]) - axis)), bottom_shapes[0]
            ).copy()
        ]
    if t == "Softmax":
        axis = int(layer.param.softmax_param.axis)
        return [np.broadcast_to(m0.any(axis=axis, keepdims=True), m0.shape).copy()]
    if t in ("ReLU", "Dropout", "BatchNorm"):
        return [m0.copy()]
    if t == "Eltwise":
        return [m0.copy() for _ in bottom_shapes]
    if t == "Scale":
        out = [m0.copy()]
        if len(bottom_shapes) == 2:
            out.append(np.full(bottom_shapes[1], bool(m0.any())))
        return out
    if t == "Split":
        acc = np.zeros(bottom_shapes[0], bool)
        for m in top_masks:
            if m is not None:
                acc |= m
        return [acc]
    if t == "Flatten":
        return [m0.reshape(bottom_shapes[0])]
    if t == "Concat":
        p = layer.param.concat_param
        axis = int(p.concat_dim) if R._has(p, "concat_dim") else int(p.axis)
        axis %= m0.ndim
        sizes = np.cumsum([s[axis] for s in bottom_shapes])[:-1]
        return list(np.split(m0, sizes, axis=axis))
    return [
        np.full(s, bool(any(m is not None and m.any() for m in top_masks))) for s in bottom_shapes
    ]


def excused_region(
    netdef: Any, flips: list[Flip], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """Diff elements that the given routing flips can change, per blob.

    Parameters
    ----------
    netdef : NetDef
    flips : list of Flip
        From :func:`find_flips`.
    shapes : mapping blob name -> shape
        Shapes of every blob.

    Returns
    -------
    dict blob name -> bool ndarray
        Only blobs with at least one excused element appear.
    """
    if not flips:
        return {}
    marks: dict[str, np.ndarray] = {}
    seeds: dict[int, list[Flip]] = {}
    index = {layer.name: i for i, layer in enumerate(netdef.layers)}
    for f in flips:
        seeds.setdefault(index[f.layer], []).append(f)
    for i in range(len(netdef.layers) - 1, -1, -1):
        layer = netdef.layers[i]
        for f in seeds.get(i, []):
            shape = shapes[f.bottom]
            m = marks.setdefault(f.bottom, np.zeros(shape, bool))
            plane = m.reshape(shape[0], shape[1], -1)
            n, c = f.windows[:, 0], f.windows[:, 1]
            plane[n, c, f.pos_a] = True
            plane[n, c, f.pos_b] = True
        # In-place layers rewrite a blob without changing which elements connect upstream.
        if set(layer.tops) & set(layer.bottoms):
            continue
        tops = [marks.get(t) for t in layer.tops]
        if all(m is None for m in tops):
            continue
        tops = [
            np.zeros(shapes[t], bool) if m is None else m
            for t, m in zip(layer.tops, tops, strict=True)
        ]
        for b, m in zip(
            layer.bottoms, _propagate(layer, tops, [shapes[b] for b in layer.bottoms]), strict=True
        ):
            if m is None:
                continue
            if b in marks:
                marks[b] |= m
            else:
                marks[b] = np.array(m, bool)
    return {k: v for k, v in marks.items() if v.any()}


def teacher_forced_backward(
    netdef: Any,
    net64: Any,
    data: Mapping[str, np.ndarray],
    backward_from: str,
) -> dict[str, np.ndarray]:
    """The backward pass recomputed in float64 on one side's own forward data.

    Each layer's vector-Jacobian product is taken by the float64 port's module at that side's
    forward blobs (``data``), so every data-dependent choice of the backward pass (which element
    each MAX window routes to, which ReLU passes) is that side's, while no float32 rounding of the
    backward itself enters. The difference of two sides' results is therefore exactly what their
    different forward data do to the diffs, routing flips included.

    Parameters
    ----------
    netdef : NetDef
    net64 : port.CaffeNet
        float64; only its per-layer modules (``net64.module(name)``) are used.
    data : mapping
        ``"data/<blob>"`` forward values of the side (final values, pycaffe meaning).
    backward_from : str
        ``"BLOB:UNIT"``: one-hot per sample on BLOB's final value.

    Returns
    -------
    dict blob -> float64 ndarray
        Gradient with respect to each blob's first version (the meaning of ``diff/<blob>``), for
        every blob the backward pass reaches.
    """
    import torch

    from .local import units

    seed_blob, _, unit = backward_from.rpartition(":")
    writers = [i for i, lay in enumerate(netdef.layers) if seed_blob in lay.tops]
    start = writers[-1] if writers else -1
    index = {lay.name: i for i, lay in enumerate(netdef.layers)}

    def t64(a: np.ndarray, grad: bool = False) -> torch.Tensor:
        return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)

    final_grad: dict[str, torch.Tensor] = {}
    v = np.asarray(data[f"data/{seed_blob}"])
    seed = np.zeros((v.shape[0], v[0].size))
    seed[:, int(unit)] = 1.0
    final_grad[seed_blob] = t64(seed.reshape(v.shape))
    out: dict[str, np.ndarray] = {}
    for layer, chain in reversed(units(netdef)):
        if index[layer.name] > start and not any(index[c.name] <= start for c in chain):
            continue
        tops_first = []
        for t in layer.tops:
            g = final_grad.get(t)
            if g is not None:
                # The in-place chain on this top (relu1 on conv1) runs backward on final values.
                for lc in reversed(
                    [c for c in chain if c.bottoms[0] == t and index[c.name] <= start]
                ):
                    x = t64(data[f"data/{t}"], True)
                    with torch.enable_grad():
                        (g,) = torch.autograd.grad(net64.module(lc.name)(x)[0], [x], grad_outputs=g)
                out[t] = g.detach().numpy()
            tops_first.append(g)
        if index[layer.name] > start or all(g is None for g in tops_first):
            continue
        ins = [t64(data[f"data/{b}"], True) for b in layer.bottoms]
        with torch.enable_grad():
            outs = list(net64.module(layer.name)(*ins))
            pairs = [(o, g) for o, g in zip(outs, tops_first, strict=True) if g is not None]
            grads = torch.autograd.grad(
                [o for o, _ in pairs], ins, grad_outputs=[g for _, g in pairs], allow_unused=True
            )
        for b, g in zip(layer.bottoms, grads, strict=True):
            if g is not None:
                final_grad[b] = g if b not in final_grad else final_grad[b] + g
    for name in netdef.inputs:
        if name in final_grad:
            out[name] = final_grad[name].detach().numpy()
    return out
