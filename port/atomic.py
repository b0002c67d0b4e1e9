"""Writing files so that nobody ever sees half of one: a temporary file beside it, then a rename.

Every writer of the project (third-party ones such as safetensors included) writes into the
temporary path that :func:`atomic_path` yields, so a file is either absent, the old one, or whole.
Temporaries never outlive their process by design:

- an exception (Ctrl-C included) removes the temporary at once;
- SIGTERM and SIGHUP, when the program has not set its own handler, remove every live temporary of
  the process and then end it by the same signal, as the default action would;
- ``kill -9`` cannot be caught: a temporary's name carries its process id, and the next write of the
  same file removes temporaries whose process is gone (:func:`remove_stale_temporaries`).

The temporary is a file inside a private folder (``.<name>.tmp<pid>-XXXX/``) beside the destination,
because some writers make temporaries of their own next to the path they are given (safetensors
writes ``.tmpXXXXXX`` and renames it): those then live, and die, inside ours.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import WriteError

__all__ = ["atomic_path", "remove_stale_temporaries", "write_bytes_atomic", "write_text_atomic"]

_live: set[str] = set()
_lock = threading.Lock()
_handlers_installed = False
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)-[^.]*(\..*)?$")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _remove_live(signum, frame) -> None:  # pragma: no cover - runs in a dying process
    for tmp in list(_live):
        _remove(tmp)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    _handlers_installed = True
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        # Only where the program kept the default action: its own handler wins.
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, _remove_live)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove temporaries of ``path`` left by processes that no longer run (``kill -9``).

    Returns the paths removed.
    """
    path = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            m = _TEMP.match(entry.name)
            if m and m["name"] == path.name and not _pid_alive(int(m["pid"])):
                _remove(entry.path)
                removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it over ``path`` when the block succeeds.

    On any exception (Ctrl-C included) the temporary is removed and ``path`` is untouched;
    see the module notes for signals and ``kill -9``. The file gets the ordinary permissions of the
    umask, not ``mkstemp``'s private 0600. ``suffix`` is for writers that insist on an extension
    (``numpy.savez`` appends ``.npz`` otherwise).

    Raises
    ------
    WriteError
        When ``path`` is a folder or its folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError("is a folder; give a file name", path=path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create its folder: {exc.strerror or exc}", path=path) from None
    _install_handlers()
    remove_stale_temporaries(path)
    try:
        folder = tempfile.mkdtemp(prefix=f".{path.name}.tmp{os.getpid()}-", dir=path.parent)
    except OSError as exc:
        raise WriteError(f"cannot write: {exc.strerror or exc}", path=path) from None
    with _lock:
        _live.add(folder)
    tmp = os.path.join(folder, "file" + (suffix or path.suffix))
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise WriteError(f"cannot write: {exc.strerror or exc}", path=path) from None
    except WriteError:
        raise
    except OSError as exc:
        # The writer failed on the temporary (disk full, quota): say which file could not be written.
        raise WriteError(f"cannot write: {exc.strerror or exc}", path=path) from exc
    finally:
        _remove(folder)
        with _lock:
            _live.discard(folder)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))
