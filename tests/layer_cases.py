"""The small nets that prove each Caffe layer type against real Caffe (tests/data/layers/<name>/).

Each case is a deploy definition covering a layer family's parameter variants, seeded weights
(``python -m port seed-weights``), deterministic inputs and the blob/unit the backward pass starts
from. Regenerate a case's goldens with real Caffe (both BLAS builds; needs the built root)::

    PYTHONPATH=$PWD .venv/bin/python -m tests.layer_cases activations [more names...]

which runs ``python -m legacy_caffe goldens --prototxt ... --caffemodel ... --input-arrays ...``
into ``tests/data/layers/<name>/goldens``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "layers"
ARCH_DATA = Path(__file__).parent / "data" / "architectures"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class LayerCase:
    name: str
    backward: str  # "BLOB:UNIT"
    make_inputs: Callable[[np.random.Generator], dict[str, np.ndarray]]
    seed: int = 1
    # False where Caffe aborts under force_backward (Embed, Filter, BatchReindex bottoms): the
    # goldens then make the backward blob a loss instead (``--no-force-backward``).
    force_backward: bool = True
    folder: Path = DATA

    @property
    def prototxt(self) -> Path:
        return self.folder / self.name / "deploy.prototxt"

    @property
    def goldens(self) -> Path:
        return self.folder / self.name / "goldens"

    def golden(self, blas: str) -> Path:
        return self.goldens / blas / f"{self.name}.npz"

    def inputs(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(1000 + self.seed)
        return {k: np.asarray(v, dtype=np.float32) for k, v in self.make_inputs(rng).items()}


def _normal(shape, scale=1.0):
    return lambda rng: {"data": rng.normal(0.0, scale, shape)}


CASES: dict[str, LayerCase] = {
    c.name: c
    for c in (
        LayerCase("activations", "score:2", _normal((2, 3, 5, 5), 1.5)),
        LayerCase("vision", "score:1", _normal((2, 3, 7, 7))),
        LayerCase(
            "shape",
            "score:0",
            lambda rng: {
                "data": rng.normal(0.0, 1.0, (2, 3, 4, 5)),
                "aux": rng.normal(0.0, 1.0, (3, 4)),
            },
        ),
        LayerCase(
            "indexing",
            "score:1",
            lambda rng: {
                "idx": rng.integers(0, 6, (4, 3)),
                "perm": np.array([3, 0, 0, 2, 1]),
                "sel": np.array([1, 0, 1, 1, 0]),
            },
            force_backward=False,
        ),
        LayerCase(
            "recurrent",
            "score:1",
            lambda rng: {
                "x": rng.normal(0.0, 1.0, (4, 2, 3)),
                "cont": np.array([[1, 0], [1, 1], [1, 0], [1, 1]]),
                "xs": rng.normal(0.0, 1.0, (2, 5)),
                "h0": rng.normal(0.0, 0.5, (1, 2, 3)),
                "c0": rng.normal(0.0, 0.5, (1, 2, 3)),
            },
        ),
    )
}


# Real architectures written from their papers, reduced for fast tests (each deploy.prototxt says
# how); tests/data/architectures/<name>/.
ARCHITECTURES: dict[str, LayerCase] = {
    c.name: c
    for c in (
        LayerCase("fcn8s", "score:392", _normal((1, 3, 16, 16), 50.0), folder=ARCH_DATA),
        LayerCase("hed", "sigmoid-fuse:136", _normal((2, 3, 16, 16), 1.0), folder=ARCH_DATA),
        LayerCase("sphereface", "fc5:3", _normal((2, 3, 24, 20), 1.0), folder=ARCH_DATA),
        LayerCase(
            "lrcn",
            "predict:3",
            lambda rng: {
                "input_sentence": rng.integers(0, 10, (4, 2)),
                "cont_sentence": np.array([[0, 0], [1, 1], [1, 0], [1, 1]]),
                "image_features": rng.normal(0.0, 1.0, (2, 8)),
            },
            force_backward=False,
            folder=ARCH_DATA,
        ),
    )
}


def generate(case: LayerCase) -> None:
    """Seed the weights, write the inputs and run real Caffe's goldens for one case."""
    run_goldens(
        case.prototxt,
        seed=case.seed,
        backward=case.backward,
        inputs=case.inputs(),
        arrays_name=case.name,
        out=case.goldens,
        goldens_args=[] if case.force_backward else ["--no-force-backward"],
    )
    record_weights(
        case.goldens,
        prototxt=case.prototxt,
        model=case.name,
        seed=case.seed,
        generator="port seed-weights",
        made_by="python -m tests.layer_cases " + case.name,
    )


def run_goldens(
    prototxt: Path,
    *,
    seed: int,
    backward: str,
    inputs: dict[str, np.ndarray],
    arrays_name: str,
    out: Path,
    seed_args: Sequence[str] = (),
    goldens_args: Sequence[str] = (),
) -> None:
    """Write ``port seed-weights --weight-seed seed`` weights and the inputs (as
    ``arrays_name.npz``) to a temporary folder, and run ``python -m legacy_caffe goldens`` on them
    into ``out``, backward from ``backward`` (``BLOB:UNIT``); each command gets its extra args."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.caffemodel"
        arrays = Path(tmp) / f"{arrays_name}.npz"
        np.savez(arrays, **inputs)
        py = sys.executable
        subprocess.run(
            [
                py,
                "-m",
                "port",
                "seed-weights",
                "--prototxt",
                str(prototxt),
                *seed_args,
                "--weight-seed",
                str(seed),
                "--out",
                str(weights),
            ],
            check=True,
            cwd=REPO,
        )
        blob, unit = backward.rsplit(":", 1)
        subprocess.run(
            [
                py,
                "-m",
                "legacy_caffe",
                "goldens",
                "--prototxt",
                str(prototxt),
                "--caffemodel",
                str(weights),
                "--input-arrays",
                str(arrays),
                *goldens_args,
                "--blob",
                blob,
                "--unit",
                unit,
                "--out",
                str(out),
            ],
            check=True,
            cwd=REPO,
        )


def record_weights(
    goldens: Path, *, prototxt: Path, model: str, seed: int, generator: str, made_by: str
) -> None:
    """Say in the manifest how the weights were made (the CLI only knows a temporary file)."""
    path = goldens / "manifest.json"
    man = json.loads(path.read_text())
    man["weights"].pop("source", None)
    man["weights"].update(generator=generator, seed=seed, format="v2", made_by=made_by)
    man["prototxt"] = str(prototxt.relative_to(REPO))
    man["model"] = model
    path.write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    every = {**CASES, **ARCHITECTURES}
    names = sys.argv[1:] or list(every)
    for n in names:
        generate(every[n])
