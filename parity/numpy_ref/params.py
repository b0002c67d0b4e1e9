"""Reading a parsed layer's parameters the way Caffe reads them.

Works on protobuf messages and on plain objects alike (unset optional fields, ``<name>_h``/``_w``
forms, repeated fields, enum numbers or names). The readers :func:`window_geometry`,
:func:`lrn_region`, :func:`eltwise_operation` and :func:`concat_axis` are public: the parity checks
use them to route and gate layers without asking the port.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "ELTWISE",
    "LRN_REGION",
    "POOL",
    "concat_axis",
    "conv_fields",
    "eltwise_operation",
    "enum_name",
    "has_field",
    "lrn_region",
    "spatial",
    "sub_param",
    "window_geometry",
]


def has_field(msg: Any, field: str) -> bool:
    """Whether ``field`` is set: ``HasField`` on a protobuf message, else present and non-zero."""
    try:
        return bool(msg.HasField(field))
    except (AttributeError, ValueError):
        v = getattr(msg, field, None)
        return v is not None and v != 0


def spatial(p: Any, name: str, default: int, hw: str | None = None) -> tuple[int, int]:
    """(h, w) of a convolution/pooling field given as ``name``, ``<hw>_h``/``<hw>_w`` or repeated."""
    hw = hw or name
    if has_field(p, f"{hw}_h") or has_field(p, f"{hw}_w"):
        return int(getattr(p, f"{hw}_h")), int(getattr(p, f"{hw}_w"))
    v = getattr(p, name, None)
    if v is None:
        return default, default
    if isinstance(v, (int, np.integer)):
        # Pooling's fields are optional scalars; an unset one reads as the proto default.
        return int(v), int(v)
    v = list(v)
    if not v:
        return default, default
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


#: Pooling method (enum number or name) -> the ``method`` :func:`pool2d` takes.
POOL = {0: "max", 1: "ave", "MAX": "max", "AVE": "ave"}

#: LRN norm_region (enum number or name) -> the ``region`` :func:`lrn` takes.
LRN_REGION = {0: "across", 1: "within", "ACROSS_CHANNELS": "across", "WITHIN_CHANNEL": "within"}

#: Eltwise operation (enum number or name) -> the ``operation`` :func:`eltwise` takes.
ELTWISE = {0: "prod", 1: "sum", 2: "max", "PROD": "prod", "SUM": "sum", "MAX": "max"}


def sub_param(layer: Any, name: str) -> Any:
    """The ``name`` sub-message (``convolution_param``, ...) of a parsed layer's parameters."""
    return getattr(layer.param, name)


def enum_name(msg: Any, field: str) -> str:
    """Name of an enum field's value (protobuf message) or the value itself (plain objects)."""
    v = getattr(msg, field)
    try:
        return msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[v].name
    except (AttributeError, KeyError):
        return str(v)


def conv_fields(p: Any) -> dict:
    """``kernel``, ``stride``, ``pad`` and ``dilation`` (each ``(h, w)``) of a convolution_param."""
    return {
        "kernel": spatial(p, "kernel_size", 1, "kernel"),
        "stride": spatial(p, "stride", 1),
        "pad": spatial(p, "pad", 0),
        "dilation": spatial(p, "dilation", 1),
    }


def window_geometry(layer: Any) -> dict:
    """The sliding-window parameters of a Convolution or Pooling layer, read as Caffe reads them.

    Returns
    -------
    dict
        ``kernel``, ``stride``, ``pad``, ``dilation`` (each ``(h, w)``), ``group`` and, for
        pooling, ``method`` ("max", "ave" or None for others) and ``global_pooling``.
    """
    if layer.type == "Convolution":
        p = sub_param(layer, "convolution_param")
        return {
            "kernel": spatial(p, "kernel_size", 1, "kernel"),
            "stride": spatial(p, "stride", 1),
            "pad": spatial(p, "pad", 0),
            "dilation": spatial(p, "dilation", 1),
            "group": int(p.group) or 1,
        }
    if layer.type == "Pooling":
        p = sub_param(layer, "pooling_param")
        return {
            "kernel": spatial(p, "kernel_size", 1, "kernel"),
            "stride": spatial(p, "stride", 1),
            "pad": spatial(p, "pad", 0),
            "dilation": (1, 1),
            "group": 1,
            "method": POOL.get(p.pool),
            "global_pooling": bool(p.global_pooling),
        }
    raise ValueError(f"layer {layer.name}: {layer.type} has no sliding window")


def lrn_region(layer: Any) -> str:
    """``"across"`` or ``"within"`` for an LRN layer."""
    return LRN_REGION[sub_param(layer, "lrn_param").norm_region]


def eltwise_operation(layer: Any) -> str:
    """``"sum"``, ``"prod"`` or ``"max"`` for an Eltwise layer."""
    return ELTWISE[sub_param(layer, "eltwise_param").operation]


def concat_axis(layer: Any) -> int:
    """The concatenation axis of a Concat layer (legacy ``concat_dim`` honoured)."""
    p = sub_param(layer, "concat_param")
    return int(p.concat_dim) if has_field(p, "concat_dim") else int(p.axis)
