"""The layer-type table of the numpy reference, and the API plugins register custom layers with.

Each family module fills :data:`LAYERS` with :func:`registers` at import; :func:`register` and
:func:`unregister` add and remove a fork's or a Python layer's function at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "LAYERS",
    "PYTHON_LAYERS",
    "LayerFn",
    "UnknownLayerError",
    "forward_layer",
    "layer_function",
    "missing_layers",
    "register",
    "registers",
    "unregister",
]

LayerFn = Callable[[Any, Sequence[np.ndarray], Sequence[np.ndarray]], list[np.ndarray]]

#: Caffe layer type -> ``(layer, bottoms, weights) -> tops`` adapter.
LAYERS: dict[str, LayerFn] = {}


def registers(*types: str) -> Callable[[LayerFn], LayerFn]:
    """Register a ``(layer, bottoms, weights) -> tops`` adapter for Caffe layer types.

    The family modules' decorator for the built-in types; plugins call :func:`register` instead.

    Parameters
    ----------
    *types : str
        Caffe layer types the decorated adapter computes.

    Returns
    -------
    callable
        The decorator; it returns the adapter unchanged.
    """

    def deco(fn: LayerFn) -> LayerFn:
        for t in types:
            LAYERS[t] = fn
        return fn

    return deco


def forward_layer(
    layer: Any, bottoms: Sequence[np.ndarray], weights: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Run one parsed layer on numpy inputs.

    Parameters
    ----------
    layer : LayerDef
        ``.type`` (V2 type string) and ``.param`` (protobuf ``LayerParameter``).
    bottoms : sequence of ndarray
        Bottom blobs; their dtype is the computation dtype.
    weights : sequence of ndarray
        The layer's learned blobs, in Caffe's order (empty for layers without any).

    Returns
    -------
    list of ndarray
        One array per top.
    """
    fn = layer_function(layer)
    if fn is None:
        hint = (
            f'parity.numpy_ref.register("Python", fn, module={layer.param.python_param.module!r}, '
            f"layer={layer.param.python_param.layer!r})"
            if layer.type == "Python"
            else f"parity.numpy_ref.register({layer.type!r}, fn)"
        )
        raise UnknownLayerError(
            f"layer {layer.name!r}: numpy reference has no layer type "
            f"{layer.type!r}; register one with {hint}"
        )
    return fn(layer, bottoms, weights)


class UnknownLayerError(ValueError):
    """A layer type the numpy reference has no function for (a fork's or a Python layer)."""


#: (``"Python"``, module, layer) -> adapter, for Python layers told apart by their python_param.
PYTHON_LAYERS: dict[tuple[str, str], LayerFn] = {}


def register(
    layer_type: str, fn: LayerFn, *, module: str | None = None, layer: str | None = None
) -> None:
    """Give the numpy reference a custom layer: ``fn(layer, bottoms, weights) -> list of tops``.

    The counterpart of :func:`port.register_layer` for the independent reference; ``fn`` should be
    written from the layer's own definition (the fork's C++ or the Python layer), not from the
    port's module. ``module``/``layer`` select one Python layer (``layer_type="Python"``).
    """
    if (module is None) != (layer is None):
        raise ValueError("give both module and layer (a Python layer's python_param), or neither")
    if module is not None:
        if layer_type != "Python":
            raise ValueError(f"module/layer match Python layers only, not type {layer_type!r}")
        PYTHON_LAYERS[(module, layer)] = fn
    else:
        LAYERS[layer_type] = fn


def unregister(layer_type: str, *, module: str | None = None, layer: str | None = None) -> None:
    """Remove a registration made by :func:`register` (no error when there is none)."""
    if module is not None:
        PYTHON_LAYERS.pop((module, layer), None)
    else:
        LAYERS.pop(layer_type, None)


def layer_function(layer: Any) -> LayerFn | None:
    """The adapter that computes ``layer``, or None where the reference has none."""
    if layer.type == "Python":
        p = layer.param.python_param
        found = PYTHON_LAYERS.get((p.module, p.layer))
        if found is not None:
            return found
    return LAYERS.get(layer.type)


def missing_layers(netdef: Any) -> list[str]:
    """Names of the layers of ``netdef`` the numpy reference cannot compute."""
    return [layer.name for layer in netdef.layers if layer_function(layer) is None]
