"""Where a run departs and why, in sentences a person can act on.

A failing blob deep in the net says little by itself. :func:`diagnose` names the first failing blob
(forward blobs in net order, then diffs in the order the gradient flows) and its cause, which is
always one of:

* ``"local"``: a layer departs when run alone on the reference's own inputs
  (:mod:`parity.local`); that layer is wrong.
* ``"gate-flip"``: a kinked layer (ReLU, MAX pooling, Eltwise MAX...) decided differently on the
  two sides with a margin *outside* the noise band of its kink (:mod:`parity.gates`); the forward
  values it gates differ by more than float noise, and the diffs upstream inherit the flip.
* ``"accumulated"``: no layer departs alone and no gate flip explains it: the error builds up over
  several layers (or lies in what is recorded rather than computed, e.g. which version of an
  in-place blob a dump holds).

The verdict and the cause never contradict each other: a failing run always has a cause, and a
departing layer always fails the run. In-band flips, which were corrected, are described as well, so
that a passing run says what it corrected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from port.blobkeys import data_key, diff_key, is_data, ordered_keys

from .compare import BlobCheck, PairResult

__all__ = ["diagnose", "flip_sentence"]


def _num(v: float) -> str:
    return f"{v:.2g}"


def flip_sentence(pair: str, flip: Mapping[str, Any]) -> str:
    """One line for one layer's flips between a pair of runners (a ``ParityResult.flips`` entry)."""
    unit = "window(s)" if flip["type"] == "Pooling" else "element(s)"
    where = flip["examples"][0]["text"] if flip["examples"] else ""
    margin = flip["worst_margin"]
    band = (
        f"within the noise band of the kink (worst {margin:.2g}x the band)"
        if flip["in_band"]
        else f"OUTSIDE the noise band of the kink ({margin:.3g}x the band)"
    )
    reach = ", ".join(f"{b} {n}" for b, n in flip["reach"].items())
    return (
        f"{pair}: {flip['layer']} ({flip['type']}) {flip['count']} {unit} flipped, {band}: "
        f"{flip['handling']}; e.g. {where}; diff elements reached: {reach}"
    )


def _first_failure(
    netdef: Any, pairs: Sequence[PairResult], prefer: Sequence[str]
) -> tuple[PairResult, BlobCheck] | None:
    """The first failing judged check in net order; at one blob, the most preferred reference's."""
    failing = [(p, c) for p in pairs if p.rule != "info" for c in p.checks if not c.passed]
    if not failing:
        return None
    order = {k: i for i, k in enumerate(ordered_keys(netdef, {c.key for _, c in failing}))}

    def rank(pc: tuple[PairResult, BlobCheck]) -> tuple:
        p, c = pc
        ref = prefer.index(p.reference) if p.reference in prefer else len(prefer)
        return (order.get(c.key, math.inf), ref)

    return min(failing, key=rank)


def _local_cause(row: Mapping[str, Any]) -> str:
    """What the departing layer got wrong, from its local-analysis row."""
    worst = None
    for direction, entries in (("forward", row["forward"]), ("backward", row["backward"])):
        for blob, e in entries.items():
            err = e.get("port", e.get("port_vs_reference"))
            if err is None or e["allowed"] <= 0:
                continue
            ratio = err / e["allowed"]
            if worst is None or ratio > worst[0]:
                worst = (ratio, direction, blob, err, e["allowed"])
    if worst is None:
        return ""
    _, direction, blob, err, allowed = worst
    what = data_key(blob) if direction == "forward" else diff_key(blob)
    return f": {what} is off by {_num(err)} of its range where {_num(allowed)} is allowed"


def diagnose(
    netdef: Any,
    pairs: Sequence[PairResult],
    flips: Mapping[str, list[dict]],
    local: Sequence[Mapping[str, Any]],
    first_departure: str | None,
    *,
    prefer: Sequence[str] = (),
) -> dict:
    """The cause of a run's verdict, for the report.

    Parameters
    ----------
    netdef : NetDef
    pairs : sequence of PairResult
        The run's pairs (informational ones are ignored).
    flips : mapping
        ``ParityResult.flips``.
    local : sequence of dict
        The local analysis rows.
    first_departure : str or None
        The first layer that departs when run alone.
    prefer : sequence of str
        References in the order to prefer when several fail at the same blob
        (``parity.plan.Plan.prefer``); the others come after them, in the order of ``pairs``.

    Returns
    -------
    dict
        ``cause`` (None, "local", "gate-flip" or "accumulated"), ``layer`` (the layer held
        responsible), ``start`` (the first failing check: ``key``, ``layer``, ``pair``,
        ``n_over``, ``needed_multiple``) and ``lines`` (sentences, the cause first, then every gate
        flip of every pair of runners).
    """
    flip_lines = [flip_sentence(pair, f) for pair, fl in flips.items() for f in fl]
    first = _first_failure(netdef, pairs, prefer)
    out: dict[str, Any] = {"cause": None, "layer": None, "start": None, "lines": []}
    if first is not None:
        p, c = first
        out["start"] = {
            "key": c.key,
            "layer": c.layer,
            "pair": f"{p.subject} vs {p.reference}",
            "n_over": c.metrics.n_over,
            "needed_multiple": c.needed_multiple,
        }
    if first_departure is not None:
        row = next(r for r in local if r["layer"] == first_departure and r.get("departs"))
        out["cause"], out["layer"] = "local", first_departure
        out["lines"].append(
            f"layer {first_departure} departs when run alone on {row['reference']}'s own inputs"
            + _local_cause(row)
        )
    elif first is not None:
        p, c = first
        blob = c.key.split("/", 1)[1]
        key = "|".join(sorted((p.subject, p.reference)))
        # Forward: a flip of the layer that gates this very blob; backward: any flip whose
        # gradient change can reach it.
        where = "gated" if is_data(c.key) else "reach"
        culprits = [f for f in flips.get(key, []) if not f["in_band"] and blob in f[where]]
        over = f"{c.metrics.n_over} element(s)" if c.metrics.n_over else "some elements"
        if culprits:
            # The latest flip in net order is where the gradient first goes astray.
            f = culprits[-1]
            ex = f["examples"][0]["text"] if f["examples"] else f["layer"]
            out["cause"], out["layer"] = "gate-flip", f["layer"]
            out["lines"].append(
                f"{c.key} differs at {over} ({p.subject} vs {p.reference}); {ex}: "
                f"{f['worst_margin']:.3g}x outside the noise band of the kink, so the two sides "
                f"really gate differently: not corrected"
            )
        else:
            out["cause"], out["layer"] = "accumulated", c.layer
            out["lines"].append(
                f"{c.key} departs first ({p.subject} vs {p.reference}: {c.needed_multiple:.3g}x "
                f"its noise at {over}), yet no layer departs when run alone and no gate flip "
                f"explains it: the error builds up across layers from {c.layer or 'the input'} on, "
                "or lies in what is recorded rather than computed"
            )
    out["lines"].extend(flip_lines)
    return out
