"""The converted net: an ordinary ``torch.nn.Module`` that runs a Caffe definition."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .accumulate import WideParams, check_accumulate, run_layer_float64, widen
from .caffemodel import read_caffemodel
from .errors import CaffeError
from .layers import CaffeLayer, Shape, build_layer
from .netdef import NetDef, load_prototxt
from .validate import check_bottoms_exist, check_top_count, layer_error, validate_netdef


def _module_key(name: str) -> str:
    # nn.Module names cannot contain '.'; Caffe layer names can. Percent-escaping keeps the mapping
    # one-to-one ('a.b' and 'a\u2024b' are different layers and stay different keys).
    return name.replace("%", "%25").replace(".", "%2E")


class CaffeNet(nn.Module):
    """A Caffe net definition as a PyTorch module.

    Calling the net runs every layer in definition order and returns a dict of blobs: the net's
    outputs (blobs no layer consumes) plus any blob asked for with ``blobs``. Blob values have
    pycaffe's meaning: a blob rewritten by in-place layers (``relu1`` on ``conv1``) holds the final
    values. Weight blobs keep Caffe's layout and live in ``net.layer_modules[<layer>].blobs``.

    Parameters
    ----------
    netdef : NetDef
        The parsed definition (see :func:`port.load_prototxt`).
    zero_init : bool
        Zero the weights (default). ``False`` leaves them uninitialised, for callers that load
        weights right away.
    accumulate : {"float32", "float64"}
        Where each layer's arithmetic happens. ``"float32"`` (default, fast): in the blobs' dtype.
        ``"float64"`` (accurate, slower): every layer, forward and backward, computes in float64
        from the float32 blobs and parameters and rounds its tops (and, going back, each blob's
        gradient) to float32 (:mod:`port.accumulate`). Blobs and parameters stay float32 either
        way; a float64 net computes in float64 whatever this says. Settable later
        (``net.accumulate = "float64"``).
    """

    def __init__(
        self, netdef: NetDef, *, zero_init: bool = True, accumulate: str = "float32"
    ) -> None:
        super().__init__()
        self.accumulate = accumulate
        self._wide = WideParams()
        # Every shape is checked before any weight is allocated (Caffe's Reshape checks, up front).
        validate_netdef(netdef)
        self.netdef = netdef
        self.layer_modules = nn.ModuleDict()
        shapes: dict[str, Shape] = dict(netdef.inputs)
        order: list[str] = list(netdef.inputs)
        consumed: set[str] = set()
        for layer in netdef.layers:
            check_bottoms_exist(netdef, layer, shapes)
            module = self._build(layer, [shapes[b] for b in layer.bottoms])
            tops = module.top_shapes()
            check_top_count(netdef, layer, tops)
            consumed.update(b for b in layer.bottoms if b not in layer.tops)
            for name, shape in zip(layer.tops, tops, strict=True):
                if name not in shapes:
                    order.append(name)
                shapes[name] = shape
            self.layer_modules[_module_key(layer.name)] = module
        self.blob_shapes = shapes
        self.blob_names = order
        self.output_names = [b for b in order if b not in consumed and b not in netdef.inputs]
        if zero_init:
            with torch.no_grad():
                for p in self.parameters():
                    p.zero_()

    @property
    def accumulate(self) -> str:
        """``"float32"`` (arithmetic in the blobs' dtype) or ``"float64"`` (see the class)."""
        return self._accumulate

    @accumulate.setter
    def accumulate(self, value: str) -> None:
        self._accumulate = check_accumulate(value)
        if value == "float32" and hasattr(self, "_wide"):
            self._wide.clear()  # the float64 copies (a VGG16's are 1.1 GB) serve only float64

    def _build(self, layer, bottom_shapes) -> CaffeLayer:
        try:
            return build_layer(layer, bottom_shapes)
        except CaffeError as exc:
            raise layer_error(self.netdef, layer, exc) from None

    def module(self, layer_name: str) -> CaffeLayer:
        """The module of one layer, by its Caffe name."""
        return self.layer_modules[_module_key(layer_name)]

    # -- weights --------------------------------------------------------------------------------

    def load_blobs(
        self,
        weights: Mapping[str, Sequence[np.ndarray]],
        *,
        source: str | Path | None = None,
        strict: bool = True,
        share: bool = False,
    ) -> None:
        """Copy Caffe weight blobs (layer name -> arrays) into the net, checking every shape.

        Blobs are matched by layer name. NaN or infinite weights are an error. A blob may be stored with a different but equal-sized
        shape only when it is the legacy 4-D form of the expected shape (leading 1s), as in V1 files.
        With ``strict``, a learnable layer missing from ``weights`` is an error. Like Caffe,
        blobs of layers that the definition lacks are ignored. With ``share``, float32 arrays become
        the parameters' storage instead of being copied (for arrays nobody else holds).
        """
        for layer in self.netdef.layers:
            module = self.module(layer.name)
            expected = module.blob_shapes()
            blobs = weights.get(layer.name)
            if blobs is None:
                if expected and strict:
                    raise CaffeError(
                        "the weights file has no blobs for this learnable layer",
                        path=source,
                        layer=layer.name,
                        field="blobs",
                    )
                continue
            if len(blobs) != len(expected):
                raise CaffeError(
                    f"{len(blobs)} weight blobs, the definition implies {len(expected)}",
                    path=source,
                    layer=layer.name,
                    field="blobs",
                )
            for i, (blob, shape) in enumerate(zip(blobs, expected, strict=True)):
                blob = np.asarray(blob)
                if tuple(blob.shape) != tuple(shape):
                    squeezed = tuple(blob.shape)
                    while len(squeezed) > len(shape) and squeezed[0] == 1:
                        squeezed = squeezed[1:]
                    if squeezed != tuple(shape):
                        raise CaffeError(
                            f"blob {i} has shape {tuple(blob.shape)}, the definition "
                            f"implies {tuple(shape)}",
                            path=source,
                            layer=layer.name,
                            field=f"blobs[{i}]",
                        )
                if blob.dtype.kind == "f" and not np.isfinite(blob).all():
                    nan = int(np.isnan(blob).sum())
                    inf = int(np.isinf(blob).sum())
                    raise CaffeError(
                        f"blob {i} holds {nan} NaN and {inf} infinite values",
                        path=source,
                        layer=layer.name,
                        field=f"blobs[{i}]",
                    )
                param = module.blobs[i]
                value = torch.from_numpy(np.ascontiguousarray(blob).reshape(shape))
                if share and value.dtype == param.dtype and param.device.type == "cpu":
                    param.data = value
                else:
                    with torch.no_grad():
                        param.copy_(value)

    def caffe_blobs(self) -> dict[str, list[np.ndarray]]:
        """The weights as Caffe blobs (layer name -> float32 arrays), e.g. for a caffemodel."""
        return {
            layer.name: [b.detach().cpu().float().numpy() for b in self.module(layer.name).blobs]
            for layer in self.netdef.layers
            if len(self.module(layer.name).blobs)
        }

    # -- running --------------------------------------------------------------------------------

    def _inputs(self, x) -> dict[str, torch.Tensor]:
        names = list(self.netdef.inputs)
        if isinstance(x, Mapping):
            missing = [n for n in names if n not in x]
            if missing:
                raise CaffeError(
                    f"missing input blob(s) {missing}; the net takes {names}",
                    path=self.netdef.path,
                    field="input",
                )
            inputs = {n: x[n] for n in names}
        else:
            if len(names) != 1:
                raise CaffeError(
                    f"the net takes {len(names)} inputs {names}: pass a dict",
                    path=self.netdef.path,
                    field="input",
                )
            inputs = {names[0]: x}
        for name, t in inputs.items():
            declared = self.netdef.inputs[name]
            if t.dim() != len(declared) or (t.dim() > 1 and t.shape[1] != declared[1]):
                raise CaffeError(
                    f"input {name!r} has shape {tuple(t.shape)}; the definition "
                    f"declares {declared} (batch and spatial size may differ)",
                    path=self.netdef.path,
                    field="input",
                )
        return inputs

    def run(self, x, *, keep_first: bool = False):
        """Run every layer; return (final blob values, first versions of each blob).

        ``first`` maps each blob to the tensor its producing layer wrote, before any in-place layer
        replaced it: Caffe's diff of a blob is the gradient with respect to that version.
        """
        blobs: dict[str, torch.Tensor] = dict(self._inputs(x))
        first: dict[str, torch.Tensor] = dict(blobs) if keep_first else {}
        storage = next((t.dtype for t in blobs.values() if t.is_floating_point()), torch.float32)
        wide = self.accumulate == "float64" and storage != torch.float64
        # One float64 view per blob value, shared by its consumers (see run_layer_float64).
        widened: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def bottom(name: str) -> torch.Tensor:
            t = blobs[name]
            if not wide:
                return t
            held = widened.get(name)
            if held is None or held[0] is not t:
                held = widened[name] = (t, widen(t))
            return held[1]

        for layer in self.netdef.layers:
            module = self.module(layer.name)
            try:
                bottoms = [bottom(b) for b in layer.bottoms]
                if wide:
                    tops = run_layer_float64(module, bottoms, self._wide, storage)
                else:
                    tops = module(*bottoms)
            except RuntimeError as exc:
                shapes = [tuple(blobs[b].shape) for b in layer.bottoms]
                raise CaffeError(
                    f"cannot run on bottoms of shape {shapes}: {exc}",
                    path=self.netdef.path,
                    layer=layer.name,
                ) from None
            for name, t in zip(layer.tops, tops, strict=True):
                blobs[name] = t
                if keep_first and name not in first:
                    first[name] = t
        return blobs, first

    def forward(self, x, blobs: Sequence[str] | str | None = None) -> dict[str, torch.Tensor]:
        """Run the net.

        Parameters
        ----------
        x : Tensor or dict of str to Tensor
            The input batch (N, C, H, W) for single-input nets, else input name -> tensor. Batch and
            spatial size may differ from the declared ones where the layers allow it.
        blobs : sequence of str, "all" or None
            Extra blobs to return besides the outputs.

        Returns
        -------
        dict of str to Tensor
        """
        values, _ = self.run(x)
        wanted = list(self.output_names)
        if blobs == "all":
            wanted = list(self.blob_names)
        elif blobs:
            unknown = [b for b in blobs if b not in values]
            if unknown:
                raise CaffeError(f"no blob(s) {unknown} in this net", path=self.netdef.path)
            wanted += [b for b in blobs if b not in wanted]
        return {name: values[name] for name in wanted}


def load_caffe(
    prototxt: str | Path | NetDef,
    caffemodel: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    strict: bool = True,
    proto: str | Path | None = None,
    accumulate: str = "float32",
) -> CaffeNet:
    """Convert a Caffe deploy definition (and optionally its weights) into a :class:`CaffeNet`.

    Parameters
    ----------
    prototxt : str, Path or NetDef
        Deploy definition, current or legacy V1 format (or one already parsed, e.g. with a fork's
        ``proto``).
    caffemodel : str or Path, optional
        Binary weights, current or legacy V1 format. Without it the weights are zero; use
        :func:`port.seed_weights` for deterministic random ones.
    dtype : torch.dtype
        ``torch.float32`` (Caffe's precision) or ``torch.float64``.
    device : str or torch.device
    strict : bool
        Require weights for every learnable layer.
    proto : str or Path, optional
        A Caffe fork's ``caffe.proto`` the definition needs (see :func:`port.load_prototxt`).
    accumulate : {"float32", "float64"}
        ``"float64"`` for the accurate mode: float32 blobs, float64 arithmetic in every layer
        (see :class:`CaffeNet`).

    Returns
    -------
    CaffeNet
        In eval mode.
    """
    netdef = prototxt if isinstance(prototxt, NetDef) else load_prototxt(prototxt, proto=proto)
    net = CaffeNet(netdef, zero_init=caffemodel is None or not strict, accumulate=accumulate)
    if caffemodel is not None:
        # The arrays just read belong to nobody else: bind them instead of copying, so a 233 MB
        # CaffeNet peaks at the file's mapping plus one copy of the weights.
        net.load_blobs(read_caffemodel(caffemodel), source=caffemodel, strict=strict, share=True)
    return net.to(device=device, dtype=dtype).eval()
