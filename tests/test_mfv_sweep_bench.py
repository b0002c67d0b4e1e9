"""Sweep throughput: units per hour of seeded CaffeNet with a tiny schedule, 1 and 2 local workers.

Run with ``.venv/bin/pytest -m benchmark --benchmark-enable tests/test_mfv_sweep_bench.py``. Each
round is one whole ``sweep`` call into a fresh folder (cluster start, one model load per worker,
UNITS units of k=2 facets, m=2, a 2 x 2-step schedule). ``extra_info`` holds the rate two ways:
``units_per_hour`` from the first task submitted to the last unit finished (model loads included,
cluster start not), and ``units_per_hour_with_startup`` over the whole call. Only the tiny schedule
makes this a test of the machinery; a published-schedule unit (10 facets x 370 steps) costs
minutes, so there the rate is the facet cost divided by the workers.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from PIL import Image

from mfv import sweep as sw
from mfv.models import ModelArgs

from ._helpers import TINY_SCHEDULE

pytestmark = pytest.mark.benchmark
pytest.importorskip("distributed")

UNITS = 6


@pytest.fixture(scope="module")
def tree(shared, tmp_path_factory):
    import json

    from skimage import data

    root = tmp_path_factory.mktemp("sweep-bench")
    classes = sw.read_classes()
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    for u in range(UNITS):
        d = root / "imagenet" / classes[u][0]
        d.mkdir(parents=True)
        p = photos[u % len(photos)]
        for j in range(5):
            y, x = rng.integers(0, p.shape[0] - 120), rng.integers(0, p.shape[1] - 120)
            Image.fromarray(p[y : y + 120, x : x + 120]).save(d / f"{j}.JPEG", quality=90)
    (root / "tiny.json").write_text(json.dumps(TINY_SCHEDULE))
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_sweep_units_per_hour(benchmark, tree, workers):
    counter = itertools.count()
    results = []

    def run():
        out = tree / f"out-{workers}-{next(counter)}"
        t0 = time.perf_counter()
        s = sw.sweep(
            sw.SweepParams(
                ModelArgs("caffenet", parity_check=False), k=2, m=2, schedule=tree / "tiny.json"
            ),
            units=sw.SweepUnits(f"0-{UNITS - 1}", images=tree / "imagenet"),
            run=sw.SweepRun(workers=workers, progress=False),
            out=out,
        )
        results.append((s, time.perf_counter() - t0))
        return s

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    s, wall = results[-1]
    assert s["counts"] == {"done": UNITS}
    benchmark.extra_info.update(
        workers=workers,
        units=UNITS,
        facets_per_unit=2,
        steps_per_facet=4,
        units_per_hour=s["run"]["units_per_hour"],
        units_per_hour_with_startup=round(UNITS / (wall / 3600), 1),
        sweep_seconds=round(s["run"]["wall_seconds"], 2),
        call_seconds=round(wall, 2),
        unit_seconds_mean=s["unit_seconds_mean"],
        model_load_seconds=[
            r["seconds"]["model_load"] for r in s["units"] if r["seconds"]["model_load"]
        ],
    )
