"""Every blob's data after forward and diff after backward, with pycaffe's meaning."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .atomic import atomic_path
from .blobkeys import data_key, diff_key
from .errors import CaffeError
from .net import CaffeNet


class BackwardSeed(NamedTuple):
    """Where a backward pass starts: a one-hot at flat index ``unit`` of ``blob`` in every sample.

    Written ``BLOB:UNIT`` on command lines and in reports (``str(seed)``); the blob name may itself
    contain ':', the unit follows the last one. A plain ``(blob, unit)`` tuple is accepted wherever
    a seed is.
    """

    blob: str
    unit: int

    @classmethod
    def parse(cls, spec: str | tuple[str, int]) -> BackwardSeed:
        """``"BLOB:UNIT"`` (or a ``(blob, unit)`` pair, or a BackwardSeed) -> BackwardSeed.

        Raises
        ------
        CaffeError
            ``spec`` is not ``BLOB:UNIT`` with an integer unit (field ``backward-from``).
        """
        if isinstance(spec, tuple):
            return cls(*spec)
        blob, sep, unit = str(spec).rpartition(":")
        if not sep or not blob or not unit.lstrip("-").isdigit():
            raise CaffeError(
                f"--backward-from expects BLOB:UNIT, got {spec!r}", field="backward-from"
            )
        return cls(blob, int(unit))

    def __str__(self) -> str:
        return f"{self.blob}:{self.unit}"


def dump_blobs(
    net: CaffeNet,
    x: np.ndarray | torch.Tensor | Mapping[str, np.ndarray | torch.Tensor],
    *,
    backward_from: BackwardSeed | tuple[str, int] | str | None = None,
) -> dict[str, np.ndarray]:
    """Run forward (and optionally backward) and return every blob like pycaffe's ``net.blobs``.

    Parameters
    ----------
    net : CaffeNet
        Its dtype and device decide the precision and where it runs.
    x : array, tensor or mapping
        Preprocessed input batch (N, C, H, W), or input name -> batch.
    backward_from : BackwardSeed, (blob, unit) or "BLOB:UNIT", optional
        Seed a one-hot at flat index ``unit`` of ``blob`` in every sample and backpropagate through
        all layers up to the last one that writes ``blob``.

    Returns
    -------
    dict of str to numpy.ndarray
        ``data/<blob>`` for every blob, and with ``backward_from`` ``diff/<blob>`` for every blob:
        the gradient with respect to the blob's first version (what Caffe's in-place layers leave
        in ``diff``), zero for blobs the backward pass does not reach. Where the backward pass
        crosses a layer Caffe cannot back-propagate through (ArgMax, Threshold, STOCHASTIC pooling)
        or into a bottom it cannot back-propagate to (Embed's indices, Filter's selector,
        BatchReindex's indices), no gradient is invented: that path contributes zero, and
        ``nograd/<layer>`` (a string array) says which layer and why. Real Caffe with
        ``force_backward`` aborts there instead.
    """
    param = next(iter(net.parameters()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")

    def as_tensor(a):
        t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
        return t.to(device=device, dtype=dtype).detach().requires_grad_(backward_from is not None)

    inputs = {k: as_tensor(v) for k, v in x.items()} if isinstance(x, Mapping) else as_tensor(x)
    with torch.set_grad_enabled(backward_from is not None):
        final, first = net.run(inputs, keep_first=True)
        out = {data_key(name): t.detach().cpu().numpy() for name, t in final.items()}
        if backward_from is None:
            return out
        blob, unit = BackwardSeed.parse(backward_from)
        if blob not in final:
            raise CaffeError(
                f"no blob {blob!r} to start backward from",
                path=net.netdef.path,
                field="backward-from",
            )
        target = final[blob]
        per_sample = target[0].numel() if target.dim() else 1
        if not 0 <= unit < per_sample:
            raise CaffeError(
                f"unit {unit} is outside blob {blob!r} ({per_sample} values per sample)",
                path=net.netdef.path,
                field="backward-from",
            )
        seed = torch.zeros_like(target).reshape(target.shape[0], -1)
        seed[:, unit] = 1
        # Tops of layers without a backward (ArgMax, Threshold...) are outside the graph.
        live = (
            [name for name, t in first.items() if t.requires_grad] if target.requires_grad else []
        )
        found = (
            torch.autograd.grad(
                target,
                [first[n] for n in live],
                grad_outputs=seed.reshape(target.shape),
                allow_unused=True,
            )
            if live
            else ()
        )
        by_name = dict(zip(live, found, strict=True))
        grads = [by_name.get(name) for name in first]
    for (name, t), g in zip(first.items(), grads, strict=True):
        out[diff_key(name)] = (torch.zeros_like(t) if g is None else g).detach().cpu().numpy()
    out.update(no_gradient_notes(net, blob))
    out.update(inexact_in_place_notes(net, blob))
    return out


def inexact_in_place_notes(net: CaffeNet, blob: str) -> dict[str, np.ndarray]:
    """``inexact/<layer>`` notes where Caffe's in-place backward reads overwritten values.

    A layer outside :data:`port.layers.IN_PLACE_TYPES` run in place reads its top as if it were its
    bottom; a layer of :data:`port.layers.TOP_READING_TYPES` whose top a later in-place layer
    rewrites reads the rewritten values. Caffe's diff there differs from the port's true gradient.
    """
    from .layers import IN_PLACE_TYPES, TOP_READING_TYPES

    layers = net.netdef.layers
    writers = [i for i, layer in enumerate(layers) if blob in layer.tops]
    notes = {}
    for i, layer in enumerate(layers[: writers[-1] + 1] if writers else []):
        why = []
        if layer.in_place and layer.type not in IN_PLACE_TYPES:
            why.append(f"{layer.type}'s backward reads its bottom, which in place holds its top")
        if layer.type in TOP_READING_TYPES:
            later = [m.name for m in layers[i + 1 :] if m.in_place and m.tops[0] in layer.tops]
            if later:
                why.append(
                    f"{layer.type}'s backward reads its top, which in-place layer "
                    f"{later[0]!r} rewrites"
                )
        if why:
            notes[f"inexact/{layer.name}"] = np.array(
                "; ".join(why) + ": Caffe's diff differs from this (true) gradient"
            )
    return notes


def no_gradient_notes(net: CaffeNet, blob: str) -> dict[str, np.ndarray]:
    """``nograd/<layer>`` notes for the layers up to the last writer of ``blob`` that Caffe cannot
    back-propagate through (whole layer) or to some of their bottoms."""
    writers = [i for i, layer in enumerate(net.netdef.layers) if blob in layer.tops]
    if not writers:
        return {}
    notes = {}
    for layer in net.netdef.layers[: writers[-1] + 1]:
        module = net.module(layer.name)
        # Modules that are not CaffeLayers (a caller's replacement) state nothing.
        reasons = (
            [] if getattr(module, "backward", True) else [f"{layer.type} has no backward in Caffe"]
        )
        reasons += [
            f"bottom {i} ({layer.bottoms[i]!r}): {why}"
            for i, why in sorted(getattr(module, "no_gradient", {}).items())
            if i < len(layer.bottoms)
        ]
        if reasons:
            notes[f"nograd/{layer.name}"] = np.array("; ".join(reasons))
    return notes


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays to ``path`` (.npz, compressed) atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def check_input_batch(x: np.ndarray, *, path: str | Path) -> np.ndarray:
    """Refuse an input batch that no Caffe run takes: not (N, C, H, W) with N >= 1, not real
    numbers (complex, bool, strings, objects, records), or not finite (NaN, Inf).

    Returns ``x``; a refusal is a :class:`~port.errors.CaffeError` naming ``path``.
    """
    if x.dtype.kind not in "fiu":  # float, signed, unsigned: what Caffe's float blobs can hold
        raise CaffeError(
            f"input batch has dtype {x.dtype}; real numbers (float or int) expected", path=path
        )
    if x.ndim != 4:
        raise CaffeError(f"input batch has shape {x.shape}; (N, C, H, W) expected", path=path)
    if 0 in x.shape:
        raise CaffeError(f"input batch has shape {x.shape}; no dimension may be 0", path=path)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise CaffeError(f"input batch holds {bad} NaN or infinite value(s)", path=path)
    return x


def read_input_batch(path: str | Path) -> np.ndarray:
    """The (N, C, H, W) batch in the ``.npy`` file ``path``, checked by :func:`check_input_batch`.

    Read by :func:`port.arrays.load_npy` (no pickles, size capped); an unreadable file is a
    :class:`~port.errors.CaffeError` naming the file.
    """
    from .arrays import load_npy

    x = load_npy(path)  # bounded: the header is checked before the data is read
    return check_input_batch(x, path=path)
