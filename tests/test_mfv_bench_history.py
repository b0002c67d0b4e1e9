"""The benchmark history (mfv.bench_history): records per machine class, the table, the plot, the
10% gate (a planted 15% regression fails it, 5% passes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfv import bench_history as bh

ROOT = Path(__file__).resolve().parent.parent
MACHINE = {"cpu_model": "Test CPU 9000", "isa_class": "AVX2", "usable_cpus": 2}
OTHER = {"cpu_model": "Other CPU", "isa_class": "AVX-512", "usable_cpus": 4}


def _history(tmp_path: Path, values: list[float], machine: dict = MACHINE) -> Path:
    for v in values:
        rec = bh.make_record(
            machine,
            {"note": "synthetic"},
            {"default_over_original_openblas": v, "bound_over_default_step": 0.8},
            kind="test",
            repo=ROOT,
        )
        bh.append_record(rec, tmp_path)
    return tmp_path


def test_records_go_to_one_file_per_machine_class(tmp_path):
    _history(tmp_path, [5.0, 5.1])
    _history(tmp_path, [7.0], OTHER)
    files = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    assert files == ["other-cpu_avx-512_4cpu.jsonl", "test-cpu-9000_avx2_2cpu.jsonl"]
    hist = bh.load_history(tmp_path)
    assert [r["tracked"]["default_over_original_openblas"] for r in hist[files[1][:-6]]] == [
        5.0,
        5.1,
    ]
    rec = hist[files[0][:-6]][0]
    assert rec["format"] == bh.FORMAT and rec["machine"] == OTHER and len(rec["commit"]) >= 7


@pytest.mark.parametrize(("drop", "fails"), [(0.15, True), (0.05, False)])
def test_gate_fails_on_15_percent_passes_on_5(tmp_path, capsys, drop, fails):
    _history(tmp_path, [6.0, 6.4, 6.2])  # best earlier: 6.4
    _history(tmp_path, [7.0, 7.0 * (1 - 0.15)], OTHER)  # another class's drop is its own
    _history(tmp_path, [6.4 * (1 - drop)])
    assert len(bh.check({k: v for k, v in bh.load_history(tmp_path).items()})) == 1 + fails
    rc = bh.main(["--dir", str(tmp_path), "--no-plot"])
    assert rc == 1
    err = capsys.readouterr().err
    assert ("test-cpu-9000_avx2_2cpu: default_over_original_openblas" in err) == fails
    assert "other-cpu_avx-512_4cpu: default_over_original_openblas" in err


def test_no_regression_exits_0_and_writes_plot_and_page(tmp_path, capsys):
    _history(tmp_path, [6.0, 6.4, 6.4 * 0.95])
    rc = bh.main(["--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "test-cpu-9000_avx2_2cpu (3 records)" in out and "6.08" in out
    png = (tmp_path / "history.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    page = (tmp_path / "history.html").read_text()
    assert "data:image/png;base64," in page and "src='http" not in page  # self-contained
    assert "no tracked ratio is more than 10%" in page


def test_bad_records_are_refused_with_file_and_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown tracked ratio"):
        bh.make_record(MACHINE, {}, {"speed": 1.0}, kind="t", repo=ROOT)
    with pytest.raises(ValueError, match="positive number"):
        bh.make_record(MACHINE, {}, {"bound_over_sgemm": 0.0}, kind="t", repo=ROOT)
    (tmp_path / "x.jsonl").write_text(json.dumps({"format": bh.FORMAT}) + "\n")
    assert bh.main(["--dir", str(tmp_path)]) == 2
    assert "x.jsonl:1: record lacks machine_class, commit" in capsys.readouterr().err
    (tmp_path / "x.jsonl").write_text("{not json\n")
    assert bh.main(["--dir", str(tmp_path)]) == 2
    assert "x.jsonl:1: not a JSON record" in capsys.readouterr().err


def _whole_record(tmp_path: Path, ratio: float) -> None:
    figures = {
        "options": {"threads": 2},
        "summary": {"default_over_original_openblas": ratio, "step_over_bound": 1.21},
        "cases": {
            "original-openblas": {"seconds_per_facet": 43.0},
            "mfv-default": {"seconds_per_facet": 43.0 / ratio},
        },
    }
    tracked = {"default_over_original_openblas": ratio, "bound_over_default_step": 1 / 1.21}
    rec = bh.make_record(MACHINE, figures, tracked, kind="versus-original", repo=ROOT)
    bh.append_record(rec, tmp_path)


def test_readme_performance_figures_are_generated_from_the_records(tmp_path):
    from mfv import bench_readme

    readme = ROOT / "README.md"
    assert bench_readme.main(["--dir", str(ROOT / "benchmarks"), "--check", str(readme)]) == 0
    # The check can fail: a new record makes the committed README stale until it is rewritten.
    copy, records = tmp_path / "README.md", tmp_path / "benchmarks"
    copy.write_text(readme.read_text())
    for path in (ROOT / "benchmarks").glob("*.jsonl"):
        (records / path.name).parent.mkdir(exist_ok=True)
        (records / path.name).write_text(path.read_text())
    _whole_record(records, 4.7)
    assert bench_readme.main(["--dir", str(records), "--check", str(copy)]) == 1
    assert bench_readme.main(["--dir", str(records), "--write", str(copy)]) == 0
    assert bench_readme.main(["--dir", str(records), "--check", str(copy)]) == 0
    row = next(line for line in copy.read_text().splitlines() if "test-cpu-9000" in line)
    assert "| 43.0 | 9.15 | 4.70x |" in row and "| 1.210 |" in row


def test_readme_says_not_measured_without_a_record(tmp_path):
    from mfv import bench_readme

    text = bench_readme.markdown(tmp_path)
    assert "not measured yet on a quiet machine" in text and "GPU" in text
    assert "x |" not in text  # no ratio without a record


def test_a_pending_record_does_not_make_the_tree_dirty_but_code_does(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "m.jsonl").write_text("{}\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")

    def dirty():
        return bh.make_record(MACHINE, {}, {}, kind="t", repo=tmp_path)["dirty"]

    assert dirty() is False
    (tmp_path / "benchmarks" / "m.jsonl").write_text("{}\n{}\n")  # another run's record
    assert dirty() is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert dirty() is True
