"""The project's error types: bad input or setup (``ToolError``), and bad Caffe input in particular.

Every command line maps :class:`ToolError` to one ``tool: error: ...`` line and exit status 2 (see
:mod:`port.command`); each package raises its own subclass, so that a caller can catch exactly the
failures it means to handle.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CaffeError", "ToolError", "UsageError", "WriteError"]


class ToolError(Exception):
    """Bad input or setup: something the user has to fix (a file, an option, the environment).

    The message is the whole report: it names what is wrong and, where it can, how to fix it.
    """


class UsageError(ToolError):
    """The command line itself is wrong (options that do not go together, a name that is not there).

    A command line prints the subcommand's usage before the error line.
    """


class CaffeError(ToolError):
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


class WriteError(ToolError):
    """An output file that cannot be written (a folder in its place, no permission, disk full).

    The message starts with the file; ``path`` keeps it.
    """

    def __init__(self, message: str, *, path: str | Path) -> None:
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")
