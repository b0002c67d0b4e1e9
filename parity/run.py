"""One parity run end to end: resolve the model, weights, input and goldens; run; judge."""

from __future__ import annotations

import copy
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from port.blobkeys import is_blob_key, is_diff
from port.errors import CaffeError, ToolError

from . import core, local, runners
from .closeness import closeness
from .compare import ParityResult
from .golden_inputs import ParitySetupError, golden_inputs
from .plan import Plan, default_plan
from .runners import (
    CAFFE_ATLAS,
    CAFFE_BUILDS,
    CAFFE_OPENBLAS,
    NUMPY32,
    NUMPY64,
    ONNX,
    PORT32,
    PORT32_ACCURATE,
    PORT64,
    RunnerOutput,
    blas_of,
    caffe_runner,
    is_caffe,
)

if TYPE_CHECKING:
    from port import CaffeNet

__all__ = [
    "ALL_REFERENCES",
    "ParitySetupError",
    "ParitySetup",
    "resolve",
    "run_parity",
    "worst_heatmap",
]

ALL_REFERENCES = (CAFFE_ATLAS, CAFFE_OPENBLAS, NUMPY64, NUMPY32, ONNX)
SYNTHETIC_SEED = 1
SYNTHETIC_INPUT_SEED = 7


@dataclass
class ParitySetup:
    """Everything a run needs, resolved.

    Attributes
    ----------
    name : str
        Model name for the report.
    prototxt : Path
    netdef : NetDef
    weights : dict
        Layer name -> Caffe blobs (float32 arrays).
    weights_source : str
    x : ndarray or dict
        The input batch (from the goldens when there are any).
    backward_from : str or None
        ``"BLOB:UNIT"``.
    goldens : dict
        Runner name ("caffe-atlas", ...) -> RunnerOutput.
    notes : list of str
    caffemodel : Path or None
        The weights file checked (None for seeded weights).
    seed : int or None
        The ``port.seed_weights`` seed, for seeded weights.
    input_source : str
        Where the input batch came from (the report's first line says it).
    """

    name: str
    prototxt: Path
    netdef: Any
    weights: dict
    weights_source: str
    x: Any
    backward_from: str | None
    goldens: dict[str, RunnerOutput] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    caffemodel: Path | None = None
    seed: int | None = None
    input_source: str = "given"


def _default_backward(netdef: Any) -> str | None:
    """The last blob not made by a Softmax (the classifier), unit 0."""
    for layer in reversed(netdef.layers):
        if layer.type != "Softmax":
            return f"{layer.tops[0]}:0"
    return None


def _manifest_backward(npz: Path) -> str | None:
    """BLOB:UNIT from the manifest `legacy_caffe goldens` writes beside a user's dumps, if any."""
    import json

    for folder in (npz.parent, npz.parent.parent):
        man = folder / "manifest.json"
        if man.is_file():
            try:
                bw = json.loads(man.read_text()).get("backward", {})
                return f"{bw['blob']}:{bw['unit']}"
            except (ValueError, KeyError, TypeError):
                return None
    return None


def _synthetic_input(netdef: Any) -> np.ndarray:
    name, shape = next(iter(netdef.inputs.items()))
    rng = np.random.default_rng(SYNTHETIC_INPUT_SEED)
    # Range of a mean-subtracted 0-255 image, so magnitudes are those of real use.
    return rng.uniform(-120.0, 135.0, (1,) + tuple(shape[1:])).astype(np.float32)


def _golden_runner(
    blas: str, arrays: Mapping[str, np.ndarray], source: str, netdef: Any
) -> RunnerOutput:
    from . import golden_check  # it raises this module's ParitySetupError

    golden_check.check_arrays(netdef, arrays, source)  # dtypes, shapes, finite: before any use
    blobs = {k: v for k, v in arrays.items() if is_blob_key(k)}
    has_diff = any(is_diff(k) for k in blobs)
    return RunnerOutput(caffe_runner(blas), blobs, "float32", has_diff, 0.0, source)


@dataclass
class _Found:
    """What a built-in model or a user's files give a run before weights and input are settled."""

    name: str
    prototxt: Path
    netdef: Any
    caffemodel: Path | None = None
    backward_from: str | None = None
    goldens: dict[str, RunnerOutput] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _find_builtin(
    model: str,
    want_caffe: list[str],
    input_name: str | None,
    *,
    regenerate: bool,
    allow_missing: bool,
) -> _Found:
    """A built-in model's definition, and its goldens, weights and backward seed from the manifest."""
    import port
    from port.zoo import zoo_model

    prototxt = Path(zoo_model(model).prototxt)
    found = _Found(model, prototxt, port.load_prototxt(prototxt))
    try:
        from legacy_caffe import goldens as lg

        manifest = lg.load_manifest(model)
    except (OSError, ValueError, ToolError) as exc:  # no manifest yet, or an unreadable one
        if want_caffe and not allow_missing:
            raise ParitySetupError(
                f"{model}: no golden manifest ({exc}); generate goldens with "
                f"`python -m legacy_caffe goldens --model {model}`"
            ) from None
        found.notes.append(f"no golden manifest for {model}: {exc}")
        return found
    bw = manifest.get("backward", {})
    found.backward_from = f"{bw['blob']}:{bw['unit']}"
    input_name = input_name or next(iter(manifest["inputs"]))
    found.caffemodel = Path(lg.golden_weights(model))
    for r in want_caffe:
        blas = blas_of(r)
        try:
            arrays = lg.load_golden(model, blas, input_name, regenerate=regenerate)
        except Exception as exc:
            if not allow_missing:
                raise ParitySetupError(
                    f"{model}: golden {blas}/{input_name} unavailable: {exc}"
                ) from None
            found.notes.append(f"golden {blas}/{input_name} unavailable: {exc}")
            continue
        source = f"golden {model} {blas}/{input_name}"
        found.goldens[r] = _golden_runner(blas, arrays, source, found.netdef)
        found.inputs = golden_inputs(found.netdef, arrays, source)
    return found


def _read_golden_file(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a golden .npz; any unreadable file is a setup error that names it."""
    from legacy_caffe.manifest import load_npz

    try:
        return load_npz(Path(path))
    except CaffeError as exc:  # port.arrays' refusals: the reason without the path again
        raise ParitySetupError(f"{path}: not a readable golden .npz ({exc.reason})") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParitySetupError(f"{path}: not a readable golden .npz ({reason})") from None


def _find_user(
    prototxt: Path,
    golden_files: Mapping[str, str | Path],
    want_caffe: list[str],
    *,
    allow_missing: bool,
    proto: str | Path | None = None,
) -> _Found:
    """A user's definition and golden files; every golden must carry the same input."""
    import port

    netdef = port.load_prototxt(prototxt, proto=proto)
    found = _Found(netdef.name or prototxt.stem, prototxt, netdef)
    for blas, path in golden_files.items():
        arrays = _read_golden_file(path)
        found.goldens[caffe_runner(blas)] = _golden_runner(blas, arrays, str(path), netdef)
        mine = golden_inputs(netdef, arrays, str(path))
        if found.inputs and any(
            mine[k].shape != v.shape or not np.array_equal(mine[k], v)
            for k, v in found.inputs.items()
        ):
            raise ParitySetupError(
                f"{path}: its input differs from the other golden file's; goldens compared "
                "with each other must come from the same input"
            )
        found.inputs = mine
        found.backward_from = found.backward_from or _manifest_backward(Path(path))
    missing = [r for r in want_caffe if r not in found.goldens]
    if missing and not allow_missing:
        raise ParitySetupError(
            f"no golden file for {', '.join(missing)}: pass --golden BLAS=FILE.npz "
            "(made by `python -m legacy_caffe goldens`) or leave them out of --references"
        )
    found.notes.extend(f"{r}: no golden given" for r in missing)
    return found


def resolve(
    *,
    model: str | None = None,
    prototxt: str | Path | None = None,
    caffemodel: str | Path | None = None,
    references: Sequence[str] = ALL_REFERENCES,
    golden_files: Mapping[str, str | Path] | None = None,
    input_name: str | None = None,
    backward_from: str | None = None,
    regenerate: bool = False,
    allow_missing: bool = False,
    proto: str | Path | None = None,
) -> ParitySetup:
    """Find the definition, weights, input and goldens of a run.

    Parameters
    ----------
    model : str, optional
        A built-in model (``port.zoo``); its goldens come from ``legacy_caffe.goldens``.
    prototxt, caffemodel : path, optional
        A user's own model instead; its goldens are passed with ``golden_files``.
    references : sequence of str
        Which references the run will use (only the Caffe ones matter here).
    golden_files : mapping blas -> .npz path, optional
        Golden dumps for a user's model (``{"atlas": ..., "openblas": ...}``).
    input_name : str, optional
        Which golden input set (default: the first the manifest lists).
    backward_from : str, optional
        ``BLOB:UNIT``; default: the goldens' (built-in models) or the classifier blob, unit 0.
    regenerate : bool
        Regenerate missing cached goldens with real Caffe (needs the legacy root).
    allow_missing : bool
        Drop Caffe references whose goldens are missing instead of failing.
    proto : path, optional
        A Caffe fork's caffe.proto that ``prototxt`` needs (``port.load_prototxt(proto=...)``).
    """
    import port

    want_caffe = [r for r in references if is_caffe(r)]
    if model is not None:
        found = _find_builtin(model, want_caffe, input_name, regenerate=regenerate,
                              allow_missing=allow_missing)  # fmt: skip
    elif prototxt is not None:
        found = _find_user(Path(prototxt), golden_files or {}, want_caffe,
                           allow_missing=allow_missing, proto=proto)  # fmt: skip
    else:
        raise ParitySetupError("give --model NAME or --prototxt P")
    caffemodel = Path(caffemodel) if caffemodel is not None else found.caffemodel
    if caffemodel is not None:
        weights = port.read_caffemodel(caffemodel)
        wsrc = str(caffemodel)
    else:
        weights = port.seed_weights(found.netdef, SYNTHETIC_SEED)
        wsrc = f"port.seed_weights(seed={SYNTHETIC_SEED})"
        found.notes.append(f"weights: {wsrc} (no caffemodel)")
    found.notes += [
        f"skipped {s['type']} layer {s['name']!r}: {s['reason']}" for s in found.netdef.skipped
    ]
    if found.inputs:
        inputs = found.inputs
        x: Any = inputs if len(inputs) > 1 else next(iter(inputs.values()))
        input_source = f"the goldens' own input ({next(iter(found.goldens.values())).source})"
    else:
        # Only reached without any golden: a golden always carries its input (golden_inputs).
        x = _synthetic_input(found.netdef)
        input_source = f"SYNTHETIC: uniform random in [-120, 135), seed {SYNTHETIC_INPUT_SEED} (no golden given)"
    backward = backward_from or found.backward_from or _default_backward_of(model, found.netdef)
    # Each golden alone against float64 before it may widen any noise (parity/golden_check.py).
    from . import golden_check

    found.notes += golden_check.check_goldens(found.netdef, weights, found.goldens, backward)
    return ParitySetup(
        found.name,
        found.prototxt,
        found.netdef,
        weights,
        wsrc,
        x,
        backward,
        found.goldens,
        found.notes,
        caffemodel=caffemodel,
        seed=None if caffemodel is not None else SYNTHETIC_SEED,
        input_source=input_source,
    )


def _default_backward_of(model: str | None, netdef: Any) -> str | None:
    """A built-in model's classifier at unit 945 (the MFV paper's class), else unit 0 of the last
    non-Softmax blob."""
    from port.zoo import MODELS

    zm = MODELS.get(model or "")
    return f"{zm.classifier}:945" if zm else _default_backward(netdef)


def run_parity(
    setup: ParitySetup,
    *,
    references: Sequence[str] = ALL_REFERENCES,
    local_check: bool = True,
    port_factory: Any = None,
    accurate: bool = True,
) -> tuple[ParityResult, dict[str, RunnerOutput]]:
    """Run the port and every reference, then judge.

    Parameters
    ----------
    setup : ParitySetup
        From :func:`resolve`.
    references : sequence of str
        Any of ``ALL_REFERENCES``.
    local_check : bool
        Re-run each layer alone on each Caffe build's (else numpy32's) blobs.
    port_factory : callable, optional
        ``(netdef, weights) -> CaffeNet`` (float32, eval); default builds ``port.CaffeNet``. Tests use
        it to judge a deliberately broken port.
    accurate : bool
        Also run and judge the port's accurate mode (``port32-accurate``: float32 blobs, float64
        arithmetic), the configuration the closeness goal holds (needs a net with
        ``accumulate``).

    Returns
    -------
    (ParityResult, dict of RunnerOutput)
    """
    _check_references(references)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    net32, net64 = _build_nets(setup, port_factory)
    timings["build"] = time.perf_counter() - t
    outs = _run_ports(setup, net32, net64, accurate=accurate)
    reference_outs, reference_seconds = _run_references(setup, net32, references)
    outs.update(reference_outs)
    timings.update(reference_seconds)
    timings.update({n: outs[n].seconds for n in (PORT32, PORT32_ACCURATE, PORT64) if n in outs})
    rows: list[dict] = []
    if local_check:
        t = time.perf_counter()
        rows = _local_check(setup, net32, net64, outs)
        timings["local"] = time.perf_counter() - t
    t = time.perf_counter()
    plan = default_plan(outs)
    result = core.judge(
        setup.netdef,
        outs,
        plan=plan,
        model=setup.name,
        local=rows,
        notes=setup.notes,
        net64=net64,
        backward_from=setup.backward_from,
    )
    timings["judge"] = time.perf_counter() - t
    result.timings = {k: round(v, 4) for k, v in timings.items()}
    result.backward_from = setup.backward_from
    result.input_source = setup.input_source
    judge_configurations(result, plan)
    return result, outs


def judge_configurations(result: ParityResult, plan: Plan) -> None:
    """Each configuration of ``plan``: whether it passed (its subject's judged pairs, and no
    departing layer) and its closeness to float64 next to Caffe's. The closeness of the
    configuration the goal holds is ``result.closeness``, the others' ``result.closeness_info``.

    The goal is reported, not a verdict: a faithful port that misses it on some input is still
    faithful (``tests/test_parity_accurate_goal.py`` holds the goal on the built-in models)."""
    builds = [n for n in result.runners if runners.is_caffe(n)]
    result.closeness, result.closeness_info = None, []
    result.configurations = {}
    for config in plan.configurations:
        near = closeness(result.pairs, builds, subject=config.subject, goal=config.closeness_goal)
        judged = [p for p in result.pairs if p.subject == config.subject and p.rule != "info"]
        if config.closeness_goal and result.closeness is None:
            result.closeness = near
        else:
            result.closeness_info.append(near)
        result.configurations[config.name] = {
            "subject": config.subject,
            "passed": all(p.passed for p in judged) and result.first_departure is None,
            "closeness_goal": config.closeness_goal,
            "closeness_met": near.met,
        }
    if result.closeness is None and result.closeness_info:
        # Without a configuration held to the goal (an artefact's run), the first one's closeness
        # is still reported, for information.
        result.closeness = result.closeness_info.pop(0)


def _check_references(references: Sequence[str]) -> None:
    """Refuse reference names outside ``ALL_REFERENCES`` before anything runs."""
    unknown = [r for r in references if r not in ALL_REFERENCES]
    if unknown:
        raise ParitySetupError(
            f"unknown reference(s) {unknown}; choose from {', '.join(ALL_REFERENCES)}"
        )


def _build_nets(setup: ParitySetup, port_factory: Any) -> tuple[CaffeNet, CaffeNet]:
    """The port under test in float32 (eval mode; from ``port_factory`` when given) and its
    float64 copy."""
    import torch

    import port

    if port_factory is None:
        net32 = port.CaffeNet(setup.netdef)
        net32.load_blobs(setup.weights)
        net32 = net32.eval()
    else:
        net32 = port_factory(setup.netdef, setup.weights)
    return net32, copy.deepcopy(net32).to(torch.float64)


def _run_ports(
    setup: ParitySetup, net32: CaffeNet, net64: CaffeNet, *, accurate: bool = True
) -> dict[str, RunnerOutput]:
    """Forward and backward through the port in float32 (fast, and with ``accurate`` the accurate
    mode of the same net) and float64."""
    ports = [runners.PortRunner(net32, PORT32), runners.PortRunner(net64, PORT64)]
    if accurate and hasattr(net32, "accumulate"):
        ports.insert(1, runners.PortRunner(net32, PORT32_ACCURATE, accumulate="float64"))
    return {r.name: r(setup.x, backward_from=setup.backward_from) for r in ports}


def _run_references(
    setup: ParitySetup, net32: CaffeNet, references: Sequence[str]
) -> tuple[dict[str, RunnerOutput], dict[str, float]]:
    """Each reference's output (those that have one) and the seconds each took, in ``references``
    order."""
    outs: dict[str, RunnerOutput] = {}
    seconds: dict[str, float] = {}
    for r in references:
        t = time.perf_counter()
        out = _run_reference(r, setup, net32)
        if out is not None:
            outs[r] = out
        seconds[r] = time.perf_counter() - t
    return outs, seconds


def _reference_runner(name: str, setup: ParitySetup, net32: CaffeNet) -> runners.Runner | None:
    """One reference: a Caffe build's golden, the numpy reference, or ONNX Runtime on the exported
    float32 port. None for a Caffe build without goldens."""
    if is_caffe(name):
        golden = setup.goldens.get(name)
        return None if golden is None else runners.GoldenRunner(golden)
    if name in (NUMPY64, NUMPY32):
        dtype = np.float64 if name == NUMPY64 else np.float32
        return runners.NumpyRunner(setup.netdef, setup.weights, dtype)
    if name == ONNX:
        return runners.OnnxRunner(net32)
    return None


def _run_reference(name: str, setup: ParitySetup, net32: CaffeNet) -> RunnerOutput | None:
    """One reference's output on the run's input (None for a Caffe build without goldens)."""
    runner = _reference_runner(name, setup, net32)
    return None if runner is None else runner(setup.x, backward_from=setup.backward_from)


def _local_check(
    setup: ParitySetup, net32: CaffeNet, net64: CaffeNet, outs: Mapping[str, RunnerOutput]
) -> list[dict]:
    """Each layer alone on each Caffe build's blobs (numpy32's when there is no build): one row
    per layer and reference (:func:`parity.local.local_analysis`)."""
    refs = [outs[b] for b in CAFFE_BUILDS if b in outs] or (
        [outs[NUMPY32]] if NUMPY32 in outs else []
    )
    rows: list[dict] = []
    for ref in refs:
        rows.extend(
            local.local_analysis(
                setup.netdef,
                net32,
                net64,
                setup.weights,
                ref,
                backward_from=setup.backward_from,
            )
        )
    return rows


def worst_heatmap(result: ParityResult, outputs: Mapping[str, RunnerOutput]) -> dict | None:
    """Where the worst judged blob's error sits: a 2-D map of |subject - reference|.

    For (N, C, H, W) blobs the map is sample 0's maximum over channels (H x W); for other shapes
    sample 0 is laid out row-major on a near-square grid.

    Returns
    -------
    dict or None
        ``pair``, ``key``, ``ratio`` (error / noise), ``map`` (2-D float64 ndarray), ``noise_abs``
        (the rule's noise in absolute units), or None when nothing was judged.
    """
    best = None
    for p in result.pairs:
        if p.rule == "info":
            continue
        for c in p.checks:
            if c.rule is None or c.needed_multiple is None or not np.isfinite(c.needed_multiple):
                continue
            if best is None or c.needed_multiple > best[1].needed_multiple:
                best = (p, c)
    if best is None:
        return None
    p, c = best
    a = outputs[p.subject].blobs.get(c.key)
    b = outputs[p.reference].blobs.get(c.key)
    if a is None or b is None:
        return None
    a = a.astype(np.float64)
    corr = (
        result.flip_correction(p.subject, p.reference, c.key[5:])
        if (is_diff(c.key) and result.flip_correction is not None)
        else None
    )
    if corr is not None:
        a = a - corr  # the map shows what was judged: the error left after the flips' effect
    err = np.abs(a - b.astype(np.float64))[0]
    if err.ndim == 3:
        m = err.max(axis=0)
    else:
        flat = err.reshape(-1)
        side = int(np.ceil(np.sqrt(flat.size)))
        m = np.zeros(side * side)
        m[: flat.size] = flat
        m = m.reshape(side, side)
    return {
        "pair": f"{p.subject} vs {p.reference}",
        "key": c.key,
        "ratio": float(c.needed_multiple),
        "map": m,
        "noise_abs": float(c.rule.noise * c.metrics.ref_range),
        "allowed_abs": float(c.rule.allowed * c.metrics.ref_range),
    }
