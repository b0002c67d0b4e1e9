"""Real Caffe on the layers the zoo models lack: a ResNet-style net checked blob by blob.

The goldens in tests/data/mini_resnet were made by real Caffe 1.0 (ATLAS and OpenBLAS) with
``python -m legacy_caffe goldens --prototxt ... --caffemodel ...`` from weights that
``python -m port seed-weights --weight-seed 3`` writes; the test re-seeds them and checks the sha256 first.
"""

from __future__ import annotations

import json
from pathlib import Path

import port

from ._helpers import parity_run_both_builds, write_seeded_weights

DATA = Path(__file__).parent / "data" / "mini_resnet"


def test_mini_resnet_passes_against_both_caffe_builds(tmp_path, capsys):
    prototxt = DATA / "deploy.prototxt"
    manifest = json.loads((DATA / "goldens" / "manifest.json").read_text())
    weights = tmp_path / "w.caffemodel"
    write_seeded_weights(prototxt, 3, weights)
    assert port.sha256_file(weights) == manifest["weights"]["sha256"]
    goldens = [
        f"{blas}={DATA / 'goldens' / blas / 'a_and_1.npz'}" for blas in ("atlas", "openblas")
    ]
    code = parity_run_both_builds(prototxt, weights, goldens, "fc:3", tmp_path / "r.json")
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is True
    # every layer type of the net was judged, forward and backward
    for blob in ("res2a_branch1", "res2a", "res2b_max", "res2b_prod", "norm", "pool5", "sig"):
        assert f"data/{blob}" in out and f"diff/{blob}" in out
