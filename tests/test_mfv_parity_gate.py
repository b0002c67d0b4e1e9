"""The parity gate: MFV refuses Caffe weights without a passing verdict for exactly those files."""

from __future__ import annotations

import hashlib
import json

import pytest

from port.verdict import FORMAT, ParityError, check_parity, verdict_path


@pytest.fixture
def files(tmp_path):
    proto, weights = tmp_path / "net.prototxt", tmp_path / "net.caffemodel"
    proto.write_text("name: 'x'\n")
    weights.write_bytes(b"\x00\x01weights")
    return proto, weights


def _verdict(proto, weights, verdict="pass", **over):
    data = {
        "format": FORMAT,
        "verdict": verdict,
        "report": "report.json",
        "prototxt_sha256": hashlib.sha256(proto.read_bytes()).hexdigest(),
        "caffemodel_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        **over,
    }
    path = verdict_path(proto, weights)
    path.write_text(json.dumps(data))
    return path


def test_default_location_is_beside_the_weights(files):
    proto, weights = files
    assert verdict_path(proto, weights) == weights.parent / "net.caffemodel.parity.json"
    assert verdict_path(proto, None, seed=3).name == "net.seed3.parity.json"


def test_pass_records_the_report(files):
    proto, weights = files
    path = _verdict(proto, weights)
    info = check_parity(proto, weights)
    assert info["status"] == "pass" and info["verdict_file"] == str(path)
    assert info["report"] == str(path.parent / "report.json")


def test_missing_fail_and_stale_are_refused(files):
    proto, weights = files
    with pytest.raises(ParityError, match="no parity verdict"):
        check_parity(proto, weights)
    _verdict(proto, weights, verdict="fail")
    with pytest.raises(ParityError, match="FAILED"):
        check_parity(proto, weights)
    _verdict(proto, weights)
    weights.write_bytes(b"other weights")  # the verdict no longer describes these bytes
    with pytest.raises(ParityError, match="other weights"):
        check_parity(proto, weights)
    _verdict(proto, weights, verdict="maybe")
    with pytest.raises(ParityError, match="must be 'pass' or 'fail'"):
        check_parity(proto, weights)


def test_no_parity_check_records_instead_of_raising(files):
    proto, weights = files
    _verdict(proto, weights, verdict="fail")
    info = check_parity(proto, weights, required=False)
    assert info["status"] == "skipped" and info["status_if_checked"] == "fail"
    assert "--no-parity-check" in info["message"]


def test_explicit_verdict_file_for_seeded_weights(files, tmp_path):
    proto, _ = files
    path = tmp_path / "v.json"
    path.write_text(
        json.dumps(
            {
                "verdict": "pass",
                "report": "/abs/r.json",
                "seed": 0,
                "caffemodel_sha256": None,
                "prototxt_sha256": hashlib.sha256(proto.read_bytes()).hexdigest(),
            }
        )
    )
    assert check_parity(proto, None, seed=0, verdict_file=path)["report"] == "/abs/r.json"
    with pytest.raises(ParityError, match="weight seed"):
        check_parity(proto, None, seed=1, verdict_file=path)
    data = json.loads(path.read_text())
    path.write_text(
        json.dumps({**data, "seed": None})
    )  # which seeded weights? cannot tell: refused
    with pytest.raises(ParityError, match="weight seed None"):
        check_parity(proto, None, seed=0, verdict_file=path)


def test_each_configuration_is_vouched_for_apart(files, tmp_path):
    """A verdict records each configuration; the gate asks for the one that will run, and a format
    /1 file (no configurations) vouches for the fast float32 port alone."""
    from port.verdict import write_verdict

    proto, weights = files
    write_verdict(
        passed=False,
        prototxt=proto,
        caffemodel=weights,
        seed=None,
        report=tmp_path / "r.json",
        summary="s",
        configurations={"float32": True, "accurate": False},
    )
    data = json.loads(verdict_path(proto, weights).read_text())
    assert data["format"] == FORMAT == "caffe-mfv-parity-verdict/2"
    assert data["verdict"] == "pass"  # the fast port's, as a format /1 reader expects
    assert data["configurations"] == {"float32": "pass", "accurate": "fail"}
    info = check_parity(proto, weights)
    assert info["status"] == "pass" and info["configuration"] == "float32"
    with pytest.raises(ParityError, match="FAILED for this model's accurate configuration"):
        check_parity(proto, weights, configuration="accurate")
    skipped = check_parity(proto, weights, configuration="accurate", required=False)
    assert skipped["status_if_checked"] == "fail" and skipped["configuration"] == "accurate"
    _verdict(proto, weights, format="caffe-mfv-parity-verdict/1")
    assert check_parity(proto, weights)["status"] == "pass"
    with pytest.raises(ParityError, match="no parity verdict for the accurate configuration"):
        check_parity(proto, weights, configuration="accurate")
    with pytest.raises(ValueError, match="configuration"):
        check_parity(proto, weights, configuration="float16")


def test_mfv_accurate_runs_the_accurate_port_and_needs_its_verdict(tmp_path):
    """mfv's --accurate builds the port with float64 accumulation and checks that configuration's
    verdict; the default mode runs the fast port on the float32 verdict. Outputs record which."""
    from mfv.models import load_model
    from port.verdict import write_verdict

    from .conftest import TINY_NET

    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY_NET)
    vfile = tmp_path / "v.json"
    write_verdict(
        passed=True,
        prototxt=proto,
        caffemodel=None,
        seed=0,
        report=tmp_path / "r.json",
        summary="s",
        path=vfile,
        configurations={"float32": True, "accurate": False},
    )
    fast = load_model("caffe", prototxt=proto, parity_file=vfile)
    assert fast.module.accumulate == "float32"
    assert fast.info["configuration"] == fast.info["parity"]["configuration"] == "float32"
    with pytest.raises(ParityError, match="accurate configuration"):
        load_model("caffe", prototxt=proto, parity_file=vfile, accurate=True)
    acc = load_model("caffe", prototxt=proto, parity_file=vfile, accurate=True, parity_check=False)
    assert acc.module.accumulate == "float64"
    assert acc.info["configuration"] == "accurate"
    assert acc.info["parity"]["status_if_checked"] == "fail"
