"""Golden manifests: checksums and statistics of every dumped array, and comparisons of dumps.

A dump's bytes on disk vary (zip timestamps), so what a manifest pins is each array: its shape, dtype
and the sha256 of its little-endian C-order bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from port.atomic import atomic_path, write_text_atomic
from port.blobkeys import data_key, diff_key
from port.errors import ToolError

MANIFEST_FORMAT = 1


class GoldenError(ToolError, RuntimeError):
    """A golden set is missing, or does not match its manifest."""


def array_sha256(a: np.ndarray) -> str:
    """sha256 of the array's values as little-endian, C-order bytes (independent of the file)."""
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


def array_stats(a: np.ndarray) -> dict:
    """Summary a reader can check a regenerated array against without the file."""
    a64 = np.asarray(a, dtype=np.float64)
    return {
        "min": float(a64.min()) if a64.size else 0.0,
        "max": float(a64.max()) if a64.size else 0.0,
        "mean": float(a64.mean()) if a64.size else 0.0,
        "std": float(a64.std()) if a64.size else 0.0,
        "absmax": float(np.abs(a64).max()) if a64.size else 0.0,
        "nonzero": int(np.count_nonzero(a64)),
    }


def describe_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Per-key shape, dtype, sha256 and statistics, in the dump's key order."""
    return {
        key: {
            "shape": list(a.shape),
            "dtype": str(a.dtype),
            "sha256": array_sha256(a),
            **array_stats(a),
        }
        for key, a in arrays.items()
    }


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: the spread measure of caffe-semantics.md (0 when b is all zero and a == b)."""
    if a.shape != b.shape:
        raise GoldenError(f"shapes differ: {a.shape} vs {b.shape}")
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    num = float(np.abs(a64 - b64).max()) if a64.size else 0.0
    den = float(np.abs(b64).max()) if b64.size else 0.0
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def compare_dumps(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    *,
    prefixes: tuple[str, ...] = (data_key(""), diff_key("")),  # every data/diff key
) -> dict[str, float]:
    """rel_error(a[k], b[k]) for every data/diff key; keys must match."""
    keys_a = {k for k in a if k.startswith(prefixes)}
    keys_b = {k for k in b if k.startswith(prefixes)}
    if keys_a != keys_b:
        raise GoldenError(
            f"dumps hold different blobs: only in first {sorted(keys_a - keys_b)}, "
            f"only in second {sorted(keys_b - keys_a)}"
        )
    return {k: rel_error(a[k], b[k]) for k in a if k in keys_a}


def count_outliers(a: np.ndarray, b: np.ndarray, rel: float = 1e-4) -> int:
    """Elements where |a - b| exceeds ``rel`` of max |b|.

    Separates a uniform float spread (0 outliers) from max-pooling routing flips, where two builds
    pick different maxima of a near-tie and a handful of gradient elements differ by O(1).
    """
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    scale = float(np.abs(b64).max()) if b64.size else 0.0
    return int(np.count_nonzero(np.abs(a64 - b64) > rel * scale))


def bytes_identical(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return set(a) == set(b) and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes()
        for k in a
    )


def verify_arrays(arrays: Mapping[str, np.ndarray], expected: Mapping[str, dict]) -> list[str]:
    """Differences between arrays and the manifest's description of them (empty list: they match)."""
    problems = []
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing:
        problems.append(f"missing arrays: {', '.join(missing)}")
    if extra:
        problems.append(f"arrays the manifest does not list: {', '.join(extra)}")
    for key, want in expected.items():
        if key not in arrays:
            continue
        a = arrays[key]
        if list(a.shape) != list(want["shape"]):
            problems.append(f"{key}: shape {list(a.shape)} != manifest {want['shape']}")
        elif str(a.dtype) != want["dtype"]:
            problems.append(f"{key}: dtype {a.dtype} != manifest {want['dtype']}")
        elif array_sha256(a) != want["sha256"]:
            problems.append(f"{key}: sha256 differs from the manifest")
    return problems


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz, loaded eagerly, each header checked first (:func:`port.arrays.load_npz`)."""
    from port.arrays import load_npz as bounded_load_npz

    return bounded_load_npz(path)


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez_compressed, atomically (:func:`port.atomic.atomic_path`)."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def write_json(path: Path, obj: object) -> None:
    """Pretty JSON (one-space indent, keys in the order given, NaN allowed), written atomically.

    Keys keep their order, not sorted: a manifest reads in the order it was built (format, model,
    ..., sets), and the committed manifests are byte-identical to what regeneration writes.
    """
    write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")
