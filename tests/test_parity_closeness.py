"""The port's distance to float64 against the better Caffe build's (parity.closeness)."""

from __future__ import annotations

import numpy as np
import pytest

from parity.closeness import RATIO_LIMIT, closeness
from parity.compare import BlobCheck, PairResult, metrics

BUILDS = ("caffe-atlas", "caffe-openblas")


def _pairs(truth: dict, port: dict, atlas: dict, openblas: dict) -> list[PairResult]:
    def pair(subject, reference, rule, values):
        checks = [BlobCheck(k, "l", metrics(values[k], truth[k])) for k in values]
        return PairResult(subject, reference, rule, checks)

    return [
        pair("port32", "port64", "truth", port),
        pair("caffe-atlas", "port64", "info", atlas),
        pair("caffe-openblas", "port64", "info", openblas),
        # A pair against another runner must not be mistaken for the truth comparison.
        pair("caffe-atlas", "caffe-openblas", "info", atlas),
    ]


def _noisy(truth: np.ndarray, rel: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rel * np.abs(truth).max()
    return (truth + rng.uniform(-scale, scale, truth.shape)).astype(np.float32)


@pytest.fixture()
def truth() -> dict:
    rng = np.random.default_rng(0)
    return {f"diff/b{i}": rng.normal(size=(2, 50)) for i in range(10)}


def test_exact_port_is_closer_everywhere(truth: dict) -> None:
    port = {k: v.astype(np.float32) for k, v in truth.items()}
    atlas = {k: _noisy(v, 1e-5, 1) for k, v in truth.items()}
    result = closeness(_pairs(truth, port, atlas, atlas), BUILDS)
    assert len(result.blobs) == 10 and result.n_closer == 10 and result.met
    assert "closer to float64 than Caffe on 10 of 10 blobs" in result.summary()


def test_the_better_build_is_the_bar(truth: dict) -> None:
    # The port sits between the two builds on every blob: closer than ATLAS, not than OpenBLAS.
    port = {k: _noisy(v, 2e-5, 2) for k, v in truth.items()}
    atlas = {k: _noisy(v, 1e-4, 3) for k, v in truth.items()}
    openblas = {k: _noisy(v, 4e-6, 4) for k, v in truth.items()}
    result = closeness(_pairs(truth, port, atlas, openblas), BUILDS)
    assert {b.caffe_build for b in result.blobs} == {"caffe-openblas"}
    assert result.n_closer == 0 and not result.met
    worst = result.worst
    assert worst is not None and worst.ratio > RATIO_LIMIT
    assert "GOAL NOT MET" in result.summary()


def test_one_blob_over_the_limit_fails_even_at_ninety_percent(truth: dict) -> None:
    keys = sorted(truth)
    caffe = {k: _noisy(v, 1e-5, 5) for k, v in truth.items()}
    port = {k: _noisy(v, 1e-6, 6) for k, v in truth.items()}
    port[keys[0]] = _noisy(truth[keys[0]], 1e-4, 7)  # ~10x the builds' distance
    result = closeness(_pairs(truth, port, caffe, caffe), BUILDS)
    assert result.n_closer == 9 and result.share >= 0.9
    assert not result.met and result.worst.key == keys[0]
    # 1.4x on that blob instead: within the limit, 9 of 10 closer, the goal holds.
    port[keys[0]] = (truth[keys[0]] + 1.4 * (caffe[keys[0]] - truth[keys[0]])).astype(np.float32)
    assert closeness(_pairs(truth, port, caffe, caffe), BUILDS).met


def test_rounding_residues_below_resolution_count_as_met() -> None:
    truth = {"data/x": np.linspace(-3.0, 3.0, 101)}
    # The float32 rounding of the truth: the port's only error, a fraction of one ulp of the range.
    port = {"data/x": truth["data/x"].astype(np.float32)}
    caffe = {"data/x": truth["data/x"].astype(np.float32)}
    caffe["data/x"][50] = np.float32(truth["data/x"][50])  # exact there; still rounding elsewhere
    (row,) = closeness(_pairs(truth, port, caffe, caffe), BUILDS).blobs
    assert row.below_resolution and row.closer and row.ratio == 0.0
    assert row.resolution == pytest.approx(np.spacing(np.float32(3.0)) / 3.0)


def test_blobs_without_a_caffe_counterpart_are_left_out(truth: dict) -> None:
    port = {k: v.astype(np.float32) for k, v in truth.items()}
    atlas = {k: _noisy(v, 1e-5, 8) for k, v in list(truth.items())[:4]}
    result = closeness(_pairs(truth, port, atlas, atlas), BUILDS)
    assert len(result.blobs) == 4
    assert result.to_json()["n_blobs"] == 4


def test_caffenet_gradients_are_as_close_to_float64_as_caffe() -> None:
    # The committed CaffeNet goldens (batch 1): before the fully connected layers summed in
    # blocks, every non-trivial diff was 1.0-1.9x farther from float64 than the better build
    # (fc6's GEMV backward; parity.closeness's table in the README). The forward is not held to
    # the goal here yet: conv1 (oneDNN) is 2.2x OpenBLAS's distance.
    from parity.run import resolve, run_parity
    from parity.runners import is_caffe

    result, _ = run_parity(resolve(model="caffenet"))
    cl = closeness(result.pairs, [n for n in result.runners if is_caffe(n)])
    diffs = [b for b in cl.blobs if b.key.startswith("diff/")]
    assert len(diffs) == 15
    assert all(b.within_limit for b in diffs), [(b.key, b.ratio) for b in diffs]
    assert sum(b.closer for b in diffs) >= 0.9 * len(diffs)
