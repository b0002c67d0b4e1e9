"""Run the benchmarks (``tox -e bench``): save the run, and compare it with the previous saved run.

pytest-benchmark refuses ``--benchmark-compare-fail`` when there is nothing to compare with, so the
first run on a machine only saves; every later run fails on a mean 25% slower than the last one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def main(argv: list[str]) -> int:
    args = ["-m", "benchmark", "--benchmark-enable", "--benchmark-autosave"]
    if any(Path(".benchmarks").glob("*/*.json")):
        args += ["--benchmark-compare", "--benchmark-compare-fail=mean:25%"]
    return int(pytest.main(args + argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
