"""Comparator metrics, results and the tolerance policy, on synthetic arrays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from parity import tolerance
from parity.compare import BlobCheck, PairResult, ParityResult, metrics, ulp_distance


def test_ulp_distance_counts_representable_steps():
    a = np.array([1.0, -1.0, 0.0, 1e-45], np.float32)
    b = np.nextafter(a, np.float32(np.inf))
    assert ulp_distance(a, b).tolist() == [1, 1, 1, 1]
    five = a.copy()
    for _ in range(5):
        five = np.nextafter(five, np.float32(-np.inf))
    assert ulp_distance(a, five).tolist() == [5, 5, 5, 5]
    # +0 and -0 are the same number; the two smallest subnormals of opposite sign are 2 apart.
    assert ulp_distance(np.float32([0.0]), np.float32([-0.0]))[0] == 0
    s = np.float32(1e-45)
    assert ulp_distance(np.array([s]), np.array([-s]))[0] == 2


def test_ulp_distance_of_mixed_precision_counts_in_float32():
    t = np.array([1.0 + 1e-12])  # float64 truth, rounds to 1.0 in float32
    assert ulp_distance(np.float32([1.0]), t)[0] == 0
    assert ulp_distance(np.array([1.0]), t, dtype=np.float64)[0] > 1000


def test_metrics_values():
    b = np.array([[1.0, -4.0], [2.0, 0.5]], np.float32)
    a = b.copy()
    a[1, 0] += np.float32(0.002)
    m = metrics(a, b)
    assert m.max_abs == pytest.approx(0.002, rel=1e-3)
    assert m.max_rel == pytest.approx(0.002 / 4, rel=1e-3)  # relative to the reference's range
    assert m.mean_abs == pytest.approx(0.002 / 4, rel=1e-3)
    assert m.worst_index == [1, 0]
    assert m.frac_equal == 0.75
    assert m.ulp_median == 0 and m.ulp_max > 1000
    assert m.n == 4 and m.n_excused == 0


def test_metrics_excuse_removes_elements_but_keeps_the_range():
    b = np.array([10.0, 1.0, 1.0])
    a = np.array([10.0, 5.0, 1.0 + 1e-9])
    m = metrics(a, b, excuse=np.array([False, True, False]))
    assert m.n_excused == 1
    assert m.max_abs == pytest.approx(1e-9)
    assert m.max_rel == pytest.approx(1e-10)


def test_metrics_zero_reference_and_nan():
    z = np.zeros(3)
    assert metrics(z, z).max_rel == 0.0
    assert math.isinf(metrics(np.array([0, 1e-30, 0]), z).max_rel)
    assert math.isinf(metrics(np.array([np.nan, 0, 0]), np.ones(3)).max_rel)
    with pytest.raises(ValueError):
        metrics(np.zeros(2), np.zeros(3))


def test_tolerance_rules_apply_multiples_floors_and_fallbacks():
    r = tolerance.spread_rule(1e-6)
    assert (
        r.allowed == pytest.approx(tolerance.SPREAD_MULTIPLE * 1e-6)
        and r.noise_source == "measured"
    )
    r0 = tolerance.spread_rule(0.0)  # builds agree bitwise: absolute floor
    assert r0.noise == tolerance.FLOOR_REL32 and r0.noise_source == "floor"
    # Correlated builds: their own error to float64 counts when it exceeds their disagreement.
    rc = tolerance.spread_rule(2.1e-6, 1.16e-5)
    assert rc.noise == 1.16e-5 and rc.allowed == pytest.approx(4 * 1.16e-5)
    assert tolerance.spread_rule(None, 1e-6).noise_source == "measured"
    rf = tolerance.spread_rule(None)
    assert rf.noise == tolerance.FALLBACK_SPREAD_REL and rf.noise_source == "fallback"
    t = tolerance.truth_rule(2e-6)
    assert t.allowed == pytest.approx(tolerance.TRUTH_MULTIPLE * 2e-6)
    assert tolerance.float64_rule().allowed == tolerance.FLOOR_REL64
    # The spec's worst measured port/ATLAS ratio against float64 (1.71) must be inside the multiple,
    # and a 1e-3 relative error (the size of a real semantic bug) far outside it.
    assert tolerance.TRUTH_MULTIPLE > 1.71 and tolerance.SPREAD_MULTIPLE > 2.8
    assert 100 * tolerance.spread_rule(1.9e-6).allowed < 1e-3


def test_blobcheck_and_pair_results():
    rule = tolerance.spread_rule(1e-6)
    good = BlobCheck("data/a", "la", metrics(np.float32([1.0 + 1e-6]), np.float32([1.0])), rule)
    bad = BlobCheck("data/b", "lb", metrics(np.float32([1.001]), np.float32([1.0])), rule)
    info = BlobCheck("data/c", "lc", metrics(np.float32([2.0]), np.float32([1.0])), None)
    assert good and not bad and info
    assert bad.needed_multiple == pytest.approx(1e-3 / 1e-6, rel=1e-3)
    pair = PairResult("port32", "caffe-atlas", "spread", [good, bad, info])
    assert not pair and pair.failures() == [bad] and pair.worst() is bad
    assert PairResult("port32", "x", "spread", [good, info])


def test_parity_result_json_roundtrip_and_truthiness():
    rule = tolerance.spread_rule(None)
    inf_check = BlobCheck("data/x", "l", metrics(np.array([np.nan]), np.array([1.0])), rule)
    ok = PairResult(
        "port32",
        "numpy32",
        "spread",
        [BlobCheck("data/y", "l", metrics(np.ones(2), np.ones(2)), rule)],
    )
    res = ParityResult("m", {}, [ok], {"data/y": {"spread": None, "caffe_own": None}}, {}, [], None,
                       tolerance.policy_json())  # fmt: skip
    assert res
    doc = json.loads(res.dumps())
    assert doc["passed"] is True and doc["pairs"][0]["checks"][0]["rule"]["name"] == "spread"
    res.pairs.append(PairResult("port32", "caffe-atlas", "spread", [inf_check]))
    assert not res
    doc = json.loads(res.dumps())  # inf survives as a string, the document stays valid JSON
    assert doc["passed"] is False and doc["pairs"][1]["checks"][0]["needed_rel"] == "inf"
    res.pairs.pop()
    res.first_departure = "conv1"  # a departing layer fails the run even if blobs passed
    assert not res
