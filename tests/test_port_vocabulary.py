"""One home per concept in port: BackwardSeed, NetDef.last_writer, the repository paths."""

from __future__ import annotations

import pytest

import port
from port.netdef import netdef_from_text
from port.paths import cache_root, repo_root, shared_root
from tests.conftest import TINY_NET


@pytest.mark.parametrize(
    ("spec", "seed"),
    [
        ("fc8:945", ("fc8", 945)),
        ("inception_4a/output:3", ("inception_4a/output", 3)),
        ("a:b:7", ("a:b", 7)),  # the unit follows the last ':'
        (("fc", 2), ("fc", 2)),
        (port.BackwardSeed("fc", 2), ("fc", 2)),
    ],
)
def test_backward_seed_parses_blob_and_unit(spec, seed):
    parsed = port.BackwardSeed.parse(spec)
    assert parsed == seed and (parsed.blob, parsed.unit) == seed
    assert str(parsed) == f"{seed[0]}:{seed[1]}"
    assert port.BackwardSeed.parse(str(parsed)) == parsed  # the written form reads back


@pytest.mark.parametrize("spec", ["fc8", "fc8:", ":3", "fc8:x", "fc8:1.5", ""])
def test_backward_seed_rejects_with_the_one_error_type(spec):
    with pytest.raises(port.CaffeError, match="BLOB:UNIT") as err:
        port.BackwardSeed.parse(spec)
    assert err.value.field == "backward-from"
    assert isinstance(err.value, port.ToolError)


def test_dump_blobs_takes_the_written_form(tmp_path):
    import numpy as np

    net = port.CaffeNet(netdef_from_text(TINY_NET))
    net.load_blobs(port.seed_weights(net.netdef, 0))
    x = np.random.default_rng(0).normal(0, 1, (1, 3, 13, 11)).astype(np.float32)
    a = port.dump_blobs(net, x, backward_from="fc:2")
    b = port.dump_blobs(net, x, backward_from=port.BackwardSeed("fc", 2))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_last_writer_is_the_last_in_place_layer():
    netdef = netdef_from_text(TINY_NET)
    names = [lay.name for lay in netdef.layers]
    assert names[netdef.last_writer("conv1")] == "relu1"  # conv1, then ReLU in place
    assert names[netdef.last_writer("pool1")] == "pool1"
    assert netdef.last_writer("data") is None  # an input: no layer writes it
    assert netdef.last_writer("nope") is None


def test_paths_are_the_checkout_layout(monkeypatch, tmp_path):
    assert (repo_root() / "port" / "paths.py").is_file()
    assert cache_root() == repo_root() / "cache"
    monkeypatch.setenv("CAFFE_MFV_SHARED", str(tmp_path))
    assert shared_root() == tmp_path
    monkeypatch.delenv("CAFFE_MFV_SHARED")
    assert shared_root() == repo_root().parent / "shared"
