"""Issue 22, item 5: the ``--proto`` reader refuses what protoc refuses, with the file and line.

Each case is a fork ``caffe.proto`` protoc would reject (its tokenizer, its descriptor checks, or
its refusal to hold two definitions of one Caffe field); the port must give one ``CaffeError``
naming the file and the line of the offending token, never another exception.
"""

from __future__ import annotations

import pytest

import port
from port.schema import schema_from_proto_text

HEAD = 'syntax = "proto2";\npackage caffe;\n'

# name -> (body after HEAD, line of the error, fragment of the message)
REFUSED = {
    "x escape without digits": (
        'message PermuteParameter {\n  optional string a = 1 [default = "\\x"];\n}\n',
        4,
        "invalid escape",
    ),
    "octal escape over 255": (
        'message PermuteParameter {\n  optional string a = 1 [default = "\\777"];\n}\n',
        4,
        "octal escape \\777 is over \\377",
    ),
    "unknown escape": (
        'message PermuteParameter {\n  optional string a = 1 [default = "\\q"];\n}\n',
        4,
        "invalid escape",
    ),
    "field number too large": (
        "message PermuteParameter {\n  optional int32 a = 99999999999;\n}\n",
        4,
        "field number 99999999999 is out of range",
    ),
    "negative field number": (
        "message PermuteParameter {\n  optional int32 a = -5;\n}\n",
        4,
        "field number -5 is out of range",
    ),
    "field number zero": (
        "message PermuteParameter {\n  optional int32 a = 0;\n}\n",
        4,
        "field number 0 is out of range",
    ),
    "enum value too large": (
        "enum Mode {\n  A = 0;\n  B = 99999999999;\n}\n",
        5,
        "enum value 99999999999 is out of range",
    ),
    "reserved numbers": (
        "message PermuteParameter {\n  optional int32 a = 19500;\n}\n",
        4,
        "reserved for the protocol buffer implementation",
    ),
    "changed type": (
        "message ConvolutionParameter {\n  optional float num_output = 1;\n}\n",
        4,
        "'optional float' here but 'optional uint32' in Caffe's schema",
    ),
    "changed label": (
        "message ConvolutionParameter {\n  repeated uint32 num_output = 1;\n}\n",
        4,
        "'repeated uint32' here but 'optional uint32'",
    ),
    "changed message type": (
        "message LayerParameter {\n  optional BlobShape convolution_param = 106;\n}\n",
        4,
        "'optional BlobShape' here but 'optional ConvolutionParameter'",
    ),
    "duplicate enum numbers": (
        "enum Mode {\n  A = 0;\n  B = 0;\n}\n",
        5,
        "reuses the number of 'A'; add 'option allow_alias = true;'",
    ),
    "packed on optional": (
        "message PermuteParameter {\n  optional uint32 a = 1 [packed = true];\n}\n",
        4,
        "[packed = true] on a",
    ),
    "packed on strings": (
        "message PermuteParameter {\n  repeated string a = 1 [packed = true];\n}\n",
        4,
        "[packed = true] on a",
    ),
    "field in extensions range": (
        "message PermuteParameter {\n  extensions 100 to 200;\n  optional int32 a = 150;\n}\n",
        5,
        "inside the extension range 100 to 200",
    ),
    "duplicate field number": (
        "message PermuteParameter {\n  optional int32 a = 1;\n  optional int32 b = 1;\n}\n",
        5,
        "reuses the number of 'a'",
    ),
    "duplicate field name": (
        "message PermuteParameter {\n  optional int32 a = 1;\n  optional int32 a = 2;\n}\n",
        5,
        "defined twice",
    ),
    "3000 nested messages": (
        "".join(f"message M{i} {{\n" for i in range(3000)) + "}\n" * 3000,
        103,
        "nested more than 100 deep",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_protoc_refusals_name_file_and_line(name):
    body, line, fragment = REFUSED[name]
    with pytest.raises(port.CaffeError) as err:
        schema_from_proto_text(HEAD + body, path="fork.proto")
    assert err.value.path == "fork.proto"
    assert err.value.line == line, str(err.value)
    assert fragment in str(err.value)


def test_packed_message_field_is_refused():
    body = "message PermuteParameter {\n  repeated BlobShape shapes = 1 [packed = true];\n}\n"
    with pytest.raises(port.CaffeError, match="a message field"):
        schema_from_proto_text(HEAD + body, path="fork.proto")


def test_merged_enum_number_clash_is_refused():
    # Caffe's PoolMethod has MAX = 0, AVE = 1, STOCHASTIC = 2: a fork's new value may not reuse one.
    body = "message PoolingParameter {\n  enum PoolMethod {\n    MIN = 1;\n  }\n}\n"
    with pytest.raises(port.CaffeError, match="reuses the number of Caffe's 'AVE'"):
        schema_from_proto_text(HEAD + body, path="fork.proto")


def test_what_protoc_accepts_still_reads():
    body = (
        "enum Mode {\n  option allow_alias = true;\n  A = 0;\n  B = 0;\n  C = -5;\n}\n"
        "message PermuteParameter {\n"
        "  repeated uint32 order = 1 [packed = true];\n"
        '  optional string s = 2 [default = "a\\n\\x41\\101\\u00e9\\\\"];\n'
        '  optional bytes b = 3 [default = "\\001\\xff\\""];\n'
        "  optional Mode mode = 4 [default = C];\n"
        "  repeated Mode modes = 5 [packed = true];\n"
        "  extensions 100 to max;\n"
        "  optional int32 last = 536870911;\n"
        "}\n"
        "message LayerParameter {\n  optional PermuteParameter permute_param = 202;\n}\n"
        "message ConvolutionParameter {\n  optional uint32 num_output = 1;\n}\n"
    )
    sch = schema_from_proto_text(HEAD + body.replace("536870911", "99"), path="fork.proto")
    msg = sch.message("PermuteParameter")()
    assert msg.s == "a\nAA\u00e9\\"
    assert msg.b == b'\x01\xff"'
    assert msg.mode == -5


def test_last_field_number_is_accepted():
    body = "message PermuteParameter {\n  optional int32 last = 536870911;\n}\n"
    sch = schema_from_proto_text(HEAD + body, path="fork.proto")
    assert sch.message("PermuteParameter").DESCRIPTOR.fields_by_name["last"].number == 536870911
