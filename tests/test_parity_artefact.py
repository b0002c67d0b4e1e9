"""Every export format of the architecture nets (and, slow, of every built-in model) passes
``parity run --artefact`` against real Caffe's goldens under the port's policy; an artefact with one
weight perturbed fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import port
from parity.__main__ import main as parity_main
from port.export import export_net
from port.zoo import MODELS

from ._helpers import case_weights
from .layer_cases import ARCHITECTURES

SUFFIX = {"python": ".py", "pt2": ".pt2", "onnx": ".onnx"}
CASES = [(name, fmt) for name in sorted(ARCHITECTURES) for fmt in SUFFIX]


def _artefact_run(args: list[str], artefact: Path, report: Path, capsys) -> tuple[int, dict, str]:
    code = parity_main(["run", *args, "--artefact", str(artefact), "--json", str(report)])
    out = capsys.readouterr().out
    return code, json.loads(report.read_text()), out


def _case_args(case, weights: Path) -> list[str]:
    goldens = [f"--golden={b}={case.golden(b)}" for b in ("atlas", "openblas")]
    return [
        "--prototxt", str(case.prototxt), "--caffemodel", str(weights), *goldens,
        "--backward-from", case.backward, "--no-local",
    ]  # fmt: skip


def _export_case(name: str, fmt: str, tmp_path: Path, perturb: bool = False) -> tuple[Path, Path]:
    case = ARCHITECTURES[name]
    _, weights = case_weights(case, tmp_path)
    net = port.load_caffe(case.prototxt, weights)
    if perturb:
        with torch.no_grad():
            # One weight of the first learnable layer, moved by far more than any noise.
            p = next(net.parameters())
            p.view(-1)[0] += 1.0 + 10 * float(p.abs().max())
    out = tmp_path / f"{name}{SUFFIX[fmt]}"
    export_net(net, fmt, out, prototxt=case.prototxt, caffemodel=weights)
    return out, weights


@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_architecture_artefact_passes_parity(name, fmt, tmp_path, capsys):
    out, weights = _export_case(name, fmt, tmp_path)
    code, report, text = _artefact_run(
        _case_args(ARCHITECTURES[name], weights), out, tmp_path / "r.json", capsys
    )
    assert code == 0, text
    assert report["passed"] is True
    judged = {(p["subject"], c["key"]) for p in report["pairs"] for c in p["checks"]}
    subject_keys = {k for s, k in judged if s == "artefact"}
    netdef = port.load_prototxt(ARCHITECTURES[name].prototxt)
    # The artefact is the subject, every top's data judged, and diffs for python and pt2.
    for layer in netdef.layers:
        for top in layer.tops:
            assert f"data/{top}" in subject_keys, top
    has_diff = any(k.startswith("diff/") for k in subject_keys)
    assert has_diff == (fmt != "onnx")


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_an_artefact_with_one_weight_perturbed_fails(fmt, tmp_path, capsys):
    out, weights = _export_case("sphereface", fmt, tmp_path, perturb=True)
    code, report, text = _artefact_run(
        _case_args(ARCHITECTURES["sphereface"], weights), out, tmp_path / "r.json", capsys
    )
    assert code == 1, text
    assert report["passed"] is False
    failed = {
        c["key"] for p in report["pairs"] if p["subject"] == "artefact" for c in p["checks"]
        if not c["passed"]
    }  # fmt: skip
    assert "data/conv1_1" in failed


def test_a_python_artefact_with_its_weights_file_edited_fails(tmp_path, capsys):
    """The perturbation made after export, in the safetensors file the user carries."""
    from safetensors.torch import load_file, save_file

    out, weights = _export_case("hed", "python", tmp_path)
    state = load_file(str(out.with_suffix(".safetensors")))
    key = next(k for k in state if k.endswith("weight"))
    state[key].view(-1)[3] += 1.0
    save_file(state, str(out.with_suffix(".safetensors")))
    code, report, _ = _artefact_run(
        _case_args(ARCHITECTURES["hed"], weights), out, tmp_path / "r.json", capsys
    )
    assert code == 1 and report["passed"] is False


def test_a_missing_artefact_is_a_setup_error(tmp_path, capsys):
    case = ARCHITECTURES["sphereface"]
    _, weights = case_weights(case, tmp_path)
    code = parity_main(["run", *_case_args(case, weights), "--artefact", str(tmp_path / "x.pt2")])
    assert code == 2
    assert "no such artefact" in capsys.readouterr().err


def _golden_available(model: str) -> bool:
    from legacy_caffe import goldens as lg

    try:
        lg.load_golden(model, "atlas", next(iter(lg.load_manifest(model)["inputs"])))
        return True
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(SUFFIX))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_builtin_model_artefact_passes_parity(model, fmt, tmp_path, capsys):
    """Every built-in model, exported from the goldens' seeded weights (port export --model)."""
    out = tmp_path / f"{model.replace('.', '_')}{SUFFIX[fmt]}"
    assert port.cli.main(["export", "--model", model, "--format", fmt, "--out", str(out)]) == 0
    args = ["--model", model, "--no-local"]
    if not _golden_available(model):
        args += ["--allow-missing", "--references", "numpy64,numpy32,onnx"]
    code, report, text = _artefact_run(args, out, tmp_path / "r.json", capsys)
    assert code == 0, text
    assert report["passed"] is True


@pytest.mark.slow
def test_caffenet_python_artefact_with_one_weight_perturbed_fails(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "caffenet.py"
    assert (
        port.cli.main(["export", "--model", "caffenet", "--format", "python", "--out", str(out)])
        == 0
    )
    state = load_file(str(out.with_suffix(".safetensors")))
    w = state["fc8.weight"].numpy()
    w[945, int(np.argmax(np.abs(w[945])))] *= 1.5
    save_file(
        {k: torch.as_tensor(v) for k, v in state.items()}, str(out.with_suffix(".safetensors"))
    )
    code, report, _ = _artefact_run(
        ["--model", "caffenet", "--no-local"], out, tmp_path / "r.json", capsys
    )
    assert code == 1 and report["passed"] is False
