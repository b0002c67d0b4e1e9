"""The custom-layer case: an SSD-style net whose Permute and Normalize real Caffe 1.0 lacks.

``tests/data/custom/ssd/python_layers.prototxt`` runs them as pycaffe Python layers
(``ssd_layers.py``), so any pycaffe built with Python layers makes its goldens; the fork definition
``fork.prototxt`` (parsed with ``ssd_fork.proto``) is the same net with the fork's own types and
parameters, and is judged against the same goldens. Regenerate them (needs the built root)::

    PYTHONPATH=$PWD .venv/bin/python -m tests.custom_cases

which runs ``python -m legacy_caffe goldens --prototxt ... --python-path tests/data/custom/ssd ...``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "custom" / "ssd"
REPO = Path(__file__).resolve().parent.parent
PYTHON_NET = DATA / "python_layers.prototxt"
FORK_NET = DATA / "fork.prototxt"
FORK_PROTO = DATA / "ssd_fork.proto"
PLUGIN = DATA / "ssd_port.py"
GOLDENS = DATA / "goldens"
SEED = 3
BACKWARD = "score:1"


def golden(blas: str) -> Path:
    return GOLDENS / blas / "python_layers.npz"


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1016)
    return {"data": rng.normal(0.0, 1.0, (2, 3, 6, 6)).astype(np.float32)}


def generate() -> None:
    """Seed the weights (the port needs the plugin for Normalize's blob), run real Caffe."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.caffemodel"
        arrays = Path(tmp) / "python_layers.npz"
        np.savez(arrays, **inputs())
        py = sys.executable
        subprocess.run(
            [
                py,
                "-m",
                "port",
                "seed-weights",
                "--prototxt",
                str(PYTHON_NET),
                "--plugin",
                str(PLUGIN),
                "--weight-seed",
                str(SEED),
                "--out",
                str(weights),
            ],
            check=True,
            cwd=REPO,
        )
        blob, unit = BACKWARD.rsplit(":", 1)
        subprocess.run(
            [
                py,
                "-m",
                "legacy_caffe",
                "goldens",
                "--prototxt",
                str(PYTHON_NET),
                "--caffemodel",
                str(weights),
                "--input-arrays",
                str(arrays),
                "--python-path",
                str(DATA),
                "--blob",
                blob,
                "--unit",
                unit,
                "--out",
                str(GOLDENS),
            ],
            check=True,
            cwd=REPO,
        )
    path = GOLDENS / "manifest.json"
    man = json.loads(path.read_text())
    man["weights"].pop("source", None)
    man["weights"].update(
        generator="port seed-weights --plugin tests/data/custom/ssd/ssd_port.py",
        seed=SEED,
        format="v2",
        made_by="python -m tests.custom_cases",
    )
    man["prototxt"] = str(PYTHON_NET.relative_to(REPO))
    man["model"] = "python_layers"
    path.write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    generate()
