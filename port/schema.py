"""Caffe 1.0's protobuf schema, built at import time from the tables in :mod:`port.schema_tables`.

No pycaffe and no protoc: the descriptors are assembled with the protobuf runtime that pip installs,
so the module works with whatever protobuf release is current. Field numbers, types and defaults are
those of Caffe 1.0 (BVLC ``caffe.proto``), including the deprecated V1 and V0 layer messages, so that
every deploy prototxt and caffemodel that Caffe 1.0 reads parses here too. Training-only messages are
kept (``data_param``, ``loss_param``...) because deploy files written by hand often carry them.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from .schema_tables import SCHEMA, TOP_LEVEL_ENUMS

_PACKAGE = "caffe"

_SCALARS = {
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
}


def _enum_values(table) -> list[tuple[str, int]]:
    if isinstance(table, dict):
        return list(table.items())
    return [(name, i) for i, name in enumerate(table)]


def _add_enum(container, name: str, table) -> None:
    enum = container.enum_type.add(name=name)
    for value_name, number in _enum_values(table):
        enum.value.add(name=value_name, number=number)


def _is_enum(type_name: str) -> bool:
    if type_name in TOP_LEVEL_ENUMS:
        return True
    parent, _, child = type_name.partition(".")
    return bool(child) and child in SCHEMA.get(parent, {}).get("enums", {})


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="caffe_mfv_port/caffe.proto", package=_PACKAGE, syntax="proto2"
    )
    for name, table in TOP_LEVEL_ENUMS.items():
        _add_enum(proto, name, table)
    for msg_name, spec in SCHEMA.items():
        msg = proto.message_type.add(name=msg_name)
        for enum_name, table in spec.get("enums", {}).items():
            _add_enum(msg, enum_name, table)
        for name, number, type_name, label, default, packed in spec["fields"]:
            field = msg.field.add(name=name, number=number)
            field.label = (
                descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
                if label == "r"
                else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
            )
            if type_name in _SCALARS:
                field.type = _SCALARS[type_name]
            elif _is_enum(type_name):
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
                field.type_name = f".{_PACKAGE}.{type_name}"
            else:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{type_name}"
            if default is not None:
                field.default_value = (
                    str(default).lower() if isinstance(default, bool) else str(default)
                )
            if packed:
                field.options.packed = True
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_build_file())


def message_class(name: str):
    """The generated protobuf class of one Caffe message, e.g. ``message_class("NetParameter")``."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


class Schema:
    """A Caffe schema: Caffe 1.0's, or Caffe 1.0's plus a fork's ``caffe.proto`` additions.

    ``source`` is the fork's .proto path and ``text`` its content (None / "" for Caffe 1.0's), kept
    so a converted artefact can rebuild the same schema. ``added`` names the fork's additions.
    """

    def __init__(
        self, pool, *, source: str | None = None, text: str = "", added: tuple[str, ...] = ()
    ) -> None:
        self.pool = pool
        self.source = source
        self.text = text
        self.added = added

    # A schema never changes once built: copies share it, pickles rebuild it from its text.
    def __copy__(self) -> Schema:
        return self

    def __deepcopy__(self, memo) -> Schema:
        return self

    def __reduce__(self):
        if self.source is None:
            return (_caffe_schema, ())
        return (_fork_schema, (self.text, self.source))

    def message(self, name: str):
        return message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")
        )

    @property
    def NetParameter(self):  # noqa: N802 - the protobuf message's name
        return self.message("NetParameter")

    @property
    def LayerParameter(self):  # noqa: N802
        return self.message("LayerParameter")

    @property
    def V1LayerParameter(self):  # noqa: N802
        return self.message("V1LayerParameter")


CAFFE = Schema(_POOL)


def _caffe_schema() -> Schema:
    return CAFFE


def _fork_schema(text: str, path: str) -> Schema:
    return schema_from_proto_text(text, path=path)


_FORKS: dict[tuple[str, str], Schema] = {}


def schema_from_proto_text(text: str, *, path: str = "<proto>") -> Schema:
    """Caffe 1.0's schema extended with a fork's ``caffe.proto`` (its text), without protoc.

    Raises
    ------
    CaffeError
        When the file uses what the reader does not support, conflicts with Caffe's field numbers
        or names an unknown type; the message names the file, line and field.
    """
    from .errors import CaffeError
    from .protofile import merge_into, parse_proto

    key = (path, text)
    if key in _FORKS:
        return _FORKS[key]
    base = _build_file()
    base.name = "caffe_mfv_port/fork_caffe.proto"
    added = merge_into(base, parse_proto(text, path=path, base=base), path=path)
    pool = descriptor_pool.DescriptorPool()
    try:
        pool.Add(base)
    except (TypeError, ValueError) as exc:
        raise CaffeError(f"the fork's schema does not build: {exc}", path=path) from None
    schema = Schema(pool, source=path, text=text, added=tuple(added))
    _FORKS[key] = schema
    return schema


def load_proto(path) -> Schema:
    """Caffe 1.0's schema extended with the fork ``caffe.proto`` at ``path`` (see
    :func:`schema_from_proto_text`)."""
    from .limits import read_text

    text = read_text(path, "proto")
    return schema_from_proto_text(text, path=str(path))


NetParameter = message_class("NetParameter")
LayerParameter = message_class("LayerParameter")
V1LayerParameter = message_class("V1LayerParameter")
BlobProto = message_class("BlobProto")
BlobShape = message_class("BlobShape")
