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

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from port.artefact import sha256_file
from port.paths import cache_root, repo_root
from port.zoo import MODELS as ZOO

from . import rootfs
from .manifest import (
    MANIFEST_FORMAT,
    GoldenError,
    load_npz,
    verify_arrays,
)
from .preprocess import InputSpec, load_image_file

REPO = repo_root()
GOLDEN_DIR = REPO / "golden"
CACHE_DIR = cache_root() / "golden"
DEFAULT_UNIT = 945  # "bell pepper", the class the original MFV work visualises
DEFAULT_SEED = 1
# OpenBLAS (DYNAMIC_ARCH) picks its kernels, and so its rounding, from the CPU it finds; pinning the
# baseline x86-64 kernel every machine can run keeps the goldens reproducible across machines.
# On the (virtualised, model-less) Xeons here it falls back to this kernel anyway.
GOLDEN_ENV = {"OPENBLAS_CORETYPE": "Prescott"}
BLAS = rootfs.BLAS_CHOICES
INSIDE = rootfs.INSIDE_MOUNT


def _say(msg: str) -> None:
    print(f"[goldens] {msg}", file=sys.stderr, flush=True)


# --- what the project ships -----------------------------------------------------------------

ASTRONAUT = InputSpec("astronaut", ("astronaut",))
PHOTOS3 = InputSpec("photos3", ("astronaut", "chelsea", "coffee"))
# 231 makes Caffe's ceil rounding differ from floor in SqueezeNet's max pools (v1.0: pool4, 227
# has none; v1.1: pool5, in addition to pool3 at 227).
ASTRONAUT_231 = InputSpec("astronaut_231", ("astronaut",), 231)


@dataclass(frozen=True)
class GoldenPlan:
    """Which inputs a built-in model's goldens use and which of its dumps git holds."""

    model: str
    inputs: tuple[InputSpec, ...]
    committed: tuple[str, ...] = ()  # input names whose full dumps are committed
    weight_format: str = "v2"
    # A seed whose weights let the one-hot reach the input: with seed 1, SqueezeNet 1.0's
    # conv10 channel 945 is negative everywhere, its ReLU passes no gradient, every diff is 0.
    seed: int = DEFAULT_SEED


PLANS: dict[str, GoldenPlan] = {
    p.model: p
    for p in (
        GoldenPlan("caffenet", (ASTRONAUT, PHOTOS3), committed=("astronaut",)),
        GoldenPlan("alexnet", (ASTRONAUT,)),
        GoldenPlan("vgg16", (ASTRONAUT,), weight_format="v1"),
        GoldenPlan("googlenet", (ASTRONAUT,)),
        GoldenPlan("squeezenet1.0", (ASTRONAUT, ASTRONAUT_231), seed=2),
        GoldenPlan("squeezenet1.1", (ASTRONAUT, ASTRONAUT_231, PHOTOS3)),
    )
}


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


def manifest_path(model: str, golden_dir: Path = GOLDEN_DIR) -> Path:
    return golden_dir / model / "manifest.json"


def load_manifest(model: str, golden_dir: Path = GOLDEN_DIR) -> dict:
    """The committed manifest of a model's goldens, checked to be one this code understands."""
    path = manifest_path(model, golden_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GoldenError(f"no manifest at {path}") from None
    except json.JSONDecodeError as exc:
        raise GoldenError(f"{path} is not valid JSON: {exc}") from None
    if data.get("format") != MANIFEST_FORMAT:
        raise GoldenError(
            f"{path}: manifest format {data.get('format')!r}, expected {MANIFEST_FORMAT}"
        )
    return data


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
        from .generation import generate_model

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


# --- generation -----------------------------------------------------------------------------


def declared_input_size(prototxt_text: str) -> tuple[int, int]:
    """(H, W) of the first declared input: ``input_dim`` x4, ``input_shape``/``Input`` dims."""
    dims = [int(d) for d in re.findall(r"^\s*input_dim\s*:\s*(\d+)", prototxt_text, re.M)]
    if len(dims) < 4:
        dims = [int(d) for d in re.findall(r"\bdim\s*:\s*(\d+)", prototxt_text)]
    if len(dims) < 4:
        raise GoldenError("cannot find a 4-d input shape (input_dim / input_shape / Input layer)")
    return dims[2], dims[3]


def port_seed_available() -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "port", "seed-weights", "--help"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    return proc.returncode == 0


def seed_weights(prototxt: Path, seed: int, out: Path, fmt: str = "v2") -> None:
    """``python -m port seed-weights``: the weights Caffe then loads from the file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "port", "seed-weights", "--prototxt", str(prototxt),
           "--weight-seed", str(seed), "--out", str(out)]  # fmt: skip
    if fmt != "v2":
        cmd += ["--format", fmt]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GoldenError(f"port seed-weights failed:\n{proc.stderr[-2000:]}")


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

    batch = np.stack([caffe_preprocess(load_image_file(p), size) for p in images])
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(images[0]).stem)
    return {stem if len(images) == 1 else f"{stem}_and_{len(images) - 1}": batch}


_MOVED = {
    "GoldenRequest": "generation", "generate": "generation", "generate_model": "generation",
    "check_model": "check", "manifest_differences": "check",
}  # fmt: skip


def __getattr__(name: str) -> object:
    # Generation and checking live in their own modules (they import this one); the old names
    # stay reachable here for callers of ``goldens.generate(...)``.
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
