"""Run the benchmarks (``tox -e bench``) and append the run to the history under ``benchmarks/``.

``tox -e bench`` runs the pytest-benchmark suite (saved under ``.benchmarks/``, compared with the
previous saved run: it fails on a mean 25% slower) and appends the run to ``benchmarks/``.

``tox -e bench -- --versus-original [--facets N] [--repeat K]`` runs no pytest: it times WHOLE runs
(``tests/bench_whole.py``: every octave and step, model load and image writing included) of the
original script on real Caffe 1.0 (OpenBLAS, and ATLAS as a second row) and of ``python -m mfv
visualize`` in the default and ``--faithful`` modes, N facets each, interleaved, each in its own
process, K times; then the sampled cases (``tests/speed_cases.py``: the first octave's steps
extrapolated to the schedule, labelled estimates, with their distance from the whole runs) and the
forward+backward bound, the default step and the bound alternating ``--sampled-repeat`` times
(their medians are the figures); then the profile of a default step (``python -m mfv.profile``). It prints a
table per case, the per-octave seconds of both sides, the ratios and the profile, and appends one
record to ``benchmarks/<machine class>.jsonl`` (``python -m mfv.bench_history`` draws and checks
the history). ``--quick`` runs only the sampled cases and the profile (figures labelled
estimates). ``--avx2`` caps every library at AVX2 (oneDNN, ATen, MKL, the TV kernel and OpenBLAS),
which makes an AVX-512 machine stand in for an AVX2 one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):  # `python tests/bench.py` from a checkout
    if p not in sys.path:
        sys.path.insert(0, p)

import bench_report  # noqa: E402
import bench_whole  # noqa: E402

RECORDS = ROOT / "benchmarks"


def _pytest_main(argv: list[str], record_dir: Path) -> int:
    import pytest

    args = ["-m", "benchmark", "--benchmark-enable", "--benchmark-autosave"]
    before = set(Path(".benchmarks").glob("*/*.json"))
    if before:
        args += ["--benchmark-compare", "--benchmark-compare-fail=mean:25%"]
    rc = int(pytest.main(args + argv))
    saved = sorted(
        set(Path(".benchmarks").glob("*/*.json")) - before, key=lambda p: p.stat().st_mtime
    )
    if saved:
        record_pytest_run(saved[-1], record_dir)
    return rc


def record_pytest_run(saved: Path, record_dir: Path) -> Path:
    """Append pytest-benchmark's saved run to the history: each benchmark's mean seconds and its
    ``extra_info``; tracked, the step-level ratio of the speed bench when it ran (its other
    ratios are first-octave extrapolations, estimates, and stay untracked)."""
    from mfv import bench_history

    run = json.loads(saved.read_text())
    figures = {"saved": str(saved), "benchmarks": {
        b["name"]: {"mean_seconds": b["stats"]["mean"], **b.get("extra_info", {})}
        for b in run["benchmarks"]}}  # fmt: skip
    ratios = figures["benchmarks"].get("test_speed_ratios", {})
    step = ratios.get("caffenet_bound_over_default", {}).get("ratio")
    tracked = {"bound_over_default_step": 1.0 / step} if step else {}
    for b in figures["benchmarks"].values():
        b.pop("machine", None)  # the record holds the machine once
    machine = run["machine_info"].get("caffe_mfv") or {}
    rec = bench_history.make_record(machine, figures, tracked, kind="pytest-benchmark", repo=ROOT)
    path = bench_history.append_record(rec, record_dir)
    print(f"record: appended to {path} ({rec['machine_class']})")
    return path


def case_env(threads: int, avx2: bool) -> dict[str, str]:
    """The environment every case runs with; the machine record states these caps."""
    from mfv.machine import AVX2_CAPS

    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if avx2:
        env.update(AVX2_CAPS, OPENBLAS_CORETYPE="Haswell")
    return env


def machine_record(env: dict[str, str]) -> dict:
    """``mfv.machine``'s record taken in a child with the cases' environment, so that its caps and
    torch threads are the ones the cases ran with (not this process's)."""
    out = subprocess.run(
        [sys.executable, "-m", "mfv.machine"], env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def sampled_case(case: str, steps: int, env: dict, threads: int) -> dict:
    """One ``tests/speed_cases.py`` case in its own process."""
    cmd = [sys.executable, str(HERE / "speed_cases.py"), case, "--threads", str(threads)]
    if steps:
        cmd += ["--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{case} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.pop("machine", None)  # the run's record holds the machine once
    return result


def profile_run(facets: int, env: dict, steps: int) -> dict:
    """``python -m mfv.profile`` in its own process; its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.json"
        cmd = [sys.executable, "-m", "mfv.profile", "--facets", str(facets), "--steps", str(steps),
               "--json", str(path), "--quiet"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"mfv.profile failed:\n{proc.stderr[-3000:]}")
        return json.loads(path.read_text())


def _plan(a: argparse.Namespace) -> tuple[list[str], list[tuple[str, int]]]:
    """The whole-run cases and the sampled (case, steps) of one repeat, in interleaving order.

    The default step and its bound alternate ``--sampled-repeat`` times: each is a few seconds,
    and one pair of them moved the step / bound ratio by several percent between runs on a quiet
    machine; their medians do not (the original's sampled case, ~30 s, runs once)."""
    whole = [] if a.quick else [c for c in bench_whole.WHOLE_CASES if c not in a.skip]
    n = a.facets
    pair = [(f"caffenet-default{n}", a.steps), (f"caffenet-fwdbwd{n}", a.steps)]
    sampled = pair * a.sampled_repeat
    if "original-openblas" not in a.skip:
        sampled.append(("caffenet-original-openblas", 0))
    return whole, sampled


def measure(a: argparse.Namespace, env: dict) -> dict[str, list[dict]]:
    """Every case, interleaved (a change of the machine's load hits every case alike), K times."""
    whole, sampled = _plan(a)
    runs: dict[str, list[dict]] = {c: [] for c in whole}
    runs.update({c: [] for c, _ in sampled})
    for r in range(a.repeat):
        for case in whole:
            res = bench_whole.run_whole(case, a.facets, a.threads, env, a.max_octaves)
            runs[case].append(res)
            bench_report.progress(r, a.repeat, case, res)
        for case, steps in sampled:
            res = sampled_case(case, steps, env, a.threads)
            runs[case].append(res)
            bench_report.progress(r, a.repeat, case, res)
    return runs


def median_result(results: list[dict]) -> dict:
    """Each numeric figure's median over the repeats (per octave for ``octave_seconds``); the
    first repeat's other fields."""
    out = dict(results[0])
    for key, value in results[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in results)
        elif key == "octave_seconds" and value:
            out[key] = [statistics.median(x) for x in zip(*(r[key] for r in results), strict=True)]
    if len(results) > 1:
        out["repeats"] = len(results)
        out["facets_per_hour_range"] = [
            min(r["facets_per_hour"] for r in results if "facets_per_hour" in r),
            max(r["facets_per_hour"] for r in results if "facets_per_hour" in r),
        ]
    return out


def versus_original(a: argparse.Namespace) -> int:
    """The side-by-side run; returns the exit status (0; 2 when the Caffe root is missing)."""
    from legacy_caffe import rootfs
    from mfv import bench_history

    needs_caffe = not (a.quick and "original-openblas" in a.skip)
    if needs_caffe and not rootfs.is_complete():
        print(
            f"no complete legacy Caffe root at {rootfs.root_dir()}: run `python -m legacy_caffe "
            "build` first (root, ~6 min, 0.8 GB)",
            file=sys.stderr,
        )
        return 2
    env = case_env(a.threads, a.avx2)
    machine = machine_record(env)
    runs = measure(a, env)
    med = {case: median_result(rs) for case, rs in runs.items() if rs}
    prof = None if a.no_profile else profile_run(a.facets, env, a.profile_steps)
    summary = bench_report.summarise(med, a.facets, prof)
    print(bench_report.render(machine, med, summary, prof))
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    figures = {"options": options | {"skip": sorted(a.skip)}, "summary": summary,
               "cases": med, "runs": runs, "profile": prof}  # fmt: skip
    tracked = bench_report.tracked(summary, whole_schedule=a.max_octaves is None)
    if a.no_record:
        print("record: not written (--no-record)")
        return 0
    kind = "sampled-estimate" if a.quick else "versus-original"
    if a.max_octaves is not None:
        kind = f"partial-{a.max_octaves}-octaves"
    record = bench_history.make_record(machine, figures, tracked, kind=kind, repo=ROOT)
    path = bench_history.append_record(record, a.record_dir)
    print(f"record: appended to {path} ({record['machine_class']}, commit {record['commit'][:10]})")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other argument goes to pytest.",
    )
    add = p.add_argument
    add("--versus-original", action="store_true", help="whole runs of the original and mfv")
    add("--quick", action="store_true", help="sampled estimates only (with --versus-original)")
    add("--facets", type=int, default=10, help="facets per run (default 10)")
    add("--repeat", type=int, default=1, help="interleaved repeats (default 1)")
    add("--steps", type=int, default=20, help="steps timed per sampled case (default 20)")
    add("--sampled-repeat", type=int, default=5,
        help="alternations of the sampled default step and its bound per repeat; the figures "
             "are their medians (default 5)")  # fmt: skip
    add("--threads", type=int, default=os.cpu_count() or 1, help="threads (default: all CPUs)")
    add("--avx2", action="store_true", help="cap every library at AVX2")
    add("--skip", action="append", default=[], choices=bench_whole.WHOLE_CASES,
        help="leave out a whole-run case (repeatable), e.g. original-atlas")  # fmt: skip
    add("--max-octaves", type=int, help="smoke test: the first octaves only (not tracked)")
    add("--no-profile", action="store_true", help="leave out the profile of a default step")
    add("--profile-steps", type=int, default=5, help="steps profiled (default 5)")
    add("--record-dir", type=Path, default=RECORDS, help="history folder (default benchmarks/)")
    add("--no-record", action="store_true", help="append no record (trials)")
    return p


def main(argv: list[str]) -> int:
    a, rest = _parser().parse_known_args(argv)
    if a.versus_original:
        if rest:
            raise SystemExit(f"unknown arguments for --versus-original: {rest}")
        return versus_original(a)
    return _pytest_main(rest, a.record_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
