"""The machine matrix: the same parity verdict under every CPU kernel path the port may meet.

float32 kernels round differently on each CPU (oneDNN picks its convolution code by instruction
set, MKL its GEMM, ATen its vectorised element-wise loops), so a value near a kink may be decided
differently from one machine to the next. The verdict must not depend on that. This module runs
parity for every target in a fresh process per *setting*: the environment variables and torch
switches that select another kernel path, each one emulating a CPU the port may run on.

Which knobs change results was measured on the development machine (AMD EPYC, Zen 4, AVX-512;
torch 2.14.1, MKL 2024.2, oneDNN 3.12), hashing CaffeNet's float32 blobs under each:

============================  =================================================================
knob                          effect on the port's float32 results
============================  =================================================================
``ONEDNN_MAX_CPU_ISA``        AVX2, AVX and SSE41 each change every convolution (SSE41 = AVX
                              forward, different backward)
``ATEN_CPU_CAPABILITY``       ``default`` changes post-ReLU blobs and fc layers; ``avx2`` = none
``MKL_CBWR=COMPATIBLE``       changes the fully connected layers (MKL's GEMM)
``MKL_ENABLE_INSTRUCTIONS``   none here (MKL takes its AVX2 path on AMD anyway); included in the
                              ISA settings, since on an Intel CPU it selects the GEMM kernels
``torch.backends.mkldnn``     disabled: every convolution through ATen's own im2col + GEMM
``CAFFE_MFV_NATIVE_ISA``      the vector width of the port's compiled fully connected kernel
                              (capped with the libraries); ``CAFFE_MFV_NATIVE=0`` drops it for
                              the portable blocked product
torch threads (1 or 2)        none on CaffeNet; GoogLeNet's and SqueezeNet's results change
                              (the machine matrix shows other flips at 1 and 2 threads)
============================  =================================================================

:data:`SETTINGS` therefore emulates an AVX2, an AVX and an SSE4 machine (every library capped
together), each with 1 and 2 threads, next to the default, plus MKL's compatible GEMM and the
ATen-only convolution path, and the port without its compiled kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Setting", "SETTINGS", "Target", "default_targets", "run_matrix", "run_target"]

MARK = "@@parity-machine "


@dataclass(frozen=True)
class Setting:
    """One emulated machine: environment variables and in-process switches.

    Attributes
    ----------
    name : str
    env : dict
        Variables set before the process starts (oneDNN, MKL and ATen read them once).
    threads : int
        ``torch.set_num_threads``.
    mkldnn : bool
        ``torch.backends.mkldnn.enabled``.
    what : str
        What it emulates.
    """

    name: str
    env: dict[str, str] = field(default_factory=dict)
    threads: int = 2
    mkldnn: bool = True
    what: str = ""


_ISA = {
    "default": ({}, "this machine's own kernels"),
    "avx2": (
        {
            "ONEDNN_MAX_CPU_ISA": "AVX2",
            "CAFFE_MFV_NATIVE_ISA": "avx2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "ATEN_CPU_CAPABILITY": "avx2",
        },
        "an AVX2 CPU without AVX-512 (e.g. AMD EPYC Zen 2/3)",
    ),
    "avx": (
        {
            "ONEDNN_MAX_CPU_ISA": "AVX",
            "CAFFE_MFV_NATIVE_ISA": "avx",
            "MKL_ENABLE_INSTRUCTIONS": "AVX",
            "ATEN_CPU_CAPABILITY": "default",
        },
        "an AVX-only CPU (Sandy Bridge)",
    ),
    "sse41": (
        {
            "ONEDNN_MAX_CPU_ISA": "SSE41",
            "CAFFE_MFV_NATIVE_ISA": "sse2",
            "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
            "ATEN_CPU_CAPABILITY": "default",
        },
        "an SSE4 CPU",
    ),
}

SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f"{isa}-t{t}", env, t, True, f"{what}, {t} thread(s)")
    for isa, (env, what) in _ISA.items()
    for t in (1, 2)
) + (
    Setting(
        "mkl-compatible",
        {"MKL_CBWR": "COMPATIBLE"},
        2,
        True,
        "MKL's conditional-numerical-reproducibility GEMM (another fully connected kernel)",
    ),
    Setting("no-mkldnn", {}, 2, False, "convolutions through ATen's im2col + GEMM, not oneDNN"),
    Setting(
        "no-native",
        {"CAFFE_MFV_NATIVE": "0"},
        2,
        True,
        "no C compiler: the portable blocked fully connected product instead of the compiled one",
    ),
)


@dataclass(frozen=True)
class Target:
    """Something parity can run: a built-in model, or a case folder.

    A case folder holds ``deploy.prototxt``, ``goldens/manifest.json`` with ``goldens/<blas>/<set>.npz``
    as ``python -m legacy_caffe goldens --out`` writes them, and its weights as ``weights.caffemodel``
    or as a ``port.seed_weights`` seed (the manifest's ``weights.seed``, else ``case.json``'s
    ``{"seed": 3}``).
    """

    name: str
    model: str | None = None
    folder: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Target:
        if os.path.isdir(spec):
            return cls(Path(spec).name, folder=str(Path(spec).resolve()))
        return cls(spec, model=spec)


def default_targets() -> list[Target]:
    """Every built-in model with a golden plan, and every test case with real-Caffe goldens (the
    ResNet-style net, the layer-family nets)."""
    from legacy_caffe.goldens import PLANS

    here = Path(__file__).resolve().parent.parent / "tests" / "data"
    out = [Target(m, model=m) for m in PLANS]
    for case in sorted(here.glob("**/goldens/manifest.json")):
        folder = case.parent.parent
        # A case needing a plugin or a fork's proto (tests/data/custom) names its own definitions.
        if (folder / "deploy.prototxt").is_file():
            out.append(Target(folder.name, folder=str(folder)))
    return out


def _case_setup(folder: Path, scratch: Path):
    import port

    from .run import resolve

    manifest = json.loads((folder / "goldens" / "manifest.json").read_text())
    prototxt = folder / "deploy.prototxt"
    weights = folder / "weights.caffemodel"
    if not weights.is_file():
        seed = manifest["weights"].get("seed")
        if seed is None:
            seed = json.loads((folder / "case.json").read_text())["seed"]
        netdef = port.load_prototxt(prototxt)
        weights = scratch / "weights.caffemodel"
        port.write_caffemodel(weights, netdef, port.seed_weights(netdef, seed))
        if port.sha256_file(weights) != manifest["weights"]["sha256"]:
            raise RuntimeError(f"{folder}: seed {seed} does not give the weights the goldens used")
    sets = list(manifest["inputs"])
    goldens = {b: folder / "goldens" / b / f"{sets[0]}.npz" for b in ("atlas", "openblas")}
    bw = manifest["backward"]
    return resolve(
        prototxt=prototxt,
        caffemodel=weights,
        golden_files=goldens,
        backward_from=f"{bw['blob']}:{bw['unit']}",
    )


def run_target(target: Target) -> dict:
    """Parity for one target in this process; a summary of the verdict."""
    from .report import worst_ratios
    from .run import resolve, run_parity
    from .runners import PORT32, is_caffe

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        if target.model:
            setup = resolve(model=target.model, regenerate=True)
        else:
            setup = _case_setup(Path(target.folder), Path(scratch))
        result, _ = run_parity(setup)
    flips = {}
    for pair, fl in result.flips.items():
        if PORT32 in pair.split("|"):
            for f in fl:
                k = f"{f['layer']}{'' if f['in_band'] else ' (OUT OF BAND)'}"
                flips[k] = max(flips.get(k, 0), f["count"])
    worst = {n: r for n, (r, _) in worst_ratios(result).items() if is_caffe(n)}
    near = result.closeness
    return {
        "target": target.name,
        "passed": result.passed,
        "worst_vs_caffe": max(worst.values()) if worst else None,
        # The closeness goal under this setting, for the configuration it holds.
        "closeness": None
        if near is None or not near.blobs
        else {
            "subject": near.subject,
            "n_closer": near.n_closer,
            "n_blobs": len(near.blobs),
            "worst_ratio": near.worst.ratio,
            "met": near.met,
        },
        "flips": flips,
        "cause": result.diagnosis.get("cause"),
        "why": (result.diagnosis.get("lines") or [""])[0] if result.diagnosis.get("cause") else "",
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _worker(setting: Setting, targets: Sequence[Target]) -> int:
    import torch

    torch.set_num_threads(setting.threads)
    torch.backends.mkldnn.enabled = setting.mkldnn
    for t in targets:
        try:
            row = run_target(t)
        except Exception as exc:  # one target failing to run must not hide the others
            row = {"target": t.name, "passed": False, "error": f"{type(exc).__name__}: {exc}"}
        row["setting"] = setting.name
        print(MARK + json.dumps(row), flush=True)
    return 0


def run_matrix(
    settings: Sequence[Setting], targets: Sequence[Target], *, progress=print
) -> list[dict]:
    """Run every target under every setting, each setting in its own process.

    Returns
    -------
    list of dict
        One row per (setting, target): ``passed``, ``worst_vs_caffe`` (worst error as a multiple
        of the noise floor against either Caffe build), ``closeness`` (the goal's subject, blobs
        closer than Caffe, worst ratio, met), ``flips`` (port32's gate flips by layer),
        ``cause`` and ``why`` when it fails, ``seconds``; ``error`` if it could not run.
    """
    rows: list[dict] = []
    spec = json.dumps([t.__dict__ for t in targets])
    for s in settings:
        env = {**os.environ, **s.env}
        cmd = [sys.executable, "-m", "parity.machines", "--worker", s.name, spec]
        got: list[dict] = []
        with tempfile.TemporaryFile("w+") as err:
            # Rows arrive as each target finishes, so a long matrix shows its progress.
            with subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True
            ) as proc:
                for line in proc.stdout:
                    if line.startswith(MARK):
                        got.append(json.loads(line[len(MARK) :]))
                        progress(format_row(got[-1]))
            err.seek(0)
            tail = err.read().strip().splitlines()[-1:] or ["no output"]
        for t in targets:
            if not any(r["target"] == t.name for r in got):
                got.append({"target": t.name, "setting": s.name, "passed": False,
                            "error": f"worker exited {proc.returncode}: {tail[0]}"})  # fmt: skip
                progress(format_row(got[-1]))
        rows.extend(got)
    return rows


def format_row(r: dict) -> str:
    if "error" in r:
        return f"{r['setting']:15s} {r['target']:15s} ERROR {r['error']}"
    flips = ", ".join(f"{k} {v}" for k, v in r["flips"].items()) or "none"
    line = (
        f"{r['setting']:15s} {r['target']:15s} {'PASS' if r['passed'] else 'FAIL'} "
        f"worst {r['worst_vs_caffe']:.2f}x  flips: {flips}  ({r['seconds']:.0f} s)"
    )
    near = r.get("closeness")
    if near:
        line += (
            f"  {near['subject']} closer than Caffe on {near['n_closer']}/{near['n_blobs']}, "
            f"worst {near['worst_ratio']:.2f}x{'' if near['met'] else ' GOAL NOT MET'}"
        )
    return line + (f"\n    {r['why']}" if r.get("why") else "")


def markdown(rows: Sequence[dict]) -> str:
    """The matrix as a Markdown table (targets down, settings across): verdict, worst, flips."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    cell = {(r["target"], r["setting"]): r for r in rows}
    out = ["| model | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]
    for t in targets:
        cells = []
        for s in settings:
            r = cell.get((t, s))
            if r is None or "error" in r:
                cells.append("error")
                continue
            fl = "; ".join(f"{k} {v}" for k, v in r["flips"].items())
            cells.append(
                f"{'pass' if r['passed'] else 'FAIL'} {r['worst_vs_caffe']:.2f}x"
                + (f" ({fl})" if fl else "")
            )
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--worker":
    _setting = next(s for s in SETTINGS if s.name == sys.argv[2])
    sys.exit(_worker(_setting, [Target(**d) for d in json.loads(sys.argv[3])]))
