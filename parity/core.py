"""Judging a set of runner outputs: noise measurement, gate-flip correction, pairs, verdict."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from port.blobkeys import blob_producers, data_key, ordered_keys

from . import gates, tolerance
from .compare import BlobCheck, Metrics, PairResult, ParityResult, metrics
from .diagnosis import diagnose
from .routing import flip_reach, teacher_forced_backward
from .runners import CAFFE_BUILDS, NUMPY32, NUMPY64, ONNX, PORT32, PORT64, RunnerOutput

__all__ = [
    "judge",
    "blob_producers",
    "ordered_keys",
    "FlipAnalysis",
    "CAFFE_BUILDS",
    "FLOAT32_REFERENCES",
]

FLOAT32_REFERENCES = (NUMPY32, ONNX)


class FlipAnalysis:
    """Gate flips between pairs of runners, their reach and (with a float64 net) their exact effect.

    Flips are found from both sides' own forward data (:func:`parity.gates.find_gate_flips`); only
    those within the noise band of their kink are handled. With ``net64`` the diffs of each side
    are recomputed in float64 on that side's own forward data
    (:func:`parity.routing.teacher_forced_backward`); within the in-band flips' reach the subject's
    diff is corrected by the difference of the two recomputations, so the flipped gradient is
    subtracted exactly and every element is still compared. Without ``net64`` the reach is excused.
    Flips outside the band are reported and left alone: the diffs they touch are compared as they
    are (and fail).
    """

    def __init__(
        self,
        netdef: Any,
        outputs: Mapping[str, RunnerOutput],
        band: gates.Band,
        net64: Any = None,
        backward_from: str | None = None,
    ) -> None:
        self.netdef = netdef
        self.outputs = outputs
        self.band = band
        self.net64 = net64
        self.backward_from = backward_from
        self._recomputed: dict[str, dict[str, np.ndarray] | None] = {}
        self.failures: dict[str, str] = {}
        self._pairs: dict[tuple[str, str], tuple[list[gates.GateFlip], dict[str, np.ndarray]]] = {}
        self._reaches: dict[tuple[str, str], list[dict[str, np.ndarray]]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for o in outputs.values():
            for k, v in o.blobs.items():
                if k.startswith("data/"):
                    self.shapes.setdefault(k[5:], v.shape)

    @staticmethod
    def _key(a: str, b: str) -> tuple[str, str]:
        return (a, b) if a <= b else (b, a)

    def get(self, a: str, b: str) -> tuple[list[gates.GateFlip], dict[str, np.ndarray]]:
        """The flips between two runners (in and out of band) and the reach of those in band."""
        key = self._key(a, b)
        if key not in self._pairs:
            fl = gates.find_gate_flips(
                self.netdef, self.outputs[key[0]].blobs, self.outputs[key[1]].blobs, self.band
            )
            # One walk per layer's record (the report shows each record's reach); the region to
            # correct is the union over those in band, as reach distributes over a union of seeds.
            reaches = [flip_reach(self.netdef, [f], self.shapes) for f in fl]
            region: dict[str, np.ndarray] = {}
            for f, reach in zip(fl, reaches, strict=True):
                if f.in_band:
                    for blob, mask in reach.items():
                        region[blob] = region[blob] | mask if blob in region else mask.copy()
            self._reaches[key] = reaches
            self._pairs[key] = (fl, region)
        return self._pairs[key]

    def correction(self, subject: str, reference: str, blob: str) -> np.ndarray | None:
        """What the in-band flips between the two sides moved ``diff/<blob>`` by (None: unknown)."""
        _, region = self.get(subject, reference)
        if blob not in region or not self.corrects:
            return None
        ts, tr = self.recomputed(subject), self.recomputed(reference)
        if ts is None or tr is None or blob not in ts or blob not in tr:
            return None
        return np.where(region[blob], ts[blob] - tr[blob], 0.0)

    def handling(self, a: str, b: str) -> str:
        """ "corrected" when both sides' float64 recomputations exist, else "excused"."""
        ok = self.corrects and self._recomputed.get(a) is not None
        return "corrected" if ok and self._recomputed.get(b) is not None else "excused"

    @property
    def corrects(self) -> bool:
        return self.net64 is not None and self.backward_from is not None

    def recomputed(self, name: str) -> dict[str, np.ndarray] | None:
        """The side's float64 backward on its own data; None if the port's layers cannot take its
        blobs (a broken port: the flip is then excused, and the port fails elsewhere anyway)."""
        if name not in self._recomputed:
            try:
                self._recomputed[name] = teacher_forced_backward(
                    self.netdef, self.net64, self.outputs[name].blobs, self.backward_from
                )
            except (RuntimeError, ValueError) as exc:
                self._recomputed[name] = None
                self.failures[name] = str(exc).splitlines()[0][:200]
        return self._recomputed[name]

    def summary(self) -> dict[str, list[dict]]:
        """Every pair with flips: ``"a|b" -> [GateFlip.summary() + handling + reach]``."""
        out: dict[str, list[dict]] = {}
        for (a, b), (fl, _) in sorted(self._pairs.items(), key=lambda kv: kv[0]):
            if not fl:
                continue
            handled = self.handling(a, b)
            out[f"{a}|{b}"] = [
                {
                    **f.summary(),
                    "handling": handled if f.in_band else "not corrected",
                    "reach": {k: int(v.sum()) for k, v in reach.items()},
                }
                for f, reach in zip(fl, self._reaches[(a, b)], strict=True)
            ]
        return out


def _missing() -> Metrics:
    """Metrics of a blob one side lacks or has in another shape: an infinite error."""
    return Metrics(math.inf, math.inf, math.inf, math.inf, math.inf, math.inf, 0.0, 0.0, [], 0, 0)


def _compare_pair(
    subject: RunnerOutput,
    reference: RunnerOutput,
    keys: list[str],
    producers: Mapping[str, str],
    flips: FlipAnalysis | None,
    rule_for: Any,
    rule_name: str,
) -> PairResult:
    """Compare every key (diffs corrected for, or excused from, in-band gate flips); apply
    ``rule_for``."""
    pair = PairResult(subject.name, reference.name, rule_name)
    region: dict[str, np.ndarray] = {}
    nflips = 0
    if flips is not None and any(k.startswith("diff/") for k in keys):
        fl, region = flips.get(subject.name, reference.name)
        nflips = sum(f.count for f in fl if f.in_band)
    for key in keys:
        blob = key.split("/", 1)[1]
        a = subject.blobs.get(key)
        b = reference.blobs.get(key)
        rule = rule_for(key)
        is_diff = key.startswith("diff/")
        if a is None or b is None or a.shape != b.shape:
            m = _missing()
        elif (
            is_diff
            and blob in region
            and flips is not None
            and flips.corrects
            and ((corr := flips.correction(subject.name, reference.name, blob)) is not None)
        ):
            a = a.astype(np.float64) - corr  # judged as corrected, failures counted so too
            m = metrics(a, b)
            m.n_corrected = int(region[blob].sum())
            rng = m.ref_range
            m.flip_effect = float(np.abs(corr).max() / rng) if rng > 0 else 0.0
        else:
            m = metrics(a, b, excuse=region.get(blob) if is_diff else None)
        if rule is not None and m.max_rel > rule.allowed and a is not None and b is not None:
            m.n_over = _count_over(
                a, b, rule.allowed * m.ref_range, region.get(blob) if is_diff else None
            )
        pair.checks.append(
            BlobCheck(key, producers.get(blob, ""), m, rule, nflips if is_diff else 0)
        )
    return pair


def _count_over(a: np.ndarray, b: np.ndarray, allowed_abs: float, excuse: np.ndarray | None) -> int:
    """Elements whose error exceeds the allowed absolute error (all of them for a shape mismatch)."""
    if a.shape != b.shape:
        return int(max(a.size, b.size))
    err = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    over = ~(err <= allowed_abs)  # NaN counts as over
    if excuse is not None:
        over &= ~excuse
    return int(over.sum())


def _info_pair(
    a: RunnerOutput,
    b: RunnerOutput,
    keys: list[str],
    producers: Mapping[str, str],
    flips: FlipAnalysis | None,
) -> PairResult:
    return _compare_pair(a, b, keys, producers, flips, lambda k: None, "info")


def _measure_noise(
    outputs: Mapping[str, RunnerOutput],
    keys: list[str],
    producers: Mapping[str, str],
    flips: FlipAnalysis | None,
    builds: list[str],
    truth_for: Mapping[str, RunnerOutput],
) -> tuple[dict[str, dict[str, float | None]], list[PairResult]]:
    """The noise of this very input for ``keys``: the spread between the two Caffe builds and the
    builds' own error against float64 truth (``truth_for[key]``)."""
    noise: dict[str, dict[str, float | None]] = {
        k: {"spread": None, "caffe_own": None} for k in keys
    }
    pairs: list[PairResult] = []
    if len(builds) == 2:
        sp = _info_pair(outputs[builds[0]], outputs[builds[1]], keys, producers, flips)
        pairs.append(sp)
        for c in sp.checks:
            if math.isfinite(c.metrics.max_rel):
                noise[c.key]["spread"] = c.metrics.max_rel
    by_truth: dict[str, list[str]] = {}
    for k in keys:
        by_truth.setdefault(truth_for[k].name, []).append(k)
    for b in builds:
        for tname, tkeys in by_truth.items():
            own = _info_pair(outputs[b], outputs[tname], tkeys, producers, flips)
            pairs.append(own)
            for c in own.checks:
                if math.isfinite(c.metrics.max_rel):
                    prev = noise[c.key]["caffe_own"]
                    noise[c.key]["caffe_own"] = max(prev or 0.0, c.metrics.max_rel)
    return noise, pairs


def _judged_pairs(
    netdef: Any,
    outputs: Mapping[str, RunnerOutput],
    sub: RunnerOutput,
    producers: Mapping[str, str],
    flips: FlipAnalysis,
    spread_rule: Any,
    truth_rule: Any,
) -> list[PairResult]:
    """Every pair the verdict rests on (``parity/SCHEMA.md``, "Which pairs a run holds")."""
    p64 = outputs[PORT64]
    keys_all = ordered_keys(netdef, set(sub.blobs))
    fwd_keys = [k for k in keys_all if k.startswith("data/")]
    pairs = []
    for b in CAFFE_BUILDS:
        if b in outputs:
            keys = ordered_keys(netdef, set(outputs[b].blobs) | set(sub.blobs))
            pairs.append(
                _compare_pair(sub, outputs[b], keys, producers, flips, spread_rule, "spread")
            )
    for r in FLOAT32_REFERENCES:
        if r in outputs:
            both = set(outputs[r].blobs) | set(sub.blobs)
            keys = ordered_keys(netdef, {k for k in both if k.startswith("data/")})
            pairs.append(
                _compare_pair(sub, outputs[r], keys, producers, None, spread_rule, "spread")
            )
    truth_keys = keys_all
    if NUMPY64 in outputs:
        n64 = outputs[NUMPY64]
        pairs.append(_compare_pair(sub, n64, fwd_keys, producers, None, truth_rule, "truth"))
        f64_keys = ordered_keys(netdef, {k for k in p64.blobs if k.startswith("data/")})
        pairs.append(
            _compare_pair(
                p64, n64, f64_keys, producers, None, lambda k: tolerance.float64_rule(), "float64"
            )  # fmt: skip
        )
        truth_keys = [k for k in keys_all if k.startswith("diff/")]
    if truth_keys:
        pairs.append(_compare_pair(sub, p64, truth_keys, producers, flips, truth_rule, "truth"))
    return pairs


def judge(
    netdef: Any,
    outputs: Mapping[str, RunnerOutput],
    *,
    model: str = "",
    subject: str = PORT32,
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
        data to correct diffs for gate flips (see :class:`FlipAnalysis`). Without it the flips'
        reach is excused.
    backward_from : str, optional
        ``"BLOB:UNIT"`` the diffs were seeded at (needed for the correction).

    Returns
    -------
    ParityResult
    """
    if subject not in outputs or PORT64 not in outputs:
        raise ValueError("judge needs the port32 subject and the port64 truth")
    producers = blob_producers(netdef)
    sub = outputs[subject]
    p64 = outputs[PORT64]
    keys_all = ordered_keys(netdef, set(sub.blobs))
    fwd_keys = [k for k in keys_all if k.startswith("data/")]
    bwd_keys = [k for k in keys_all if k.startswith("diff/")]
    builds = [b for b in CAFFE_BUILDS if b in outputs]
    truth_fwd = outputs.get(NUMPY64, p64)
    truth_for = {**{k: truth_fwd for k in fwd_keys}, **{k: p64 for k in bwd_keys}}

    # Forward noise first: it sets the band within which a gate flip counts as noise, and the
    # flips then correct the backward noise measurement itself.
    noise, info_pairs = _measure_noise(outputs, fwd_keys, producers, None, builds, truth_for)
    # Caffe's own error counts towards the float32 noise of rule 1 only where the truth is
    # independent of the port (forward blobs against numpy64): against the float64 port, a wrong
    # port would make Caffe look noisy and widen its own tolerance.
    own_counts = bool(builds) and NUMPY64 in outputs

    def spread_rule(key: str) -> tolerance.Rule:
        nz = noise.get(key, {})
        own = nz.get("caffe_own") if own_counts and key.startswith("data/") else None
        return tolerance.spread_rule(nz.get("spread") if len(builds) == 2 else None, own)

    def truth_rule(key: str) -> tolerance.Rule:
        return tolerance.truth_rule(noise.get(key, {}).get("caffe_own") if builds else None)

    band = gates.Band(lambda blob: spread_rule(data_key(blob)).allowed)
    flips = FlipAnalysis(netdef, outputs, band, net64, backward_from)
    bwd_noise, bwd_info = _measure_noise(outputs, bwd_keys, producers, flips, builds, truth_for)
    noise.update(bwd_noise)
    info_pairs += bwd_info

    pairs = _judged_pairs(netdef, outputs, sub, producers, flips, spread_rule, truth_rule)
    notes = list(notes or [])
    notes += [
        f"gate-flip correction unavailable for {n} (excused instead): {m}"
        for n, m in flips.failures.items()
    ]
    local = local or []
    first = next((row["layer"] for row in local if row.get("departs")), None)
    flip_summary = flips.summary()
    return ParityResult(
        model=model,
        runners={name: o.describe() for name, o in outputs.items()},
        pairs=pairs + info_pairs,
        noise=noise,
        flips=flip_summary,
        local=local,
        first_departure=first,
        policy=tolerance.policy_json(),
        notes=notes,
        diagnosis=diagnose(netdef, pairs, flip_summary, local, first),
        flip_correction=flips.correction,
    )
