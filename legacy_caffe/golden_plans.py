"""The golden plans and the manifest paths: what generation, checking and reading share.

Kept apart from :mod:`.goldens` (the reading API) so generation can use them while the reading API
regenerates a missing set through generation, one way down.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from port.paths import cache_root, repo_root

from . import rootfs
from .manifest import MANIFEST_FORMAT, GoldenError
from .preprocess import InputSpec

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
