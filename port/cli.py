"""``python -m port``: convert, inspect, dump and seed Caffe models."""

from __future__ import annotations

import argparse
from pathlib import Path

from .command import (
    Tool,
    add_caffemodel,
    add_definition_options,
    add_device,
    add_out,
    add_prototxt,
    check_output_file,
)
from .plugins import load_plugins


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

    check_output_file(args.out)
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

    check_output_file(args.out)
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
    from .dump import BackwardSeed, dump_blobs, read_input_batch, save_npz
    from .net import load_caffe

    check_output_file(args.out)
    x = read_input_batch(args.input)
    backward = BackwardSeed.parse(args.backward_from) if args.backward_from else None
    net = load_caffe(
        _netdef(args),
        args.caffemodel,
        dtype=_dtype(args.dtype),
        device=args.device,
        accumulate=args.accumulate,
    )
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
    _add_seed_weights(tool)
    _add_inspect(tool)
    _add_convert(tool)
    _add_dump(tool)
    from .export.cli import register as register_export

    register_export(tool)
    return tool


def _definition(parser: argparse.ArgumentParser) -> None:
    add_prototxt(parser, required=True)
    add_definition_options(parser)


def _add_seed_weights(tool: Tool) -> None:
    p = tool.add_command(
        "seed-weights",
        cmd_seed_weights,
        help="write deterministic weights for a definition",
        description="Write seeded weights (He-normal weights, small biases, valid "
        "BatchNorm statistics) in a caffemodel that Caffe 1.0 loads.",
    )
    _definition(p)
    p.add_argument(
        "--weight-seed", dest="seed", type=int, default=0, help="seed of the weights (default 0)"
    )
    add_out(p, "caffemodel to write")
    p.add_argument(
        "--format",
        choices=["v2", "v1"],
        default="v2",
        help="v2: current 'layer' entries; v1: legacy 'layers' entries (default v2)",
    )


def _add_inspect(tool: Tool) -> None:
    p = tool.add_command(
        "inspect",
        cmd_inspect,
        help="table of layers, blobs, shapes and parameter counts",
        description="Print each layer's name, type, bottoms, tops, top shapes and parameter count.",
    )
    _definition(p)
    add_caffemodel(p, default="none: shapes and counts of the definition alone")


def _add_convert(tool: Tool) -> None:
    p = tool.add_command(
        "convert",
        cmd_convert,
        help="convert to a single safetensors artefact",
        description="Convert definition + weights into one .safetensors file that "
        "port.load() reads (weights plus the definition text).",
    )
    _definition(p)
    add_caffemodel(p, required=True)
    add_out(p, "artefact to write (.safetensors)")


def _add_dump(tool: Tool) -> None:
    p = tool.add_command(
        "dump",
        cmd_dump,
        help="every blob's data (and diff) as pycaffe holds them",
        description="Run the port on a preprocessed batch and write data/<blob> "
        "(and diff/<blob>) arrays to an .npz, with pycaffe's meaning.",
    )
    _definition(p)
    add_caffemodel(p, required=True)
    p.add_argument(
        "--input",
        required=True,
        help="preprocessed batch (N,C,H,W) .npy of finite real numbers; batch and spatial size "
        "may differ from the definition's",
    )
    add_out(p, ".npz to write")
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
        "--accumulate",
        choices=["float32", "float64"],
        default="float32",
        help="arithmetic inside each layer of a float32 run: float32 (default, fast) or float64 "
        "(accurate mode: float32 blobs and diffs, each layer computed in float64 and rounded; "
        "slower)",
    )
    add_device(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m port``."""
    return build_tool().parser


def main(argv: list[str] | None = None) -> int:
    return build_tool().main(argv)
