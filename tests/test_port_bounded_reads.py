"""Issue 22, item 3: every read is bounded (port.limits, port.arrays).

Devices and FIFOs are refused, each kind of file has a size cap with its environment variable, and
``.npy``/``.npz`` headers are checked before any data is decompressed or allocated.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import port
from port.arrays import load_npy, load_npz, npz_headers
from port.caffemodel import read_caffemodel
from port.dump import read_input_batch
from port.limits import CAPS, read_text
from port.schema import load_proto

ROOT = Path(__file__).resolve().parents[1]
FIFO_OK = hasattr(os, "mkfifo")


def _header(shape, descr="<f4", fortran=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}
    )
    return buf.getvalue()


def _cli(tool: str, *args: str, env: dict | None = None, timeout: int = 120):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", tool, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )


def _one_error_line(proc, tool: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


# --- devices, FIFOs, folders ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "reader",
    [
        port.load_prototxt,
        port.load,
        load_proto,
        read_caffemodel,
        load_npy,
        load_npz,
    ],
)
def test_dev_zero_is_refused_at_once(reader):
    t0 = time.monotonic()
    with pytest.raises(port.CaffeError, match="not a regular file \\(a character device\\)"):
        reader("/dev/zero")
    assert time.monotonic() - t0 < 5


def test_folder_is_refused(tmp_path):
    with pytest.raises(port.CaffeError, match="not a regular file \\(a folder\\)"):
        port.load_prototxt(tmp_path)


@pytest.mark.skipif(not FIFO_OK, reason="no FIFOs on this system")
def test_fifo_as_proto_does_not_block(tmp_path, tiny_prototxt):
    fifo = tmp_path / "fork.proto"
    os.mkfifo(fifo)
    proc = _cli(
        "port", "inspect", "--prototxt", str(tiny_prototxt), "--proto", str(fifo), timeout=90
    )
    line = _one_error_line(proc, "port")
    assert str(fifo) in line and "a FIFO" in line


def test_parity_run_prototxt_dev_zero():
    line = _one_error_line(_cli("parity", "run", "--prototxt", "/dev/zero"), "parity")
    assert "/dev/zero" in line and "not a regular file" in line


def test_port_inspect_proto_dev_zero(tiny_prototxt):
    proc = _cli("port", "inspect", "--prototxt", str(tiny_prototxt), "--proto", "/dev/zero")
    assert "/dev/zero" in _one_error_line(proc, "port")


# --- caps ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CAPS))
def test_every_cap_names_file_cap_and_variable(kind, tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 2000)
    monkeypatch.setenv(CAPS[kind].env, "0.001")  # 1000 bytes
    with pytest.raises(port.CaffeError) as err:
        read_text(path, kind)
    msg = str(err.value)
    assert str(path) in msg and "0.001 MB cap" in msg and f"{CAPS[kind].env}=<MB>" in msg


def test_cap_just_fits(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    monkeypatch.setenv("CAFFE_MFV_MAX_DEFINITION_MB", "0.001")
    assert read_text(path, "definition") == "x" * 1000


@pytest.mark.parametrize("value", ["0", "-3", "lots", "nan", "inf"])
def test_bad_cap_value_is_named(value, tmp_path, monkeypatch, tiny_prototxt):
    monkeypatch.setenv("CAFFE_MFV_MAX_DEFINITION_MB", value)
    with pytest.raises(port.CaffeError, match="CAFFE_MFV_MAX_DEFINITION_MB"):
        port.load_prototxt(tiny_prototxt)


def test_definition_not_utf8_names_line(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_bytes(b'name: "a"\n\n# caf\xe9\n')
    with pytest.raises(port.CaffeError) as err:
        port.load_prototxt(path)
    assert err.value.line == 3 and "not UTF-8" in str(err.value)


def test_cli_cap_message(tiny_prototxt):
    proc = _cli(
        "port", "inspect", "--prototxt", str(tiny_prototxt),
        env={"CAFFE_MFV_MAX_DEFINITION_MB": "0.0001"},
    )  # fmt: skip
    line = _one_error_line(proc, "port")
    assert "CAFFE_MFV_MAX_DEFINITION_MB" in line and str(tiny_prototxt) in line


# --- npz: header first ---------------------------------------------------------------------------

ARRAYS = {
    "data/conv1": np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4),
    "diff/a/b": np.linspace(-1, 1, 7),
    "fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    "empty": np.zeros((0, 5), np.float32),
    "scalar": np.array(3.5),
    "ints": np.arange(5, dtype=">i8"),
}


@pytest.mark.parametrize("compressed", [True, False])
def test_npz_round_trip_matches_numpy(tmp_path, compressed):
    path = tmp_path / "a.npz"
    (np.savez_compressed if compressed else np.savez)(path, **ARRAYS)
    got = load_npz(path)
    with np.load(path) as ref:
        assert list(got) == list(ref.files)
        for key in ref.files:
            assert got[key].dtype == ref[key].dtype and got[key].shape == ref[key].shape
            assert np.array_equal(got[key], ref[key])
    assert {k: h.shape for k, h in npz_headers(path).items()} == {
        k: v.shape for k, v in ARRAYS.items()
    }


def _bomb(path: Path, n_floats: int) -> None:
    """A deflated member of ``n_floats`` zeros with a truthful header: it compresses ~1000x."""
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z,
        z.open("data/fc.npy", "w", force_zip64=True) as m,
    ):
        m.write(_header((n_floats,)))
        chunk = bytes(1 << 22)
        left = n_floats * 4
        while left:
            m.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))


def test_npz_bomb_refused_before_decompressing(tmp_path, monkeypatch):
    path = tmp_path / "bomb.npz"
    _bomb(path, 50_000_000)  # 200 MB inflated
    assert path.stat().st_size < 1_000_000
    monkeypatch.setenv("CAFFE_MFV_MAX_NPZ_MB", "100")
    tracemalloc.start()
    try:
        with pytest.raises(port.CaffeError, match="declares 200.0 MB, over the 100 MB cap"):
            load_npz(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak  # the header's block, not the array


def test_npz_header_declaring_373_gib_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data/fc.npy", _header((100_000_000_000,)) + bytes(64))
    tracemalloc.start()
    try:
        with pytest.raises(port.CaffeError, match="declares 400000.0 MB, over the 2000 MB cap"):
            load_npz(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak


def test_npz_header_lying_to_the_zip_directory(tmp_path):
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data/fc.npy", _header((1000,)) + bytes(64))
    with pytest.raises(port.CaffeError, match="header declares .* but the archive says 64 bytes"):
        load_npz(path)


def test_random_bytes_are_not_an_npz(tmp_path):
    path = tmp_path / "r.npz"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(port.CaffeError, match="not an npz \\(zip\\) archive") as err:
        load_npz(path)
    assert "pickle" not in str(err.value)


@pytest.mark.parametrize(
    "value",
    [np.array(["a", "bc"]), np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]), np.array([None, 1])],
    ids=["str", "record", "object"],
)
def test_npz_refuses_non_numeric_members(tmp_path, value):
    path = tmp_path / "s.npz"
    np.savez(path, **{"data/fc": value}, allow_pickle=True)
    with pytest.raises(port.CaffeError, match="member 'data/fc' has dtype"):
        load_npz(path)


def test_npz_expect_checks_shapes_before_reading(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, **ARRAYS)
    with pytest.raises(port.CaffeError, match="'data/conv1' declares shape \\(1, 2, 3, 4\\)"):
        load_npz(path, expect={"data/conv1": (1, 2, 4, 3)})
    assert load_npz(path, expect={"data/conv1": (1, 2, 3, 4), "absent": (1,)})["scalar"] == 3.5


def test_npz_crc_damage_is_caught(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, x=np.arange(1000, dtype=np.float32))  # stored: the data bytes are in the file
    raw = bytearray(path.read_bytes())
    at = raw.find(np.arange(1000, dtype=np.float32).tobytes()[400:408])
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(port.CaffeError, match="member 'x' cannot be read"):
        load_npz(path)


def test_npz_cut_short_is_caught(tmp_path):
    path = tmp_path / "a.npz"
    np.savez_compressed(path, **ARRAYS)
    raw = path.read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 5):
        path.write_bytes(raw[:cut])
        with pytest.raises(port.CaffeError):
            load_npz(path)


# --- npy -----------------------------------------------------------------------------------------


def test_npy_round_trip(tmp_path):
    for name, value in ARRAYS.items():
        path = tmp_path / f"{name.replace('/', '_')}.npy"
        np.save(path, value)
        got = load_npy(path)
        assert got.dtype == value.dtype and np.array_equal(got, value), name


def test_npy_declaring_373_gib_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(_header((100_000_000_000,)) + bytes(64))
    tracemalloc.start()
    try:
        with pytest.raises(port.CaffeError, match="CAFFE_MFV_MAX_NPY_MB"):
            load_npy(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_npy_size_mismatch(tmp_path):
    path = tmp_path / "a.npy"
    path.write_bytes(_header((10,)) + bytes(39))
    with pytest.raises(port.CaffeError, match="the file holds 39 bytes of data"):
        load_npy(path)


def test_port_dump_refuses_bad_batches(tmp_path):
    cases = {
        "str": np.array(["a"]),
        "nan": np.full((1, 3, 2, 2), np.nan, np.float32),
        "complex": np.zeros((1, 3, 2, 2), np.complex64),
        "empty": np.zeros((0, 3, 2, 2), np.float32),
        "flat": np.zeros(12, np.float32),
    }
    messages = {
        "str": "dtype <U1; plain numbers",
        "nan": "holds 12 NaN or infinite value",
        "complex": "real numbers (float or int) expected",
        "empty": "no dimension may be 0",
        "flat": "(N, C, H, W) expected",
    }
    for name, value in cases.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, value)
        with pytest.raises(
            port.CaffeError, match=messages[name].replace("(", "\\(").replace(")", "\\)")
        ):
            read_input_batch(path)


# --- messages that named the wrong thing ---------------------------------------------------------


def _one_blob_model(path: Path, dims: list[int], values: int) -> None:
    from port import schema

    net = schema.NetParameter()
    blob = net.layer.add(name="fc", type="InnerProduct").blobs.add()
    blob.shape.dim.extend(dims)
    blob.data.extend([0.0] * values)
    path.write_bytes(net.SerializeToString())


def test_caffemodel_negative_dimension_is_named(tmp_path):
    path = tmp_path / "neg.caffemodel"
    _one_blob_model(path, [-5, 2], 10)
    with pytest.raises(port.CaffeError, match="shape \\(-5, 2\\) has a negative dimension"):
        read_caffemodel(path)


def test_caffemodel_dimensions_whose_product_wraps_are_refused(tmp_path):
    # 2**32 * 2**32 is 0 in int64 arithmetic, which would match an empty blob.
    path = tmp_path / "wrap.caffemodel"
    _one_blob_model(path, [2**32, 2**32], 0)
    with pytest.raises(port.CaffeError, match="needs 18446744073709551616"):
        read_caffemodel(path)
