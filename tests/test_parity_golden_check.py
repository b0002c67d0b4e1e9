"""Goldens are validated on their own before a run trusts them (parity/golden_check.py).

The tampered goldens are made from the committed real-Caffe goldens of the ResNet-style test net
(tests/data/mini_resnet, seeded weights 3, backward from fc:3): one array of the ATLAS golden is
changed, the OpenBLAS one is left real, and the run must refuse with the file and the key named.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import port
from parity import golden_check, numpy_ref
from parity import run as prun
from parity.__main__ import main as parity_main

from . import custom_cases, layer_cases
from ._helpers import write_seeded_weights

DATA = Path(__file__).parent / "data" / "mini_resnet"
BACKWARD = "fc:3"
FORWARD_KEY = "data/fc"  # the blob the tampering hid
BACKWARD_KEY = "diff/res2a_branch2a"  # a conv's bottom diff, mid-net
# Same shape as each key, different values (swapping equal arrays changes nothing).
SWAP_WITH = {FORWARD_KEY: "data/sig", BACKWARD_KEY: "diff/res2a"}
SWAP_WITH["diff/res2a"] = "diff/res2a_branch2a"


def _real(blas: str) -> dict[str, np.ndarray]:
    with np.load(DATA / "goldens" / blas / "a_and_1.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """The net's definition, its seeded weights and their caffemodel."""
    folder = tmp_path_factory.mktemp("mini")
    caffemodel = folder / "w.caffemodel"
    netdef = write_seeded_weights(DATA / "deploy.prototxt", 3, caffemodel)
    manifest = json.loads((DATA / "goldens" / "manifest.json").read_text())
    assert port.sha256_file(caffemodel) == manifest["weights"]["sha256"]
    return netdef, port.seed_weights(netdef, 3), caffemodel


def _tamper(arrays: dict, kind: str, key: str) -> dict:
    out = dict(arrays)
    value = arrays[key]
    rng = np.random.default_rng(0)
    if kind == "bool":
        out[key] = np.ones(value.shape, bool)
    elif kind == "int":
        out[key] = np.round(value).astype(np.int64)
    elif kind == "complex":
        out[key] = value.astype(np.complex64)
    elif kind == "noise":
        out[key] = rng.normal(0.0, 100.0, value.shape).astype(np.float32)
    elif kind == "scaled":
        out[key] = (value * np.float32(1.001)).astype(np.float32)
    elif kind == "swapped":
        other = SWAP_WITH[key]
        out[key], out[other] = arrays[other], value
    elif kind == "sign":
        out[key] = -value
    return out


def _resolve(mini, tmp_path, atlas: dict):
    _, _, caffemodel = mini
    path = tmp_path / "atlas.npz"
    np.savez(path, **atlas)
    files = {"atlas": path, "openblas": DATA / "goldens" / "openblas" / "a_and_1.npz"}
    return prun.resolve(
        prototxt=DATA / "deploy.prototxt",
        caffemodel=caffemodel,
        golden_files=files,
        backward_from=BACKWARD,
        references=("caffe-atlas", "caffe-openblas", "numpy64"),
    )


KINDS = ["bool", "int", "complex", "noise", "scaled", "swapped", "sign"]


@pytest.mark.parametrize("key", [FORWARD_KEY, BACKWARD_KEY])
@pytest.mark.parametrize("kind", KINDS)
def test_a_tampered_golden_is_refused_naming_file_and_key(mini, tmp_path, kind, key):
    with pytest.raises(golden_check.GoldenCheckError) as err:
        _resolve(mini, tmp_path, _tamper(_real("atlas"), kind, key))
    msg = str(err.value)
    assert str(tmp_path / "atlas.npz") in msg
    # A swap is caught at whichever of the two keys comes first in the file.
    named = {key, SWAP_WITH[key]} if kind == "swapped" else {key}
    assert any(k in msg for k in named), msg
    if kind in ("bool", "int", "complex"):
        assert "not float32 or float64" in msg


def test_the_real_goldens_of_the_same_net_are_accepted_with_a_note(mini, tmp_path):
    setup = _resolve(mini, tmp_path, _real("atlas"))
    notes = [n for n in setup.notes if "checked on its own" in n]
    assert [n.split()[0] for n in notes] == ["caffe-atlas", "caffe-openblas"]


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda a: a.pop("data/pool1"), "data/pool1 is missing"),
        (lambda a: a.pop("diff/pool1"), "diff/pool1 is missing"),
        (lambda a: a.update({"data/fc": a["data/fc"].reshape(-1)}), "data/fc has shape (20,)"),
        (lambda a: a.update({"data/ghost": a["data/fc"]}), "no blob 'ghost'"),
        (lambda a: a["data/fc"].__setitem__((0, 0), np.nan), "non-finite"),
        (lambda a: a["diff/conv1"].__setitem__((0, 0, 0, 0), np.inf), "non-finite"),
    ],
)
def test_shapes_completeness_and_finiteness_are_checked_before_any_computation(
    mini, tmp_path, monkeypatch, change, why
):
    def no_computation(*args, **kwargs):
        raise AssertionError("the consistency check ran on a golden that should be refused first")

    monkeypatch.setattr(golden_check, "check_consistency", no_computation)
    atlas = {k: v.copy() for k, v in _real("atlas").items()}
    change(atlas)
    with pytest.raises(golden_check.GoldenCheckError, match="golden refused") as err:
        _resolve(mini, tmp_path, atlas)
    assert why in str(err.value)


def _plant_fc_bias_error(netdef, weights):
    net = port.CaffeNet(netdef)
    net.load_blobs({**weights, "fc": [weights["fc"][0], weights["fc"][1] + np.float32(0.5)]})
    return net.eval()


def test_a_tampered_golden_no_longer_hides_a_planted_port_error(mini, tmp_path, monkeypatch):
    refs = ("caffe-atlas", "caffe-openblas")
    # Noise in fc and in sig (sigmoid of fc), the blobs an fc bias moves (softmax is not moved by
    # a bias added to every unit).
    tampered = _tamper(_tamper(_real("atlas"), "noise", FORWARD_KEY), "noise", "data/sig")
    # Without the check (as before it existed) the noise widens those blobs' spread and the port's
    # fc bias error (+0.5) passes the comparisons with both builds (`--no-local`): the attack is
    # real on this net.
    with monkeypatch.context() as m:
        m.setattr(golden_check, "check_arrays", lambda *a, **k: None)
        m.setattr(golden_check, "check_goldens", lambda *a, **k: [])
        setup = _resolve(mini, tmp_path, tampered)
        result, _ = prun.run_parity(
            setup, references=refs, port_factory=_plant_fc_bias_error, local_check=False
        )
    assert result.passed
    with pytest.raises(golden_check.GoldenCheckError, match="data/fc is"):
        _resolve(mini, tmp_path, tampered)
    # With the real goldens the same planted error fails.
    setup = _resolve(mini, tmp_path, _real("atlas"))
    result, _ = prun.run_parity(
        setup, references=refs, port_factory=_plant_fc_bias_error, local_check=False
    )
    assert not result.passed


def test_the_command_line_exits_2_with_one_line_and_writes_nothing(mini, tmp_path, capsys):
    _, _, caffemodel = mini
    bad = tmp_path / "atlas.npz"
    np.savez(bad, **_tamper(_real("atlas"), "scaled", BACKWARD_KEY))
    report = tmp_path / "r.json"
    code = parity_main(
        [
            "run",
            "--prototxt",
            str(DATA / "deploy.prototxt"),
            "--caffemodel",
            str(caffemodel),
            "--golden",
            f"atlas={bad}",
            "--golden",
            f"openblas={DATA / 'goldens' / 'openblas' / 'a_and_1.npz'}",
            "--backward-from",
            BACKWARD,
            "--no-verdict",
            "--json",
            str(report),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("parity: error: ")
    assert str(bad) in err and BACKWARD_KEY in err
    assert not report.exists()


# -- every committed real golden is accepted ------------------------------------------------------


def _case_goldens(case) -> tuple:
    netdef = port.load_prototxt(case.prototxt)
    files = [case.golden(b) for b in ("atlas", "openblas")]
    return netdef, port.seed_weights(netdef, case.seed), files, case.backward


def _ssd_goldens():
    spec = importlib.util.spec_from_file_location("ssd_port_golden_check", custom_cases.PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    netdef = port.load_prototxt(custom_cases.PYTHON_NET)
    weights = port.seed_weights(netdef, custom_cases.SEED)
    files = [custom_cases.golden(b) for b in ("atlas", "openblas")]
    return netdef, weights, files, custom_cases.BACKWARD


def _unregister_ssd():
    for t, m, n in [
        ("Permute", None, None),
        ("Normalize", None, None),
        ("Python", "ssd_layers", "Permute"),
        ("Python", "ssd_layers", "Normalize"),
    ]:
        port.unregister_layer(t, module=m, layer=n)
        numpy_ref.unregister(t, module=m, layer=n)


CASES = sorted({**layer_cases.CASES, **layer_cases.ARCHITECTURES})


def _check_all(netdef, weights, files, backward) -> list[float]:
    """Each golden through both stages; the worst error-to-bound ratio of each."""
    ratios = []
    for path in files:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        golden_check.check_arrays(netdef, arrays, str(path))
        r = golden_check.check_consistency(netdef, weights, arrays, str(path), backward)
        assert r["checked"] > 0 and not r["unchecked"], r
        ratios.append(r["worst"][2] / r["worst"][3])
    return ratios


@pytest.mark.parametrize("name", CASES + ["mini_resnet", "ssd"])
def test_committed_test_goldens_are_accepted(name):
    if name == "mini_resnet":
        netdef = port.load_prototxt(DATA / "deploy.prototxt")
        files = [DATA / "goldens" / b / "a_and_1.npz" for b in ("atlas", "openblas")]
        args = (netdef, port.seed_weights(netdef, 3), files, BACKWARD)
    elif name == "ssd":
        args = _ssd_goldens()
    else:
        args = _case_goldens({**layer_cases.CASES, **layer_cases.ARCHITECTURES}[name])
    try:
        ratios = _check_all(*args)
    finally:
        if name == "ssd":
            _unregister_ssd()
    # Measured when the bound was set: at most 0.02 of it on these nets (see golden_check).
    assert max(ratios) < 0.1


@pytest.mark.parametrize("model", ["caffenet", "alexnet", "vgg16", "googlenet", "squeezenet1.0",
                                   "squeezenet1.1"])  # fmt: skip
def test_zoo_goldens_are_accepted_where_present(model):
    from legacy_caffe import goldens as lg

    manifest = lg.load_manifest(model)
    bw = manifest["backward"]
    inputs = list(manifest["inputs"])
    arrays = {}
    for blas in ("atlas", "openblas"):
        try:
            arrays[blas] = lg.load_golden(model, blas, inputs[0], regenerate=False)
        except Exception as exc:  # only CaffeNet's are committed; the rest live in cache/golden
            pytest.skip(
                f"{model} {blas} golden not in this checkout (`legacy_caffe goldens`): {exc}"
            )
    netdef = port.load_prototxt(port.zoo.zoo_model(model).prototxt)
    weights = port.read_caffemodel(lg.golden_weights(model))
    for blas, golden in arrays.items():
        source = f"{model} {blas}"
        golden_check.check_arrays(netdef, golden, source)
        r = golden_check.check_consistency(
            netdef, weights, golden, source, f"{bw['blob']}:{bw['unit']}"
        )
        assert r["checked"] > 0 and not r["unchecked"]
        # CaffeNet measured at 0.09 of the bound (data/conv3, ATLAS).
        assert r["worst"][2] / r["worst"][3] < 0.5, r["worst"]


@pytest.mark.parametrize(
    "backward, why",
    [
        ("fc:99", "unit 99 is outside blob 'fc' (10 values per sample)"),
        ("fc:-1", "unit -1 is outside blob 'fc'"),
        ("nosuch:0", "no blob 'nosuch' to start backward from"),
        ("fc:2", "diff/fc is not the one-hot of --backward-from fc:2"),
    ],
)
def test_a_backward_start_the_goldens_did_not_use_is_a_clear_error(mini, backward, why):
    netdef, weights, _ = mini
    with pytest.raises(port.CaffeError if "one-hot" not in why else golden_check.GoldenCheckError,
                       match=why.replace("(", r"\(").replace(")", r"\)")):  # fmt: skip
        golden_check.check_consistency(netdef, weights, _real("atlas"), "atlas.npz", backward)


def test_backward_failures_name_the_port_as_the_other_suspect(mini):
    netdef, weights, _ = mini
    # Every golden departing at the same diff is what a wrong port backward would look like.
    atlas = _tamper(_real("atlas"), "sign", BACKWARD_KEY)
    with pytest.raises(golden_check.GoldenCheckError, match="suspect the port's backward"):
        golden_check.check_consistency(netdef, weights, atlas, "atlas.npz", BACKWARD)


def test_a_float64_dump_is_accepted_and_other_weights_are_refused(mini):
    netdef, weights, _ = mini
    as64 = {k: v.astype(np.float64) for k, v in _real("atlas").items()}
    golden_check.check_arrays(netdef, as64, "atlas64.npz")
    assert golden_check.check_consistency(netdef, weights, as64, "atlas64.npz", BACKWARD)["checked"]
    # The goldens of seed 3 judged with seed 4's weights: refused at the first layer with weights.
    other = port.seed_weights(netdef, 4)
    with pytest.raises(golden_check.GoldenCheckError, match="data/conv1 is .* with these weights"):
        golden_check.check_consistency(netdef, other, _real("atlas"), "atlas.npz", BACKWARD)
