"""The ``onnx`` export: the port as an ONNX graph whose outputs are every blob, batch dynamic.

This is the one ONNX export path: ``parity``'s ONNX Runtime runner exports through
:func:`export_onnx` too, so the file a user takes away is the graph parity checked.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import CaffeError
from ..net import CaffeNet

__all__ = ["OPSET", "ONNX_LIMITS", "export_onnx", "onnx_output_names"]

#: The opset every export states (ONNX Runtime 1.17+ runs it; the TorchScript exporter's best
#: tested one).
OPSET = 17

#: Layer types whose ONNX form differs from the port's eager one (all layer types export).
ONNX_LIMITS = {
    "ArgMax": "exported as TopK on the flipped axis (a stable sort has no ONNX form); same ties",
    "Filter": "NonZero + Gather: the kept count is data-dependent, as in Caffe",
    "LSTM": "unrolled over the T of the exported input (a fixed-length graph)",
    "RNN": "unrolled over the T of the exported input (a fixed-length graph)",
}


class _AllBlobs(torch.nn.Module):
    """The net with every blob (but its inputs) as a positional output, inputs positional."""

    def __init__(self, net: CaffeNet, names: list[str]) -> None:
        super().__init__()
        self.net = net
        self.names = names

    def forward(self, *xs: torch.Tensor):
        inputs = dict(zip(self.net.netdef.inputs, xs, strict=True))
        out = self.net(inputs, blobs=self.names)
        return tuple(out[n] for n in self.names)


def onnx_output_names(net: CaffeNet) -> list[str]:
    """The blobs an exported graph outputs, in net order: every blob but the inputs."""
    return [b for b in net.blob_names if b not in net.netdef.inputs]


def export_onnx(
    net: CaffeNet,
    path: str | Path,
    example: dict[str, torch.Tensor],
    *,
    opset: int = OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``net`` (float32) as an ONNX file, checked with ``onnx.checker``; atomic.

    Parameters
    ----------
    net : CaffeNet
    path : path
        The ``.onnx`` file.
    example : dict
        Input name -> an example batch (its non-batch shape is baked into the graph).
    opset : int
    dynamic_batch : bool
        Make axis 0 of every input and output a named dimension ``batch``.

    Notes
    -----
    Inputs are named after the net's input blobs, outputs after the blobs. The TorchScript-based
    exporter (``dynamo=False``) keeps the module's ops one to one (no decomposition to prims),
    which is what a layer-by-layer comparison wants.
    """
    import onnx

    names = onnx_output_names(net)
    inputs = list(net.netdef.inputs)
    wrapped = _AllBlobs(net, names).eval()
    xs = tuple(example[k].to(torch.float32) for k in inputs)
    axes = {n: {0: "batch"} for n in inputs + names} if dynamic_batch else None
    with atomic_path(path, suffix=".onnx") as tmp:
        # The tracer warns about every shape computed in Python; they are constants here.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                xs,
                str(tmp),
                input_names=inputs,
                output_names=names,
                opset_version=opset,
                dynamic_axes=axes,
                dynamo=False,
            )
        try:
            onnx.checker.check_model(str(tmp))
        except onnx.checker.ValidationError as exc:
            raise CaffeError(
                f"the exported ONNX graph fails onnx.checker: {exc}", path=path
            ) from None
    return Path(path)
