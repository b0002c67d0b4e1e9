"""Normalisation and element-wise arithmetic: BatchNorm, Scale, Eltwise."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import CaffeError
from ..netdef import LayerDef
from .base import CaffeLayer, Shape, _canonical_axis, _enum_name


class BatchNorm(CaffeLayer):
    caffe_type = "BatchNorm"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.batch_norm_param
        self.eps = float(p.eps)
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else True
        self.channels = bottom_shapes[0][1] if len(bottom_shapes[0]) > 1 else 1
        self._make_blobs()

    def blob_shapes(self) -> list[Shape]:
        return [(self.channels,), (self.channels,), (1,)]

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        view = (1, -1) + (1,) * (x.dim() - 2)
        if self.use_global_stats:
            s = self.blobs[2][0]
            factor = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
            mean = (self.blobs[0] * factor).view(view)
            var = (self.blobs[1] * factor).view(view)
        else:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dim=dims, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        return [(x - mean) / torch.sqrt(var + self.eps)]


class Scale(CaffeLayer):
    caffe_type = "Scale"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.scale_param
        shape = bottom_shapes[0]
        self.bias_term = bool(p.bias_term)
        self.learned_scale = len(bottom_shapes) == 1
        if self.learned_scale:
            self.axis = _canonical_axis(p.axis, len(shape), layer, "scale_param.axis")
            if p.num_axes < -1:
                raise CaffeError(
                    "num_axes must be >= -1", layer=layer.name, field="scale_param.num_axes"
                )
            end = len(shape) if p.num_axes == -1 else self.axis + p.num_axes
            if end > len(shape):
                raise CaffeError(
                    "num_axes reaches past the bottom's axes",
                    layer=layer.name,
                    field="scale_param.num_axes",
                )
            self.scale_shape = tuple(shape[self.axis : end])
        else:
            other = bottom_shapes[1]
            # An empty-shaped second bottom is a scalar whatever the axis (Caffe's rule).
            self.axis = (
                0 if not other else _canonical_axis(p.axis, len(shape), layer, "scale_param.axis")
            )
            self.scale_shape = tuple(other)
            if tuple(shape[self.axis : self.axis + len(other)]) != self.scale_shape:
                raise CaffeError(
                    f"scale of shape {other} does not match bottom {shape} at axis {self.axis}",
                    layer=layer.name,
                    field="scale_param.axis",
                )
        self._make_blobs()

    def blob_shapes(self) -> list[Shape]:
        blobs = [self.scale_shape] if self.learned_scale else []
        return blobs + [self.scale_shape] if self.bias_term else blobs

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def _broadcast(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        trailing = ndim - self.axis - len(self.scale_shape)
        return t.reshape((1,) * self.axis + self.scale_shape + (1,) * trailing)

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> list[torch.Tensor]:
        scale = self.blobs[0] if self.learned_scale else rest[0]
        y = x * self._broadcast(scale, x.dim())
        if self.bias_term:
            y = y + self._broadcast(self.blobs[-1], x.dim())
        return [y]


class Eltwise(CaffeLayer):
    caffe_type = "Eltwise"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.eltwise_param
        self.op = (
            p.DESCRIPTOR.fields_by_name["operation"].enum_type.values_by_number[p.operation].name
        )
        if len(bottom_shapes) < 2:
            raise CaffeError("Eltwise needs at least two bottoms", layer=layer.name)
        if any(s != bottom_shapes[0] for s in bottom_shapes):
            raise CaffeError(f"bottom shapes differ: {bottom_shapes}", layer=layer.name)
        if p.coeff and (self.op != "SUM" or len(p.coeff) != len(bottom_shapes)):
            raise CaffeError(
                "coeff needs operation SUM and one value per bottom",
                layer=layer.name,
                field="eltwise_param.coeff",
            )
        self.coeff = [float(c) for c in p.coeff] or [1.0] * len(bottom_shapes)

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        if self.op == "SUM":
            y = xs[0] * self.coeff[0] if self.coeff[0] != 1 else xs[0]
            for c, x in zip(self.coeff[1:], xs[1:], strict=True):
                y = y + (x * c if c != 1 else x)
        elif self.op == "PROD":
            y = xs[0]
            for x in xs[1:]:
                y = y * x
        else:
            # Caffe routes the gradient to one bottom (torch.maximum would split it on ties):
            # bottoms 0 and 1 are compared with a strict '>' so a tie goes to bottom 1; a later
            # bottom takes over only where it is strictly greater.
            y = torch.where(xs[0] > xs[1], xs[0], xs[1])
            for x in xs[2:]:
                y = torch.where(x > y, x, y)
        return [y]


class Bias(CaffeLayer):
    caffe_type = "Bias"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.bias_param
        shape = bottom_shapes[0]
        self.learned = len(bottom_shapes) == 1
        if self.learned:
            self.axis = _canonical_axis(p.axis, len(shape), layer, "bias_param.axis")
            if p.num_axes < -1:
                raise CaffeError(
                    "num_axes must be >= -1", layer=layer.name, field="bias_param.num_axes"
                )
            end = len(shape) if p.num_axes == -1 else self.axis + p.num_axes
            if end > len(shape):
                raise CaffeError(
                    "num_axes reaches past the bottom's axes",
                    layer=layer.name,
                    field="bias_param.num_axes",
                )
            self.bias_shape = tuple(shape[self.axis : end])
        else:
            other = bottom_shapes[1]
            # A 0-axis second bottom is a scalar whatever the axis (Caffe's rule).
            self.axis = (
                0 if not other else _canonical_axis(p.axis, len(shape), layer, "bias_param.axis")
            )
            self.bias_shape = tuple(other)
            if tuple(shape[self.axis : self.axis + len(other)]) != self.bias_shape:
                raise CaffeError(
                    f"bias of shape {other} does not match bottom {shape} at axis {self.axis}",
                    layer=layer.name,
                    field="bias_param.axis",
                )
        self._make_blobs()

    def blob_shapes(self) -> list[Shape]:
        return [self.bias_shape] if self.learned else []

    def seed_blobs(self, rng) -> list:
        return [rng.normal(0.0, 0.1, self.bias_shape)]

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> list[torch.Tensor]:
        b = self.blobs[0] if self.learned else rest[0]
        trailing = x.dim() - self.axis - len(self.bias_shape)
        return [x + b.reshape((1,) * self.axis + self.bias_shape + (1,) * trailing)]


class _MVNFunction(torch.autograd.Function):
    """MVN with Caffe's backward, which treats ``sqrt(var) + eps`` as ``sqrt(var)``."""

    @staticmethod
    def forward(ctx, x2d: torch.Tensor, eps: float) -> torch.Tensor:
        centred = x2d - x2d.mean(dim=1, keepdim=True)
        sd = (centred * centred).mean(dim=1, keepdim=True).sqrt() + eps
        y = centred / sd
        ctx.save_for_backward(y, sd)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        y, sd = ctx.saved_tensors
        dim = y.shape[1]
        dx = dy - (dy.sum(dim=1, keepdim=True) + y * (y * dy).sum(dim=1, keepdim=True)) / dim
        return dx / sd, None


class MVN(CaffeLayer):
    caffe_type = "MVN"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.mvn_param
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise CaffeError(f"bottom of shape {shape} has no channel axis", layer=layer.name)
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        rows = x.shape[0] if self.across_channels else x.shape[0] * x.shape[1]
        flat = x.reshape(rows, -1)
        if self.normalize_variance:
            y = _MVNFunction.apply(flat, self.eps)
        else:
            y = flat - flat.mean(dim=1, keepdim=True)
        return [y.reshape(x.shape)]


class Reduction(CaffeLayer):
    caffe_type = "Reduction"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.reduction_param
        self.op = _enum_name(p, "operation")
        self.axis = _canonical_axis(p.axis, len(bottom_shapes[0]), layer, "reduction_param.axis")
        self.coeff = float(p.coeff)

    def top_shapes(self) -> list[Shape]:
        return [tuple(self.bottom_shapes[0][: self.axis])]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        flat = x.reshape(*x.shape[: self.axis], -1)
        if self.op == "SUM":
            y = flat.sum(-1)
        elif self.op == "ASUM":
            y = flat.abs().sum(-1)
        elif self.op == "SUMSQ":
            y = (flat * flat).sum(-1)
        else:  # MEAN
            y = flat.mean(-1)
        return [y * self.coeff if self.coeff != 1 else y]


class ArgMax(CaffeLayer):
    caffe_type = "ArgMax"
    backward = False
    no_gradient = {0: "ArgMax's Backward is NOT_IMPLEMENTED"}

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.argmax_param
        shape = bottom_shapes[0]
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.axis = (
            _canonical_axis(p.axis, len(shape), layer, "argmax_param.axis")
            if p.HasField("axis")
            else None
        )
        size = shape[self.axis] if self.axis is not None else math.prod(shape[1:])
        if self.top_k < 1 or self.top_k > size:
            raise CaffeError(
                f"top_k {self.top_k} must be in [1, {size}]",
                layer=layer.name,
                field="argmax_param.top_k",
            )

    def top_shapes(self) -> list[Shape]:
        shape = self.bottom_shapes[0]
        if self.axis is not None:
            out = list(shape)
            out[self.axis] = self.top_k
            return [tuple(out)]
        out = [1] * max(len(shape), 3)
        out[0] = shape[0]
        out[1] = 2 if self.out_max_val else 1
        out[2] = self.top_k
        return [tuple(out)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.detach()
        axis = self.axis if self.axis is not None else 1
        src = x if self.axis is not None else x.reshape(x.shape[0], -1)
        n = src.shape[axis]
        # Caffe sorts (value, index) pairs descending: on a tie the larger index comes first,
        # i.e. the first one in the flipped order. ONNX's TopK keeps ties in order; a stable
        # sort (which ONNX cannot express) does the same here.
        flipped = src.flip(axis)
        if torch.onnx.is_in_onnx_export():
            order = torch.topk(flipped, self.top_k, dim=axis).indices
        else:
            order = torch.sort(flipped, dim=axis, descending=True, stable=True).indices
        idx = (n - 1 - order).narrow(axis, 0, self.top_k)
        val = torch.gather(src, axis, idx)
        if self.axis is not None:
            return [val if self.out_max_val else idx.to(x.dtype)]
        parts = [idx.to(x.dtype)] + ([val] if self.out_max_val else [])
        return [torch.stack(parts, dim=1).reshape(self.top_shapes()[0])]


class Embed(CaffeLayer):
    caffe_type = "Embed"
    no_gradient = {0: "Caffe cannot back-propagate to an Embed layer's input (indices)"}

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.embed_param
        if not p.HasField("num_output") or not p.HasField("input_dim"):
            raise CaffeError(
                "num_output and input_dim are required", layer=layer.name, field="embed_param"
            )
        self.num_output, self.input_dim = int(p.num_output), int(p.input_dim)
        self.bias_term = bool(p.bias_term)
        self._make_blobs()

    def blob_shapes(self) -> list[Shape]:
        w = (self.input_dim, self.num_output)
        return [w, (self.num_output,)] if self.bias_term else [w]

    def seed_blobs(self, rng) -> list:
        return [rng.normal(0.0, 1.0, s) for s in self.blob_shapes()]

    def top_shapes(self) -> list[Shape]:
        return [(*self.bottom_shapes[0], self.num_output)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Caffe truncates each float to an int index and checks its range.
        idx = x.detach().to(torch.int64)
        # torch.export cannot guard on data (port.export's pt2); the program's gather still fails.
        exporting = torch.compiler.is_exporting()
        if not exporting and bool(((idx < 0) | (idx >= self.input_dim)).any()):
            raise CaffeError(f"an index is outside [0, {self.input_dim})", layer=self.layer_name)
        y = F.embedding(idx, self.blobs[0])
        return [y + self.blobs[1] if self.bias_term else y]
