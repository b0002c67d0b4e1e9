"""PyTorch modules for Caffe layers, each exact to Caffe 1.0's rules.

Every layer class is built from a :class:`~port.netdef.LayerDef` and the shapes of its bottoms, knows
the shapes of its weight blobs (Caffe layout, so caffemodel blobs load without reshaping) and of its
tops, and computes ``forward(*bottoms) -> list of tops``. Layers never modify their inputs: in-place
Caffe layers produce a new tensor, and the net keeps track of what the blob name refers to.

The classes live in family modules (:mod:`.vision`, :mod:`.activations`, :mod:`.arithmetic`,
:mod:`.shape`, :mod:`.recurrent`); this package keeps the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import CaffeError
from ..netdef import LayerDef
from .activations import (
    BNLL,
    ELU,
    AbsVal,
    Clip,
    Dropout,
    Exp,
    Log,
    Power,
    PReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Swish,
    TanH,
    Threshold,
)
from .arithmetic import MVN, ArgMax, BatchNorm, Bias, Eltwise, Embed, Reduction, Scale
from .base import CaffeLayer, Shape, _canonical_axis, _enum_name, _opt, _pair
from .recurrent import LSTM, RNN, LSTMUnit
from .shape import (
    BatchReindex,
    Concat,
    Filter,
    Flatten,
    Parameter,
    Reshape,
    Silence,
    Slice,
    Split,
    Tile,
)
from .vision import (
    LRN,
    SPP,
    Convolution,
    Crop,
    Deconvolution,
    Im2col,
    InnerProduct,
    Pooling,
    StochasticPooling,
    pooled_size,
)

__all__ = [
    "AbsVal",
    "ArgMax",
    "BNLL",
    "BatchNorm",
    "BatchReindex",
    "Bias",
    "CaffeLayer",
    "Clip",
    "Concat",
    "Convolution",
    "Crop",
    "Deconvolution",
    "Dropout",
    "ELU",
    "Eltwise",
    "Embed",
    "Exp",
    "Filter",
    "Flatten",
    "IN_PLACE_TYPES",
    "TOP_READING_TYPES",
    "Im2col",
    "InnerProduct",
    "LAYER_TYPES",
    "LRN",
    "LSTM",
    "LSTMUnit",
    "Log",
    "RNN",
    "MVN",
    "PReLU",
    "Parameter",
    "Pooling",
    "Power",
    "ReLU",
    "Reduction",
    "Reshape",
    "SPP",
    "Scale",
    "Shape",
    "Sigmoid",
    "Silence",
    "Slice",
    "Softmax",
    "Split",
    "StochasticPooling",
    "Swish",
    "TanH",
    "Threshold",
    "Tile",
    "build_layer",
    "pooled_size",
    "Builder",
    "CUSTOM_LAYERS",
    "custom_builder",
    "register_layer",
    "unregister_layer",
    "_canonical_axis",
    "_enum_name",
    "_opt",
    "_pair",
]

LAYER_TYPES: dict[str, type[CaffeLayer]] = {
    cls.caffe_type: cls
    for cls in (
        Convolution,
        Pooling,
        LRN,
        InnerProduct,
        ReLU,
        Dropout,
        Softmax,
        Concat,
        BatchNorm,
        Scale,
        Eltwise,
        Flatten,
        Split,
        Sigmoid,
        TanH,
        AbsVal,
        ArgMax,
        BNLL,
        BatchReindex,
        Bias,
        Clip,
        Crop,
        Deconvolution,
        ELU,
        Embed,
        Exp,
        Filter,
        Im2col,
        Log,
        MVN,
        PReLU,
        Parameter,
        Power,
        Reduction,
        Reshape,
        SPP,
        Silence,
        Slice,
        Swish,
        Threshold,
        Tile,
        LSTM,
        LSTMUnit,
        RNN,
    )
}

# Layers whose backward Caffe computes exactly when run in place (top == bottom), measured on the
# Caffe root. Clip, BNLL, Log, Power and MVN read their bottom's data in Backward, which in place
# holds the top: Caffe then returns another gradient than the port's true one (AbsVal refuses to
# run in place at all). `port dump` notes such layers under ``inexact/<layer>``.
IN_PLACE_TYPES = {
    "ReLU",
    "Dropout",
    "BatchNorm",
    "Scale",
    "Sigmoid",
    "TanH",
    "Bias",
    "ELU",
    "Exp",
    "PReLU",
    "Swish",
}
# Layers whose backward reads their own top: a later in-place layer that rewrites it changes
# Caffe's gradient (measured: Swish followed by an in-place ELU).
TOP_READING_TYPES = {"Sigmoid", "TanH", "ELU", "Exp", "Swish", "MVN", "Softmax", "LRN"}


#: A custom layer's builder: a CaffeLayer subclass, or any callable ``(layer, bottom_shapes)`` that
#: returns a module with the same contract (``blobs``, ``blob_shapes()``, ``top_shapes()``,
#: ``forward(*bottoms) -> list of tops``).
Builder = Callable[[LayerDef, list[Shape]], nn.Module]
# (type, python module, python layer) -> builder; module and layer are None for a plain type.
CUSTOM_LAYERS: dict[tuple[str, str | None, str | None], Builder] = {}
_CONTRACT = ("blobs", "blob_shapes", "top_shapes")


def _python_key(layer_type: str, module: str | None, layer: str | None):
    if (module is None) != (layer is None):
        raise ValueError("give both module and layer (a Python layer's python_param), or neither")
    if module is not None and layer_type != "Python":
        raise ValueError(f"module/layer match Python layers only, not type {layer_type!r}")
    return (layer_type, module, layer)


def register_layer(
    layer_type: str,
    builder: Builder,
    *,
    module: str | None = None,
    layer: str | None = None,
    replace: bool = False,
) -> None:
    """Map a layer type that Caffe 1.0 lacks (a fork's, or a Python layer) to a torch module.

    Parameters
    ----------
    layer_type : str
        The definition's ``type`` (``"Permute"``), or ``"Python"`` with ``module`` and ``layer``.
    builder : CaffeLayer subclass or callable
        Called as ``builder(layer_def, bottom_shapes)``; the module it returns must hold its weight
        blobs in ``blobs`` (an ``nn.ParameterList``, Caffe layout), and answer ``blob_shapes()``,
        ``top_shapes()`` and ``forward(*bottoms) -> list of tops`` as :class:`CaffeLayer` does.
    module, layer : str, optional
        For ``"Python"``: the ``python_param`` module and layer this builder stands for.
    replace : bool
        Allow replacing a built-in type or an earlier registration.

    Examples
    --------
    >>> import port
    >>> port.register_layer("Permute", MyPermute)  # doctest: +SKIP
    >>> port.register_layer(
    ...     "Python", MyNorm, module="ssd_layers", layer="Normalize"
    ... )  # doctest: +SKIP
    """
    key = _python_key(layer_type, module, layer)
    if not callable(builder):
        raise TypeError(f"builder for {layer_type!r} is not callable: {builder!r}")
    if not replace and (key in CUSTOM_LAYERS or (module is None and layer_type in LAYER_TYPES)):
        raise ValueError(
            f"layer type {_describe(key)} is already registered; pass replace=True to replace it"
        )
    if _lacks_top_shapes(builder):
        raise TypeError(
            f"builder for {layer_type!r} ({builder.__name__}) does not define top_shapes(): a "
            "custom layer follows port.layers.CaffeLayer's contract"
        )
    CUSTOM_LAYERS[key] = builder


def _lacks_top_shapes(builder: object) -> bool:
    # CaffeLayer.top_shapes only raises NotImplementedError: a subclass that keeps it would pass
    # the hasattr contract check and fail at the first shape inference instead of here.
    return (
        isinstance(builder, type) and getattr(builder, "top_shapes", None) is CaffeLayer.top_shapes
    )


def unregister_layer(
    layer_type: str, *, module: str | None = None, layer: str | None = None
) -> None:
    """Remove a registration made by :func:`register_layer` (no error when there is none)."""
    CUSTOM_LAYERS.pop(_python_key(layer_type, module, layer), None)


def _describe(key) -> str:
    t, module, layer = key
    return f"{t!r}" if module is None else f"Python {module}.{layer}"


def custom_builder(layer: LayerDef) -> Builder | None:
    """The registered builder of a layer, if any (a Python layer matches by module and layer
    first, then by type alone)."""
    if layer.type == "Python":
        p = layer.param.python_param
        found = CUSTOM_LAYERS.get(("Python", p.module, p.layer))
        if found is not None:
            return found
    return CUSTOM_LAYERS.get((layer.type, None, None))


def _layer_class(layer: LayerDef) -> Builder | None:
    custom = custom_builder(layer)
    if custom is not None:
        return custom
    # Pooling's STOCHASTIC method has its own TEST-phase rule and module.
    if layer.type == "Pooling" and _enum_name(layer.param.pooling_param, "pool") == "STOCHASTIC":
        return StochasticPooling
    return LAYER_TYPES.get(layer.type)


def _unsupported(layer: LayerDef) -> CaffeError:
    if layer.type == "Python":
        p = layer.param.python_param
        what = f"Python layer {p.module}.{p.layer}"
        call = f'port.register_layer("Python", MyLayer, module={p.module!r}, layer={p.layer!r})'
    else:
        what = f"layer type {layer.type!r}"
        call = f"port.register_layer({layer.type!r}, MyLayer)"
    return CaffeError(
        f"{what} is not supported: register a torch module for it before loading, e.g. {call} "
        "with MyLayer a port.layers.CaffeLayer subclass (see README, 'Custom layers'); on the "
        "command line, --plugin FILE.py runs the file that registers it. Built-in types: "
        f"{', '.join(sorted(LAYER_TYPES))}",
        layer=layer.name,
        field="type",
    )


def build_layer(layer: LayerDef, bottom_shapes: list[Shape]) -> CaffeLayer:
    """Instantiate the module for one layer; unknown types raise :class:`CaffeError`."""
    cls = _layer_class(layer)
    if cls is None:
        raise _unsupported(layer)
    module = cls(layer, bottom_shapes)
    missing = [name for name in _CONTRACT if not hasattr(module, name)]
    if _lacks_top_shapes(type(module)):
        missing.append("top_shapes")
    if missing or not isinstance(module, nn.Module):
        raise CaffeError(
            f"the module registered for {layer.type!r} ({cls!r}) lacks "
            f"{', '.join(missing) or 'nn.Module'}: a custom layer follows "
            "port.layers.CaffeLayer's contract",
            layer=layer.name,
            field="type",
        )
    return module
