"""Blob meaning of dumps: pycaffe's data/diff, in-place layers included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import port
from port.blobkeys import diff_key
from port.caffemodel import write_caffemodel
from port.cli import main
from tests.conftest import TINY_NET


def _net(text: str, tmp_path, name: str):
    p = tmp_path / f"{name}.prototxt"
    p.write_text(text)
    netdef = port.load_prototxt(p)
    net = port.CaffeNet(netdef)
    net.load_blobs(port.seed_weights(netdef, 0))
    return net.double()


def test_in_place_diff_is_gradient_of_the_pre_activation(tmp_path):
    in_place = _net(TINY_NET, tmp_path, "a")
    # The same net with the ReLU writing a separate blob: its diff is the post-ReLU gradient.
    separate = _net(
        TINY_NET.replace('bottom: "conv1" top: "conv1" }', 'bottom: "conv1" top: "r1" }').replace(
            'bottom: "conv1" top: "pool1"', 'bottom: "r1" top: "pool1"'
        ),
        tmp_path,
        "b",
    )
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 13, 11))
    a = port.dump_blobs(in_place, x, backward_from=("fc", 3))
    b = port.dump_blobs(separate, x, backward_from=("fc", 3))
    np.testing.assert_array_equal(a["data/conv1"], b["data/r1"])  # data: after the ReLU
    assert (a["data/conv1"] >= 0).all() and (b["data/conv1"] < 0).any()
    # diff: gradient with respect to the pre-ReLU values
    np.testing.assert_allclose(
        a["diff/conv1"], b["diff/r1"] * (b["data/conv1"] > 0), rtol=0, atol=1e-15
    )
    assert np.abs(a["diff/conv1"]).max() > 0
    # one-hot seeded on fc in every sample; blobs downstream of it get no diff
    expect = np.zeros((2, 5))
    expect[:, 3] = 1
    np.testing.assert_array_equal(a["diff/fc"], expect)
    assert not a["diff/prob"].any()


def test_input_diff_matches_finite_differences(tmp_path):
    net = _net(TINY_NET, tmp_path, "fd")
    x = np.random.default_rng(1).normal(0, 1, (1, 3, 13, 11))
    d = port.dump_blobs(net, x, backward_from=("fc", 2))
    rng = np.random.default_rng(2)
    for _ in range(8):
        idx = tuple(int(rng.integers(0, s)) for s in x.shape)
        eps = 1e-6
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        with torch.no_grad():
            fp = net(torch.from_numpy(xp), blobs=["fc"])["fc"][0, 2].item()
            fm = net(torch.from_numpy(xm), blobs=["fc"])["fc"][0, 2].item()
        assert d["diff/data"][idx] == pytest.approx((fp - fm) / (2 * eps), rel=1e-5, abs=1e-9)


def test_dump_cli_float64_and_other_batch_size(tmp_path):
    proto = tmp_path / "t.prototxt"
    proto.write_text(TINY_NET)
    netdef = port.load_prototxt(proto)
    weights = tmp_path / "t.caffemodel"
    write_caffemodel(weights, netdef, port.seed_weights(netdef, 0))
    x = np.random.default_rng(0).normal(0, 1, (3, 3, 13, 11)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "d.npz"
    assert (
        main(
            [
                "dump",
                "--prototxt",
                str(proto),
                "--caffemodel",
                str(weights),
                "--input",
                str(tmp_path / "x.npy"),
                "--out",
                str(out),
                "--backward-from",
                "prob:1",
                "--dtype",
                "float64",
            ]
        )
        == 0
    )
    with np.load(out) as d:
        assert d["data/prob"].shape == (3, 5) and d["data/prob"].dtype == np.float64
        assert set(k for k in d.files if k.startswith("diff/")) == {
            diff_key(b) for b in ("data", "conv1", "pool1", "norm1", "fc", "prob")
        }
        np.testing.assert_allclose(d["data/prob"].sum(axis=1), 1, rtol=1e-12)
