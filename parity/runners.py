"""Runners: each produces named blobs (``data/<blob>``, ``diff/<blob>``) for one input.

A runner is anything with the :class:`Runner` protocol: a ``name``, a ``describe()`` of itself
(``kind``, ``dtype``, what it is) and a call on an input batch and an optional backward seed that
returns a :class:`RunnerOutput`. Which runners are compared, and how, is data
(:mod:`parity.plan`), so a new runner needs no edit of the judge. The built-in ones:

* :func:`run_port` -- the PyTorch port (float32 or float64), through ``port.dump_blobs``;
* real-Caffe golden dumps (ATLAS or OpenBLAS build) are read by :mod:`parity.run` into a
  :class:`RunnerOutput` each;
* :func:`run_numpy` -- the independent numpy reference (:mod:`parity.numpy_ref`), forward only;
* :func:`run_onnx` -- the port exported to ONNX with every blob an output, run by ONNX Runtime on
  the CPU, forward only.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from port.blobkeys import data_key, is_blob_key, is_data
from port.export.onnx_file import ONNX_LIMITS  # the layer table's ONNX column reads it here

from . import numpy_ref

__all__ = [
    "PORT32",
    "PORT32_ACCURATE",
    "PORT64",
    "NUMPY32",
    "NUMPY64",
    "ONNX",
    "CAFFE_ATLAS",
    "CAFFE_OPENBLAS",
    "CAFFE_BUILDS",
    "caffe_runner",
    "is_caffe",
    "blas_of",
    "Runner",
    "RunnerOutput",
    "PortRunner",
    "NumpyRunner",
    "OnnxRunner",
    "GoldenRunner",
    "run_port",
    "run_numpy",
    "run_onnx",
    "ONNX_LIMITS",
]


# Runner names, as the command line and the reports spell them.
PORT32 = "port32"  # the subject: the port in float32 (the fast path MFV's default mode runs)
PORT32_ACCURATE = "port32-accurate"  # float32 blobs, float64 arithmetic (port.accumulate)
PORT64 = "port64"  # the port in float64: backward truth
NUMPY32 = "numpy32"
NUMPY64 = "numpy64"  # forward truth, independent of the port
ONNX = "onnx"
CAFFE_ATLAS = "caffe-atlas"
CAFFE_OPENBLAS = "caffe-openblas"
CAFFE_BUILDS = (CAFFE_ATLAS, CAFFE_OPENBLAS)


def caffe_runner(blas: str) -> str:
    """The runner name of a real-Caffe golden made with ``blas`` ("atlas" or "openblas")."""
    return f"caffe-{blas}"


def is_caffe(runner: str) -> bool:
    """True for the runner of a real-Caffe golden."""
    return runner.startswith("caffe-")


def blas_of(runner: str) -> str:
    """The BLAS of a real-Caffe golden's runner ("caffe-atlas" -> "atlas")."""
    return runner.removeprefix("caffe-")


@dataclass
class RunnerOutput:
    """What one runner produced.

    Attributes
    ----------
    name : str
        Runner name as the CLI spells it ("port32", "port64", "caffe-atlas", "caffe-openblas",
        "numpy32", "numpy64", "onnx").
    blobs : dict
        ``"data/<blob>"`` and (unless forward only) ``"diff/<blob>"`` -> ndarray.
    dtype : str
        Precision of the computation ("float32" or "float64").
    backward : bool
        Whether diffs are present.
    seconds : float
        Wall time of the run (0 for files read from disk).
    source : str
        Where the blobs came from (file path or a short description).
    meta : dict
        Anything else worth recording (e.g. the golden's manifest entry).
    """

    name: str
    blobs: dict[str, np.ndarray]
    dtype: str
    backward: bool
    seconds: float = 0.0
    source: str = ""
    meta: dict = field(default_factory=dict)

    def data(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.blobs.items() if is_data(k)}

    def describe(self) -> dict:
        return {
            "dtype": self.dtype,
            "backward": self.backward,
            "seconds": round(self.seconds, 4),
            "source": self.source,
            "blobs": len(self.blobs),
            **({"meta": self.meta} if self.meta else {}),
        }


def run_port(
    net: Any,
    x: np.ndarray | Mapping[str, np.ndarray],
    *,
    backward_from: str | None,
    name: str | None = None,
) -> RunnerOutput:
    """Run the port's blob dump.

    Parameters
    ----------
    net : port.CaffeNet
        Already in the wanted dtype (``net.to(torch.float64)`` for the float64 column).
    x : ndarray or mapping
        Input batch (N, C, H, W), or input name -> batch.
    backward_from : str or None
        ``"BLOB:UNIT"`` as in ``port dump``; None for forward only.
    name : str, optional
        Runner name; default ``port32`` / ``port64`` from the net's dtype.
    """
    import torch

    from port import dump_blobs

    param = next(iter(net.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    dt = "float64" if dtype == torch.float64 else "float32"
    if isinstance(x, Mapping):
        xt = {k: torch.as_tensor(np.asarray(v), dtype=dtype) for k, v in x.items()}
    else:
        xt = torch.as_tensor(np.asarray(x), dtype=dtype)
    t0 = time.perf_counter()
    blobs = dump_blobs(net, xt, backward_from=backward_from)
    secs = time.perf_counter() - t0
    blobs = {k: np.asarray(v) for k, v in blobs.items() if is_blob_key(k)}
    return RunnerOutput(
        name or (PORT64 if dt == "float64" else PORT32),
        blobs,
        dt,
        backward=backward_from is not None,
        seconds=secs,
        source="port.dump_blobs",
    )


def run_numpy(
    netdef: Any,
    weights: Mapping[str, list[np.ndarray]],
    x: np.ndarray | Mapping[str, np.ndarray],
    *,
    dtype: type = np.float64,
) -> RunnerOutput:
    """Forward the independent numpy reference in float32 or float64."""
    t0 = time.perf_counter()
    blobs = numpy_ref.forward_net(netdef, weights, x, dtype=dtype)
    secs = time.perf_counter() - t0
    dt = np.dtype(dtype).name
    return RunnerOutput(
        NUMPY64 if dt == "float64" else NUMPY32, blobs, dt, False, secs, "parity.numpy_ref"
    )


#: Layer types whose ONNX form differs from the port's eager one (all layer types export).


def run_onnx(
    net: Any,
    x: np.ndarray | Mapping[str, np.ndarray],
    *,
    opset: int = 17,
    keep: str | Path | None = None,
) -> RunnerOutput:
    """Export the (float32) port to ONNX with every blob an output and run it with ONNX Runtime.

    Parameters
    ----------
    net : port.CaffeNet
        Float32.
    x : ndarray or mapping
        Input batch, or input name -> array (one ONNX input per net input, named after it).
    opset : int
        ONNX opset of the export.
    keep : path, optional
        Where to keep the .onnx file; a temporary file otherwise.

    Notes
    -----
    The export uses the TorchScript-based exporter (``dynamo=False``) because it keeps the module's
    ops one to one (no decomposition to prims), which is what a layer-by-layer comparison wants.
    Every layer type of the port exports (see :data:`ONNX_LIMITS` for how some do); a blob whose
    output the exporter drops is missing from the result, and the comparison skips it.
    """
    import onnxruntime as ort
    import torch

    from port.export.onnx_file import export_onnx

    inputs = list(net.netdef.inputs)
    arrays = x if isinstance(x, Mapping) else {inputs[0]: x}
    xts = {k: torch.as_tensor(np.asarray(arrays[k]), dtype=torch.float32) for k in inputs}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(keep) if keep else Path(tmp) / "net.onnx"
        # The one export path users get from `port export --format onnx`, batch fixed here (a
        # recurrent net's axis 0 is time).
        export_onnx(net, path, xts, opset=opset, dynamic_batch=False)
        t1 = time.perf_counter()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        # The exporter drops inputs no output depends on (a Silence-only input).
        feed = {i.name: xts[i.name].numpy() for i in sess.get_inputs()}
        outs = sess.run(None, feed)
        got = [o.name for o in sess.get_outputs()]
    t2 = time.perf_counter()
    # The exporter may drop outputs that alias an input or another output; map by name.
    blobs = {data_key(k): v.numpy() for k, v in xts.items()}
    for oname, val in zip(got, outs, strict=True):
        blobs[data_key(oname)] = np.asarray(val)
    return RunnerOutput(
        "onnx",
        blobs,
        "float32",
        False,
        t2 - t1,
        str(keep) if keep else "onnx export (temporary)",
        {"opset": opset, "export_seconds": round(t1 - t0, 3)},
    )


@runtime_checkable
class Runner(Protocol):
    """What the parity run needs of a runner.

    Attributes
    ----------
    name : str
        The runner's name in plans and reports.
    """

    name: str

    def describe(self) -> dict:
        """What the runner is: ``kind``, ``dtype`` (of its arithmetic) and ``what`` (a phrase)."""
        ...

    def __call__(self, x: Any, *, backward_from: str | None = None) -> RunnerOutput:
        """Run on the batch ``x`` (an array, or input name -> array); diffs seeded at
        ``backward_from`` (``"BLOB:UNIT"``) when given and the runner has a backward pass."""
        ...


class PortRunner:
    """The PyTorch port (float32 or float64, from the net's parameters) through ``port.dump_blobs``.

    ``accumulate`` runs the net in that accumulation mode for the call (``"float64"``: the accurate
    mode of :class:`port.CaffeNet`), restoring the net's own mode afterwards, so that one net
    serves both configurations.
    """

    def __init__(self, net: Any, name: str | None = None, *, accumulate: str | None = None) -> None:
        import torch

        self.net = net
        self.accumulate = accumulate
        param = next(iter(net.parameters()), None)
        self.dtype = "float64" if param is not None and param.dtype == torch.float64 else "float32"
        self.name = name or (PORT64 if self.dtype == "float64" else PORT32)

    def describe(self) -> dict:
        what = "the PyTorch port (port.dump_blobs)"
        if self.accumulate == "float64":
            what += ", float32 blobs with float64 arithmetic in every layer (accumulate=float64)"
        return {"kind": "port", "dtype": self.dtype, "what": what}

    def __call__(self, x: Any, *, backward_from: str | None = None) -> RunnerOutput:
        if self.accumulate is None:
            return run_port(self.net, x, backward_from=backward_from, name=self.name)
        before = self.net.accumulate
        self.net.accumulate = self.accumulate
        try:
            out = run_port(self.net, x, backward_from=backward_from, name=self.name)
        finally:
            self.net.accumulate = before
        out.meta["accumulate"] = self.accumulate
        return out


class NumpyRunner:
    """The independent numpy reference (:mod:`parity.numpy_ref`), forward only."""

    def __init__(self, netdef: Any, weights: Mapping[str, list[np.ndarray]], dtype: type) -> None:
        self.netdef, self.weights, self.dtype = netdef, weights, np.dtype(dtype).name
        self.name = NUMPY64 if self.dtype == "float64" else NUMPY32

    def describe(self) -> dict:
        return {"kind": "numpy", "dtype": self.dtype, "what": "the numpy reference, forward only"}

    def __call__(self, x: Any, *, backward_from: str | None = None) -> RunnerOutput:
        return run_numpy(self.netdef, self.weights, x, dtype=np.dtype(self.dtype).type)


class OnnxRunner:
    """The float32 port exported to ONNX and run by ONNX Runtime, forward only."""

    name = ONNX

    def __init__(self, net: Any) -> None:
        self.net = net

    def describe(self) -> dict:
        return {"kind": "onnx", "dtype": "float32", "what": "ONNX Runtime on the exported port"}

    def __call__(self, x: Any, *, backward_from: str | None = None) -> RunnerOutput:
        return run_onnx(self.net, x)


class GoldenRunner:
    """A real-Caffe golden dump: recorded blobs, the same whatever the call (its input is the run's)."""

    def __init__(self, output: RunnerOutput) -> None:
        self.output = output
        self.name = output.name

    def describe(self) -> dict:
        return {"kind": "caffe", "dtype": self.output.dtype, "what": self.output.source}

    def __call__(self, x: Any, *, backward_from: str | None = None) -> RunnerOutput:
        return self.output
