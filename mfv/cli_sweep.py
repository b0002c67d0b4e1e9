"""``python -m mfv sweep``: its options and its command (the sweep itself is :mod:`mfv.sweep`)."""

from __future__ import annotations

import argparse

from port.command import Exit, Tool, add_out, check_output_dir

from .checks import check_model_name, check_sweep_inputs, check_sweep_params
from .cli_options import grey_args, model_args, model_options

__all__ = ["add_sweep"]


def _sweep_device(name: str) -> str:
    """--device of sweep: only parsed here; the workers check that it exists (they may have GPUs
    where the client has none)."""
    import torch

    try:
        return str(torch.device(name))
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_sweep(a) -> int:
    from .models import ModelArgs
    from .sweep import SweepParams, SweepRun, SweepUnits, sweep

    check_model_name(a.model)
    check_sweep_params(k=a.k, m=a.m, units=a.units)
    check_sweep_inputs(units=a.units, unit_map=a.unit_map, classes=a.classes, images=a.images)
    check_output_dir(a.out)
    params = SweepParams(
        ModelArgs(a.model, **model_options(a)),
        layer=a.layer,
        softmax=a.softmax,
        code_layer=a.code_layer,
        k=a.k,
        m=a.m,
        means_seed=a.means_seed,
        seed=a.seed,
        schedule=a.schedule,
        faithful=a.faithful,
        denoiser=a.denoiser,
        keep_grey=a.keep_grey,
        exclude=tuple(a.exclude or ()),
        device=a.device,
        threads=a.threads_per_worker or a.threads or 1,
        batch_size=a.batch_size,
        evaluate=not a.no_evaluate,
    )
    result = sweep(
        params,
        out=a.out,
        units=SweepUnits(a.units, a.images, a.unit_map, a.classes),
        run=SweepRun(
            scheduler=a.scheduler,
            workers=a.workers,
            retries=a.retries,
            progress=not a.quiet,
            units_per_batch=a.units_per_batch,
        ),
    )
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result["counts"].items()))
    rate = result["run"]["units_per_hour"]
    print(
        f"{len(result['units'])} units: {counts}"
        + (f"; {rate:.0f} units/hour this run" if rate else "")
        + f"; wrote {a.out}/index.html and summary.json"
    )
    return Exit.OK if all(r.get("status") == "done" for r in result["units"]) else Exit.INCOMPLETE


def add_sweep(tool: Tool) -> None:
    s = tool.add_command(
        "sweep",
        _cmd_sweep,
        help="means, facets and evaluation for many units on Dask (resumable)",
        description="One Dask task per unit: mean images (as `means`), all its facets in one "
        "batch (as `visualize`), evaluation (as `evaluate`), into OUT/<unit>/, finished by an "
        "atomic done.json. A rerun skips finished units and resumes the others. Writes "
        "OUT/index.html (every unit's facets) and OUT/summary.json (timings, figures). "
        "See mfv/SWEEP.md.",
    )
    model_args(
        s,
        device_type=_sweep_device,
        threads_help="same as --threads-per-worker",
        device_note="of the workers, checked there (a local cluster spreads its workers over "
        "the GPUs with cuda)",
    )
    _sweep_sources(s)
    _sweep_targets(s)
    _sweep_facets(s)
    _sweep_dask(s)
    add_out(s, "output folder (rerun the same command to resume)")


def _sweep_sources(s: argparse.ArgumentParser) -> None:
    """Where each unit's images come from, and which units."""
    s.add_argument(
        "--images",
        help="ImageNet-style root: unit i uses ROOT/<wnid of class i>/ (class list: "
        "--classes); with --unit-map, the folder relative map entries are resolved against",
    )
    s.add_argument(
        "--unit-map",
        help='JSON ({"945": "folder", ...} or a list of folders) or TSV '
        "(unit<TAB>folder) file mapping units to image folders, for layers that are not ImageNet classes",
    )
    s.add_argument(
        "--classes",
        help="class list, 'wnid name' per line in unit order (default: "
        "synset_words.txt of the shared reference folder)",
    )
    s.add_argument(
        "--units",
        default="all",
        help="units to visualise: all, 0-999, 3,7,10-12, or a file of such lists (default all)",
    )


def _sweep_targets(s: argparse.ArgumentParser) -> None:
    """The target and code layers, and the means' clustering."""
    s.add_argument(
        "--layer",
        help="target layer (default: the model's logits, e.g. fc8; a conv layer's "
        "units are its channels, targeted at the centre)",
    )
    s.add_argument(
        "--softmax", action="store_true", help="maximise the softmax of --layer at each unit"
    )
    s.add_argument(
        "--code-layer",
        help="layer whose codes the mean images cluster (default: the model's fc7 equivalent)",
    )
    s.add_argument("--k", type=int, default=10, help="facets (clusters) per unit (default 10)")
    s.add_argument("--m", type=int, default=15, help="images averaged per mean image (default 15)")
    s.add_argument(
        "--means-seed", type=int, default=0, help="seed of PCA, t-SNE and k-means (default 0)"
    )


def _sweep_facets(s: argparse.ArgumentParser) -> None:
    """How each facet runs (as ``visualize``) and is evaluated."""
    s.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of each facet's random stream (default 1, as published)",
    )
    s.add_argument("--schedule", help="octave schedule JSON (default: the model's, mfv/schedules/)")
    s.add_argument(
        "--faithful",
        action="store_true",
        help="reproduce the original's arithmetic (see visualize)",
    )
    s.add_argument(
        "--denoiser",
        choices=("skimage", "torch"),
        help="TV-Bregman implementation (see visualize; default: torch, or skimage with --faithful)",
    )
    grey_args(s)
    s.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="leave out image files whose path relative to the unit's folder matches GLOB (repeatable)",
    )
    s.add_argument(
        "--batch-size", type=int, default=16, help="images per forward pass for codes (default 16)"
    )
    s.add_argument("--no-evaluate", action="store_true", help="skip the evaluation of each unit")


def _sweep_dask(s: argparse.ArgumentParser) -> None:
    """How units are batched and spread over Dask workers."""
    s.add_argument(
        "--units-per-batch",
        type=int,
        default=1,
        help="units whose facets share one MFV batch "
        "(one Dask task): the fully connected weights are read once for all of them; a batch's "
        "units finish together (default 1)",
    )
    s.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a running Dask scheduler, e.g. tcp://host:8786 "
        "(default: start a local cluster of worker processes)",
    )
    s.add_argument(
        "--workers",
        type=int,
        help="workers of the local cluster (default: one per GPU with "
        "--device cuda, else CPU cores / --threads-per-worker)",
    )
    s.add_argument(
        "--threads-per-worker",
        type=int,
        help="CPU threads per worker for torch and OpenMP; "
        "each worker runs one unit at a time (default 1)",
    )
    s.add_argument(
        "--retries",
        type=int,
        default=2,
        help="Dask retries of a unit that raised an unexpected "
        "error (default 2; a dead worker's unit is rerun by Dask in any case)",
    )
