"""Blob keys: ``"data/<blob>"`` for a forward value, ``"diff/<blob>"`` for its gradient.

One spelling for every package that dumps or compares blobs (port, legacy_caffe, parity, mfv), so
that a key written by one runner is the key another reads. Scripts run inside Caffe's own Python
(``legacy_caffe/inside/``) cannot import this module and spell the keys themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["DATA", "DIFF", "data_key", "diff_key", "split_key", "blob_producers", "ordered_keys"]

DATA = "data"
DIFF = "diff"


def data_key(blob: str) -> str:
    """Key of a blob's forward value.

    Parameters
    ----------
    blob : str
        Blob name as the prototxt spells it.

    Returns
    -------
    str
        ``"data/<blob>"``.
    """
    return f"{DATA}/{blob}"


def diff_key(blob: str) -> str:
    """Key of a blob's gradient.

    Parameters
    ----------
    blob : str
        Blob name as the prototxt spells it.

    Returns
    -------
    str
        ``"diff/<blob>"``.
    """
    return f"{DIFF}/{blob}"


def split_key(key: str) -> tuple[str, str]:
    """Split a key into its kind and blob name.

    Parameters
    ----------
    key : str
        ``"data/<blob>"`` or ``"diff/<blob>"``; the blob name may itself hold ``/``.

    Returns
    -------
    tuple of str
        ``(kind, blob)`` with kind ``"data"`` or ``"diff"``.

    Raises
    ------
    ValueError
        If the key starts with neither kind or names no blob.
    """
    kind, sep, blob = key.partition("/")
    if not sep or kind not in (DATA, DIFF) or not blob:
        raise ValueError(f"blob key {key!r} is not 'data/<blob>' or 'diff/<blob>'")
    return kind, blob


def is_data(key: str) -> bool:
    """Whether ``key`` is a forward value's key, ``"data/<blob>"``."""
    return key.startswith(f"{DATA}/")


def is_diff(key: str) -> bool:
    """Whether ``key`` is a gradient's key, ``"diff/<blob>"``."""
    return key.startswith(f"{DIFF}/")


def is_blob_key(key: str) -> bool:
    """Whether ``key`` is a blob key of either kind (other members of a dump are not)."""
    return is_data(key) or is_diff(key)


def blob_producers(netdef: Any) -> dict[str, str]:
    """Blob name -> name of the layer that first writes it ("" for net inputs).

    Parameters
    ----------
    netdef : object
        A parsed net with ``inputs`` (names) and ``layers`` (each with ``name`` and ``tops``).

    Returns
    -------
    dict
        In net order: inputs first, then each layer's new tops.
    """
    out = {name: "" for name in netdef.inputs}
    for layer in netdef.layers:
        for t in layer.tops:
            out.setdefault(t, layer.name)
    return out


def ordered_keys(netdef: Any, available: Iterable[str]) -> list[str]:
    """Forward keys in net order, then backward keys in the order the gradient flows (reverse).

    Parameters
    ----------
    netdef : object
        As for :func:`blob_producers`.
    available : iterable of str
        Keys to order; keys of blobs the net does not produce are dropped.

    Returns
    -------
    list of str
    """
    available = set(available)
    blobs = list(blob_producers(netdef))
    fwd = [data_key(b) for b in blobs if data_key(b) in available]
    bwd = [diff_key(b) for b in reversed(blobs) if diff_key(b) in available]
    return fwd + bwd
