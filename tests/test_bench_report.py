"""The bench's arithmetic and tables (tests/bench_report.py, tests/bench_whole.py, tests/bench.py)
on planted case results: no benchmark runs here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import bench_report  # noqa: E402
import bench_whole  # noqa: E402


def _case(s_per_step: float, steps: int = 370, **extra) -> dict:
    return {
        "seconds_per_facet_step": s_per_step,
        "facets_per_hour": 3600 / (s_per_step * steps),
        "seconds_per_facet": s_per_step * steps,
        "facets": 10,
        **extra,
    }


MED = {
    "original-openblas": _case(0.116, octave_seconds=[39.1, 17.4, 2.2, 1.1]),
    "original-atlas": _case(0.232),
    "mfv-default": _case(0.0243, octave_seconds=[60.0, 25.0, 3.5, 1.5]),
    "mfv-faithful": _case(0.058),
    "caffenet-default10": _case(0.0220),
    "caffenet-fwdbwd10": _case(0.0176),
    "caffenet-original-openblas": _case(0.206),
}


def test_summary_ratios_are_whole_runs_and_the_estimate_is_labelled():
    s = bench_report.summarise(MED, 10, {"bound_over_sgemm": 0.38})
    assert s["default_over_original_openblas"] == pytest.approx(0.116 / 0.0243, abs=1e-3)
    assert s["default_over_original_atlas"] == pytest.approx(0.232 / 0.0243, abs=1e-3)
    assert s["faithful_over_original_openblas"] == pytest.approx(0.116 / 0.058, abs=1e-3)
    est = 0.206 / 0.0220  # first-octave steps of both sides: the 9.4x-like figure
    assert s["estimate_default_over_original_openblas"] == pytest.approx(est, abs=1e-3)
    assert s["estimate_off_by"] == pytest.approx(est / (0.116 / 0.0243) - 1, abs=1e-3)
    assert s["estimate_default_off_by"] == pytest.approx(0.0243 / 0.0220 - 1, abs=1e-3)
    assert s["estimate_original_off_by"] == pytest.approx(0.116 / 0.206 - 1, abs=1e-3)
    assert s["step_over_bound"] == pytest.approx(0.0220 / 0.0176, abs=1e-3)
    tracked = bench_report.tracked(s, whole_schedule=True)
    assert tracked["bound_over_default_step"] == pytest.approx(0.0176 / 0.0220, abs=1e-3)
    assert tracked["bound_over_sgemm"] == 0.38
    partial = bench_report.tracked(s, whole_schedule=False)
    assert "default_over_original_openblas" not in partial  # a partial schedule is no whole run


def test_terminal_shows_each_case_the_octaves_and_the_goals():
    s = bench_report.summarise(MED, 10, None)
    machine = {"cpu_model": "X", "isa_class": "AVX2", "usable_cpus": 2, "caps": {"A": "1"}}
    text = bench_report.render(machine, MED, s, None)
    row = next(line for line in text.splitlines() if line.startswith("mfv-default "))
    assert "whole" in row and "0.0243" in row and f"{3600 / (0.0243 * 370):.1f}" in row
    assert f"{0.0176 / 0.0243:.3f}" in row and f"{0.116 / 0.0243:.2f}x" in row
    est = next(line for line in text.splitlines() if line.startswith("caffenet-default10 "))
    assert "estimate" in est
    octs = [line for line in text.splitlines() if line.startswith("mfv-default ")][1]
    assert "6.00" in octs  # 60 s for 10 facets: 6 s per facet in octave 1
    assert "(goal >= 6.0)" in text and "(goal <= 1.15)" in text


def test_octave_seconds_come_from_the_octave_images(tmp_path):
    start = 1_000_000.0
    for facet in range(2):
        for j, t in enumerate((10.0, 14.5, 15.0), 1):
            p = tmp_path / f"facet_{facet}_octave{j}.png"
            p.write_bytes(b"")
            os.utime(p, (start + t + facet * 0.1, start + t + facet * 0.1))
    assert bench_whole.octave_seconds_from_images(tmp_path, start, 3) == [10.1, 4.5, 0.5]
    with pytest.raises(RuntimeError, match="octave4"):
        bench_whole.octave_seconds_from_images(tmp_path, start, 4)


def test_medians_over_repeats_and_caps_of_the_cases():
    runs = [_case(0.03, octave_seconds=[3, 2]), _case(0.01, octave_seconds=[1, 4]), _case(0.02)]
    runs[2]["octave_seconds"] = [2, 3]
    med = bench.median_result(runs)
    assert med["seconds_per_facet_step"] == 0.02 and med["octave_seconds"] == [2, 3]
    assert med["repeats"] == 3
    env = bench.case_env(1, avx2=True)
    assert env["OMP_NUM_THREADS"] == "1" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    # The machine record is taken with the cases' environment, so it states their caps (this
    # process may run with others).
    machine = bench.machine_record(env)
    assert machine["caps"]["OMP_NUM_THREADS"] == "1" and machine["torch_threads"] == 1
    assert machine["isa_class"] != "AVX-512"


def test_a_run_appends_one_record_with_its_figures(tmp_path, monkeypatch, capsys):
    """versus_original's bookkeeping with planted measurements: the record holds the machine of
    the cases, every figure and the tracked ratios, and the terminal says where it went."""
    from mfv import bench_history

    machine = {"cpu_model": "Planted CPU", "isa_class": "AVX2", "usable_cpus": 2, "caps": {}}
    monkeypatch.setattr(bench, "machine_record", lambda env: machine)
    monkeypatch.setattr(bench, "measure", lambda a, env: {k: [v] for k, v in MED.items()})
    prof = {"bound_over_sgemm": 0.4, "facets": 10, "threads": 2, "model": "caffenet",
            "sgemm_gflops": 100.0, "bandwidth_gbs": 20.0, "parts": [], "step_ms": 1.0,
            "bound_ms": 1.0}  # fmt: skip
    monkeypatch.setattr(bench, "profile_run", lambda facets, env, steps: prof)
    monkeypatch.setattr("legacy_caffe.rootfs.is_complete", lambda: True)
    argv = ["--versus-original", "--record-dir", str(tmp_path)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert f"record: appended to {tmp_path / 'planted-cpu_avx2_2cpu.jsonl'}" in out
    (rec,) = bench_history.load_history(tmp_path)["planted-cpu_avx2_2cpu"]
    assert rec["kind"] == "versus-original" and rec["machine"] == machine
    assert rec["tracked"]["default_over_original_openblas"] == pytest.approx(0.116 / 0.0243, 1e-3)
    assert rec["figures"]["cases"]["mfv-default"]["octave_seconds"] == [60.0, 25.0, 3.5, 1.5]
    assert rec["figures"]["options"]["record_dir"] == str(tmp_path)
    # A smoke run of the first octave only is recorded, but its ratios are not tracked.
    assert bench.main([*argv, "--max-octaves", "1"]) == 0
    last = bench_history.load_history(tmp_path)["planted-cpu_avx2_2cpu"][-1]
    assert last["kind"] == "partial-1-octaves"
    assert "default_over_original_openblas" not in last["tracked"]


def test_a_pytest_benchmark_run_is_recorded_too(tmp_path):
    import json

    from mfv import bench_history

    saved = tmp_path / "0001_run.json"
    machine = {"cpu_model": "Planted CPU", "isa_class": "AVX2", "usable_cpus": 2}
    saved.write_text(json.dumps({
        "machine_info": {"caffe_mfv": machine},
        "benchmarks": [
            {"name": "test_speed_case[caffenet-default10]", "stats": {"mean": 9.5},
             "extra_info": {"seconds_per_facet_step": 0.03, "machine": machine}},
            {"name": "test_speed_ratios", "stats": {"mean": 0.0},
             "extra_info": {"caffenet_bound_over_default": {"ratio": 1.25}}},
        ],
    }))  # fmt: skip
    path = bench.record_pytest_run(saved, tmp_path / "records")
    (rec,) = bench_history.load_history(path.parent)["planted-cpu_avx2_2cpu"]
    assert rec["kind"] == "pytest-benchmark" and rec["tracked"] == {"bound_over_default_step": 0.8}
    case = rec["figures"]["benchmarks"]["test_speed_case[caffenet-default10]"]
    assert case == {"mean_seconds": 9.5, "seconds_per_facet_step": 0.03}
