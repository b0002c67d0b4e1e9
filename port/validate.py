"""One pass over a parsed definition that checks every shape before anything is allocated.

Caffe checks geometry in each layer's ``Reshape`` and in ``Net::Init`` and stops with a ``CHECK``
failure; the port checks the same things up front and raises :class:`~port.errors.CaffeError`
naming the file, the line, the layer and the field. The pass is generic: it builds each layer on
PyTorch's ``meta`` device (shapes only, no memory; a constructor that needs real tensors is built on
the CPU instead), asks it for its ``top_shapes()`` and checks them.
Rules specific to one layer type live in :data:`TYPE_RULES`.

Checks, with Caffe's message where it has one:

- every input dimension is positive;
- no blob is produced by two layers unless the second works in place (``Top blob 'x' produced by
  multiple sources``);
- every top dimension is positive (a kernel or pooling window larger than the padded input, a
  ``num_output`` of 0);
- no blob, weight blob included, holds more than ``INT_MAX`` values (``blob size exceeds INT_MAX``);
- the weights fit in this machine's memory;
- Flatten: ``axis`` not after ``end_axis``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping

import torch

from .errors import CaffeError
from .layers import CaffeLayer, Shape, build_layer
from .netdef import LayerDef, NetDef

__all__ = ["MAX_BLOB_COUNT", "TYPE_RULES", "validate_netdef"]

#: Caffe's ``Blob::Reshape`` limit: a blob's count is an ``int``.
MAX_BLOB_COUNT = 2**31 - 1


def _fmt(shape: Shape) -> str:
    return "x".join(map(str, shape))


def _check_flatten(layer: LayerDef, module: CaffeLayer) -> None:
    start, end = getattr(module, "start", None), getattr(module, "end", None)
    if start is not None and end is not None and start > end:
        p = layer.param.flatten_param
        raise CaffeError(
            f"axis {p.axis} comes after end_axis {p.end_axis} (Caffe: start_axis must "
            "not be larger than end_axis)",
            field="flatten_param.axis",
        )


#: How many bottoms and tops a layer type takes (min, max; None: no limit), as Caffe's
#: ``ExactNumBottomBlobs`` and friends declare them, for the layers the port implements. Types not
#: listed are checked by their own constructors.
ARITY: dict[str, tuple[tuple[int, int | None], tuple[int, int | None]]] = {
    **{
        t: ((1, 1), (1, 1))
        for t in (
            "Convolution",
            "Pooling",
            "LRN",
            "InnerProduct",
            "ReLU",
            "Dropout",
            "Softmax",
            "BatchNorm",
            "Flatten",
            "Sigmoid",
            "TanH",
        )
    },
    "Scale": ((1, 2), (1, 1)),
    "Eltwise": ((2, None), (1, 1)),
    "Concat": ((1, None), (1, 1)),
    "Split": ((1, 1), (1, None)),
}


def _count(n: int, limits: tuple[int, int | None]) -> str | None:
    lo, hi = limits
    if n < lo or (hi is not None and n > hi):
        return f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
    return None


def _check_arity(layer: LayerDef) -> None:
    limits = ARITY.get(layer.type)
    if limits is None:
        return
    for what, n, lim in (
        ("bottom", len(layer.bottoms), limits[0]),
        ("top", len(layer.tops), limits[1]),
    ):
        want = _count(n, lim)
        if want is not None:
            raise CaffeError(f"{layer.type} takes {want} {what} blob(s), {n} given", field=what)


#: Checks that only one layer type needs: ``rule(layer, module)`` raises a CaffeError (the layer
#: and place are added by the pass).
TYPE_RULES: dict[str, Callable[[LayerDef, CaffeLayer], None]] = {
    "Flatten": _check_flatten,
}


def _num_output_field(layer: LayerDef) -> str | None:
    """``<x>_param.num_output`` when the layer sets it to 0."""
    for desc, value in layer.param.ListFields():
        if desc.name.endswith("_param") and desc.message_type is not None:
            nf = desc.message_type.fields_by_name.get("num_output")
            if nf is not None and value.HasField("num_output") and value.num_output == 0:
                return f"{desc.name}.num_output"
    return None


def _why_not_positive(layer: LayerDef, module: CaffeLayer, top: Shape) -> tuple[str, str | None]:
    """A message for a top with a dimension < 1, with the likely cause and field."""
    fld = _num_output_field(layer)
    if fld is not None:
        return "num_output must be positive (Caffe: num_output should be > 0)", fld
    kernel = getattr(module, "kernel", None)
    pad = getattr(module, "pad", (0, 0))
    dilation = getattr(module, "dilation", (1, 1))
    bottom = module.bottom_shapes[0] if module.bottom_shapes else ()
    if kernel is not None and len(bottom) == 4:
        extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
        padded = [s + 2 * p for s, p in zip(bottom[2:], pad, strict=True)]
        if any(e > p for e, p in zip(extent, padded, strict=True)):
            param = "pooling_param" if layer.type == "Pooling" else "convolution_param"
            return (
                f"the {'pooling window' if layer.type == 'Pooling' else 'kernel'} "
                f"({_fmt(tuple(extent))}) is larger than the padded input ({_fmt(tuple(padded))}); "
                f"the top would have shape {_fmt(top)}",
                f"{param}.kernel_size",
            )
    return f"the top would have shape {_fmt(top)}: every dimension must be positive", None


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _build(layer: LayerDef, bottom_shapes: list[Shape]) -> CaffeLayer:
    """Build one layer on the ``meta`` device; a constructor that fails on a definition it did not
    foresee still ends in a CaffeError naming the layer, not a traceback."""
    try:
        with torch.device("meta"):
            return build_layer(layer, bottom_shapes)
    except CaffeError:
        raise
    except RuntimeError:
        pass  # a constructor that computes with tensor values cannot run on meta: build it for real
    except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as exc:
        raise _unforeseen(layer, bottom_shapes, exc) from None
    try:
        return build_layer(layer, bottom_shapes)
    except CaffeError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, ArithmeticError, RuntimeError) as exc:
        raise _unforeseen(layer, bottom_shapes, exc) from None


def _unforeseen(layer: LayerDef, bottom_shapes: list[Shape], exc: Exception) -> CaffeError:
    return CaffeError(
        f"cannot build this {layer.type} layer on bottoms of shape "
        f"{[_fmt(s) for s in bottom_shapes]}: {type(exc).__name__}: {exc}"
    )


def layer_error(netdef: NetDef, layer: LayerDef, exc: CaffeError) -> CaffeError:
    """``exc`` (which names at most its field) located: file, line and layer added."""
    return CaffeError(
        exc.reason, path=netdef.path, layer=layer.name, field=exc.field, line=layer.line
    )


def validate_netdef(netdef: NetDef, *, memory_bytes: int | None = None) -> dict[str, Shape]:
    """Check every input, top and weight shape of ``netdef`` without allocating anything.

    Parameters
    ----------
    netdef : NetDef
    memory_bytes : int, optional
        Memory the float32 weights must fit in (default: this machine's physical memory).

    Returns
    -------
    dict of str to tuple of int
        Every blob's shape (final shape for blobs rewritten in place).

    Raises
    ------
    CaffeError
        At the first problem, naming file, line, layer and field.
    """
    shapes = _input_shapes(netdef)
    weight_values = 0
    for layer in netdef.layers:
        _check_bottoms_and_tops(netdef, layer, shapes)
        try:
            module, tops, count = _build_and_check(layer, [shapes[b] for b in layer.bottoms])
        except CaffeError as exc:
            raise layer_error(netdef, layer, exc) from None
        weight_values += count
        shapes.update(_checked_tops(netdef, layer, module, tops))
    limit = _memory_bytes() if memory_bytes is None else memory_bytes
    if limit is not None and 4 * weight_values > limit:
        raise CaffeError(
            f"the weights need {4 * weight_values / 1e9:.1f} GB as float32; this "
            f"machine has {limit / 1e9:.1f} GB",
            path=netdef.path,
        )
    return shapes


def _input_shapes(netdef: NetDef) -> dict[str, Shape]:
    """The net's input shapes, each checked (positive, within Caffe's blob size limit)."""
    shapes: dict[str, Shape] = {}
    for name, shape in netdef.inputs.items():
        if any(d < 1 for d in shape):
            raise CaffeError(
                f"input {name!r} has shape {_fmt(shape)}: every dimension must be positive",
                path=netdef.path,
                field="input_shape",
            )
        if math.prod(shape) > MAX_BLOB_COUNT:
            raise CaffeError(
                f"input {name!r} of shape {_fmt(shape)} exceeds Caffe's blob size "
                f"limit (INT_MAX = {MAX_BLOB_COUNT} values)",
                path=netdef.path,
                field="input_shape",
            )
        shapes[name] = shape
    return shapes


def check_bottoms_exist(netdef: NetDef, layer: LayerDef, shapes: Mapping[str, Shape]) -> None:
    """Every bottom of ``layer`` is one of the blobs in ``shapes`` (inputs or earlier tops)."""
    missing = [b for b in layer.bottoms if b not in shapes]
    if missing:
        raise CaffeError(
            f"bottom blob {missing[0]!r} is not produced by any earlier layer",
            path=netdef.path,
            layer=layer.name,
            field="bottom",
            line=layer.line,
        )


def check_top_count(netdef: NetDef, layer: LayerDef, tops: list[Shape]) -> None:
    """``layer`` names as many tops as its module produces."""
    if len(tops) != len(layer.tops):
        raise CaffeError(
            f"{layer.type} produces {len(tops)} tops, {len(layer.tops)} named",
            path=netdef.path,
            layer=layer.name,
            field="top",
            line=layer.line,
        )


def _check_bottoms_and_tops(netdef: NetDef, layer: LayerDef, shapes: dict[str, Shape]) -> None:
    """Every bottom already exists; no top exists already unless the layer writes it in place."""
    check_bottoms_exist(netdef, layer, shapes)
    for i, top in enumerate(layer.tops):
        in_place = i < len(layer.bottoms) and layer.bottoms[i] == top
        if top in shapes and not in_place:
            raise CaffeError(
                f"top blob {top!r} is produced by multiple sources (an earlier "
                "layer or input already produces it, and this layer does not work "
                "in place)",
                path=netdef.path,
                layer=layer.name,
                field="top",
                line=layer.line,
            )


def _build_and_check(
    layer: LayerDef, bottom_shapes: list[Shape]
) -> tuple[CaffeLayer, list[Shape], int]:
    """Build ``layer`` on the meta device and check its type's rules and its weight blobs; the
    module, its top shapes and its number of weight values. Errors name the field only (the
    caller adds file, line and layer)."""
    _check_arity(layer)
    module = _build(layer, bottom_shapes)
    rule = TYPE_RULES.get(layer.type)
    if rule is not None:
        rule(layer, module)
    weight_values = sum(
        _weight_blob_count(layer, blob_shape) for blob_shape in module.blob_shapes()
    )
    try:
        tops = module.top_shapes()
    except (ValueError, TypeError, IndexError, ArithmeticError) as exc:
        raise CaffeError(f"cannot compute the top shapes: {type(exc).__name__}: {exc}") from None
    return module, tops, weight_values


def _weight_blob_count(layer: LayerDef, blob_shape: Shape) -> int:
    """The number of values of one weight blob, checked (positive dimensions, Caffe's limit)."""
    count = math.prod(blob_shape)
    if any(d < 1 for d in blob_shape):
        fld = _num_output_field(layer)
        if fld is not None:
            raise CaffeError(
                "num_output must be positive (Caffe: num_output should be > 0)", field=fld
            )
        raise CaffeError(
            f"weight blob of shape {_fmt(blob_shape)}: every dimension must be positive",
            field="blobs",
        )
    if count > MAX_BLOB_COUNT:
        raise CaffeError(
            f"weight blob of shape {_fmt(blob_shape)} exceeds Caffe's blob "
            f"size limit (INT_MAX = {MAX_BLOB_COUNT} values)",
            field="blobs",
        )
    return count


def _checked_tops(
    netdef: NetDef, layer: LayerDef, module: CaffeLayer, tops: list[Shape]
) -> dict[str, Shape]:
    """The layer's tops by name, as int tuples, each checked (one per name, positive, within
    Caffe's blob size limit)."""
    check_top_count(netdef, layer, tops)
    checked: dict[str, Shape] = {}
    for name, top in zip(layer.tops, tops, strict=True):
        top = tuple(int(d) for d in top)
        if any(d < 1 for d in top):
            reason, fld = _why_not_positive(layer, module, top)
            raise CaffeError(
                f"top {name!r}: {reason}",
                path=netdef.path,
                layer=layer.name,
                field=fld,
                line=layer.line,
            )
        if math.prod(top) > MAX_BLOB_COUNT:
            raise CaffeError(
                f"top {name!r} of shape {_fmt(top)} exceeds Caffe's blob size "
                f"limit (INT_MAX = {MAX_BLOB_COUNT} values)",
                path=netdef.path,
                layer=layer.name,
                line=layer.line,
            )
        checked[name] = top
    return checked
