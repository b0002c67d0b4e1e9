"""Options shared by the subcommands of ``python -m mfv``: the model, grey images."""

from __future__ import annotations

import argparse

from port.command import (
    add_caffemodel,
    add_definition_options,
    add_device,
    add_prototxt,
    device_arg,
)
from port.errors import UsageError

from .models import MODEL_SPECS

__all__ = ["grey_args", "model_args", "model_options", "refuse_accurate_module"]

MODEL_HELP = (
    f"network: one of {', '.join(MODEL_SPECS)}, or 'caffe' with --prototxt. Caffe nets come from "
    "port (the zoo definition unless --prototxt); without --caffemodel/--weights the weights are "
    "seeded (--weight-seed), so every model runs here without downloads"
)


_THREADS_HELP = (
    "torch CPU threads (default: torch's choice). On a busy shared machine 1 can be far "
    "faster: SqueezeNet forward measured 0.10 s with 1 thread vs 2.0 s with 2 at load 9 on 2 cores"
)


def model_args(
    p: argparse.ArgumentParser,
    *,
    device_type=device_arg,
    device_note: str = "",
    threads_help: str = _THREADS_HELP,
) -> None:
    """The options that pick and load a model; sweep passes its own --device check and help."""
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help=MODEL_HELP)
    add_prototxt(g, default="the zoo's for --model")
    add_caffemodel(g, default="seeded weights")
    g.add_argument(
        "--weights", help="torchvision state_dict file (torch.save) for torchvision.* models"
    )
    g.add_argument("--weight-seed", type=int, default=0, help="seed of seeded weights (default 0)")
    g.add_argument(
        "--module",
        metavar="FILE.py:CLASS",
        help="a `port export --format python` module (its state dict in --weights) instead of "
        "the port; --model names its pixel convention and defaults",
    )
    add_definition_options(g)
    add_device(g, type=device_type, note=device_note)
    g.add_argument(
        "--no-parity-check",
        action="store_true",
        help="run a Caffe model even without a passing parity verdict (every output says so)",
    )
    g.add_argument(
        "--parity-file", help="parity verdict file to use instead of <caffemodel>.parity.json"
    )
    g.add_argument(
        "--accurate",
        action="store_true",
        help="run the Caffe port in its accurate mode: float32 blobs, every layer computed in "
        "float64 and rounded (closer to float64 than Caffe; slower). Needs the parity verdict "
        "of that configuration (parity run judges both)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--threads", type=int, help=threads_help)


def grey_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--skip-grey",
        dest="keep_grey",
        action="store_false",
        help="leave greyscale images out (default: replicate them to RGB, as Caffe's loader did)",
    )
    g.add_argument(
        "--keep-grey",
        dest="keep_grey",
        action="store_true",
        help="replicate greyscale images to RGB: the default, kept for older command lines",
    )
    p.set_defaults(keep_grey=True)


def model_options(a) -> dict:
    """What ``_model_args`` parsed, as :func:`mfv.models.load_model` (and ``sweep``) take it."""
    if getattr(a, "module", None):
        raise UsageError("--module (an exported module) works with layers and visualize only")
    return {
        "prototxt": a.prototxt,
        "caffemodel": a.caffemodel,
        "weights": a.weights,
        "weight_seed": a.weight_seed,
        "parity_check": not a.no_parity_check,
        "parity_file": a.parity_file,
        "proto": a.proto,
        "plugins": tuple(a.plugin),
        **({"accurate": True} if getattr(a, "accurate", False) else {}),
    }


def refuse_accurate_module(a) -> None:
    """``--accurate`` is a mode of the port: an exported module (``--module``) has none."""
    if getattr(a, "module", None) and getattr(a, "accurate", False):
        raise UsageError("--accurate runs the port; an exported --module has no accurate mode")
