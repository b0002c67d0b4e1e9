"""Checks made before any work starts: output paths, sweep parameters, plugins (issue 22).

Every case here must fail with one ``tool: error:`` line and exit 2 before a model is loaded, and
leave nothing behind.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from port.command import check_output_dir, check_output_file
from port.errors import ToolError, WriteError

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# --- the path checks ------------------------------------------------------------------------


def test_output_file_checks(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    assert check_output_file(tmp_path / "new.json") == tmp_path / "new.json"
    assert check_output_file(tmp_path / "a_file") == tmp_path / "a_file"  # replaced, atomically
    assert check_output_file(tmp_path / "new" / "deeper" / "r.json")  # folders get made
    with pytest.raises(WriteError, match="--html: is a folder"):
        check_output_file(tmp_path / "a_dir", option="--html")
    with pytest.raises(WriteError, match="not a regular file"):
        check_output_file("/dev/null")
    with pytest.raises(WriteError, match="a_file is a file, not a folder"):
        check_output_file(tmp_path / "a_file" / "under" / "r.json")
    assert _files(tmp_path) == ["a_dir", "a_file"]  # the checks create nothing


def test_output_dir_checks(tmp_path):
    (tmp_path / "a_file").write_text("x")
    assert check_output_dir(tmp_path) == tmp_path
    assert check_output_dir(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    with pytest.raises(WriteError, match="--out: not a folder"):
        check_output_dir(tmp_path / "a_file")
    with pytest.raises(WriteError, match="not a folder"):
        check_output_dir("/dev/null")
    with pytest.raises(WriteError, match="a_file is a file, not a folder"):
        check_output_dir(tmp_path / "a_file" / "out")
    assert _files(tmp_path) == ["a_file"]


@pytest.mark.skipif(ROOT_USER, reason="root writes anywhere: permissions cannot be tested")
def test_read_only_places_are_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.json").write_text("{}")
    ro.chmod(0o500)
    (ro / "old.json").chmod(0o400)
    try:
        with pytest.raises(WriteError, match="cannot write in"):
            check_output_dir(ro / "out")
        with pytest.raises(WriteError, match="cannot write"):
            check_output_dir(ro)
        with pytest.raises(WriteError, match="cannot be written"):
            check_output_file(ro / "old.json")
    finally:
        ro.chmod(0o700)


# --- the command lines ----------------------------------------------------------------------


def _one_error_line(tool, err):
    lines = [line for line in err.splitlines() if line.startswith(f"{tool}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_parity_run_writes_nothing_when_one_output_is_bad(tmp_path, capsys, monkeypatch):
    from parity.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.html").mkdir()
    argv = ["run", "--model", "caffenet", "--json", "r.json", "--html", "folder.html"]
    assert main(argv) == 2
    line = _one_error_line("parity", capsys.readouterr().err)
    assert "folder.html: --html: is a folder" in line
    assert _files(tmp_path) == ["folder.html"]


def test_parity_run_checks_the_verdict_file_before_the_run(tmp_path, capsys, monkeypatch):
    from parity.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["run", "--model", "caffenet", "--json", "r.json", "--verdict-file", "/dev/null"]
    assert main(argv) == 2
    assert "--verdict-file: not a regular file" in _one_error_line(
        "parity", capsys.readouterr().err
    )
    assert _files(tmp_path) == []


def _mfv_main():
    pytest.importorskip("torchvision")
    from mfv.cli import main

    return main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--k", "0"], "--k must be at least 1, got 0"),
        (["--k", "-1"], "--k must be at least 1, got -1"),
        (["--m", "0"], "--m must be at least 1, got 0"),
        (["--units", "0-99999999999"], "unit 99999999999 is out of range"),
        (["--units", "5,1000000"], "unit 1000000 is out of range"),
        (["--model", "no.such.model"], "unknown model 'no.such.model'"),
    ],
)
def test_mfv_sweep_parameters_checked_before_any_work(argv, message, tmp_path, capsys):
    main = _mfv_main()
    base = ["sweep", "--model", "caffenet", "--units", "0-1", "--out", str(tmp_path / "o")]
    assert main([*base, "--images", str(tmp_path), *argv]) == 2
    assert message in _one_error_line("mfv", capsys.readouterr().err)
    assert _files(tmp_path) == []


@pytest.mark.parametrize("command", ["visualize", "sweep", "means"])
def test_mfv_out_that_is_a_file_is_refused_before_the_model_loads(command, tmp_path, capsys):
    main = _mfv_main()
    (tmp_path / "taken").write_text("x")
    extra = {
        "visualize": ["--unit", "1", "--init", "noise"],
        "sweep": ["--units", "0", "--images", str(tmp_path)],
        "means": ["--images", str(tmp_path)],
    }[command]
    argv = [command, "--model", "caffenet", "--out", str(tmp_path / "taken"), *extra]
    assert main(argv) == 2
    assert "taken: --out: not a folder" in _one_error_line("mfv", capsys.readouterr().err)
    assert _files(tmp_path) == ["taken"]


def test_mfv_diff_checks_its_outputs_first(tmp_path, capsys):
    main = _mfv_main()
    (tmp_path / "report.html").mkdir()
    argv = ["diff", str(tmp_path), str(tmp_path), "--html", str(tmp_path / "report.html")]
    assert main(argv) == 2
    assert "--html: is a folder" in _one_error_line("mfv", capsys.readouterr().err)


# --- plugins --------------------------------------------------------------------------------


def _inspect(tmp_path, plugin, capsys):
    from port.cli import main

    net = tmp_path / "n.prototxt"
    net.write_text('input: "data" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n')
    status = main(["inspect", "--prototxt", str(net), "--plugin", str(plugin)])
    return status, capsys.readouterr()


def test_a_plugin_may_not_end_the_process(tmp_path, capsys):
    plugin = tmp_path / "quits.py"
    plugin.write_text("import sys\nsys.exit(0)\n")
    status, out = _inspect(tmp_path, plugin, capsys)
    assert status == 2 and out.out == ""
    line = _one_error_line("port", out.err)
    assert f"plugin {plugin} tried to end the process (sys.exit(0))" in line


def test_a_plugin_path_without_py_gets_a_clear_message(tmp_path, capsys):
    plugin = tmp_path / "layers.txt"
    plugin.write_text("x = 1\n")
    status, out = _inspect(tmp_path, plugin, capsys)
    assert status == 2
    line = _one_error_line("port", out.err)
    assert "not a .py file" in line and "NoneType" not in line


def test_a_layer_without_top_shapes_fails_at_registration():
    import port
    from port.layers import CaffeLayer

    class NoShapes(CaffeLayer):
        def forward(self, x):
            return [x]

    with pytest.raises(TypeError, match="does not define top_shapes"):
        port.register_layer("ReLU", NoShapes, replace=True)
    with pytest.raises(TypeError, match="does not define top_shapes"):
        port.register_layer("NoShapesType", NoShapes)
    from port.layers import CUSTOM_LAYERS

    assert ("ReLU", None, None) not in CUSTOM_LAYERS


def test_plugin_errors_are_tool_errors():
    from port.plugins import load_plugin

    with pytest.raises(ToolError, match="no such file"):
        load_plugin("/nonexistent/plugin.py")


# --- port dump's input batch ----------------------------------------------------------------

TINY_NET = (
    'input: "data" input_shape { dim: 1 dim: 1 dim: 2 dim: 2 }\n'
    'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (np.full((1, 1, 2, 2), np.nan, np.float32), "4 NaN or infinite value(s)"),
        (np.array([[[[0, np.inf], [1, 2]]]], np.float64), "1 NaN or infinite value(s)"),
        (np.ones((1, 1, 2, 2), np.complex64), "dtype complex64; real numbers"),
        (np.ones((1, 1, 2, 2), bool), "dtype bool; real numbers"),
        (np.zeros((0, 1, 2, 2), np.float32), "no dimension may be 0"),
        (np.array([[[["a", "b"], ["c", "d"]]]]), "dtype <U1; plain numbers"),
        (np.ones((2, 2), np.float32), "(N, C, H, W) expected"),
    ],
)
def test_port_dump_refuses_inputs_no_caffe_run_takes(batch, message, tmp_path, capsys):
    from port.cli import main

    net, weights = tmp_path / "n.prototxt", tmp_path / "w.caffemodel"
    net.write_text(TINY_NET)
    assert main(["seed-weights", "--prototxt", str(net), "--out", str(weights)]) == 0
    np.save(tmp_path / "x.npy", batch)
    before = _files(tmp_path)
    argv = ["dump", "--prototxt", str(net), "--caffemodel", str(weights)]
    argv += ["--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "d.npz")]
    capsys.readouterr()
    assert main(argv) == 2
    line = _one_error_line("port", capsys.readouterr().err)
    assert "x.npy" in line and message in line
    assert _files(tmp_path) == before


def test_port_dump_still_takes_a_finite_batch(tmp_path, capsys):
    from port.cli import main

    net, weights = tmp_path / "n.prototxt", tmp_path / "w.caffemodel"
    net.write_text(TINY_NET)
    assert main(["seed-weights", "--prototxt", str(net), "--out", str(weights)]) == 0
    np.save(tmp_path / "x.npy", np.array([[[[-1, 2], [3, -4]]]], np.float32))
    argv = ["dump", "--prototxt", str(net), "--caffemodel", str(weights)]
    assert main([*argv, "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "d.npz")]) == 0
    with np.load(tmp_path / "d.npz") as d:
        np.testing.assert_array_equal(d["data/r"], [[[[0, 2], [3, 0]]]])


# --- mfv --weights ----------------------------------------------------------------------------


class _Evil:  # pickled by reference: torch.load(weights_only=True) refuses to build it
    pass


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("evil", "refused: not a torch.save file of tensors only"),
        ("garbage", "refused: not a torch.save file of tensors only"),
        ("list", "holds a list, not a state_dict"),
        ("wrong", "not a squeezenet1_1 state_dict"),
    ],
)
def test_mfv_weights_that_are_not_a_state_dict_give_one_line(content, message, tmp_path, capsys):
    main = _mfv_main()
    import torch

    path = tmp_path / "w.pt"
    if content == "garbage":
        path.write_bytes(b"not a zip at all")
    else:
        obj = {"evil": {"x": _Evil()}, "list": [torch.zeros(1)], "wrong": {"x": torch.zeros(1)}}
        torch.save(obj[content], path)
    argv = ["layers", "--model", "torchvision.squeezenet1_1", "--weights", str(path)]
    assert main(argv) == 2
    line = _one_error_line("mfv", capsys.readouterr().err)
    assert str(path) in line and message in line
    assert "weights_only=False" not in line


# --- mfv sweep's input files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.json", '{"1": "a", "1": "b"}', "unit '1' is mapped twice"),
        ("m.json", '{"1": "a",\n "2": }', "m.json:2:7: not valid JSON"),
        ("m.tsv", b"1\ta\xff\n", "not UTF-8 text (byte 3)"),
    ],
)
def test_mfv_sweep_unit_map_errors_name_the_file(name, content, message, tmp_path, capsys):
    main = _mfv_main()
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = ["sweep", "--model", "caffenet", "--units", "1", "--unit-map", str(path)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line("mfv", capsys.readouterr().err)
    assert f"--unit-map {path}" in line and message in line
    assert not (tmp_path / "o").exists()


def test_mfv_sweep_needs_a_folder_of_images(tmp_path, capsys):
    main = _mfv_main()
    argv = ["sweep", "--model", "caffenet", "--units", "1", "--out", str(tmp_path / "o")]
    assert main([*argv, "--images", str(tmp_path / "none")]) == 2
    assert "--images" in _one_error_line("mfv", capsys.readouterr().err)
    assert main(argv) == 2
    assert "give --images ROOT" in _one_error_line("mfv", capsys.readouterr().err)


def test_bad_input_found_inside_mfv_is_a_tool_error_not_a_bug(tmp_path):
    # The command lines map ToolError to exit 2 and anything else to 70 (a bug): input mistakes
    # that mfv's library detects (a schedule, k and m, the unit list) must be ToolErrors.
    from mfv.codes import check_k_m
    from mfv.octaves import load_schedule
    from port.errors import ToolError

    bad = tmp_path / "schedule.json"
    bad.write_text('{"octaves": []}')
    with pytest.raises(ToolError, match="non-empty list"):
        load_schedule(bad)
    with pytest.raises(ToolError):
        check_k_m(0, 15)
