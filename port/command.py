"""The command-line skeleton every tool of the project shares (``python -m port|parity|mfv|legacy_caffe``).

One contract for all four tools:

- **Dispatch**: a :class:`Tool` holds a registry of subcommands, name -> function of the parsed
  arguments; :meth:`Tool.add_command` registers one and returns its parser for the options.
- **Exit status** (:class:`Exit`): 0 done; 1 a check ran and failed (a verdict, a comparison);
  2 bad input or setup (argparse's usage errors included); 3 the work ran but some items did not
  finish (a rerun resumes them); 70 a bug (an unexpected exception: the traceback is printed with a
  request to report it; 70 is ``EX_SOFTWARE`` of BSD's sysexits.h); 130 interrupted (Ctrl-C, or
  SIGTERM for tools built with ``sigterm=True``). A command returns its status (``None`` is 0).
- **Errors**: a command raises a :class:`~port.errors.ToolError` for bad input or setup; the skeleton
  prints ``tool: error: <message>`` on stderr (one line per line of the message, no traceback; with
  ``<TOOL>_DEBUG=1`` in the environment the traceback is shown instead) and exits 2.
  :class:`~port.errors.UsageError` prints the subcommand's usage first, as argparse does for its own
  errors, whose line carries the same ``tool: error:`` prefix.
- **Lists**: a list of names is one comma-separated value (``--blas atlas,openblas``, parsed by
  :func:`comma_list`); a list of files repeats the option (``--input a.jpg --input b.jpg``), since
  a path may hold a comma.
- **Option names** mean one thing everywhere: ``--weight-seed`` the seed of seeded weights, ``--seed``
  the run's own random stream, ``--out`` the file or folder written, ``--device`` a torch device,
  ``--prototxt``/``--caffemodel`` the Caffe files, ``--model`` a built-in model name.

Example
-------
>>> tool = Tool("demo", "A demonstration.")
>>> p = tool.add_command("hello", lambda args: print("hello", args.name), help="say hello")
>>> _ = p.add_argument("--name", default="world", help="whom to greet (default world)")
>>> tool.main(["hello"])
hello world
0
"""

from __future__ import annotations

import argparse
import enum
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import ToolError, UsageError, WriteError

__all__ = [
    "Exit",
    "Tool",
    "ToolParser",
    "add_caffemodel",
    "add_definition_options",
    "add_device",
    "add_out",
    "add_prototxt",
    "check_output_dir",
    "check_output_file",
    "comma_list",
    "device_arg",
    "error_line",
]


class Exit(enum.IntEnum):
    """Exit statuses of every command line of the project."""

    OK = 0
    CHECK_FAILED = 1
    BAD_INPUT = 2
    INCOMPLETE = 3
    BUG = 70
    INTERRUPTED = 130


def error_line(tool: str, message: object) -> str:
    """``tool: error: message``, the first line of every error report; continuation lines indented."""
    first, *rest = str(message).splitlines() or [""]
    return "\n".join([f"{tool}: error: {first}", *(f"  {line}" for line in rest)])


class ToolParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors read ``tool: error: ...`` (after the usage) and exit 2."""

    def __init__(self, *args: Any, tool: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tool = tool

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(Exit.BAD_INPUT, error_line(self.tool, message) + "\n")


Command = Callable[[argparse.Namespace], "int | None"]


class Tool:
    """A command line made of subcommands, with the project's errors and exit statuses.

    Parameters
    ----------
    name : str
        The tool's name, the prefix of its error lines (``mfv``); its program is ``python -m name``.
    description : str
        The top-level ``--help`` text.
    bad_input : tuple of exception types
        Exceptions besides :class:`~port.errors.ToolError` that this tool reports as bad input
        (exit 2, one line). Keep it to types that only bad input raises here.
    interrupted : str
        What ``tool: interrupted`` adds after Ctrl-C, e.g. what is kept and how to resume.
    sigterm : bool
        Whether SIGTERM unwinds like Ctrl-C while a command runs (exit 130), so that a tool holding
        outside resources (child processes, mounts) releases them. Off by default: without it,
        :mod:`port.atomic` removes live temporaries and the process ends by the signal.
    **parser_kwargs
        Passed to the top-level :class:`ToolParser` (``epilog``, ``formatter_class``).
    """

    def __init__(
        self,
        name: str,
        description: str,
        *,
        bad_input: tuple[type[BaseException], ...] = (),
        interrupted: str = "",
        sigterm: bool = False,
        **parser_kwargs: Any,
    ) -> None:
        self.name = name
        self.bad_input = (ToolError, *bad_input)
        self.interrupted = interrupted
        self.sigterm = sigterm
        self.parser = ToolParser(
            prog=f"python -m {name}", description=description, tool=name, **parser_kwargs
        )
        self._subparsers = self.parser.add_subparsers(
            dest="command", metavar="COMMAND", required=True
        )
        self.commands: dict[str, Command] = {}
        self.parsers: dict[str, ToolParser] = {}

    def add_command(
        self,
        name: str,
        run: Command,
        *,
        help: str,
        description: str | None = None,
        **parser_kwargs: Any,
    ) -> ToolParser:
        """Register subcommand ``name``, run by ``run(args)``; returns its parser for the options.

        ``description`` (default: ``help``) is the subcommand's own ``--help`` text.
        """
        if name in self.commands:
            raise ValueError(f"{self.name}: subcommand {name!r} registered twice")
        parser = self._subparsers.add_parser(
            name, help=help, description=description or help, tool=self.name, **parser_kwargs
        )
        self.commands[name] = run
        self.parsers[name] = parser
        return parser

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse ``argv``, run the subcommand, and return its exit status (see :class:`Exit`).

        Usage errors raise ``SystemExit(2)`` as argparse does; everything else returns a status.
        """
        previous = None
        if self.sigterm and _in_main_thread():
            previous = signal.signal(signal.SIGTERM, _sigterm_interrupts)
        try:
            return self._run(argv)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _run(self, argv: Sequence[str] | None) -> int:
        args = None
        try:  # an option's type may raise a ToolError too: parsing is inside
            args = self.parser.parse_args(argv)
            status = self.commands[args.command](args)
        except UsageError as exc:
            (self.parsers[args.command] if args else self.parser).error(str(exc))
        except self.bad_input as exc:
            if os.environ.get(f"{self.name.upper()}_DEBUG"):
                raise
            print(error_line(self.name, exc), file=sys.stderr)
            return int(Exit.BAD_INPUT)
        except KeyboardInterrupt:
            print(
                f"{self.name}: interrupted" + (f"; {self.interrupted}" if self.interrupted else ""),
                file=sys.stderr,
            )
            return int(Exit.INTERRUPTED)
        except Exception as exc:  # noqa: BLE001 - every other exception is a bug: say so, exit 70
            traceback.print_exc(file=sys.stderr)
            print(error_line(self.name, _bug_message(exc)), file=sys.stderr)
            return int(Exit.BUG)
        return int(Exit.OK if status is None else status)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _sigterm_interrupts(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C: finally-blocks stop child processes and release what is held.
    raise KeyboardInterrupt


def _bug_message(exc: BaseException) -> str:
    return (
        f"internal error ({type(exc).__name__}: {exc}); this is a bug, please report it "
        "with the traceback above and the command line (exit status 70)"
    )


def comma_list(
    choices: Sequence[str] | None = None, *, item: Callable[[str], Any] = str
) -> Callable[[str], list]:
    """An argparse ``type`` for a comma-separated list: ``"a, b,c"`` -> ``["a", "b", "c"]``.

    Empty items are dropped. ``item`` converts each (``int`` for ``--facets 0,1,2``); with
    ``choices`` every item must be one of them. Errors name the offending item.
    """

    def parse(text: str) -> list:
        names = [s.strip() for s in text.split(",") if s.strip()]
        if not names:
            raise argparse.ArgumentTypeError("empty list")
        if choices is not None:
            bad = [n for n in names if n not in choices]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"invalid choice {bad[0]!r} (choose from {', '.join(choices)})"
                )
        try:
            return [item(n) for n in names]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "list"  # argparse names the type in "invalid list value"
    return parse


def device_arg(name: str):
    """An argparse ``type`` for ``--device``: a torch device that exists on this machine."""
    import torch  # here, not at the top: a tool's --help must not wait for torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            "CUDA is not available here (no GPU or no driver); use --device cpu"
        )
    return device


def _check_parents(path: Path) -> None:
    """Refuse a path under a file, and one whose nearest existing folder cannot be written to."""
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise WriteError(f"{parent} is a file, not a folder; choose another place", path=path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write in {parent} (no permission or read-only)", path=path)


def check_output_file(path: str | os.PathLike, *, option: str = "--out") -> Path:
    """Check before any work that ``path`` can become a regular file; returns it as a Path.

    Refused with a :class:`~port.errors.WriteError` naming ``option``: an existing folder, device,
    FIFO or other non-regular file (``/dev/null``), a path under a file, a read-only place. Nothing
    is created, so a run that fails a later check leaves nothing behind.
    """
    p = Path(path)
    if p.exists() or p.is_symlink():
        if p.is_dir():
            raise WriteError(f"{option}: is a folder; a file is needed here", path=p)
        if not p.is_file():
            raise WriteError(f"{option}: not a regular file (a device or FIFO?)", path=p)
        if not os.access(p, os.W_OK):
            raise WriteError(f"{option}: the file exists and cannot be written", path=p)
    _check_parents(p)
    return p


def check_output_dir(path: str | os.PathLike, *, option: str = "--out") -> Path:
    """Check before any work that ``path`` is, or can become, a writable folder; returns it.

    Refused with a :class:`~port.errors.WriteError` naming ``option``: an existing file, device or
    FIFO, a path under a file, a read-only place. Nothing is created.
    """
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise WriteError(f"{option}: not a folder; a folder is needed here", path=p)
        if not os.access(p, os.W_OK | os.X_OK):
            raise WriteError(f"{option}: cannot write in this folder (read-only?)", path=p)
        return p
    _check_parents(p)
    return p


# --- shared options: one declaration, one help text per meaning --------------------------------


def _help(text: str, default: str | None) -> str:
    return f"{text} (default: {default})" if default else text


def add_prototxt(
    parser: argparse.ArgumentParser | Any, *, required: bool = False, default: str | None = None
) -> argparse.Action:
    """``--prototxt FILE``: the Caffe deploy definition; ``default`` says what is used without it."""
    return parser.add_argument(
        "--prototxt",
        required=required,
        metavar="DEPLOY.prototxt",
        help=_help("Caffe deploy definition", default),
    )


def add_caffemodel(
    parser: argparse.ArgumentParser | Any, *, required: bool = False, default: str | None = None
) -> argparse.Action:
    """``--caffemodel FILE``: the Caffe weights; ``default`` says what is used without it."""
    return parser.add_argument(
        "--caffemodel",
        required=required,
        metavar="WEIGHTS.caffemodel",
        help=_help("Caffe weights, checked against the definition", default),
    )


def add_device(
    parser: argparse.ArgumentParser | Any,
    *,
    type: Callable[[str], Any] | None = None,  # noqa: A002 - argparse's own keyword
    note: str = "",
) -> argparse.Action:
    """``--device NAME``: a torch device (default cpu), checked by :func:`device_arg` unless
    ``type`` says otherwise; ``note`` adds where it is checked when that differs."""
    return parser.add_argument(
        "--device",
        type=type or device_arg,
        default="cpu",
        help="torch device, e.g. cpu, cuda or cuda:1 (default cpu)" + (f"; {note}" if note else ""),
    )


def add_out(
    parser: argparse.ArgumentParser | Any, what: str, *, required: bool = True
) -> argparse.Action:
    """``--out PATH``: the file or folder written, described by ``what`` (``"output folder"``)."""
    return parser.add_argument(
        "--out", required=required, metavar="PATH", help=f"{what}; checked before the run starts"
    )


def add_definition_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--proto FORK.proto`` and ``--plugin FILE.py`` (repeatable) to a subcommand."""
    parser.add_argument(
        "--proto",
        type=Path,
        metavar="FORK.proto",
        help="a Caffe fork's caffe.proto (or just its additions) whose extra "
        "messages and fields the definition uses (e.g. SSD's permute_param); "
        "read without protoc",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py|MODULE",
        help="Python file or module run first; it registers custom layer types "
        "with port.register_layer (and parity.numpy_ref.register); repeatable",
    )
