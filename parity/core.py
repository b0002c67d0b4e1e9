"""Judging a set of runner outputs: noise measurement, routing-flip excusal, pairs, verdict."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import tolerance
from .compare import BlobCheck, Metrics, PairResult, ParityResult, metrics
from .routing import Flip, excused_region, find_flips, teacher_forced_backward
from .runners import RunnerOutput

__all__ = ["judge", "blob_producers", "ordered_keys", "CAFFE_BUILDS", "FLOAT32_REFERENCES"]

CAFFE_BUILDS = ("caffe-atlas", "caffe-openblas")
FLOAT32_REFERENCES = ("numpy32", "onnx")


def blob_producers(netdef: Any) -> dict[str, str]:
    """Blob name -> name of the layer that first writes it ("" for net inputs)."""
    out = {name: "" for name in netdef.inputs}
    for layer in netdef.layers:
        for t in layer.tops:
            out.setdefault(t, layer.name)
    return out


def ordered_keys(netdef: Any, available: set[str]) -> list[str]:
    """Forward keys in net order, then backward keys in the order the gradient flows (reverse)."""
    blobs = list(blob_producers(netdef))
    fwd = [f"data/{b}" for b in blobs if f"data/{b}" in available]
    bwd = [f"diff/{b}" for b in reversed(blobs) if f"diff/{b}" in available]
    return fwd + bwd


class _FlipCache:
    """Routing flips, their reach, and (with a float64 net) their exact effect, per pair of runners.

    With ``net64`` the diffs of each side are recomputed in float64 on that side's own forward data
    (:func:`parity.routing.teacher_forced_backward`); within the flips' reach the subject's diff is
    corrected by the difference of the two recomputations, so the flipped gradient is subtracted
    exactly and every element is still compared. Without ``net64`` the reach is excused instead.
    """

    def __init__(
        self,
        netdef: Any,
        outputs: Mapping[str, RunnerOutput],
        net64: Any = None,
        backward_from: str | None = None,
    ) -> None:
        self.netdef = netdef
        self.outputs = outputs
        self.net64 = net64
        self.backward_from = backward_from
        self._tf: dict[str, dict[str, np.ndarray] | None] = {}
        self.failures: dict[str, str] = {}
        self._cache: dict[tuple[str, str], tuple[list[Flip], dict[str, np.ndarray]]] = {}
        self.shapes = {}
        for o in outputs.values():
            for k, v in o.blobs.items():
                if k.startswith("data/"):
                    self.shapes.setdefault(k[5:], v.shape)

    def get(self, a: str, b: str) -> tuple[list[Flip], dict[str, np.ndarray]]:
        key = (a, b) if a <= b else (b, a)
        if key not in self._cache:
            oa, ob = self.outputs[a], self.outputs[b]
            flips = find_flips(self.netdef, oa.blobs, ob.blobs)
            region = excused_region(self.netdef, flips, self.shapes) if flips else {}
            self._cache[key] = (flips, region)
        return self._cache[key]

    def correction(self, subject: str, reference: str, blob: str) -> np.ndarray | None:
        """What the flips between the two sides moved ``diff/<blob>`` by (None: nothing known)."""
        fl, region = self.get(subject, reference)
        if blob not in region or not self.corrects:
            return None
        ts, tr = self.recomputed(subject), self.recomputed(reference)
        if ts is None or tr is None or blob not in ts or blob not in tr:
            return None
        return np.where(region[blob], ts[blob] - tr[blob], 0.0)

    def handling(self, a: str, b: str) -> str:
        """ "corrected" when both sides' float64 recomputations exist, else "excused"."""
        ok = self.corrects and self._tf.get(a) is not None and self._tf.get(b) is not None
        return "corrected" if ok else "excused"

    @property
    def corrects(self) -> bool:
        return self.net64 is not None and self.backward_from is not None

    def recomputed(self, name: str) -> dict[str, np.ndarray] | None:
        """The side's float64 backward on its own data; None if the port's layers cannot take its
        blobs (a broken port: the flip is then excused, and the port fails elsewhere anyway)."""
        if name not in self._tf:
            try:
                self._tf[name] = teacher_forced_backward(
                    self.netdef, self.net64, self.outputs[name].blobs, self.backward_from
                )
            except (RuntimeError, ValueError) as exc:
                self._tf[name] = None
                self.failures[name] = str(exc).splitlines()[0][:200]
        return self._tf[name]


def _missing() -> Metrics:
    """Metrics of a blob one side lacks or has in another shape: an infinite error."""
    return Metrics(math.inf, math.inf, math.inf, math.inf, math.inf, math.inf, 0.0, 0.0, [], 0, 0)


def _compare_pair(
    subject: RunnerOutput,
    reference: RunnerOutput,
    keys: list[str],
    producers: Mapping[str, str],
    flips: _FlipCache | None,
    rule_for: Any,
    rule_name: str,
) -> PairResult:
    """Compare every key (diffs corrected for, or excused from, routing flips); apply ``rule_for``."""
    pair = PairResult(subject.name, reference.name, rule_name)
    region: dict[str, np.ndarray] = {}
    nflips = 0
    correct = False
    if flips is not None and any(k.startswith("diff/") for k in keys):
        fl, region = flips.get(subject.name, reference.name)
        nflips = sum(len(f.windows) for f in fl)
        correct = bool(region) and flips.corrects
    for key in keys:
        blob = key.split("/", 1)[1]
        a = subject.blobs.get(key)
        b = reference.blobs.get(key)
        rule = rule_for(key)
        if a is None or b is None or a.shape != b.shape:
            m = _missing()
        elif (
            key.startswith("diff/")
            and blob in region
            and correct
            and (corr := flips.correction(subject.name, reference.name, blob)) is not None
        ):
            m = metrics(a.astype(np.float64) - corr, b)
            m.n_corrected = int(region[blob].sum())
            rng = m.ref_range
            m.flip_effect = float(np.abs(corr).max() / rng) if rng > 0 else 0.0
        else:
            excuse = region.get(blob) if key.startswith("diff/") else None
            m = metrics(a, b, excuse=excuse)
        pair.checks.append(
            BlobCheck(
                key, producers.get(blob, ""), m, rule, nflips if key.startswith("diff/") else 0
            )
        )
    return pair


def judge(
    netdef: Any,
    outputs: Mapping[str, RunnerOutput],
    *,
    model: str = "",
    subject: str = "port32",
    local: list[dict] | None = None,
    notes: list[str] | None = None,
    net64: Any = None,
    backward_from: str | None = None,
) -> ParityResult:
    """Apply the tolerance policy of :mod:`parity.tolerance` to a set of runner outputs.

    Parameters
    ----------
    netdef : NetDef
    outputs : mapping runner name -> RunnerOutput
        Must hold ``port32`` (the subject) and ``port64`` (float64 truth for diffs); any of
        ``caffe-atlas``, ``caffe-openblas``, ``numpy32``, ``numpy64``, ``onnx``.
    model : str
        Name for the report.
    subject : str
        Runner judged (``port32``).
    local : list of dict, optional
        Per-layer local analysis (:func:`parity.local.local_analysis`); its first departing layer
        fails the run.
    notes : list of str, optional
        Free-text remarks carried into the result.
    net64 : port.CaffeNet, optional
        The float64 port, whose per-layer modules recompute each side's backward on its own forward
        data to correct diffs for max-pool routing flips (see :class:`_FlipCache`). Without it the
        flips' reach is excused.
    backward_from : str, optional
        ``"BLOB:UNIT"`` the diffs were seeded at (needed for the correction).

    Returns
    -------
    ParityResult
    """
    if subject not in outputs or "port64" not in outputs:
        raise ValueError("judge needs the port32 subject and the port64 truth")
    producers = blob_producers(netdef)
    sub = outputs[subject]
    p64 = outputs["port64"]
    flips = _FlipCache(netdef, outputs, net64, backward_from)
    keys_all = ordered_keys(netdef, set(sub.blobs))
    fwd_keys = [k for k in keys_all if k.startswith("data/")]
    builds = [b for b in CAFFE_BUILDS if b in outputs]
    truth_fwd = outputs.get("numpy64", p64)

    # -- noise of this very input: spread between the builds, and Caffe's own error to truth --
    noise: dict[str, dict[str, float | None]] = {
        k: {"spread": None, "caffe_own": None} for k in keys_all
    }
    info_pairs: list[PairResult] = []
    if len(builds) == 2:
        sp = _compare_pair(
            outputs[builds[0]],
            outputs[builds[1]],
            keys_all,
            producers,
            flips,
            lambda k: None,
            "info",
        )
        info_pairs.append(sp)
        for c in sp.checks:
            if math.isfinite(c.metrics.max_rel):
                noise[c.key]["spread"] = c.metrics.max_rel
    for b in builds:
        for truth, keys in (
            (truth_fwd, fwd_keys),
            (p64, [k for k in keys_all if k.startswith("diff/")]),
        ):
            own = _compare_pair(outputs[b], truth, keys, producers, flips, lambda k: None, "info")
            info_pairs.append(own)
            for c in own.checks:
                if math.isfinite(c.metrics.max_rel):
                    prev = noise[c.key]["caffe_own"]
                    noise[c.key]["caffe_own"] = max(prev or 0.0, c.metrics.max_rel)

    # Caffe's own error counts towards the float32 noise of rule 1 only where the truth is
    # independent of the port (forward blobs against numpy64): against the float64 port, a wrong
    # port would make Caffe look noisy and widen its own tolerance.
    independent_truth = "numpy64" in outputs

    def spread_rule(key: str) -> tolerance.Rule:
        nz = noise.get(key, {})
        own = (
            nz.get("caffe_own")
            if (builds and independent_truth and key.startswith("data/"))
            else None
        )
        return tolerance.spread_rule(nz.get("spread") if len(builds) == 2 else None, own)

    def truth_rule(key: str) -> tolerance.Rule:
        return tolerance.truth_rule(noise.get(key, {}).get("caffe_own") if builds else None)

    pairs: list[PairResult] = []
    for b in builds:
        ref = outputs[b]
        keys = [k for k in ordered_keys(netdef, set(ref.blobs) | set(sub.blobs))]
        pairs.append(_compare_pair(sub, ref, keys, producers, flips, spread_rule, "spread"))
    for r in FLOAT32_REFERENCES:
        if r in outputs:
            ref = outputs[r]
            keys = ordered_keys(
                netdef, {k for k in set(ref.blobs) | set(sub.blobs) if k.startswith("data/")}
            )
            pairs.append(_compare_pair(sub, ref, keys, producers, None, spread_rule, "spread"))
    if "numpy64" in outputs:
        pairs.append(
            _compare_pair(sub, outputs["numpy64"], fwd_keys, producers, None, truth_rule, "truth")
        )
        f64_keys = ordered_keys(netdef, {k for k in set(p64.blobs) if k.startswith("data/")})
        pairs.append(
            _compare_pair(
                p64,
                outputs["numpy64"],
                f64_keys,
                producers,
                None,
                lambda k: tolerance.float64_rule(),
                "float64",
            )
        )
        truth_keys = [k for k in keys_all if k.startswith("diff/")]
    else:
        truth_keys = keys_all
    if truth_keys:
        pairs.append(_compare_pair(sub, p64, truth_keys, producers, flips, truth_rule, "truth"))

    flip_summary = {}
    for (a, b), (fl, region) in flips._cache.items():
        if fl:
            flip_summary[f"{a}|{b}"] = [
                {
                    **f.summary(),
                    "handling": flips.handling(a, b),
                    "reach": {k: int(v.sum()) for k, v in region.items()},
                }
                for f in fl
            ]
    notes = list(notes or [])
    notes += [
        f"routing-flip correction unavailable for {n} (excused instead): {m}"
        for n, m in flips.failures.items()
    ]
    first = None
    if local:
        for row in local:
            if row.get("departs"):
                first = row["layer"]
                break
    result = ParityResult(
        model=model,
        runners={name: o.describe() for name, o in outputs.items()},
        pairs=pairs + info_pairs,
        noise=noise,
        flips=flip_summary,
        local=local or [],
        first_departure=first,
        policy=tolerance.policy_json(),
        notes=notes,
    )
    result.flip_correction = flips.correction
    return result
