"""An exported artefact (``port export``: python, pt2 or onnx) as a parity runner.

The artefact runs on the run's input and yields ``data/<blob>`` for every blob (and, for python
and pt2, ``diff/<blob>`` after the same backward pass as the port's, through ``port.dump_blobs``);
:func:`run_artefact_parity` then judges it in the port's place, under the same policy: the port
(float32 and float64) and every reference still run, and the verdict is the artefact's.

How each format gives every blob:

* python: ``forward(x, blobs=[...])`` returns the final values by name; the first value of a blob
  an in-place layer rewrites (what Caffe's diff is taken against) is the input of its first
  in-place layer, read by a forward pre-hook with the modules' ``inplace`` turned off;
* pt2: the program returns every blob, and ``first/<blob>`` for rewritten ones;
* onnx: every blob is an output (forward only: ONNX Runtime has no backward).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from port.blobkeys import is_blob_key, is_data
from port.errors import ToolError

from . import core, run
from .plan import default_plan
from .runners import RunnerOutput, is_caffe

__all__ = [
    "ARTEFACT",
    "ArtefactError",
    "ArtefactRunner",
    "load_artefact",
    "run_artefact",
    "run_artefact_parity",
]

#: The runner name of an artefact in reports.
ARTEFACT = "artefact"


class ArtefactError(ToolError):
    """The artefact cannot be read or run (unknown suffix, missing weights, wrong net)."""


def _load_python(path: Path):
    """The generated module's class instantiated with its weights, ``inplace`` turned off."""
    import torch
    from safetensors.torch import load_file

    from port.export import read_record

    record = read_record(path)
    name = f"_caffe_mfv_artefact_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ArtefactError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    classes = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, torch.nn.Module) and hasattr(v, "IN_PLACE")
    ]
    cls = getattr(module, record.get("class", ""), None) or (classes[0] if classes else None)
    if cls is None:
        raise ArtefactError(f"{path}: no generated module class (one with IN_PLACE) in the file")
    weights = path.with_name(record.get("weights", path.stem + ".safetensors"))
    if not weights.is_file():
        raise ArtefactError(f"{path}: its weights {weights} are missing")
    net = cls()
    net.load_state_dict(load_file(str(weights)))
    for m in net.modules():
        if hasattr(m, "inplace"):
            m.inplace = False  # the first value of a rewritten blob must survive its rewriting
    return net.eval()


class _Artefact:
    """A python or pt2 artefact with the part of ``port.CaffeNet``'s interface that
    ``port.dump_blobs`` uses (``run``, ``netdef``, ``module``, ``parameters``)."""

    def __init__(self, path: Path, port_net: Any) -> None:
        import torch

        self.path = path
        self.kind = path.suffix.lstrip(".")
        self.port = port_net  # the port's layer modules say what Caffe's backward does
        self.netdef = port_net.netdef
        self.names = list(port_net.blob_names)
        if self.kind == "py":
            self.net = _load_python(path)
        else:
            self.net = torch.export.load(str(path)).module()
        self._dtype = torch.zeros((), dtype=torch.float32)

    def parameters(self):
        return iter([self._dtype])

    def module(self, layer_name: str):
        return self.port.module(layer_name)

    def run(self, x, *, keep_first: bool = False):
        inputs = x if isinstance(x, Mapping) else {next(iter(self.netdef.inputs)): x}
        xs = [inputs[n] for n in self.netdef.inputs]
        if self.kind == "pt2":
            out = self.net(*xs)
            final = {b: out[b] for b in self.names}
            return final, {b: out.get("first/" + b, final[b]) for b in self.names}
        first: dict = {}
        hooks, seen = [], set()
        for attr, blob in self.net.IN_PLACE:
            if blob not in seen:
                seen.add(blob)
                hooks.append(
                    getattr(self.net, attr).register_forward_pre_hook(
                        lambda m, args, b=blob: first.__setitem__(b, args[0])
                    )
                )
        try:
            final = self.net(*xs, blobs=self.names)
        finally:
            for h in hooks:
                h.remove()
        return final, {b: first.get(b, final[b]) for b in self.names}


def load_artefact(path: str | Path, port_net: Any) -> _Artefact:
    """A python (``.py``) or pt2 (``.pt2``) artefact, ready for ``port.dump_blobs``."""
    path = Path(path)
    if path.suffix not in (".py", ".pt2"):
        raise ArtefactError(f"{path}: an artefact is a .py, .pt2 or .onnx file")
    if not path.is_file():
        raise ArtefactError(f"{path}: no such artefact")
    return _Artefact(path, port_net)


def _run_onnx_file(path: Path, netdef: Any, x: Any) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    inputs = x if isinstance(x, Mapping) else {next(iter(netdef.inputs)): x}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {i.name: np.asarray(inputs[i.name], dtype=np.float32) for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    out = {f"data/{n}": np.asarray(v) for n, v in zip(names, sess.run(None, feed), strict=True)}
    # The graph does not output its inputs; they are blobs all the same, and the artefact's.
    out.update({f"data/{n}": np.asarray(v, dtype=np.float32) for n, v in inputs.items()})
    return out


def run_artefact(
    path: str | Path, port_net: Any, x: Any, *, backward_from: str | None
) -> RunnerOutput:
    """Run an artefact on ``x``: every blob's data, and its diffs for python and pt2.

    Parameters
    ----------
    path : path
        ``.py`` (with its ``.safetensors`` beside it), ``.pt2`` or ``.onnx``.
    port_net : port.CaffeNet
        The port of the same definition (names the blobs; its modules say which bottoms Caffe
        does not back-propagate to).
    x : ndarray or mapping
    backward_from : str or None
        ``BLOB:UNIT``; ignored for onnx (forward only).
    """
    import torch

    from port import dump_blobs

    path = Path(path)
    t0 = time.perf_counter()
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ArtefactError(f"{path}: no such artefact")
        blobs = _run_onnx_file(path, port_net.netdef, x)
        backward = False
    else:
        art = load_artefact(path, port_net)
        xt = (
            {k: torch.as_tensor(np.asarray(v)) for k, v in x.items()}
            if isinstance(x, Mapping)
            else torch.as_tensor(np.asarray(x))
        )
        try:
            raw = dump_blobs(art, xt, backward_from=backward_from)
        except KeyError as exc:
            raise ArtefactError(f"{path}: the artefact lacks blob {exc} of this net") from None
        blobs = {k: np.asarray(v) for k, v in raw.items() if is_blob_key(k)}
        backward = backward_from is not None
    return RunnerOutput(
        ARTEFACT,
        blobs,
        "float32",
        backward,
        time.perf_counter() - t0,
        str(path),
        {"format": path.suffix.lstrip(".")},
    )


class ArtefactRunner:
    """A ``port export`` artefact as a :class:`parity.runners.Runner` named ``artefact``."""

    name = ARTEFACT

    def __init__(self, path: str | Path, port_net: Any) -> None:
        self.path = Path(path)
        self.port_net = port_net

    def describe(self) -> dict:
        fmt = self.path.suffix.lstrip(".")
        return {"kind": "artefact", "dtype": "float32", "what": f"{fmt} artefact {self.path}"}

    def __call__(self, x: Any, *, backward_from: str | None = None) -> RunnerOutput:
        return run_artefact(self.path, self.port_net, x, backward_from=backward_from)


def _forward_only(out: RunnerOutput) -> RunnerOutput:
    data = {k: v for k, v in out.blobs.items() if is_data(k)}
    return RunnerOutput(out.name, data, out.dtype, False, out.seconds, out.source, out.meta)


def run_artefact_parity(
    setup: Any, path: str | Path, *, references: Any, local_check: bool = True
) -> tuple[Any, dict[str, RunnerOutput]]:
    """:func:`parity.run.run_parity` with the artefact as the judged subject.

    The port and the references run as in a plain run; the artefact is one more runner, judged by
    :func:`parity.plan.default_plan` with the artefact as its subject (every pair and rule the
    port's).
    """
    run._check_references(references)
    net32, net64 = run._build_nets(setup, None)
    outs = run._run_ports(setup, net32, net64, accurate=False)  # the artefact is the subject
    outs.update(run._run_references(setup, net32, references)[0])
    outs[ARTEFACT] = ArtefactRunner(path, net32)(setup.x, backward_from=setup.backward_from)
    rows = run._local_check(setup, net32, net64, outs) if local_check else []
    notes = list(setup.notes)
    if not outs[ARTEFACT].backward:
        notes.append(f"artefact {path}: forward only (ONNX Runtime has no backward)")
        # The goldens' diffs have no counterpart to be judged against.
        outs = {k: _forward_only(o) if is_caffe(k) else o for k, o in outs.items()}
    result = core.judge(
        setup.netdef,
        outs,
        plan=default_plan(outs, subject=ARTEFACT),
        model=setup.name,
        local=rows,
        notes=notes,
        net64=net64,
        backward_from=setup.backward_from,
    )
    result.backward_from = setup.backward_from
    result.input_source = setup.input_source
    return result, outs
