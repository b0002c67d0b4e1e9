"""The ``python`` export: one readable ``.py`` file with an ``nn.Module`` class, needing only torch.

The class is written from the port's built net: one submodule per layer, named after the layer
(made a Python identifier where the name is not one), ``forward`` in the definition's order with
one variable per blob, in-place ReLUs as ``inplace=True`` modules, and Caffe's pooling ceil rule,
LRN, Crop, BatchNorm, Scale, Embed and LSTM written out as small helpers in the file itself
(:mod:`port.export.prelude`). ``forward(x)`` returns the net's output (a dict when it has several);
``forward(x, blobs=("fc7", ...))`` returns those blobs by name, with pycaffe's meaning (values
after in-place layers). The weights go to a safetensors state dict keyed as the module's own.
"""

from __future__ import annotations

import json
import keyword
import re

import torch
from torch import nn

from ..errors import CaffeError
from ..net import CaffeNet
from .emitters import Emitted, LayerContext, emit
from .prelude import helper_source

__all__ = ["generate_python", "class_name_for", "identifier"]

# Names the generated code itself uses: blob variables and attributes must not shadow them.
_RESERVED = {"self", "blobs", "found", "missing", "name", "torch", "nn", "F", "math"}
_RESERVED |= {"caffe_pool2d", "caffe_crop", "CaffePool2d", "CaffeLRN", "CaffeScale"}
_RESERVED |= {"CaffeEmbed", "CaffeLSTM", "CaffeConv2d", "caffe_conv2d", "caffe_lrn"}
_RESERVED |= {"FOLD_MAX_CHANNELS", "folds_space_to_depth"}
_RESERVED |= {"CaffeBatchNorm", "IN_PLACE", "LAYER_NAMES", "INPUTS", "OUTPUTS", "blob_names"}
# Layers whose top is a fresh tensor no autograd node keeps: an in-place ReLU on it is safe.
_FRESH = {"Convolution", "Deconvolution", "InnerProduct", "Pooling", "LRN", "Eltwise", "Concat"}
_FRESH |= {"BatchNorm", "Scale"}
_LINE = 88  # ruff's default line length: the file is format-clean outside any project


def identifier(name: str, taken: set[str]) -> str:
    """A Python identifier for a Caffe name, unique among ``taken`` (which it joins)."""
    out = re.sub(r"\W", "_", name)
    if not out or out[0].isdigit():
        out = "_" + out
    if keyword.iskeyword(out) or out in _RESERVED or hasattr(nn.Module, out):
        out += "_"
    base, i = out, 1
    while out in taken:
        i += 1
        out = f"{base}_{i}"
    taken.add(out)
    return out


def class_name_for(netdef_name: str) -> str:
    """The class name for a net's ``name`` field ("CaffeNet"; "bvlc googlenet" -> "BvlcGooglenet")."""
    if netdef_name.isidentifier() and not keyword.iskeyword(netdef_name):
        return netdef_name[0].upper() + netdef_name[1:]
    parts = [p for p in re.split(r"\W+", netdef_name) if p]
    name = "".join(p[0].upper() + p[1:] for p in parts) or "Net"
    return "Net" + name if name[0].isdigit() else name


def _q(text: str) -> str:
    """A double-quoted string literal (ruff's quote style)."""
    return json.dumps(text)


def _wrap_call(prefix: str, args: list[str], indent: int) -> list[str]:
    """``prefix(args)`` in ruff's layout: one line, else the arguments on one indented line, else
    one per line with a trailing comma (a list literal argument itself expanded when too long)."""
    pad = " " * indent
    one = f"{pad}{prefix}({', '.join(args)})"
    if len(one) <= _LINE:
        return [one]
    inner = f"{pad}    {', '.join(args)}"
    if len(inner) <= _LINE:
        return [f"{pad}{prefix}(", inner, f"{pad})"]
    lines = [f"{pad}{prefix}("]
    for a in args:
        if len(f"{pad}    {a},") > _LINE and a.startswith("[") and a.endswith("]"):
            lines.append(f"{pad}    [")
            lines += [f"{pad}        {item}," for item in _top_level_args(a[1:-1])]
            lines.append(f"{pad}    ],")
        else:
            lines.append(f"{pad}    {a},")
    return lines + [f"{pad})"]


def _assign(target: str, expr: str, indent: int = 8) -> list[str]:
    """``target = expr`` wrapped as ruff wraps it (calls at their parentheses, other expressions
    in added parentheses)."""
    pad = " " * indent
    line = f"{pad}{target} = {expr}"
    if len(line) <= _LINE:
        return [line]
    head, sep, rest = expr.partition("(")
    if sep and re.fullmatch(r"[\w.]+", head) and _closes_at_end(rest):
        return _wrap_call(f"{target} = {head}", _top_level_args(rest[:-1]), indent)
    return [f"{pad}{target} = (", f"{pad}    {expr}", f"{pad})"]


def _closes_at_end(rest: str) -> bool:
    depth = 1
    for i, ch in enumerate(rest):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0:
            return i == len(rest) - 1
    return False


def _split_init(attr: str, init: str) -> list[str]:
    head, _, rest = init.partition("(")
    args = _top_level_args(rest[:-1])
    return _wrap_call(f"self.{attr} = {head}", args, 8)


def _top_level_args(text: str) -> list[str]:
    args, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
            continue
        depth += ch in "([{"
        depth -= ch in ")]}"
        cur += ch
    return args + ([cur.strip()] if cur.strip() else [])


class _Plan:
    """Names, in-place safety and each layer's emitted source, in the definition's order."""

    def __init__(self, net: CaffeNet) -> None:
        netdef = net.netdef
        taken: set[str] = set()
        self.var = {b: identifier(b, taken) for b in net.blob_names}
        attrs: set[str] = set()
        self.attr = {layer.name: identifier(layer.name, attrs) for layer in netdef.layers}
        self.emitted: list[tuple[object, Emitted]] = []
        self.in_place: dict[str, str] = {}
        last_writer: dict[str, str] = {}
        consumers_since: dict[str, int] = {}
        for layer in netdef.layers:
            safe = False
            if layer.in_place:
                blob = layer.bottoms[0]
                safe = last_writer.get(blob) in _FRESH and consumers_since.get(blob, 0) == 0
            ctx = LayerContext(
                layer, net.module(layer.name), self.attr[layer.name],
                [self.var[b] for b in layer.bottoms], safe,
            )  # fmt: skip
            out = emit(ctx)
            if layer.in_place:
                if out.init is None:
                    raise CaffeError(
                        f"{layer.type} run in place has no Python source form (only layers "
                        "written as submodules may rewrite their bottom)",
                        layer=layer.name,
                        field="top",
                    )
                self.in_place[self.attr[layer.name]] = layer.bottoms[0]
            self.emitted.append((layer, out))
            for b in layer.bottoms:
                if not layer.in_place:
                    consumers_since[b] = consumers_since.get(b, 0) + 1
            for t in layer.tops:
                last_writer[t] = layer.type
                consumers_since[t] = 0
        self.helpers = set().union(*(e.helpers for _, e in self.emitted)) if self.emitted else set()


def _forward_lines(net: CaffeNet, plan: _Plan) -> list[str]:
    inputs = [plan.var[n] for n in net.netdef.inputs]
    lines = [f"    def forward(self, {', '.join(inputs)}, blobs=None):"]
    lines += [
        '        """The output blob(s); with ``blobs`` (names or "all"), a dict of those blobs."""'
    ]
    for layer, out in plan.emitted:
        tops = [plan.var[t] for t in layer.tops]
        if out.returns_list:
            target = f"({tops[0]},)" if len(tops) == 1 else ", ".join(tops)
        else:
            target = ", ".join(tops)
        lines += _assign(target, out.call)
    lines += [
        "        if isinstance(blobs, str):",
        '            blobs = self.blob_names if blobs == "all" else (blobs,)',
        "        if isinstance(blobs, (list, tuple)):",
        "            found = {",
    ]
    lines += [f"                {_q(b)}: {plan.var[b]}," for b in net.blob_names]
    lines += [
        "            }",
        "            missing = [name for name in blobs if name not in found]",
        "            if missing:",
        '                raise KeyError(f"no blob(s) {missing} in this net")',
        "            return {name: found[name] for name in blobs}",
    ]
    outs = net.output_names
    if len(outs) == 1:
        lines.append(f"        return {plan.var[outs[0]]}")
    else:
        lines += ["        return {"]
        lines += [f"            {_q(b)}: {plan.var[b]}," for b in outs]
        lines += ["        }"]
    return lines


def _class_lines(net: CaffeNet, plan: _Plan, class_name: str) -> list[str]:
    netdef = net.netdef
    lines = [f"class {class_name}(nn.Module):"]
    lines.append(
        f'    """Caffe net {_q(netdef.name)} as a torch module (see the file\'s docstring)."""'
    )
    lines += [""] + _tuple_lines(
        "(input blob, the shape the Caffe definition declares)",
        "INPUTS",
        [f"({_q(k)}, {tuple(v)!r})" for k, v in netdef.inputs.items()],
    )
    outs = ", ".join(_q(o) for o in net.output_names) + ("," if len(net.output_names) == 1 else "")
    lines += [f"    OUTPUTS = ({outs})"]
    lines += _tuple_lines(
        "(in-place layer's attribute, the blob it rewrites)",
        "IN_PLACE",
        [f"({_q(a)}, {_q(b)})" for a, b in plan.in_place.items()],
    )
    lines += _tuple_lines(
        'every blob, in the order the net first writes it (``blobs="all"``)',
        "blob_names",
        [_q(b) for b in net.blob_names],
    )
    lines += _tuple_lines(
        "(attribute, Caffe layer name) where they differ",
        "LAYER_NAMES",
        [f"({_q(a)}, {_q(n)})" for n, a in plan.attr.items() if a != n],
    )
    lines += ["", "    def __init__(self):", "        super().__init__()"]
    for layer, out in plan.emitted:
        if out.init is not None:
            lines += _split_init(plan.attr[layer.name], out.init)
    return lines + [""] + _forward_lines(net, plan)


def _tuple_lines(comment: str, name: str, items: list[str]) -> list[str]:
    """A class-level tuple in ruff's layout (a one-item tuple's comma is not a magic one)."""
    head = [f"    #: {comment}"]
    if len(items) <= 1:
        one = f"    {name} = ({items[0]},)" if items else f"    {name} = ()"
        if len(one) <= _LINE:
            return head + [one]
    return head + [f"    {name} = ("] + [f"        {i}," for i in items] + ["    )"]


def generate_python(
    net: CaffeNet,
    *,
    class_name: str | None = None,
    header: str = "",
    weights_name: str = "<weights>.safetensors",
) -> tuple[str, str, dict[str, torch.Tensor]]:
    """The source of a standalone module for ``net`` and its state dict.

    Parameters
    ----------
    net : CaffeNet
        The port, weights loaded.
    class_name : str, optional
        Default: from the definition's ``name`` (:func:`class_name_for`).
    header : str
        Lines for the file's docstring (provenance).
    weights_name : str
        The weights file's name, for the usage example in the docstring.

    Returns
    -------
    (class name, source text, state dict of float32 tensors)

    Raises
    ------
    CaffeError
        A layer without a Python source form (the error names it and says why).
    """
    name = class_name or class_name_for(net.netdef.name or "Net")
    if not name.isidentifier() or keyword.iskeyword(name):
        raise CaffeError(f"class name {name!r} is not a Python identifier", field="class-name")
    plan = _Plan(net)
    state: dict[str, torch.Tensor] = {}
    for layer, out in plan.emitted:
        for key, value in out.state.items():
            state[f"{plan.attr[layer.name]}.{key}"] = (
                value.detach().to(torch.float32).contiguous().clone()
            )
    doc = [f'"""{name}: the Caffe net {_q(net.netdef.name)} as a standalone torch module.', ""]
    doc += header.splitlines() + [
        "",
        _USAGE.format(name=name, weights=weights_name, blob=_first_blob(net)).strip(),
        '"""',
    ]
    uses_f = bool(
        plan.helpers & {"caffe_pool2d", "CaffeLRN", "CaffeEmbed", "CaffeLSTM", "CaffeConv2d"}
    )
    imports = ("import math\n\n" if "caffe_pool2d" in plan.helpers else "") + _IMPORTS.strip()
    imports += "\nfrom torch.nn import functional as F" if uses_f else ""
    parts = ["\n".join(doc) + "\n\n" + imports]
    if plan.helpers:
        parts.append(helper_source(plan.helpers))
    custom = [e.source for _, e in plan.emitted if e.source]
    parts += list(dict.fromkeys(custom))
    parts.append("\n".join(_class_lines(net, plan, name)))
    return name, "\n\n\n".join(parts) + "\n", state


def _first_blob(net: CaffeNet) -> str:
    return next((b for b in net.blob_names if b not in net.netdef.inputs), net.blob_names[0])


_IMPORTS = """
import torch
from torch import nn
"""

_USAGE = """
Needs only torch (and safetensors to read the weights file written beside it):

    from safetensors.torch import load_file

    net = {name}()
    net.load_state_dict(load_file("{weights}"))
    net.eval()
    out = net(x)  # the output blob(s)
    blobs = net(x, blobs=("{blob}",))  # any blob by name, as pycaffe's net.blobs holds it
"""
