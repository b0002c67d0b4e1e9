"""Every layer type beyond the zoo's, proved on small nets against real Caffe's goldens.

Each case of :mod:`tests.layer_cases` is a deploy net in tests/data/layers/<name>/ with goldens made
by real Caffe 1.0 (ATLAS and OpenBLAS builds) from weights ``python -m port seed-weights`` writes;
the test re-seeds them, checks their sha256 against the manifest, and runs the parity harness
(port float32/float64, both goldens, the numpy reference, ONNX) forward and backward.
"""

from __future__ import annotations

import json

import pytest

import port

from ._helpers import (
    assert_numpy_reference_matches_golden,
    assert_regenerated_goldens_match,
    parity_run_both_builds,
    write_seeded_weights,
)
from .layer_cases import CASES

NAMES = sorted(CASES)


def _weights(case, tmp_path):
    path = tmp_path / "w.caffemodel"
    return write_seeded_weights(case.prototxt, case.seed, path), path


@pytest.mark.parametrize("name", NAMES)
def test_layer_net_passes_parity_against_both_caffe_builds(name, tmp_path, capsys):
    case = CASES[name]
    manifest = json.loads((case.goldens / "manifest.json").read_text())
    # the goldens were made from this very definition and these seeded weights
    assert port.sha256_file(case.prototxt) == manifest["prototxt_sha256"], "regenerate the goldens"
    netdef, weights = _weights(case, tmp_path)
    assert port.sha256_file(weights) == manifest["weights"]["sha256"]
    goldens = [f"{b}={case.golden(b)}" for b in ("atlas", "openblas")]
    code = parity_run_both_builds(
        case.prototxt, weights, goldens, case.backward, tmp_path / "r.json"
    )
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is True
    # Every layer type of the net was judged: each top's data (and, above the start, its diff).
    judged = {c["key"] for p in report["pairs"] for c in p["checks"]}
    for layer in netdef.layers:
        for top in layer.tops:
            assert f"data/{top}" in judged, top


@pytest.mark.parametrize("name", NAMES)
def test_layer_net_inputs_and_numpy_reference_match_the_goldens(name, tmp_path):
    """The committed goldens hold the case's inputs; numpy float64 agrees with Caffe's forward."""
    case = CASES[name]
    netdef, weights = _weights(case, tmp_path)
    assert_numpy_reference_matches_golden(case, netdef, weights)


@pytest.mark.caffe
@pytest.mark.parametrize("name", NAMES)
def test_regenerated_goldens_match_the_committed_ones(name, tmp_path, monkeypatch):
    """Real Caffe, run again, writes the committed arrays (sha256 per array)."""
    assert_regenerated_goldens_match(CASES[name], tmp_path, monkeypatch)
