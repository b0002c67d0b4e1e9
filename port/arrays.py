"""``.npy`` and ``.npz`` read header first: nothing is decompressed or allocated before it is checked.

``numpy.load`` trusts a file: an npz member that inflates to gigabytes is inflated, a header that
declares 373 GiB is allocated, random bytes are handed to pickle's refusal ("contains pickled data").
Here every member's npy header (a few hundred bytes at the start of its stream) is read first; its
dtype must be a plain numeric one, its shape non-negative, its size what the zip directory says and,
summed over the members, within the cap (:mod:`port.limits`); an ``expect`` mapping checks the
shapes against a net's blobs. Only then is each array read, exactly its declared bytes, into a
buffer of that size.
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CaffeError
from .limits import check_size, open_regular

__all__ = ["ArrayHeader", "load_npy", "load_npz", "npz_headers"]

_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 10_000  # numpy's own limit on a header it parses without allow_pickle


@dataclass(frozen=True)
class ArrayHeader:
    """What an npy header declares: shape, dtype, order, and where the data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """The data's size in bytes."""
        return math.prod(self.shape) * self.dtype.itemsize


def _read_exact(fh, n: int) -> bytes:
    out = fh.read(n)
    return out if out is not None else b""


def read_header(fh, where: str, path: str | Path) -> ArrayHeader:
    """Parse the npy header at the start of ``fh`` (an open file or zip member stream).

    Raises
    ------
    CaffeError
        When it is not an npy header, the header is oversized, or the dtype is not a plain
        (non-object, non-structured) one; the message names ``where``.
    """
    lead = _read_exact(fh, 8)
    if len(lead) < 8 or not lead.startswith(_MAGIC):
        raise CaffeError(f"{where} is not an npy array (no NUMPY magic)", path=path)
    version = (lead[6], lead[7])
    if version not in ((1, 0), (2, 0)):
        raise CaffeError(f"{where}: npy format version {version} is not supported", path=path)
    fmt = "<H" if version == (1, 0) else "<I"
    raw_len = _read_exact(fh, struct.calcsize(fmt))
    if len(raw_len) < struct.calcsize(fmt):
        raise CaffeError(f"{where}: npy header cut short", path=path)
    (hlen,) = struct.unpack(fmt, raw_len)
    if hlen > _MAX_HEADER:
        raise CaffeError(f"{where}: npy header of {hlen} bytes (at most {_MAX_HEADER})", path=path)
    text = _read_exact(fh, hlen)
    if len(text) < hlen:
        raise CaffeError(f"{where}: npy header cut short", path=path)
    reader = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    try:
        shape, fortran, dtype = reader(io.BytesIO(raw_len + text))
    except (ValueError, SyntaxError, TypeError) as exc:
        raise CaffeError(f"{where}: bad npy header: {str(exc)[:200]}", path=path) from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise CaffeError(
            f"{where} has dtype {dtype} (objects or records); plain numbers expected", path=path
        )
    if dtype.kind not in "biufc" or dtype.itemsize == 0:
        raise CaffeError(f"{where} has dtype {dtype}; plain numbers expected", path=path)
    if any(d < 0 for d in shape):
        raise CaffeError(f"{where} declares shape {shape} with a negative size", path=path)
    return ArrayHeader(tuple(shape), dtype, fortran, len(lead) + len(raw_len) + hlen)


def _read_data(fh, header: ArrayHeader, where: str, path: str | Path) -> np.ndarray:
    """Exactly ``header.nbytes`` from ``fh`` into a new array of the declared shape."""
    out = np.empty(header.nbytes, dtype=np.uint8)
    view = memoryview(out)
    got = 0
    while got < header.nbytes:
        n = fh.readinto(view[got : got + (1 << 24)])
        if not n:
            raise CaffeError(
                f"{where} is cut short: {got} of the {header.nbytes} bytes its header declares",
                path=path,
            )
        got += n
    arr = out.view(header.dtype)
    if header.fortran_order:
        return arr.reshape(header.shape[::-1]).T
    return arr.reshape(header.shape)


def load_npy(path: str | Path) -> np.ndarray:
    """One array from an ``.npy`` file, its header checked against the file size and the cap.

    Raises
    ------
    CaffeError
        When the file is not a regular ``.npy`` file, its header is bad or lies about the size,
        or the array is over ``CAFFE_MFV_MAX_NPY_MB``.
    """
    with open_regular(path, "npy") as fh:
        head = fh.read(len(_MAGIC))
        fh.seek(0)
        if head.startswith(b"PK"):
            raise CaffeError("an .npz archive; give one array as .npy", path=path)
        header = read_header(fh, "the file", path)
        check_size(path, header.nbytes, "npy", declared=True)
        size = fh.seek(0, io.SEEK_END)
        if size != header.offset + header.nbytes:
            raise CaffeError(
                f"header declares {header.shape} {header.dtype} ({header.nbytes} bytes) but the "
                f"file holds {size - header.offset} bytes of data",
                path=path,
            )
        fh.seek(header.offset)
        return _read_data(fh, header, "the array", path)


def _open_zip(fh, path: str | Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise CaffeError(f"not an npz (zip) archive: {exc}", path=path) from None


def _headers(
    zf: zipfile.ZipFile, path: str | Path
) -> dict[str, tuple[zipfile.ZipInfo, ArrayHeader]]:
    out: dict[str, tuple[zipfile.ZipInfo, ArrayHeader]] = {}
    total = 0
    for info in zf.infolist():
        if info.is_dir():
            continue
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        where = f"member {key!r}"
        if key in out:
            raise CaffeError(f"{where} appears twice in the archive", path=path)
        try:
            with zf.open(info) as member:
                header = read_header(member, where, path)
        except (zipfile.BadZipFile, NotImplementedError, EOFError, OSError, ValueError) as exc:
            raise CaffeError(f"{where} cannot be read: {exc}", path=path) from None
        total += header.nbytes
        check_size(path, total, "npz", declared=True)
        if info.file_size != header.offset + header.nbytes:
            raise CaffeError(
                f"{where}: header declares {header.shape} {header.dtype} ({header.nbytes} bytes) "
                f"but the archive says {info.file_size - header.offset} bytes",
                path=path,
            )
        out[key] = (info, header)
    return out


def npz_headers(path: str | Path) -> dict[str, ArrayHeader]:
    """Every member's declared shape and dtype, read without decompressing any data.

    Raises
    ------
    CaffeError
        When the file is not a regular zip archive of plain npy arrays, or the arrays declared
        add up to more than ``CAFFE_MFV_MAX_NPZ_MB``.
    """
    with open_regular(path, "npz") as fh, _open_zip(fh, path) as zf:
        return {k: h for k, (_, h) in _headers(zf, path).items()}


def _check_expected(
    headers: Mapping[str, ArrayHeader], expect: Mapping[str, tuple[int, ...]], path
) -> None:
    for key, shape in expect.items():
        if key in headers and tuple(headers[key].shape) != tuple(shape):
            raise CaffeError(
                f"member {key!r} declares shape {tuple(headers[key].shape)}; the net's blob is "
                f"{tuple(shape)}",
                path=path,
            )


def load_npz(
    path: str | Path, *, expect: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz``, each header checked before any data is decompressed.

    Parameters
    ----------
    path : str or Path
        The archive.
    expect : mapping, optional
        Member name -> shape the net gives it (``data/conv1`` -> (N, C, H, W)); a member of
        another declared shape is refused before anything is read. Members not named are not
        checked, names not present are not required.

    Returns
    -------
    dict
        Member name (without ``.npy``) -> array, in archive order.

    Raises
    ------
    CaffeError
        As :func:`npz_headers`, on a shape ``expect`` refuses, or when a member's data is cut
        short, longer than declared or fails its CRC.
    """
    with open_regular(path, "npz") as fh, _open_zip(fh, path) as zf:
        headers = _headers(zf, path)
        _check_expected({k: h for k, (_, h) in headers.items()}, expect or {}, path)
        out: dict[str, np.ndarray] = {}
        for key, (info, header) in headers.items():
            where = f"member {key!r}"
            try:
                with zf.open(info) as member:
                    member.read(header.offset)
                    out[key] = _read_data(member, header, where, path)
                    if member.read(1):  # at the end, this read also checks the CRC
                        raise CaffeError(f"{where} holds more than it declares", path=path)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
                raise CaffeError(f"{where} cannot be read: {exc}", path=path) from None
        return out
