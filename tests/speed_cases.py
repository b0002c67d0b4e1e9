"""One speed measurement per process, for tests/test_mfv_speed_bench.py (issue 7).

``python tests/speed_cases.py CASE [--steps N] [--threads T]`` runs one case in a fresh process
(so that its peak resident memory is its own) and prints one JSON line: wall seconds of the timed
part, seconds per facet-step, facets per hour at the full published schedule (370 steps) and peak
RSS. Facets per hour are an ESTIMATE, extrapolated from the first ``--steps`` steps of the first
octave to the schedule's 370 steps; the two sides do not cost the same per step across the
schedule (the original's TV iterations follow each octave's weight), so the whole runs of
``tests/bench_whole.py`` are the figures, and ``tox -e bench -- --versus-original`` reports how far
this estimate was from them.

Cases: ``{caffenet,vgg16,googlenet}-{default,faithful,fwdbwd}N[xU]`` (N facets in one batch; with
``xU``, U targets of N facets each in one batch through :func:`mfv.visualize.visualize_units`, as
``mfv sweep --units-per-batch`` runs them; fwdbwd: forward + backward alone on N * U inputs, the
bound), ``caffenet-original-openblas``
(the original script on real Caffe + OpenBLAS in the legacy_caffe root, one facet, first octave,
OpenBLAS on its own kernel and ``--threads`` threads),
``caffenet-fc7-64`` (fc7 codes, images per second at batch 64), ``tv-batch10`` (the default mode's
float32 TV on ten noisy 227x227 mean images), ``caffenet-parity`` (full parity run).
Each line carries ``machine``: :func:`mfv.machine.machine_info` of the process that measured it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time

import numpy as np

STEPS_PER_FACET = 370  # the published schedule: 190 + 150 + 20 + 10
MODELS = {"caffenet": "caffenet", "vgg16": "vgg16", "googlenet": "googlenet"}
CASE = re.compile(
    r"^(?P<model>[a-z0-9]+)-(?P<mode>default|faithful|fwdbwd)(?P<facets>\d+)(?:x(?P<units>\d+))?$"
)


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def _means(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The published class-945 mean images (shared/reference), cycled to ``n``, at the input size."""
    from mfv import _io
    from port.zoo import shared_root

    folder = shared_root() / "reference" / "mfv-original" / "mean_images" / "n07720875"
    paths = sorted(folder.glob("mean_*.jpg"))
    if not paths:
        raise SystemExit(f"no mean_*.jpg in {folder}")
    imgs = [_io.fit_to(_io.load_rgb(p), size) for p in paths]
    return [imgs[i % len(imgs)] for i in range(n)]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _mfv_case(
    model_name: str, mode: str, facets: int, steps: int, units: int = 1, device: str = "cpu"
) -> dict:
    import torch

    from mfv.models import load_model
    from mfv.objectives import unit
    from mfv.octaves import load_schedule, parse_schedule
    from mfv.visualize import UnitJob, visualize, visualize_units

    model = load_model(model_name, parity_check=False, device=device)
    sched = load_schedule(model.spec.schedule_path).as_dict()
    first = dict(sched["octaves"][0])
    inits = _means(facets, model.convention.input_size)
    obj = unit(model.spec.target_layer, 945)
    if mode == "fwdbwd":
        x0 = torch.from_numpy(
            np.stack([np.transpose(i, (2, 0, 1)) for i in inits * units]).astype(np.float32)
        )
        x0 = x0.to(model.device)

        def run(n: int) -> None:
            for _ in range(n):
                x = x0.clone().requires_grad_(True)
                obj(model.activations(x, obj.layers)).sum().backward()
    else:

        def run(n: int) -> None:
            schedule = parse_schedule({"name": "bench", "octaves": [{**first, "iter_n": n}]})
            if units == 1:
                visualize(
                    model,
                    obj,
                    inits,
                    schedule=schedule,
                    seed=1,
                    faithful=mode == "faithful",
                    progress=False,
                )
            else:  # several targets (classes 945, 946, ...) share one batch
                jobs = [
                    UnitJob(unit(model.spec.target_layer, 945 + u), inits) for u in range(units)
                ]
                visualize_units(
                    model,
                    jobs,
                    schedule=schedule,
                    seed=1,
                    faithful=mode == "faithful",
                    progress=False,
                )

    run(
        2
    )  # warm-up: first-call allocations, the compiled TV kernel (2: the faithful TV ramp divides by n - 1)
    _sync(device)
    t = time.perf_counter()
    run(steps)
    _sync(device)
    wall = time.perf_counter() - t
    per_step = wall / (steps * facets * units)
    return {
        "facets": facets * units,
        "units": units,
        "steps": steps,
        "seconds": round(wall, 3),
        "device": device,
        "seconds_per_facet_step": per_step,
        "facets_per_hour": 3600.0 / (per_step * STEPS_PER_FACET),
    }


def _original_case(threads: int) -> dict:
    """The original script on real Caffe + OpenBLAS (its own kernel, ``threads`` threads), first
    octave of one facet: a sampled estimate, the whole run is ``tests/bench_whole.py``'s."""
    import os

    import bench_whole

    from legacy_caffe import rootfs

    if not rootfs.is_complete():
        raise SystemExit(
            f"no complete legacy Caffe root at {rootfs.root_dir()}: python -m legacy_caffe build"
        )
    res = bench_whole.run_original("openblas", 1, threads, dict(os.environ), max_octaves=1)
    steps = res["steps_per_facet"]
    per_step = res["octave_seconds"][0] / steps
    return {
        "facets": 1,
        "steps": steps,
        "seconds": res["octave_seconds"][0],
        "process_seconds": res["seconds"],
        "caps": res["caps"],
        "seconds_per_facet_step": per_step,
        "facets_per_hour": 3600.0 / (per_step * STEPS_PER_FACET),
        "estimate": "first octave's seconds per step times the schedule's 370 steps",
    }


def _fc7_case(batch: int) -> dict:
    from mfv.means import compute_codes
    from mfv.models import load_model

    model = load_model("caffenet", parity_check=False)
    imgs = np.stack(_means(batch, model.convention.input_size))
    compute_codes(model, imgs[:2], model.spec.code_layer, batch_size=batch, progress=False)
    t = time.perf_counter()
    compute_codes(model, imgs, model.spec.code_layer, batch_size=batch, progress=False)
    wall = time.perf_counter() - t
    return {"images": batch, "seconds": round(wall, 3), "images_per_second": batch / wall}


def _tv_case(batch: int) -> dict:
    import torch

    from mfv.tv_bregman import denoise_tv_bregman

    imgs = np.stack([np.transpose(i, (2, 0, 1)) for i in _means(batch, (227, 227))]).astype(
        np.float32
    )
    x = torch.from_numpy(imgs) + torch.from_numpy(
        np.random.default_rng(0).normal(0, 8, imgs.shape).astype(np.float32)
    )
    denoise_tv_bregman(x, weight=0.4)  # compiles the kernel on a first run on this machine
    t = time.perf_counter()
    denoise_tv_bregman(x, weight=0.4)
    wall = time.perf_counter() - t
    return {"images": batch, "seconds": round(wall, 4), "ms_per_image": wall / batch * 1e3}


def _parity_case() -> dict:
    from parity import run as prun

    setup = prun.resolve(model="caffenet")
    t = time.perf_counter()
    ok = prun.run_parity(setup)[0]
    return {"seconds": round(time.perf_counter() - t, 3), "passed": bool(ok)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "case", help="e.g. caffenet-default10, vgg16-faithful1, caffenet-original-openblas"
    )
    p.add_argument("--steps", type=int, default=10, help="steps to time (first octave)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--device", default="cpu", help="torch device of the MFV cases (cpu, cuda)")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from mfv._process import keep_freed_memory

    keep_freed_memory()  # as `python -m mfv` does, for every case alike
    if a.case == "caffenet-original-openblas":
        result = _original_case(a.threads)
    elif a.case == "caffenet-fc7-64":
        result = _fc7_case(64)
    elif a.case == "tv-batch10":
        result = _tv_case(10)
    elif a.case == "caffenet-parity":
        result = _parity_case()
    else:
        m = CASE.match(a.case)
        if m is None or m["model"] not in MODELS:
            raise SystemExit(f"unknown case {a.case!r}")
        result = _mfv_case(
            MODELS[m["model"]], m["mode"], int(m["facets"]), a.steps, int(m["units"] or 1), a.device
        )
    from mfv.machine import machine_info

    caps = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ}
    result.setdefault("caps", {**caps, "torch_threads": torch.get_num_threads()})
    result.update(
        case=a.case, threads=a.threads, peak_rss_mb=round(_peak_rss_mb(), 1), machine=machine_info()
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
