"""Golden dumps from real Caffe: the plans and the reading API (host only; generation.py makes them).

Reading, for the parity harness::

    from legacy_caffe.goldens import list_goldens, load_golden, load_manifest, golden_weights

    for g in list_goldens("caffenet"):  # GoldenSet(model, blas, input, path, committed, ...)
        arrays = load_golden(
            g.model, g.blas, g.input
        )  # {"data/conv1": ..., "diff/data": ..., "input/data": ...}

Layout: ``golden/<model>/manifest.json`` always in git; ``golden/<model>/<blas>/<input>.npz`` for the
sets the plan commits (CaffeNet); every other set lives in ``cache/golden/<model>/<blas>/<input>.npz``
and is regenerated on demand, then verified against the manifest's checksums.
"""

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from port.artefact import sha256_file
from port.images import load_float
from port.zoo import MODELS as ZOO

from .check import check_model, manifest_differences
from .generation import GoldenRequest, generate, generate_model
from .golden_plans import (
    ASTRONAUT,
    ASTRONAUT_231,
    BLAS,
    CACHE_DIR,
    DEFAULT_SEED,
    DEFAULT_UNIT,
    GOLDEN_DIR,
    GOLDEN_ENV,
    INSIDE,
    PHOTOS3,
    PLANS,
    REPO,
    GoldenPlan,
    declared_input_size,
    load_manifest,
    manifest_path,
    port_seed_available,
    seed_weights,
)
from .manifest import MANIFEST_FORMAT, GoldenError, load_npz, verify_arrays
from .preprocess import InputSpec

__all__ = [
    "ASTRONAUT", "ASTRONAUT_231", "BLAS", "CACHE_DIR", "DEFAULT_SEED", "DEFAULT_UNIT", "GOLDEN_DIR",
    "GOLDEN_ENV", "INSIDE", "PHOTOS3", "PLANS", "REPO", "GoldenError", "GoldenPlan", "GoldenRequest",
    "GoldenSet", "InputSpec", "array_inputs", "check_model", "declared_input_size", "generate",
    "generate_model", "golden_weights", "list_goldens", "load_golden", "load_manifest",
    "manifest_differences", "manifest_path", "port_seed_available", "seed_weights", "user_inputs",
]  # fmt: skip


# --- reading API ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldenSet:
    """One dump: a model run on one input batch with one BLAS."""

    model: str
    blas: str
    input: str
    path: Path  # where the .npz is or will be
    committed: bool
    shape: tuple[int, ...]  # the input batch's (N, C, H, W)
    available: bool = field(compare=False, default=False)


def _set_path(model: str, entry: dict, golden_dir: Path, cache_dir: Path) -> Path:
    base = golden_dir if entry.get("committed") else cache_dir
    return base / model / entry["file"]


def _is_blob_manifest(path: Path) -> bool:
    """Whether a manifest describes blob dumps (golden/mfv holds MFV references instead)."""
    try:
        return json.loads(path.read_text()).get("format") == MANIFEST_FORMAT
    except (OSError, ValueError):
        return True  # let load_manifest report the damage


def list_goldens(
    model: str | None = None, *, golden_dir: Path = GOLDEN_DIR, cache_dir: Path = CACHE_DIR
) -> list[GoldenSet]:
    """Every golden set the manifests describe (optionally of one model), with availability."""
    models = (
        [model]
        if model
        else sorted(
            p.parent.name for p in golden_dir.glob("*/manifest.json") if _is_blob_manifest(p)
        )
    )
    out = []
    for m in models:
        man = load_manifest(m, golden_dir)
        for entry in man["sets"].values():
            path = _set_path(m, entry, golden_dir, cache_dir)
            out.append(
                GoldenSet(
                    model=m,
                    blas=entry["blas"],
                    input=entry["input"],
                    path=path,
                    committed=bool(entry.get("committed")),
                    shape=tuple(man["inputs"][entry["input"]]["shape"]),
                    available=path.is_file(),
                )
            )
    return out


def load_golden(
    model: str,
    blas: str = "openblas",
    input_name: str = "astronaut",
    *,
    regenerate: bool = False,
    verify: bool = True,
    golden_dir: Path = GOLDEN_DIR,
    cache_dir: Path = CACHE_DIR,
) -> dict[str, np.ndarray]:
    """A golden dump: ``data/<blob>``, ``diff/<blob>`` and ``input/<name>`` arrays (float32, NCHW).

    Reads the committed file or the cache. A missing cache file is regenerated with real Caffe when
    ``regenerate`` is true (needs the built root and root privileges), else GoldenError says how.
    With ``verify`` every array is checked against the manifest's sha256.
    """
    man = load_manifest(model, golden_dir)
    key = f"{blas}/{input_name}"
    entry = man["sets"].get(key)
    if entry is None:
        raise GoldenError(
            f"{model} has no golden set {key!r}; it has: {', '.join(sorted(man['sets']))}"
        )
    path = _set_path(model, entry, golden_dir, cache_dir)
    if not path.is_file():
        if not regenerate:
            raise GoldenError(
                f"{path} is not there; regenerate it with: python -m legacy_caffe goldens "
                f"--model {model} --blas {blas} (or load_golden(..., regenerate=True))"
            )
        generate_model(model, blas=[blas], only_inputs=[input_name], cache_only=True)
    arrays = load_npz(path)
    if verify:
        problems = verify_arrays(arrays, entry["arrays"])
        if problems:
            raise GoldenError(
                f"{path} does not match {model}'s manifest: " + "; ".join(problems[:5])
            )
    return arrays


def golden_weights(model: str, *, regenerate: bool = True, cache_dir: Path = CACHE_DIR) -> Path:
    """The caffemodel the goldens were made with, re-seeded with port if missing, sha256-checked."""
    man = load_manifest(model)
    w = man["weights"]
    path = cache_dir / model / "weights.caffemodel"
    if not path.is_file():
        if not regenerate:
            raise GoldenError(f"{path} is not there (python -m port seed-weights makes it)")
        if w["generator"] != "port seed-weights":
            raise GoldenError(f"{model}'s goldens used {w['generator']}; cannot re-seed with port")
        seed_weights(ZOO[model].prototxt, w["seed"], path, w["format"])
    digest = sha256_file(path)
    if digest != w["sha256"]:
        raise GoldenError(f"{path}: sha256 {digest[:12]}... differs from the manifest's")
    return path


def array_inputs(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """An .npz of input blob name -> array as one input set named after the file."""
    from port.arrays import load_npz as bounded_load_npz

    arrays = {k: np.asarray(a, dtype=np.float32) for k, a in bounded_load_npz(path).items()}
    if not arrays:
        raise GoldenError(f"{path} holds no arrays")
    return {re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem): arrays}


def user_inputs(images: Sequence[str], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """A user's image files as one batch named after the first file (plus count)."""
    from .preprocess import caffe_preprocess

    batch = np.stack([caffe_preprocess(load_float(p), size) for p in images])
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(images[0]).stem)
    return {stem if len(images) == 1 else f"{stem}_and_{len(images) - 1}": batch}
