"""What gate flips can change upstream, and their exact effect on every diff.

A gate flip (:mod:`parity.gates`: a ReLU whose input sits within noise of 0, a MAX window or an
Eltwise MAX whose two largest inputs are within noise of each other) sends one gradient element
down a different path on each side. Backward is linear in the top diff, so the flip adds a
perturbation ``delta`` to the diff of the gated layer's bottom at a few elements and, upstream,
``J^T delta`` to every diff below it, J being the Jacobian of the sub-net between that blob and each
upstream blob.

Corrected, not excused
----------------------
:func:`teacher_forced_backward` recomputes a side's whole backward pass in float64, each layer's
vector-Jacobian product taken at *that side's own* forward blobs. The difference of the two sides'
recomputations is exactly what their different forward data do to the diffs: the flipped element,
``J^T delta`` upstream, flips in several layers superposed. Within the flips' reach (below) the
subject's diff is corrected by that difference and then compared like every other element, at the
same tolerance: a wrong element inside the reach still fails, and the result records how far the
flips had moved each blob (``flip_effect``). Measured on the committed CaffeNet goldens: the one
pool1 flip between the builds moves diff/data by 3.5e-2 of its range, and after the correction the
worst residual is 1.5e-6, the level of every other blob. Only without a float64 net are the reached
elements left out of the comparison instead (``excused``); that is sound but weak in deep nets.

The reach
---------
:func:`flip_reach` bounds where ``J^T delta`` can be non-zero: the flipped elements of the gated
layer's bottoms, then, walking the layers backwards, every bottom element connected to a reached top
element (one rule per layer type in :data:`REACH`; a type without a rule reaches its whole bottoms):

* Convolution: every input channel of the same group, over the kernel footprint (stride, pad,
  dilation honoured) of each reached output position;
* Pooling: the same channel, over the window of each reached output;
* LRN: the n channels centred on the reached one (ACROSS), or the n x n neighbourhood (WITHIN);
* InnerProduct, Softmax: the whole slice the reached output depends on;
* point-wise layers and in-place layers: the same elements (an in-place layer only rewrites the
  blob, so a mark on a blob name covers every version of it);
* Concat / Split / Flatten: the corresponding elements.

Samples of a batch never mix (except through an InnerProduct with ``axis: 0``, handled as "whole").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from port.blobkeys import data_key
from port.dump import BackwardSeed

from . import numpy_ref
from .gates import GateFlip

__all__ = ["REACH", "register_reach", "flip_reach", "teacher_forced_backward"]

Mask = np.ndarray
# (layer, masks on its tops (None: nothing reached), shapes of its bottoms) -> masks on its bottoms
ReachRule = Callable[[Any, list[Mask], list[tuple[int, ...]]], list[Mask]]
REACH: dict[str, ReachRule] = {}


def register_reach(*types: str) -> Callable[[ReachRule], ReachRule]:
    """Register how marks on a layer's tops reach its bottoms, for the given Caffe types."""

    def deco(fn: ReachRule) -> ReachRule:
        for t in types:
            REACH[t] = fn
        return fn

    return deco


def _scatter_window(
    top_mask: Mask,
    bottom_hw: Sequence[int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> Mask:
    """Mark, in an (N, C, H, W) bottom, every input cell of each marked output's window."""
    n, c, oh, ow = top_mask.shape
    h, w = bottom_hw
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dilation
    out = np.zeros((n, c, h, w), bool)
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


@register_reach("Convolution")
def _conv(layer, tops, shapes):
    geo = numpy_ref.window_geometry(layer)
    g = geo["group"]
    m = tops[0]
    n, o, oh, ow = m.shape
    c = shapes[0][1]
    per_group = m.reshape(n, g, o // g, oh, ow).any(axis=2)
    hit = _scatter_window(
        per_group, shapes[0][2:], geo["kernel"], geo["stride"], geo["pad"], geo["dilation"]
    )
    return [np.repeat(hit, c // g, axis=1)]


@register_reach("Pooling")
def _pool(layer, tops, shapes):
    geo = numpy_ref.window_geometry(layer)
    m = tops[0]
    if geo["global_pooling"]:
        return [np.broadcast_to(m.any(axis=(2, 3), keepdims=True), shapes[0]).copy()]
    return [_scatter_window(m, shapes[0][2:], geo["kernel"], geo["stride"], geo["pad"])]


@register_reach("LRN")
def _lrn(layer, tops, shapes):
    size = int(layer.param.lrn_param.local_size)
    half = (size - 1) // 2
    m = tops[0]
    if numpy_ref.lrn_region(layer) == "across":
        out = np.zeros_like(m)
        c = m.shape[1]
        for d in range(-half, half + 1):
            lo, hi = max(0, d), min(c, c + d)
            out[:, lo - d : hi - d] |= m[:, lo:hi]
        return [out]
    return [_scatter_window(m, shapes[0][2:], (size, size), (1, 1), (half, half))]


@register_reach("InnerProduct")
def _inner_product(layer, tops, shapes):
    axis = int(layer.param.inner_product_param.axis) % len(shapes[0])
    m = tops[0]
    if axis == 0:
        return [np.full(shapes[0], bool(m.any()))]
    lead = m.reshape(m.shape[:axis] + (-1,)).any(axis=-1)
    lead = lead.reshape(lead.shape + (1,) * (len(shapes[0]) - axis))
    return [np.broadcast_to(lead, shapes[0]).copy()]


@register_reach("Softmax")
def _softmax(layer, tops, shapes):
    axis = int(layer.param.softmax_param.axis)
    return [np.broadcast_to(tops[0].any(axis=axis, keepdims=True), tops[0].shape).copy()]


@register_reach("ReLU", "Dropout", "BatchNorm", "Sigmoid", "TanH")
def _pointwise(layer, tops, shapes):
    return [tops[0].copy()]


@register_reach("Eltwise")
def _eltwise(layer, tops, shapes):
    return [tops[0].copy() for _ in shapes]


@register_reach("Scale")
def _scale(layer, tops, shapes):
    out = [tops[0].copy()]
    if len(shapes) == 2:
        out.append(np.full(shapes[1], bool(tops[0].any())))
    return out


@register_reach("Split")
def _split(layer, tops, shapes):
    acc = np.zeros(shapes[0], bool)
    for m in tops:
        acc |= m
    return [acc]


@register_reach("Flatten")
def _flatten(layer, tops, shapes):
    return [tops[0].reshape(shapes[0])]


@register_reach("Concat")
def _concat(layer, tops, shapes):
    m = tops[0]
    axis = numpy_ref.concat_axis(layer) % m.ndim
    sizes = np.cumsum([s[axis] for s in shapes])[:-1]
    return list(np.split(m, sizes, axis=axis))


def _whole(layer, tops, shapes):
    hit = any(m.any() for m in tops)
    return [np.full(s, hit) for s in shapes]


def flip_reach(
    netdef: Any, flips: Sequence[GateFlip], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, Mask]:
    """Diff elements that the given gate flips can change, per blob.

    Parameters
    ----------
    netdef : NetDef
    flips : sequence of GateFlip
        From :func:`parity.gates.find_gate_flips` (normally only those in band).
    shapes : mapping blob name -> shape
        Shapes of every blob.

    Returns
    -------
    dict blob name -> bool ndarray
        Only blobs with at least one reached element appear.
    """
    if not flips:
        return {}
    marks: dict[str, Mask] = {}
    index = {layer.name: i for i, layer in enumerate(netdef.layers)}
    seeds: dict[int, list[GateFlip]] = {}
    for f in flips:
        seeds.setdefault(index[f.layer], []).append(f)
    for i in range(len(netdef.layers) - 1, -1, -1):
        layer = netdef.layers[i]
        for f in seeds.get(i, []):
            for blob, flat in f.marks.items():
                m = marks.setdefault(blob, np.zeros(shapes[blob], bool))
                m.reshape(-1)[flat] = True
        # In-place layers rewrite a blob without changing which elements connect upstream.
        if set(layer.tops) & set(layer.bottoms):
            continue
        if all(marks.get(t) is None for t in layer.tops):
            continue
        tops = [marks.get(t, np.zeros(shapes[t], bool)) for t in layer.tops]
        rule = REACH.get(layer.type, _whole)
        for b, m in zip(
            layer.bottoms, rule(layer, tops, [shapes[b] for b in layer.bottoms]), strict=True
        ):
            marks[b] = marks[b] | m if b in marks else np.array(m, bool)
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
    different forward data do to the diffs, gate flips included.

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

    seed_blob, unit = BackwardSeed.parse(backward_from)
    start = netdef.last_writer(seed_blob)
    start = -1 if start is None else start
    index = {lay.name: i for i, lay in enumerate(netdef.layers)}

    def t64(a: np.ndarray, grad: bool = False) -> torch.Tensor:
        return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)

    final_grad: dict[str, torch.Tensor] = {}
    v = np.asarray(data[data_key(seed_blob)])
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
                    x = t64(data[data_key(t)], True)
                    with torch.enable_grad():
                        (g,) = torch.autograd.grad(net64.module(lc.name)(x)[0], [x], grad_outputs=g)
                out[t] = g.detach().numpy()
            tops_first.append(g)
        if index[layer.name] > start or all(g is None for g in tops_first):
            continue
        ins = [t64(data[data_key(b)], True) for b in layer.bottoms]
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
