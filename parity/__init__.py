"""Layer-by-layer parity of the PyTorch port against real Caffe, an independent numpy reference and
ONNX Runtime.

Function-first API::

    from parity import resolve, run_parity

    setup = resolve(model="caffenet")  # definition, weights, input and goldens
    result, outputs = run_parity(setup)  # runners -> comparisons -> verdict
    bool(result), result.dumps()  # True only if every blob passed; JSON (SCHEMA.md)

Modules: :mod:`parity.numpy_ref` (independent numpy layers), :mod:`parity.runners` (the runner
protocol: named blobs per runner), :mod:`parity.plan` (which pairs are judged, as data),
:mod:`parity.compare` (metrics and result objects), :mod:`parity.tolerance` (the policy,
with the measurements behind it), :mod:`parity.gates` and :mod:`parity.routing` (gate flips: ReLU, MAX pooling, Eltwise MAX),
:mod:`parity.flips` (gate-flip analysis), :mod:`parity.local` (each layer alone on the reference's
inputs), :mod:`parity.core` (judging),
:mod:`parity.report` (terminal table and HTML). Command line: ``python -m parity --help``.
"""

from .compare import BlobCheck, Metrics, PairResult, ParityResult, metrics, ulp_distance
from .core import judge
from .plan import Comparison, Noise, Plan, default_plan
from .run import ALL_REFERENCES, ParitySetup, ParitySetupError, resolve, run_parity

__all__ = [
    "ALL_REFERENCES",
    "BlobCheck",
    "Comparison",
    "Metrics",
    "Noise",
    "PairResult",
    "Plan",
    "ParitySetupError",
    "ParityResult",
    "ParitySetup",
    "default_plan",
    "judge",
    "metrics",
    "resolve",
    "run_parity",
    "ulp_distance",
]
