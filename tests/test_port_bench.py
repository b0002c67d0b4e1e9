"""Benchmarks for the converter: time and peak memory of converting a CaffeNet-sized caffemodel."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import port
from port.caffemodel import write_caffemodel
from port.zoo import zoo_model

pytestmark = pytest.mark.benchmark

_PROBE = """
import json, os, resource, sys, time
import port
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
net = port.load_caffe(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_delta_bytes": (peak - base) * 1024,
                  "file_bytes": os.path.getsize(sys.argv[2])}))
"""


@pytest.fixture(scope="module")
def caffenet_weights(tmp_path_factory, shared):
    prototxt = zoo_model("caffenet").prototxt
    netdef = port.load_prototxt(prototxt)
    path = tmp_path_factory.mktemp("caffenet") / "seeded.caffemodel"
    write_caffemodel(path, netdef, port.seed_weights(netdef, 0))
    return prototxt, path


def test_convert_caffenet_peak_memory(benchmark, caffenet_weights):
    """The 244 MB seeded CaffeNet converts holding at most ~3 copies of its weights."""
    prototxt, weights = caffenet_weights

    def probe():
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, str(prototxt), str(weights)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(out)

    result = benchmark.pedantic(probe, rounds=3, iterations=1)
    copies = result["peak_delta_bytes"] / result["file_bytes"]
    benchmark.extra_info.update(result, weight_copies_at_peak=copies)
    assert copies <= 3.0
