"""PyTorch modules for Caffe layers, each exact to Caffe 1.0's rules.

Every layer class is built from a :class:`~port.netdef.LayerDef` and the shapes of its bottoms, knows
the shapes of its weight blobs (Caffe layout, so caffemodel blobs load without reshaping) and of its
tops, and computes ``forward(*bottoms) -> list of tops``. Layers never modify their inputs: in-place
Caffe layers produce a new tensor, and the net keeps track of what the blob name refers to.

The classes live in family modules (:mod:`.vision`, :mod:`.activations`, :mod:`.arithmetic`,
:mod:`.shape`, :mod:`.recurrent`); this package keeps the registry.
"""

from __future__ import annotations

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
    "AbsVal", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "CaffeLayer", "Clip",
    "Concat", "Convolution", "Crop", "Deconvolution", "Dropout", "ELU", "Eltwise", "Embed", "Exp",
    "Filter", "Flatten", "IN_PLACE_TYPES", "TOP_READING_TYPES", "Im2col", "InnerProduct", "LAYER_TYPES", "LRN", "LSTM",
    "LSTMUnit", "Log", "RNN",
    "MVN", "PReLU", "Parameter", "Pooling", "Power", "ReLU", "Reduction", "Reshape", "SPP",
    "Scale", "Shape", "Sigmoid", "Silence", "Slice", "Softmax", "Split", "StochasticPooling",
    "Swish", "TanH", "Threshold", "Tile", "build_layer", "pooled_size",
    "_canonical_axis", "_enum_name", "_opt", "_pair",
]

LAYER_TYPES: dict[str, type[CaffeLayer]] = {
    cls.caffe_type: cls
    for cls in (Convolution, Pooling, LRN, InnerProduct, ReLU, Dropout, Softmax, Concat, BatchNorm,
                Scale, Eltwise, Flatten, Split, Sigmoid, TanH,
                AbsVal, ArgMax, BNLL, BatchReindex, Bias, Clip, Crop, Deconvolution, ELU, Embed,
                Exp, Filter, Im2col, Log, MVN, PReLU, Parameter, Power, Reduction, Reshape, SPP,
                Silence, Slice, Swish, Threshold, Tile, LSTM, LSTMUnit, RNN)
}

# Layers whose backward Caffe computes exactly when run in place (top == bottom), measured on the
# Caffe root. Clip, BNLL, Log, Power and MVN read their bottom's data in Backward, which in place
# holds the top: Caffe then returns another gradient than the port's true one (AbsVal refuses to
# run in place at all). `port dump` notes such layers under ``inexact/<layer>``.
IN_PLACE_TYPES = {"ReLU", "Dropout", "BatchNorm", "Scale", "Sigmoid", "TanH", "Bias", "ELU", "Exp",
                  "PReLU", "Swish"}
# Layers whose backward reads their own top: a later in-place layer that rewrites it changes
# Caffe's gradient (measured: Swish followed by an in-place ELU).
TOP_READING_TYPES = {"Sigmoid", "TanH", "ELU", "Exp", "Swish", "MVN", "Softmax", "LRN"}


def _layer_class(layer: LayerDef) -> type[CaffeLayer] | None:
    # Pooling's STOCHASTIC method has its own TEST-phase rule and module.
    if layer.type == "Pooling" and _enum_name(layer.param.pooling_param, "pool") == "STOCHASTIC":
        return StochasticPooling
    return LAYER_TYPES.get(layer.type)


def build_layer(layer: LayerDef, bottom_shapes: list[Shape]) -> CaffeLayer:
    """Instantiate the module for one layer; unknown types raise :class:`CaffeError`."""
    cls = _layer_class(layer)
    if cls is None:
        raise CaffeError(f"layer type {layer.type!r} is not supported (supported: "
                         f"{', '.join(sorted(LAYER_TYPES))})", layer=layer.name, field="type")
    return cls(layer, bottom_shapes)
