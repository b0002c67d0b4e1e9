"""Local versus propagated error: each layer re-run alone on the reference's own input blobs.

A blob deep in the net carries the rounding of every layer above it, so a blob-level failure does
not say which layer is wrong. Here each *unit* (a layer plus the in-place layers that rewrite its
tops, e.g. conv1 + relu1) is run by the port on the reference's own bottoms, and compared with the
same unit run by the float64 numpy reference on the same bottoms (forward): the reference's own
output gives Caffe's local error to that float64 computation, and :func:`parity.tolerance.local_rule`
turns it into the allowed local error. Backward there is no independent float64 truth, so each
blob's diff is recomputed by the port's layers from the reference's own forward data and top diffs,
in float32 and float64, and the float32 result must be within
:func:`parity.tolerance.local_backward_rule` of the reference's diff (a multiple of the port's own
float32-vs-float64 gap on that step). The first unit, in net order, that departs is the first layer that is really wrong.

Assumptions, each true of Caffe deploy nets: an in-place layer rewrites a blob before any other
layer reads it (so a bottom's final value is the value every consumer read); in-place layers are
point-wise or channel-wise and (for ReLU) sign preserving, so their backward can be run on the final
values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from port.blobkeys import data_key, diff_key, is_diff
from port.dump import BackwardSeed

from . import numpy_ref, tolerance
from .compare import metrics

__all__ = ["units", "local_analysis"]


def units(netdef: Any) -> list[tuple[Any, list[Any]]]:
    """(layer, [in-place layers on its tops]) for every non-in-place layer, in net order."""
    out: list[tuple[Any, list[Any]]] = []
    by_top: dict[str, tuple[Any, list[Any]]] = {}
    for layer in netdef.layers:
        inplace = bool(set(layer.tops) & set(layer.bottoms))
        if inplace and layer.bottoms[0] in by_top:
            by_top[layer.bottoms[0]][1].append(layer)
            continue
        entry = (layer, [])
        out.append(entry)
        for t in layer.tops:
            by_top[t] = entry
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    # A layer that produces the wrong shape (e.g. floor instead of ceil pooling) departs infinitely.
    return metrics(a, b).max_rel if a.shape == b.shape else float("inf")


def _numpy_unit(layer, chain, bottoms, weights) -> list[np.ndarray]:
    tops = numpy_ref.forward_layer(
        layer, bottoms, [np.asarray(w, np.float64) for w in weights.get(layer.name, [])]
    )
    for lc in chain:
        i = layer.tops.index(lc.bottoms[0])
        rest = [np.asarray(b) for b in lc.bottoms[1:]]
        tops[i] = numpy_ref.forward_layer(
            lc, [tops[i]] + rest, [np.asarray(w, np.float64) for w in weights.get(lc.name, [])]
        )[0]
    return tops


def _port_unit(net, layer, chain, bottoms_t):
    tops = list(net.module(layer.name)(*bottoms_t))
    for lc in chain:
        i = layer.tops.index(lc.bottoms[0])
        tops[i] = net.module(lc.name)(tops[i])[0]
    return tops


def _consumers(
    netdef: Any, backward_from: str | None
) -> tuple[dict[str, list[tuple[Any, list[Any]]]], str | None]:
    """Units reading each blob that took part in the reference's backward, and the seed blob."""
    consumers: dict[str, list[tuple[Any, list[Any]]]] = {}
    seed_blob = None
    last = len(netdef.layers) - 1
    if backward_from:
        seed_blob = BackwardSeed.parse(backward_from).blob
        writer = netdef.last_writer(seed_blob)
        last = last if writer is None else writer
    index = {lay.name: i for i, lay in enumerate(netdef.layers)}
    for unit in units(netdef):
        if index[unit[0].name] > last:
            continue  # after the backward start: took no part in the reference's backward
        for b in unit[0].bottoms:
            if b != seed_blob:
                consumers.setdefault(b, []).append(unit)
    return consumers, seed_blob


def local_analysis(
    netdef: Any,
    net32: Any,
    net64: Any,
    weights: Mapping[str, list[np.ndarray]],
    reference: Any,
    *,
    backward: bool = True,
    backward_from: str | None = None,
) -> list[dict]:
    """Per-unit local errors of the port and of the reference, and whether the port departs.

    Parameters
    ----------
    netdef : NetDef
    net32, net64 : port.CaffeNet
        The float32 port being judged and its float64 copy (backward truth).
    weights : mapping layer name -> list of ndarray
        The weights both nets carry (for the numpy float64 layer).
    reference : RunnerOutput
        The reference whose own bottoms feed each unit (a Caffe build, or numpy32 without one).
    backward : bool
        Also check each unit's backward (bottom diffs from the reference's top diffs).
    backward_from : str, optional
        ``"BLOB:UNIT"`` the reference's backward started from: layers after the last writer of BLOB
        took no part in it, and BLOB's own diff is the seed, not computed by a layer.

    Returns
    -------
    list of dict
        One row per unit: ``layer``, ``chain`` (in-place layers), ``reference``, ``forward`` and
        ``backward`` entries ``{blob: {"port": rel, "reference": rel, "allowed": rel}}`` and
        ``departs`` (bool), ``worst_ratio`` (port's local error / the rule's noise).
    """
    import torch

    blobs = reference.blobs
    rows = []
    consumers, seed_blob = _consumers(netdef, backward_from)
    for layer, chain in units(netdef):
        bkeys = [data_key(b) for b in layer.bottoms]
        if not all(k in blobs for k in bkeys) or not all(data_key(t) in blobs for t in layer.tops):
            continue
        if any(numpy_ref.layer_function(u) is None for u in (layer, *chain)):
            continue  # a custom type the numpy reference was not given: no local truth
        row: dict = {
            "layer": layer.name,
            "type": layer.type,
            "chain": [c.name for c in chain],
            "reference": reference.name,
            "forward": {},
            "backward": {},
        }
        bottoms = [np.asarray(blobs[k]) for k in bkeys]
        truth = _numpy_unit(layer, chain, [b.astype(np.float64) for b in bottoms], weights)
        with torch.no_grad():
            mine = _port_unit(
                net32, layer, chain, [torch.from_numpy(b.astype(np.float32)) for b in bottoms]
            )
        worst = 0.0
        departs = False
        for t, tr, mi in zip(layer.tops, truth, mine, strict=True):
            ref_err = _rel(np.asarray(blobs[data_key(t)]), tr)
            port_err = _rel(mi.numpy(), tr)
            rule = tolerance.local_rule(ref_err)
            row["forward"][t] = {"port": port_err, "reference": ref_err, "allowed": rule.allowed}
            worst = max(worst, port_err / rule.noise)
            departs |= port_err > rule.allowed
        row["worst_ratio"] = worst
        row["departs"] = departs
        rows.append(row)
    if backward and any(is_diff(k) for k in blobs):
        _local_backward(netdef, net32, net64, reference, rows, consumers)
    return rows


def _local_backward(netdef, net32, net64, reference, rows, consumers) -> None:
    """For each blob: sum of its consumers' vjps on the reference's data and top diffs, then the
    blob's own in-place chain backward (on final values), in float32 and float64; compare with the
    reference's diff."""
    import torch

    blobs = reference.blobs
    by_layer = {r["layer"]: r for r in rows}
    producer_unit = {}
    for layer, chain in units(netdef):
        for t in layer.tops:
            producer_unit[t] = (layer, chain)
    for blob, cons in consumers.items():
        if diff_key(blob) not in blobs:
            continue
        grads = {}
        try:
            grads = _blob_grads(blob, cons, blobs, net32, net64, producer_unit)
        except RuntimeError:
            # The port's layer cannot even take the reference's shapes: it departs.
            grads = {"failed": None}
        if not grads:
            continue
        if "failed" in grads:
            own, port_err, ref_own = 0.0, float("inf"), None
        else:
            own = _rel(grads[torch.float32], grads[torch.float64])
            port_err = _rel(grads[torch.float32], np.asarray(blobs[diff_key(blob)]))
            ref_own = _rel(np.asarray(blobs[diff_key(blob)]), grads[torch.float64])
        rule = tolerance.local_backward_rule(own)
        # The diff of blob is computed by its consumers' backward: attribute it to them.
        for layer, _ in cons:
            r = by_layer.get(layer.name)
            if r is None:
                continue
            r["backward"][blob] = {
                "port_vs_reference": port_err,
                "port_own": own,
                # The reference's own local backward error: its diff against the float64 port's
                # vjp on the reference's own inputs (the counterpart of port_own).
                "reference_own": ref_own,
                "allowed": rule.allowed,
            }
            r["worst_ratio"] = max(r["worst_ratio"], port_err / rule.noise)
            r["departs"] = r["departs"] or port_err > rule.allowed


def _blob_grads(blob, cons, blobs, net32, net64, producer_unit) -> dict:
    """The blob's diff recomputed by the port's layers, float32 and float64 ({} if not possible)."""
    import torch

    grads: dict = {}
    for net, dt in ((net32, torch.float32), (net64, torch.float64)):
        g_total = None
        ok = True
        for layer, _chain in cons:
            if not all(diff_key(t) in blobs for t in layer.tops):
                ok = False
                break
            ins = [
                torch.tensor(np.asarray(blobs[data_key(b)]), dtype=dt, requires_grad=(b == blob))
                for b in layer.bottoms
            ]
            with torch.enable_grad():
                outs = list(net.module(layer.name)(*ins))
                gouts = [torch.tensor(np.asarray(blobs[diff_key(t)]), dtype=dt) for t in layer.tops]
                # A bottom used twice by one layer is covered by marking each use.
                targets = [x for x, b in zip(ins, layer.bottoms, strict=True) if b == blob]
                # Tops that do not depend on the blob (Crop's shape reference, Filter's selector,
                # ArgMax) contribute nothing, as in Caffe.
                live = [(o, g) for o, g in zip(outs, gouts, strict=True) if o.requires_grad]
                if not live:
                    continue
                gs = torch.autograd.grad(
                    [o for o, _ in live],
                    targets,
                    grad_outputs=[g for _, g in live],
                    allow_unused=True,
                )
            for g in gs:
                if g is not None:
                    g_total = g if g_total is None else g_total + g
        if not ok or g_total is None:
            return {}
        # The blob's own in-place chain (relu1 on conv1): backward through it on final values.
        pchain = producer_unit.get(blob, (None, []))[1]
        for lc in reversed([c for c in pchain if c.bottoms[0] == blob]):
            v = torch.tensor(np.asarray(blobs[data_key(blob)]), dtype=dt, requires_grad=True)
            with torch.enable_grad():
                out = net.module(lc.name)(v)[0]
                (g_total,) = torch.autograd.grad(out, [v], grad_outputs=g_total)
        grads[dt] = g_total.detach().numpy()
    return grads
