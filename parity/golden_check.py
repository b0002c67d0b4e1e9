"""Goldens are checked before they are trusted: each on its own, against the net and float64.

A golden widens the noise every port blob is judged against (the ATLAS-vs-OpenBLAS spread), so
one tampered golden can hide a wrong port: a blob of noise makes that blob's spread ~1 and the
port's error there vanishes under it. Comparing the goldens with each other cannot catch this (the
spread *is* their difference), so each golden is checked alone, in two stages:

1. :func:`check_arrays`, before any computation: every ``data/``, ``diff/`` and ``input/`` array is
   float32 or float64 (no bool, integer, complex, object or structured array), has the shape the
   net gives that blob for the golden's own input, is finite, and every blob of the net is there
   (with its diff, when the golden has a backward pass).
2. :func:`check_consistency`: every layer re-run in float64 on the golden's *own* inputs must land
   within the float32 error that layer can have. Forward: the numpy float64 reference
   (:mod:`parity.numpy_ref`, independent of the port) on the golden's bottoms, against its tops.
   Backward: a blob's diff recomputed in float64 from the golden's own forward data and its
   consumers' top diffs (the port's layers in float64: there is no independent float64 backward),
   against the golden's diff; the backward seed's diff is the one-hot itself. Blobs whose Caffe
   backward is not the true gradient (``inexact/`` layers, :func:`port.dump.inexact_in_place_notes`)
   and layers without a numpy reference are left unchecked and named in the notes.

Gate flips cannot arise here: every gate (a ReLU's sign, a MAX window's choice) of the recomputed
backward is decided on the golden's own stored forward values, the very values Caffe decided on,
and PyTorch breaks exact ties in a MAX window as Caffe does (first in scan order; checked: an
all-zero 3x3 window routes its gradient to the first element in both). A flip between
the golden and the port is still the judge's business (:mod:`parity.gates`).

The bounds (``FORWARD_REL``, ``BACKWARD_REL``) are relative to the float64 result's range, as every
error in :mod:`parity.tolerance`, and come from the committed real goldens; see their comments.
A golden that fails is refused with :class:`GoldenCheckError` (exit 2, bad input) naming the file,
the blob, the layer and the figures: a run is never judged against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from port.blobkeys import is_data, is_diff
from port.dump import BackwardSeed
from port.errors import CaffeError

from . import local, numpy_ref
from .compare import metrics
from .golden_inputs import ParitySetupError, golden_inputs

__all__ = [
    "BACKWARD_REL",
    "FORWARD_REL",
    "GoldenCheckError",
    "check_arrays",
    "check_consistency",
    "check_goldens",
]

# The largest error a float32 Caffe layer makes, relative to the float64 result's range, measured
# with this module on every committed real golden (both builds: CaffeNet astronaut, mini_resnet,
# the layer and architecture cases, the SSD Python layers; 25 forward layer types, 29 backward
# consumer mixes). Forward, worst per type: Convolution 1.87e-6 (CaffeNet conv3, 2304-term sums),
# LRN 1.19e-6, InnerProduct 8.8e-7, Pooling 3.7e-7, LSTM 2.9e-7, every other type <= 1.7e-7.
# Backward: LRN 9.1e-7 (CaffeNet diff/pool2), InnerProduct 3.5e-7, Convolution 2.0e-7, every
# other mix <= 2.0e-7. The error hardly follows the sums' length (ATLAS: conv1, 363 terms,
# 5.5e-7; conv3, 2304 terms, 1.9e-6; fc6, 9216 terms, 7.4e-7; OpenBLAS <= 1.2e-6 everywhere);
# were the worst to grow as the square root of the length up to VGG16's fc6 (25088 terms), it
# would reach ~6e-6. 2e-5 is 10.7x the worst measured and 3.2x that extrapolation, and 50x under
# the 1e-3 change (a blob scaled by 1.001) a golden must not hide; every tampering the tests plant
# is 1e-3 or far more. What it cannot stop: a golden nudged by less than 2e-5 of a blob's range
# can widen that blob's spread (and so the port's tolerance, 4x spread) to at most ~8e-5 of it.
FORWARD_REL = 2e-5
BACKWARD_REL = 2e-5

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# Layers whose top's first axis depends on the data (Filter keeps the selected items): the net
# gives only its upper bound, so there and downstream the first axis may be smaller; the forward
# check recomputes the exact shape from the golden's own selector.
DATA_DEPENDENT_TYPES = {"Filter"}
_BLOB_PREFIXES = ("data/", "diff/", "input/")


class GoldenCheckError(ParitySetupError):
    """A golden that cannot be trusted: wrong dtype or shape, non-finite, or not Caffe's float32
    computation of the net on its own inputs."""


def _fail(source: str, why: str) -> GoldenCheckError:
    return GoldenCheckError(f"{source}: golden refused: {why}")


def _dtype_of(source: str, key: str, value: Any) -> None:
    """Only float32/float64 arrays: a bool, integer or complex blob would be cast silently later."""
    dtype = getattr(value, "dtype", None)
    if not isinstance(value, np.ndarray) or dtype not in _FLOATS:
        raise _fail(
            source,
            f"{key} is {getattr(dtype, 'name', type(value).__name__)}, not float32 or float64 "
            "(a Caffe blob is float32; a float64 dump is accepted)",
        )


def _golden_input_shapes(netdef: Any, arrays: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name in netdef.inputs:
        value = arrays.get(f"input/{name}", arrays.get(f"data/{name}"))
        if value is not None:
            shapes[name] = tuple(int(d) for d in value.shape)
    return shapes


def expected_shapes(netdef: Any, arrays: Mapping[str, Any], source: str) -> dict[str, tuple]:
    """Every blob's shape as the net makes it from the golden's own input shapes."""
    from port.validate import validate_netdef

    given = _golden_input_shapes(netdef, arrays)
    inputs = {k: given.get(k, v) for k, v in netdef.inputs.items()}
    try:
        return validate_netdef(dataclasses.replace(netdef, inputs=inputs), memory_bytes=2**62)
    except CaffeError as exc:
        raise _fail(source, f"its input shapes {given} do not fit the net: {exc}") from None


def _data_dependent(netdef: Any) -> set[str]:
    out: set[str] = set()
    for layer in netdef.layers:
        if layer.type in DATA_DEPENDENT_TYPES or any(b in out for b in layer.bottoms):
            out.update(layer.tops)
    return out


def _shape_fits(got: tuple, want: tuple, loose: bool) -> bool:
    if loose and len(got) == len(want) and got[1:] == want[1:]:
        return 0 <= got[0] <= want[0]
    return got == want


def check_arrays(netdef: Any, arrays: Mapping[str, Any], source: str) -> None:
    """Refuse a golden whose arrays are not float blobs of the net's shapes, finite, complete.

    Parameters
    ----------
    netdef : NetDef
        The definition the golden must be a dump of.
    arrays : mapping str -> ndarray
        The golden file's arrays (``data/``, ``diff/``, ``input/``; notes such as ``nograd/`` are
        not blobs and pass).
    source : str
        The file, for the message.

    Raises
    ------
    GoldenCheckError
        Naming the first key at fault and why.
    """
    for key, value in arrays.items():
        if key.startswith(_BLOB_PREFIXES):
            _dtype_of(source, key, value)
    golden_inputs(netdef, arrays, source)  # each net input is there, or a message that says so
    shapes = expected_shapes(netdef, arrays, source)
    has_diff = any(is_diff(k) for k in arrays)
    loose = _data_dependent(netdef)
    for blob in shapes:
        if f"data/{blob}" not in arrays and not (
            blob in netdef.inputs and f"input/{blob}" in arrays
        ):
            raise _fail(source, f"data/{blob} is missing: the golden must hold every blob")
        if has_diff and f"diff/{blob}" not in arrays:
            raise _fail(source, f"diff/{blob} is missing: a backward golden holds every diff")
    for key, value in arrays.items():
        if not key.startswith(_BLOB_PREFIXES):
            continue
        blob = key.split("/", 1)[1]
        if blob not in shapes:
            raise _fail(source, f"{key}: the net has no blob {blob!r}")
        want = tuple(shapes[blob])
        if is_diff(key) and f"data/{blob}" in arrays:
            want = tuple(arrays[f"data/{blob}"].shape)  # a diff has its data's shape, exactly
        if not _shape_fits(tuple(value.shape), want, blob in loose):
            raise _fail(
                source,
                f"{key} has shape {tuple(value.shape)}; the net makes {want} from the "
                "golden's input",
            )
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            raise _fail(source, f"{key} holds {bad} non-finite value(s) (NaN or infinity)")


def _blob(arrays: Mapping[str, Any], blob: str) -> np.ndarray:
    value = arrays.get(f"data/{blob}")
    return np.asarray(arrays[f"input/{blob}"] if value is None else value)


def _rel(golden: np.ndarray, truth: np.ndarray) -> float:
    # A top of another shape than the recomputation (Filter's, downstream) departs infinitely.
    return metrics(golden, truth).max_rel if golden.shape == truth.shape else float("inf")


def _forward_rows(netdef: Any, weights: Mapping, arrays: Mapping[str, Any]) -> tuple[list, list]:
    """(rows, unchecked): each unit's tops recomputed by numpy float64 on the golden's bottoms."""
    rows, unchecked = [], []
    for layer, chain in local.units(netdef):
        if any(numpy_ref.layer_function(u) is None for u in (layer, *chain)):
            unchecked.append(f"{layer.name} (no numpy reference for {layer.type})")
            continue
        bottoms = [_blob(arrays, b).astype(np.float64) for b in layer.bottoms]
        truth = local._numpy_unit(layer, chain, bottoms, weights)
        for top, tr in zip(layer.tops, truth, strict=True):
            rows.append(("data/" + top, layer.name, _rel(_blob(arrays, top), tr), FORWARD_REL))
    return rows, unchecked


def _net64(netdef: Any, weights: Mapping) -> Any:
    import torch

    import port

    net = port.CaffeNet(netdef)
    net.load_blobs(weights)
    return net.eval().to(torch.float64)


def _consumer_grad(net64: Any, layer: Any, blob: str, arrays: Mapping[str, Any]) -> Any:
    """d(layer's tops . golden's top diffs) / d(blob), in float64 on the golden's own data."""
    import torch

    module = net64.module(layer.name)
    if not getattr(module, "backward", True):
        return None  # Caffe has no backward here: the path contributes nothing
    skip = set(getattr(module, "no_gradient", {}) or {})
    ins = [
        torch.tensor(
            _blob(arrays, b), dtype=torch.float64, requires_grad=(b == blob and i not in skip)
        )  # fmt: skip
        for i, b in enumerate(layer.bottoms)
    ]
    targets = [x for x in ins if x.requires_grad]
    if not targets:
        return None
    with torch.enable_grad():
        outs = list(module(*ins))
        live = [
            (o, torch.tensor(np.asarray(arrays[f"diff/{t}"]), dtype=torch.float64))
            for o, t in zip(outs, layer.tops, strict=True)
            if o.requires_grad
        ]
        if not live:
            return None
        gs = torch.autograd.grad(
            [o for o, _ in live], targets, grad_outputs=[g for _, g in live], allow_unused=True
        )
    found = [g for g in gs if g is not None]
    return sum(found[1:], found[0]) if found else None


def _through_chain(net64: Any, chain: list, blob: str, grad: Any, arrays: Mapping) -> Any:
    """Backward through the blob's own in-place layers (relu1 on conv1), on its final values."""
    import torch

    for lc in reversed([c for c in chain if c.bottoms[0] == blob]):
        v = torch.tensor(_blob(arrays, blob), dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            out = net64.module(lc.name)(v)[0]
            (grad,) = torch.autograd.grad(out, [v], grad_outputs=grad)
    return grad


def _learnable_upstream(netdef: Any, weights: Mapping) -> set[str]:
    """Blobs Caffe back-propagates to without ``force_backward``: those at or below a layer with
    weights. A golden made without it (Embed, Filter nets) leaves every other diff at zero."""
    need: set[str] = set()
    for layer in netdef.layers:
        if weights.get(layer.name) or any(b in need for b in layer.bottoms):
            need.update(layer.tops)
    return need


def _backward_plan(netdef: Any, backward_from: str | None) -> tuple[Any, dict, dict]:
    """(seed, blob -> consumer layers that take part in the backward, blob -> producer chain)."""
    seed = BackwardSeed.parse(backward_from) if backward_from else None
    last = len(netdef.layers) - 1
    if seed is not None:
        writer = netdef.last_writer(seed.blob)
        last = last if writer is None else writer
    index = {lay.name: i for i, lay in enumerate(netdef.layers)}
    consumers: dict[str, list] = {}
    chains: dict[str, list] = {}
    for layer, chain in local.units(netdef):
        for t in layer.tops:
            chains[t] = chain
        if index[layer.name] > last:
            continue  # after the backward start: took no part in the golden's backward
        for b in dict.fromkeys(layer.bottoms):
            if seed is None or b != seed.blob:
                consumers.setdefault(b, []).append(layer)
    return seed, consumers, chains


def _inexact_blobs(net64: Any, seed: Any) -> dict[str, str]:
    """Blob -> the ``inexact/`` layer whose Caffe backward is not the true gradient there."""
    from port.dump import inexact_in_place_notes

    if seed is None:
        return {}
    out = {}
    by_name = {layer.name: layer for layer in net64.netdef.layers}
    for key in inexact_in_place_notes(net64, seed.blob):
        layer = by_name[key.split("/", 1)[1]]
        for b in (*layer.bottoms, *layer.tops):
            out.setdefault(b, layer.name)
    return out


def _diff_truth(blob, seed, consumers, chains, net64, arrays) -> np.ndarray:
    """The blob's diff recomputed in float64 from the golden's own data and top diffs."""
    import torch

    shape = _blob(arrays, blob).shape
    if seed is not None and blob == seed.blob:
        grad = torch.zeros(shape, dtype=torch.float64)
        grad.reshape(shape[0], -1)[:, seed.unit] = 1.0
    else:
        found = [_consumer_grad(net64, c, blob, arrays) for c in consumers.get(blob, [])]
        found = [g for g in found if g is not None]
        if not found:
            return np.zeros(shape)  # no layer of the backward reads it: Caffe leaves it at zero
        grad = sum(found[1:], found[0])
    return _through_chain(net64, chains.get(blob, []), blob, grad, arrays).detach().numpy()


def _backward_order(netdef: Any) -> list[str]:
    """Blobs in the order backward reaches them (last produced first), inputs last: a tampered
    diff departs first at itself, then at the blobs below that are computed from it."""
    order = list(netdef.inputs)
    for layer in netdef.layers:
        order += [t for t in layer.tops if t not in order]
    return order[::-1]


def _check_seed(netdef: Any, arrays: Mapping[str, Any], seed: Any) -> None:
    """The start of the backward exists, as ``port.dump_blobs`` requires, before it is used."""
    if seed is None:
        return
    if f"data/{seed.blob}" not in arrays and seed.blob not in netdef.inputs:
        raise CaffeError(
            f"no blob {seed.blob!r} to start backward from",
            path=netdef.path,
            field="backward-from",
        )
    shape = _blob(arrays, seed.blob).shape
    per_sample = int(np.prod(shape[1:])) if len(shape) else 1
    if not 0 <= seed.unit < per_sample:
        raise CaffeError(
            f"unit {seed.unit} is outside blob {seed.blob!r} ({per_sample} values per sample)",
            path=netdef.path,
            field="backward-from",
        )


def _backward_rows(
    netdef: Any,
    weights: Mapping,
    arrays: Mapping[str, Any],
    backward_from: str | None,
    net64: Any = None,
) -> tuple[list, list]:
    """(rows, unchecked): every diff against its float64 recomputation from the golden alone."""
    net64 = _net64(netdef, weights) if net64 is None else net64
    seed, consumers, chains = _backward_plan(netdef, backward_from)
    _check_seed(netdef, arrays, seed)
    inexact = _inexact_blobs(net64, seed)
    learnable = _learnable_upstream(netdef, weights)
    rows, unchecked = [], []
    for blob in _backward_order(netdef):
        key = f"diff/{blob}"
        if key not in arrays:
            continue
        if blob in inexact:
            unchecked.append(f"{key} (Caffe's backward of {inexact[blob]} is inexact in place)")
            continue
        golden = np.asarray(arrays[key])
        truth = _diff_truth(blob, seed, consumers, chains, net64, arrays)
        if blob not in learnable and not golden.any():
            continue  # a golden made without force_backward: Caffe computed no diff here
        layer = ",".join(c.name for c in consumers.get(blob, [])) or "(seed)"
        rows.append((key, layer, _rel(golden, truth), BACKWARD_REL))
    return rows, unchecked


def check_consistency(
    netdef: Any,
    weights: Mapping[str, list[np.ndarray]],
    arrays: Mapping[str, Any],
    source: str,
    backward_from: str | None = None,
    *,
    net64: Any = None,
) -> dict:
    """Every layer of one golden re-run in float64 on that golden's own inputs.

    Parameters
    ----------
    netdef : NetDef
    weights : mapping layer name -> list of ndarray
        The weights the golden was made with (those of the run).
    arrays : mapping str -> ndarray
        The golden, already through :func:`check_arrays`.
    source : str
        The file, for messages.
    backward_from : str, optional
        ``"BLOB:UNIT"`` the golden's backward started from.
    net64 : port.CaffeNet, optional
        The float64 port built from ``netdef`` and ``weights`` (built here when not given), never
        the port under test: its backward recomputes the diffs.

    Returns
    -------
    dict
        ``checked`` (number of blobs), ``worst`` (key, layer, error, allowed) with the largest
        error-to-allowed ratio, ``unchecked`` (list of str: what could not be recomputed and why).

    Raises
    ------
    GoldenCheckError
        At the blob (in net order) whose error exceeds its bound, naming the layer and figures.
    """
    rows, unchecked = _forward_rows(netdef, weights, arrays)
    if any(is_diff(k) for k in arrays):
        brows, bun = _backward_rows(netdef, weights, arrays, backward_from, net64)
        rows += brows
        unchecked += bun
    bad = [r for r in rows if not r[2] <= r[3]]
    if bad:
        # Forward in net order, backward in backward order: the first to depart is the array at
        # fault; the blobs computed from it depart after it.
        key, layer, err, allowed = bad[0]
        how = "forward" if is_data(key) else f"backward from {backward_from}"
        also = f" (then also {', '.join(r[0] for r in bad[1:4])})" if bad[1:] else ""
        if layer == "(seed)":
            raise _fail(
                source,
                f"{key} is not the one-hot of --backward-from {backward_from} (off by {err:.3g} "
                "of its range): the golden's backward started elsewhere; pass its BLOB:UNIT",
            )
        # Backward truth is the port's own float64 layer: say so, as the port may be the one wrong.
        port_too = (
            "" if is_data(key) else
            f"; if every golden departs here, suspect the port's backward of {layer} instead"
        )  # fmt: skip
        raise _fail(
            source,
            f"{key} is {err:.3g} of its range away from layer {layer}'s float64 {how} on the "
            f"golden's own inputs (a float32 Caffe stays within {allowed:.1g}){also}: not "
            f"Caffe's computation of this net with these weights{port_too}",
        )
    worst = max(rows, key=lambda r: r[2] / r[3], default=None)
    return {"checked": len(rows), "worst": worst, "unchecked": unchecked}


def check_goldens(
    netdef: Any,
    weights: Mapping[str, list[np.ndarray]],
    goldens: Mapping[str, Any],
    backward_from: str | None = None,
) -> list[str]:
    """:func:`check_consistency` for each golden (runner name -> RunnerOutput); notes for the report."""
    notes = []
    net64 = _net64(netdef, weights) if goldens else None
    for name, out in goldens.items():
        r = check_consistency(netdef, weights, out.blobs, out.source, backward_from, net64=net64)
        line = f"{name} checked on its own: {r['checked']} blobs within float32 of float64"
        if r["worst"] is not None:
            key, _layer, err, allowed = r["worst"]
            line += f" (closest: {key} at {err / allowed:.2f} of its bound)"
        if r["unchecked"]:
            line += f"; not recomputable: {', '.join(r['unchecked'])}"
        notes.append(line)
    return notes
