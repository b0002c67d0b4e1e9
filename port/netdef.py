"""The parsed net definition: layers in the current (V2) vocabulary, inputs with their shapes.

Both text formats are read: the current one (``layer { type: "Convolution" }``) and the legacy V1 one
(``layers { type: CONVOLUTION }``), which is upgraded the way Caffe's ``UpgradeV1Net`` does: the
enum type becomes its string name, and the ``*_param`` messages (shared by both formats) are copied.
Inputs may be declared by ``input`` + ``input_dim`` x4, ``input`` + ``input_shape``, or ``Input``
layers. Only layers that Caffe would instantiate in the TEST phase are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from . import schema
from .dummy_data import dummy_shapes
from .errors import CaffeError

# V1 enum name -> V2 type string (Caffe's UpgradeV1LayerType).
V1_TYPES = {
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}
V2_TO_V1_TYPES = {v: k for k, v in V1_TYPES.items()}

# Layers of training definitions that a deploy net can carry but not run: data layers read files
# or databases, loss and Accuracy layers need labels. They are skipped (listed in
# ``NetDef.skipped``); a kept layer that reads one of their tops is an error.
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData"}
SKIPPED_TYPES = DATA_TYPES | {
    "Accuracy",
    "ContrastiveLoss",
    "EuclideanLoss",
    "HingeLoss",
    "InfogainLoss",
    "MultinomialLogisticLoss",
    "SigmoidCrossEntropyLoss",
    "SoftmaxWithLoss",
    "HDF5Output",
}


def _shared_params(sch: schema.Schema) -> list[str]:
    """Parameter messages that V1 and V2 layers share by name."""
    v2 = sch.LayerParameter.DESCRIPTOR.fields_by_name
    return [
        f.name
        for f in sch.V1LayerParameter.DESCRIPTOR.fields
        if f.name.endswith("_param") and f.name in v2
    ]


def as_schema(proto: str | Path | schema.Schema | None) -> schema.Schema:
    """The schema to parse with: Caffe 1.0's (None), a built one, or a fork's .proto path."""
    if proto is None:
        return schema.CAFFE
    if isinstance(proto, schema.Schema):
        return proto
    return schema.load_proto(proto)


@dataclass
class LayerDef:
    """One layer of the net, in the current vocabulary.

    ``param`` is the layer's ``LayerParameter`` message (without weight blobs), so type-specific
    options read the same whichever format the file used: ``layer.param.pooling_param.stride``.
    """

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: object
    line: int | None = None

    @property
    def in_place(self) -> bool:
        """The layer rewrites its bottom (one top, named as its first bottom)."""
        return len(self.tops) == 1 and self.tops == self.bottoms[:1]


@dataclass
class NetDef:
    """A parsed deploy definition."""

    name: str
    inputs: dict[str, tuple[int, ...]]
    layers: list[LayerDef]
    force_backward: bool = False
    path: str | None = None
    text: str = ""
    legacy_v1: bool = False
    # Layers left out (data, loss, Accuracy), each {"name", "type", "reason"}.
    skipped: list[dict] = field(default_factory=list)
    # The schema the text was parsed with: Caffe 1.0's, or extended by a fork's caffe.proto.
    schema: schema.Schema = field(default=schema.CAFFE, repr=False, compare=False)

    def layer(self, name: str) -> LayerDef:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise CaffeError("no such layer", path=self.path, layer=name)

    def last_writer(self, blob: str) -> int | None:
        """Index in ``layers`` of the last layer that writes ``blob``, or None (an input, or no
        such blob).

        That is the blob's producer or the last in-place layer on it: where its final value (pycaffe's
        ``.data``) is made, and where a backward pass seeded on the blob starts (pycaffe's
        ``net.backward(start=...)``).
        """
        for i in range(len(self.layers) - 1, -1, -1):
            if blob in self.layers[i].tops:
                return i
        return None

    def to_proto(self):
        """The definition as a V2 ``NetParameter`` (inputs as ``input`` + ``input_shape``)."""
        net = self.schema.NetParameter(name=self.name, force_backward=self.force_backward)
        for name, shape in self.inputs.items():
            net.input.append(name)
            net.input_shape.add().dim.extend(shape)
        for layer in self.layers:
            net.layer.add().CopyFrom(layer.param)
        return net

    def to_prototxt(self) -> str:
        return text_format.MessageToString(self.to_proto())


_TEXT_ERROR = re.compile(r"^(\d+):(\d+)\s*:\s*(.*)$", re.S)
_FIELD_IN_ERROR = re.compile(r'field named "?(\w+)"?|field "?([\w.]+)"?')
_FIELD_BEFORE_VALUE = re.compile(r"(\w+)\s*:\s*[^\s:{}]*$")
_UNKNOWN_FIELD = re.compile(r'has no field named "?(\w+)"?')


def _layer_block_lines(text: str) -> list[int]:
    """1-based line of each top-level ``layer``/``layers`` block, in order."""
    lines = []
    depth = 0
    line = 1
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif c in "\"'":
            quote = c
            i += 1
            while i < n and text[i] != quote:
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0 and text.startswith("layer", i) and (i == 0 or not text[i - 1].isalnum()):
            j = i + 5
            if j < n and text[j] == "s":
                j += 1
            if j < n and not (text[j].isalnum() or text[j] == "_"):
                lines.append(line)
        i += 1
    return lines


def parse_net_text(
    text: str, *, path: str | Path | None = None, proto: str | Path | schema.Schema | None = None
):
    """Parse prototxt text into a raw ``NetParameter``; errors carry the line and field.

    ``proto``: a Caffe fork's ``caffe.proto`` (path or :class:`port.schema.Schema`) whose extra
    fields the text uses; default Caffe 1.0's schema.
    """
    sch = as_schema(proto)
    net = sch.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as exc:
        msg = str(exc)
        m = _TEXT_ERROR.match(msg)
        line = int(m.group(1)) if m else None
        reason = m.group(3) if m else msg
        fm = _FIELD_IN_ERROR.search(reason)
        fld = next((g for g in fm.groups() if g), None) if fm else None
        if fld is None and m and line is not None:
            # A bad value (an enum name, a number): the field is the name before the colon.
            lines = text.splitlines()
            col = int(m.group(2))
            before = lines[line - 1][: col - 1] if line <= len(lines) else ""
            fv = _FIELD_BEFORE_VALUE.search(before) or _FIELD_BEFORE_VALUE.search(
                lines[line - 1][: col + 40] if line <= len(lines) else ""
            )
            fld = fv.group(1) if fv else None
        layer = _layer_at_line(text, line) if line else None
        unknown = _UNKNOWN_FIELD.search(reason)
        if unknown:
            where = f"the fork's {sch.source}" if sch.source else "Caffe 1.0's caffe.proto"
            hint = (
                "add it to that file"
                if sch.source
                else "if the net comes from a Caffe fork (SSD, Faster R-CNN...), pass the fork's "
                "caffe.proto with --proto FORK.proto (Python: load_prototxt(path, "
                "proto=FORK.proto))"
            )
            raise CaffeError(
                f"unknown field {unknown.group(1)!r}: {where} has no such field; {hint}",
                path=path,
                line=line,
                layer=layer,
                field=unknown.group(1),
            ) from None
        raise CaffeError(
            f"malformed prototxt: {reason}", path=path, line=line, layer=layer, field=fld
        ) from None
    return net


def _layer_at_line(text: str, line: int) -> str | None:
    """Name of the layer block enclosing ``line`` (best effort, for error messages)."""
    starts = _layer_block_lines(text)
    before = [s for s in starts if s <= line]
    if not before:
        return None
    block = "\n".join(text.splitlines()[before[-1] - 1 : line])
    m = re.search(r'\bname\s*:\s*"([^"]*)"', block)
    return m.group(1) if m else None


def _rule_met(rule, phase: int, level: int = 0, stages: tuple[str, ...] = ()) -> bool:
    # Caffe's StateMeetsRule for a net in state (phase, level, stages).
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def _included(
    param, phase: int, *, path: str | Path | None = None, line: int | None = None
) -> bool:
    if param.include and param.exclude:
        raise CaffeError(
            "layer specifies both include and exclude rules",
            path=path,
            layer=param.name,
            line=line,
            field="include",
        )
    if param.include:
        return any(_rule_met(r, phase) for r in param.include)
    return not any(_rule_met(r, phase) for r in param.exclude)


def upgrade_v1_layer(v1, *, path: str | Path | None = None, sch: schema.Schema = schema.CAFFE):
    """Convert one ``V1LayerParameter`` to a ``LayerParameter`` (blobs excluded)."""
    if v1.HasField("layer"):
        raise CaffeError(
            "V0 layer definitions (2013) are not supported; upgrade the net with Caffe's "
            "upgrade_net_proto_text tool first",
            path=path,
            layer=v1.layer.name or v1.name,
            field="layer",
        )
    type_name = v1.DESCRIPTOR.enum_types_by_name["LayerType"].values_by_number[v1.type].name
    if type_name == "NONE":
        raise CaffeError("legacy layer has no type", path=path, layer=v1.name, field="type")
    if type_name not in V1_TYPES:
        raise CaffeError(
            f"legacy layer type {type_name} has no current name",
            path=path,
            layer=v1.name,
            field="type",
        )
    layer = sch.LayerParameter(name=v1.name, type=V1_TYPES[type_name])
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.loss_weight.extend(v1.loss_weight)
    for name in _shared_params(sch):
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    for i, lr in enumerate(v1.blobs_lr):
        spec = layer.param[i] if i < len(layer.param) else layer.param.add()
        spec.lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec = layer.param[i] if i < len(layer.param) else layer.param.add()
        spec.decay_mult = decay
    return layer


def _net_level_inputs(net, path: str | Path | None) -> dict[str, tuple[int, ...]]:
    """Inputs declared at net level (``input`` + ``input_dim`` or ``input_shape``), in order."""
    inputs: dict[str, tuple[int, ...]] = {}
    for name in net.input:
        inputs[name] = ()
    if net.input_dim:
        if len(net.input_dim) != 4 * len(net.input):
            raise CaffeError(
                f"{len(net.input_dim)} input_dim values for {len(net.input)} inputs "
                "(4 per input expected)",
                path=path,
                field="input_dim",
            )
        for i, name in enumerate(net.input):
            inputs[name] = tuple(int(d) for d in net.input_dim[4 * i : 4 * i + 4])
    elif net.input_shape:
        if len(net.input_shape) != len(net.input):
            raise CaffeError(
                f"{len(net.input_shape)} input_shape blocks for {len(net.input)} inputs",
                path=path,
                field="input_shape",
            )
        for name, shape in zip(net.input, net.input_shape, strict=True):
            inputs[name] = tuple(int(d) for d in shape.dim)
    elif net.input:
        raise CaffeError(
            "inputs are declared without input_dim or input_shape", path=path, field="input"
        )
    return inputs


def _sort_layer(
    param,
    line: int | None,
    path,
    sch: schema.Schema,
    inputs: dict[str, tuple[int, ...]],
    skipped: list[dict],
) -> LayerDef | None:
    """One TEST-phase layer: a :class:`LayerDef` the port runs, or None for a layer whose tops
    become inputs (Input, DummyData, added to ``inputs``) or that deploy nets run without (data,
    loss, Accuracy, added to ``skipped``)."""
    if param.type in SKIPPED_TYPES:
        kind = "reads a file or database" if param.type in DATA_TYPES else "needs labels"
        skipped.append(
            {
                "name": param.name,
                "type": param.type,
                "line": line,
                "tops": list(param.top),
                "reason": f"{param.type} {kind}; deploy nets run without it",
            }
        )
        return None
    if param.type == "DummyData":
        # Its tops are inputs: pycaffe users feed them by writing .data, which a constant
        # filler (the default) leaves in place.
        for top, shape in zip(param.top, dummy_shapes(param, path, line), strict=True):
            inputs[top] = shape
        return None
    if param.type == "Input":
        shapes = [tuple(int(d) for d in s.dim) for s in param.input_param.shape]
        if shapes and len(shapes) not in (1, len(param.top)):
            raise CaffeError(
                f"{len(shapes)} shapes for {len(param.top)} tops",
                path=path,
                layer=param.name,
                line=line,
                field="input_param.shape",
            )
        for j, top in enumerate(param.top):
            inputs[top] = shapes[j if len(shapes) > 1 else 0] if shapes else ()
        return None
    clean = sch.LayerParameter()
    clean.CopyFrom(param)
    del clean.blobs[:]
    return LayerDef(
        name=param.name,
        type=param.type,
        bottoms=list(param.bottom),
        tops=list(param.top),
        param=clean,
        line=line,
    )


def _raw_layers(net, path, sch: schema.Schema) -> list:
    """The net's ``LayerParameter``s, legacy V1 ``layers`` upgraded; both kinds at once is an error."""
    if net.layer and net.layers:
        raise CaffeError(
            "definition mixes 'layer' (current) and 'layers' (legacy V1) blocks",
            path=path,
            field="layers",
        )
    if net.layers:
        return [upgrade_v1_layer(v1, path=path, sch=sch) for v1 in net.layers]
    return list(net.layer)


def _sort_layers(
    raw: list,
    lines: list[int],
    phase,
    path,
    sch: schema.Schema,
    inputs: dict[str, tuple[int, ...]],
) -> tuple[list[LayerDef], list[dict]]:
    """(layers the port runs, skipped layers) of the ``phase`` layers; input tops go to ``inputs``."""
    layers: list[LayerDef] = []
    skipped: list[dict] = []
    names: set[str] = set()
    for i, param in enumerate(raw):
        line = lines[i] if i < len(lines) else None
        if not param.name:
            raise CaffeError("layer has no name", path=path, line=line, field="name")
        if not param.type:
            raise CaffeError(
                "layer has no type", path=path, layer=param.name, line=line, field="type"
            )
        if not _included(param, phase, path=path, line=line):
            continue
        if param.name in names:
            raise CaffeError(
                "duplicate layer name", path=path, layer=param.name, line=line, field="name"
            )
        names.add(param.name)
        layer = _sort_layer(param, line, path, sch, inputs, skipped)
        if layer is not None:
            layers.append(layer)
    return layers, skipped


def _check_inputs(inputs: dict[str, tuple[int, ...]], skipped: list[dict], path) -> None:
    """At least one input, each with a shape; the error names a data layer the port skipped."""
    if not inputs:
        data = [s for s in skipped if s["type"] in DATA_TYPES]
        hint = (
            f"; its data layer {data[0]['name']!r} ({data[0]['type']}) is not run by the port"
            if data
            else ""
        )
        raise CaffeError(
            "the net declares no input (input/input_dim, input_shape, an Input or "
            f"DummyData layer){hint}",
            path=path,
            field="input",
        )
    for name, shape in inputs.items():
        if not shape:
            raise CaffeError(f"input {name!r} has no shape", path=path, field="input_shape")


def netdef_from_proto(
    net,
    *,
    path: str | Path | None = None,
    text: str = "",
    proto: str | Path | schema.Schema | None = None,
) -> NetDef:
    """Build a :class:`NetDef` from a ``NetParameter`` (text or binary origin) of the schema
    ``proto`` (default Caffe 1.0's)."""
    sch = as_schema(proto)
    raw = _raw_layers(net, path, sch)
    lines = _layer_block_lines(text) if text else []
    phase = net.state.phase if net.HasField("state") else sch.NetParameter().state.phase
    inputs = _net_level_inputs(net, path)
    layers, skipped = _sort_layers(raw, lines, phase, path, sch, inputs)
    _check_skipped_tops(skipped, layers, inputs, path)
    _check_inputs(inputs, skipped, path)
    return NetDef(
        name=net.name,
        inputs=inputs,
        layers=layers,
        force_backward=net.force_backward,
        path=str(path) if path is not None else None,
        text=text,
        legacy_v1=bool(net.layers),
        skipped=skipped,
        schema=sch,
    )


def _check_skipped_tops(skipped, layers, inputs, path) -> None:
    """A kept layer must not read a blob that only a skipped layer writes."""
    missing = {top: s for s in skipped for top in s["tops"]}
    for layer in layers:
        for b in layer.bottoms:
            if b in missing and b not in inputs:
                s = missing[b]
                raise CaffeError(
                    f"bottom {b!r} comes from the {s['type']} layer {s['name']!r}, which the port "
                    f"does not run ({s['reason']}); declare {b!r} as an input (input_shape or an "
                    "Input layer) instead",
                    path=path,
                    layer=layer.name,
                    line=layer.line,
                    field="bottom",
                )
        for t in layer.tops:
            missing.pop(t, None)


def load_prototxt(path: str | Path, *, proto: str | Path | schema.Schema | None = None) -> NetDef:
    """Read a deploy ``.prototxt`` (current or legacy V1 format).

    Parameters
    ----------
    path : str or Path
        The text definition.
    proto : str, Path or port.schema.Schema, optional
        A Caffe fork's ``caffe.proto`` whose extra messages and fields the definition uses (read
        without protoc, merged into Caffe 1.0's schema). Default: Caffe 1.0's schema.

    Returns
    -------
    NetDef
        Layers kept for the TEST phase, in file order, with inputs and their declared shapes.

    Raises
    ------
    CaffeError
        When the file cannot be read or parsed; the message names the file, line, layer and field.
    """
    from .limits import read_text

    path = Path(path)
    text = read_text(path, "definition")
    return netdef_from_text(text, path=path, proto=proto)


def netdef_from_text(
    text: str, *, path: str | Path | None = None, proto: str | Path | schema.Schema | None = None
) -> NetDef:
    """Parse definition text (see :func:`load_prototxt`)."""
    sch = as_schema(proto)
    return netdef_from_proto(
        parse_net_text(text, path=path, proto=sch), path=path, text=text, proto=sch
    )
