"""Steps several test modules share: seeded weights, a parity run against both Caffe builds, the
checks every golden-backed case makes, and the tiny octave schedule of the mfv tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import port
from parity import numpy_ref
from parity.__main__ import main as parity_main
from port.blobkeys import data_key
from port.caffemodel import write_caffemodel

# Two octaves of two steps: every code path of the loop (zoom, jitter) in ~1 s per unit on CaffeNet.
TINY_SCHEDULE = {
    "name": "tiny",
    "octaves": [
        {
            "iter_n": 2,
            "zoom": None,
            "margin": 0,
            "window": 0.3,
            "step_size": [1.0, 2.0],
            "tv_weight": [0.4, 0.8],
        },
        {
            "iter_n": 2,
            "zoom": 1.2,
            "margin": 0,
            "window": 0.3,
            "step_size": [1.0, 1.0],
            "tv_weight": [0.5, 2.0],
        },
    ],
}


def write_seeded_weights(prototxt: Path, seed: int, path: Path) -> port.NetDef:
    """Write ``port seed-weights``' weights for ``prototxt`` to ``path``; the parsed definition."""
    netdef = port.load_prototxt(prototxt)
    write_caffemodel(path, netdef, port.seed_weights(netdef, seed))
    return netdef


def seeded_model(prototxt: Path, tmp_path: Path) -> tuple[port.NetDef, dict, Path]:
    """``prototxt`` with weights of seed 0, written to ``tmp_path / "tiny.caffemodel"``: the
    definition, the weights and their path."""
    netdef = port.load_prototxt(prototxt)
    weights = port.seed_weights(netdef, 0)
    path = tmp_path / "tiny.caffemodel"
    write_caffemodel(path, netdef, weights)
    return netdef, weights, path


def case_weights(case, tmp_path: Path) -> tuple[port.NetDef, Path]:
    """A layer case's seeded weights, written to ``tmp_path``; its definition and their path."""
    path = tmp_path / "w.caffemodel"
    return write_seeded_weights(case.prototxt, case.seed, path), path


def parity_run_both_builds(
    prototxt: Path, weights: Path, goldens: list[str], backward: str, report: Path
) -> int:
    """``parity run`` of a net against two ``BLAS=FILE`` goldens, backward from ``backward``,
    no verdict, the JSON report to ``report``; its exit code."""
    return parity_main(
        [
            "run",
            "--prototxt",
            str(prototxt),
            "--caffemodel",
            str(weights),
            "--golden",
            goldens[0],
            "--golden",
            goldens[1],
            "--backward-from",
            backward,
            "--no-verdict",
            "--json",
            str(report),
        ]
    )


def assert_case_passes_parity(case, tmp_path: Path, capsys) -> tuple[port.NetDef, set[str]]:
    """A layer case passes ``parity run`` against both Caffe builds, every top's data judged; its
    definition and the keys judged.

    The goldens must have been made from this very definition and these seeded weights (their
    manifest's sha256)."""
    manifest = json.loads((case.goldens / "manifest.json").read_text())
    assert port.sha256_file(case.prototxt) == manifest["prototxt_sha256"], "regenerate the goldens"
    netdef, weights = case_weights(case, tmp_path)
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
            assert data_key(top) in judged, top
    return netdef, judged


def assert_numpy_reference_matches_golden(case, netdef: port.NetDef, weights: Path) -> None:
    """The OpenBLAS golden of a layer case holds its inputs, and numpy float64 agrees with its
    forward (relative to each blob's largest value)."""
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


def assert_regenerated_goldens_match(case, tmp_path: Path, monkeypatch) -> None:
    """Real Caffe, run again on a layer case, writes the committed arrays (sha256 per array)."""
    from legacy_caffe.manifest import load_npz, verify_arrays

    from . import layer_cases

    committed = json.loads((case.goldens / "manifest.json").read_text())
    monkeypatch.setattr(layer_cases.LayerCase, "goldens", property(lambda self: tmp_path / "g"))
    layer_cases.generate(case)
    for key, entry in committed["sets"].items():
        fresh = load_npz(tmp_path / "g" / entry["file"])
        assert not verify_arrays(fresh, entry["arrays"]), key
