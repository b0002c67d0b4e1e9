"""Structure-aware fuzzing of real definitions and caffemodels: zero tracebacks.

Real files are parsed into their protobuf tree and damaged the way files get damaged or
hand-edited: a field deleted, a repeated entry duplicated, a value replaced by an odd one (0,
negative, huge, NaN, a wrong name), plus truncation and bit flips of the raw bytes. Whatever comes
out, the port must either build (and run, for small nets) or raise :class:`port.CaffeError`; any
other exception is a defect. The default suite runs a bounded number of examples; ``-m slow`` runs
many more.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import port
from port import schema
from port.caffemodel import read_caffemodel, write_caffemodel
from port.netdef import netdef_from_text, parse_net_text
from port.validate import validate_netdef
from port.zoo import shared_root
from tests.conftest import TINY_NET

ROOT = Path(__file__).resolve().parents[1]
_REF = shared_root() / "reference" / "model-zoo"
DEFINITIONS = {
    "tiny": TINY_NET,
    "mini_resnet": (ROOT / "tests" / "data" / "mini_resnet" / "deploy.prototxt").read_text(),
    "vgg16_v1": (ROOT / "port" / "models" / "vgg16_v1.prototxt").read_text(),
    **{p.parent.name: p.read_text() for p in sorted(_REF.glob("*/deploy.prototxt"))},
}

QUICK = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LONG = settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_INTS = [0, -1, 1, 2, 3, 7, 64, 100000, 2**31 - 1, -(2**31)]
_FLOATS = [0.0, -1.0, 1e-30, 1e30, math.nan, math.inf, -math.inf]
_STRINGS = ["", "data", "conv1", "fc", "prob", "a.b", "a\u2024b", "x/y", "Frobnicate", "Input"]


def _repeated(fd) -> bool:
    return fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED


def _paths(msg, out: list) -> list:
    """Every (message, field, index) in the tree; index None for singular fields."""
    for fd, value in msg.ListFields():
        if _repeated(fd):
            for i in range(len(value)):
                out.append((msg, fd, i))
                if fd.message_type is not None:
                    _paths(value[i], out)
        else:
            out.append((msg, fd, None))
            if fd.message_type is not None:
                _paths(value, out)
    return out


def _odd_value(fd, data):
    if fd.type == fd.TYPE_BOOL:
        return data.draw(st.booleans())
    if fd.cpp_type in (fd.CPPTYPE_FLOAT, fd.CPPTYPE_DOUBLE):
        return data.draw(st.sampled_from(_FLOATS))
    if fd.cpp_type == fd.CPPTYPE_STRING:
        return data.draw(st.sampled_from(_STRINGS))
    if fd.cpp_type == fd.CPPTYPE_ENUM:
        return data.draw(st.sampled_from([v.number for v in fd.enum_type.values]))
    return data.draw(st.sampled_from(_INTS))


def _mutate(root, data) -> None:
    """One structural mutation somewhere in the tree: delete, duplicate or replace."""
    paths = _paths(root, [])
    if not paths:
        return
    msg, fd, i = paths[data.draw(st.integers(0, len(paths) - 1))]
    op = data.draw(st.sampled_from(["delete", "duplicate", "set"]))
    field = getattr(msg, fd.name)
    if op == "delete":
        if i is None:
            msg.ClearField(fd.name)
        else:
            del field[i]
    elif op == "duplicate" and i is not None:
        if fd.message_type is not None:
            field.add().CopyFrom(field[i])
        else:
            field.append(field[i])
    elif fd.message_type is not None:
        (field[i] if i is not None else field).Clear()
    else:
        value = _odd_value(fd, data)
        try:
            if i is None:
                setattr(msg, fd.name, value)
            else:
                field[i] = value
        except (ValueError, TypeError):
            pass  # out of the field's range: the file format cannot hold it either


def _raw_damage(raw: bytes, data) -> bytes:
    kind = data.draw(st.sampled_from(["truncate", "flip", "none"]))
    if kind == "truncate" and raw:
        return raw[: data.draw(st.integers(0, len(raw) - 1))]
    if kind == "flip" and raw:
        b = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 4))):
            j = data.draw(st.integers(0, len(b) - 1))
            b[j] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(b)
    return raw


def _build_and_run(netdef: port.NetDef) -> None:
    """Build the net when it is small, and run it on its declared input; else only validate it."""
    shapes = validate_netdef(netdef)
    if max((math.prod(s) for s in shapes.values()), default=0) > 2_000_000:
        return
    net = port.CaffeNet(netdef)
    weights = sum(p.numel() for p in net.parameters())
    if weights > 5_000_000:
        return
    x = {n: torch.zeros(s) for n, s in netdef.inputs.items()}
    net(x if len(x) > 1 else next(iter(x.values())), blobs="all")


def _check_definition(text: str) -> None:
    try:
        netdef = netdef_from_text(text, path="fuzz.prototxt")
        _build_and_run(netdef)
    except port.CaffeError:
        pass


def _fuzz_definition(data) -> None:
    name = data.draw(st.sampled_from(sorted(DEFINITIONS)))
    net = parse_net_text(DEFINITIONS[name])
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate(net, data)
    text = text_format.MessageToString(net)
    _check_definition(_raw_damage(text.encode(), data).decode("utf-8", "replace"))


@QUICK
@given(st.data())
def test_fuzz_real_definitions(data):
    _fuzz_definition(data)


@pytest.mark.slow
@LONG
@given(st.data())
def test_fuzz_real_definitions_long(data):
    _fuzz_definition(data)


_TINY_DEF = netdef_from_text(TINY_NET)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("w") / "tiny.caffemodel"
    write_caffemodel(path, _TINY_DEF, port.seed_weights(_TINY_DEF, 0))
    return path.read_bytes()


def _fuzz_caffemodel(raw: bytes, folder: Path, data) -> None:
    if data.draw(st.booleans()):
        net = schema.NetParameter()
        net.ParseFromString(raw)
        for _ in range(data.draw(st.integers(1, 3))):
            _mutate(net, data)
        raw = net.SerializeToString()
    raw = _raw_damage(raw, data)
    path = folder / "fuzz.caffemodel"
    path.write_bytes(raw)
    try:
        weights = read_caffemodel(path)
        net = port.CaffeNet(_TINY_DEF)
        net.load_blobs(weights, source=path)
        net(torch.from_numpy(np.ones((2, 3, 13, 11), np.float32)))
    except port.CaffeError:
        pass


@QUICK
@given(st.data())
def test_fuzz_real_caffemodel(tiny_weights, tmp_path_factory, data):
    _fuzz_caffemodel(tiny_weights, tmp_path_factory.mktemp("f"), data)


@pytest.mark.slow
@LONG
@given(st.data())
def test_fuzz_real_caffemodel_long(tiny_weights, tmp_path_factory, data):
    _fuzz_caffemodel(tiny_weights, tmp_path_factory.mktemp("f"), data)
