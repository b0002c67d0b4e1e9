"""Every layer type beyond the zoo's, proved on small nets against real Caffe's goldens.

Each case of :mod:`tests.layer_cases` is a deploy net in tests/data/layers/<name>/ with goldens made
by real Caffe 1.0 (ATLAS and OpenBLAS builds) from weights ``python -m port seed-weights`` writes;
the test re-seeds them, checks their sha256 against the manifest, and runs the parity harness
(port float32/float64, both goldens, the numpy reference, ONNX) forward and backward.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import port
from parity import numpy_ref
from parity.__main__ import main
from port.caffemodel import write_caffemodel

from .layer_cases import CASES

NAMES = sorted(CASES)


def _weights(case, tmp_path):
    netdef = port.load_prototxt(case.prototxt)
    path = tmp_path / "w.caffemodel"
    write_caffemodel(path, netdef, port.seed_weights(netdef, case.seed))
    return netdef, path


@pytest.mark.parametrize("name", NAMES)
def test_layer_net_passes_parity_against_both_caffe_builds(name, tmp_path, capsys):
    case = CASES[name]
    manifest = json.loads((case.goldens / "manifest.json").read_text())
    # the goldens were made from this very definition and these seeded weights
    assert port.sha256_file(case.prototxt) == manifest["prototxt_sha256"], "regenerate the goldens"
    netdef, weights = _weights(case, tmp_path)
    assert port.sha256_file(weights) == manifest["weights"]["sha256"]
    goldens = [f"{b}={case.golden(b)}" for b in ("atlas", "openblas")]
    code = main(
        [
            "run",
            "--prototxt",
            str(case.prototxt),
            "--caffemodel",
            str(weights),
            "--golden",
            goldens[0],
            "--golden",
            goldens[1],
            "--backward-from",
            case.backward,
            "--no-verdict",
            "--json",
            str(tmp_path / "r.json"),
        ]
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
    with np.load(case.golden("openblas")) as z:
        golden = {k: z[k] for k in z.files}
    inputs = case.inputs()
    for k, v in inputs.items():
        np.testing.assert_array_equal(golden[f"input/{k}"], v)
    ref = numpy_ref.forward_net(netdef, port.read_caffemodel(weights), inputs, dtype=np.float64)
    for key, value in ref.items():
        want = golden[key]
        scale = max(float(np.abs(want).max()), 1e-6)
        assert value.shape == want.shape, key
        assert float(np.abs(value - want).max()) / scale < 1e-4, key


@pytest.mark.caffe
@pytest.mark.parametrize("name", NAMES)
def test_regenerated_goldens_match_the_committed_ones(name, tmp_path, monkeypatch):
    """Real Caffe, run again, writes the committed arrays (sha256 per array)."""
    from legacy_caffe.manifest import load_npz, verify_arrays

    from . import layer_cases

    case = CASES[name]
    committed = json.loads((case.goldens / "manifest.json").read_text())
    monkeypatch.setattr(layer_cases.LayerCase, "goldens", property(lambda self: tmp_path / "g"))
    layer_cases.generate(case)
    for key, entry in committed["sets"].items():
        fresh = load_npz(tmp_path / "g" / entry["file"])
        assert not verify_arrays(fresh, entry["arrays"]), key
