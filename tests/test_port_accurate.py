"""The port's accurate mode: float32 blobs, float64 arithmetic inside every layer (issue 26).

References are float64: numpy for a lone convolution (independent of torch's kernels), the float64
port for whole nets (its own agreement with numpy float64 is what ``parity run`` proves).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import port
from port.accumulate import ACCUMULATE

from .layer_cases import ARCHITECTURES, CASES

EPS32 = 2.0**-24  # half a float32 ulp at 1: the rounding of one float32 result

BIG_K_CONV = """
name: "bigk"
input: "data"
input_shape { dim: 2 dim: 256 dim: 9 dim: 9 }
force_backward: true
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 32 kernel_size: 3 pad: 1 } }
"""


def _seeded(text: str, seed: int = 3) -> port.CaffeNet:
    nd = port.netdef_from_text(text)
    net = port.CaffeNet(nd)
    net.load_blobs(port.seed_weights(nd, seed))
    return net.eval()


def _numpy_conv_pad1(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 3x3 stride-1 pad-1 convolution by explicit shifted products."""
    n, c, h, wd = x.shape
    xp = np.zeros((n, c, h + 2, wd + 2))
    xp[:, :, 1:-1, 1:-1] = x
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i : i + h, j : j + wd], w[:, :, i, j])
    return out + b[None, :, None, None]


def _rel(a: np.ndarray, truth: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - truth).max() / np.abs(truth).max())


def test_accurate_conv_with_large_k_is_float64_rounded_once():
    """A 2304-term convolution: every accurate element is the float64 result rounded to float32
    (within half an ulp of the element), and its input gradient too; the fast path's float32 sums
    land farther away."""
    net = _seeded(BIG_K_CONV)
    acc = copy.deepcopy(net)
    acc.accumulate = "float64"
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, (2, 256, 9, 9)).astype(np.float32)
    seed = rng.normal(0.0, 1.0, (2, 32, 9, 9)).astype(np.float32)
    w = net.module("conv").blobs[0].detach().numpy().astype(np.float64)
    b = net.module("conv").blobs[1].detach().numpy().astype(np.float64)
    truth = _numpy_conv_pad1(x.astype(np.float64), w, b)
    # The input gradient of <seed, conv(x)> is the correlation of seed with the flipped kernel.
    wt = np.flip(w, (2, 3)).transpose(1, 0, 2, 3)
    gtruth = _numpy_conv_pad1(seed.astype(np.float64), wt, np.zeros(256))

    def run(n):
        xt = torch.from_numpy(x).requires_grad_(True)
        y = n(xt)["conv"]
        (g,) = torch.autograd.grad(y, xt, torch.from_numpy(seed))
        assert y.dtype == g.dtype == torch.float32
        return y.detach().numpy(), g.numpy()

    y_acc, g_acc = run(acc)
    y_fast, g_fast = run(net)
    for got, want in ((y_acc, truth), (g_acc, gtruth)):
        half_ulp = 0.5 * np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
        assert (np.abs(got - want) <= half_ulp * (1 + 1e-6) + 1e-300).all()
    assert _rel(y_fast, truth) > _rel(y_acc, truth)
    assert _rel(g_fast, gtruth) > _rel(g_acc, gtruth)


def _case_inputs(case):
    x = case.inputs()
    return x if len(x) > 1 else next(iter(x.values()))


@pytest.mark.parametrize("name", sorted(CASES) + sorted(ARCHITECTURES))
def test_every_layer_type_runs_in_float64_and_lands_within_float32_rounding(name):
    """Each layer case and reduced architecture (every layer type of the port): every layer sees
    float64 bottoms, blobs and diffs are float32, and each lies within 4 float32 roundings (of
    its range) of the float64 port."""
    case = CASES.get(name) or ARCHITECTURES[name]
    nd = port.load_prototxt(case.prototxt)
    net = port.CaffeNet(nd, accumulate="float64")
    net.load_blobs(port.seed_weights(nd, case.seed))
    net.eval()
    net64 = copy.deepcopy(net).to(torch.float64)
    seen: dict[str, set] = {}

    def record(module, args):
        seen.setdefault(module.layer_name, set()).update(
            a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()
        )

    for layer in nd.layers:
        net.module(layer.name).register_forward_pre_hook(record)
    x = _case_inputs(case)
    got = port.dump_blobs(net, x, backward_from=case.backward)
    truth = port.dump_blobs(net64, x, backward_from=case.backward)
    assert set(seen) == {layer.name for layer in nd.layers}
    assert all(d == {torch.float64} for d in seen.values() if d), seen
    keys = [k for k in truth if k.startswith(("data/", "diff/"))]
    assert any(k.startswith("diff/") for k in keys)
    for k in keys:
        assert got[k].dtype == np.float32, k
        rng = np.abs(truth[k]).max()
        if rng:
            assert np.abs(got[k] - truth[k]).max() <= 4 * EPS32 * rng, k


def test_fast_path_is_the_layers_run_one_after_another():
    """accumulate="float32" (the default) is bit for bit the layer modules called in order."""
    from .conftest import TINY_NET

    net = _seeded(TINY_NET)
    assert net.accumulate == "float32"
    x = torch.from_numpy(np.random.default_rng(2).normal(0, 50, (2, 3, 13, 11)).astype(np.float32))
    blobs = {"data": x}
    for layer in net.netdef.layers:
        tops = net.module(layer.name)(*[blobs[b] for b in layer.bottoms])
        blobs.update(zip(layer.tops, tops, strict=True))
    out = net(x, blobs="all")
    for k, v in out.items():
        assert torch.equal(v, blobs[k]), k


def test_float64_copies_follow_changes_of_the_float32_parameters():
    """Edits in place and rebinding (``load_blobs(share=True)``) reach the accurate mode's cached
    float64 copies: its result stays the float64 port's of the current weights."""
    from .conftest import TINY_NET

    net = _seeded(TINY_NET)
    net.accumulate = "float64"
    x = torch.from_numpy(np.random.default_rng(4).normal(0, 50, (2, 3, 13, 11)).astype(np.float32))

    def close_to_float64() -> bool:
        want = copy.deepcopy(net).to(torch.float64)(x.double())["prob"]
        return bool(torch.allclose(net(x)["prob"].double(), want, rtol=0, atol=1e-6))

    assert close_to_float64()
    with torch.no_grad():
        net.module("fc").blobs[0].mul_(-3.0)
    assert close_to_float64()
    net.load_blobs(port.seed_weights(net.netdef, 9), share=True)
    assert close_to_float64()


def test_parameter_gradients_stay_float32_and_match_float64():
    from .conftest import TINY_NET

    net = _seeded(TINY_NET)
    net64 = copy.deepcopy(net).to(torch.float64)
    net.accumulate = "float64"
    x = np.random.default_rng(6).normal(0, 50, (2, 3, 13, 11))
    for n, dt in ((net, torch.float32), (net64, torch.float64)):
        n(torch.as_tensor(x, dtype=dt), blobs=["fc"])["fc"][:, 1].sum().backward()
    for p, p64 in zip(net.parameters(), net64.parameters(), strict=True):
        assert p.grad.dtype == torch.float32
        scale = float(p64.grad.abs().max()) or 1.0
        assert float((p.grad.double() - p64.grad).abs().max()) <= 8 * EPS32 * scale


def test_accumulate_is_checked_and_reaches_the_loaders(tmp_path):
    from .conftest import TINY_NET

    with pytest.raises(ValueError, match="accumulate"):
        port.CaffeNet(port.netdef_from_text(TINY_NET), accumulate="float16")
    assert ACCUMULATE == ("float32", "float64")
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY_NET)
    assert port.load_caffe(proto, accumulate="float64").accumulate == "float64"
    art = tmp_path / "tiny.safetensors"
    port.save(_seeded(TINY_NET), art)
    assert port.load(art, accumulate="float64").accumulate == "float64"
    assert port.load(art).accumulate == "float32"


def test_port_dump_accumulate_float64_writes_the_accurate_blobs(tmp_path):
    """``port dump --accumulate float64``: float32 arrays, equal to the accurate net's own dump
    and different from the fast one's."""
    from port.caffemodel import write_caffemodel
    from port.cli import main

    from .conftest import TINY_NET

    proto = tmp_path / "t.prototxt"
    proto.write_text(TINY_NET)
    netdef = port.load_prototxt(proto)
    weights = tmp_path / "t.caffemodel"
    write_caffemodel(weights, netdef, port.seed_weights(netdef, 0))
    x = np.random.default_rng(0).normal(0, 50, (3, 3, 13, 11)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "d.npz"
    args = ["dump", "--prototxt", str(proto), "--caffemodel", str(weights)]
    args += ["--input", str(tmp_path / "x.npy"), "--out", str(out), "--backward-from", "fc:1"]
    assert main([*args, "--accumulate", "float64"]) == 0
    acc = port.dump_blobs(
        port.load_caffe(proto, weights, accumulate="float64"), x, backward_from="fc:1"
    )
    fast = port.dump_blobs(port.load_caffe(proto, weights), x, backward_from="fc:1")
    with np.load(out) as d:
        assert d["diff/data"].dtype == np.float32
        for k in acc:
            if k.startswith(("data/", "diff/")):
                np.testing.assert_array_equal(d[k], acc[k])
        assert any(not np.array_equal(d[k], fast[k]) for k in fast if k.startswith("data/"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_accurate_mode_on_cuda_matches_the_cpu_one():
    """The same float64 arithmetic on the GPU: blobs and diffs within one float32 rounding of the
    CPU's accurate ones (the float64 sums differ in order only)."""
    from .conftest import TINY_NET

    net = _seeded(TINY_NET)
    net.accumulate = "float64"
    x = np.random.default_rng(8).normal(0, 50, (2, 3, 13, 11)).astype(np.float32)
    cpu = port.dump_blobs(net, x, backward_from="fc:1")
    gpu = port.dump_blobs(copy.deepcopy(net).to("cuda"), x, backward_from="fc:1")
    for k, v in cpu.items():
        if k.startswith(("data/", "diff/")):
            assert gpu[k].dtype == np.float32, k
            assert np.abs(gpu[k] - v).max() <= 2 * EPS32 * max(np.abs(v).max(), 1e-30), k


def test_leaving_the_accurate_mode_drops_the_float64_copies():
    from .conftest import TINY_NET

    net = _seeded(TINY_NET)
    net.accumulate = "float64"
    x = torch.zeros(1, 3, 13, 11)
    net(x)
    assert net._wide._cache and any(net._wide._cache.values())
    net.accumulate = "float32"
    assert not net._wide._cache
