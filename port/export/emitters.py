"""One emitter per layer type: the Python source of a layer in the generated module.

An emitter reads the port's built layer module (its parsed geometry and weight blobs) and returns
an :class:`Emitted`: the constructor expression of the layer's submodule (or none for layers
written inline in ``forward``), the call that computes its tops, the state-dict entries it owns and
the helpers of :mod:`port.export.prelude` it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import CaffeError
from ..layers.strided import folds_space_to_depth

__all__ = ["Emitted", "LayerContext", "EMITTERS", "NO_SOURCE", "emit"]


@dataclass
class LayerContext:
    """What an emitter knows of one layer: its definition, the port's module, the attribute name
    and the variable names of its bottoms."""

    layer: object
    module: torch.nn.Module
    attr: str
    bottoms: list[str]
    inplace_safe: bool


@dataclass
class Emitted:
    """A layer's source: ``init`` (None: written inline), the ``call`` expression, whether the
    call returns a list of tops (custom layers), its state-dict entries and helpers."""

    init: str | None
    call: str
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    helpers: set[str] = field(default_factory=set)
    returns_list: bool = False
    source: str | None = None


def _t(values) -> str:
    return repr(tuple(int(v) for v in values))


def _f(value: float) -> str:
    return repr(float(value))


def _conv(ctx: LayerContext) -> Emitted:
    m = ctx.module
    args = [str(m.channels), str(m.num_output), f"kernel_size={_t(m.kernel)}"]
    args += [f"stride={_t(m.stride)}"] if tuple(m.stride) != (1, 1) else []
    args += [f"padding={_t(m.pad)}"] if tuple(m.pad) != (0, 0) else []
    args += [f"dilation={_t(m.dilation)}"] if tuple(m.dilation) != (1, 1) else []
    args += [f"groups={m.group}"] if m.group != 1 else []
    args += [] if m.bias_term else ["bias=False"]
    cls = "nn.Conv2d" if ctx.layer.type == "Convolution" else "nn.ConvTranspose2d"
    helpers = set()
    if cls == "nn.Conv2d" and folds_space_to_depth(
        m.channels // m.group, tuple(m.kernel), tuple(m.stride), tuple(m.dilation)
    ):
        cls, helpers = "CaffeConv2d", {"CaffeConv2d"}
    state = {"weight": m.blobs[0]}
    if m.bias_term:
        state["bias"] = m.blobs[1]
    init = f"{cls}({', '.join(args)})"
    return Emitted(init, f"self.{ctx.attr}({ctx.bottoms[0]})", state, helpers=helpers)


def _inner_product(ctx: LayerContext) -> Emitted:
    m = ctx.module
    bias = "" if m.bias_term else ", bias=False"
    x = ctx.bottoms[0]
    if len(m.bottom_shapes[0]) > m.axis + 1:
        x = f"torch.flatten({x}, {m.axis})"
    weight = m.blobs[0].t() if m.transpose else m.blobs[0]
    state = {"weight": weight}
    if m.bias_term:
        state["bias"] = m.blobs[1]
    return Emitted(
        f"CaffeLinear({m.k_in}, {m.num_output}{bias})",
        f"self.{ctx.attr}({x})",
        state,
        helpers={"caffe_linear"},
    )


def _pooling(ctx: LayerContext) -> Emitted:
    m = ctx.module
    kernel = "None" if m.global_pooling else _t(m.kernel)
    init = f'CaffePool2d("{m.method}", {kernel}, {_t(m.stride)}, {_t(m.pad)})'
    return Emitted(init, f"self.{ctx.attr}({ctx.bottoms[0]})", helpers={"caffe_pool2d"})


def _lrn(ctx: LayerContext) -> Emitted:
    m = ctx.module
    across = m.region == "ACROSS_CHANNELS"
    init = f"CaffeLRN({m.size}, {_f(m.alpha)}, {_f(m.beta)}, {_f(m.k)}" + (
        ")" if across else ", across_channels=False)"
    )
    return Emitted(init, f"self.{ctx.attr}({ctx.bottoms[0]})", helpers={"CaffeLRN"})


def _inplace(ctx: LayerContext) -> str:
    return "inplace=True" if ctx.layer.in_place and ctx.inplace_safe else ""


def _relu(ctx: LayerContext) -> Emitted:
    slope = ctx.module.negative_slope
    flag = _inplace(ctx)
    if slope == 0:
        init = f"nn.ReLU({flag})"
    else:
        init = f"nn.LeakyReLU({_f(slope)}{', ' + flag if flag else ''})"
    return Emitted(init, f"self.{ctx.attr}({ctx.bottoms[0]})")


def _dropout(ctx: LayerContext) -> Emitted:
    if ctx.module.scale != 1.0:
        raise CaffeError(
            "Dropout with scale_train false scales by (1 - ratio) at TEST, which nn.Dropout "
            "does not: no Python source form",
            layer=ctx.layer.name,
            field="dropout_param.scale_train",
        )
    ratio = float(ctx.layer.param.dropout_param.dropout_ratio)
    flag = _inplace(ctx)
    return Emitted(
        f"nn.Dropout({_f(ratio)}{', ' + flag if flag else ''})",
        f"self.{ctx.attr}({ctx.bottoms[0]})",
    )


def _simple(cls: str) -> Callable[[LayerContext], Emitted]:
    def emit_simple(ctx: LayerContext) -> Emitted:
        return Emitted(f"{cls}()", f"self.{ctx.attr}({ctx.bottoms[0]})")

    return emit_simple


def _softmax(ctx: LayerContext) -> Emitted:
    return Emitted(f"nn.Softmax(dim={ctx.module.axis})", f"self.{ctx.attr}({ctx.bottoms[0]})")


def _elu(ctx: LayerContext) -> Emitted:
    return Emitted(f"nn.ELU({_f(ctx.module.alpha)})", f"self.{ctx.attr}({ctx.bottoms[0]})")


def _prelu(ctx: LayerContext) -> Emitted:
    m = ctx.module
    n = 1 if m.channel_shared else m.channels
    return Emitted(
        f"nn.PReLU({n})",
        f"self.{ctx.attr}({ctx.bottoms[0]})",
        {"weight": m.blobs[0].reshape(n)},
    )


def _batchnorm(ctx: LayerContext) -> Emitted:
    m = ctx.module
    if not m.use_global_stats:
        raise CaffeError(
            "BatchNorm with use_global_stats false normalises with the batch's own statistics: "
            "no Python source form",
            layer=ctx.layer.name,
            field="batch_norm_param.use_global_stats",
        )
    with torch.no_grad():
        s = m.blobs[2][0]
        factor = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
        state = {"running_mean": m.blobs[0] * factor, "running_var": m.blobs[1] * factor}
    init = f"CaffeBatchNorm({m.channels}, {_f(m.eps)})"
    return Emitted(init, f"self.{ctx.attr}({ctx.bottoms[0]})", state, {"CaffeBatchNorm"})


def _scale(ctx: LayerContext) -> Emitted:
    m = ctx.module
    if not m.learned_scale:
        raise CaffeError(
            "Scale by a second bottom has no Python source form yet",
            layer=ctx.layer.name,
            field="bottom",
        )
    bias = "" if m.bias_term else ", bias=False"
    init = f"CaffeScale({_t(m.scale_shape)}, axis={m.axis}{bias})"
    state = {"weight": m.blobs[0]}
    if m.bias_term:
        state["bias"] = m.blobs[1]
    return Emitted(init, f"self.{ctx.attr}({ctx.bottoms[0]})", state, {"CaffeScale"})


def _eltwise(ctx: LayerContext) -> Emitted:
    m, xs = ctx.module, ctx.bottoms
    if m.op == "SUM":
        terms = [x if c == 1 else f"{x} * {_f(c)}" for x, c in zip(xs, m.coeff, strict=True)]
        return Emitted(None, " + ".join(terms))
    if m.op == "PROD":
        return Emitted(None, " * ".join(xs))
    # Caffe sends a tie's gradient to one bottom (bottom 1 for the first pair, then the earlier).
    expr = f"torch.where({xs[0]} > {xs[1]}, {xs[0]}, {xs[1]})"
    for x in xs[2:]:
        expr = f"torch.where({x} > ({expr}), {x}, ({expr}))"
    return Emitted(None, expr)


def _concat(ctx: LayerContext) -> Emitted:
    return Emitted(None, f"torch.cat([{', '.join(ctx.bottoms)}], dim={ctx.module.axis})")


def _flatten(ctx: LayerContext) -> Emitted:
    m = ctx.module
    return Emitted(None, f"torch.flatten({ctx.bottoms[0]}, {m.start}, {m.end})")


def _split(ctx: LayerContext) -> Emitted:
    return Emitted(None, ", ".join([ctx.bottoms[0]] * len(ctx.layer.tops)))


def _crop(ctx: LayerContext) -> Emitted:
    m = ctx.module
    offsets = _t(m.offsets[m.axis :])
    call = f"caffe_crop({ctx.bottoms[0]}, {ctx.bottoms[1]}, {m.axis}, {offsets})"
    return Emitted(None, call, helpers={"caffe_crop"})


def _embed(ctx: LayerContext) -> Emitted:
    m = ctx.module
    bias = "" if m.bias_term else ", bias=False"
    state = {"weight": m.blobs[0]}
    if m.bias_term:
        state["bias"] = m.blobs[1]
    init = f"CaffeEmbed({m.input_dim}, {m.num_output}{bias})"
    return Emitted(init, f"self.{ctx.attr}({ctx.bottoms[0]})", state, {"CaffeEmbed"})


def _lstm(ctx: LayerContext) -> Emitted:
    m = ctx.module
    if m.expose_hidden:
        raise CaffeError(
            "an LSTM with exposed states has no Python source form yet",
            layer=ctx.layer.name,
            field="recurrent_param.expose_hidden",
        )
    state = {"weight_x": m.blobs[0], "bias_x": m.blobs[1], "weight_h": m.blobs[-1]}
    init = f"CaffeLSTM({m.in_dim}, {m.hidden})"
    if m.static:
        state["weight_static"] = m.blobs[2]
        init = f"CaffeLSTM({m.in_dim}, {m.hidden}, static_dim={m.static_dim})"
    call = f"self.{ctx.attr}({', '.join(ctx.bottoms[:3])})"
    return Emitted(init, call, state, {"CaffeLSTM"})


def _custom(ctx: LayerContext) -> Emitted:
    """A plugin layer's own source: its module's ``export_python()`` returns ``{"source": top-level
    code needing only torch (a class), "init": its constructor call, "state": {name: tensor}}``;
    the class's forward returns the list of tops, as a ``CaffeLayer``'s does."""
    given = ctx.module.export_python()
    missing = [k for k in ("source", "init") if k not in given]
    if missing:
        raise CaffeError(
            f"export_python() of {type(ctx.module).__name__} lacks {missing}",
            layer=ctx.layer.name,
            field="type",
        )
    return Emitted(
        given["init"],
        f"self.{ctx.attr}({', '.join(ctx.bottoms)})",
        dict(given.get("state", {})),
        returns_list=True,
        source=given["source"].strip(),
    )


EMITTERS: dict[str, Callable[[LayerContext], Emitted]] = {
    "Convolution": _conv,
    "Deconvolution": _conv,
    "InnerProduct": _inner_product,
    "Pooling": _pooling,
    "LRN": _lrn,
    "ReLU": _relu,
    "Dropout": _dropout,
    "Softmax": _softmax,
    "Sigmoid": _simple("nn.Sigmoid"),
    "TanH": _simple("nn.Tanh"),
    "ELU": _elu,
    "PReLU": _prelu,
    "BatchNorm": _batchnorm,
    "Scale": _scale,
    "Eltwise": _eltwise,
    "Concat": _concat,
    "Flatten": _flatten,
    "Split": _split,
    "Crop": _crop,
    "Embed": _embed,
    "LSTM": _lstm,
}

#: Built-in types without a Python source form, and why (the README's export table).
NO_SOURCE = {
    "RNN": "Caffe's recurrence with sequence-continuation markers is not written out yet for "
    "RNN (LSTM is; export to pt2 or onnx)",
    "LSTMUnit": "not written out yet (export to pt2 or onnx)",
}


def emit(ctx: LayerContext) -> Emitted:
    """The source of one layer; a clear error naming the layer when it has none."""
    if hasattr(ctx.module, "export_python"):
        return _custom(ctx)
    emitter = EMITTERS.get(ctx.layer.type)
    if emitter is None or type(ctx.module).__name__ == "StochasticPooling":
        why = NO_SOURCE.get(ctx.layer.type, "no Python source emitter for this type")
        if type(ctx.module).__module__.split(".")[0] != "port":
            why = (
                "a custom layer whose class provides no export_python() (see README, 'Take your "
                "model with you'); export to pt2 or onnx, or add the method"
            )
        raise CaffeError(
            f"layer type {ctx.layer.type!r} cannot be exported as Python source: {why}",
            layer=ctx.layer.name,
            field="type",
        )
    return emitter(ctx)
