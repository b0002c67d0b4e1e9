"""The harness on the real port: the float64 port checked by finite differences, a correct port
passing, and deliberately broken ports failing at the layer that is broken.

Until real-Caffe goldens exist for the small net used here, its two "Caffe builds" are stand-ins
made from the unbroken port (float32, and float64 rounded to float32): two float32-noise-apart
references independent of the broken port under test, which is what the negative tests need. The
slow tests at the end use the committed CaffeNet goldens when they are there.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from port.verdict import check_parity

port = pytest.importorskip("port")

from parity import run as prun  # noqa: E402
from parity.__main__ import main  # noqa: E402
from parity.report import summary_line  # noqa: E402
from parity.runners import RunnerOutput, run_port  # noqa: E402

# conv1 -> 14x14, so pool1 (3/2) is 7x7 with Caffe's ceil and 6x6 with floor; groups of 2 and an
# LRN with a large alpha make the group and alpha/n bugs visible.
TINY = """
name: "tiny"
input: "data" input_shape { dim: 1 dim: 4 dim: 16 dim: 16 }
force_backward: true
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 group: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 5 alpha: 2.0 beta: 0.75 k: 1.0 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc"
        inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
BACKWARD = "fc:2"


def _netdef():
    return port.netdef_from_text(TINY)


def _weights(nd):
    return port.seed_weights(nd, 3)


def _x():
    return np.random.default_rng(5).uniform(-1.0, 1.0, (1, 4, 16, 16)).astype(np.float32)


def _good_net(nd, weights):
    net = port.CaffeNet(nd)
    net.load_blobs(weights)
    return net.eval()


def _stand_in_goldens(nd, weights, x) -> dict[str, RunnerOutput]:
    good = _good_net(nd, weights)
    a = run_port(good, x, backward_from=BACKWARD).blobs
    b = run_port(copy.deepcopy(good).to(torch.float64), x, backward_from=BACKWARD).blobs
    b = {k: v.astype(np.float32) for k, v in b.items()}
    return {
        "caffe-atlas": RunnerOutput("caffe-atlas", a, "float32", True, source="stand-in: port32"),
        "caffe-openblas": RunnerOutput(
            "caffe-openblas", b, "float32", True, source="stand-in: port64->f32"
        ),
    }


def _setup(nd=None):
    nd = nd or _netdef()
    w = _weights(nd)
    x = _x()
    return prun.ParitySetup(
        "tiny", "tiny.prototxt", nd, w, "seed 3", x, BACKWARD, _stand_in_goldens(nd, w, x)
    )


REFS = ("caffe-atlas", "caffe-openblas", "numpy64", "numpy32")


# -- the float64 port is the gradient truth: check it by finite differences --------------------


def test_float64_port_diffs_match_finite_differences():
    nd = _netdef()
    net = _good_net(nd, _weights(nd)).to(torch.float64)
    x = _x().astype(np.float64)
    blob, unit = "fc", 2
    dump = port.dump_blobs(net, x, backward_from=(blob, unit))

    def out(xx, hook=None):
        h = net.module("conv1").register_forward_hook(hook) if hook else None
        try:
            with torch.no_grad():
                return float(net(torch.from_numpy(xx), blobs=[blob])[blob].reshape(-1)[unit])
        finally:
            if h:
                h.remove()

    rng = np.random.default_rng(0)
    eps = 1e-6
    # diff/data: perturb input elements.
    for i in rng.choice(x.size, 12, replace=False):
        d = np.zeros(x.size)
        d[i] = eps
        d = d.reshape(x.shape)
        fd = (out(x + d) - out(x - d)) / (2 * eps)
        assert fd == pytest.approx(dump["diff/data"].reshape(-1)[i], rel=1e-5, abs=1e-9)
    # diff/conv1 is the gradient w.r.t. conv1's *pre-ReLU* output: perturb the producer's output.
    conv1 = dump["data/conv1"].reshape(-1)
    picks = list(rng.choice(np.flatnonzero(conv1 > 0), 6, replace=False))
    picks += list(rng.choice(np.flatnonzero(conv1 == 0), 6, replace=False))
    for i in picks:

        def bump(sign, i=i):
            def hook(_m, _inp, outs):
                t = outs[0].clone()
                t.view(-1)[i] += sign * eps
                return [t]

            return hook

        fd = (out(x, bump(1)) - out(x, bump(-1))) / (2 * eps)
        assert fd == pytest.approx(dump["diff/conv1"].reshape(-1)[i], rel=1e-5, abs=1e-9)


# -- a correct port passes ------------------------------------------------------------------------


def test_correct_port_passes_against_every_reference():
    result, outs = prun.run_parity(_setup(), references=REFS)
    assert result, [(p.reference, [c.key for c in p.failures()]) for p in result.pairs]
    assert result.first_departure is None
    judged = {(p.subject, p.reference, p.rule) for p in result.pairs if p.rule != "info"}
    assert ("port32", "caffe-atlas", "spread") in judged and (
        "port64",
        "numpy64",
        "float64",
    ) in judged
    assert any(r["backward"] for r in result.local)  # backward local check ran on the goldens
    doc = json.loads(result.dumps())
    assert doc["passed"] and doc["backward_from"] == BACKWARD
    line = summary_line(result)
    assert line.startswith("tiny: PASS") and "caffe-atlas" in line


# -- deliberately broken ports --------------------------------------------------------------------


class FloorMaxPool(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return [F.max_pool2d(x, 3, 2, 0, ceil_mode=False)]


class LRNNoAlphaOverN(nn.Module):
    def __init__(self, inner, n=5, alpha=2.0, beta=0.75, k=1.0):
        super().__init__()
        self.inner, self.n, self.alpha, self.beta, self.k = inner, n, alpha, beta, k

    def forward(self, x):
        sq = F.pad(x * x, (0, 0, 0, 0, self.n // 2, self.n // 2))
        s = sum(sq[:, i : i + x.shape[1]] for i in range(self.n))
        return [x * (self.k + self.alpha * s) ** (-self.beta)]  # alpha, not alpha / n


class SwappedGroups(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        w, b = self.inner.blobs[0], self.inner.blobs[1]
        half = x.shape[1] // 2
        return [F.conv2d(torch.cat([x[:, half:], x[:, :half]], 1), w, b, groups=2)]


class PostReluGradNet(port.CaffeNet):
    """Records diffs with respect to each blob's final (post-ReLU) value."""

    def run(self, x, *, keep_first=False):
        final, first = super().run(x, keep_first=keep_first)
        return final, {k: final[k] for k in first}


def _broken(layer, wrapper):
    def factory(nd, weights):
        net = _good_net(nd, weights)
        net.layer_modules[layer] = wrapper(net.module(layer))
        return net.eval()

    return factory


def _post_relu_factory(nd, weights):
    net = PostReluGradNet(nd)
    net.load_blobs(weights)
    return net.eval()


def _first_failure(result):
    """(key, layer) of the first failing judged blob in report order (forward, then backward)."""
    from parity.core import ordered_keys

    failed = {c.key: c.layer for p in result.pairs if p.rule != "info" for c in p.failures()}
    keys = ordered_keys(_netdef(), set(failed))
    return (keys[0], failed[keys[0]]) if keys else None


@pytest.mark.parametrize(
    "factory,layer,key",
    [
        (_broken("pool1", FloorMaxPool), "pool1", "data/pool1"),
        (_broken("norm1", LRNNoAlphaOverN), "norm1", "data/norm1"),
        (_broken("conv1", SwappedGroups), "conv1", "data/conv1"),
    ],
    ids=["floor-pooling", "lrn-without-alpha-over-n", "swapped-groups"],
)
def test_broken_forward_fails_at_the_broken_layer(factory, layer, key):
    result, _ = prun.run_parity(_setup(), references=REFS, port_factory=factory)
    assert not result
    assert _first_failure(result) == (key, layer)
    assert result.first_departure == layer
    # Every reference independent of the port sees it.
    for ref in ("caffe-atlas", "caffe-openblas", "numpy32"):
        pair = next(p for p in result.pairs if p.reference == ref and p.rule == "spread")
        assert key in {c.key for c in pair.failures()}


def test_post_relu_gradients_fail_exactly_at_the_in_place_blobs():
    result, _ = prun.run_parity(_setup(), references=REFS, port_factory=_post_relu_factory)
    assert not result
    failed = {c.key for p in result.pairs if p.rule == "spread" for c in p.failures()}
    # The bug only changes what is recorded for blobs rewritten in place; everything else is right.
    assert "diff/conv2" in failed and failed <= {"diff/conv1", "diff/conv2"}
    assert _first_failure(result) == ("diff/conv2", "conv2")
    assert result.first_departure is None  # the layers themselves are right; the recording is not


# -- command line ---------------------------------------------------------------------------------


def test_cli_help_lists_run(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "run" in capsys.readouterr().out


def test_cli_run_writes_json_and_html_and_exit_codes(tmp_path, capsys):
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    js, ht = tmp_path / "r.json", tmp_path / "r.html"
    vf = tmp_path / "tiny.parity.json"
    rc = main(["run", "--prototxt", str(proto), "--references", "numpy64,numpy32", "--json", str(js),
               "--html", str(ht), "--backward-from", BACKWARD, "--verdict-file", str(vf)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "parity tiny: PASS" in out and "data/pool1" in out and "diff/data" in out
    doc = json.loads(js.read_text())
    assert doc["passed"] is True and doc["schema"] == "caffe-mfv/parity/1"
    page = ht.read_text()
    assert (
        page.startswith("<!DOCTYPE html>") and "<svg" in page and "data:image/png;base64," in page
    )
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # self-contained
    # The verdict file is what MFV's gate reads: it must accept it for exactly these files.
    info = check_parity(proto, None, seed=prun.SYNTHETIC_SEED, verdict_file=vf)
    assert info["status"] == "pass" and Path(info["report"]) == js.resolve()
    # A Caffe reference without a golden file cannot be judged: exit 2, not a pass.
    assert main(["run", "--prototxt", str(proto), "--references", "caffe-atlas"]) == 2


# -- user goldens carry their input ---------------------------------------------------------------


def _dump_goldens(tmp_path, *, drop_input: bool = False):
    """Two 'builds' as `python -m port dump` writes them: data/<blob> and diff/<blob> only, the
    input under data/data (pycaffe's naming)."""
    nd = _netdef()
    w = _weights(nd)
    x = _x()
    files = {}
    for blas, out in _stand_in_goldens(nd, w, x).items():
        arrays = dict(out.blobs)
        if drop_input:
            arrays.pop("data/data")
        files[blas.split("-", 1)[1]] = tmp_path / f"{blas}.npz"
        np.savez(files[blas.split("-", 1)[1]], **arrays)
    caffemodel = tmp_path / "tiny.caffemodel"
    port.write_caffemodel(caffemodel, nd, w)
    return files, caffemodel, x


def test_goldens_without_input_keys_are_run_on_their_own_data_blob(tmp_path):
    files, caffemodel, x = _dump_goldens(tmp_path)
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    setup = prun.resolve(
        prototxt=proto, caffemodel=caffemodel, golden_files=files, backward_from=BACKWARD
    )
    np.testing.assert_array_equal(setup.x, x)
    assert not setup.input_source.startswith("SYNTHETIC")
    result, _ = prun.run_parity(setup, references=REFS)
    assert result, result.diagnosis


def test_a_golden_without_any_input_stops_with_a_clear_error(tmp_path, capsys):
    files, caffemodel, _ = _dump_goldens(tmp_path, drop_input=True)
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    args = ["run", "--prototxt", str(proto), "--caffemodel", str(caffemodel), "--no-verdict"]
    for blas, f in files.items():
        args += ["--golden", f"{blas}={f}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds no input for net input 'data'" in err and str(files["atlas"]) in err


def test_goldens_from_different_inputs_are_refused(tmp_path):
    files, caffemodel, _ = _dump_goldens(tmp_path)
    with np.load(files["openblas"]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["data/data"] = arrays["data/data"] + 1
    np.savez(files["openblas"], **arrays)
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    with pytest.raises(prun.ParitySetupError, match="input differs"):
        prun.resolve(prototxt=proto, caffemodel=caffemodel, golden_files=files)


def test_without_goldens_the_first_line_says_the_input_is_synthetic(tmp_path, capsys):
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    rc = main(["run", "--prototxt", str(proto), "--references", "numpy64,numpy32", "--no-verdict",
               "--backward-from", BACKWARD])  # fmt: skip
    first = capsys.readouterr().out.splitlines()[0]
    assert rc == 0 and "INPUT SYNTHETIC" in first and "no golden given" in first


def test_a_port_with_the_wrong_shape_still_writes_valid_json():
    # Shape mismatches give infinite errors deep inside the local analysis; JSON has no inf.
    result, _ = prun.run_parity(
        _setup(), references=REFS, port_factory=_broken("pool1", FloorMaxPool)
    )
    doc = json.loads(result.dumps())
    assert doc["passed"] is False
    assert any(v.get("port") == "inf" for row in doc["local"] for v in row["forward"].values())


@pytest.mark.parametrize("content", [None, b"garbage", b"PK\x03\x04 cut short"],
                         ids=["missing", "not-npz", "truncated-zip"])  # fmt: skip
def test_an_unreadable_golden_file_is_one_error_line(tmp_path, capsys, content):
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    golden = tmp_path / "g.npz"
    if content is not None:
        golden.write_bytes(content)
    rc = main(["run", "--prototxt", str(proto), "--golden", f"atlas={golden}",
               "--references", "caffe-atlas", "--no-verdict"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"parity: error: {golden}: not a readable golden .npz")
    assert "Traceback" not in err
