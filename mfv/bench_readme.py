"""README's performance figures, generated from the records under ``benchmarks/``.

    python -m mfv.bench_readme                      # print the block
    python -m mfv.bench_readme --write README.md    # replace the block between its markers
    python -m mfv.bench_readme --check README.md    # exit 1 when README's block is stale

One row per machine class: the latest whole-run record (``tox -e bench -- --versus-original``
over the whole schedule) of that class. A class without one, and the GPU row until
``tests/device_bench.py`` has a record, says so instead of showing a figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from port.readme_block import MarkerError, update_block

from .bench_history import RECORD_DIR, load_history

__all__ = ["BEGIN", "END", "markdown", "block", "main"]

BEGIN = "<!-- bench-figures:begin (python -m mfv.bench_readme --write README.md) -->"
END = "<!-- bench-figures:end -->"
NOT_MEASURED = "not measured yet on a quiet machine"
_HEAD = [
    "machine class (record)",
    "threads",
    "original, Caffe + OpenBLAS: s / facet",
    "default mode: s / facet",
    "default / original (OpenBLAS)",
    "default / original (ATLAS)",
    "faithful / original (OpenBLAS)",
    "default step / its fwd+bwd bound",
    "bound / large-sgemm rate",
]


def _x(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "" if v is None else f"{v:{spec}}{suffix}"


def _row(cls: str, rec: dict) -> list[str]:
    fig = rec["figures"]
    s, cases = fig.get("summary", {}), fig.get("cases", {})
    orig, default = cases.get("original-openblas", {}), cases.get("mfv-default", {})
    m = rec["machine"]
    label = (
        f"{m.get('cpu_model')}, {m.get('isa_class')}, {m.get('usable_cpus')} CPUs "
        f"(`{cls}`, {rec['date'][:10]}, commit {rec['commit'][:9]}{'+' if rec.get('dirty') else ''})"
    )
    return [
        label,
        str(fig.get("options", {}).get("threads", "")),
        _x(orig.get("seconds_per_facet"), ".1f"),
        _x(default.get("seconds_per_facet"), ".2f"),
        _x(s.get("default_over_original_openblas"), ".2f", "x"),
        _x(s.get("default_over_original_atlas"), ".2f", "x"),
        _x(s.get("faithful_over_original_openblas"), ".2f", "x"),
        _x(s.get("step_over_bound"), ".3f"),
        _x(s.get("bound_over_sgemm"), ".0%"),
    ]


def markdown(folder: Path) -> str:
    """The table of the latest whole-run record of each machine class under ``folder``."""
    history = load_history(folder)
    rows = []
    for cls, records in sorted(history.items()):
        whole = [r for r in records if r["kind"] == "versus-original"]
        if whole:
            rows.append(_row(cls, whole[-1]))
    if not rows:
        rows.append([f"CPU: {NOT_MEASURED} (no whole-run record under `benchmarks/`)"])
    gpu = any("cuda" in r["kind"] for rs in history.values() for r in rs)
    if not gpu:
        rows.append(["GPU (`tests/device_bench.py`): unmeasured, no GPU was lent to this work"])
    lines = ["| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    lines += ["| " + " | ".join(r + [""] * (len(_HEAD) - len(r))) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def block(folder: Path) -> str:
    return f"{BEGIN}\n{markdown(folder)}{END}"


def main(argv: list[str] | None = None) -> int:
    """Print, write or check README's block; exit 1 when it is missing or stale."""
    ap = argparse.ArgumentParser(prog="python -m mfv.bench_readme", description=__doc__)
    ap.add_argument("--dir", type=Path, default=Path(RECORD_DIR), help="record folder")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", type=Path, metavar="README", help="replace the block in this file")
    g.add_argument("--check", type=Path, metavar="README", help="exit 1 when the block is stale")
    a = ap.parse_args(argv)
    new = block(a.dir)
    path = a.write or a.check
    if path is None:
        print(new)
        return 0
    try:
        stale = update_block(path, new, BEGIN, END, write=a.write is not None)
    except MarkerError as exc:
        print(exc, file=sys.stderr)
        return 1
    if a.check and stale:
        print(
            f"{path}: the performance figures are stale against {a.dir}/; run "
            f"python -m mfv.bench_readme --write {path}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
