"""``python -m port export``: the subcommand, registered on the port tool by :func:`register`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..command import Tool
from ..errors import CaffeError
from ..plugins import add_definition_options, load_plugins
from . import FORMATS

__all__ = ["register", "cmd_export"]


def _net(args: argparse.Namespace):
    """The port to export and its source files: a prototxt (+ caffemodel or seeded weights), a
    built-in model, or a ``port convert`` artefact."""
    from .. import artefact, netdef, zoo
    from ..net import load_caffe
    from ..seed import seed_weights

    given = [a for a in ("prototxt", "model", "artefact") if getattr(args, a)]
    if len(given) != 1:
        raise CaffeError("give exactly one of --prototxt, --model and --artefact", field="prototxt")
    load_plugins(args.plugin)
    if args.artefact:
        meta = artefact.read_metadata(args.artefact)
        return artefact.load(args.artefact), None, None, None, meta
    prototxt = Path(zoo.zoo_model(args.model).prototxt) if args.model else Path(args.prototxt)
    nd = netdef.load_prototxt(prototxt, proto=args.proto)
    if args.caffemodel:
        return load_caffe(nd, args.caffemodel), prototxt, Path(args.caffemodel), None, {}
    seed = args.weight_seed if args.weight_seed is not None else _golden_seed(args.model)
    net = load_caffe(nd)
    net.load_blobs(seed_weights(nd, seed))
    return net, prototxt, None, seed, {}


def _golden_seed(model: str | None) -> int:
    """The seed of a built-in model's golden weights (``golden/<model>/manifest.json``, a data
    file), so that the export is of the weights parity checks; 1 otherwise."""
    import json

    from ..paths import repo_root

    manifest = repo_root() / "golden" / str(model) / "manifest.json"
    try:
        weights = json.loads(manifest.read_text())["weights"]
    except (OSError, ValueError, KeyError, TypeError):
        return 1
    return int(weights["seed"]) if weights.get("generator") == "port seed-weights" else 1


def cmd_export(args: argparse.Namespace) -> None:
    """Write the artefact and its record; print one line with the files and the time."""
    from . import export_net

    net, prototxt, caffemodel, seed, meta = _net(args)
    record = export_net(
        net,
        args.format,
        args.out,
        prototxt=prototxt,
        caffemodel=caffemodel,
        seed=seed,
        class_name=args.class_name,
        sources={k.removeprefix("source_"): v for k, v in meta.items() if k.endswith("sha256")},
    )
    sizes = ", ".join(f"{n} {v['bytes'] / 1e6:.1f} MB" for n, v in record["files"].items())
    print(
        f"wrote {sizes} in {record['export_seconds']:.1f} s; parity of the source: "
        f"{record['parity']['verdict']}"
    )


def register(tool: Tool) -> None:
    """Add ``export`` to ``python -m port``."""
    p = tool.add_command(
        "export",
        cmd_export,
        help="export to standalone Python source, a torch.export program or ONNX",
        description="Write the port as an artefact that runs without this project: 'python' (a "
        ".py file with an nn.Module class needing only torch, plus its weights as a safetensors "
        "state dict), 'pt2' (torch.export program, torch.export.load alone) or 'onnx'. A record "
        "<out>.export.json beside it holds the sha256 of the source files and their parity verdict.",
    )
    p.add_argument("--prototxt", help="deploy definition")
    add_definition_options(p)
    p.add_argument("--model", help="a built-in model (port.zoo) instead of --prototxt")
    p.add_argument("--artefact", help="a `port convert` .safetensors instead of --prototxt")
    p.add_argument("--caffemodel", help="weights (default: seeded with --weight-seed)")
    p.add_argument(
        "--weight-seed",
        type=int,
        help="seed of seeded weights without --caffemodel (default: with --model the seed of "
        "the model's golden weights, else 1)",
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="artefact format")
    p.add_argument("--out", required=True, help="the artefact to write (.py, .pt2 or .onnx)")
    p.add_argument("--class-name", help="python format: the class name (default: the net's name)")
