"""The layer types beyond the zoo's: definitions, errors, the dump's notes, STOCHASTIC pooling (which
real Caffe's CPU build cannot run), ONNX on multi-input nets, and README's generated table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import port
from parity import layer_table, numpy_ref, runners
from port.caffemodel import read_caffemodel, write_caffemodel

from .layer_cases import CASES

README = Path(__file__).resolve().parent.parent / "README.md"


def _net(text: str) -> port.CaffeNet:
    return port.CaffeNet(port.netdef_from_text(text))


def test_readme_layer_table_is_up_to_date():
    assert layer_table.main(["--check", str(README)]) == 0, (
        "run: python -m parity.layer_table --write README.md"
    )


def test_every_port_layer_type_has_a_numpy_reference_and_a_table_row():
    from port.layers import LAYER_TYPES

    assert set(LAYER_TYPES) <= numpy_ref.SUPPORTED_TYPES
    assert {r[0] for r in layer_table.rows()} >= set(LAYER_TYPES)


def test_numpy_reference_families_mirror_the_ports():
    # A reader looking for a type's reference finds it in the module named like the port's.
    from port.layers import LAYER_TYPES

    def family(module: str) -> str:
        return module.rsplit(".", 1)[-1]

    port_family = {t: family(cls.__module__) for t, cls in LAYER_TYPES.items()}
    numpy_family = {t: family(numpy_ref.LAYERS[t].__module__) for t in LAYER_TYPES}
    assert set(port_family.values()) == {
        "vision",
        "activations",
        "arithmetic",
        "shape",
        "recurrent",
    }
    assert numpy_family == port_family


# --- definitions ----------------------------------------------------------------------------------

TRAIN_VAL = """
name: "tv"
layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "x" } }
layer { name: "in" type: "Input" top: "img" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "img" top: "fc"
        inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" }
"""


def test_data_loss_and_accuracy_layers_are_skipped_and_listed():
    nd = port.netdef_from_text(TRAIN_VAL)
    assert [layer.name for layer in nd.layers] == ["fc"]
    assert [(s["name"], s["type"]) for s in nd.skipped] == [
        ("data", "Data"),
        ("loss", "SoftmaxWithLoss"),
        ("acc", "Accuracy"),
    ]
    assert port.CaffeNet(nd).output_names == ["fc"]


def test_a_layer_reading_a_data_layer_top_is_an_error_naming_both():
    text = TRAIN_VAL.replace('bottom: "img" top: "fc"', 'bottom: "data" top: "fc"')
    with pytest.raises(port.CaffeError) as exc:
        port.netdef_from_text(text)
    msg = str(exc.value)
    assert "layer 'fc'" in msg and "'data'" in msg and "Data layer" in msg and "Input" in msg


def test_a_net_with_only_a_data_layer_says_the_data_layer_is_not_run():
    text = (
        'layer { name: "d" type: "ImageData" top: "x" }\nlayer { name: "r" type: "ReLU" '
        'bottom: "x" top: "y" }'
    )
    with pytest.raises(port.CaffeError, match="ImageData"):
        port.netdef_from_text(text)


def test_dummy_data_tops_are_inputs_in_both_shape_spellings():
    nd = port.netdef_from_text("""
layer { name: "d" type: "DummyData" top: "a" top: "b"
        dummy_data_param { num: 2 channels: 3 height: 4 width: 5 num: 1 channels: 1 height: 2
                           width: 2 } }
layer { name: "e" type: "DummyData" top: "c" dummy_data_param { shape { dim: 7 } } }
""")
    assert nd.inputs == {"a": (2, 3, 4, 5), "b": (1, 1, 2, 2), "c": (7,)}
    with pytest.raises(port.CaffeError, match="needs a shape"):
        port.netdef_from_text('layer { name: "d" type: "DummyData" top: "a" }')


@pytest.mark.parametrize(
    "layer, message",
    [
        (
            'type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: 7 } }',
            "holds 14 values",
        ),
        (
            'type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 dim: -1 } }',
            "at most one",
        ),
        (
            'type: "Slice" bottom: "x" top: "y" top: "z" slice_param { slice_point: 2 slice_point: 3 }',
            "2 slice points for 2 tops",
        ),
        ('type: "Slice" bottom: "x" top: "y" top: "z" top: "w"', "3 equal parts"),
        ('type: "Clip" bottom: "x" top: "y" clip_param { min: 0 }', "min and max"),
        ('type: "Tile" bottom: "x" top: "y"', "tiles"),
        ('type: "Embed" bottom: "x" top: "y" embed_param { num_output: 3 }', "input_dim"),
        ('type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 9 }', "top_k 9"),
        (
            'type: "Deconvolution" bottom: "x" top: "y" convolution_param { kernel_size: 2 }',
            "num_output",
        ),
        ('type: "Exp" bottom: "x" top: "y" exp_param { base: -2 }', "base"),
    ],
)
def test_bad_parameters_name_the_layer_and_field(layer, message):
    text = (
        f'input: "x" input_shape {{ dim: 2 dim: 4 dim: 1 dim: 1 }}\nlayer {{ name: "bad" {layer} }}'
    )
    with pytest.raises(port.CaffeError, match=message) as exc:
        _net(text)
    assert "layer 'bad'" in str(exc.value)


def test_crop_offset_past_the_edge_is_an_error():
    text = """input: "a" input_shape { dim: 1 dim: 1 dim: 5 dim: 5 }
input: "b" input_shape { dim: 1 dim: 1 dim: 3 dim: 3 }
layer { name: "c" type: "Crop" bottom: "a" bottom: "b" top: "c" crop_param { offset: 3 } }"""
    with pytest.raises(port.CaffeError, match="offset 3"):
        _net(text)


def test_zero_axis_blob_round_trips_through_a_caffemodel(tmp_path):
    """PReLU's shared slope is a 0-axis blob in Caffe: one value, no dims."""
    nd = port.netdef_from_text(
        'input: "x" input_shape { dim: 1 dim: 2 }\nlayer { name: "p" '
        'type: "PReLU" bottom: "x" top: "y" prelu_param { '
        "channel_shared: true } }"
    )
    w = {"p": [np.array(0.3, dtype=np.float32)]}
    write_caffemodel(tmp_path / "w.caffemodel", nd, w)
    back = read_caffemodel(tmp_path / "w.caffemodel")
    assert back["p"][0].shape == () and float(back["p"][0]) == pytest.approx(0.3)


# --- the dump's statement of what Caffe does not back-propagate ----------------------------------


def test_dump_names_bottoms_caffe_cannot_back_propagate_to():
    case = CASES["indexing"]
    nd = port.load_prototxt(case.prototxt)
    net = port.CaffeNet(nd)
    net.load_blobs(port.seed_weights(nd, 1))
    out = port.dump_blobs(net, case.inputs(), backward_from=("score", 0))
    assert str(out["nograd/emb"]).startswith("bottom 0 ('idx')")
    assert "selector" in str(out["nograd/filter"])
    assert not out["diff/idx"].any() and not out["diff/sel"].any()
    assert out["diff/emb"].any()
    # forward only: no notes
    assert not [k for k in port.dump_blobs(net, case.inputs()) if k.startswith("nograd/")]


def test_argmax_and_threshold_invent_no_gradient():
    net = _net("""input: "x" input_shape { dim: 2 dim: 5 }
layer { name: "am" type: "ArgMax" bottom: "x" top: "am" argmax_param { out_max_val: true } }
layer { name: "t" type: "Threshold" bottom: "x" top: "t" }
layer { name: "f" type: "Flatten" bottom: "am" top: "f" }
layer { name: "s" type: "Concat" bottom: "f" bottom: "t" top: "s" concat_param { axis: 1 } }""")
    x = np.arange(10, dtype=np.float32).reshape(2, 5) - 4.5
    out = port.dump_blobs(net, x, backward_from=("s", 1))
    assert not out["diff/x"].any()
    assert "no backward" in str(out["nograd/am"]) and "no backward" in str(out["nograd/t"])


# --- STOCHASTIC pooling: no real-Caffe golden exists (CPU Caffe: NOT_IMPLEMENTED) -----------------


@pytest.mark.parametrize("kernel, stride, size", [(2, 2, 6), (3, 2, 7), (3, 1, 5), (2, 3, 8)])
def test_stochastic_pooling_follows_caffes_test_rule(kernel, stride, size):
    net = _net(f"""input: "x" input_shape {{ dim: 2 dim: 3 dim: {size} dim: {size} }}
layer {{ name: "p" type: "Pooling" bottom: "x" top: "p"
        pooling_param {{ pool: STOCHASTIC kernel_size: {kernel} stride: {stride} }} }}""")
    x = np.random.default_rng(kernel * 10 + size).normal(0.5, 1.0, (2, 3, size, size))
    got = net(torch.as_tensor(x, dtype=torch.float32))["p"].numpy()
    ref = numpy_ref.stochastic_pool_test(x, kernel=(kernel, kernel), stride=(stride, stride))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # windows by hand: sum of squares over sum, 0 where the sum is not positive
    for c in range(3):
        win = x[0, c, :kernel, :kernel]
        want = (win**2).sum() / win.sum() if win.sum() > 0 else 0.0
        assert ref[0, c, 0, 0] == pytest.approx(want)


# --- ONNX ----------------------------------------------------------------------------------------


def test_onnx_exports_multi_input_nets_and_every_blob_matches_the_port():
    case = CASES["recurrent"]
    nd = port.load_prototxt(case.prototxt)
    net = port.CaffeNet(nd)
    net.load_blobs(port.seed_weights(nd, 1))
    x = case.inputs()
    onnx = runners.run_onnx(net.eval(), x)
    mine = runners.run_port(net, x, backward_from=None)
    assert set(onnx.blobs) == set(mine.blobs)
    for k, v in onnx.blobs.items():
        np.testing.assert_allclose(v, mine.blobs[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_onnx_argmax_keeps_caffes_tie_order():
    net = _net("""input: "x" input_shape { dim: 1 dim: 6 }
layer { name: "am" type: "ArgMax" bottom: "x" top: "am" argmax_param { top_k: 3 } }""")
    x = np.array([[1, 3, 3, 0, 3, 2]], dtype=np.float32)
    onnx = runners.run_onnx(net.eval(), x)
    # Caffe: ties go to the larger index first
    np.testing.assert_array_equal(onnx.blobs["data/am"].reshape(-1), [4, 2, 1])
    np.testing.assert_array_equal(net(torch.as_tensor(x))["am"].numpy().reshape(-1), [4, 2, 1])
    np.testing.assert_array_equal(numpy_ref.argmax(x, top_k=3).reshape(-1), [4, 2, 1])


def test_legacy_v1_definitions_reach_the_new_layer_types():
    nd = port.netdef_from_text("""
name: "v1"
layers { name: "d" type: DATA top: "img" top: "label" }
layers { name: "x" type: DUMMY_DATA top: "x" dummy_data_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layers { name: "dc" type: DECONVOLUTION bottom: "x" top: "dc"
         convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
layers { name: "pw" type: POWER bottom: "dc" top: "pw" power_param { power: 2 } }
layers { name: "ab" type: ABSVAL bottom: "pw" top: "ab" }
layers { name: "bn" type: BNLL bottom: "ab" top: "bn" }
layers { name: "ex" type: EXP bottom: "bn" top: "ex" exp_param { scale: -1 } }
layers { name: "mv" type: MVN bottom: "ex" top: "mv" }
layers { name: "sl" type: SLICE bottom: "mv" top: "s1" top: "s2" }
layers { name: "ic" type: IM2COL bottom: "s1" top: "ic" convolution_param { kernel_size: 2 } }
layers { name: "si" type: SILENCE bottom: "s2" }
layers { name: "am" type: ARGMAX bottom: "ic" top: "am" }
layers { name: "th" type: THRESHOLD bottom: "ic" top: "th" }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "am" bottom: "label" top: "loss" }
""")
    assert [s["type"] for s in nd.skipped] == ["Data", "SoftmaxWithLoss"]
    net = port.CaffeNet(nd)
    net.load_blobs(port.seed_weights(nd, 0))
    x = np.random.default_rng(0).normal(size=(1, 2, 4, 4)).astype(np.float32)
    got = net(torch.as_tensor(x), blobs="all")
    ref = numpy_ref.forward_net(nd, port.seed_weights(nd, 0), x, dtype=np.float64)
    for k, v in ref.items():
        np.testing.assert_allclose(got[k[5:]].detach().numpy(), v, rtol=1e-4, atol=1e-5, err_msg=k)


def test_in_place_layers_whose_caffe_backward_reads_overwritten_data_are_noted():
    net = _net("""input: "x" input_shape { dim: 1 dim: 4 }
layer { name: "c" type: "Clip" bottom: "x" top: "c" clip_param { min: -1 max: 1 } }
layer { name: "c2" type: "Clip" bottom: "c" top: "c" clip_param { min: -0.5 max: 0.5 } }
layer { name: "s" type: "Swish" bottom: "c" top: "s" }
layer { name: "e" type: "ELU" bottom: "s" top: "s" }
layer { name: "r" type: "ReLU" bottom: "s" top: "s" }""")
    out = port.dump_blobs(net, np.ones((1, 4), np.float32), backward_from=("s", 0))
    assert sorted(k for k in out if k.startswith("inexact/")) == [
        "inexact/c2",
        "inexact/e",
        "inexact/s",
    ]
    assert "'e' rewrites" in str(out["inexact/s"])
    with pytest.raises(port.CaffeError, match="in-place"):
        _net(
            'input: "x" input_shape { dim: 1 dim: 4 }\n'
            'layer { name: "a" type: "AbsVal" bottom: "x" top: "x" }'
        )
