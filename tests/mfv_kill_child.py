"""A process that forks MFV runs on command, for the kill -9 tests (tests/test_mfv_resume.py).

Importing torch takes seconds; forking a process that has imported it takes milliseconds, so one
of these serves many runs and the test can kill many of them. Protocol on stdin/stdout, one line
each: ``run MODE OUT`` -> ``pid N`` when the child starts, then ``exit S`` (its wait status) when it
ends, however it ends. The children use one torch thread, set before any torch operation, so that
forking is safe.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from mfv.objectives import unit  # noqa: E402
from mfv.octaves import parse_schedule  # noqa: E402
from mfv.testing import tiny_model  # noqa: E402
from mfv.visualize import UnitJob, visualize_units  # noqa: E402

SIZE = 32
KEYS = ("iter_n", "zoom", "margin", "window", "step_size", "tv_weight")
SCHEDULE = parse_schedule(
    {
        "name": "kill",
        "octaves": [
            dict(zip(KEYS, o, strict=True))
            for o in (
                (7, None, 0, 0.3, [1, 2], [0.4, 0.4]),
                (6, 1.25, 0, 0.3, [1.0, 1.0], [0.01, 2]),
                (5, 1.1, 4, 0.2, [2.0, 2.0], [0.1, 2]),
            )
        ],
    }
)


def _init(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 215, (SIZE, SIZE, 3)).astype(np.uint8)


def run(mode: str, out: Path) -> None:
    model = tiny_model()
    # Two targets in one batch (two output folders), three facets: the multi-facet, multi-job case.
    jobs = [
        UnitJob(unit("8", 3), [_init(0), _init(1)], out / "u3"),
        UnitJob(unit("8", 5), [_init(2)], out / "u5"),
    ]
    faithful = mode == "faithful"
    visualize_units(
        model,
        jobs,
        schedule=SCHEDULE,
        seed=1,
        faithful=faithful,
        progress=False,
        denoiser="skimage" if faithful else "torch",
        checkpoint_steps=2,
    )


def main() -> None:
    for line in sys.stdin:
        _, mode, out = line.split(maxsplit=2)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run(mode, Path(out.strip()))
            except BaseException as e:  # the parent sees the status; say why on stderr
                print(f"child: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {status}", flush=True)


if __name__ == "__main__":
    main()
