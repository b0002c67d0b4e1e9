"""The ``pt2`` export: a ``torch.export`` program of the port, loadable with ``torch.export.load``.

The program takes the net's inputs (positional, in the definition's order; batch dynamic where the
layers allow it) and returns a dict: every blob by name with its final value (pycaffe's
``net.blobs[name].data``), and under ``first/<blob>`` the value its producing layer wrote for
each blob an in-place layer rewrites: the tensor Caffe's diff of that blob is taken against, so a
backward pass through the program gives Caffe's diffs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import CaffeError
from ..net import CaffeNet

__all__ = ["FIRST", "export_pt2"]

FIRST = "first/"


class _Blobs(torch.nn.Module):
    """The net returning every blob's final value and the first value of rewritten blobs."""

    def __init__(self, net: CaffeNet) -> None:
        super().__init__()
        self.net = net
        rewritten = {layer.tops[0] for layer in net.netdef.layers if layer.in_place}
        self.rewritten = [b for b in net.blob_names if b in rewritten]

    def forward(self, *xs: torch.Tensor) -> dict[str, torch.Tensor]:
        final, first = self.net.run(
            dict(zip(self.net.netdef.inputs, xs, strict=True)), keep_first=True
        )
        out = {b: final[b] for b in self.net.blob_names}
        out.update({FIRST + b: first[b] for b in self.rewritten})
        return out


def export_pt2(
    net: CaffeNet, path: str | Path, example: dict[str, torch.Tensor], *, dynamic_batch: bool = True
) -> tuple[Path, str | None]:
    """Write ``net`` as a ``.pt2`` program; atomic.

    ``example`` holds batches of the declared shapes: the batch is made dynamic (traced at 2, as
    torch.export specialises a size of 1); where a layer pins axis 0 (a recurrent net's time axis),
    the program keeps the declared shapes.

    Returns
    -------
    (path, note)
        ``note`` says why the batch stayed static (None when it is dynamic).
    """
    wrapped = _Blobs(net).eval()
    clash = [b for b in net.blob_names if b.startswith(FIRST)]
    if clash:
        raise CaffeError(f"blob names {clash} clash with the program's {FIRST!r} keys", field="top")
    xs = tuple(example[k] for k in net.netdef.inputs)
    note = None
    program = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        shapes = (tuple({0: batch} for _ in xs),)
        two = tuple(x.new_zeros((2, *x.shape[1:])) for x in xs)
        try:
            program = torch.export.export(wrapped, two, dynamic_shapes=shapes, strict=False)
            # Traced at 2 everywhere, the program may assume inputs share axis 0: check on the
            # declared shapes.
            with torch.no_grad():
                program.module()(*xs)
        except Exception as exc:  # a layer pins axis 0: keep the declared shapes
            note = f"batch static ({xs[0].shape[0]}): {str(exc).splitlines()[0][:200]}"
            program = None
    if program is None:
        try:
            program = torch.export.export(wrapped, xs, strict=False)
        except CaffeError as exc:
            raise CaffeError(f"cannot be exported with torch.export: {exc}") from None
    with atomic_path(path, suffix=".pt2") as tmp:
        torch.export.save(program, str(tmp))
    return Path(path), note
