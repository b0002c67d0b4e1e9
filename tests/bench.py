"""Run the benchmarks (``tox -e bench``): save the run, and compare it with the previous saved run.

pytest-benchmark refuses ``--benchmark-compare-fail`` when there is nothing to compare with, so the
first run on a machine only saves; every later run fails on a mean 25% slower than the last one.
Every saved run records the machine (``machine_info.caffe_mfv``: CPU model, instruction sets,
cores, torch/MKL/oneDNN versions, caps), set by ``tests/conftest.py``.

``tox -e bench -- --versus-original`` runs no pytest: it measures, on this machine and in this
process tree, the original MFV script on real Caffe 1.0 + OpenBLAS (one facet, first octave, in the
legacy Caffe root) and the default mode (10 facets in one batch) with its forward+backward bound,
interleaved and repeated, and prints the ratios the README claims, so that anyone can check them
on their own machine in one line. ``--avx2`` caps every library at AVX2 (oneDNN, ATen, MKL, the TV
kernel, and OpenBLAS in the Caffe root), which makes an AVX-512 machine stand in for an AVX2 one.
The run is saved as ``.benchmarks/versus-original/<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # `python tests/bench.py` from a checkout
    sys.path.insert(0, str(ROOT))


def _pytest_main(argv: list[str]) -> int:
    import pytest

    args = ["-m", "benchmark", "--benchmark-enable", "--benchmark-autosave"]
    if any(Path(".benchmarks").glob("*/*.json")):
        args += ["--benchmark-compare", "--benchmark-compare-fail=mean:25%"]
    return int(pytest.main(args + argv))


def _case(case: str, steps: int, env: dict[str, str], threads: int) -> dict:
    cmd = [sys.executable, str(HERE / "speed_cases.py"), case, "--threads", str(threads)]
    if steps:
        cmd += ["--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{case} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return result


def versus_original(repeat: int, steps: int, avx2: bool, threads: int, facets: int) -> int:
    """The side-by-side run; returns the exit status (0; 2 when the Caffe root is missing)."""
    from legacy_caffe import rootfs
    from mfv.machine import AVX2_CAPS, machine_info

    if not rootfs.is_complete():
        print(
            f"no complete legacy Caffe root at {rootfs.root_dir()}: run `python -m legacy_caffe build` "
            "first (root, ~95 s, 0.8 GB)",
            file=sys.stderr,
        )
        return 2
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if avx2:
        env.update(AVX2_CAPS, OPENBLAS_CORETYPE="Haswell")
        os.environ.update(AVX2_CAPS)  # so that machine_info() below reports the caps
    default, bound = f"caffenet-default{facets}", f"caffenet-fwdbwd{facets}"
    runs: dict[str, list[dict]] = {default: [], "caffenet-original-openblas": [], bound: []}
    for r in range(repeat):
        # Interleaved, so that a change in the machine's load hits every case alike.
        for case in runs:
            res = _case(case, 0 if case.endswith("openblas") else steps, env, threads)
            runs[case].append(res)
            print(
                f"[{r + 1}/{repeat}] {case:28s} {res['seconds_per_facet_step']:.4f} s/facet-step "
                f"{res['facets_per_hour']:8.1f} facets/h  load {res['load_average'][0]:.2f}",
                flush=True,
            )

    def med(case: str) -> float:
        return statistics.median(x["facets_per_hour"] for x in runs[case])

    per_run = [
        d["facets_per_hour"] / o["facets_per_hour"]
        for d, o in zip(runs[default], runs["caffenet-original-openblas"], strict=True)
    ]
    summary = {
        "default_over_original": round(med(default) / med("caffenet-original-openblas"), 2),
        "default_over_original_per_repeat": [round(x, 2) for x in per_run],
        "bound_over_default": round(med(bound) / med(default), 3),
        "target_default_over_original": 5.0,
        "target_bound_over_default": 1.2,
    }
    machine = machine_info()
    print(
        f"\nmachine: {machine['cpu_model']} ({machine['isa_class']}), {machine['usable_cpus']} CPUs, "
        f"torch {machine.get('torch')}, TV kernel {machine.get('tv_kernel')}"
    )
    print(
        f"default mode ({facets} facets/batch) vs the original on Caffe + OpenBLAS: "
        f"{summary['default_over_original']}x facets per hour (median of {repeat}; per repeat "
        f"{summary['default_over_original_per_repeat']}; goal >= 5x)"
    )
    print(f"forward+backward bound / default: {summary['bound_over_default']}x (goal <= 1.2x)")
    out = ROOT / ".benchmarks" / "versus-original"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{time.strftime('%Y%m%dT%H%M%S')}{'-avx2' if avx2 else ''}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"machine": machine, "summary": summary, "runs": runs}, indent=1))
    tmp.replace(path)
    print(f"saved {path.relative_to(ROOT)}")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other argument goes to pytest.",
    )
    p.add_argument(
        "--versus-original",
        action="store_true",
        help="run the original on Caffe + OpenBLAS and the default mode side by side, print the ratio",
    )
    p.add_argument(
        "--repeat", type=int, default=2, help="interleaved repeats of --versus-original (default 2)"
    )
    p.add_argument(
        "--steps", type=int, default=20, help="steps timed per default-mode case (default 20)"
    )
    p.add_argument(
        "--facets", type=int, default=10, help="facets per batch of the default mode (default 10)"
    )
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads (default: all CPUs)"
    )
    p.add_argument(
        "--avx2", action="store_true", help="cap every library at AVX2 (an AVX2 machine's run)"
    )
    a, rest = p.parse_known_args(argv)
    if a.versus_original:
        return versus_original(a.repeat, a.steps, a.avx2, a.threads, a.facets)
    return _pytest_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
