"""The one exception type for bad Caffe input, with the place it was found."""

from __future__ import annotations

from pathlib import Path


class CaffeError(Exception):
    """Bad Caffe input: a malformed definition or weights file, or a net that cannot be built.

    The message names the file, the layer, the field and, for text input, the line, as far as they are
    known; they are also kept as attributes for programs that want to point at the place.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        layer: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.layer = layer
        self.field = field
        self.line = line
        self.reason = message
        where = []
        if self.path:
            where.append(self.path if line is None else f"{self.path}:{line}")
        if layer is not None:
            where.append(f"layer {layer!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class WriteError(CaffeError):
    """An output file that cannot be written (a folder in its place, no permission, disk full).

    A :class:`CaffeError`, so that every command reports it in one line like bad input.
    """
