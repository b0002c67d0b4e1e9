"""``python -m port``: convert, inspect, dump and seed Caffe models."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .command import Tool, device_arg
from .errors import CaffeError
from .plugins import add_definition_options, load_plugins


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


def _netdef(args: argparse.Namespace):
    """The definition of ``--prototxt``, after ``--plugin`` files ran, parsed with ``--proto``."""
    from .netdef import load_prototxt

    load_plugins(args.plugin)
    return load_prototxt(args.prototxt, proto=args.proto)


def cmd_seed_weights(args: argparse.Namespace) -> None:
    from .caffemodel import write_caffemodel
    from .seed import seed_weights

    netdef = _netdef(args)
    write_caffemodel(args.out, netdef, seed_weights(netdef, args.seed), format=args.format)
    print(
        f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB, seed {args.seed}, "
        f"{args.format})"
    )


def cmd_inspect(args: argparse.Namespace) -> None:
    from .caffemodel import read_caffemodel
    from .net import CaffeNet

    netdef = _netdef(args)
    net = CaffeNet(netdef)
    if args.caffemodel:
        net.load_blobs(read_caffemodel(args.caffemodel), source=args.caffemodel)
    rows = [("layer", "type", "bottoms", "tops", "top shapes", "params")]
    for name, shape in netdef.inputs.items():
        rows.append((name, "Input", "", name, "x".join(map(str, shape)), "0"))
    total = 0
    for layer in netdef.layers:
        module = net.module(layer.name)
        count = sum(p.numel() for p in module.parameters())
        total += count
        shapes = " ".join("x".join(map(str, s)) for s in module.top_shapes())
        rows.append(
            (
                layer.name,
                layer.type,
                ",".join(layer.bottoms),
                ",".join(layer.tops),
                shapes,
                f"{count:,}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    fmt = "legacy V1" if netdef.legacy_v1 else "current"
    print(
        f"\n{netdef.name or Path(args.prototxt).stem}: {len(netdef.layers)} layers ({fmt} format), "
        f"{total:,} parameters, outputs {', '.join(net.output_names)}"
    )


def cmd_convert(args: argparse.Namespace) -> None:
    from .artefact import save, sha256_file
    from .net import load_caffe

    net = load_caffe(_netdef(args), args.caffemodel)
    save(
        net,
        args.out,
        metadata={
            "source_prototxt_sha256": sha256_file(args.prototxt),
            "source_caffemodel_sha256": sha256_file(args.caffemodel),
        },
    )
    print(f"wrote {args.out}")


def cmd_dump(args: argparse.Namespace) -> None:
    from .dump import BackwardSeed, dump_blobs, save_npz
    from .net import load_caffe

    try:
        x = np.load(args.input)
    except (OSError, ValueError, EOFError) as exc:
        raise CaffeError(f"cannot read input batch: {exc}", path=args.input) from None
    if not isinstance(x, np.ndarray):
        x.close()
        raise CaffeError("an .npz archive; give one (N, C, H, W) array as .npy", path=args.input)
    if x.ndim != 4:
        raise CaffeError(f"input batch has shape {x.shape}; (N, C, H, W) expected", path=args.input)
    backward = BackwardSeed.parse(args.backward_from) if args.backward_from else None
    net = load_caffe(_netdef(args), args.caffemodel, dtype=_dtype(args.dtype), device=args.device)
    blobs = dump_blobs(net, x, backward_from=backward)
    save_npz(args.out, blobs)
    print(
        f"wrote {args.out}: {sum(k.startswith('data/') for k in blobs)} blobs"
        + (f", diffs from {args.backward_from}" if backward else "")
    )


def build_tool() -> Tool:
    """The ``python -m port`` command line (see :mod:`port.command` for the shared contract)."""
    tool = Tool(
        "port",
        "Convert Caffe models (deploy .prototxt + .caffemodel, current or legacy V1 "
        "format) to PyTorch and inspect them.",
    )

    p = tool.add_command(
        "seed-weights",
        cmd_seed_weights,
        help="write deterministic weights for a definition",
        description="Write seeded weights (He-normal weights, small biases, valid "
        "BatchNorm statistics) in a caffemodel that Caffe 1.0 loads.",
    )
    p.add_argument("--prototxt", required=True, help="deploy definition")
    add_definition_options(p)
    p.add_argument(
        "--weight-seed",
        "--seed",
        dest="seed",
        type=int,
        default=0,
        help="seed of the weights (default 0; --seed is the older spelling)",
    )
    p.add_argument("--out", required=True, help="caffemodel to write")
    p.add_argument(
        "--format",
        choices=["v2", "v1"],
        default="v2",
        help="v2: current 'layer' entries; v1: legacy 'layers' entries (default v2)",
    )

    p = tool.add_command(
        "inspect",
        cmd_inspect,
        help="table of layers, blobs, shapes and parameter counts",
        description="Print each layer's name, type, bottoms, tops, top shapes and parameter count.",
    )
    p.add_argument("--prototxt", required=True, help="deploy definition")
    add_definition_options(p)
    p.add_argument("--caffemodel", help="weights to load and check against the definition")

    p = tool.add_command(
        "convert",
        cmd_convert,
        help="convert to a single safetensors artefact",
        description="Convert definition + weights into one .safetensors file that "
        "port.load() reads (weights plus the definition text).",
    )
    p.add_argument("--prototxt", required=True, help="deploy definition")
    add_definition_options(p)
    p.add_argument("--caffemodel", required=True, help="weights")
    p.add_argument("--out", required=True, help="artefact to write (.safetensors)")

    p = tool.add_command(
        "dump",
        cmd_dump,
        help="every blob's data (and diff) as pycaffe holds them",
        description="Run the port on a preprocessed batch and write data/<blob> "
        "(and diff/<blob>) arrays to an .npz, with pycaffe's meaning.",
    )
    p.add_argument("--prototxt", required=True, help="deploy definition")
    add_definition_options(p)
    p.add_argument("--caffemodel", required=True, help="weights")
    p.add_argument(
        "--input",
        required=True,
        help="preprocessed batch (N,C,H,W) .npy; batch and spatial size may differ "
        "from the definition's",
    )
    p.add_argument("--out", required=True, help=".npz to write")
    p.add_argument(
        "--backward-from",
        metavar="BLOB:UNIT",
        help="also backpropagate a one-hot at flat index UNIT of BLOB in each sample",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="precision of the run (default float32, Caffe's)",
    )
    p.add_argument(
        "--device",
        type=device_arg,
        default="cpu",
        help="torch device, e.g. cpu, cuda or cuda:1 (default cpu)",
    )
    from .export.cli import register as register_export

    register_export(tool)
    return tool


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m port``."""
    return build_tool().parser


def main(argv: list[str] | None = None) -> int:
    return build_tool().main(argv)
