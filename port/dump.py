"""Every blob's data after forward and diff after backward, with pycaffe's meaning."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .atomic import atomic_path
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
            raise CaffeError(f"--backward-from expects BLOB:UNIT, got {spec!r}",
                             field="backward-from")
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
        in ``diff``), zero for blobs the backward pass does not reach.
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
        out = {f"data/{name}": t.detach().cpu().numpy() for name, t in final.items()}
        if backward_from is None:
            return out
        blob, unit = BackwardSeed.parse(backward_from)
        if blob not in final:
            raise CaffeError(f"no blob {blob!r} to start backward from", path=net.netdef.path,
                             field="backward-from")
        target = final[blob]
        per_sample = target[0].numel() if target.dim() else 1
        if not 0 <= unit < per_sample:
            raise CaffeError(f"unit {unit} is outside blob {blob!r} ({per_sample} values per "
                             "sample)", path=net.netdef.path, field="backward-from")
        seed = torch.zeros_like(target).reshape(target.shape[0], -1)
        seed[:, unit] = 1
        tensors = list(first.values())
        grads = torch.autograd.grad(target, tensors, grad_outputs=seed.reshape(target.shape),
                                    allow_unused=True)
    for (name, t), g in zip(first.items(), grads, strict=True):
        out[f"diff/{name}"] = (torch.zeros_like(t) if g is None else g).detach().cpu().numpy()
    return out


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays to ``path`` (.npz, compressed) atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
