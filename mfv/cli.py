"""``python -m mfv {layers,means,visualize,evaluate,diff,sweep}``."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from port.command import (
    Exit,
    Tool,
    add_caffemodel,
    add_device,
    add_out,
    add_prototxt,
    check_output_dir,
    check_output_file,
)
from port.errors import UsageError

from . import _io
from .checks import check_sweep_params
from .cli_options import grey_args, model_args, model_options, refuse_accurate_module
from .cli_sweep import add_sweep
from .models import load_model


def _load(a):
    if getattr(a, "threads", None):
        import torch

        torch.set_num_threads(a.threads)
    if getattr(a, "module", None):
        from .exported import load_exported

        refuse_accurate_module(a)
        return load_exported(
            a.module,
            a.weights,
            name=a.model,
            device=a.device,
            parity_check=not getattr(a, "no_parity_check", False),
        )
    return load_model(a.model, device=a.device, **model_options(a))


def _cmd_layers(a) -> int:
    m = _load(a)
    print(f"# {m.name}: input {m.convention.input_size}, pixel convention {m.convention.name}")
    for name, shape in m.layer_shapes().items():
        print(f"{name}\t{'x'.join(map(str, shape))}")
    return 0


def _cmd_means(a) -> int:
    from .means import make_means

    check_sweep_params(k=a.k, m=a.m)
    check_output_dir(a.out)
    m = _load(a)
    r = make_means(
        m,
        a.images,
        k=a.k,
        m=a.m,
        layer=a.layer,
        seed=a.means_seed,
        out=a.out,
        batch_size=a.batch_size,
        keep_grey=a.keep_grey,
        exclude=tuple(a.exclude or ()),
        progress=not a.quiet,
    )
    print(
        f"{len(r.paths)} images, {len(r.skipped)} skipped; wrote {a.out}/mean_0..{a.k - 1}.png/.jpg, "
        "clusters.json, tsne.png"
    )
    return 0


def _cmd_visualize(a) -> int:
    from .defaults import resolve_schedule
    from .objectives import parse_target
    from .visualize import visualize

    check_output_dir(a.out)
    m = _load(a)
    layer = a.layer or (m.spec.target_layer if m.spec else None)
    if layer is None:
        raise UsageError("--layer is required for this model")
    shapes = m.layer_shapes()
    if layer not in shapes:
        raise UsageError(
            f"no layer {layer!r} in {m.name}; `python -m mfv layers --model {a.model}` lists them"
        )
    obj = parse_target(layer, a.unit, softmax=a.softmax, x=a.x, y=a.y, shape=shapes[layer])
    schedule = resolve_schedule(a.schedule, m.spec)
    inits, names, clusters = _inits(a)
    extra = {
        "command": " ".join(sys.argv),
        "means": str(Path(a.means).resolve()) if a.means else None,
        "code_layer": m.spec.code_layer if m.spec else None,
    }
    trace = visualize(
        m,
        obj,
        inits,
        schedule=schedule,
        seed=a.seed,
        faithful=a.faithful,
        out=a.out,
        resume=not a.restart,
        progress=not a.quiet,
        init_names=names,
        clusters=clusters,
        denoiser=a.denoiser,
        extra=extra,
        **({} if a.checkpoint_seconds is None else {"checkpoint_seconds": a.checkpoint_seconds}),
    )
    for f in trace["facets"]:
        print(
            f"facet {f['index']}: {f['status']} {f['message']} final activation {f['final_activation']} "
            f"({f['seconds']:.1f} s)"
        )
    return Exit.OK if all(f["status"] == "done" for f in trace["facets"]) else Exit.INCOMPLETE


def _inits(a) -> tuple[list, list[str], list[int | None]]:
    """``visualize``'s start images from --init or --means: images, names, cluster numbers."""
    inits, names, clusters = [], [], []
    init_args = list(a.init or [])
    if not init_args and a.means:
        found = sorted(Path(a.means).glob("mean_*.png")) or sorted(Path(a.means).glob("mean_*.jpg"))
        init_args = [
            str(p) for p in sorted(found, key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
        ]
    if not init_args:
        raise UsageError("give --init IMG (repeatable), --init noise, or --means DIR")
    for spec in init_args:
        if spec == "noise":
            inits.append("noise")
            names.append("noise")
            clusters.append(None)
            continue
        inits.append(_io.load_rgb(spec))
        names.append(str(Path(spec).resolve()))
        mt = re.fullmatch(r"mean_(\d+)", Path(spec).stem)
        clusters.append(int(mt.group(1)) if (mt and a.means) else None)
    return inits, names, clusters


def _cmd_evaluate(a) -> int:
    from .evaluate import evaluate, model_from_trace

    trace_model = None
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.model:
        trace_model = _load(a)
    else:
        import json

        trace = json.loads((Path(a.out) / "trace.json").read_text())
        trace_model = model_from_trace(trace, device=a.device)
    r = evaluate(a.out, model=trace_model, means=a.means)
    for f in r["facets"]:
        print(
            {
                k: f.get(k)
                for k in (
                    "index",
                    "cluster",
                    "activation",
                    "softmax_rank",
                    "cluster_activation_mean",
                    "nearest_in_own_cluster",
                )
            }
        )
    print(
        "diversity:",
        r["diversity"],
        "nearest in own cluster:",
        r["nearest_in_own_cluster_fraction"],
    )
    print(f"wrote {a.out}/evaluation.json and evaluation.html")
    return 0


def _cmd_diff(a) -> int:
    from . import diff

    for option, path in (("--json", a.json), ("--html", a.html)):
        if path:
            check_output_file(path, option=option)
    factor = diff.DEFAULT_FACTOR if a.factor is None else a.factor
    rtol = diff.NOISE_RTOL if a.rtol is None else a.rtol
    result = diff.diff_runs(a.reference, a.out, floor=a.floor, rtol=rtol, factor=factor)
    print(diff.format_table(result))
    if a.json:
        _io.write_json(a.json, result)
    if a.html:
        diff.write_html(result, a.html)
        print(f"wrote {a.html}")
    return Exit.OK if result.get("verdict", {"passed": True})["passed"] else Exit.CHECK_FAILED


def build_tool() -> Tool:
    """The ``python -m mfv`` command line (see :mod:`port.command` for the shared contract)."""
    # Only ToolError (MfvError and its kin) is bad input: any other exception is a bug (exit 70).
    tool = Tool(
        "mfv",
        "Multifaceted Feature Visualization (Nguyen et al. 2016) on Caffe ports and "
        "torchvision models.",
        interrupted="finished facets and the state are kept (rerun to resume)",
    )

    _add_layers(tool)
    _add_means(tool)
    _add_visualize(tool)
    _add_evaluate(tool)
    _add_diff(tool)
    add_sweep(tool)
    return tool


def _add_layers(tool: Tool) -> None:
    s = tool.add_command("layers", _cmd_layers, help="list addressable layers with their shapes")
    model_args(s)


def _add_means(tool: Tool) -> None:
    s = tool.add_command(
        "means",
        _cmd_means,
        help="cluster a class's images and write the mean image of each facet",
        description="codes (--layer) -> PCA 50 -> t-SNE 2-D -> k-means (k) -> mean of the m "
        "images nearest each centroid. Images are fitted to the input size (shorter side "
        "resized bicubic, centre crop). Images are read as Caffe's loader read them: greyscale replicated to RGB, "
        "CMYK converted, alpha dropped, 16-bit scaled; unreadable files are reported and skipped.",
    )
    model_args(s)
    s.add_argument(
        "--images", required=True, help="folder of one class's images (searched recursively)"
    )
    s.add_argument("--k", type=int, default=10, help="number of clusters / facets (default 10)")
    s.add_argument("--m", type=int, default=15, help="images averaged per mean image (default 15)")
    s.add_argument("--layer", help="code layer (default: the model's fc7 equivalent)")
    s.add_argument(
        "--means-seed", type=int, default=0, help="seed of PCA, t-SNE and k-means (default 0)"
    )
    s.add_argument(
        "--batch-size", type=int, default=16, help="images per forward pass (default 16)"
    )
    grey_args(s)
    s.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="leave out files whose path relative to --images matches GLOB (repeatable), "
        "e.g. 'mean_*' in the published layout",
    )
    add_out(s, "output folder")


def _add_visualize(tool: Tool) -> None:
    s = tool.add_command(
        "visualize",
        _cmd_visualize,
        help="activation maximisation from mean images (MFV)",
        description="Runs the MFV loop from each --init image, all as one batch. Writes "
        "facet_<i>.png, facet_<i>_octave<k>.png, trace.json, index.html and state/ (resume: "
        "rerun the same command).",
    )
    model_args(s)
    s.add_argument("--layer", help="target layer (default: the model's logits, e.g. fc8)")
    s.add_argument(
        "--unit",
        type=int,
        required=True,
        help="target unit (class index, or channel of a conv layer)",
    )
    s.add_argument("--x", type=int, help="column of the target in a conv layer (default: centre)")
    s.add_argument("--y", type=int, help="row of the target in a conv layer (default: centre)")
    s.add_argument(
        "--softmax", action="store_true", help="maximise the softmax of --layer at --unit"
    )
    s.add_argument(
        "--init",
        action="append",
        help="initial image (repeatable: one facet each), or 'noise' for N(175, 8) grey noise",
    )
    s.add_argument(
        "--means",
        help="a means output folder (or the published layout): default inits "
        "mean_<i>, and the report shows each facet's nearest training images",
    )
    s.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of each facet's random stream (default 1, as published)",
    )
    _visualize_loop_options(s)
    add_out(s, "output folder")


def _visualize_loop_options(s: argparse.ArgumentParser) -> None:
    """How ``visualize`` runs its loop: schedule, arithmetic, denoiser, checkpoints."""
    s.add_argument("--schedule", help="octave schedule JSON (default: the model's, mfv/schedules/)")
    s.add_argument(
        "--faithful",
        action="store_true",
        help="reproduce the original's arithmetic (Python 2 division, TV formula as written, "
        "uint8 wraparound) instead of fixing it",
    )
    s.add_argument(
        "--denoiser",
        choices=("auto", "skimage", "torch"),
        default="auto",
        help="TV-Bregman implementation: 'torch' = mfv.tv_bregman, all facets in one batched call "
        "on --device (scikit-image's semantics; float32 in the default mode, where the whole step "
        "then stays on the device; with --faithful float64 with scikit-image 0.13's border, as the "
        "original ran); 'skimage' = one scikit-image call per facet on the host (the spec's "
        "reference); 'auto' (default) = torch, or skimage with --faithful",
    )
    s.add_argument(
        "--restart", action="store_true", help="ignore a saved state in --out and start over"
    )
    s.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=None,
        metavar="S",
        help="seconds of work between two saves of the state (default "
        "mfv.visualize.CHECKPOINT_SECONDS, 5); a rerun after any interruption, kill -9 "
        "included, resumes from the last save and ends with the same bytes",
    )


def _add_evaluate(tool: Tool) -> None:
    s = tool.add_command(
        "evaluate",
        _cmd_evaluate,
        help="measure a visualize output: activation, rank, diversity, nearest images",
    )
    s.add_argument("out", help="a visualize output folder")
    s.add_argument("--means", help="means folder (default: the one the run used)")
    s.add_argument(
        "--model", help="override the model recorded in the trace (with the model options)"
    )
    add_prototxt(s, default="with --model, the zoo's")
    add_caffemodel(s, default="with --model, seeded weights")
    s.add_argument("--weights", help="with --model: torchvision state_dict file")
    s.add_argument(
        "--weight-seed",
        type=int,
        default=0,
        help="with --model: seed of seeded weights (default 0)",
    )
    s.add_argument(
        "--no-parity-check",
        action="store_true",
        help="with --model: run a Caffe model without a passing parity verdict",
    )
    s.add_argument("--parity-file", help="with --model: parity verdict file to use")
    add_device(s)
    s.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def _add_diff(tool: Tool) -> None:
    s = tool.add_command(
        "diff",
        _cmd_diff,
        help="compare a run with a reference, octave by octave, against a floor",
        description="Per facet and octave: max / mean / p99 |ref - out| (grey levels), PSNR, "
        "SSIM; the first trace step beyond float noise, the first offset or schedule "
        "mismatch. --floor (the other Caffe build's reference) gives the same figures "
        "between the two references and a verdict: out's mean and p99 within --factor x "
        "the floor's in every octave. Exit status 1 when the verdict fails.",
    )
    s.add_argument("reference", help="reference folder (e.g. golden/mfv/atlas)")
    s.add_argument("out", help="folder to compare (mfv visualize --faithful output)")
    s.add_argument("--floor", help="second reference (e.g. golden/mfv/openblas)")
    s.add_argument(
        "--factor", type=float, help="pass factor over the floor (default: mfv.diff.DEFAULT_FACTOR)"
    )
    s.add_argument(
        "--rtol",
        type=float,
        help="float-noise threshold of the trace comparison (default: mfv.diff.NOISE_RTOL)",
    )
    s.add_argument("--html", help="write a self-contained HTML view here")
    s.add_argument("--json", help="write the figures as JSON here")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m mfv``."""
    return build_tool().parser


def main(argv: list[str] | None = None) -> int:
    return build_tool().main(argv)
