"""Whole runs for ``tox -e bench -- --versus-original``: each case is the command a user types, in
its own process, timed from start to exit (imports, model load, every octave and step, image
writing).

Cases: ``original-openblas`` and ``original-atlas`` (the original script on real Caffe 1.0,
``legacy_caffe.mfv_reference.generate_reference``, OpenBLAS on its own kernel and the bench's
threads; Debian's ATLAS is single-threaded), ``mfv-default`` and ``mfv-faithful`` (``python -m mfv
visualize`` with and without ``--faithful``, every facet in one batch). Facets are the published
class-945 mean images ``mean_0 .. mean_<N-1>`` (cycled past 10). ``mfv visualize`` runs with
``--no-parity-check``: the check only reads a saved verdict, which a bench machine need not have.

Per-octave seconds: the original's come from its own clock around each octave (the inside script's
``octave_seconds``, model load excluded); ``mfv visualize`` writes every facet's image at the end of
each octave, so its octave ``j`` lasts from the last image of octave ``j - 1`` (for octave 1: the
process's start, so it includes imports and the model load) to the last image of octave ``j``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = (190, 150, 20, 10)  # the published schedule's octaves
STEPS_PER_FACET = sum(STEPS)
WHOLE_CASES = ("original-openblas", "original-atlas", "mfv-default", "mfv-faithful")

_ORIGINAL = """
import json, sys
from legacy_caffe.mfv_reference import generate_reference
a = json.loads(sys.argv[1])
generate_reference(a["out"], blas=a["blas"], facets=a["facets"], max_octaves=a["max_octaves"],
                   env=a["env"])
"""


def original_env(threads: int, blas: str) -> dict[str, str | None]:
    """What the original runs with: OpenBLAS's own kernel choice (None removes the reference
    runs' Prescott pin) and the bench's threads; ATLAS is single-threaded in Debian."""
    n = str(threads if blas == "openblas" else 1)
    return {"OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n}  # fmt: skip


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd``; wall seconds from start to exit, peak RSS (MB) of its largest process, stderr."""
    with tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{text[-3000:]}")
    return wall, usage.ru_maxrss / 1024.0, text


def run_original(blas: str, facets: int, threads: int, env: dict, max_octaves: int | None) -> dict:
    """The original on real Caffe, ``facets`` mean images one after another in one process."""
    with tempfile.TemporaryDirectory(prefix="bench-original-") as out:
        args = {"out": out, "blas": blas, "facets": list(range(facets)),
                "max_octaves": max_octaves, "env": original_env(threads, blas)}  # fmt: skip
        wall, peak, _ = _timed([sys.executable, "-c", _ORIGINAL, json.dumps(args)], env)
        trace = json.loads((Path(out) / "trace.json").read_text())
    per_octave = [0.0] * len(trace["facets"][0]["octave_seconds"] or [])
    for f in trace["facets"]:
        for j, s in enumerate(f["octave_seconds"] or []):
            per_octave[j] += s / len(trace["facets"])
    envr = trace["environment"]
    return _summary(
        wall,
        peak,
        facets,
        [round(s, 2) for s in per_octave],
        {
            "inner_wall_seconds": trace["wall_seconds"],
            "loop_seconds_per_facet": [f["seconds"] for f in trace["facets"]],
            "caps": {**envr.get("threads_env", {}), "openblas": envr.get("openblas")},
            "blas_loaded": envr.get("blas_loaded"),
        },
        list(STEPS[:max_octaves]),
    )


def mfv_schedule(
    max_octaves: int | None, folder: Path, steps_cap: int | None = None
) -> tuple[Path | None, list[int]]:
    """CaffeNet's schedule cut to its first ``max_octaves`` octaves and (smoke tests only) at most
    ``steps_cap`` steps per octave; the path (None: the whole schedule) and the steps of each."""
    sched = json.loads((ROOT / "mfv" / "schedules" / "caffenet.json").read_text())
    if max_octaves is None and steps_cap is None:
        return None, [o["iter_n"] for o in sched["octaves"]]
    sched["octaves"] = sched["octaves"][:max_octaves]
    for o in sched["octaves"]:
        o["iter_n"] = min(o["iter_n"], steps_cap or o["iter_n"])
    path = folder / "schedule.json"
    path.write_text(json.dumps(sched))
    return path, [o["iter_n"] for o in sched["octaves"]]


def octave_seconds_from_images(out: Path, start: float, octaves: int) -> list[float]:
    """Each octave's seconds from the write times of ``facet_*_octave<j>.png`` (see module doc).

    ``start``: the process's start on the ``time.time()`` clock.
    """
    ends = []
    for j in range(1, octaves + 1):
        stamps = [p.stat().st_mtime for p in out.glob(f"facet_*_octave{j}.png")]
        if not stamps:
            raise RuntimeError(
                f"{out}: no facet_*_octave{j}.png: the run did not finish octave {j}"
            )
        ends.append(max(stamps))
    edges = [start, *ends]
    return [round(b - a, 2) for a, b in zip(edges, edges[1:], strict=False)]


def run_mfv(
    mode: str, facets: int, env: dict, max_octaves: int | None, steps_cap: int | None = None
) -> dict:
    """``python -m mfv visualize`` (``mode``: default or faithful) on ``facets`` mean images."""
    from port.zoo import shared_root

    means = shared_root() / "reference" / "mfv-original" / "mean_images" / "n07720875"
    with tempfile.TemporaryDirectory(prefix="bench-mfv-") as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "mfv", "visualize", "--model", "caffenet", "--unit", "945",
               "--out", str(out), "--no-parity-check"]  # fmt: skip
        for k in range(facets):
            cmd += ["--init", str(means / f"mean_{k % 10}.jpg")]
        if mode == "faithful":
            cmd.append("--faithful")
        sched, steps = mfv_schedule(max_octaves, Path(tmp), steps_cap)
        if sched:
            cmd += ["--schedule", str(sched)]
        start = time.time()
        wall, peak, _ = _timed(cmd, env)
        per_octave = octave_seconds_from_images(out, start, len(steps))
        trace = json.loads((out / "trace.json").read_text())
    caps = {k: env[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in env}
    extra = {
        "loop_seconds_per_facet": [f["seconds"] for f in trace["facets"]],
        "caps": caps,
        "octave_1_includes": "process start-up: imports, model load",
    }
    return _summary(wall, peak, facets, per_octave, extra, steps)


def _summary(
    wall: float, peak: float, facets: int, per_octave: list, extra: dict, octave_steps: list[int]
) -> dict:
    steps = sum(octave_steps)
    return {
        "seconds": round(wall, 2),
        "facets": facets,
        "steps_per_facet": steps,
        "seconds_per_facet": wall / facets,
        "seconds_per_facet_step": wall / (facets * steps),
        "facets_per_hour": 3600.0 * facets / wall,
        "octave_seconds": per_octave,
        "peak_rss_mb": round(peak, 1),
        "whole_schedule": list(octave_steps) == list(STEPS),
        **extra,
    }


def run_whole(case: str, facets: int, threads: int, env: dict, max_octaves: int | None) -> dict:
    """One whole-run case (:data:`WHOLE_CASES`)."""
    kind, _, variant = case.partition("-")
    if kind == "original":
        return run_original(variant, facets, threads, env, max_octaves)
    return run_mfv(variant, facets, env, max_octaves)
