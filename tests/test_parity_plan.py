"""Comparisons as data (parity/plan.py): a runner the judge has never heard of, judged by a plan.

The toy runner is the float64 port with a planted change of 1e-3 of its range on one blob; it is
judged against the committed real-Caffe CaffeNet goldens with a plan written here, without any
edit of parity/core.py, diagnosis.py or report.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

port = pytest.importorskip("port")
goldens = pytest.importorskip("legacy_caffe.goldens")

from parity import core  # noqa: E402
from parity.golden_inputs import golden_inputs  # noqa: E402
from parity.plan import Comparison, Noise, Plan, default_plan  # noqa: E402
from parity.report import format_table  # noqa: E402
from parity.runners import GoldenRunner, PortRunner, Runner, RunnerOutput  # noqa: E402

BUILDS = ("caffe-atlas", "caffe-openblas")
PLANTED = "data/conv3"


class Planted64:
    """A float64 port that records ``PLANTED`` 1e-3 of its range too high."""

    name = "toy64"

    def __init__(self, net64, planted: str | None) -> None:
        self.inner = PortRunner(net64, "port64")
        self.planted = planted

    def describe(self) -> dict:
        return {"kind": "toy", "dtype": "float64", "what": "float64 port, one blob nudged"}

    def __call__(self, x, *, backward_from=None) -> RunnerOutput:
        out = self.inner(x, backward_from=backward_from)
        blobs = dict(out.blobs)
        if self.planted:
            b = blobs[self.planted]
            blobs[self.planted] = b + 1e-3 * np.abs(b).max()
        return RunnerOutput(self.name, blobs, "float64", out.backward, out.seconds, "toy")


@pytest.fixture(scope="module")
def caffenet():
    """CaffeNet's definition, the goldens' float64 port, their input and both builds' runners."""
    import torch

    try:
        arrays = {b: goldens.load_golden("caffenet", b[6:], "astronaut") for b in BUILDS}
        weights = port.read_caffemodel(goldens.golden_weights("caffenet"))
    except Exception as exc:  # not generated in this checkout
        pytest.skip(f"CaffeNet goldens unavailable: {exc}")
    nd = port.load_prototxt(port.zoo.zoo_model("caffenet").prototxt)
    net = port.CaffeNet(nd)
    net.load_blobs(weights)
    net64 = net.eval().to(torch.float64)
    x = golden_inputs(nd, arrays[BUILDS[0]], "golden")["data"]
    data = {b: {k: v for k, v in a.items() if k.startswith("data/")} for b, a in arrays.items()}
    refs = [GoldenRunner(RunnerOutput(b, data[b], "float32", False, 0.0, b)) for b in BUILDS]
    return nd, net64, x, refs


def _judge(caffenet, planted: str | None):
    nd, net64, x, refs = caffenet
    runners = [Planted64(net64, planted), PortRunner(net64, "port64"), *refs]
    assert all(isinstance(r, Runner) for r in runners)
    outs = {r.name: r(x) for r in runners}  # forward only: the goldens' data only
    plan = Plan(
        comparisons=tuple(Comparison("toy64", b, "spread") for b in BUILDS),
        noise=Noise(over="toy64", builds=BUILDS, data_truth="port64"),
        prefer=BUILDS,
    )
    return core.judge(nd, outs, plan=plan, model="caffenet")


def test_a_new_runner_with_a_planted_change_fails_at_that_blob(caffenet):
    result = _judge(caffenet, PLANTED)
    assert not result.passed
    assert result.diagnosis["start"]["key"] == PLANTED
    assert result.diagnosis["start"]["pair"] == "toy64 vs caffe-atlas"
    failed = {(p.reference, c.key) for p in result.pairs for c in p.checks if not c.passed}
    assert failed == {(b, PLANTED) for b in BUILDS}
    assert "FAIL toy64 vs caffe-atlas data/conv3" in format_table(result)
    assert result.to_json()["runners"]["toy64"]["source"] == "toy"


def test_the_same_runner_unplanted_passes_that_blob(caffenet):
    # The control: the 1e-3 change alone is what fails (a float64 port is within the builds'
    # spread of float32 Caffe everywhere).
    result = _judge(caffenet, None)
    assert result.passed, [(p.reference, [c.key for c in p.failures()]) for p in result.pairs]
    assert [p.column for p in result.pairs if p.rule == "spread"] == list(BUILDS)


def test_default_plan_is_the_pairs_of_parity_run():
    present = ["port32", "port64", "caffe-atlas", "caffe-openblas", "numpy64", "numpy32", "onnx"]
    plan = default_plan(present)
    got = [
        (c.subject, c.reference, c.rule, c.blobs, c.column or c.reference) for c in plan.comparisons
    ]
    assert got == [
        ("port32", "caffe-atlas", "spread", "all", "caffe-atlas"),
        ("port32", "caffe-openblas", "spread", "all", "caffe-openblas"),
        ("port32", "numpy32", "spread", "data", "numpy32"),
        ("port32", "onnx", "spread", "data", "onnx"),
        ("port32", "numpy64", "truth", "data", "truth"),
        ("port64", "numpy64", "float64", "data", "f64-vs-numpy64"),
        ("port32", "port64", "truth", "diff", "truth"),
    ]
    assert plan.noise == Noise("port32", BUILDS, "numpy64", "port64", independent=True)
    # Without numpy64 the float64 port is the truth of the data too, and not independent.
    bare = default_plan(["artefact", "port64"], subject="artefact")
    assert [(c.subject, c.reference, c.blobs) for c in bare.comparisons] == [
        ("artefact", "port64", "all")
    ]
    assert bare.noise == Noise("artefact", (), "port64", "port64", independent=False)


def test_a_plan_naming_a_runner_without_output_is_refused():
    plan = Plan((Comparison("toy", "ghost", "spread"),), Noise(over="toy"))
    with pytest.raises(ValueError, match="ghost"):
        core.judge(None, {"toy": RunnerOutput("toy", {}, "float32", False)}, plan=plan)
    with pytest.raises(ValueError, match="unknown rule"):
        Comparison("a", "b", "closest")


def test_judge_diagnosis_and_report_name_no_runner():
    names = re.compile(
        r"\b(PORT32|PORT64|NUMPY32|NUMPY64|ONNX|CAFFE_\w+)\b|\.runners import (?!RunnerOutput\b)"
    )
    root = Path(__file__).resolve().parents[1] / "parity"
    for module in ("core.py", "diagnosis.py", "report.py", "flips.py"):
        src = (root / module).read_text()
        assert not names.search(src), (module, names.search(src))
        assert '"port32"' not in src and '"port64"' not in src and '"numpy64"' not in src, module


def test_default_plan_judges_the_accurate_port_beside_the_fast_one():
    """With port32-accurate present: port32's pairs unchanged, then the accurate port's against the
    builds and the truths in ``acc:`` columns; each subject is a configuration, the goal holds the
    accurate one."""
    fast = ["port32", "port64", "caffe-atlas", "caffe-openblas", "numpy64", "numpy32", "onnx"]
    plan = default_plan([*fast, "port32-accurate"])
    assert plan.comparisons[:7] == default_plan(fast).comparisons
    got = [(c.subject, c.reference, c.rule, c.blobs, c.column) for c in plan.comparisons[7:]]
    assert got == [
        ("port32-accurate", "caffe-atlas", "spread", "all", "acc:caffe-atlas"),
        ("port32-accurate", "caffe-openblas", "spread", "all", "acc:caffe-openblas"),
        ("port32-accurate", "numpy64", "truth", "data", "acc:truth"),
        ("port32-accurate", "port64", "truth", "diff", "acc:truth"),
    ]
    assert [(c.name, c.subject, c.closeness_goal) for c in plan.configurations] == [
        ("float32", "port32", False),
        ("accurate", "port32-accurate", True),
    ]
    assert plan.noise.over == "port32"
    assert [(c.name, c.subject) for c in default_plan(fast).configurations] == [
        ("float32", "port32")
    ]
