"""Gate flips: where two sides' forward data send one layer's gradient down different paths.

A layer whose backward pass depends on a *comparison* of forward values has a kink: ReLU passes
the gradient where its input is above 0 and blocks it (or scales it by ``negative_slope``) below;
MAX pooling and Eltwise MAX route it to the largest input. When a value lies within float noise of
such a kink, two correct implementations can decide differently: the forward outputs still agree to
noise (the candidates are nearly equal), but the backward sends a whole gradient element elsewhere,
and every diff upstream inherits that difference. The error is real but it is not the port's: it is
the same event as two Caffe builds breaking a near-tie differently.

:func:`find_gate_flips` recomputes every kinked layer's decision from *both sides' own* forward data
and lists the differences, each with its **margin**: how far the two sides' values would have to
move to agree. A flip is explained by noise (``in_band``) only when that margin is within the
forward tolerance of the gated blob (``band``, :func:`parity.tolerance.gate_band`) times the number
of values involved: two implementations that both pass the forward check of that blob may sit on
either side of the kink by that much, and no farther. A flip outside the band is reported and never
corrected, so a port that gates at the wrong place (a shifted threshold, leaky where Caffe is not, a
MAX that picks the wrong bottom) still fails.

What the flips change is handled by :mod:`parity.routing`: the diff elements they can reach
(:func:`parity.routing.flip_reach`) and their exact effect, from each side's backward recomputed in
float64 on its own forward data (:func:`parity.routing.teacher_forced_backward`).

Adding a kinked layer
---------------------
Register a detector for its type with :func:`register_gate`. A detector receives the layer, both
sides' ``data/`` blobs and a :class:`Band`, and returns :class:`GateFlip` records (at most one
in-band and one out-of-band record per layer). Element-wise kinks (ReLU-like layers: PReLU, AbsVal,
Clip, ELU) only need the kink positions and the layer's input on each side:
:func:`pointwise_flips` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from port.blobkeys import data_key

from . import numpy_ref

__all__ = [
    "Band",
    "GateFlip",
    "GATES",
    "register_gate",
    "find_gate_flips",
    "pointwise_flips",
]

# A detector: (layer, data_a, data_b, band, netdef) -> flips of that layer.
Detector = Callable[
    [Any, Mapping[str, np.ndarray], Mapping[str, np.ndarray], "Band", Any], list["GateFlip"]
]
GATES: dict[str, Detector] = {}

EXAMPLES = 5


def register_gate(*types: str) -> Callable[[Detector], Detector]:
    """Register a gate-flip detector for the given Caffe layer types."""

    def deco(fn: Detector) -> Detector:
        for t in types:
            GATES[t] = fn
        return fn

    return deco


@dataclass(frozen=True)
class Band:
    """How far from a kink two sides' values may lie and still count as float noise.

    ``rel(blob)`` is the relative tolerance of the forward comparison of ``data/<blob>``; the
    absolute band is that times the larger of the two sides' ranges of the blob.
    """

    rel: Callable[[str], float]

    def absolute(self, blob: str, a: np.ndarray, b: np.ndarray) -> float:
        rng = max(
            float(np.max(np.abs(a))) if a.size else 0.0, float(np.max(np.abs(b))) if b.size else 0.0
        )
        return self.rel(blob) * rng


@dataclass
class GateFlip:
    """The flips of one kinked layer between two sides, all in band or all out of it.

    Attributes
    ----------
    layer, type : str
        The layer and its Caffe type.
    kind : str
        ``"gate"`` (the gradient passes or not: ReLU-like) or ``"route"`` (it goes to one of
        several inputs: MAX pooling, Eltwise MAX).
    count : int
        Flipped elements (gate) or windows / positions (route).
    marks : dict blob -> ndarray of int
        Flat indices (into ``blob.reshape(-1)``) of the layer's bottoms whose diff the flips change
        directly; where the walk upstream (:func:`parity.routing.flip_reach`) starts.
    band : float
        The absolute band per value (:class:`Band`) for the gated blob.
    in_band : bool
        Every flip here has ``margin <= values involved x band``: explained by noise.
    worst_margin : float
        Largest margin, as a multiple of the band it is allowed (``<= 1`` in band).
    examples : list of dict
        Up to five flips: ``blob``, ``index`` (in the gated blob, or the window for pooling),
        ``a``/``b`` (each side's deciding values), ``margin``, ``text`` (one line for people).
    """

    layer: str
    type: str
    kind: str
    count: int
    marks: dict[str, np.ndarray]
    band: float
    in_band: bool
    worst_margin: float
    examples: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "layer": self.layer,
            "type": self.type,
            "kind": self.kind,
            "count": self.count,
            "in_band": self.in_band,
            "band": self.band,
            "worst_margin": self.worst_margin,
            "gated": sorted(self.marks),
            "examples": self.examples,
        }


def find_gate_flips(
    netdef: Any,
    data_a: Mapping[str, np.ndarray],
    data_b: Mapping[str, np.ndarray],
    band: Band,
) -> list[GateFlip]:
    """Every gate flip between two sides' forward data, layer by layer in net order.

    Parameters
    ----------
    netdef : NetDef
    data_a, data_b : mapping
        Blob dumps of the two sides (``"data/<blob>"`` keys, pycaffe's meaning: final values).
    band : Band
        The noise band of each gated blob.

    Returns
    -------
    list of GateFlip
        For each layer with flips, one record for the flips in band and one for those outside.
    """
    out: list[GateFlip] = []
    for layer in netdef.layers:
        detect = GATES.get(layer.type)
        if detect is None:
            continue
        keys = [data_key(b) for b in layer.bottoms] + [data_key(t) for t in layer.tops]
        if not all(k in data_a and k in data_b for k in keys):
            continue
        if any(np.shape(data_a[k]) != np.shape(data_b[k]) for k in keys):
            continue  # a side with the wrong shape fails outright; there is no decision to compare
        out.extend(detect(layer, data_a, data_b, band, netdef))
    return out


def _fmt(v: float) -> str:
    return "0" if v == 0 else f"{v:.2g}"


def _records(
    layer: Any,
    kind: str,
    flipped: np.ndarray,
    margins: np.ndarray,
    allowed: np.ndarray,
    band: float,
    marks_of: Callable[[np.ndarray], dict[str, np.ndarray]],
    example_of: Callable[[int], dict],
) -> list[GateFlip]:
    """Split flips (indices into some per-layer enumeration) into an in-band and an out-of-band
    record; ``allowed`` is each flip's band (band x values involved)."""
    out = []
    ok = margins <= allowed
    for in_band in (True, False):
        sel = np.flatnonzero(ok == in_band)
        if not len(sel):
            continue
        # Worst first, so the examples people read are the ones that decide.
        sel = sel[np.argsort(-(margins[sel] / np.maximum(allowed[sel], 1e-300)))]
        worst = float(margins[sel[0]] / allowed[sel[0]]) if allowed[sel[0]] > 0 else np.inf
        out.append(
            GateFlip(
                layer=layer.name,
                type=layer.type,
                kind=kind,
                count=int(len(sel)),
                marks=marks_of(flipped[sel]),
                band=band,
                in_band=in_band,
                worst_margin=worst,
                examples=[example_of(int(i)) for i in sel[:EXAMPLES]],
            )
        )
    return out


def pointwise_flips(
    layer: Any,
    blob: str,
    xa: np.ndarray,
    xb: np.ndarray,
    kinks: Sequence[float],
    band: float,
    *,
    unknown_at_or_below: float | None = None,
) -> list[GateFlip]:
    """Flips of an element-wise layer whose gradient changes form at the given kinks.

    Parameters
    ----------
    layer : LayerDef
    blob : str
        The layer's bottom: its diff elements at the flips change directly.
    xa, xb : ndarray
        The layer's input on each side, in the blob's shape (or values that lie on the same side
        of every kink as the input, e.g. an in-place ReLU's output).
    kinks : sequence of float
        Where the gradient changes form (0 for ReLU; min and max for Clip).
    band : float
        Absolute band of one value.
    unknown_at_or_below : float, optional
        Values at or below this only say "at or below the kink" (an in-place ReLU's output 0):
        the report writes them as such, and the margin counts them as the kink itself (a lower
        bound of the real margin).
    """
    shape = np.shape(xa)
    fa = np.asarray(xa, np.float64).reshape(-1)
    fb = np.asarray(xb, np.float64).reshape(-1)
    differs = np.zeros(fa.shape, bool)
    for k in kinks:
        differs |= (fa > k) != (fb > k)
    idx = np.flatnonzero(differs)
    if not len(idx):
        return []
    margins = np.abs(fa[idx] - fb[idx])

    def show(v: float) -> str:
        if unknown_at_or_below is not None and v <= unknown_at_or_below:
            return f"<={_fmt(unknown_at_or_below)}"
        return _fmt(v)

    def example(i: int) -> dict:
        j = int(idx[i])
        at = [int(v) for v in np.unravel_index(j, shape)]
        return {
            "blob": blob,
            "index": at,
            "a": float(fa[j]),
            "b": float(fb[j]),
            "margin": float(margins[i]),
            "text": f"{layer.name} input {blob}[{','.join(map(str, at))}] is "
            f"{show(fa[j])} vs {show(fb[j])}",
        }

    return _records(
        layer,
        "gate",
        idx,
        margins,
        np.full(len(idx), band),
        band,
        lambda sel: {blob: np.asarray(sel, np.int64)},
        example,
    )


# --------------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------------

# In-place layers after which a blob still holds the values the previous layer wrote.
_VALUE_PRESERVING = {"Dropout"}


def _final_value_is_output(netdef: Any, layer: Any) -> bool:
    """True when no later in-place layer rewrites the values of ``layer``'s (in-place) top."""
    blob = layer.tops[0]
    later = False
    for other in netdef.layers:
        if other is layer:
            later = True
            continue
        if later and blob in other.tops and other.type not in _VALUE_PRESERVING:
            return False
    return True


@register_gate("ReLU")
def _relu(layer, data_a, data_b, band: Band, netdef) -> list[GateFlip]:
    """ReLU's backward passes ``g`` where its input is > 0 and ``negative_slope * g`` elsewhere."""
    slope = float(layer.param.relu_param.negative_slope)
    bottom = layer.bottoms[0]
    if slope == 1.0:
        return []  # the identity: no kink
    a = np.asarray(data_a[data_key(bottom)])
    b = np.asarray(data_b[data_key(bottom)])
    width = band.absolute(bottom, a, b)
    if layer.tops[0] != bottom:
        return pointwise_flips(layer, bottom, a, b, [0.0], width)
    # In place the input is gone; the output keeps its sign when the slope is >= 0, and with a
    # positive slope it gives the input back exactly.
    if slope < 0 or not _final_value_is_output(netdef, layer):
        return []
    if slope > 0:
        a = np.where(a > 0, a, a / slope)
        b = np.where(b > 0, b, b / slope)
        return pointwise_flips(layer, bottom, a, b, [0.0], width)
    return pointwise_flips(layer, bottom, a, b, [0.0], width, unknown_at_or_below=0.0)


@register_gate("Pooling")
def _max_pool(layer, data_a, data_b, band: Band, netdef) -> list[GateFlip]:
    """MAX pooling routes each window's gradient to its first largest element."""
    geo = numpy_ref.window_geometry(layer)
    if geo["method"] != "max":
        return []
    bottom = layer.bottoms[0]
    xa = np.asarray(data_a[data_key(bottom)], np.float64)
    xb = np.asarray(data_b[data_key(bottom)], np.float64)
    kw = {k: geo[k] for k in ("kernel", "stride", "pad", "global_pooling")}
    arg_a = numpy_ref.max_pool_argmax(xa, **kw)
    arg_b = numpy_ref.max_pool_argmax(xb, **kw)
    windows = np.argwhere(arg_a != arg_b)
    if not len(windows):
        return []
    n, c = windows[:, 0], windows[:, 1]
    sel = tuple(windows.T)
    pa, pb = arg_a[sel], arg_b[sel]
    plane_a = xa.reshape(xa.shape[0], xa.shape[1], -1)
    plane_b = xb.reshape(xb.shape[0], xb.shape[1], -1)
    # Each side's preference for its own choice; their sum is how far the four values must move.
    margins = (plane_a[n, c, pa] - plane_a[n, c, pb]) + (plane_b[n, c, pb] - plane_b[n, c, pa])
    width = band.absolute(bottom, xa, xb)
    hw = xa.shape[2] * xa.shape[3]
    flat_a = (n * xa.shape[1] + c) * hw + pa
    flat_b = (n * xa.shape[1] + c) * hw + pb
    w_ = xa.shape[3]

    def example(i: int) -> dict:
        win = [int(v) for v in windows[i]]
        ya, xa_ = divmod(int(pa[i]), w_)
        yb, xb_ = divmod(int(pb[i]), w_)
        return {
            "blob": bottom,
            "index": win,
            "a": [float(plane_a[n[i], c[i], pa[i]]), float(plane_a[n[i], c[i], pb[i]])],
            "b": [float(plane_b[n[i], c[i], pa[i]]), float(plane_b[n[i], c[i], pb[i]])],
            "margin": float(margins[i]),
            "text": f"{layer.name} window {win} of {bottom}: one side takes ({ya},{xa_}) by "
            f"{_fmt(plane_a[n[i], c[i], pa[i]] - plane_a[n[i], c[i], pb[i]])}, the other "
            f"({yb},{xb_}) by {_fmt(plane_b[n[i], c[i], pb[i]] - plane_b[n[i], c[i], pa[i]])}",
        }

    return _records(
        layer,
        "route",
        np.arange(len(windows)),
        margins,
        np.full(len(windows), 2 * width),
        width,
        lambda s: {bottom: np.unique(np.concatenate([flat_a[s], flat_b[s]]))},
        example,
    )


def caffe_eltwise_argmax(xs: Sequence[np.ndarray]) -> np.ndarray:
    """Which bottom Caffe's Eltwise MAX routes each element's gradient to.

    Caffe compares bottoms 0 and 1 with a strict ``>`` (a tie goes to bottom 1), then replaces the
    running maximum only where a later bottom is strictly greater (a tie keeps the earlier one).
    """
    idx = np.where(xs[0] > xs[1], 0, 1)
    top = np.where(idx == 0, xs[0], xs[1])
    for k in range(2, len(xs)):
        take = xs[k] > top
        idx = np.where(take, k, idx)
        top = np.where(take, xs[k], top)
    return idx


@register_gate("Eltwise")
def _eltwise_max(layer, data_a, data_b, band: Band, netdef) -> list[GateFlip]:
    """Eltwise MAX routes each element's gradient to the bottom that holds the maximum."""
    if numpy_ref.eltwise_operation(layer) != "max":
        return []
    xa = [np.asarray(data_a[data_key(b)], np.float64) for b in layer.bottoms]
    xb = [np.asarray(data_b[data_key(b)], np.float64) for b in layer.bottoms]
    ia, ib = caffe_eltwise_argmax(xa), caffe_eltwise_argmax(xb)
    flat = np.flatnonzero((ia != ib).reshape(-1))
    if not len(flat):
        return []
    sa = np.stack([x.reshape(-1) for x in xa])
    sb = np.stack([x.reshape(-1) for x in xb])
    ka, kb = ia.reshape(-1)[flat], ib.reshape(-1)[flat]
    margins = (sa[ka, flat] - sa[kb, flat]) + (sb[kb, flat] - sb[ka, flat])
    widths = [band.absolute(b, x, y) for b, x, y in zip(layer.bottoms, xa, xb, strict=True)]
    allowed = np.maximum(np.take(widths, ka), np.take(widths, kb)) * 2
    shape = xa[0].shape

    def marks(s: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {}
        for k in (ka[s], kb[s]):
            for bi in np.unique(k):
                out.setdefault(layer.bottoms[int(bi)], []).append(flat[s][k == bi])
        return {b: np.unique(np.concatenate(v)) for b, v in out.items()}

    def example(i: int) -> dict:
        at = [int(v) for v in np.unravel_index(int(flat[i]), shape)]
        ba, bb = layer.bottoms[int(ka[i])], layer.bottoms[int(kb[i])]
        return {
            "blob": ba,
            "index": at,
            "a": [float(sa[ka[i], flat[i]]), float(sa[kb[i], flat[i]])],
            "b": [float(sb[ka[i], flat[i]]), float(sb[kb[i], flat[i]])],
            "margin": float(margins[i]),
            "text": f"{layer.name} at {at}: one side routes to {ba} by "
            f"{_fmt(sa[ka[i], flat[i]] - sa[kb[i], flat[i]])}, the other to {bb} by "
            f"{_fmt(sb[kb[i], flat[i]] - sb[ka[i], flat[i]])}",
        }

    return _records(
        layer,
        "route",
        np.arange(len(flat)),
        margins,
        allowed,
        max(widths),
        marks,
        example,
    )


def _sign_flips(layer, data_a, data_b, band: Band, netdef, kinks_of) -> list[GateFlip]:
    """An element-wise layer whose gradient changes form at ``kinks_of(layer)``.

    Not in place, its input is compared with the kinks. In place (only for kinks ``[0]`` and
    layers whose output keeps the sign of the input) the output's sign stands for the input's side
    and the output difference for the margin, a lower bound of the input's when the layer does not
    shrink values (true of PReLU and ELU slopes <= 1).
    """
    kinks = kinks_of(layer)
    if not kinks:
        return []
    bottom = layer.bottoms[0]
    a = np.asarray(data_a[data_key(bottom)])
    b = np.asarray(data_b[data_key(bottom)])
    width = band.absolute(bottom, a, b)
    if layer.tops[0] != bottom:
        return pointwise_flips(layer, bottom, a, b, kinks, width)
    if list(kinks) != [0.0] or not _final_value_is_output(netdef, layer):
        return []  # the input is gone and the output does not say which side it was on
    return pointwise_flips(layer, bottom, a, b, kinks, width)


@register_gate("PReLU")
def _prelu(layer, data_a, data_b, band: Band, netdef) -> list[GateFlip]:
    """PReLU: gradient 1 above 0, the channel's slope at or below (a negative slope hides the side
    of an in-place input; such flips are not recognised)."""
    return _sign_flips(layer, data_a, data_b, band, netdef, lambda _: [0.0])


@register_gate("ELU")
def _elu(layer, data_a, data_b, band: Band, netdef) -> list[GateFlip]:
    """ELU: gradient 1 above 0, ``alpha * exp(x)`` at or below: a kink at 0 unless alpha is 1."""
    alpha = float(layer.param.elu_param.alpha)
    return _sign_flips(layer, data_a, data_b, band, netdef, lambda _: [] if alpha == 1 else [0.0])


@register_gate("AbsVal")
def _absval(layer, data_a, data_b, band: Band, netdef) -> list[GateFlip]:
    """AbsVal: gradient ``sign(x)``, a kink at 0 (in place the input's sign is gone)."""
    if layer.tops[0] == layer.bottoms[0]:
        return []
    return _sign_flips(layer, data_a, data_b, band, netdef, lambda _: [0.0])


@register_gate("Clip")
def _clip(layer, data_a, data_b, band: Band, netdef) -> list[GateFlip]:
    """Clip: the gradient passes between min and max and stops outside: kinks at both bounds."""
    if layer.tops[0] == layer.bottoms[0]:
        return []
    p = layer.param.clip_param
    return _sign_flips(layer, data_a, data_b, band, netdef, lambda _: [float(p.min), float(p.max)])
