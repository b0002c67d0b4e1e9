"""Objectives: values, gradients (one-hot semantics), composition, conv targets at (x, y)."""

from __future__ import annotations

import pytest
import torch

from mfv.objectives import channel, parse_target, softmax_unit, unit
from mfv.testing import tiny_model, torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_unit_is_flat_index_per_sample():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    o = unit("c", 7)
    assert torch.equal(o({"c": a}), a.reshape(2, -1)[:, 7])
    assert o.best_unit({"c": a}) == [11, 11]
    with pytest.raises(IndexError):
        unit("c", 12)({"c": a})


def test_unit_gradient_is_one_hot():
    a = torch.randn(2, 5, requires_grad=True)
    unit("fc", 3)({"fc": a}).sum().backward()
    want = torch.zeros(2, 5)
    want[:, 3] = 1
    assert torch.equal(a.grad, want)


def test_channel_at_position_and_centre():
    a = torch.randn(2, 4, 5, 7)
    assert torch.equal(channel("c", 2, x=6, y=1)({"c": a}), a[:, 2, 1, 6])
    assert torch.equal(channel("c", 2)({"c": a}), a[:, 2, 2, 3])
    assert channel("c", 0, x=1, y=4).best_unit({"c": a}) == [
        int(i) for i in a[:, :, 4, 1].argmax(1)
    ]
    with pytest.raises(IndexError):
        channel("c", 0, x=7, y=0)({"c": a})
    with pytest.raises(ValueError):
        channel("c", 0)({"c": torch.randn(2, 4)})


def test_softmax_unit():
    a = torch.randn(3, 6)
    torch.testing.assert_close(softmax_unit("fc", 4)({"fc": a}), torch.softmax(a, 1)[:, 4])


def test_composition():
    a = torch.randn(2, 5)
    o = unit("fc", 1) - 0.5 * unit("fc", 2)
    torch.testing.assert_close(o({"fc": a}), a[:, 1] - 0.5 * a[:, 2])
    assert o.layers == ("fc",)
    assert (unit("a", 0) + unit("b", 0)).layers == ("a", "b")


def test_parse_target_picks_by_shape():
    assert parse_target("fc8", 3, shape=(1000,)).spec["kind"] == "unit"
    assert parse_target("conv5", 3, shape=(256, 13, 13), x=2, y=3).spec == {
        "kind": "channel",
        "layer": "conv5",
        "unit": 3,
        "x": 2,
        "y": 3,
    }
    assert parse_target("fc8", 3, softmax=True).spec["kind"] == "softmax_unit"
    with pytest.raises(ValueError):
        parse_target("fc8", 3, shape=(1000,), x=1)


def test_conv_target_through_a_model_reaches_the_input():
    m = tiny_model()
    x = (torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).requires_grad_(
        True
    )
    o = channel("2", 1, x=2, y=3)
    o(m.activations(x, o.layers)).sum().backward()
    g = x.grad[0].abs().sum(0)
    # conv 5x5 stride 2 then 3x3: output (3, 2) of layer "2" sees input rows 2*3..2*5+4, cols 4..12
    assert g.sum() > 0
    nz = torch.nonzero(g)
    assert (
        nz[:, 0].min() >= 6
        and nz[:, 0].max() <= 14
        and nz[:, 1].min() >= 4
        and nz[:, 1].max() <= 12
    )
