"""Gate flips beyond max pooling: ReLU (in place or not, leaky) and Eltwise MAX.

A value within float noise of a kink may be decided differently by two correct implementations;
the harness must correct exactly that (and say so), and nothing else: a port that gates at the
wrong place, leaks where Caffe does not, or takes the wrong MAX input must still fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

port = pytest.importorskip("port")

from parity import core, gates, local, tolerance  # noqa: E402
from parity.runners import CAFFE_BUILDS, RunnerOutput, run_port  # noqa: E402

BACKWARD = "fc:1"
BAND = gates.Band(lambda blob: tolerance.gate_band(None))

# conv1 is the identity (centre tap 1), so conv1's values are the input's: a chosen input element
# sits exactly where we put it relative to relu1's kink, and its 3x3 kernel still gives every diff
# element a 3x3 receptive field upstream.
RELU_NET = """
name: "gatenet"
input: "data" input_shape { dim: 1 dim: 1 dim: 8 dim: 8 }
force_backward: true
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 1 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
        inner_product_param { num_output: 3 } }
"""

# Two branches joined by Eltwise MAX; conv a and b are identities of channel 0 and 1.
MAX_NET = """
name: "maxnet"
input: "data" input_shape { dim: 1 dim: 2 dim: 6 dim: 6 }
force_backward: true
layer { name: "a" type: "Convolution" bottom: "data" top: "a"
        convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "b" type: "Convolution" bottom: "data" top: "b"
        convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "m" type: "Eltwise" bottom: "a" bottom: "b" top: "m" eltwise_param { operation: MAX } }
layer { name: "fc" type: "InnerProduct" bottom: "m" top: "fc" inner_product_param { num_output: 3 } }
"""


def _relu_weights():
    w = np.zeros((1, 1, 3, 3), np.float32)
    w[0, 0, 1, 1] = 1.0
    fc = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    return {"conv1": [w, np.zeros(1, np.float32)], "fc": [fc, np.zeros(3, np.float32)]}


def _max_weights():
    fc = np.random.default_rng(1).standard_normal((3, 36)).astype(np.float32)
    one = np.ones((1, 1, 1, 1), np.float32)
    return {
        "a": [np.array([[[[1.0]], [[0.0]]]], np.float32), np.zeros(1, np.float32)],
        "b": [np.array([[[[0.0]], [[1.0]]]], np.float32) * one, np.zeros(1, np.float32)],
        "fc": [fc, np.zeros(3, np.float32)],
    }


def _net(text, weights, dtype=torch.float32):
    nd = port.netdef_from_text(text)
    net = port.CaffeNet(nd)
    net.load_blobs(weights)
    return nd, net.to(dtype).eval()


def _relu_input(value: float) -> np.ndarray:
    x = np.random.default_rng(2).uniform(-0.5, 0.5, (1, 1, 8, 8)).astype(np.float32)
    x[0, 0, 4, 4] = value
    return x


def _judge(nd, net32, net64, x_port, ref_blobs, *, local_rows=True):
    """Judge the port on ``x_port`` against two 'builds' that both produced ``ref_blobs``."""
    outs = {
        "port32": run_port(net32, x_port, backward_from=BACKWARD),
        "port64": run_port(net64, x_port, backward_from=BACKWARD),
    }
    for name in CAFFE_BUILDS:
        outs[name] = RunnerOutput(name, dict(ref_blobs), "float32", True)
    rows = (
        local.local_analysis(
            nd, net32, net64, _weights_of(nd), outs["caffe-atlas"], backward_from=BACKWARD
        )
        if local_rows
        else None
    )
    return core.judge(nd, outs, local=rows, net64=net64, backward_from=BACKWARD)


_WEIGHTS: dict[str, dict] = {}


def _weights_of(nd):
    return _WEIGHTS[nd.name]


def _relu_case(port_value: float, ref_value: float, relu: nn.Module | None = None):
    nd, good = _net(RELU_NET, _relu_weights())
    _WEIGHTS[nd.name] = _relu_weights()
    _, net64 = _net(RELU_NET, _relu_weights(), torch.float64)
    net32 = good
    if relu is not None:
        _, net32 = _net(RELU_NET, _relu_weights())
        net32.layer_modules["relu1"] = relu
    # The 'builds' are the correct port on an input whose element (4, 4) sits at ref_value.
    ref = run_port(good, _relu_input(ref_value), backward_from=BACKWARD).blobs
    return nd, _judge(nd, net32, net64, _relu_input(port_value), ref)


# -- detection ---------------------------------------------------------------------------------


def test_in_place_relu_flip_is_found_from_both_outputs_and_marks_the_pre_relu_diff():
    nd = port.netdef_from_text(RELU_NET)
    a = {"data/data": np.zeros((1, 1, 8, 8)), "data/conv1": np.zeros((1, 1, 8, 8)),
         "data/fc": np.zeros((1, 3))}  # fmt: skip
    b = {k: v.copy() for k, v in a.items()}
    a["data/conv1"][0, 0, 0, 0] = 0.5  # sets the blob's range
    b["data/conv1"][0, 0, 0, 0] = 0.5
    a["data/conv1"][0, 0, 4, 4] = 1e-7  # passes on one side, blocked (<= 0) on the other
    (f,) = gates.find_gate_flips(nd, a, b, BAND)
    assert (f.layer, f.type, f.kind, f.count, f.in_band) == ("relu1", "ReLU", "gate", 1, True)
    assert f.marks["conv1"].tolist() == [4 * 8 + 4]
    assert f.examples[0]["index"] == [0, 0, 4, 4]
    assert "relu1 input conv1[0,0,4,4] is 1e-07 vs <=0" in f.examples[0]["text"]
    # Band: the forward tolerance of conv1 (fallback noise) times its range.
    assert f.band == pytest.approx(tolerance.gate_band(None) * 0.5)


def test_relu_flip_beyond_the_band_is_found_but_not_in_band():
    nd = port.netdef_from_text(RELU_NET)
    a = {"data/data": np.zeros((1, 1, 8, 8)), "data/conv1": np.zeros((1, 1, 8, 8)),
         "data/fc": np.zeros((1, 3))}  # fmt: skip
    b = {k: v.copy() for k, v in a.items()}
    a["data/conv1"][0, 0, 0, 0] = b["data/conv1"][0, 0, 0, 0] = 0.5
    a["data/conv1"][0, 0, 4, 4] = 1e-2  # 1e-2 / 0.5 = 2e-2 of the range: far outside the noise
    (f,) = gates.find_gate_flips(nd, a, b, BAND)
    assert not f.in_band and f.worst_margin > 1000


def test_leaky_relu_not_in_place_flips_on_its_input_sign():
    nd = port.netdef_from_text(
        """
        input: "x" input_shape { dim: 1 dim: 4 }
        layer { name: "r" type: "ReLU" bottom: "x" top: "y" relu_param { negative_slope: 0.1 } }
        """
    )
    xa = np.array([[1.0, -3e-7, 2e-7, -1.0]])
    xb = np.array([[1.0, 3e-7, 2e-7, -1.0]])
    a = {"data/x": xa, "data/y": np.where(xa > 0, xa, 0.1 * xa)}
    b = {"data/x": xb, "data/y": np.where(xb > 0, xb, 0.1 * xb)}
    (f,) = gates.find_gate_flips(nd, a, b, BAND)
    assert f.in_band and f.marks == {"x": np.array([1])} or f.marks["x"].tolist() == [1]


def test_caffe_eltwise_max_ties_go_to_bottom_one_then_stay_with_the_earlier():
    x0 = np.array([1.0, 2.0, 3.0])
    x1 = np.array([1.0, 1.0, 3.0])
    x2 = np.array([1.0, 2.0, 4.0])
    # Caffe: bottom 0 vs 1 by a strict '>', so a tie goes to 1; later bottoms need to be greater.
    assert gates.caffe_eltwise_argmax([x0, x1]).tolist() == [1, 0, 1]
    assert gates.caffe_eltwise_argmax([x0, x1, x2]).tolist() == [1, 0, 2]


def test_eltwise_max_flip_marks_both_bottoms():
    nd = port.netdef_from_text(MAX_NET)
    base = np.random.default_rng(0).uniform(-1, 1, (1, 1, 6, 6))
    a = {"data/a": base.copy(), "data/b": base - 0.5, "data/m": base}
    b = {k: v.copy() for k, v in a.items()}
    a["data/b"][0, 0, 2, 3] = a["data/a"][0, 0, 2, 3] + 1e-7  # b wins on side a ...
    b["data/b"][0, 0, 2, 3] = b["data/a"][0, 0, 2, 3] - 1e-7  # ... a wins on side b
    fl = gates.find_gate_flips(nd, a, b, BAND)
    (f,) = [f for f in fl if f.type == "Eltwise"]
    assert f.in_band and f.count == 1
    assert f.marks["a"].tolist() == [2 * 6 + 3] and f.marks["b"].tolist() == [2 * 6 + 3]


# -- judged end to end -------------------------------------------------------------------------


def test_relu_flip_within_noise_is_corrected_and_the_port_passes():
    # The issue's case: the port's pre-ReLU value is just above 0, the builds' just below.
    nd, res = _relu_case(port_value=1e-7, ref_value=-1e-7)
    assert res, res.diagnosis
    pair = next(p for p in res.pairs if p.reference == "caffe-atlas" and p.rule == "spread")
    checks = {c.key: c for c in pair.checks}
    assert checks["diff/conv1"].metrics.n_corrected == 1
    assert checks["diff/conv1"].metrics.flip_effect > 1e-2  # the flip moved a whole element ...
    assert checks["diff/conv1"].metrics.max_rel < 1e-6  # ... and the correction removed exactly it
    assert checks["diff/data"].metrics.n_corrected == 9  # its 3x3 reach through conv1
    (rec,) = res.flips["caffe-atlas|port32"]
    assert (rec["layer"], rec["in_band"], rec["handling"]) == ("relu1", True, "corrected")
    assert res.diagnosis["cause"] is None
    # Values in the order the pair is named: caffe-atlas first, then port32.
    assert any("relu1 input conv1[0,0,4,4] is <=0 vs 1e-07" in s for s in res.diagnosis["lines"])


def test_relu_flip_without_correction_would_fail():
    # The control: the same inputs judged with the flip detection switched off fail, by far.
    nd, good = _net(RELU_NET, _relu_weights())
    ref = run_port(good, _relu_input(-1e-7), backward_from=BACKWARD).blobs
    mine = run_port(good, _relu_input(1e-7), backward_from=BACKWARD).blobs
    err = np.abs(mine["diff/conv1"] - ref["diff/conv1"]).max() / np.abs(ref["diff/conv1"]).max()
    assert err > 1e3 * tolerance.spread_rule(None).allowed


class ShiftedReLU(nn.Module):
    """Gates at x > t instead of x > 0."""

    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, x):
        return [torch.where(x > self.t, x, torch.zeros_like(x))]


class LeakyReLU(nn.Module):
    def forward(self, x):
        return [torch.where(x > 0, x, 0.1 * x)]


@pytest.mark.parametrize(
    "relu", [ShiftedReLU(0.05), LeakyReLU()], ids=["shifted-threshold", "leaky-where-caffe-is-not"]
)
def test_a_wrongly_gating_relu_still_fails_and_is_named(relu):
    nd, res = _relu_case(port_value=0.2, ref_value=0.2, relu=relu)
    assert not res
    assert res.diagnosis["layer"] in ("relu1", "conv1")  # the unit conv1 + relu1 is at fault
    assert res.diagnosis["cause"] in ("local", "gate-flip")
    assert res.diagnosis["lines"][0]


def test_flip_outside_the_band_is_reported_and_not_corrected():
    nd = port.netdef_from_text(RELU_NET)
    _WEIGHTS[nd.name] = _relu_weights()
    _, good = _net(RELU_NET, _relu_weights())
    _, net64 = _net(RELU_NET, _relu_weights(), torch.float64)
    # The 'builds' gate at 0.3 instead of 0; the input has no value in (0, 0.3) but element
    # (4, 4) at 0.2, which they block and the port passes: a gap of 40% of the range that no
    # float noise explains. Everything else agrees exactly.
    x = _relu_input(0.2)
    x[(x > 0) & (x < 0.3) & (x != np.float32(0.2))] += np.float32(0.3)
    _, shifted = _net(RELU_NET, _relu_weights())
    shifted.layer_modules["relu1"] = ShiftedReLU(0.3)
    ref = run_port(shifted, x, backward_from=BACKWARD).blobs
    res = _judge(nd, good, net64, x, ref, local_rows=False)
    assert not res
    rec = next(r for r in res.flips["caffe-atlas|port32"] if r["layer"] == "relu1")
    assert not rec["in_band"] and rec["handling"].startswith("not corrected")
    pair = next(p for p in res.pairs if p.reference == "caffe-atlas" and p.rule == "spread")
    checks = {c.key: c for c in pair.checks}
    assert checks["diff/conv1"].metrics.n_corrected == 0 and not checks["diff/conv1"].passed
    assert res.diagnosis["cause"] == "gate-flip" and res.diagnosis["layer"] == "relu1"
    assert "outside the noise band" in res.diagnosis["lines"][0]


class MinNotMax(nn.Module):
    def forward(self, a, b):
        return [torch.minimum(a, b)]


class TiesToFirst(nn.Module):
    """Eltwise MAX that keeps bottom 0 on ties (Caffe routes a 0-vs-1 tie to bottom 1)."""

    def forward(self, a, b):
        return [torch.where(b > a, b, a)]


def _max_case(eltwise: nn.Module | None, tie: bool):
    w = _max_weights()
    nd, good = _net(MAX_NET, w)
    _WEIGHTS[nd.name] = w
    _, net64 = _net(MAX_NET, w, torch.float64)
    x = np.random.default_rng(4).uniform(-1, 1, (1, 2, 6, 6)).astype(np.float32)
    if tie:
        x[0, 1, 2, 3] = x[0, 0, 2, 3]  # an exact tie: Caffe routes it to bottom b
    ref = run_port(good, x, backward_from=BACKWARD).blobs
    net32 = good
    if eltwise is not None:
        _, net32 = _net(MAX_NET, w)
        net32.layer_modules["m"] = eltwise
    return _judge(nd, net32, net64, x, ref)


def test_correct_eltwise_max_passes_with_an_exact_tie():
    assert _max_case(None, tie=True)


@pytest.mark.parametrize(
    "eltwise,tie", [(MinNotMax(), False), (TiesToFirst(), True)], ids=["min", "ties-to-bottom-0"]
)
def test_a_wrong_eltwise_max_still_fails(eltwise, tie):
    res = _max_case(eltwise, tie)
    assert not res
    assert res.diagnosis["cause"] is not None and res.diagnosis["lines"][0]


# -- the kinks of the layers beyond the zoo -----------------------------------------------------

KINKED = """
input: "x" input_shape { dim: 1 dim: 1 dim: 2 dim: 3 }
layer { name: "p" type: "PReLU" bottom: "x" top: "p" }
layer { name: "e" type: "ELU" bottom: "x" top: "e" elu_param { alpha: 0.5 } }
layer { name: "e1" type: "ELU" bottom: "x" top: "e1" elu_param { alpha: 1.0 } }
layer { name: "a" type: "AbsVal" bottom: "x" top: "a" }
layer { name: "c" type: "Clip" bottom: "x" top: "c" clip_param { min: -0.5 max: 0.5 } }
"""


def test_prelu_elu_absval_clip_flip_at_their_kinks_and_elu_with_alpha_one_has_none():
    nd = port.netdef_from_text(KINKED)
    xa = np.array([[[[1.0, 2e-7, -1.0], [0.5 + 1e-7, -0.5, 0.3]]]])
    xb = np.array([[[[1.0, -2e-7, -1.0], [0.5 - 1e-7, -0.5, 0.3]]]])
    a = {"data/x": xa, **{f"data/{t}": np.zeros_like(xa) for t in ("p", "e", "e1", "a", "c")}}
    b = {"data/x": xb, **{f"data/{t}": np.zeros_like(xb) for t in ("p", "e", "e1", "a", "c")}}
    flips = {f.layer: f for f in gates.find_gate_flips(nd, a, b, BAND)}
    assert set(flips) == {"p", "e", "a", "c"}  # ELU with alpha 1 is smooth at 0
    for name in ("p", "e", "a"):
        assert flips[name].marks["x"].tolist() == [1] and flips[name].in_band
    # Clip's kinks are its bounds: the element at 0.5 +- 1e-7 flips, the one at 0 does not.
    assert flips["c"].marks["x"].tolist() == [3] and flips["c"].in_band
