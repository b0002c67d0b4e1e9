"""Custom layers and Caffe forks: the layer registry, ``--proto`` fork schemas, and an SSD-style net
(Permute, Normalize) proved against goldens made by a pycaffe environment (the Caffe root running
the layers as Python layers, ``tests/data/custom/ssd/ssd_layers.py``)."""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import port
from parity import numpy_ref
from parity.__main__ import main as parity_main
from port.caffemodel import write_caffemodel
from port.layers import CaffeLayer
from port.protofile import parse_proto
from port.schema import schema_from_proto_text

from . import custom_cases as cc

REGISTERED = [
    ("Permute", None, None),
    ("Normalize", None, None),
    ("Python", "ssd_layers", "Permute"),
    ("Python", "ssd_layers", "Normalize"),
]

# The fork's definition as port and parity take it: its prototxt and the proto that parses it.
FORK_DEFINITION = ["--prototxt", str(cc.FORK_NET), "--proto", str(cc.FORK_PROTO)]


@pytest.fixture
def plugin():
    """The SSD layers registered with the port and the numpy reference, removed afterwards."""
    spec = importlib.util.spec_from_file_location("ssd_port_for_tests", cc.PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    for t, m, n in REGISTERED:
        port.unregister_layer(t, module=m, layer=n)
        numpy_ref.unregister(t, module=m, layer=n)


def _unregister_all():
    for t, m, n in REGISTERED:
        port.unregister_layer(t, module=m, layer=n)
        numpy_ref.unregister(t, module=m, layer=n)


def _weights(tmp_path, netdef):
    path = tmp_path / "w.caffemodel"
    write_caffemodel(path, netdef, port.seed_weights(netdef, cc.SEED))
    return path


# -- the fork's proto ------------------------------------------------------------------------------


def test_fork_proto_adds_ssd_messages_and_fields_with_their_defaults():
    sch = port.schema.load_proto(cc.FORK_PROTO)
    assert {
        "LayerParameter.permute_param",
        "LayerParameter.norm_param",
        "LayerParameter.prior_box_param",
        "PriorBoxParameter",
    } <= set(sch.added)
    layer = sch.LayerParameter()
    assert layer.norm_param.eps == pytest.approx(1e-10)
    assert layer.norm_param.across_spatial is True and layer.norm_param.channel_shared is True
    assert layer.prior_box_param.offset == pytest.approx(0.5) and layer.prior_box_param.flip
    code = sch.message("PriorBoxParameter").DESCRIPTOR.enum_types_by_name["CodeType"]
    assert code.values_by_name["CENTER_SIZE"].number == 2
    # Caffe 1.0's own fields are still there, with their numbers
    assert sch.LayerParameter.DESCRIPTOR.fields_by_name["convolution_param"].number == 106


def test_prior_box_param_of_a_fork_definition_parses():
    text = """
    input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
    layer { name: "pb" type: "PriorBox" bottom: "data" bottom: "data" top: "pb"
      prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false
        variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5 } }
    """
    netdef = port.netdef_from_text(text, proto=cc.FORK_PROTO)
    p = netdef.layers[0].param.prior_box_param
    assert list(p.min_size) == [30] and list(p.variance) == pytest.approx([0.1, 0.1, 0.2, 0.2])
    assert p.step == 8 and not p.clip


def test_a_whole_fork_proto_that_repeats_caffe_fields_merges():
    text = """
    syntax = "proto2";
    package caffe;
    // a fork's caffe.proto repeats Caffe's own messages
    message BlobShape { repeated int64 dim = 1 [packed = true]; }
    message LayerParameter {
      optional string name = 1;
      optional string type = 2;
      repeated string bottom = 3;
      optional PermuteParameter permute_param = 202;
    }
    message PermuteParameter { repeated uint32 order = 1; }
    """
    sch = schema_from_proto_text(text, path="whole.proto")
    assert sch.added == ("LayerParameter.permute_param", "PermuteParameter")


@pytest.mark.parametrize(
    "text, line, words",
    [
        ('syntax = "proto3";', 1, "proto3"),
        ("package caffe;\nmessage A {\n  oneof x { int32 a = 1; }\n}", 3, "oneof"),
        ("message A {\n  map<string, int32> m = 1;\n}", 2, "map"),
        ('import "other.proto";', 1, "import"),
        ("message A {\n  int32 a = 1;\n}", 2, "optional/repeated/required"),
        ("message A {\n  optional int32 a = 1 [ctype = CORD];\n}", 2, "ctype"),
    ],
)
def test_unsupported_proto_syntax_names_the_file_and_line(text, line, words):
    with pytest.raises(port.CaffeError) as exc:
        parse_proto(text, path="fork.proto")
    assert exc.value.path == "fork.proto" and exc.value.line == line
    assert words in str(exc.value)


@pytest.mark.parametrize(
    "body, words",
    [
        (
            "message LayerParameter { optional float foo = 100; }",
            "reuses the number of Caffe's field",
        ),
        ("message LayerParameter { optional string name = 9; }", "conflicts with Caffe's number 1"),
        ("message LayerParameter { optional NoSuch x = 300; }", "unknown type 'NoSuch'"),
    ],
)
def test_fork_fields_that_clash_with_caffe_are_refused(body, words):
    with pytest.raises(port.CaffeError, match=words) as exc:
        schema_from_proto_text("package caffe;\n" + body, path="bad.proto")
    assert exc.value.path == "bad.proto"


def test_unknown_fork_field_without_proto_says_to_pass_it(capsys):
    with pytest.raises(port.CaffeError) as exc:
        port.load_prototxt(cc.FORK_NET)
    assert exc.value.field == "norm_param" and exc.value.layer == "norm1"
    assert "--proto" in str(exc.value) and exc.value.line == 12
    assert port.cli.main(["inspect", "--prototxt", str(cc.FORK_NET)]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'norm_param'" in err and "--proto FORK.proto" in err


# -- the registry ----------------------------------------------------------------------------------


def test_unregistered_types_name_the_layer_and_how_to_register():
    _unregister_all()
    fork = port.load_prototxt(cc.FORK_NET, proto=cc.FORK_PROTO)
    with pytest.raises(port.CaffeError) as exc:
        port.CaffeNet(fork)
    assert exc.value.layer == "norm1" and exc.value.path == str(cc.FORK_NET)
    assert "port.register_layer('Normalize', MyLayer)" in str(exc.value)
    with pytest.raises(port.CaffeError) as exc:
        port.CaffeNet(port.load_prototxt(cc.PYTHON_NET))
    assert (
        "port.register_layer(\"Python\", MyLayer, module='ssd_layers', layer='Normalize')"
        in str(exc.value)
    )


def test_register_layer_guards_against_mistakes():
    with pytest.raises(ValueError, match="already registered"):
        port.register_layer("ReLU", CaffeLayer)
    with pytest.raises(ValueError, match="both module and layer"):
        port.register_layer("Python", CaffeLayer, module="m")
    with pytest.raises(ValueError, match="Python layers only"):
        port.register_layer("Permute", CaffeLayer, module="m", layer="l")


def test_a_factory_builder_and_the_contract_check(tmp_path):
    text = (
        'input: "x" input_shape { dim: 2 dim: 3 }\n'
        'layer { name: "twice" type: "Twice" bottom: "x" top: "y" }'
    )

    class Twice(CaffeLayer):
        def top_shapes(self):
            return [self.bottom_shapes[0]]

        def forward(self, x):
            return [2 * x]

    port.register_layer("Twice", lambda layer, shapes: Twice(layer, shapes))
    try:
        net = port.CaffeNet(port.netdef_from_text(text))
        assert torch.equal(net(torch.ones(2, 3))["y"], torch.full((2, 3), 2.0))
        port.register_layer("Twice", lambda layer, shapes: torch.nn.Identity(), replace=True)
        with pytest.raises(port.CaffeError, match="lacks blobs, blob_shapes, top_shapes"):
            port.CaffeNet(port.netdef_from_text(text))
    finally:
        port.unregister_layer("Twice")


# -- the SSD-style net against goldens from pycaffe ------------------------------------------------


def _goldens():
    return [f"{b}={cc.golden(b)}" for b in ("atlas", "openblas")]


@pytest.mark.parametrize("net, proto", [(cc.PYTHON_NET, None), (cc.FORK_NET, cc.FORK_PROTO)])
def test_custom_net_passes_parity_against_pycaffe_goldens(plugin, net, proto, tmp_path, capsys):
    manifest = json.loads((cc.GOLDENS / "manifest.json").read_text())
    assert port.sha256_file(cc.PYTHON_NET) == manifest["prototxt_sha256"], "regenerate the goldens"
    weights = _weights(tmp_path, port.load_prototxt(cc.PYTHON_NET))
    assert port.sha256_file(weights) == manifest["weights"]["sha256"]
    args = [
        "run",
        "--prototxt",
        str(net),
        "--caffemodel",
        str(weights),
        "--backward-from",
        cc.BACKWARD,
        "--no-verdict",
        "--json",
        str(tmp_path / "r.json"),
    ]
    args += ["--golden", _goldens()[0], "--golden", _goldens()[1]]
    if proto:
        args += ["--proto", str(proto)]
    code = parity_main(args)
    assert code == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is True
    judged = {c["key"] for p in report["pairs"] for c in p["checks"]}
    assert {"data/norm1", "data/perm1", "diff/conv1", "diff/data"} <= judged
    # both Caffe builds, the registered numpy reference and ONNX judged the port
    refs = {p["reference"] for p in report["pairs"]}
    assert {"caffe-atlas", "caffe-openblas", "numpy32", "numpy64", "onnx"} <= refs


def test_numpy_reference_of_the_custom_layers_matches_the_goldens(plugin, tmp_path):
    netdef = port.load_prototxt(cc.FORK_NET, proto=cc.FORK_PROTO)
    weights = port.read_caffemodel(_weights(tmp_path, port.load_prototxt(cc.PYTHON_NET)))
    with np.load(cc.golden("openblas")) as z:
        golden = {k: z[k] for k in z.files}
    np.testing.assert_array_equal(golden["input/data"], cc.inputs()["data"])
    ref = numpy_ref.forward_net(netdef, weights, cc.inputs(), dtype=np.float64)
    for key, value in ref.items():
        scale = max(float(np.abs(golden[key]).max()), 1e-6)
        assert float(np.abs(value - golden[key]).max()) / scale < 1e-5, key


def test_parity_without_a_numpy_function_runs_the_rest_and_says_so(plugin, tmp_path, capsys):
    numpy_ref.unregister("Normalize")
    weights = _weights(tmp_path, port.load_prototxt(cc.PYTHON_NET))
    code = parity_main(
        [
            "run",
            *FORK_DEFINITION,
            "--caffemodel",
            str(weights),
            "--golden",
            _goldens()[0],
            "--golden",
            _goldens()[1],
            "--no-verdict",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert any("numpy64, numpy32 not run" in n and "norm1" in n for n in report["notes"])
    assert not {"numpy32", "numpy64"} & {p["reference"] for p in report["pairs"]}
    with pytest.raises(numpy_ref.UnknownLayerError, match=r"numpy_ref.register\('Normalize'"):
        numpy_ref.forward_net(
            port.load_prototxt(cc.FORK_NET, proto=cc.FORK_PROTO),
            port.read_caffemodel(weights),
            cc.inputs(),
        )


def test_fork_artefact_keeps_its_proto(plugin, tmp_path, capsys):
    weights = _weights(tmp_path, port.load_prototxt(cc.PYTHON_NET))
    out = tmp_path / "fork.safetensors"
    assert (
        port.cli.main(
            [
                "convert",
                *FORK_DEFINITION,
                "--caffemodel",
                str(weights),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    net = port.load(out)
    assert net.netdef.schema.source == str(cc.FORK_PROTO)
    x = torch.from_numpy(cc.inputs()["data"])
    want = port.load_caffe(port.load_prototxt(cc.FORK_NET, proto=cc.FORK_PROTO), weights)(x)
    assert torch.equal(net(x)["score"], want["score"])


def test_plugin_option_registers_layers_for_the_command_line(tmp_path, capsys):
    _unregister_all()
    out = tmp_path / "w.caffemodel"
    try:
        assert (
            port.cli.main(
                [
                    "seed-weights",
                    "--prototxt",
                    str(cc.PYTHON_NET),
                    "--plugin",
                    str(cc.PLUGIN),
                    "--weight-seed",
                    str(cc.SEED),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    finally:
        _unregister_all()
    manifest = json.loads((cc.GOLDENS / "manifest.json").read_text())
    assert port.sha256_file(out) == manifest["weights"]["sha256"]
    assert (
        port.cli.main(
            ["inspect", "--prototxt", str(cc.PYTHON_NET), "--plugin", str(tmp_path / "missing.py")]
        )
        == 2
    )
    assert "plugin" in capsys.readouterr().err


def test_dump_of_a_fork_definition_matches_the_pycaffe_golden(plugin, tmp_path, capsys):
    weights = _weights(tmp_path, port.load_prototxt(cc.PYTHON_NET))
    np.save(tmp_path / "x.npy", cc.inputs()["data"])
    out = tmp_path / "d.npz"
    assert (
        port.cli.main(
            [
                "dump",
                *FORK_DEFINITION,
                "--plugin",
                str(cc.PLUGIN),
                "--caffemodel",
                str(weights),
                "--input",
                str(tmp_path / "x.npy"),
                "--backward-from",
                cc.BACKWARD,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    with np.load(out) as mine, np.load(cc.golden("openblas")) as caffe:
        # measured: at most 5.2e-7 of the blob's scale (float32 sums in another order); parity's
        # noise-floor judgement of the same net is test_custom_net_passes_parity_...
        for key in ("data/perm1", "data/score", "diff/norm1", "diff/data"):
            scale = float(np.abs(caffe[key]).max())
            assert float(np.abs(mine[key] - caffe[key]).max()) <= 1e-5 * scale, key


@pytest.mark.caffe
def test_regenerated_python_layer_goldens_match_the_committed_ones(tmp_path, monkeypatch):
    """The Caffe root's pycaffe, running ssd_layers.py as Python layers, writes the same arrays."""
    from legacy_caffe.manifest import load_npz, verify_arrays

    committed = json.loads((cc.GOLDENS / "manifest.json").read_text())
    monkeypatch.setattr(cc, "GOLDENS", tmp_path / "g")
    cc.generate()
    for key, entry in committed["sets"].items():
        fresh = load_npz(tmp_path / "g" / entry["file"])
        assert not verify_arrays(fresh, entry["arrays"]), key


@pytest.mark.caffe
def test_the_dumper_runs_standalone_in_a_pycaffe_environment(tmp_path):
    """dump_blobs.py and caffe_env.py copied out of the project, run by a pycaffe (the root's) with
    the Python layers on PYTHONPATH, write the committed goldens' arrays: the README's recipe for
    a fork's own Caffe build."""
    import shutil

    from legacy_caffe import engines, rootfs
    from legacy_caffe.manifest import verify_arrays

    engines.ensure_built()
    rootfs.exchange_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="standalone-dumper-", dir=rootfs.exchange_dir()))
    try:
        inside = Path(__file__).resolve().parent.parent / "legacy_caffe" / "inside"
        for name in ("dump_blobs.py", "caffe_env.py"):
            shutil.copyfile(inside / name, work / name)
        shutil.copyfile(cc.DATA / "ssd_layers.py", work / "ssd_layers.py")
        shutil.copyfile(cc.PYTHON_NET, work / "net.prototxt")
        write_caffemodel(
            work / "w.caffemodel", port.load_prototxt(cc.PYTHON_NET), _seeded_python_net_weights()
        )
        np.savez(work / "x.npz", **cc.inputs())
        blob, unit = cc.BACKWARD.split(":")
        engines.run_inside(
            [
                "python3",
                rootfs.host_to_inside(work / "dump_blobs.py"),
                "--prototxt",
                rootfs.host_to_inside(work / "net.prototxt"),
                "--caffemodel",
                rootfs.host_to_inside(work / "w.caffemodel"),
                "--input",
                rootfs.host_to_inside(work / "x.npz"),
                "--blob",
                blob,
                "--unit",
                unit,
                "--out",
                rootfs.host_to_inside(work / "g.npz"),
            ],
            blas="openblas",
            env={"PYTHONPATH": rootfs.host_to_inside(work), "OPENBLAS_CORETYPE": "Prescott"},
        )
        with np.load(work / "g.npz") as z:
            fresh = {k: z[k] for k in z.files}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    committed = json.loads((cc.GOLDENS / "manifest.json").read_text())
    entry = next(e for e in committed["sets"].values() if "openblas" in e["file"])
    assert not verify_arrays(fresh, entry["arrays"])


def _seeded_python_net_weights():
    spec = importlib.util.spec_from_file_location("ssd_port_seed", cc.PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return port.seed_weights(port.load_prototxt(cc.PYTHON_NET), cc.SEED)
    finally:
        _unregister_all()


def _render_proto(fdp) -> str:
    """proto2 text of a FileDescriptorProto (what a fork's caffe.proto holds, comments aside)."""
    from google.protobuf import descriptor_pb2

    fd = descriptor_pb2.FieldDescriptorProto
    scalar = {v: k.lower()[5:] for k, v in fd.Type.items()}
    label = {
        fd.LABEL_OPTIONAL: "optional",
        fd.LABEL_REPEATED: "repeated",
        fd.LABEL_REQUIRED: "required",
    }
    out = ['syntax = "proto2";', f"package {fdp.package};"]

    def enum(e, ind):
        out.append(f"{ind}enum {e.name} {{")
        out.extend(f"{ind}  {v.name} = {v.number};" for v in e.value)
        out.append(f"{ind}}}")

    def message(m, ind):
        out.append(f"{ind}message {m.name} {{")
        for e in m.enum_type:
            enum(e, ind + "  ")
        for n in m.nested_type:
            message(n, ind + "  ")
        for f in m.field:
            opts = []
            if f.HasField("default_value"):
                d = f.default_value
                opts.append(f'default = "{d}"' if f.type == fd.TYPE_STRING else f"default = {d}")
            if f.options.HasField("packed"):
                opts.append(f"packed = {str(f.options.packed).lower()}")
            tail = f" [{', '.join(opts)}]" if opts else ""
            out.append(
                f"{ind}  {label[f.label]} {f.type_name or scalar[f.type]} {f.name} = "
                f"{f.number}{tail};"
            )
        out.append(f"{ind}}}")

    for e in fdp.enum_type:
        enum(e, "")
    for m in fdp.message_type:
        message(m, "")
    return "\n".join(out) + "\n"


@pytest.mark.caffe
def test_the_roots_whole_caffe_proto_plus_ssd_additions_reads_as_a_fork_proto(tmp_path):
    """Caffe's own caffe.proto (rendered from the root's compiled caffe_pb2) with SSD's messages
    appended, as a fork ships it: merges without conflict and parses the fork definition."""
    import base64
    import subprocess
    import sys

    from google.protobuf import descriptor_pb2

    code = (
        "import base64, sys; from caffe.proto import caffe_pb2; "
        "sys.stdout.write(base64.b64encode(caffe_pb2.DESCRIPTOR.serialized_pb).decode())"
    )
    out = subprocess.run(
        [sys.executable, "-m", "legacy_caffe", "run", "--", "python3", "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    fdp = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(out.strip()))
    ssd = parse_proto(cc.FORK_PROTO.read_text(), path=cc.FORK_PROTO)
    layer = next(m for m in fdp.message_type if m.name == "LayerParameter")
    for f in next(m for m in ssd.message_type if m.name == "LayerParameter").field:
        layer.field.add().CopyFrom(f)
    fdp.message_type.extend(m for m in ssd.message_type if m.name != "LayerParameter")
    proto = tmp_path / "caffe.proto"
    proto.write_text(_render_proto(fdp))
    netdef = port.load_prototxt(cc.FORK_NET, proto=proto)
    assert list(netdef.layer("perm1").param.permute_param.order) == [0, 2, 3, 1]
    assert "SolverParameter" in netdef.schema.added


def _forget_plugin_runs():
    """Unregister the SSD layers; the next --plugin run of the file registers them again."""
    _unregister_all()


def test_mfv_loads_a_fork_definition_with_proto_and_plugin(capsys):
    pytest.importorskip("torchvision")
    from mfv.cli import main as mfv_main
    from mfv.evaluate import model_from_trace

    ssd = cc.DATA
    args = ["layers", "--model", "caffe", "--prototxt", str(ssd / "fork.prototxt"),
            "--no-parity-check"]  # fmt: skip
    _forget_plugin_runs()
    try:
        assert mfv_main(args) == 2  # without the fork's proto its fields are unknown
        assert "pass the fork's caffe.proto with --proto" in capsys.readouterr().err
        extra = ["--proto", str(ssd / "ssd_fork.proto"), "--plugin", str(ssd / "ssd_port.py")]
        assert mfv_main(args + extra) == 0, capsys.readouterr().err
        assert "perm1\t6x6x4" in capsys.readouterr().out
        # A run records both, so that evaluating it later loads the same net.
        model = model_from_trace(
            {"model": {"name": "fork", "source": "caffe", "prototxt": str(ssd / "fork.prototxt"),
                       "weight_seed": 0, "parity": {"status": "skipped"},
                       "proto": str(ssd / "ssd_fork.proto"),
                       "plugins": [str(ssd / "ssd_port.py")]}}
        )  # fmt: skip
        assert model.info["proto"] == str(ssd / "ssd_fork.proto")
    finally:
        _forget_plugin_runs()


def test_a_plugin_runs_once_and_again_after_its_layers_are_unregistered(tmp_path, monkeypatch):
    """--plugin runs a file once per process; once a layer it registered is removed, the next
    load runs it again (so that a test or a session that cleaned up can load it anew)."""
    from port.plugins import load_plugin

    runs = tmp_path / "runs.txt"
    plugin = tmp_path / "count_plugin.py"
    plugin.write_text(
        "import os, port\n"
        "with open(os.environ['PLUGIN_RUNS'], 'a') as f:\n"
        "    f.write('run\\n')\n"
        "port.register_layer('CountedIdentity', lambda layer, shapes: None)\n"
    )
    monkeypatch.setenv("PLUGIN_RUNS", str(runs))
    try:
        load_plugin(str(plugin))
        load_plugin(str(plugin))
        assert runs.read_text().splitlines() == ["run"]
        port.unregister_layer("CountedIdentity")
        load_plugin(str(plugin))
        assert runs.read_text().splitlines() == ["run", "run"]
        assert "CountedIdentity" in {t for t, _, _ in port.layers.CUSTOM_LAYERS}
    finally:
        port.unregister_layer("CountedIdentity")
