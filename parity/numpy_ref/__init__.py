"""An independent numpy implementation of the forward pass of every layer the port supports.

Written from the layer rules in ``shared/spec/caffe-semantics.md`` and Caffe 1.0's layer sources
(``src/caffe/layers/*.cpp``: what each ``Forward_cpu`` computes, in which order); it shares nothing
with ``port/`` except the parsed definition (``NetDef``/``LayerDef``) that :func:`forward_net` walks.
The layer functions are plain functions with explicit keyword parameters so that tests elsewhere
(the port's layer tests, hypothesis over shapes) can call them as the reference.

Every function computes in the dtype of its input: pass float32 arrays for the "numpy32" column and
float64 arrays for the "numpy64" (truth) column. Weights are cast to the input's dtype.

The modules mirror :mod:`port.layers`' families: :mod:`.vision`, :mod:`.activations`,
:mod:`.arithmetic`, :mod:`.shape`, :mod:`.recurrent`; :mod:`.registry` holds the type table and the
:func:`register` API, :mod:`.params` reads layer parameters, :mod:`.net` forwards a whole net.
"""

from __future__ import annotations

from .activations import (
    absval,
    bnll,
    clip,
    dropout,
    elu,
    exp,
    log,
    power,
    prelu,
    relu,
    sigmoid,
    softmax,
    swish,
    tanh,
    threshold,
)
from .arithmetic import argmax, batch_norm, bias, eltwise, embed, mvn, reduction, scale
from .net import forward_net
from .params import concat_axis, eltwise_operation, lrn_region, window_geometry
from .recurrent import lstm, lstm_unit, rnn
from .registry import (
    LAYERS,
    PYTHON_LAYERS,
    LayerFn,
    UnknownLayerError,
    forward_layer,
    layer_function,
    missing_layers,
    register,
    unregister,
)
from .shape import (
    batch_reindex,
    concat,
    filter_rows,
    flatten,
    reshape_shape,
    slice_sizes,
    split,
    tile,
)
from .vision import (
    conv2d,
    crop,
    deconv2d,
    im2col,
    inner_product,
    lrn,
    max_pool_argmax,
    pool2d,
    pool_output_size,
    pool_windows,
    spp_levels,
    stochastic_pool_test,
)

#: The built-in layer types (the family modules' registrations; not what plugins add later).
SUPPORTED_TYPES = frozenset(LAYERS)

__all__ = [
    "LAYERS",
    "PYTHON_LAYERS",
    "SUPPORTED_TYPES",
    "LayerFn",
    "UnknownLayerError",
    "absval",
    "argmax",
    "batch_norm",
    "batch_reindex",
    "bias",
    "bnll",
    "clip",
    "concat",
    "concat_axis",
    "conv2d",
    "crop",
    "deconv2d",
    "dropout",
    "eltwise",
    "eltwise_operation",
    "elu",
    "embed",
    "exp",
    "filter_rows",
    "flatten",
    "forward_layer",
    "forward_net",
    "im2col",
    "inner_product",
    "layer_function",
    "log",
    "lrn",
    "lrn_region",
    "lstm",
    "lstm_unit",
    "max_pool_argmax",
    "missing_layers",
    "mvn",
    "pool2d",
    "pool_output_size",
    "pool_windows",
    "power",
    "prelu",
    "reduction",
    "register",
    "relu",
    "reshape_shape",
    "rnn",
    "scale",
    "sigmoid",
    "slice_sizes",
    "softmax",
    "split",
    "spp_levels",
    "stochastic_pool_test",
    "swish",
    "tanh",
    "threshold",
    "tile",
    "unregister",
    "window_geometry",
]
