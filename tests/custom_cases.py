"""The custom-layer case: an SSD-style net whose Permute and Normalize real Caffe 1.0 lacks.

``tests/data/custom/ssd/python_layers.prototxt`` runs them as pycaffe Python layers
(``ssd_layers.py``), so any pycaffe built with Python layers makes its goldens; the fork definition
``fork.prototxt`` (parsed with ``ssd_fork.proto``) is the same net with the fork's own types and
parameters, and is judged against the same goldens. Regenerate them (needs the built root)::

    PYTHONPATH=$PWD .venv/bin/python -m tests.custom_cases

which runs ``python -m legacy_caffe goldens --prototxt ... --python-path tests/data/custom/ssd ...``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .layer_cases import record_weights, run_goldens

DATA = Path(__file__).parent / "data" / "custom" / "ssd"
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
    run_goldens(
        PYTHON_NET,
        seed=SEED,
        backward=BACKWARD,
        inputs=inputs(),
        arrays_name="python_layers",
        out=GOLDENS,
        seed_args=["--plugin", str(PLUGIN)],
        goldens_args=["--python-path", str(DATA)],
    )
    record_weights(
        GOLDENS,
        prototxt=PYTHON_NET,
        model="python_layers",
        seed=SEED,
        generator="port seed-weights --plugin tests/data/custom/ssd/ssd_port.py",
        made_by="python -m tests.custom_cases",
    )


if __name__ == "__main__":
    generate()
