"""Every layer type beyond the zoo's, proved on small nets against real Caffe's goldens.

Each case of :mod:`tests.layer_cases` is a deploy net in tests/data/layers/<name>/ with goldens made
by real Caffe 1.0 (ATLAS and OpenBLAS builds) from weights ``python -m port seed-weights`` writes;
the test re-seeds them, checks their sha256 against the manifest, and runs the parity harness
(port float32/float64, both goldens, the numpy reference, ONNX) forward and backward.
"""

from __future__ import annotations

import pytest

from ._helpers import (
    assert_case_passes_parity,
    assert_numpy_reference_matches_golden,
    assert_regenerated_goldens_match,
    case_weights,
)
from .layer_cases import CASES

NAMES = sorted(CASES)


@pytest.mark.parametrize("name", NAMES)
def test_layer_net_passes_parity_against_both_caffe_builds(name, tmp_path, capsys):
    assert_case_passes_parity(CASES[name], tmp_path, capsys)


@pytest.mark.parametrize("name", NAMES)
def test_layer_net_inputs_and_numpy_reference_match_the_goldens(name, tmp_path):
    """The committed goldens hold the case's inputs; numpy float64 agrees with Caffe's forward."""
    case = CASES[name]
    netdef, weights = case_weights(case, tmp_path)
    assert_numpy_reference_matches_golden(case, netdef, weights)


@pytest.mark.caffe
@pytest.mark.parametrize("name", NAMES)
def test_regenerated_goldens_match_the_committed_ones(name, tmp_path, monkeypatch):
    """Real Caffe, run again, writes the committed arrays (sha256 per array)."""
    assert_regenerated_goldens_match(CASES[name], tmp_path, monkeypatch)
