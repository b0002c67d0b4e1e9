"""The benchmark history: one committed record file per machine class, a table, a plot, a gate.

Every ``tox -e bench`` run appends one record (one JSON line) to ``benchmarks/<class>.jsonl``,
where ``<class>`` names the machine class (:func:`machine_class`: CPU model, vector class,
usable CPUs), so that figures from different machines are never compared with each other.
A record holds the commit, the date, the machine record (:func:`mfv.machine.machine_info`),
every figure the run measured and the *tracked ratios*: dimensionless figures where higher is
better (the default mode over the original, the forward+backward bound's time over the default
step's, the bound's rate over the machine's own large-sgemm rate).

``python -m mfv.bench_history`` prints the tracked ratios over commits per machine class, writes a
PNG plot and a self-contained HTML page (the plot inlined) and exits 1 when the latest record of a
class has a tracked ratio more than 10% below the best earlier record of the same class.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from port.atomic import write_bytes_atomic, write_text_atomic

__all__ = [
    "FORMAT",
    "TOLERANCE",
    "TRACKED",
    "Regression",
    "append_record",
    "check",
    "load_history",
    "machine_class",
    "make_record",
    "main",
    "render_table",
]

FORMAT = "caffe-mfv-bench/1"
RECORD_DIR = "benchmarks"  # the records' folder, relative to the repository
RECORD_GLOB = f"{RECORD_DIR}/*.jsonl"
#: A tracked ratio may fall this far below the best earlier record of its class before the gate
#: fails: the spread of repeats on a quiet 2-vCPU machine was up to ~8% (README, Performance).
TOLERANCE = 0.10
#: The tracked ratios, higher is better, and what each means.
TRACKED = {
    "default_over_original_openblas": "whole runs: default mode's facets/h over the original's "
    "on Caffe + OpenBLAS",
    "default_over_original_atlas": "whole runs: default mode's facets/h over the original's on "
    "Caffe + ATLAS",
    "faithful_over_original_openblas": "whole runs: faithful mode's facets/h over the original's "
    "on Caffe + OpenBLAS",
    "bound_over_default_step": "forward+backward bound's seconds over the default step's (1 = "
    "the step costs no more than its network pass)",
    "bound_over_sgemm": "the bound's GFLOP/s over the machine's own large-sgemm GFLOP/s",
}


def machine_class(machine: dict) -> str:
    """The file name stem of a machine's records: CPU model (with its family/model numbers: a
    virtual machine may say only "AMD EPYC" for Zen 4 and Zen 5 alike), vector class and usable
    CPUs; a GPU run is named after its device.

    >>> machine_class(
    ...     {
    ...         "cpu_model": "AMD EPYC",
    ...         "cpu_family_model": "26/2",
    ...         "isa_class": "AVX-512",
    ...         "usable_cpus": 2,
    ...     }
    ... )
    'amd-epyc-26-2_avx-512_2cpu'
    """
    model = machine.get("cpu_model") or "unknown-cpu"
    if machine.get("cpu_family_model"):
        model += f" {machine['cpu_family_model']}"
    if machine.get("cuda_device"):
        model = machine["cuda_device"]
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    isa = re.sub(r"[^a-z0-9]+", "-", str(machine.get("isa_class", "")).lower()).strip("-")
    return f"{slug}_{isa or 'unknown'}_{machine.get('usable_cpus', '?')}cpu"


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def make_record(
    machine: dict, figures: dict, tracked: dict[str, float], *, kind: str, repo: Path
) -> dict:
    """One history record: commit (and whether the tree had uncommitted changes, records under
    ``benchmarks/`` aside), UTC date, machine record, every figure and the tracked ratios.

    Raises
    ------
    ValueError
        When a tracked name is not one of :data:`TRACKED` or its value is not a positive number.
    """
    for name, value in tracked.items():
        if name not in TRACKED:
            raise ValueError(f"unknown tracked ratio {name!r} (known: {sorted(TRACKED)})")
        if not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"tracked ratio {name!r} must be a positive number, got {value!r}")
    # Records waiting to be committed are not code: a run made after another run's record was
    # appended (and before it was committed) ran committed code, and is not called dirty.
    status = _git(
        ["status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){RECORD_GLOB}"],
        repo,
    )
    return {
        "format": FORMAT,
        "kind": kind,
        "commit": _git(["rev-parse", "HEAD"], repo) or "unknown",
        "dirty": bool(status) if status is not None else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine_class": machine_class(machine),
        "machine": machine,
        "tracked": {k: round(float(v), 4) for k, v in tracked.items()},
        "figures": figures,
    }


def append_record(record: dict, folder: Path) -> Path:
    """Append ``record`` as one line to ``folder/<machine class>.jsonl``; returns that path.

    The file is rewritten whole through :mod:`port.atomic`, so an interrupted run leaves the
    previous history intact rather than a half-written line.
    """
    folder = Path(folder)
    path = folder / f"{record['machine_class']}.jsonl"
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, old + json.dumps(record, sort_keys=True) + "\n")
    return path


def load_history(folder: Path) -> dict[str, list[dict]]:
    """Every record under ``folder``, per machine class, in file order (oldest first).

    Raises
    ------
    ValueError
        Naming the file and line of a record that is not valid JSON or not of :data:`FORMAT`.
    """
    history: dict[str, list[dict]] = {}
    for path in sorted(Path(folder).glob("*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON record ({e})") from None
            if not isinstance(rec, dict) or rec.get("format") != FORMAT:
                raise ValueError(f"{path}:{n}: not a {FORMAT} record")
            missing = [
                k for k in ("machine_class", "commit", "date", "kind", "tracked") if k not in rec
            ]
            if missing:
                raise ValueError(f"{path}:{n}: record lacks {', '.join(missing)}")
            history.setdefault(rec["machine_class"], []).append(rec)
    return history


@dataclass(frozen=True)
class Regression:
    """A tracked ratio of a class's latest record more than :data:`TOLERANCE` below its best."""

    machine_class: str
    ratio: str
    value: float
    best: float
    best_commit: str

    def __str__(self) -> str:
        return (
            f"{self.machine_class}: {self.ratio} = {self.value:.4g}, "
            f"{(1 - self.value / self.best) * 100:.1f}% below the best earlier record "
            f"{self.best:.4g} (commit {self.best_commit[:10]})"
        )


def check(history: dict[str, list[dict]], tolerance: float = TOLERANCE) -> list[Regression]:
    """The regressions of each class's latest record against the best earlier one of its class."""
    found = []
    for cls, records in history.items():
        if len(records) < 2:
            continue
        latest, earlier = records[-1], records[:-1]
        for name, value in latest.get("tracked", {}).items():
            before = [(r["tracked"][name], r["commit"]) for r in earlier if name in r["tracked"]]
            if not before:
                continue
            best, commit = max(before)
            if value < best * (1 - tolerance):
                found.append(Regression(cls, name, value, best, commit))
    return found


def render_table(history: dict[str, list[dict]]) -> str:
    """The tracked ratios over commits, one block per machine class, as plain text."""
    names = [n for n in TRACKED if any(n in r["tracked"] for rs in history.values() for r in rs)]
    short = {n: n.replace("_over_", "/").replace("original_", "orig-") for n in names}
    lines = []
    for cls, records in history.items():
        lines.append(f"{cls} ({len(records)} record{'s' * (len(records) != 1)})")
        head = f"  {'date':20s} {'commit':10s} {'kind':16s}" + "".join(
            f" {short[n]:>22s}" for n in names
        )
        lines.append(head)
        for r in records:
            cells = "".join(
                f" {r['tracked'][n]:22.4g}" if n in r["tracked"] else f" {'-':>22s}" for n in names
            )
            dirty = "+" if r.get("dirty") else " "
            lines.append(f"  {r['date']:20s} {r['commit'][:9]}{dirty} {r['kind']:16s}{cells}")
    return "\n".join(lines) if lines else "no records"


def _plot_png(history: dict[str, list[dict]]) -> bytes:
    """One panel per tracked ratio: its value against the record's position, a line per class."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the plot only goes to a file
    import matplotlib.pyplot as plt

    names = [n for n in TRACKED if any(n in r["tracked"] for rs in history.values() for r in rs)]
    fig, axes = plt.subplots(max(len(names), 1), 1, figsize=(9, 2.6 * max(len(names), 1)))
    axes = [axes] if len(names) <= 1 else list(axes)
    # One x axis of commits for every class, in the order of their first record's date.
    order = sorted((r["date"], r["commit"]) for rs in history.values() for r in rs)
    commits = list(dict.fromkeys(c for _, c in order))
    for ax, name in zip(axes, names, strict=False):
        for cls, records in history.items():
            pts = [(commits.index(r["commit"]), r["tracked"][name]) for r in records
                   if name in r["tracked"]]  # fmt: skip
            if pts:
                ax.plot([x for x, _ in pts], [v for _, v in pts], marker="o", label=cls)
        ax.set_xticks(range(len(commits)), [c[:7] for c in commits], fontsize=7, rotation=30)
        ax.set_title(f"{name}: {TRACKED[name]}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _html(history: dict[str, list[dict]], png: bytes, regressions: list[Regression]) -> str:
    import html

    verdict = (
        "<p><b>regressions</b>:</p><ul>"
        + "".join(f"<li>{html.escape(str(r))}</li>" for r in regressions)
        + "</ul>"
        if regressions
        else f"<p>no tracked ratio is more than {TOLERANCE:.0%} below its class's best.</p>"
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>caffe-mfv benchmark history</title>"
        "<h1>Benchmark history</h1>"
        f"<img alt='tracked ratios per machine class' src='data:image/png;base64,"
        f"{base64.b64encode(png).decode()}'>"
        f"{verdict}<pre>{html.escape(render_table(history))}</pre>"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m mfv.bench_history``: table, plot, page; exit 1 on a regression."""
    p = argparse.ArgumentParser(prog="python -m mfv.bench_history", description=__doc__)
    p.add_argument("--dir", type=Path, default=Path(RECORD_DIR), help="record folder")
    p.add_argument("--png", type=Path, help="write the plot here (default: DIR/history.png)")
    p.add_argument("--html", type=Path, help="write the page here (default: DIR/history.html)")
    p.add_argument("--no-plot", action="store_true", help="table and gate only")
    a = p.parse_args(argv)
    try:
        history = load_history(a.dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render_table(history))
    regressions = check(history)
    if not a.no_plot and history:
        png = _plot_png(history)
        png_path, html_path = a.png or a.dir / "history.png", a.html or a.dir / "history.html"
        png_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(png_path, png)
        write_text_atomic(html_path, _html(history, png, regressions))
        print(f"plot: {png_path}\npage: {html_path}")
    for r in regressions:
        print(f"REGRESSION {r}", file=sys.stderr)
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
