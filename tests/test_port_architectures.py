"""Real architectures written from their papers (FCN-8s, HED, a SphereFace-style PReLU face net, an
LRCN captioner), reduced for fast tests, proved against real Caffe's goldens forward and backward.

The definitions live in tests/data/architectures/<name>/ (each says how it is reduced); goldens come
from both BLAS builds of the Caffe root via ``python -m tests.layer_cases <name>``.
"""

from __future__ import annotations

import pytest
import torch

import port
from port.blobkeys import diff_key

from ._helpers import (
    assert_case_passes_parity,
    assert_numpy_reference_matches_golden,
    assert_regenerated_goldens_match,
    case_weights,
)
from .layer_cases import ARCHITECTURES

NAMES = sorted(ARCHITECTURES)


@pytest.mark.parametrize("name", NAMES)
def test_architecture_passes_parity_against_both_caffe_builds(name, tmp_path, capsys):
    netdef, judged = assert_case_passes_parity(ARCHITECTURES[name], tmp_path, capsys)
    # backward was judged too, down to the first learnable layer's top
    assert diff_key(netdef.layers[0].tops[0]) in judged


@pytest.mark.parametrize("name", NAMES)
def test_architecture_numpy_reference_matches_the_goldens(name, tmp_path):
    case = ARCHITECTURES[name]
    netdef, weights = case_weights(case, tmp_path)
    assert_numpy_reference_matches_golden(case, netdef, weights)


def test_fcn8s_crops_align_as_in_the_paper():
    """The reduced trunk keeps VGG16's geometry: the paper's offsets fit, and the score is the
    input's size."""
    net = port.CaffeNet(port.load_prototxt(ARCHITECTURES["fcn8s"].prototxt))
    assert net.blob_shapes["upscore8"][2:] == (88, 88)
    assert net.blob_shapes["score"] == (1, 3, 16, 16)
    assert net.blob_shapes["score_pool4c"] == net.blob_shapes["upscore2"]


@pytest.mark.parametrize("name", NAMES)
def test_port_inspect_lists_the_architecture(name, capsys):
    case = ARCHITECTURES[name]
    assert port.cli.main(["inspect", "--prototxt", str(case.prototxt)]) == 0
    out = capsys.readouterr().out
    for layer in port.load_prototxt(case.prototxt).layers:
        assert layer.name in out


@pytest.mark.parametrize("name", NAMES)
def test_architecture_converts_to_an_artefact_that_runs_the_same(name, tmp_path, capsys):
    case = ARCHITECTURES[name]
    _, weights = case_weights(case, tmp_path)
    out = tmp_path / f"{name}.safetensors"
    assert (
        port.cli.main(
            [
                "convert",
                "--prototxt",
                str(case.prototxt),
                "--caffemodel",
                str(weights),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    x = {k: torch.from_numpy(v) for k, v in case.inputs().items()}
    x = x if len(x) > 1 else next(iter(x.values()))
    want = port.load_caffe(case.prototxt, weights)(x)
    got = port.load(out)(x)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


@pytest.mark.caffe
@pytest.mark.parametrize("name", NAMES)
def test_regenerated_architecture_goldens_match_the_committed_ones(name, tmp_path, monkeypatch):
    assert_regenerated_goldens_match(ARCHITECTURES[name], tmp_path, monkeypatch)
