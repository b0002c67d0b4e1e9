"""The base class of every layer module and the parameter helpers they share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import CaffeError
from ..netdef import LayerDef

Shape = tuple[int, ...]


def capturing_graph() -> bool:
    """Whether a tracer, exporter or compiler is recording torch operators: compiled kernels and
    custom autograd functions step aside then, so the recorded graph holds standard operators."""
    return (
        torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


def _canonical_axis(axis: int, ndim: int, layer: LayerDef, fld: str) -> int:
    if not -ndim <= axis < ndim:
        raise CaffeError(
            f"axis {axis} out of range for a {ndim}-D bottom", layer=layer.name, field=fld
        )
    return axis % ndim


def _pair(
    values: Sequence[int],
    h: int | None,
    w: int | None,
    default: int | None,
    layer: LayerDef,
    fld: str,
) -> tuple[int, int]:
    """Resolve Caffe's ``x`` / ``x_h`` + ``x_w`` spelling of a 2-D size."""
    if h is not None or w is not None:
        if values:
            raise CaffeError(
                f"{fld} given both as {fld} and as {fld}_h/{fld}_w", layer=layer.name, field=fld
            )
        if h is None or w is None:
            raise CaffeError(f"both {fld}_h and {fld}_w are needed", layer=layer.name, field=fld)
        return int(h), int(w)
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    if not values:
        if default is None:
            raise CaffeError(f"{fld} is required", layer=layer.name, field=fld)
        return default, default
    raise CaffeError(
        f"{len(values)} values for {fld}: only 2-D layers are supported",
        layer=layer.name,
        field=fld,
    )


def _enum_name(msg, fld: str) -> str:
    """The name of an enum field's value (``pooling_param.pool`` -> ``"MAX"``)."""
    return msg.DESCRIPTOR.fields_by_name[fld].enum_type.values_by_number[getattr(msg, fld)].name


def _opt(msg, name: str):
    return getattr(msg, name) if msg.HasField(name) else None


class CaffeLayer(nn.Module):
    """Base class: a Caffe layer as a module with Caffe-layout weight blobs."""

    caffe_type = ""
    # Bottoms (by index) Caffe never back-propagates to, with the reason its Backward gives; the
    # module uses them detached, so no gradient is invented for them.
    no_gradient: dict[int, str] = {}
    # Whether Caffe computes a gradient for this layer at all (False: Backward is NOT_IMPLEMENTED).
    backward = True
    # How Caffe's backward treats this layer, for the README table when the two above do not say.
    backward_note: str | None = None

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__()
        self.layer_name = layer.name
        self.bottom_shapes = bottom_shapes
        self.blobs = nn.ParameterList()

    def blob_shapes(self) -> list[Shape]:
        return []

    def top_shapes(self) -> list[Shape]:
        raise NotImplementedError

    def _make_blobs(self) -> None:
        # Uninitialised: the net zeroes them or binds loaded weights, so that converting a large
        # model never holds a throw-away copy of every weight.
        for shape in self.blob_shapes():
            self.blobs.append(nn.Parameter(torch.empty(shape)))

    def extra_repr(self) -> str:
        return f"{self.layer_name!r}"
