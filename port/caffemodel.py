"""Binary caffemodel I/O without materialising the weights as protobuf objects.

A caffemodel is a ``NetParameter`` whose layers carry ``blobs``. Parsing a 233 MB CaffeNet file with
the protobuf runtime would hold the bytes, the parsed message and then the arrays built from it. This
module walks the wire format itself over a memory map: layer names and types are decoded, the float
payloads are viewed in place with ``numpy.frombuffer`` and copied once into the arrays returned.
Writing goes the other way: the layer's non-blob fields are serialised by protobuf and the blob
payloads are appended as raw little-endian bytes.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import schema
from .atomic import atomic_path
from .errors import CaffeError
from .limits import open_regular
from .netdef import V2_TO_V1_TYPES, NetDef

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# NetParameter fields
_NET_LAYER, _NET_LAYERS = 100, 2
# LayerParameter (V2) / V1LayerParameter / V0LayerParameter fields
_V2 = {"name": 1, "type": 2, "blobs": 7}
_V1 = {"name": 4, "type": 5, "blobs": 6, "v0": 1}
_V0 = {"name": 1, "type": 2, "blobs": 50}
# BlobProto fields
_B_SHAPE, _B_DATA, _B_DOUBLE, _B_NUM, _B_CH, _B_H, _B_W = 7, 5, 8, 1, 2, 3, 4


class _Truncated(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Truncated
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf, pos: int, end: int):
    """Yield (field number, wire type, value or (start, stop)) over one message's bytes."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == _I64:
            if pos + 8 > end:
                raise _Truncated
            yield number, wire, (pos, pos + 8)
            pos += 8
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Truncated
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == _I32:
            if pos + 4 > end:
                raise _Truncated
            yield number, wire, (pos, pos + 4)
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _packed_varints(buf, start: int, stop: int) -> list[int]:
    out = []
    pos = start
    while pos < stop:
        v, pos = _varint(buf, pos, stop)
        out.append(v)
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_blob(buf, start: int, stop: int) -> np.ndarray:
    shape: list[int] | None = None
    legacy = {_B_NUM: 0, _B_CH: 0, _B_H: 0, _B_W: 0}
    has_legacy = False
    float_chunks: list[np.ndarray] = []
    double_chunks: list[np.ndarray] = []
    for number, wire, value in _fields(buf, start, stop):
        if number == _B_SHAPE and wire == _LEN:
            shape = []
            for n2, w2, v2 in _fields(buf, *value):
                if n2 != 1:
                    continue
                if w2 == _LEN:
                    shape.extend(_signed(v) for v in _packed_varints(buf, *v2))
                elif w2 == _VARINT:
                    shape.append(_signed(v2))
        elif number in legacy and wire == _VARINT:
            legacy[number] = _signed(value)
            has_legacy = True
        elif number in (_B_DATA, _B_DOUBLE):
            dtype = "<f4" if number == _B_DATA else "<f8"
            chunks = float_chunks if number == _B_DATA else double_chunks
            if wire == _LEN:
                chunks.append(
                    np.frombuffer(
                        buf,
                        dtype=dtype,
                        count=(value[1] - value[0]) // np.dtype(dtype).itemsize,
                        offset=value[0],
                    )
                )
            elif wire in (_I32, _I64):
                # Unpacked repeated floats: rare, element by element.
                chunks.append(np.frombuffer(buf, dtype=dtype, count=1, offset=value[0]))
    zero_axes = shape == []  # a BlobShape with no dims: Caffe's 0-axis blob, one value
    if shape is None:
        dims = [legacy[_B_NUM], legacy[_B_CH], legacy[_B_H], legacy[_B_W]]
        shape = dims if has_legacy else []
    if double_chunks:
        # Caffe's Blob::FromProto reads double_data whenever it is present, data otherwise.
        data = np.concatenate(double_chunks).astype(np.float32)
    elif len(float_chunks) == 1:
        data = float_chunks[0].astype(np.float32, copy=True)
    else:
        data = (np.concatenate(float_chunks) if float_chunks else np.zeros(0, np.float32)).astype(
            np.float32
        )
    if any(d < 0 for d in shape):
        raise ValueError(f"blob shape {tuple(shape)} has a negative dimension")
    # math.prod: numpy's product wraps around past 2**63 and could match a small blob.
    count = math.prod(shape) if shape or zero_axes else 0
    if data.size != count:
        raise ValueError(
            f"blob holds {data.size} values but its shape {tuple(shape)} needs {count}"
        )
    return data.reshape(shape)


def _parse_layer(buf, start: int, stop: int, layout: dict) -> tuple[str, str | int, list]:
    name, ltype, blobs = "", "", []
    for number, wire, value in _fields(buf, start, stop):
        if number == layout["name"] and wire == _LEN:
            name = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace")
        elif number == layout["type"]:
            ltype = bytes(buf[value[0] : value[1]]).decode() if wire == _LEN else value
        elif number == layout["blobs"] and wire == _LEN:
            blobs.append(value)
        elif layout is _V1 and number == _V1["v0"] and wire == _LEN:
            v0name, _, v0blobs = _parse_layer(buf, value[0], value[1], _V0)
            name = name or v0name
            blobs.extend(v0blobs)
    return name, ltype, blobs


def read_caffemodel(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Read the weight blobs of a binary caffemodel (current or legacy V1 layers).

    Parameters
    ----------
    path : str or Path
        The ``.caffemodel`` file.

    Returns
    -------
    dict
        Layer name -> list of float32 arrays, in blob order, shaped as stored (``shape`` or the
        legacy num/channels/height/width). Layers without blobs are left out.

    Raises
    ------
    CaffeError
        When the file is unreadable, truncated or not a caffemodel; the message names the layer
        being read when the damage is inside one.
    """
    path = Path(path)
    try:
        with open_regular(path, "caffemodel") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise CaffeError("weights file is empty", path=path)
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise CaffeError(f"cannot read weights: {exc}", path=path) from None
    try:
        return _read_layers(buf, size, path)
    finally:
        # An error can leave views into the map alive in its traceback; the map then closes once
        # they are collected.
        with contextlib.suppress(BufferError):
            buf.close()


def _field_end(buf, pos: int, end: int) -> int:
    """Position after the one field that starts at ``pos``."""
    key, pos = _varint(buf, pos, end)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise ValueError("field number 0")
    if wire == _VARINT:
        return _varint(buf, pos, end)[1]
    if wire == _LEN:
        length, pos = _varint(buf, pos, end)
        stop = pos + length
    elif wire == _I64:
        stop = pos + 8
    elif wire == _I32:
        stop = pos + 4
    else:
        raise ValueError(f"unsupported wire type {wire}")
    if stop > end:
        raise _Truncated
    return stop


def _partial_layer_name(buf, start: int, end: int, layout: dict) -> str | None:
    """The name of a layer whose bytes stop early, if its name field survived."""
    pos = start
    try:
        while pos < end:
            key, body = _varint(buf, pos, end)
            if key >> 3 == layout["name"] and key & 7 == _LEN:
                length, s = _varint(buf, body, end)
                if s + length <= end:
                    return bytes(buf[s : s + length]).decode("utf-8", "replace")
                return None
            pos = _field_end(buf, pos, end)
    except (_Truncated, ValueError):
        pass
    return None


def _read_layers(buf, size: int, path: Path) -> dict[str, list[np.ndarray]]:
    weights: dict[str, list[np.ndarray]] = {}
    current = None
    seen_layers = False
    pos = 0
    try:
        while pos < size:
            # The top-level fields by hand: a layer cut short by the end of the file is named
            # from the bytes that remain, not taken for the layer before it.
            key, body = _varint(buf, pos, size)
            number, wire = key >> 3, key & 7
            if wire == _LEN and number in (_NET_LAYER, _NET_LAYERS):
                length, start = _varint(buf, body, size)
                layout = _V2 if number == _NET_LAYER else _V1
                if start + length > size:
                    current = _partial_layer_name(buf, start, size, layout)
                    raise _Truncated
                seen_layers = True
                current = None
                name, _, blob_ranges = _parse_layer(buf, start, start + length, layout)
                current = name
                if blob_ranges:
                    weights[name] = [_parse_blob(buf, *r) for r in blob_ranges]
                pos = start + length
            else:
                pos = _field_end(buf, pos, size)
    except _Truncated:
        raise CaffeError("weights file is truncated", path=path, layer=current) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CaffeError(f"weights file is corrupt: {exc}", path=path, layer=current) from None
    if not seen_layers:
        raise CaffeError("no layers found: not a caffemodel (binary NetParameter)", path=path)
    return weights


# --- writing ----------------------------------------------------------------------------------


def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_len(number: int, payload_len: int) -> bytes:
    return _enc_varint((number << 3) | _LEN) + _enc_varint(payload_len)


def _blob_chunks(array: np.ndarray, *, legacy: bool) -> list[bytes | memoryview]:
    # np.require keeps a 0-axis blob (PReLU's shared slope) 0-axis; ascontiguousarray would not.
    data = np.require(array, dtype="<f4", requirements="C")
    head = bytearray()
    if legacy:
        dims = [1] * (4 - data.ndim) + list(data.shape)
        if len(dims) != 4:
            raise CaffeError(f"a {data.ndim}-D blob cannot be written in the legacy V1 format")
        for number, d in zip((_B_NUM, _B_CH, _B_H, _B_W), dims, strict=True):
            head += _enc_varint(number << 3) + _enc_varint(int(d))
    else:
        dims_bytes = b"".join(_enc_varint(int(d)) for d in data.shape)
        shape_msg = _enc_len(1, len(dims_bytes)) + dims_bytes
        head += _enc_len(_B_SHAPE, len(shape_msg)) + shape_msg
    head += _enc_len(_B_DATA, data.nbytes)
    return [bytes(head), memoryview(data).cast("B")]


def _layer_message(layer, *, legacy: bool) -> bytes:
    if not legacy:
        msg = type(layer.param)()  # Caffe 1.0's class, or a fork schema's
        msg.CopyFrom(layer.param)
        del msg.blobs[:]
        return msg.SerializeToString()
    v1 = schema.V1LayerParameter(name=layer.name)
    if layer.type not in V2_TO_V1_TYPES:
        raise CaffeError(f"layer type {layer.type!r} has no legacy V1 equivalent", layer=layer.name)
    v1.type = (
        schema.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"]
        .values_by_name[V2_TO_V1_TYPES[layer.type]]
        .number
    )
    v1.bottom.extend(layer.bottoms)
    v1.top.extend(layer.tops)
    for f in schema.V1LayerParameter.DESCRIPTOR.fields:
        if (
            f.name.endswith("_param")
            and f.name in layer.param.DESCRIPTOR.fields_by_name
            and layer.param.HasField(f.name)
        ):
            # by bytes: a fork schema's messages are other classes than Caffe 1.0's
            getattr(v1, f.name).MergeFromString(getattr(layer.param, f.name).SerializeToString())
    return v1.SerializeToString()


def write_caffemodel(
    path: str | Path,
    netdef: NetDef,
    weights: Mapping[str, list[np.ndarray]],
    *,
    format: str = "v2",
) -> None:
    """Write a binary caffemodel that Caffe 1.0 loads.

    Parameters
    ----------
    path : str or Path
        Destination; written to a temporary file in the same folder and renamed, so a failure
        leaves no partial file.
    netdef : NetDef
        The definition whose layers (and their order) the file records.
    weights : mapping
        Layer name -> blobs (float32 arrays in Caffe's layout).
    format : {"v2", "v1"}
        ``v2`` writes ``layer`` entries with ``shape``; ``v1`` writes legacy ``layers`` entries with
        num/channels/height/width, as 2014-era files do.
    """
    if format not in ("v1", "v2"):
        raise CaffeError(f"unknown caffemodel format {format!r} (v1 or v2)")
    legacy = format == "v1"
    path = Path(path)
    if not netdef.layers:
        raise CaffeError(
            "the definition has no layers in the TEST phase (layers included only in "
            "TRAIN are left out): a caffemodel of it would hold nothing",
            path=netdef.path,
            field="layer",
        )
    header = schema.NetParameter(name=netdef.name)
    if legacy:
        for name, shape in netdef.inputs.items():
            header.input.append(name)
            header.input_dim.extend(shape)
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(header.SerializeToString())
        for layer in netdef.layers:
            chunks: list[bytes | memoryview] = [_layer_message(layer, legacy=legacy)]
            blob_field = _V1["blobs"] if legacy else _V2["blobs"]
            for blob in weights.get(layer.name, []):
                parts = _blob_chunks(blob, legacy=legacy)
                chunks.append(_enc_len(blob_field, sum(len(p) for p in parts)))
                chunks.extend(parts)
            out.write(_enc_len(_NET_LAYERS if legacy else _NET_LAYER, sum(len(c) for c in chunks)))
            for c in chunks:
                out.write(c)
