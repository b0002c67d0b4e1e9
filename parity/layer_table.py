"""README's supported-layer table, generated from the code.

    python -m parity.layer_table                   # print the table (Markdown)
    python -m parity.layer_table --write README.md # replace the table between its markers
    python -m parity.layer_table --check README.md # exit 1 if README's table is out of date

Columns: the Caffe type; the ``*_param`` fields the port reads (``engine`` and the fillers, which only
matter to training, are left out); what Caffe's backward does (from the port module's ``backward``
and ``no_gradient``); whether :mod:`parity.numpy_ref` has an independent forward; how ONNX export
goes (:data:`parity.runners.ONNX_LIMITS`); and the tests/data net that proves the type against real
Caffe.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from port.readme_block import MarkerError, update_block

BEGIN = "<!-- layer-table:begin (python -m parity.layer_table --write README.md) -->"
END = "<!-- layer-table:end -->"

# The parameter message each type reads (None: it has none).
PARAMS = {
    "AbsVal": None,
    "ArgMax": "argmax_param",
    "BNLL": None,
    "BatchNorm": "batch_norm_param",
    "BatchReindex": None,
    "Bias": "bias_param",
    "Clip": "clip_param",
    "Concat": "concat_param",
    "Convolution": "convolution_param",
    "Crop": "crop_param",
    "Deconvolution": "convolution_param",
    "Dropout": "dropout_param",
    "ELU": "elu_param",
    "Eltwise": "eltwise_param",
    "Embed": "embed_param",
    "Exp": "exp_param",
    "Filter": None,
    "Flatten": "flatten_param",
    "Im2col": "convolution_param",
    "InnerProduct": "inner_product_param",
    "LRN": "lrn_param",
    "LSTM": "recurrent_param",
    "LSTMUnit": None,
    "Log": "log_param",
    "MVN": "mvn_param",
    "PReLU": "prelu_param",
    "Parameter": "parameter_param",
    "Pooling": "pooling_param",
    "Power": "power_param",
    "RNN": "recurrent_param",
    "ReLU": "relu_param",
    "Reduction": "reduction_param",
    "Reshape": "reshape_param",
    "SPP": "spp_param",
    "Scale": "scale_param",
    "Sigmoid": None,
    "Silence": None,
    "Slice": "slice_param",
    "Softmax": "softmax_param",
    "Split": None,
    "Swish": "swish_param",
    "TanH": None,
    "Threshold": "threshold_param",
    "Tile": "tile_param",
}
_TRAINING_ONLY = re.compile(
    r"engine|filler$|^debug_info$|^moving_average_fraction$|^stable_prod_grad$|^force_nd_im2col$"
)
# Fields the port reads as Caffe does but which change nothing at inference.
_NOTES = {
    "Dropout": "TEST: identity (scale_train false: times 1 - ratio)",
}
_INPUT_TYPES = {
    "Input": "input_param: shape",
    "DummyData": "dummy_data_param: shape or num/channels/height/width"
    " (its tops are the net's inputs)",
}


def _fields(param: str | None) -> str:
    if param is None:
        return "-"
    from port import schema

    msg = schema.LayerParameter.DESCRIPTOR.fields_by_name[param].message_type
    names = [f.name for f in msg.fields if not _TRAINING_ONLY.search(f.name)]
    return f"`{param}`: " + ", ".join(names) if names else "-"


def _backward(cls) -> str:
    if getattr(cls, "backward_note", None):
        return cls.backward_note
    if not cls.backward:
        return "none (Caffe: NOT_IMPLEMENTED)"
    if not cls.no_gradient:
        return "yes"
    return "yes, not to " + "; ".join(f"bottom {i}" for i in sorted(cls.no_gradient))


def _goldens() -> dict[str, list[str]]:
    """Layer type -> names of the tests/data nets that use it (zoo-style nets included)."""
    root = Path(__file__).resolve().parent.parent / "tests" / "data"
    out: dict[str, list[str]] = {}
    for proto in sorted(root.glob("**/deploy.prototxt")):
        if not (proto.parent / "goldens" / "manifest.json").is_file():
            continue
        text = proto.read_text()
        for t in set(re.findall(r'type:\s*"(\w+)"', text)):
            out.setdefault(t, []).append(proto.parent.name)
        if "STOCHASTIC" in text:
            out.setdefault("Pooling:STOCHASTIC", []).append(proto.parent.name)
    return out


def rows() -> list[list[str]]:
    """One row per supported layer type: type, parameters, backward, numpy, ONNX, golden net."""
    from port.layers import LAYER_TYPES

    from . import numpy_ref
    from .runners import ONNX_LIMITS

    proved = _goldens()
    out = []
    for t in sorted(LAYER_TYPES, key=str.lower):
        cls = LAYER_TYPES[t]
        params = _fields(PARAMS.get(t))
        if t in _NOTES:
            params += f" ({_NOTES[t]})"
        onnx = "yes" + (f" ({ONNX_LIMITS[t]})" if t in ONNX_LIMITS else "")
        numpy = "yes" if t in numpy_ref.SUPPORTED_TYPES else "no"
        nets = ", ".join(proved.get(t, [])) or "zoo goldens (golden/)"
        out.append([t, params, _backward(cls), numpy, onnx, nets])
    from port.layers import StochasticPooling

    out.append(
        [
            "Pooling (STOCHASTIC)",
            "`pooling_param` as above; TEST rule sum(x^2) / sum(x)",
            _backward(StochasticPooling),
            "yes",
            "yes",
            "none: Caffe's CPU build has no STOCHASTIC pooling (NOT_IMPLEMENTED)",
        ]
    )
    for t, desc in _INPUT_TYPES.items():
        out.append(
            [
                t,
                desc,
                "inputs get diffs",
                "-",
                "yes",
                "layers: shape" if t == "DummyData" else "every net",
            ]
        )
    return out


def markdown() -> str:
    head = [
        "type",
        "parameters (engine, fillers and training-only fields left out)",
        "backward (as Caffe)",
        "numpy reference",
        "ONNX",
        "proved against real Caffe by",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows()]
    return "\n".join(lines) + "\n"


def _block() -> str:
    return f"{BEGIN}\n{markdown()}{END}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m parity.layer_table",
        description="Print, write or check README's supported-layer table.",
    )
    g = ap.add_mutually_exclusive_group()
    g.add_argument(
        "--write",
        type=Path,
        metavar="README",
        help="replace the table between its markers in this file",
    )
    g.add_argument(
        "--check",
        type=Path,
        metavar="README",
        help="exit 1 when the file's table differs from the generated one",
    )
    args = ap.parse_args(argv)
    if args.write is None and args.check is None:
        sys.stdout.write(markdown())
        return 0
    path = args.write or args.check
    try:
        stale = update_block(path, _block(), BEGIN, END, write=args.write is not None)
    except MarkerError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.check and stale:
        print(
            f"{path}: the layer table is out of date; run python -m parity.layer_table "
            f"--write {path}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
