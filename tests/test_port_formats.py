"""Definitions and weights in both Caffe formats, and every built-in model converting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import port
from port.caffemodel import read_caffemodel, write_caffemodel
from port.netdef import V2_TO_V1_TYPES
from port.zoo import MODELS, zoo_model


@pytest.mark.parametrize("name", list(MODELS))
def test_every_builtin_definition_converts(name, shared):
    netdef = port.load_prototxt(zoo_model(name).prototxt)
    net = port.CaffeNet(netdef)
    net.load_blobs(port.seed_weights(netdef, 0))
    shape = list(netdef.inputs.values())[0]
    with torch.no_grad():
        out = net(torch.zeros(1, *shape[1:]), blobs=[zoo_model(name).classifier])
    assert out[zoo_model(name).classifier].shape[:2] == (1, 1000)
    prob = out["prob"].reshape(1, -1)
    assert torch.allclose(prob.sum(), torch.tensor(1.0), atol=1e-5)


def _as_v1_text(netdef: port.NetDef) -> str:
    """Re-write a definition in the legacy V1 text format, independently of the port's writer."""
    lines = [f'name: "{netdef.name}"']
    for name, shape in netdef.inputs.items():
        lines.append(f'input: "{name}"')
        lines.extend(f"input_dim: {d}" for d in shape)
    for layer in netdef.layers:
        body = [f'name: "{layer.name}"', f"type: {V2_TO_V1_TYPES[layer.type]}"]
        body += [f'bottom: "{b}"' for b in layer.bottoms] + [f'top: "{t}"' for t in layer.tops]
        for field, value in layer.param.ListFields():
            if field.name.endswith("_param"):
                from google.protobuf import text_format

                body.append(
                    f"{field.name} {{ {text_format.MessageToString(value, as_one_line=True)} }}"
                )
        lines.append("layers { " + " ".join(body) + " }")
    return "\n".join(lines)


def test_v1_and_current_encodings_give_identical_modules(shared, tmp_path):
    v2_path = zoo_model("caffenet").prototxt
    v2 = port.load_prototxt(v2_path)
    v1_path = tmp_path / "caffenet_v1.prototxt"
    v1_path.write_text(_as_v1_text(v2))
    v1 = port.load_prototxt(v1_path)
    assert v1.legacy_v1 and not v2.legacy_v1
    assert [(layer.name, layer.type, layer.bottoms, layer.tops) for layer in v1.layers] == [
        (layer.name, layer.type, layer.bottoms, layer.tops) for layer in v2.layers
    ]
    assert [str(a.param) for a in v1.layers] == [str(b.param) for b in v2.layers]

    weights = port.seed_weights(v2, 3)
    write_caffemodel(tmp_path / "w2.caffemodel", v2, weights, format="v2")
    write_caffemodel(tmp_path / "w1.caffemodel", v1, weights, format="v1")
    r1, r2 = (
        read_caffemodel(tmp_path / "w1.caffemodel"),
        read_caffemodel(tmp_path / "w2.caffemodel"),
    )
    assert r1.keys() == r2.keys() == weights.keys()
    net1 = port.load_caffe(v1_path, tmp_path / "w1.caffemodel")
    net2 = port.load_caffe(v2_path, tmp_path / "w2.caffemodel")
    sd1, sd2 = net1.state_dict(), net2.state_dict()
    assert sd1.keys() == sd2.keys()
    for key in sd1:
        assert torch.equal(sd1[key], sd2[key]), key
    x = torch.randn(1, 3, 227, 227, generator=torch.Generator().manual_seed(0)) * 50
    with torch.no_grad():
        assert torch.equal(net1(x)["prob"], net2(x)["prob"])


def test_caffemodel_roundtrip_is_exact_and_matches_protobuf(tiny_prototxt, tmp_path):
    netdef = port.load_prototxt(tiny_prototxt)
    weights = port.seed_weights(netdef, 1)
    path = tmp_path / "tiny.caffemodel"
    write_caffemodel(path, netdef, weights)
    back = read_caffemodel(path)
    for name, blobs in weights.items():
        for a, b in zip(blobs, back[name], strict=True):
            assert a.shape == b.shape and np.array_equal(a, b)
    # The protobuf runtime (an independent reader) sees the same file.
    msg = port.schema.NetParameter()
    msg.ParseFromString(path.read_bytes())
    conv = next(layer for layer in msg.layer if layer.name == "conv1")
    assert list(conv.blobs[0].shape.dim) == list(weights["conv1"][0].shape)
    np.testing.assert_array_equal(
        np.array(conv.blobs[0].data, np.float32), weights["conv1"][0].ravel()
    )


def test_reader_handles_legacy_dims_unpacked_and_double_data(tmp_path):
    """Blob encodings that old writers produced, built with the protobuf runtime."""
    msg = port.schema.NetParameter(name="legacy")
    layer = msg.layers.add(name="fc", type=port.schema.V1LayerParameter.INNER_PRODUCT)
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    blob = layer.blobs.add(num=1, channels=1, height=2, width=3)
    blob.data.extend(w.ravel().tolist())
    bias = layer.blobs.add(num=1, channels=1, height=1, width=2)
    bias.double_data.extend([0.5, -1.5])
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(msg.SerializeToString())
    back = read_caffemodel(path)
    np.testing.assert_array_equal(back["fc"][0], w.reshape(1, 1, 2, 3))
    np.testing.assert_array_equal(back["fc"][1], np.array([[[[0.5, -1.5]]]], np.float32))


def test_three_input_styles_agree(tmp_path):
    body = 'layer { name: "r" type: "ReLU" bottom: "data" top: "out" }'
    styles = [
        'input: "data" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4',
        'input: "data" input_shape { dim: 1 dim: 2 dim: 3 dim: 4 }',
        'layer { name: "data" type: "Input" top: "data" '
        "input_param { shape { dim: 1 dim: 2 dim: 3 dim: 4 } } }",
    ]
    for i, head in enumerate(styles):
        p = tmp_path / f"s{i}.prototxt"
        p.write_text(head + "\n" + body)
        netdef = port.load_prototxt(p)
        assert netdef.inputs == {"data": (1, 2, 3, 4)}
        assert [layer.name for layer in netdef.layers] == ["r"]


def test_test_phase_rules_select_layers(tmp_path):
    p = tmp_path / "phase.prototxt"
    p.write_text(
        'input: "data" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n'
        'layer { name: "a" type: "ReLU" bottom: "data" top: "a" include { phase: TEST } }\n'
        'layer { name: "b" type: "ReLU" bottom: "data" top: "b" include { phase: TRAIN } }\n'
        'layer { name: "c" type: "ReLU" bottom: "data" top: "c" exclude { phase: TRAIN } }\n'
    )
    assert [layer.name for layer in port.load_prototxt(p).layers] == ["a", "c"]


def test_artefact_roundtrip(tiny_prototxt, tmp_path):
    netdef = port.load_prototxt(tiny_prototxt)
    net = port.CaffeNet(netdef)
    net.load_blobs(port.seed_weights(netdef, 2))
    port.save(net, tmp_path / "tiny.safetensors", metadata={"note": "x"})
    back = port.load(tmp_path / "tiny.safetensors")
    assert port.read_metadata(tmp_path / "tiny.safetensors")["note"] == "x"
    x = torch.randn(2, 3, 13, 11)
    with torch.no_grad():
        assert torch.equal(net(x)["prob"], back(x)["prob"])


def test_seed_weights_are_deterministic(tiny_prototxt):
    netdef = port.load_prototxt(tiny_prototxt)
    a, b, c = (
        port.seed_weights(netdef, 5),
        port.seed_weights(netdef, 5),
        port.seed_weights(netdef, 6),
    )
    assert all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k], strict=True))
    assert not np.array_equal(a["conv1"][0], c["conv1"][0])
    # He-normal: std of conv weights close to sqrt(2 / fan_in), fan_in = 3 * 3 * 3
    assert abs(a["conv1"][0].std() / np.sqrt(2 / 27) - 1) < 0.35
