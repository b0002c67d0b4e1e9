"""A Caffe fork's ``caffe.proto`` read without protoc: a small proto2 parser and schema merge.

Forks (SSD, Faster R-CNN, ...) copy Caffe's ``caffe.proto`` and add messages and fields, e.g. SSD's
``permute_param``, ``norm_param`` and ``prior_box_param`` in ``LayerParameter``. Their definitions do
not parse against Caffe 1.0's schema. :func:`parse_proto` reads the text of such a file (proto2:
``message``, nested messages and enums, ``optional``/``repeated``/``required`` fields with
``[default = ...]`` and ``[packed = true]``, ``extensions`` ranges, ``reserved``, ``option``) into a
``FileDescriptorProto``; :func:`merge_into` adds its messages, fields and enum values to Caffe 1.0's
own file, so a trimmed file holding only the fork's additions works as well as the fork's whole
``caffe.proto``. Anything else (``oneof``, ``map``, ``group``, ``extend``, ``import``, proto3) is
refused with the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

from .errors import CaffeError

_FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _FDP.TYPE_DOUBLE,
    "float": _FDP.TYPE_FLOAT,
    "int64": _FDP.TYPE_INT64,
    "uint64": _FDP.TYPE_UINT64,
    "int32": _FDP.TYPE_INT32,
    "fixed64": _FDP.TYPE_FIXED64,
    "fixed32": _FDP.TYPE_FIXED32,
    "bool": _FDP.TYPE_BOOL,
    "string": _FDP.TYPE_STRING,
    "bytes": _FDP.TYPE_BYTES,
    "uint32": _FDP.TYPE_UINT32,
    "sfixed32": _FDP.TYPE_SFIXED32,
    "sfixed64": _FDP.TYPE_SFIXED64,
    "sint32": _FDP.TYPE_SINT32,
    "sint64": _FDP.TYPE_SINT64,
}
_LABELS = {
    "optional": _FDP.LABEL_OPTIONAL,
    "repeated": _FDP.LABEL_REPEATED,
    "required": _FDP.LABEL_REQUIRED,
}
_UNSUPPORTED = {"oneof", "map", "group", "extend", "service", "import"}
_MAX_FIELD = 536870911  # 2**29 - 1, protobuf's largest field number
_RESERVED_LO, _RESERVED_HI = 19000, 19999  # protoc refuses these numbers
_MAX_DEPTH = 100  # protobuf's default recursion limit; deeper nesting is refused, not recursed into
_NOT_PACKABLE = {_FDP.TYPE_STRING, _FDP.TYPE_BYTES, _FDP.TYPE_MESSAGE, _FDP.TYPE_GROUP}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|0[xX][0-9a-fA-F]+|\d+))
  | (?P<ident>\.?[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)
  | (?P<symbol>[{}\[\]();=<>,-])
""",
    re.X | re.S,
)


@dataclass
class _Tok:
    kind: str
    text: str
    line: int


def _tokens(text: str, path: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise CaffeError(f"cannot read {text[pos : pos + 20]!r}", path=path, line=line)
        kind = m.lastgroup
        if kind not in ("space", "comment"):
            out.append(_Tok(kind, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str, path: str, base=None) -> None:
        self.path = path
        # Caffe's fields by message name, so that a changed field is named with its line here
        # rather than later, at the merge, without one.
        self.base: dict[str, dict] = {}
        if base is not None:
            _index(base, "", self.base)
        self.scope: list[str] = []
        self.toks = _tokens(text, path)
        self.i = 0
        self.depth = 0

    # -- token helpers ---------------------------------------------------------------------------
    def _peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _line(self) -> int | None:
        tok = self._peek() or (self.toks[-1] if self.toks else None)
        return tok.line if tok else None

    def _fail(self, msg: str, line: int | None = None):
        raise CaffeError(msg, path=self.path, line=line if line is not None else self._line())

    def _next(self) -> _Tok:
        tok = self._peek()
        if tok is None:
            self._fail("unexpected end of file")
        self.i += 1
        return tok

    def _expect(self, text: str) -> _Tok:
        tok = self._next()
        if tok.text != text:
            self._fail(f"expected {text!r}, found {tok.text!r}", tok.line)
        return tok

    def _ident(self) -> _Tok:
        tok = self._next()
        if tok.kind != "ident":
            self._fail(f"expected a name, found {tok.text!r}", tok.line)
        return tok

    def _int(self, what: str = "field number") -> int:
        """An integer in the range protoc allows for ``what`` (a field number or an enum value)."""
        tok = self._next()
        if tok.text == "-" and what == "enum value":  # a sign split from the digits
            tok = _Tok(tok.kind, "-" + self._next().text, tok.line)
        try:
            value = int(tok.text, 0)
        except ValueError:
            if tok.text == "max" and what != "enum value":
                return _MAX_FIELD
            self._fail(f"expected an integer, found {tok.text!r}", tok.line)
        lo, hi = (-(2**31), 2**31 - 1) if what == "enum value" else (1, _MAX_FIELD)
        if not lo <= value <= hi:
            self._fail(f"{what} {tok.text} is out of range ({lo} to {hi})", tok.line)
        if what == "field number" and _RESERVED_LO <= value <= _RESERVED_HI:
            self._fail(
                f"field number {value} is in {_RESERVED_LO}-{_RESERVED_HI}, reserved for the "
                "protocol buffer implementation",
                tok.line,
            )
        return value

    def _skip_statement(self) -> None:
        while self._next().text != ";":
            pass

    # -- grammar ---------------------------------------------------------------------------------
    def parse(self) -> descriptor_pb2.FileDescriptorProto:
        fdp = descriptor_pb2.FileDescriptorProto(name=Path(self.path).name, syntax="proto2")
        while self._peek() is not None:
            tok = self._next()
            if tok.text == "syntax":
                self._expect("=")
                value = self._next().text.strip("\"'")
                if value != "proto2":
                    self._fail(
                        f"syntax {value!r} is not supported (Caffe's files are proto2)", tok.line
                    )
                self._expect(";")
            elif tok.text == "package":
                fdp.package = self._ident().text
                self._expect(";")
            elif tok.text == "option":
                self._skip_statement()
            elif tok.text == "message":
                self._message(fdp.message_type.add())
            elif tok.text == "enum":
                self._enum(fdp.enum_type.add())
            elif tok.text in _UNSUPPORTED:
                self._fail(f"'{tok.text}' is not supported by the port's proto reader", tok.line)
            elif tok.text == ";":
                continue
            else:
                self._fail(f"unexpected {tok.text!r} at top level", tok.line)
        return fdp

    def _message(self, msg) -> None:
        msg.name = self._ident().text
        self.scope.append(msg.name)
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            self._fail(f"messages nested more than {_MAX_DEPTH} deep")
        self._expect("{")
        lines: list[int] = []  # the line of each field, for the checks at the closing brace
        while True:
            tok = self._next()
            if tok.text == "}":
                self.depth -= 1
                self._check_fields(msg, lines)
                self.scope.pop()
                return
            if tok.text == "message":
                self._message(msg.nested_type.add())
            elif tok.text == "enum":
                self._enum(msg.enum_type.add())
            elif tok.text == "extensions":
                start = self._int()
                end = start
                if self._peek() and self._peek().text == "to":
                    self._next()
                    end = self._int()
                msg.extension_range.add(start=start, end=end + 1)
                self._expect(";")
            elif tok.text in ("reserved", "option"):
                self._skip_statement()
            elif tok.text in _LABELS:
                lines.append(tok.line)
                self._field(msg.field.add(), _LABELS[tok.text])
            elif tok.text == ";":
                continue
            elif tok.text in _UNSUPPORTED:
                self._fail(f"'{tok.text}' is not supported by the port's proto reader", tok.line)
            else:
                self._fail(
                    f"expected a field with optional/repeated/required in message "
                    f"{msg.name}, found {tok.text!r}",
                    tok.line,
                )

    def _check_fields(self, msg, lines: list[int]) -> None:
        """protoc's checks within one message: unique names and numbers, none in an extension
        range."""
        names: dict[str, int] = {}
        numbers: dict[int, str] = {}
        for fld, line in zip(msg.field, lines, strict=True):
            if fld.name in names:
                self._fail(f"field {msg.name}.{fld.name} is defined twice", line)
            if fld.number in numbers:
                self._fail(
                    f"field {msg.name}.{fld.name} = {fld.number} reuses the number of "
                    f"{numbers[fld.number]!r}",
                    line,
                )
            names[fld.name] = fld.number
            numbers[fld.number] = fld.name
            old = self.base.get(".".join(self.scope), {}).get(fld.name)
            if old is not None and old.number == fld.number and _differs(old, fld):
                self._fail(
                    f"{msg.name}.{fld.name} is '{_kind(fld)}' here but '{_kind(old)}' in "
                    "Caffe's schema",
                    line,
                )
            for rng in msg.extension_range:
                if rng.start <= fld.number < rng.end:
                    self._fail(
                        f"field {msg.name}.{fld.name} = {fld.number} is inside the extension "
                        f"range {rng.start} to {rng.end - 1}",
                        line,
                    )

    def _field(self, field, label: int) -> None:
        type_tok = self._ident()
        if type_tok.text in _UNSUPPORTED:
            self._fail(
                f"'{type_tok.text}' is not supported by the port's proto reader", type_tok.line
            )
        field.label = label
        if type_tok.text in _SCALARS:
            field.type = _SCALARS[type_tok.text]
        else:
            field.type_name = type_tok.text  # resolved once every name is known
        field.name = self._ident().text
        self._expect("=")
        field.number = self._int()
        if self._peek() and self._peek().text == "[":
            self._next()
            while True:
                opt = self._ident()
                self._expect("=")
                value = self._value(field)
                if opt.text == "default":
                    field.default_value = value
                elif opt.text == "packed":
                    self._packed(field, value, opt.line)
                elif opt.text != "deprecated":
                    self._fail(f"field option {opt.text!r} is not supported", opt.line)
                sep = self._next()
                if sep.text == "]":
                    break
                if sep.text != ",":
                    self._fail(f"expected ',' or ']', found {sep.text!r}", sep.line)
        self._expect(";")

    def _packed(self, field, value: str, line: int) -> None:
        if value not in ("true", "false"):
            self._fail(f"[packed = {value}]: true or false expected", line)
        if value == "true" and (
            field.label != _FDP.LABEL_REPEATED
            or (not field.type_name and field.type in _NOT_PACKABLE)
        ):
            self._fail(
                f"[packed = true] on {field.name}: only repeated fields of numbers, bools or "
                "enums can be packed",
                line,
            )
        field.options.packed = value == "true"

    def _value(self, field=None) -> str:
        tok = self._next()
        if tok.text == "-":  # a sign split from 'inf'
            return "-" + self._next().text
        if tok.kind == "string":
            raw = _unescape(tok.text, self.path, tok.line)
            if field is not None and field.type == _FDP.TYPE_BYTES and not field.type_name:
                return _c_escape(raw)  # a bytes default is stored C-escaped, as protoc does
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                self._fail("a string default that is not UTF-8 (use a bytes field)", tok.line)
        return tok.text

    def _enum(self, enum) -> None:
        enum.name = self._ident().text
        self._expect("{")
        seen: dict[int, str] = {}
        names: set[str] = set()
        aliases: list[tuple[str, int, int]] = []
        while True:
            tok = self._next()
            if tok.text == "}":
                break
            if tok.text == "option" and self._peek() and self._peek().text == "allow_alias":
                self._next()
                self._expect("=")
                enum.options.allow_alias = self._next().text == "true"
                self._expect(";")
                continue
            if tok.text in ("option", "reserved"):
                self._skip_statement()
                continue
            if tok.text == ";":
                continue
            if tok.kind != "ident":
                self._fail(f"expected an enum value in {enum.name}, found {tok.text!r}", tok.line)
            self._expect("=")
            number = self._int("enum value")
            if tok.text in names:
                self._fail(f"enum value {enum.name}.{tok.text} is defined twice", tok.line)
            names.add(tok.text)
            if number in seen:
                aliases.append((tok.text, number, tok.line))
            seen.setdefault(number, tok.text)
            enum.value.add(name=tok.text, number=number)
            if self._peek() and self._peek().text == "[":
                while self._next().text != "]":
                    pass
            self._expect(";")
        if aliases and not enum.options.allow_alias:
            name, number, line = aliases[0]
            self._fail(
                f"enum value {enum.name}.{name} = {number} reuses the number of "
                f"{seen[number]!r}; add 'option allow_alias = true;' to allow it",
                line,
            )


_SIMPLE_ESCAPES = dict(zip("abfnrtv\\?'\"", b"\a\b\f\n\r\t\v\\?'\"", strict=True))
_ESCAPE = re.compile(
    r"\\(?:([0-7]{1,3})|[xX]([0-9a-fA-F]{1,2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.))", re.S
)


def _unescape(text: str, path: str, line: int) -> bytes:
    """A quoted string literal's bytes, with protoc's escapes (C's, plus \\u and \\U)."""
    body = text[1:-1]
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(body):
        out += body[pos : m.start()].encode("utf-8")
        pos = m.end()
        octal, hexa, u4, u8, other = m.groups()
        if octal is not None:
            if int(octal, 8) > 255:
                raise CaffeError(f"octal escape \\{octal} is over \\377", path=path, line=line)
            out.append(int(octal, 8))
        elif hexa is not None:
            out.append(int(hexa, 16))
        elif u4 is not None or u8 is not None:
            code = int(u4 or u8, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise CaffeError(
                    f"escape {m.group()} is not a Unicode character", path=path, line=line
                )
            out += chr(code).encode("utf-8")
        elif other in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[other])
        else:
            raise CaffeError(f"invalid escape {m.group()!r} in a string", path=path, line=line)
    out += body[pos:].encode("utf-8")
    return bytes(out)


def _c_escape(raw: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 and b not in (34, 39, 92) else f"\\{b:03o}" for b in raw)


def _index(container, prefix: str, out: dict[str, dict]) -> None:
    msgs = getattr(container, "message_type", None) or getattr(container, "nested_type", [])
    for msg in msgs:
        full = f"{prefix}.{msg.name}" if prefix else msg.name
        out[full] = {f.name: f for f in msg.field}
        _index(msg, full, out)


def parse_proto(
    text: str, *, path: str | Path = "<proto>", base=None
) -> descriptor_pb2.FileDescriptorProto:
    """Parse proto2 text into a ``FileDescriptorProto`` (type names not yet resolved).

    ``base`` (Caffe's ``FileDescriptorProto``), when given, lets a field that changes the label or
    type of Caffe's field of that name be refused with its line.

    Raises
    ------
    CaffeError
        On anything this reader does not support, with the file and line.
    """
    return _Parser(text, str(path), base).parse()


# -- merging into Caffe's schema -------------------------------------------------------------------


def _names(container, prefix: str, out: dict[str, str]) -> None:
    """Full name -> "message" / "enum" of every type in ``container``."""
    for enum in container.enum_type:
        out[f"{prefix}.{enum.name}"] = "enum"
    for msg in getattr(container, "message_type", None) or getattr(container, "nested_type", []):
        full = f"{prefix}.{msg.name}"
        out[full] = "message"
        _names(msg, full, out)


def _resolve(name: str, scope: str, known: dict[str, str]) -> str | None:
    # Protobuf's rule: look the name up in the innermost scope first, then outwards.
    if name.startswith("."):
        return name if name in known else None
    parts = scope.lstrip(".").split(".")
    while parts:
        candidate = ".".join([*parts, name])
        if f".{candidate}" in known:
            return f".{candidate}"
        parts.pop()
    return f".{name}" if f".{name}" in known else None


def _merge_enum(base, extra, where: str, path: str) -> None:
    have = {v.name: v.number for v in base.value}
    for value in extra.value:
        if value.name in have:
            if have[value.name] != value.number:
                raise CaffeError(
                    f"enum value {where}.{value.name} = {value.number} conflicts with "
                    f"Caffe's {have[value.name]}",
                    path=path,
                    field=value.name,
                )
            continue
        taken = [v.name for v in base.value if v.number == value.number]
        if taken and not (base.options.allow_alias and extra.options.allow_alias):
            raise CaffeError(
                f"enum value {where}.{value.name} = {value.number} reuses the number of "
                f"Caffe's {taken[0]!r} (an alias needs 'option allow_alias = true;')",
                path=path,
                field=value.name,
            )
        base.value.add().CopyFrom(value)


def _merge_message(base, extra, where: str, path: str, added: list[str]) -> None:
    by_name = {f.name: f for f in base.field}
    by_number = {f.number: f for f in base.field}
    for fld in extra.field:
        old = by_name.get(fld.name)
        if old is not None:
            if old.number != fld.number:
                raise CaffeError(
                    f"{where}.{fld.name} = {fld.number} conflicts with Caffe's number {old.number}",
                    path=path,
                    field=fld.name,
                )
            _same_kind(old, fld, f"{where}.{fld.name}", path)
            continue
        if fld.number in by_number:
            raise CaffeError(
                f"{where}.{fld.name} = {fld.number} reuses the number of Caffe's "
                f"field {by_number[fld.number].name!r}",
                path=path,
                field=fld.name,
            )
        base.field.add().CopyFrom(fld)
        added.append(f"{where}.{fld.name}")
    _merge_types(base, extra, where, path, added, nested=True)


def _kind(fld, *, singular: str = "required") -> str:
    label = {_FDP.LABEL_OPTIONAL: "optional", _FDP.LABEL_REPEATED: "repeated"}.get(
        fld.label, singular
    )
    names = {v: k for k, v in _SCALARS.items()}
    return f"{label} {fld.type_name.rsplit('.', 1)[-1] if fld.type_name else names.get(fld.type, fld.type)}"


def _differs(old, new) -> bool:
    # required/optional read one value alike; Debian's Caffe 1.0 has ClipParameter.min required.
    return _kind(old, singular="optional") != _kind(new, singular="optional")


def _same_kind(old, new, where: str, path: str) -> None:
    """A field Caffe has keeps its label and type: a fork that changes either reads Caffe's own
    files differently (protoc refuses the two definitions together)."""
    if _differs(old, new):
        raise CaffeError(
            f"{where} is '{_kind(new)}' here but '{_kind(old)}' in Caffe's schema",
            path=path,
            field=new.name,
        )


def _merge_types(base, extra, where: str, path: str, added: list[str], *, nested: bool) -> None:
    base_msgs = base.nested_type if nested else base.message_type
    extra_msgs = extra.nested_type if nested else extra.message_type
    msgs = {m.name: m for m in base_msgs}
    for msg in extra_msgs:
        name = f"{where}.{msg.name}" if where else msg.name
        if msg.name in msgs:
            _merge_message(msgs[msg.name], msg, name, path, added)
        else:
            base_msgs.add().CopyFrom(msg)
            added.append(name)
    enums = {e.name: e for e in base.enum_type}
    for enum in extra.enum_type:
        name = f"{where}.{enum.name}" if where else enum.name
        if enum.name in enums:
            _merge_enum(enums[enum.name], enum, name, path)
        else:
            base.enum_type.add().CopyFrom(enum)
            added.append(name)


def _resolve_fields(container, scope: str, known: dict[str, str], path: str) -> None:
    msgs = getattr(container, "message_type", None) or getattr(container, "nested_type", [])
    for msg in msgs:
        full = f"{scope}.{msg.name}"
        for fld in msg.field:
            if not fld.type_name or fld.type_name.startswith("."):
                continue
            resolved = _resolve(fld.type_name, full, known)
            if resolved is None:
                raise CaffeError(
                    f"unknown type {fld.type_name!r} of field {full[1:]}.{fld.name}",
                    path=path,
                    field=fld.name,
                )
            fld.type_name = resolved
            fld.type = _FDP.TYPE_ENUM if known[resolved] == "enum" else _FDP.TYPE_MESSAGE
            if fld.options.packed and fld.type == _FDP.TYPE_MESSAGE:
                raise CaffeError(
                    f"[packed = true] on {full[1:]}.{fld.name}, a message field: only repeated "
                    "fields of numbers, bools or enums can be packed",
                    path=path,
                    field=fld.name,
                )
        _resolve_fields(msg, full, known, path)


def merge_into(
    base: descriptor_pb2.FileDescriptorProto,
    extra: descriptor_pb2.FileDescriptorProto,
    *,
    path: str | Path,
) -> list[str]:
    """Add ``extra``'s messages, fields and enum values to ``base`` (in place).

    Fields Caffe already has must keep their numbers; new fields must not reuse a number. Returns the
    names of what was added (``LayerParameter.permute_param``, ``PermuteParameter``...).
    """
    path = str(path)
    if extra.package and extra.package != base.package:
        raise CaffeError(
            f"package {extra.package!r}: a Caffe fork's proto declares 'package {base.package};'",
            path=path,
            field="package",
        )
    added: list[str] = []
    _merge_types(base, extra, "", path, added, nested=False)
    known: dict[str, str] = {}
    _names(base, f".{base.package}", known)
    _resolve_fields(base, f".{base.package}", known, path)
    return added
