"""MFV on an exported module (``mfv visualize --module FILE.py:Class --weights W``) gives the
pixels MFV gives on the port, for the same seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import port
from mfv.cli import main as mfv_main
from mfv.exported import load_exported
from mfv.models import load_model
from mfv.objectives import unit
from mfv.octaves import parse_schedule
from mfv.testing import torch_threads
from mfv.visualize import visualize
from port.export import export_net
from port.verdict import ParityError

from .layer_cases import ARCHITECTURES

PROTOTXT = ARCHITECTURES["sphereface"].prototxt
SEED = 2


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture
def exported(tmp_path):
    netdef = port.load_prototxt(PROTOTXT)
    net = port.CaffeNet(netdef)
    net.load_blobs(port.seed_weights(netdef, SEED))
    out = tmp_path / "art" / "face.py"
    out.parent.mkdir()
    record = export_net(net.eval(), "python", out, prototxt=PROTOTXT, seed=SEED)
    return out, record["class"]


def _schedule():
    keys = ("iter_n", "zoom", "margin", "window", "step_size", "tv_weight")
    octaves = [(2, None, 0, 0.3, [1.0, 2.0], [0.4, 0.4]), (2, 1.2, 0, 0.3, [1.0, 1.0], [0.01, 2])]
    return parse_schedule(
        {"name": "t", "octaves": [dict(zip(keys, o, strict=True)) for o in octaves]}
    )


@pytest.mark.parametrize("faithful", [True, False])
def test_visualize_on_the_exported_module_gives_the_ports_pixels(exported, tmp_path, faithful):
    path, cls = exported
    init = np.random.default_rng(0).integers(40, 215, (24, 20, 3)).astype(np.uint8)
    runs = {}
    for label, model in (
        ("port", load_model("caffe", prototxt=PROTOTXT, weight_seed=SEED, parity_check=False)),
        (
            "exported",
            load_exported(f"{path}:{cls}", path.with_suffix(".safetensors"), parity_check=False),
        ),
    ):
        out = tmp_path / label
        trace = visualize(
            model, unit("fc5", 7), [init], schedule=_schedule(), seed=1, faithful=faithful,
            out=out, progress=False,
        )  # fmt: skip
        assert trace["facets"][0]["status"] == "done"
        runs[label] = (np.asarray(Image.open(out / "facet_0.png")), trace)
    assert np.array_equal(runs["port"][0], runs["exported"][0])
    acts = [[s["activation"] for s in runs[k][1]["facets"][0]["steps"]] for k in runs]
    assert acts[0] == acts[1]


def test_mfv_layers_lists_the_exported_modules_blobs(exported, capsys):
    path, cls = exported
    code = mfv_main(
        ["layers", "--model", "caffe", "--module", f"{path}:{cls}",
         "--weights", str(path.with_suffix(".safetensors")), "--no-parity-check"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "conv1_1\t" in out and "fc5\t16\n" in out


def test_a_module_exported_without_a_passing_verdict_is_refused(exported, capsys):
    """Seeded weights with no parity run behind them: the record says so, and mfv refuses."""
    path, cls = exported
    weights = str(path.with_suffix(".safetensors"))
    record = json.loads(Path(str(path) + ".export.json").read_text())
    assert record["parity"]["verdict"] == "none"
    code = mfv_main(
        ["layers", "--model", "caffe", "--module", f"{path}:{cls}", "--weights", weights]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no passing parity verdict" in err and "--no-parity-check" in err
    with pytest.raises(ParityError, match=path.name):
        load_exported(f"{path}:{cls}", weights)


def test_a_module_exported_from_verified_files_runs(exported):
    path, cls = exported
    record_path = Path(str(path) + ".export.json")
    record = json.loads(record_path.read_text())
    record["parity"] = {"verdict": "pass", "file": "x.parity.json", "summary": "PASS"}
    record_path.write_text(json.dumps(record))
    model = load_exported(f"{path}:{cls}", path.with_suffix(".safetensors"))
    assert model.info["parity"]["verdict"] == "pass"


def test_a_wrong_module_spec_is_a_usage_error(exported, capsys):
    path, _ = exported
    code = mfv_main(["layers", "--model", "caffe", "--module", f"{path}:Nope", "--weights", "x"])
    assert code == 2
    assert "Nope" in capsys.readouterr().err
