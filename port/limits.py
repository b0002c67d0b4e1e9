"""Bounded reads: every input file the tools read goes through here.

A path given as input must be a regular file (a device such as ``/dev/zero`` never ends, a FIFO
blocks until someone writes to it) and no larger than the cap of its kind. Each cap has one
environment variable, in megabytes (10**6 bytes), that raises it:

=============  ================================  =========  ===========================================
kind           environment variable              default    why this default
=============  ================================  =========  ===========================================
definition     ``CAFFE_MFV_MAX_DEFINITION_MB``   64         real deploy files are under 1 MB
proto          ``CAFFE_MFV_MAX_PROTO_MB``        16         Caffe's and forks' ``caffe.proto`` ~0.1 MB
caffemodel     ``CAFFE_MFV_MAX_CAFFEMODEL_MB``   2000       VGG16/VGG19, the largest zoo models, ~575 MB
npz            ``CAFFE_MFV_MAX_NPZ_MB``          2000       arrays once decompressed; a golden ~400 MB
npy            ``CAFFE_MFV_MAX_NPY_MB``          2000       one array (an input batch, a mean)
=============  ================================  =========  ===========================================

The file is opened before it is checked (``O_NONBLOCK``, then ``fstat`` on the open descriptor), so
a FIFO swapped in after a check cannot block the reader.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import CaffeError

__all__ = ["CAPS", "Cap", "cap_bytes", "check_size", "open_regular", "read_bounded", "read_text"]


@dataclass(frozen=True)
class Cap:
    """The size cap of one kind of input file."""

    env: str
    default_mb: int
    what: str


CAPS: dict[str, Cap] = {
    "definition": Cap("CAFFE_MFV_MAX_DEFINITION_MB", 64, "definitions"),
    "proto": Cap("CAFFE_MFV_MAX_PROTO_MB", 16, ".proto files"),
    "caffemodel": Cap("CAFFE_MFV_MAX_CAFFEMODEL_MB", 2000, "caffemodels"),
    "npz": Cap("CAFFE_MFV_MAX_NPZ_MB", 2000, ".npz archives (their arrays, decompressed)"),
    "npy": Cap("CAFFE_MFV_MAX_NPY_MB", 2000, ".npy arrays"),
}


def cap_bytes(kind: str) -> int:
    """The cap of ``kind`` in bytes: its environment variable (megabytes) or the default.

    Raises
    ------
    CaffeError
        When the environment variable is not a positive number.
    """
    cap = CAPS[kind]
    raw = os.environ.get(cap.env)
    if raw is None or raw == "":
        return cap.default_mb * 10**6
    try:
        mb = float(raw)
    except ValueError:
        mb = float("nan")
    if not (mb > 0 and mb < 1e12):
        raise CaffeError(f"{cap.env}={raw!r}: a size in megabytes (a positive number) expected")
    return int(mb * 10**6)


def _cap_message(kind: str, size: int, declared: bool = False) -> str:
    cap = CAPS[kind]
    how = "declares" if declared else "is"
    return (
        f"{how} {size / 1e6:.1f} MB, over the {cap_bytes(kind) / 1e6:g} MB cap on {cap.what}; "
        f"raise it with {cap.env}=<MB>"
    )


def check_size(path: str | Path, size: int, kind: str, *, declared: bool = False) -> None:
    """Refuse ``size`` bytes of ``kind`` when over its cap; ``declared`` for sizes read from a
    header (not yet read), which the message says.

    Raises
    ------
    CaffeError
        Naming the file, the cap and its environment variable.
    """
    if size > cap_bytes(kind):
        raise CaffeError(_cap_message(kind, size, declared), path=path)


def open_regular(path: str | Path, kind: str) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file within the cap of ``kind``.

    Raises
    ------
    CaffeError
        When it cannot be opened, is not a regular file (a device, a FIFO, a folder) or is over
        the cap.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CaffeError(f"cannot read: {exc.strerror}", path=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CaffeError(
                f"not a regular file ({_file_kind(st.st_mode)}); give a file",
                path=path,
            )
        check_size(path, st.st_size, kind)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def read_bounded(path: str | Path, kind: str) -> bytes:
    """The bytes of ``path``, a regular file within the cap of ``kind``.

    At most cap + 1 bytes are read, so a file growing while it is read is caught too.

    Raises
    ------
    CaffeError
        As :func:`open_regular`, or when the read fails.
    """
    limit = cap_bytes(kind)
    with open_regular(path, kind) as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise CaffeError(f"cannot read: {exc.strerror}", path=path) from None
    check_size(path, len(data), kind)
    return data


def read_text(path: str | Path, kind: str) -> str:
    """The UTF-8 text of ``path`` (see :func:`read_bounded`).

    Raises
    ------
    CaffeError
        As :func:`read_bounded`, or naming the line of the first byte that is not UTF-8.
    """
    data = read_bounded(path, kind)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CaffeError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            path=path,
            line=line,
        ) from None
