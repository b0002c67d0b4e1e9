"""``port export``: the generated Python module (readable, format-clean, torch only, named blobs,
in-place ReLUs, Caffe's pooling and LRN), the pt2 and ONNX files, the record, custom layers and
the errors that name a layer."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import port
from port.errors import CaffeError
from port.export import export_net, read_record
from port.export.python_source import generate_python

from .layer_cases import ARCHITECTURES, CASES

ROOT = Path(__file__).resolve().parent.parent


def _seeded(prototxt: Path, seed: int = 1) -> port.CaffeNet:
    netdef = port.load_prototxt(prototxt)
    net = port.CaffeNet(netdef)
    net.load_blobs(port.seed_weights(netdef, seed))
    return net.eval()


def _import(path: Path, cls: str):
    spec = importlib.util.spec_from_file_location(f"gen_{path.stem}_{id(path)}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return getattr(module, cls)


def _generated(net: port.CaffeNet, tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    out = tmp_path / "net.py"
    record = export_net(net, "python", out)
    from safetensors.torch import load_file

    module = _import(out, record["class"])()
    module.load_state_dict(load_file(str(tmp_path / "net.safetensors")))  # strict: every key
    return module.eval(), out


def _inputs(name: str) -> torch.Tensor:
    (x,) = ARCHITECTURES[name].inputs().values()
    return torch.from_numpy(x)


@pytest.mark.parametrize("name", ["fcn8s", "hed", "sphereface"])
def test_generated_module_computes_every_blob_as_the_port(name, tmp_path):
    net = _seeded(ARCHITECTURES[name].prototxt)
    module, _ = _generated(net, tmp_path)
    x = _inputs(name)
    want = net(x, blobs="all")
    with torch.no_grad():
        got = module(x.clone(), blobs=list(want))
        plain = module(x.clone())
    for blob, value in want.items():
        # Same torch ops in the same order: equal to float32 rounding of a reordered sum at most.
        scale = float(value.abs().max()) or 1.0
        assert float((got[blob] - value).abs().max()) <= 1e-6 * scale, blob
    outputs = net.output_names
    first = plain if len(outputs) > 1 else {outputs[0]: plain}
    for blob in outputs:
        torch.testing.assert_close(first[blob], got[blob], rtol=0, atol=0)


def test_generated_file_needs_only_torch_and_is_format_clean(tmp_path):
    net = _seeded(ARCHITECTURES["hed"].prototxt)
    _, out = _generated(net, tmp_path)
    tree = ast.parse(out.read_text())
    imported = {
        (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert imported <= {"math", "torch"}, imported
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    done = subprocess.run(
        [ruff, "format", "--isolated", "--check", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_caffenet_source_names_layers_and_writes_caffe_rules_out(tmp_path):
    from port.zoo import zoo_model

    netdef = port.load_prototxt(zoo_model("caffenet").prototxt)
    net = port.CaffeNet(netdef).eval()  # zero weights: only the source is read here
    name, source, state = generate_python(net)
    assert name == "CaffeNet"
    assert "self.relu1 = nn.ReLU(inplace=True)" in source
    assert 'self.pool1 = CaffePool2d("MAX", (3, 3), (2, 2), (0, 0))' in source
    assert "math.ceil(" in source  # the ceil rule itself, in the file
    assert "self.norm1 = CaffeLRN(5, " in source
    assert "conv1 = self.relu1(conv1)" in source
    assert set(state) >= {"conv1.weight", "conv1.bias", "fc8.weight", "fc8.bias"}
    assert tuple(state["fc6.weight"].shape) == (4096, 9216)


def test_pooling_follows_caffes_ceil_rule_where_torch_floors(tmp_path):
    """A 3x3/2 max pool on 6x6: Caffe gives 3x3 (ceil), torch's default 2x2."""
    text = (
        'name: "P"\ninput: "data"\ninput_shape { dim: 1 dim: 2 dim: 6 dim: 6 }\n'
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
        "  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }\n"
        'layer { name: "ave" type: "Pooling" bottom: "data" top: "ave"\n'
        "  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }\n"
    )
    proto = tmp_path / "p.prototxt"
    proto.write_text(text)
    net = _seeded(proto)
    module, _ = _generated(net, tmp_path)
    x = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    got = module(x)
    want = net(x)
    assert got["pool"].shape == (3, 2, 3, 3)
    torch.testing.assert_close(got["pool"], want["pool"], rtol=0, atol=0)
    torch.testing.assert_close(got["ave"], want["ave"], rtol=0, atol=0)


def test_plain_forward_traces_with_torch_export_and_batch_is_free(tmp_path, monkeypatch):
    net = _seeded(ARCHITECTURES["sphereface"].prototxt)
    module, _ = _generated(net, tmp_path)
    x = _inputs("sphereface")
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: batch},), strict=False)
    bigger = torch.cat([x, x, x])
    eager = module(bigger)
    # The program follows torch operators only; so does the file without the port's compiled
    # fully connected kernel, and then the two agree to the bit.
    monkeypatch.setattr(sys.modules[type(module).__module__], "_skinny", None)
    torch.testing.assert_close(program.module()(bigger), module(bigger), rtol=0, atol=0)
    # With the kernel the file rounds its sums differently, within float32 noise.
    torch.testing.assert_close(eager, module(bigger), rtol=1e-5, atol=1e-6)


def test_feature_extractor_returns_named_blobs(tmp_path):
    fe = pytest.importorskip("torchvision.models.feature_extraction")
    net = _seeded(ARCHITECTURES["hed"].prototxt)
    module, _ = _generated(net, tmp_path)
    x = _inputs("hed")
    # The in-place ReLU's node holds the blob's final value (pycaffe's conv2).
    extractor = fe.create_feature_extractor(module, {"relu2": "conv2"})
    got = extractor(x.clone())["conv2"]
    torch.testing.assert_close(got, net(x, blobs=["conv2"])["conv2"], rtol=0, atol=0)


def test_layers_without_a_python_form_are_named(tmp_path):
    net = _seeded(CASES["activations"].prototxt, CASES["activations"].seed)
    with pytest.raises(CaffeError) as err:
        export_net(net, "python", tmp_path / "act.py")
    assert err.value.layer == "abs"
    assert "'AbsVal' cannot be exported as Python source" in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing half-written


class Shift(port.layers.CaffeLayer):
    """A plugin layer: x + one learned value per channel."""

    caffe_type = "Shift"

    def __init__(self, layer, bottom_shapes):
        super().__init__(layer, bottom_shapes)
        self.channels = bottom_shapes[0][1]
        self._make_blobs()

    def blob_shapes(self):
        return [(self.channels,)]

    def top_shapes(self):
        return [self.bottom_shapes[0]]

    def seed_blobs(self, rng):
        return [rng.normal(0.0, 1.0, (self.channels,))]

    def forward(self, x):
        return [x + self.blobs[0].view(1, -1, 1, 1)]


class ExportableShift(Shift):
    def export_python(self):
        source = (
            "class Shift(nn.Module):\n"
            '    """x + one value per channel."""\n\n'
            "    def __init__(self, channels):\n"
            "        super().__init__()\n"
            "        self.shift = nn.Parameter(torch.zeros(channels))\n\n"
            "    def forward(self, x):\n"
            "        return [x + self.shift.view(1, -1, 1, 1)]\n"
        )
        return {
            "source": source,
            "init": f"Shift({self.channels})",
            "state": {"shift": self.blobs[0]},
        }


@pytest.fixture
def shift_net(tmp_path):
    proto = tmp_path / "s.prototxt"
    proto.write_text(
        'name: "S"\ninput: "data"\ninput_shape { dim: 2 dim: 3 dim: 4 dim: 4 }\n'
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
        "  convolution_param { num_output: 3 kernel_size: 1 } }\n"
        'layer { name: "shift" type: "Shift" bottom: "conv" top: "out" }\n'
    )
    yield proto
    port.unregister_layer("Shift")


def test_a_plugin_layer_with_export_python_is_written_out(shift_net, tmp_path):
    port.register_layer("Shift", ExportableShift)
    net = _seeded(shift_net)
    module, out = _generated(net, tmp_path)
    assert "class Shift(nn.Module):" in out.read_text()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(module(x), net(x)["out"], rtol=0, atol=0)


def test_a_plugin_layer_without_export_python_is_an_error_naming_it(shift_net, tmp_path):
    port.register_layer("Shift", Shift)
    net = _seeded(shift_net)
    with pytest.raises(CaffeError, match="export_python") as err:
        export_net(net, "python", tmp_path / "s.py")
    assert err.value.layer == "shift"
    # The other formats take the port as it runs, plugin layers included.
    export_net(net, "pt2", tmp_path / "s.pt2")
    prog = torch.export.load(str(tmp_path / "s.pt2")).module()
    x = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(prog(x)["out"], net(x)["out"], rtol=0, atol=0)


def test_record_carries_checksums_and_the_verdict(tmp_path, monkeypatch):
    case = ARCHITECTURES["sphereface"]
    from ._helpers import case_weights

    _, weights = case_weights(case, tmp_path)
    # A passing verdict beside the weights, as `parity run` writes it.
    port.verdict.write_verdict(
        passed=True, prototxt=case.prototxt, caffemodel=weights, seed=None,
        report="r.json", summary="test verdict",
    )  # fmt: skip
    out = tmp_path / "s.onnx"
    code = port.cli.main(
        ["export", "--prototxt", str(case.prototxt), "--caffemodel", str(weights),
         "--format", "onnx", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    record = read_record(out)
    assert record["prototxt_sha256"] == port.sha256_file(case.prototxt)
    assert record["caffemodel_sha256"] == port.sha256_file(weights)
    assert record["parity"]["verdict"] == "pass"
    assert record["files"]["s.onnx"]["bytes"] == out.stat().st_size
    assert record["opset"] == 17 and record["batch"] == "dynamic"
    import onnx

    model = onnx.load(str(out))
    assert model.opset_import[0].version == 17
    assert {o.name for o in model.graph.output} >= {"fc5", "conv1_1"}
    json.dumps(record)


def test_export_refuses_a_wrong_suffix_and_unknown_format(tmp_path):
    net = _seeded(ARCHITECTURES["sphereface"].prototxt)
    with pytest.raises(CaffeError, match=r"ends in \.pt2"):
        export_net(net, "pt2", tmp_path / "x.onnx")
    with pytest.raises(CaffeError, match="unknown export format"):
        export_net(net, "tflite", tmp_path / "x.tflite")
    assert not list(tmp_path.iterdir())


def test_export_from_a_convert_artefact(tmp_path, capsys):
    case = ARCHITECTURES["hed"]
    from ._helpers import case_weights

    _, weights = case_weights(case, tmp_path)
    conv = tmp_path / "hed.safetensors"
    assert port.cli.main(["convert", "--prototxt", str(case.prototxt), "--caffemodel",
                          str(weights), "--out", str(conv)]) == 0  # fmt: skip
    out = tmp_path / "exp" / "hed.py"
    out.parent.mkdir()
    assert port.cli.main(["export", "--artefact", str(conv), "--format", "python",
                          "--out", str(out)]) == 0  # fmt: skip
    record = read_record(out)
    assert record["prototxt_sha256"] == port.sha256_file(case.prototxt)
    assert record["caffemodel_sha256"] == port.sha256_file(weights)
    from safetensors.torch import load_file

    module = _import(out, "Hed_reduced")()
    module.load_state_dict(load_file(str(out.with_suffix(".safetensors"))))
    x = torch.from_numpy(np.asarray(next(iter(case.inputs().values()))))
    want = port.load_caffe(case.prototxt, weights)(x)
    got = module.eval()(x.clone())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_layer_net_exports_and_runs_as_the_port(name, fmt, tmp_path):
    """pt2 and onnx take every layer type (README's export table); their outputs are the port's."""
    case = CASES[name]
    net = _seeded(case.prototxt, case.seed)
    out = tmp_path / f"n.{fmt}"
    export_net(net, fmt, out)
    inputs = case.inputs()
    want = {
        k: v.detach().numpy()
        for k, v in net({k: torch.from_numpy(v) for k, v in inputs.items()}).items()
    }
    if fmt == "pt2":
        got = torch.export.load(str(out)).module()(
            *[torch.from_numpy(inputs[k]) for k in net.netdef.inputs]
        )
        got = {k: got[k].detach().numpy() for k in want}
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))
    for k, v in want.items():
        scale = float(np.abs(v).max()) or 1.0
        # ONNX Runtime's kernels sum in other orders than torch's: float32 rounding, measured
        # below 1e-6 of each output's range on these nets.
        assert float(np.abs(got[k] - v).max()) <= 1e-5 * scale, (k, fmt)
