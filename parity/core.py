"""Judging a set of runner outputs: noise measurement, gate-flip correction, pairs, verdict.

The judge knows no runner by name: which runners are compared, by which rule and on which blobs is
the :class:`parity.plan.Plan` it is given (``parity.plan.default_plan`` for ``parity run``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from port.blobkeys import blob_producers, data_key, is_data, is_diff, ordered_keys

from . import gates, tolerance
from .compare import BlobCheck, Metrics, PairResult, ParityResult, metrics
from .diagnosis import diagnose
from .flips import FlipAnalysis
from .plan import Comparison, Noise, Plan, default_plan
from .runners import RunnerOutput

__all__ = ["judge", "blob_producers", "ordered_keys"]

RuleFor = Callable[[str], Any]


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
    if flips is not None and any(is_diff(k) for k in keys):
        fl, region = flips.get(subject.name, reference.name)
        nflips = sum(f.count for f in fl if f.in_band)
    for key in keys:
        blob = key.split("/", 1)[1]
        a = subject.blobs.get(key)
        b = reference.blobs.get(key)
        rule = rule_for(key)
        backward = is_diff(key)
        if a is None or b is None or a.shape != b.shape:
            m = _missing()
        elif (
            backward
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
            m = metrics(a, b, excuse=region.get(blob) if backward else None)
        if rule is not None and m.max_rel > rule.allowed and a is not None and b is not None:
            m.n_over = _count_over(
                a, b, rule.allowed * m.ref_range, region.get(blob) if backward else None
            )
        pair.checks.append(
            BlobCheck(key, producers.get(blob, ""), m, rule, nflips if backward else 0)
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
    truth_for: Mapping[str, str],
) -> tuple[dict[str, dict[str, float | None]], list[PairResult]]:
    """The noise of this very input for ``keys``: the spread between the first two builds and the
    builds' own error against float64 truth (the runner named ``truth_for[key]``)."""
    noise: dict[str, dict[str, float | None]] = {
        k: {"spread": None, "caffe_own": None} for k in keys
    }
    pairs: list[PairResult] = []
    if len(builds) >= 2:
        sp = _info_pair(outputs[builds[0]], outputs[builds[1]], keys, producers, flips)
        pairs.append(sp)
        for c in sp.checks:
            if math.isfinite(c.metrics.max_rel):
                noise[c.key]["spread"] = c.metrics.max_rel
    by_truth: dict[str, list[str]] = {}
    for k in keys:
        by_truth.setdefault(truth_for[k], []).append(k)
    for b in builds:
        for tname, tkeys in by_truth.items():
            own = _info_pair(outputs[b], outputs[tname], tkeys, producers, flips)
            pairs.append(own)
            for c in own.checks:
                if math.isfinite(c.metrics.max_rel):
                    prev = noise[c.key]["caffe_own"]
                    noise[c.key]["caffe_own"] = max(prev or 0.0, c.metrics.max_rel)
    return noise, pairs


def _keys(netdef: Any, c: Comparison, outputs: Mapping[str, RunnerOutput]) -> list[str]:
    """The blob keys a comparison covers, in net order (forward, then as the gradient flows)."""
    keys = set(outputs[c.subject].blobs)
    if c.keys_from == "both":
        keys |= set(outputs[c.reference].blobs)
    if c.blobs != "all":
        keys = {k for k in keys if k.startswith(c.blobs + "/")}
    return ordered_keys(netdef, keys)


def _judged_pairs(
    netdef: Any,
    outputs: Mapping[str, RunnerOutput],
    plan: Plan,
    producers: Mapping[str, str],
    flips: FlipAnalysis,
    rules: Mapping[str, RuleFor],
) -> list[PairResult]:
    """Every pair of the plan, in its order; a comparison without any key to compare is left out."""
    pairs = []
    for c in plan.comparisons:
        keys = _keys(netdef, c, outputs)
        if not keys:
            continue
        rule_for, rule_name = (rules[c.rule], c.rule) if c.gates else (lambda k: None, "info")
        sub, ref = outputs[c.subject], outputs[c.reference]
        pair = _compare_pair(sub, ref, keys, producers, flips, rule_for, rule_name)
        pair.column = c.column or c.reference
        pair.legend = c.legend or f"{c.subject} vs {pair.column}"
        pairs.append(pair)
    return pairs


def _rules(noise: Mapping[str, dict], spec: Noise, builds: list[str]) -> dict[str, RuleFor]:
    """Each rule a comparison may name, as a function of the blob key, on the measured noise."""
    # Caffe's own error counts towards the float32 noise of the spread rule only where the truth
    # is independent of the subject (see ``Noise.independent``).
    own_counts = bool(builds) and spec.independent

    def spread_rule(key: str) -> tolerance.Rule:
        nz = noise.get(key, {})
        own = nz.get("caffe_own") if own_counts and is_data(key) else None
        return tolerance.spread_rule(nz.get("spread") if len(builds) >= 2 else None, own)

    def truth_rule(key: str) -> tolerance.Rule:
        return tolerance.truth_rule(noise.get(key, {}).get("caffe_own") if builds else None)

    return {
        "spread": spread_rule,
        "truth": truth_rule,
        "float64": lambda k: tolerance.float64_rule(),
    }


def _check_plan(plan: Plan, outputs: Mapping[str, RunnerOutput]) -> None:
    missing = sorted(plan.runners() - set(outputs))
    if missing:
        raise ValueError(f"judge: the plan names runner(s) without an output: {', '.join(missing)}")


def judge(
    netdef: Any,
    outputs: Mapping[str, RunnerOutput],
    *,
    plan: Plan | None = None,
    model: str = "",
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
        Every runner the plan names.
    plan : Plan, optional
        Which pairs are judged, by which rule, and which runners measure the noise; default
        :func:`parity.plan.default_plan` of the outputs (``port32`` judged, ``port64`` the truth).
    model : str
        Name for the report.
    local : list of dict, optional
        Per-layer local analysis (:func:`parity.local.local_analysis`); its first departing layer
        fails the run.
    notes : list of str, optional
        Free-text remarks carried into the result.
    net64 : port.CaffeNet, optional
        The float64 port, whose per-layer modules recompute each side's backward on its own forward
        data to correct diffs for gate flips (see :class:`parity.flips.FlipAnalysis`). Without it
        the flips' reach is excused.
    backward_from : str, optional
        ``"BLOB:UNIT"`` the diffs were seeded at (needed for the correction).

    Returns
    -------
    ParityResult
    """
    plan = plan if plan is not None else default_plan(outputs)
    _check_plan(plan, outputs)
    producers = blob_producers(netdef)
    spec = plan.noise
    keys_all = ordered_keys(netdef, set(outputs[spec.over].blobs))
    fwd_keys = [k for k in keys_all if is_data(k)]
    bwd_keys = [k for k in keys_all if is_diff(k)]
    builds = list(spec.builds)
    truth_for = {
        **{k: spec.data_truth for k in fwd_keys},
        **{k: spec.diff_truth for k in bwd_keys},
    }

    # Forward noise first: it sets the band within which a gate flip counts as noise, and the
    # flips then correct the backward noise measurement itself.
    noise, info_pairs = _measure_noise(outputs, fwd_keys, producers, None, builds, truth_for)
    rules = _rules(noise, spec, builds)
    band = gates.Band(lambda blob: rules["spread"](data_key(blob)).allowed)
    flips = FlipAnalysis(netdef, outputs, band, net64, backward_from)
    bwd_noise, bwd_info = _measure_noise(outputs, bwd_keys, producers, flips, builds, truth_for)
    noise.update(bwd_noise)
    info_pairs += bwd_info

    pairs = _judged_pairs(netdef, outputs, plan, producers, flips, rules)
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
        diagnosis=diagnose(netdef, pairs, flip_summary, local, first, prefer=plan.prefer),
        flip_correction=flips.correction,
    )
