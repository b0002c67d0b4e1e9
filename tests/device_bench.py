"""The default MFV mode on an accelerator: seconds per facet-step and facets per hour, one process.

``python tests/device_bench.py --device cuda --out DIR`` times the cases below in order (CaffeNet
first: 10 and 100 facets in one batch, several units per batch through
:func:`mfv.visualize.visualize_units`, and the forward+backward bound at the same batch; then VGG16
and GoogLeNet), with seeded weights and the published class-945 mean images, and writes
``DIR/device_bench.json`` after every case (the machine, then one record per case), so that a run
stopped by its time limit keeps what it measured. ``--budget`` seconds: no case starts after that.
Rates extrapolate the first octave's steps to the published 370-step schedule, as
``tests/speed_cases.py`` does (whose case grammar this uses); each case also records the device's
peak memory. ``--record-dir benchmarks`` appends the run to the history (``mfv.bench_history``;
the GPU's machine class is named after the device).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import speed_cases  # noqa: E402  (tests/ is not a package on sys.path when run as a script)

CASES = [
    "caffenet-fwdbwd10",
    "caffenet-default10",
    "caffenet-fwdbwd100",
    "caffenet-default100",
    "caffenet-default10x10",
    "caffenet-default10x30",
    "caffenet-fwdbwd300",
    "vgg16-fwdbwd10",
    "vgg16-default10",
    "vgg16-default10x10",
    "googlenet-default10",
    "googlenet-default10x10",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--out", type=Path, required=True, help="folder for device_bench.json")
    p.add_argument(
        "--steps", type=int, default=30, help="steps timed per case (first octave; default 30)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=300.0,
        help="seconds after which no case starts (default 300)",
    )
    p.add_argument("--cases", nargs="*", default=CASES, help="cases to run (speed_cases grammar)")
    p.add_argument(
        "--record-dir",
        type=Path,
        help="also append the run to the history here (e.g. benchmarks/, kind device-<device>)",
    )
    a = p.parse_args(argv)
    import torch

    from mfv.machine import machine_info

    t_start = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine_info(), "device": a.device, "steps": a.steps, "cases": []}
    if a.device.startswith("cuda"):
        doc["machine"]["cuda_device"] = torch.cuda.get_device_name(torch.device(a.device))
        torch.backends.cudnn.benchmark = True  # fixed shapes at every step of an octave

    def save() -> None:
        tmp = a.out / "device_bench.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(a.out / "device_bench.json")

    save()
    for case in a.cases:
        if time.perf_counter() - t_start > a.budget:
            doc["cases"].append({"case": case, "skipped": "time budget spent"})
            continue
        m = speed_cases.CASE.match(case)
        if m is None:
            raise SystemExit(f"unknown case {case!r}")
        if a.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        try:
            res = speed_cases._mfv_case(
                speed_cases.MODELS[m["model"]],
                m["mode"],
                int(m["facets"]),
                a.steps,
                int(m["units"] or 1),
                a.device,
            )
        except Exception as e:  # one failing case must not lose the others' figures
            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        if a.device.startswith("cuda"):
            res["peak_device_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        res["case"] = case
        doc["cases"].append(res)
        save()
        if "error" in res:
            print(f"{case:26s} ERROR {res['error']}", flush=True)
        else:
            print(
                f"{case:26s} {res['seconds_per_facet_step']:.5f} s/facet-step {res['facets_per_hour']:10.1f} "
                f"facets/h  peak {res.get('peak_device_mb', '-')} MB  ({time.perf_counter() - t_start:.0f} s)",
                flush=True,
            )
    if a.record_dir:
        _append_record(doc, a.record_dir)
    return 0


def _append_record(doc: dict, folder: Path) -> None:
    """One history record of the run (mfv.bench_history); the bound over the default step at 10
    facets is its tracked ratio when both cases ran."""
    from mfv import bench_history

    by_case = {c["case"]: c for c in doc["cases"] if "seconds_per_facet_step" in c}
    tracked = {}
    if "caffenet-fwdbwd10" in by_case and "caffenet-default10" in by_case:
        tracked["bound_over_default_step"] = (
            by_case["caffenet-fwdbwd10"]["seconds_per_facet_step"]
            / by_case["caffenet-default10"]["seconds_per_facet_step"]
        )
    kind = f"device-{doc['device'].split(':')[0]}"
    rec = bench_history.make_record(doc["machine"], doc, tracked, kind=kind, repo=HERE.parent)
    print(f"record: appended to {bench_history.append_record(rec, folder)}")


if __name__ == "__main__":
    sys.exit(main())
