"""Bad input: one exception type naming file, layer, field (and line), and nothing half-written."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import port
from port.caffemodel import read_caffemodel, write_caffemodel
from port.cli import main
from port.netdef import netdef_from_text

from ._helpers import seeded_model


def test_malformed_prototxt_names_line_and_layer(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text(
        'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'
        'layer {\n  name: "conv1"\n  type: "Convolution"\n'
        "  convolution_param { num_outptu: 3 }\n}\n"
    )
    with pytest.raises(port.CaffeError) as err:
        port.load_prototxt(p)
    e = err.value
    assert e.path == str(p) and e.line == 9 and e.layer == "conv1"
    assert "num_outptu" in str(e) and f"{p}:9" in str(e)


def test_unknown_layer_type(tmp_path):
    p = tmp_path / "u.prototxt"
    p.write_text(
        'input: "data" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n'
        'layer { name: "weird" type: "Frobnicate" bottom: "data" top: "x" }\n'
    )
    with pytest.raises(port.CaffeError) as err:
        port.load_caffe(p)
    assert err.value.layer == "weird" and err.value.field == "type" and err.value.line == 2


def test_missing_bottom(tmp_path):
    p = tmp_path / "m.prototxt"
    p.write_text(
        'input: "data" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n'
        'layer { name: "r" type: "ReLU" bottom: "nope" top: "x" }\n'
    )
    with pytest.raises(port.CaffeError, match="nope") as err:
        port.load_caffe(p)
    assert err.value.layer == "r"


def test_truncated_caffemodel(tiny_prototxt, tmp_path):
    _, _, path = seeded_model(tiny_prototxt, tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(port.CaffeError, match="truncated") as err:
        read_caffemodel(cut)
    assert err.value.path == str(cut)


def test_weight_shape_mismatch_names_layer_and_blob(tiny_prototxt, tmp_path):
    netdef, weights, _ = seeded_model(tiny_prototxt, tmp_path)
    weights["fc"][0] = np.zeros((5, 7), np.float32)
    bad = tmp_path / "bad.caffemodel"
    write_caffemodel(bad, netdef, weights)
    with pytest.raises(port.CaffeError) as err:
        port.load_caffe(tiny_prototxt, bad)
    assert err.value.layer == "fc" and err.value.field == "blobs[0]"
    assert "(5, 7)" in str(err.value)


def test_learnable_layer_without_weights(tiny_prototxt, tmp_path):
    netdef, weights, _ = seeded_model(tiny_prototxt, tmp_path)
    del weights["conv1"]
    bad = tmp_path / "missing.caffemodel"
    write_caffemodel(bad, netdef, weights)
    with pytest.raises(port.CaffeError) as err:
        port.load_caffe(tiny_prototxt, bad)
    assert err.value.layer == "conv1" and err.value.field == "blobs"


def test_input_of_wrong_shape(tiny_prototxt, tmp_path):
    _, _, path = seeded_model(tiny_prototxt, tmp_path)
    net = port.load_caffe(tiny_prototxt, path)
    import torch

    with pytest.raises(port.CaffeError, match="input 'data'"):
        net(torch.zeros(1, 4, 13, 11))
    with pytest.raises(port.CaffeError) as err:  # spatial size the fc layer cannot take
        net(torch.zeros(1, 3, 40, 40))
    assert err.value.layer == "fc"


def test_cli_failures_leave_no_output(tiny_prototxt, tmp_path, capsys):
    _, _, path = seeded_model(tiny_prototxt, tmp_path)
    bad = tmp_path / "cut.caffemodel"
    bad.write_bytes(path.read_bytes()[:100])
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 13, 11), np.float32))
    out = tmp_path / "out"
    convert = [
        "convert",
        "--prototxt",
        str(tiny_prototxt),
        "--caffemodel",
        str(bad),
        "--out",
        str(out / "a.safetensors"),
    ]
    assert main(convert) == 2  # with the output folder missing, then present
    out.mkdir()
    assert main(convert) == 2
    np.save(tmp_path / "wrong.npy", np.zeros((1, 5, 13, 11), np.float32))
    dump = [
        "dump",
        "--prototxt",
        str(tiny_prototxt),
        "--caffemodel",
        str(path),
        "--out",
        str(out / "d.npz"),
    ]
    assert main([*dump, "--input", str(tmp_path / "wrong.npy")]) == 2
    assert main([*dump, "--input", str(x), "--backward-from", "fc:99"]) == 2
    assert list(out.iterdir()) == []
    assert "error:" in capsys.readouterr().err


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(
    st.text(
        alphabet=st.sampled_from(list('layer{}:"name typebottomp_0123 \n#input_dim')), max_size=300
    )
)
def test_fuzz_prototxt_parser_only_raises_caffe_error(text):
    try:
        netdef = netdef_from_text(text, path="fuzz.prototxt")
        port.CaffeNet(netdef)
    except port.CaffeError:
        pass


@_FUZZ
@given(st.binary(max_size=400))
def test_fuzz_caffemodel_reader_only_raises_caffe_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "f.caffemodel"
    path.write_bytes(data)
    with contextlib.suppress(port.CaffeError):
        read_caffemodel(path)


@_FUZZ
@given(st.data())
def test_fuzz_corrupted_real_caffemodel(tmp_path_factory, data):
    """Flip bytes of a valid file: the reader must give arrays or a CaffeError, nothing else."""
    folder = tmp_path_factory.mktemp("corrupt")
    proto = folder / "t.prototxt"
    from tests.conftest import TINY_NET

    proto.write_text(TINY_NET)
    netdef = port.load_prototxt(proto)
    good = folder / "good.caffemodel"
    write_caffemodel(good, netdef, port.seed_weights(netdef, 0))
    raw = bytearray(good.read_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    bad = folder / "bad.caffemodel"
    bad.write_bytes(bytes(raw))
    try:
        weights = read_caffemodel(bad)
        port.CaffeNet(netdef).load_blobs(weights, source=bad)
    except port.CaffeError:
        pass
