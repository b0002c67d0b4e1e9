"""Issue 13 regressions for port: geometry Caffe rejects, damaged weights, odd names, outputs.

Each test names the numbered case of the issue it guards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import port
from port import caffemodel as cm
from port.atomic import atomic_path, remove_stale_temporaries
from port.caffemodel import read_caffemodel, write_caffemodel
from port.cli import main
from port.errors import WriteError
from port.validate import MAX_BLOB_COUNT, validate_netdef

from ._helpers import seeded_model

ROOT = Path(__file__).resolve().parents[1]
HEAD = 'name: "t"\ninput: "data"\ninput_shape { dim: %s }\n'


def _net(body: str, dims: str = "1 dim: 3 dim: 4 dim: 4") -> port.NetDef:
    return port.netdef_from_text(HEAD % dims + body, path="t.prototxt")


def _raises(body: str, dims: str = "1 dim: 3 dim: 4 dim: 4", **expect) -> port.CaffeError:
    netdef = _net(body, dims)
    with pytest.raises(port.CaffeError) as err:
        port.CaffeNet(netdef)
    for k, v in expect.items():
        assert getattr(err.value, k) == v, (k, str(err.value))
    return err.value


# --- case 4: geometry ----------------------------------------------------------------------------


def test_kernel_larger_than_padded_input():
    e = _raises(
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n'
        "  convolution_param { num_output: 4 kernel_size: 15 } }\n",
        layer="c",
        field="convolution_param.kernel_size",
        line=4,
    )
    assert "15x15" in str(e) and "4x4" in str(e)


def test_pooling_window_larger_than_padded_input():
    e = _raises(
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n'
        "  pooling_param { pool: MAX kernel_size: 9 stride: 2 } }\n",
        layer="p",
        field="pooling_param.kernel_size",
    )
    assert "pooling window" in str(e)


def test_flatten_axis_after_end_axis():
    _raises(
        'layer { name: "f" type: "Flatten" bottom: "data" top: "f"\n'
        "  flatten_param { axis: 3 end_axis: 1 } }\n",
        layer="f",
        field="flatten_param.axis",
    )


@pytest.mark.parametrize("kind", ["Convolution", "InnerProduct"])
def test_num_output_zero(kind):
    param = "convolution_param" if kind == "Convolution" else "inner_product_param"
    extra = " kernel_size: 1" if kind == "Convolution" else ""
    _raises(
        f'layer {{ name: "l" type: "{kind}" bottom: "data" top: "l"\n'
        f"  {param} {{ num_output: 0{extra} }} }}\n",
        layer="l",
        field=f"{param}.num_output",
    )


def test_blob_produced_twice():
    e = _raises(
        'layer { name: "a" type: "ReLU" bottom: "data" top: "x" }\n'
        'layer { name: "b" type: "Sigmoid" bottom: "data" top: "x" }\n',
        layer="b",
        field="top",
    )
    assert "multiple sources" in str(e)
    # in place is fine
    port.CaffeNet(
        _net(
            'layer { name: "a" type: "ReLU" bottom: "data" top: "x" }\n'
            'layer { name: "b" type: "Sigmoid" bottom: "x" top: "x" }\n'
        )
    )


@pytest.mark.parametrize("dims", ["1 dim: 0 dim: 4 dim: 4", "1 dim: 3 dim: -2 dim: 4"])
def test_zero_or_negative_input_dims(dims):
    _raises('layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n', dims, field="input_shape")


def test_absurd_shape_is_refused_before_allocation():
    e = _raises(
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
        "  inner_product_param { num_output: 10 } }\n",
        "1 dim: 3 dim: 100000 dim: 100000",
        field="input_shape",
    )
    assert "INT_MAX" in str(e)
    # A weight blob past Caffe's limit is refused too, and named.
    netdef = _net(
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
        "  inner_product_param { num_output: 1000000 } }\n",
        "1 dim: 3 dim: 1000 dim: 1000",
    )
    with pytest.raises(port.CaffeError, match="INT_MAX") as err:
        validate_netdef(netdef)
    assert err.value.layer == "fc" and err.value.field == "blobs"
    assert MAX_BLOB_COUNT == 2**31 - 1


def test_weights_larger_than_memory_refused():
    netdef = _net(
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
        "  inner_product_param { num_output: 1000 } }\n"
    )
    with pytest.raises(port.CaffeError, match="GB"):
        validate_netdef(netdef, memory_bytes=1000)


def test_seed_weights_cli_refuses_bad_geometry(tmp_path, capsys):
    p = tmp_path / "n.prototxt"
    p.write_text(
        HEAD % "1 dim: 3 dim: 4 dim: 4" + 'layer { name: "c" type: "Convolution" '
        'bottom: "data" top: "c" convolution_param { num_output: 0 kernel_size: 1 } }\n'
    )
    out = tmp_path / "w.caffemodel"
    assert main(["seed-weights", "--prototxt", str(p), "--out", str(out)]) == 2
    assert not out.exists() and "num_output" in capsys.readouterr().err


# --- cases 5, 6, 7: caffemodel -------------------------------------------------------------------


def _layer_spans(data: bytes) -> list[tuple[str, int, int]]:
    """(name, start, end) of each top-level layer entry, from the wire format."""
    spans = []
    pos = 0
    while pos < len(data):
        key, body = cm._varint(data, pos, len(data))
        end = cm._field_end(data, pos, len(data))
        if key >> 3 == cm._NET_LAYER:
            length, start = cm._varint(data, body, len(data))
            name, _, _ = cm._parse_layer(data, start, start + length, cm._V2)
            spans.append((name, pos, end))
        pos = end
    return spans


def test_truncated_caffemodel_names_the_truncated_layer(tiny_prototxt, tmp_path):
    _, _, path = seeded_model(tiny_prototxt, tmp_path)
    data = path.read_bytes()
    for name, start, end in _layer_spans(data):
        if end - start < 40:
            continue
        cut = tmp_path / f"cut_{name}.caffemodel"
        cut.write_bytes(data[: (start + end) // 2])
        with pytest.raises(port.CaffeError, match="truncated") as err:
            read_caffemodel(cut)
        assert err.value.layer == name, (name, str(err.value))


def test_double_data_preferred(tmp_path):
    from port import schema

    net = schema.NetParameter(name="d")
    layer = net.layer.add(name="l", type="InnerProduct")
    blob = layer.blobs.add()
    blob.shape.dim.extend([2])
    blob.data.extend([1.0, 2.0])
    blob.double_data.extend([3.0, 4.0])
    p = tmp_path / "d.caffemodel"
    p.write_bytes(net.SerializeToString())
    np.testing.assert_array_equal(read_caffemodel(p)["l"][0], [3.0, 4.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_weights_refused_by_convert_inspect_dump(tiny_prototxt, tmp_path, capsys, bad):
    netdef, weights, _ = seeded_model(tiny_prototxt, tmp_path)
    weights["fc"][0][1, 2] = bad
    w = tmp_path / "bad.caffemodel"
    write_caffemodel(w, netdef, weights)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 13, 11), np.float32))
    for argv in (
        ["inspect", "--prototxt", str(tiny_prototxt), "--caffemodel", str(w)],
        [
            "convert",
            "--prototxt",
            str(tiny_prototxt),
            "--caffemodel",
            str(w),
            "--out",
            str(tmp_path / "o.safetensors"),
        ],
        [
            "dump",
            "--prototxt",
            str(tiny_prototxt),
            "--caffemodel",
            str(w),
            "--input",
            str(x),
            "--out",
            str(tmp_path / "d.npz"),
        ],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "layer 'fc'" in err and "blobs[0]" in err and ("NaN" in err or "infinite" in err)
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "d.npz").exists()


# --- case 11: smaller ------------------------------------------------------------------------------


def test_unknown_field_and_bad_enum_name_the_field(tmp_path):
    for text, fld in (
        ("pooling_param { pool: MAX kernel_sizee: 3 }", "kernel_sizee"),
        ("pooling_param { pool: MAXX kernel_size: 3 }", "pool"),
    ):
        p = tmp_path / "e.prototxt"
        p.write_text(
            HEAD % "1 dim: 3 dim: 8 dim: 8" + 'layer { name: "p" type: "Pooling" '
            'bottom: "data" top: "p"\n  ' + text + " }\n"
        )
        with pytest.raises(port.CaffeError) as err:
            port.load_prototxt(p)
        assert err.value.field == fld and err.value.line == 5 and err.value.layer == "p"


def test_include_exclude_error_has_file_and_line(tmp_path):
    p = tmp_path / "i.prototxt"
    p.write_text(
        HEAD % "1 dim: 3 dim: 8 dim: 8" + 'layer { name: "r" type: "ReLU" bottom: "data" '
        'top: "r"\n include { phase: TEST } exclude { phase: TRAIN } }\n'
    )
    with pytest.raises(port.CaffeError) as err:
        port.load_prototxt(p)
    assert err.value.path == str(p) and err.value.line == 4 and err.value.layer == "r"


def test_seed_weights_on_train_only_definition(tmp_path, capsys):
    p = tmp_path / "t.prototxt"
    p.write_text(
        HEAD % "1 dim: 3 dim: 8 dim: 8" + 'layer { name: "c" type: "Convolution" '
        'bottom: "data" top: "c" include { phase: TRAIN }\n'
        " convolution_param { num_output: 2 kernel_size: 3 } }\n"
    )
    out = tmp_path / "w.caffemodel"
    assert main(["seed-weights", "--prototxt", str(p), "--out", str(out)]) == 2
    assert not out.exists() and "TEST phase" in capsys.readouterr().err


def test_dotted_layer_names_do_not_collide():
    netdef = _net(
        'layer { name: "a.b" type: "ReLU" bottom: "data" top: "x" }\n'
        'layer { name: "a\u2024b" type: "Sigmoid" bottom: "x" top: "y" }\n'
    )
    net = port.CaffeNet(netdef)
    assert net.module("a.b").caffe_type == "ReLU" and net.module("a\u2024b").caffe_type == "Sigmoid"


def test_cli_bad_outputs_and_npz_input(tiny_prototxt, tmp_path, capsys):
    _, _, w = seeded_model(tiny_prototxt, tmp_path)
    np.savez(tmp_path / "x.npz", a=np.zeros((1, 3, 13, 11), np.float32))
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 13, 11), np.float32))
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    base = ["--prototxt", str(tiny_prototxt), "--caffemodel", str(w)]
    cases = [
        (
            ["dump", *base, "--input", str(tmp_path / "x.npz"), "--out", str(tmp_path / "d.npz")],
            ".npz",
        ),
        (["convert", *base, "--out", str(tmp_path / "adir")], "folder"),
        (["convert", *base, "--out", str(tmp_path / "afile" / "o.safetensors")], "afile"),
        (
            [
                "dump",
                *base,
                "--input",
                str(tmp_path / "x.npy"),
                "--out",
                str(tmp_path / "afile" / "d"),
            ],
            "afile",
        ),
        (
            ["seed-weights", "--prototxt", str(tiny_prototxt), "--out", str(tmp_path / "adir")],
            "folder",
        ),
    ]
    for argv, word in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and word in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "adir").iterdir()) == []


# --- case 10: atomic writes -------------------------------------------------------------------------


def test_atomic_path_removes_temporaries_of_dead_processes(tmp_path):
    target = tmp_path / "w.bin"
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(child.stdout)
    stale = tmp_path / f".w.bin.tmp{dead}-abcdefgh"
    stale.write_bytes(b"x" * 100)
    mine = tmp_path / f".w.bin.tmp{os.getpid()}-zzzzzzzz"
    mine.write_bytes(b"y")
    assert remove_stale_temporaries(target) == [stale]
    mine.unlink()
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]


def test_safetensors_temporaries_live_inside_ours(tiny_prototxt, tmp_path):
    """safetensors writes its own .tmpXXXXXX beside the path it is given; after kill -9 that file
    (244 MB for CaffeNet) sat beside the artefact for good. It now lives in our private folder, which
    the next write removes once its process is gone."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".net.safetensors.tmp{int(child.stdout)}-abcdefgh"
    stale.mkdir()
    (stale / ".tmpQJuJBK").write_bytes(b"x" * 1000)  # what safetensors leaves when killed
    net = port.load_caffe(tiny_prototxt)
    seen = []
    import safetensors.numpy as stn

    real = stn.save_file

    def spy(tensors, filename, metadata=None):
        seen.append(Path(filename).parent)
        return real(tensors, filename, metadata=metadata)

    import port.artefact as artefact

    artefact.save_file, old = spy, artefact.save_file
    try:
        port.save(net, tmp_path / "net.safetensors")
    finally:
        artefact.save_file = old
    assert seen and seen[0] != tmp_path and seen[0].parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.safetensors", "tiny.prototxt"]


def test_atomic_path_is_not_a_folder(tmp_path):
    with pytest.raises(WriteError, match="folder"), atomic_path(tmp_path):
        pass


def test_sigterm_during_a_write_leaves_no_temporary(tmp_path):
    code = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
        "from port.atomic import atomic_path\n"
        f"with atomic_path({str(tmp_path / 'big.bin')!r}) as tmp:\n"
        "    tmp.write_bytes(b'x' * 1000); print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    time.sleep(0.1)
    assert list(tmp_path.iterdir()) == []


def test_validation_builds_layers_that_need_real_tensors(monkeypatch):
    """A layer whose constructor computes with tensor values cannot be built on the meta device;
    the pass builds it for real instead of refusing a valid net."""
    import torch

    from port import layers

    class Doubling(layers.CaffeLayer):
        caffe_type = "Doubling"

        def __init__(self, layer, bottom_shapes):
            super().__init__(layer, bottom_shapes)
            self.factor = float(torch.tensor([1.0, 1.0]).sum().item())  # fails on meta

        def top_shapes(self):
            return [self.bottom_shapes[0]]

        def forward(self, x):
            return [x * self.factor]

    monkeypatch.setitem(layers.LAYER_TYPES, "Doubling", Doubling)
    net = port.CaffeNet(_net('layer { name: "d" type: "Doubling" bottom: "data" top: "d" }\n'))
    assert net.module("d").factor == 2.0
