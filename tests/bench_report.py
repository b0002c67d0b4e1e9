"""What ``tox -e bench -- --versus-original`` prints and records: ratios, tables, tracked figures.

Pure functions of the measured cases (``tests/bench.py`` measures them), so that the tables and
the ratios are tested without running a benchmark (``tests/test_bench_report.py``).
"""

from __future__ import annotations

GOALS = {  # issue 24: what the default mode should reach (goal, direction)
    "default_over_original_openblas": (6.0, ">="),
    "step_over_bound": (1.15, "<="),
    "bound_over_sgemm": (0.60, ">="),
}


def progress(r: int, repeat: int, case: str, res: dict) -> None:
    """One line per measured case, as it finishes."""
    fph = res.get("facets_per_hour")
    rate = f"{res['seconds_per_facet_step']:.4f} s/facet-step {fph:8.1f} facets/h" if fph else ""
    print(f"[{r + 1}/{repeat}] {case:28s} {rate}  ({res.get('seconds', 0):.1f} s)", flush=True)


def _ratio(a: dict | None, b: dict | None, key: str = "facets_per_hour") -> float | None:
    if not a or not b or not b.get(key):
        return None
    return a[key] / b[key]


def summarise(med: dict[str, dict], facets: int, prof: dict | None) -> dict:
    """The ratios of a run from each case's median result (None where a case did not run).

    Whole-run ratios compare facets per hour of whole runs; the estimate's distance is the
    sampled ratio over the whole-run ratio, minus 1; ``step_over_bound`` compares the default
    mode's sampled step with its forward+backward pass at the same batch (step-level figures, not
    extrapolated); ``bound_over_sgemm`` is the profile's.
    """
    default, faithful = med.get("mfv-default"), med.get("mfv-faithful")
    ob, atlas = med.get("original-openblas"), med.get("original-atlas")
    est_default, bound = med.get(f"caffenet-default{facets}"), med.get(f"caffenet-fwdbwd{facets}")
    est_orig = med.get("caffenet-original-openblas")
    s = {
        "default_over_original_openblas": _ratio(default, ob),
        "default_over_original_atlas": _ratio(default, atlas),
        "faithful_over_original_openblas": _ratio(faithful, ob),
        "estimate_default_over_original_openblas": _ratio(est_default, est_orig),
        "step_over_bound": _ratio(est_default, bound, "seconds_per_facet_step"),
        "bound_over_sgemm": prof["bound_over_sgemm"] if prof else None,
    }
    whole, est = s["default_over_original_openblas"], s["estimate_default_over_original_openblas"]
    s["estimate_off_by"] = est / whole - 1 if whole and est else None
    # Each side's estimated facets/h against its whole run's.
    for key, est_case, whole_case in (
        ("estimate_default_off_by", est_default, default),
        ("estimate_original_off_by", est_orig, ob),
    ):
        r = _ratio(est_case, whole_case)
        s[key] = r - 1 if r else None
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}


def tracked(summary: dict, *, whole_schedule: bool) -> dict[str, float]:
    """The history's tracked ratios (higher is better) from a summary; whole-run ratios only when
    the runs covered the whole schedule."""
    out = {}
    if whole_schedule:
        for name in (
            "default_over_original_openblas",
            "default_over_original_atlas",
            "faithful_over_original_openblas",
        ):
            if summary.get(name):
                out[name] = summary[name]
    if summary.get("step_over_bound"):
        out["bound_over_default_step"] = 1.0 / summary["step_over_bound"]
    if summary.get("bound_over_sgemm"):
        out["bound_over_sgemm"] = summary["bound_over_sgemm"]
    return out


def _fmt(v: float | None, spec: str = ".3g", suffix: str = "") -> str:
    if v is None:  # as wide as a figure would be, so that the columns stay aligned
        width = spec.split(".")[0]
        return f"{'-':>{width}s}" if width else "-"
    return f"{v:{spec}}{suffix}"


def case_table(med: dict[str, dict], facets: int) -> str:
    """A row per case: s/facet-step, facets/h, ratio to the bound and to the original, peak RSS,
    the caps it ran with."""
    bound = med.get(f"caffenet-fwdbwd{facets}")
    # Whole runs against the whole original, estimates against the estimated original.
    origs = {
        "whole": med.get("original-openblas"),
        "estimate": med.get("caffenet-original-openblas"),
    }
    rows = [
        f"{'case':28s} {'kind':9s} {'s/facet-step':>12s} {'facets/h':>9s} {'bound/this':>10s} "
        f"{'vs orig':>8s} {'peak MB':>8s}  caps"
    ]
    for case, r in med.items():
        kind = "whole" if "octave_seconds" in r and case in _WHOLE else "estimate"
        if case.startswith("caffenet-fwdbwd"):
            kind = "bound"
        is_orig = case.startswith(("original", "caffenet-original"))
        to_bound = (
            None if kind == "bound" or is_orig else _ratio(bound, r, "seconds_per_facet_step")
        )
        vs = None if is_orig else _ratio(r, origs.get(kind))
        rows.append(
            f"{case:28s} {kind:9s} {_fmt(r.get('seconds_per_facet_step'), '12.4f')} "
            f"{_fmt(r.get('facets_per_hour'), '9.1f')} {_fmt(to_bound, '10.3f')} "
            f"{_fmt(vs, '7.2f', 'x'):>8s} {_fmt(r.get('peak_rss_mb'), '8.0f')}  "
            f"{r.get('caps', {})}"
        )
    return "\n".join(rows)


_WHOLE = ("original-openblas", "original-atlas", "mfv-default", "mfv-faithful")


def octave_table(med: dict[str, dict]) -> str:
    """Per-octave seconds per facet of each whole run (the original's exclude its model load; the
    mfv runs' octave 1 includes their start-up, see tests/bench_whole.py)."""
    rows = []
    for case in _WHOLE:
        r = med.get(case)
        if not r or not r.get("octave_seconds"):
            continue
        per_facet = [
            s / (r["facets"] if case.startswith("mfv") else 1) for s in r["octave_seconds"]
        ]
        cells = " ".join(f"{s:9.2f}" for s in per_facet)
        rows.append(f"{case:20s} {cells}   total {r['seconds_per_facet']:.2f} s/facet (whole run)")
    if not rows:
        return ""
    head = f"{'s per facet':20s} " + " ".join(f"{'octave ' + str(j + 1):>9s}" for j in range(4))
    return "\n".join([head, *rows])


def render(machine: dict, med: dict[str, dict], summary: dict, prof: dict | None) -> str:
    """Everything the terminal shows after the runs."""
    facets = next((r["facets"] for r in med.values() if "facets" in r), 0)
    lines = [
        "",
        f"machine: {machine.get('cpu_model')} ({machine.get('isa_class')}), "
        f"{machine.get('usable_cpus')} CPUs, torch {machine.get('torch')} with "
        f"{machine.get('torch_threads')} threads, caps {machine.get('caps')}",
        "",
        case_table(med, facets),
        "",
        octave_table(med),
        "",
    ]
    for name, label in (
        ("default_over_original_openblas", "default / original on Caffe + OpenBLAS (whole runs)"),
        ("default_over_original_atlas", "default / original on Caffe + ATLAS (whole runs)"),
        ("faithful_over_original_openblas", "faithful / original on Caffe + OpenBLAS (whole)"),
        ("estimate_default_over_original_openblas", "the same, sampled ESTIMATE"),
        ("estimate_off_by", "estimate's distance from the whole-run ratio"),
        ("estimate_default_off_by", "default mode's estimated facets/h vs its whole run"),
        ("estimate_original_off_by", "original's estimated facets/h vs its whole run"),
        ("step_over_bound", "default step / its forward+backward bound"),
        ("bound_over_sgemm", "bound's rate / the machine's large-sgemm rate"),
    ):
        goal = GOALS.get(name)
        g = f"   (goal {goal[1]} {goal[0]})" if goal else ""
        v = summary.get(name)
        shown = "-" if v is None else (f"{v:+.1%}" if name.endswith("off_by") else f"{v:.3f}")
        lines.append(f"{label:55s} {shown:>8s}{g}")
    if prof:
        from mfv.profile import render as render_profile

        lines += ["", render_profile(prof)]
    return "\n".join(lines)
