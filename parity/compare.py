"""Comparators and results: error metrics of one blob pair, and the result objects of a run.

Data model (after Polygraphy's comparator): runners produce named blobs; a :class:`PairResult` holds
one :class:`BlobCheck` per blob for one (subject, reference) pair; a :class:`ParityResult` holds every
pair of a run. Results evaluate truthy only when everything passed, serialise to JSON
(``parity/SCHEMA.md``), and every check records the smallest tolerance that would have passed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .tolerance import Rule

__all__ = ["Metrics", "metrics", "ulp_distance", "BlobCheck", "PairResult", "ParityResult"]


def _ordered_int(x: np.ndarray) -> np.ndarray:
    """Map floats to integers that are monotone in value and adjacent for adjacent floats."""
    if x.dtype == np.float32:
        i = x.view(np.int32).astype(np.int64)
        return np.where(i < 0, np.int64(-(2**31)) - i, i)
    i = x.view(np.int64)
    # Use object-free arithmetic: negatives mirror around zero; float64 ULPs fit in int64 as long
    # as we subtract instead of adding the sign bit.
    return np.where(i < 0, np.int64(-(2**63)) - i, i)


def ulp_distance(
    a: np.ndarray, b: np.ndarray, *, dtype: np.dtype | type | None = None
) -> np.ndarray:
    """Element-wise distance in units in the last place.

    Parameters
    ----------
    a, b : ndarray
        Same shape.
    dtype : float32 or float64, optional
        Precision in which to count; default: the lower precision of the two inputs (a float32
        result compared to float64 truth is counted in float32 ulps, after rounding the truth).

    Returns
    -------
    ndarray of float64
        ``|ord(a) - ord(b)|`` where ``ord`` maps floats to consecutive integers (so 0.0 and -0.0
        are 0 apart, and the smallest positive and negative subnormals 2 apart).
    """
    if dtype is None:
        dtype = np.float32 if np.float32 in (a.dtype, b.dtype) else np.float64
    dt = np.dtype(dtype)
    ia = _ordered_int(np.ascontiguousarray(a, dtype=dt))
    ib = _ordered_int(np.ascontiguousarray(b, dtype=dt))
    # float64 differences can exceed int64 near opposite extremes; go through float to stay safe.
    return np.abs(ia.astype(np.float64) - ib.astype(np.float64))


@dataclass
class Metrics:
    """Error of a subject array against a reference array (over the elements not excused).

    Attributes
    ----------
    max_abs : float
        ``max |a - b|``.
    max_rel : float
        ``max |a - b| / max |b|`` (the reference's range; the unit of every tolerance). When the
        reference is all zeros: 0 if ``a`` is too, else inf.
    mean_abs : float
    ulp_median, ulp_p99, ulp_max : float
        ULP distances (:func:`ulp_distance`).
    frac_equal : float
        Fraction of compared elements that are bitwise equal after rounding to the lower precision.
    ref_range : float
        ``max |b|`` over the whole blob.
    worst_index : list of int
        Index of the largest absolute error (in the blob's shape), or [] when nothing is compared.
    n : int
        Elements in the blob.
    n_excused : int
        Elements left out of the comparison (gate flips and what they reach, when no float64
        net is available to correct for them).
    n_corrected : int
        Elements whose subject value was corrected for gate flips before comparing (the
        flips' reach); they are compared like every other element.
    flip_effect : float
        Largest correction relative to the reference's range: how much the flips moved the blob.
    n_over : int
        Elements whose error exceeds the allowed one (counted only for a failing check).
    """

    max_abs: float
    max_rel: float
    mean_abs: float
    ulp_median: float
    ulp_p99: float
    ulp_max: float
    frac_equal: float
    ref_range: float
    worst_index: list[int]
    n: int
    n_excused: int = 0
    n_corrected: int = 0
    flip_effect: float = 0.0
    n_over: int = 0

    def to_json(self) -> dict:
        return {k: _finite(v) for k, v in asdict(self).items()}


def _finite(v: Any) -> Any:
    # JSON has no inf/nan; keep them as strings so the document stays valid.
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _finite_tree(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _finite_tree(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite_tree(x) for x in v]
    return _finite(v)


def metrics(a: np.ndarray, b: np.ndarray, *, excuse: np.ndarray | None = None) -> Metrics:
    """Compare a subject ``a`` to a reference ``b``.

    Parameters
    ----------
    a, b : ndarray
        Same shape; any float dtypes.
    excuse : ndarray of bool, optional
        Same shape; True elements are left out (but still count in the reference's range).

    Returns
    -------
    Metrics
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    ref_range = float(np.max(np.abs(b))) if b.size else 0.0
    keep = np.ones(a.shape, bool) if excuse is None else ~np.asarray(excuse, bool)
    n_exc = int(a.size - keep.sum())
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    diff = np.abs(a64 - b64)
    diff = np.where(keep, diff, 0.0)
    if not keep.any():
        return Metrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, ref_range, [], int(a.size), n_exc)
    # nan anywhere compared is a total failure, not a silently skipped element.
    if np.isnan(a64[keep]).any() or np.isnan(b64[keep]).any():
        return Metrics(
            math.inf,
            math.inf,
            math.inf,
            math.inf,
            math.inf,
            math.inf,
            0.0,
            ref_range,
            [],
            int(a.size),
            n_exc,
        )
    flat = int(np.argmax(diff))
    max_abs = float(diff.reshape(-1)[flat])
    # An all-zero reference (e.g. diffs beyond the backward start) must be matched exactly.
    max_rel = max_abs / ref_range if ref_range > 0 else (0.0 if max_abs == 0 else math.inf)
    ulp = ulp_distance(a, b)[keep]
    return Metrics(
        max_abs=max_abs,
        max_rel=max_rel,
        mean_abs=float(diff[keep].mean()),
        ulp_median=float(np.median(ulp)),
        ulp_p99=float(np.percentile(ulp, 99)),
        ulp_max=float(ulp.max()),
        frac_equal=float((ulp == 0).mean()),
        ref_range=ref_range,
        worst_index=[int(i) for i in np.unravel_index(flat, a.shape)],
        n=int(a.size),
        n_excused=n_exc,
    )


@dataclass
class BlobCheck:
    """The verdict on one blob of one pair.

    Attributes
    ----------
    key : str
        ``"data/<blob>"`` or ``"diff/<blob>"``.
    layer : str
        The layer that produced the blob (its first writer), "" for net inputs.
    metrics : Metrics
    rule : Rule or None
        The tolerance applied; None for an informational comparison (never fails).
    flips : int
        In-band gate flips between the two sides (:mod:`parity.gates`) behind any corrected or
        excused elements of a diff.
    """

    key: str
    layer: str
    metrics: Metrics
    rule: Rule | None = None
    flips: int = 0

    @property
    def passed(self) -> bool:
        return self.rule is None or self.metrics.max_rel <= self.rule.allowed

    @property
    def needed_multiple(self) -> float | None:
        """The smallest multiple of the rule's noise that would have passed (``max_rel / noise``)."""
        if self.rule is None:
            return None
        return self.metrics.max_rel / self.rule.noise if self.rule.noise > 0 else math.inf

    def __bool__(self) -> bool:
        return self.passed

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "layer": self.layer,
            "passed": self.passed,
            "metrics": self.metrics.to_json(),
            "rule": None if self.rule is None else self.rule.to_json(),
            "needed_rel": _finite(self.metrics.max_rel),
            "needed_multiple": _finite(self.needed_multiple),
            "flips": self.flips,
        }


@dataclass
class PairResult:
    """Every blob check of one (subject, reference) pair.

    Attributes
    ----------
    subject, reference : str
        Runner names (e.g. ``"port32"``, ``"caffe-atlas"``).
    rule : str
        Which tolerance rule this pair is judged by ("spread", "truth", "float64", or "info").
    checks : list of BlobCheck
    column, legend : str
        Where the report shows a judged pair (its column, and that column's legend in the chart);
        from the plan's :class:`parity.plan.Comparison`, not serialised.
    """

    subject: str
    reference: str
    rule: str
    checks: list[BlobCheck] = field(default_factory=list)
    column: str = field(default="", compare=False)
    legend: str = field(default="", compare=False)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def failures(self) -> list[BlobCheck]:
        return [c for c in self.checks if not c.passed]

    def worst(self) -> BlobCheck | None:
        """The check with the largest ratio of error to its noise (or to its range if informational)."""
        judged = [c for c in self.checks if c.rule is not None]
        pool = judged or self.checks
        if not pool:
            return None
        return max(pool, key=lambda c: c.needed_multiple if c.rule else c.metrics.max_rel)

    def to_json(self) -> dict:
        w = self.worst()
        return {
            "subject": self.subject,
            "reference": self.reference,
            "rule": self.rule,
            "passed": self.passed,
            "worst": None if w is None else w.key,
            "worst_needed_multiple": None if w is None else _finite(w.needed_multiple),
            "checks": [c.to_json() for c in self.checks],
        }


@dataclass
class ParityResult:
    """A whole parity run: all pairs, the noise measured, gate flips, local analysis, diagnosis.

    Evaluates truthy only when every judged check of every pair passed and no layer departs when
    run alone.
    """

    model: str
    runners: dict[str, dict]
    pairs: list[PairResult]
    noise: dict[str, dict[str, float | None]]  # blob key -> {"spread": .., "caffe_own": ..}
    flips: dict[str, list[dict]]  # "a|b" -> per kinked layer gate-flip summary
    local: list[dict]
    first_departure: str | None
    policy: dict
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    backward_from: str | None = None
    input_source: str = ""
    # The cause of the verdict (parity.diagnosis.diagnose).
    diagnosis: dict = field(default_factory=dict)
    # The port's distance to float64 against the better Caffe build's (parity.closeness.Closeness):
    # the configuration held to the goal, and the others (for information).
    closeness: Any = None
    closeness_info: list = field(default_factory=list)
    # Configuration name -> {"subject", "passed", "closeness_goal", "closeness_met"} (parity.plan.Configuration).
    configurations: dict[str, dict] = field(default_factory=dict)
    # (subject, reference, blob) -> what gate flips moved that diff by, or None; not serialised.
    flip_correction: Any = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return (
            all(p.passed for p in self.pairs)
            and self.first_departure is None
            and all(c["passed"] for c in self.configurations.values())
        )

    def __bool__(self) -> bool:
        return self.passed

    def to_json(self) -> dict:
        return {
            "schema": "caffe-mfv/parity/1",
            "model": self.model,
            "passed": self.passed,
            "backward_from": self.backward_from,
            "input": self.input_source,
            "policy": self.policy,
            "runners": self.runners,
            "noise": _finite_tree(self.noise),
            "flips": _finite_tree(self.flips),
            "first_departure": self.first_departure,
            "diagnosis": _finite_tree(self.diagnosis),
            "local": _finite_tree(self.local),
            "closeness": None if self.closeness is None else _finite_tree(self.closeness.to_json()),
            "closeness_info": [_finite_tree(c.to_json()) for c in self.closeness_info],
            "configurations": self.configurations,
            "pairs": [p.to_json() for p in self.pairs],
            "timings": self.timings,
            "notes": self.notes,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, allow_nan=False)
