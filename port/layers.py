"""PyTorch modules for Caffe layers, each exact to Caffe 1.0's rules.

Every layer class is built from a :class:`~port.netdef.LayerDef` and the shapes of its bottoms, knows
the shapes of its weight blobs (Caffe layout, so caffemodel blobs load without reshaping) and of its
tops, and computes ``forward(*bottoms) -> list of tops``. Layers never modify their inputs: in-place
Caffe layers produce a new tensor, and the net keeps track of what the blob name refers to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CaffeError
from .netdef import LayerDef

Shape = tuple[int, ...]


def _canonical_axis(axis: int, ndim: int, layer: LayerDef, fld: str) -> int:
    if not -ndim <= axis < ndim:
        raise CaffeError(f"axis {axis} out of range for a {ndim}-D bottom", layer=layer.name,
                         field=fld)
    return axis % ndim


def _pair(values: Sequence[int], h: int | None, w: int | None, default: int | None,
          layer: LayerDef, fld: str) -> tuple[int, int]:
    """Resolve Caffe's ``x`` / ``x_h`` + ``x_w`` spelling of a 2-D size."""
    if h is not None or w is not None:
        if values:
            raise CaffeError(f"{fld} given both as {fld} and as {fld}_h/{fld}_w", layer=layer.name,
                             field=fld)
        if h is None or w is None:
            raise CaffeError(f"both {fld}_h and {fld}_w are needed", layer=layer.name, field=fld)
        return int(h), int(w)
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    if not values:
        if default is None:
            raise CaffeError(f"{fld} is required", layer=layer.name, field=fld)
        return default, default
    raise CaffeError(f"{len(values)} values for {fld}: only 2-D layers are supported",
                     layer=layer.name, field=fld)


def _opt(msg, name: str):
    return getattr(msg, name) if msg.HasField(name) else None


class CaffeLayer(nn.Module):
    """Base class: a Caffe layer as a module with Caffe-layout weight blobs."""

    caffe_type = ""

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__()
        self.layer_name = layer.name
        self.bottom_shapes = bottom_shapes
        self.blobs = nn.ParameterList()

    def blob_shapes(self) -> list[Shape]:
        return []

    def top_shapes(self) -> list[Shape]:
        raise NotImplementedError

    def _make_blobs(self) -> None:
        # Uninitialised: the net zeroes them or binds loaded weights, so that converting a large
        # model never holds a throw-away copy of every weight.
        for shape in self.blob_shapes():
            self.blobs.append(nn.Parameter(torch.empty(shape)))

    def extra_repr(self) -> str:
        return f"{self.layer_name!r}"


class Convolution(CaffeLayer):
    caffe_type = "Convolution"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.convolution_param
        if p.axis != 1:
            raise CaffeError("only axis 1 (channels) is supported", layer=layer.name,
                             field="convolution_param.axis")
        (shape,) = bottom_shapes
        if len(shape) != 4:
            raise CaffeError(f"bottom of shape {shape} is not 4-D (N,C,H,W)", layer=layer.name)
        if not p.HasField("num_output"):
            raise CaffeError("num_output is required", layer=layer.name,
                             field="convolution_param.num_output")
        self.kernel = _pair(p.kernel_size, _opt(p, "kernel_h"), _opt(p, "kernel_w"), None, layer,
                            "kernel_size")
        self.stride = _pair(p.stride, _opt(p, "stride_h"), _opt(p, "stride_w"), 1, layer, "stride")
        ph = _opt(p, "pad_h")
        pw = _opt(p, "pad_w")
        self.pad = _pair(p.pad, ph, pw, 0, layer, "pad")
        self.dilation = _pair(p.dilation, None, None, 1, layer, "dilation")
        self.group = int(p.group)
        self.num_output = int(p.num_output)
        self.bias_term = bool(p.bias_term)
        channels = shape[1]
        if self.group < 1 or channels % self.group or self.num_output % self.group:
            raise CaffeError(f"group {self.group} does not divide {channels} input channels and "
                             f"{self.num_output} outputs", layer=layer.name,
                             field="convolution_param.group")
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.dilation) < 1:
            raise CaffeError("kernel, stride and dilation must be positive", layer=layer.name,
                             field="convolution_param")
        self.channels = channels
        self._make_blobs()

    def blob_shapes(self) -> list[Shape]:
        w = (self.num_output, self.channels // self.group, *self.kernel)
        return [w, (self.num_output,)] if self.bias_term else [w]

    def top_shapes(self) -> list[Shape]:
        n, _, h, w = self.bottom_shapes[0]
        out = [
            (size + 2 * p - (d * (k - 1) + 1)) // s + 1
            for size, p, d, k, s in zip((h, w), self.pad, self.dilation, self.kernel, self.stride,
                                        strict=True)
        ]
        return [(n, self.num_output, *out)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        bias = self.blobs[1] if self.bias_term else None
        return [F.conv2d(x, self.blobs[0], bias, self.stride, self.pad, self.dilation, self.group)]


def pooled_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's pooled output length: ceil rule, then drop a last window starting in the padding."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


class Pooling(CaffeLayer):
    caffe_type = "Pooling"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.pooling_param
        (shape,) = bottom_shapes
        if len(shape) != 4:
            raise CaffeError(f"bottom of shape {shape} is not 4-D (N,C,H,W)", layer=layer.name)
        self.method = p.DESCRIPTOR.fields_by_name["pool"].enum_type.values_by_number[p.pool].name
        if self.method not in ("MAX", "AVE"):
            raise CaffeError(f"pooling method {self.method} is not supported (MAX, AVE)",
                             layer=layer.name, field="pooling_param.pool")
        self.global_pooling = bool(p.global_pooling)
        if self.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h"):
                raise CaffeError("global pooling takes no kernel size", layer=layer.name,
                                 field="pooling_param.kernel_size")
            self.kernel = tuple(shape[2:])
        else:
            ks = [p.kernel_size] if p.HasField("kernel_size") else []
            self.kernel = _pair(ks, _opt(p, "kernel_h"), _opt(p, "kernel_w"), None, layer,
                                "kernel_size")
        stride = [p.stride] if p.HasField("stride") else []
        self.stride = _pair(stride, _opt(p, "stride_h"), _opt(p, "stride_w"), 1, layer, "stride")
        pad = [p.pad] if p.HasField("pad") else []
        self.pad = _pair(pad, _opt(p, "pad_h"), _opt(p, "pad_w"), 0, layer, "pad")
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise CaffeError("global pooling needs pad 0 and stride 1", layer=layer.name,
                             field="pooling_param.global_pooling")
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise CaffeError("kernel and stride must be positive", layer=layer.name,
                             field="pooling_param.kernel_size")
        if any(pd >= k for pd, k in zip(self.pad, self.kernel, strict=True)):
            raise CaffeError("pad must be smaller than the kernel", layer=layer.name,
                             field="pooling_param.pad")
        self._geometry_cache: dict[tuple[int, int], tuple] = {}

    def geometry(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int], torch.Tensor | None]:
        """Kernel, output size and (AVE only) the divisor correction for an ``h`` x ``w`` bottom."""
        key = (h, w)
        if key not in self._geometry_cache:
            kernel = (h, w) if self.global_pooling else self.kernel
            out = tuple(
                pooled_size(size, k, s, pd)
                for size, k, s, pd in zip((h, w), kernel, self.stride, self.pad, strict=True)
            )
            rescale = None
            if self.method == "AVE":
                # Caffe divides by the window clipped to the padded image, not to the image.
                div = [
                    torch.tensor([min(o * s - pd + k, size + pd) - (o * s - pd) for o in range(n)],
                                 dtype=torch.float64)
                    for n, s, pd, k, size in zip(out, self.stride, self.pad, kernel, (h, w),
                                                 strict=True)
                ]
                ratio = (kernel[0] * kernel[1]) / (div[0][:, None] * div[1][None, :])
                rescale = ratio if bool((ratio != 1).any()) else None
            self._geometry_cache[key] = (kernel, out, rescale)
        return self._geometry_cache[key]

    def top_shapes(self) -> list[Shape]:
        n, c, h, w = self.bottom_shapes[0]
        return [(n, c, *self.geometry(h, w)[1])]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[2:]
        kernel, out, rescale = self.geometry(int(h), int(w))
        # Pad after the image so that every one of Caffe's windows fits inside the tensor.
        extra = [max((o - 1) * s + k - size - pd, 0)
                 for o, s, k, size, pd in zip(out, self.stride, kernel, (h, w), self.pad,
                                              strict=True)]
        pads = (self.pad[1], extra[1], self.pad[0], extra[0])
        if self.method == "MAX":
            # Windows are clipped to the image: padding can never win.
            xp = F.pad(x, pads, value=-math.inf) if any(pads) else x
            y = F.max_pool2d(xp, kernel, self.stride)
        else:
            xp = F.pad(x, pads, value=0.0) if any(pads) else x
            y = F.avg_pool2d(xp, kernel, self.stride)
            if rescale is not None:
                y = y * rescale.to(device=y.device, dtype=y.dtype)
        return [y[:, :, : out[0], : out[1]]]


class LRN(CaffeLayer):
    caffe_type = "LRN"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 == 0 or self.size < 1:
            raise CaffeError("local_size must be odd", layer=layer.name, field="lrn_param.local_size")
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = p.DESCRIPTOR.fields_by_name["norm_region"].enum_type.values_by_number[
            p.norm_region].name
        if len(bottom_shapes[0]) != 4:
            raise CaffeError(f"bottom of shape {bottom_shapes[0]} is not 4-D", layer=layer.name)

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        half = (self.size - 1) // 2
        sq = x * x
        if self.region == "ACROSS_CHANNELS":
            # Mean over the n channels centred on c (zero padded) == sum / n.
            window = F.avg_pool3d(F.pad(sq.unsqueeze(1), (0, 0, 0, 0, half, half)),
                                  (self.size, 1, 1), stride=1).squeeze(1)
            scale = self.k + self.alpha * window
        else:
            window = F.avg_pool2d(sq, self.size, stride=1, padding=half, count_include_pad=True)
            scale = 1.0 + self.alpha * window
        return [x * scale.pow(-self.beta)]


class InnerProduct(CaffeLayer):
    caffe_type = "InnerProduct"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.inner_product_param
        (shape,) = bottom_shapes
        if not p.HasField("num_output"):
            raise CaffeError("num_output is required", layer=layer.name,
                             field="inner_product_param.num_output")
        self.axis = _canonical_axis(p.axis, len(shape), layer, "inner_product_param.axis")
        self.num_output = int(p.num_output)
        self.k_in = math.prod(shape[self.axis:])
        self.bias_term = bool(p.bias_term)
        self.transpose = bool(p.transpose)
        self._make_blobs()

    def blob_shapes(self) -> list[Shape]:
        w = (self.k_in, self.num_output) if self.transpose else (self.num_output, self.k_in)
        return [w, (self.num_output,)] if self.bias_term else [w]

    def top_shapes(self) -> list[Shape]:
        return [(*self.bottom_shapes[0][: self.axis], self.num_output)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        lead = x.shape[: self.axis]
        flat = x.reshape(*lead, -1)
        if flat.shape[-1] != self.k_in:
            raise CaffeError(f"bottom has {flat.shape[-1]} inputs per sample, the weights expect "
                             f"{self.k_in}", layer=self.layer_name)
        weight = self.blobs[0].t() if self.transpose else self.blobs[0]
        bias = self.blobs[1] if self.bias_term else None
        return [F.linear(flat, weight, bias)]


class ReLU(CaffeLayer):
    caffe_type = "ReLU"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        self.negative_slope = float(layer.param.relu_param.negative_slope)

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.negative_slope == 0:
            return [F.relu(x)]
        # Caffe's gradient at exactly 0 is the negative slope, as is leaky_relu's.
        return [F.leaky_relu(x, self.negative_slope)]


class Dropout(CaffeLayer):
    caffe_type = "Dropout"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.dropout_param
        # At TEST Caffe passes data through, scaled by (1 - ratio) only when training did not scale.
        self.scale = 1.0 if p.scale_train else 1.0 - float(p.dropout_ratio)

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # A fresh autograd node even for the identity, so that this blob's diff stays its own.
        return [x.view_as(x) if self.scale == 1.0 else x * self.scale]


class Softmax(CaffeLayer):
    caffe_type = "Softmax"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        self.axis = _canonical_axis(layer.param.softmax_param.axis, len(bottom_shapes[0]), layer,
                                    "softmax_param.axis")

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.softmax(x, dim=self.axis)]


class Concat(CaffeLayer):
    caffe_type = "Concat"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.concat_param
        if p.HasField("concat_dim") and p.HasField("axis"):
            raise CaffeError("give either axis or the deprecated concat_dim", layer=layer.name,
                             field="concat_param.concat_dim")
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        ndim = len(bottom_shapes[0])
        self.axis = _canonical_axis(axis, ndim, layer, "concat_param.axis")
        for s in bottom_shapes[1:]:
            if len(s) != ndim or any(a != b for i, (a, b) in enumerate(zip(s, bottom_shapes[0],
                                                                              strict=True))
                                     if i != self.axis):
                raise CaffeError(f"bottoms {bottom_shapes} differ outside the concat axis",
                                 layer=layer.name, field="concat_param.axis")

    def top_shapes(self) -> list[Shape]:
        first = list(self.bottom_shapes[0])
        first[self.axis] = sum(s[self.axis] for s in self.bottom_shapes)
        return [tuple(first)]

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        return [torch.cat(xs, dim=self.axis)]


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
                raise CaffeError("num_axes must be >= -1", layer=layer.name,
                                 field="scale_param.num_axes")
            end = len(shape) if p.num_axes == -1 else self.axis + p.num_axes
            if end > len(shape):
                raise CaffeError("num_axes reaches past the bottom's axes", layer=layer.name,
                                 field="scale_param.num_axes")
            self.scale_shape = tuple(shape[self.axis:end])
        else:
            other = bottom_shapes[1]
            # An empty-shaped second bottom is a scalar whatever the axis (Caffe's rule).
            self.axis = 0 if not other else _canonical_axis(p.axis, len(shape), layer,
                                                            "scale_param.axis")
            self.scale_shape = tuple(other)
            if tuple(shape[self.axis:self.axis + len(other)]) != self.scale_shape:
                raise CaffeError(f"scale of shape {other} does not match bottom {shape} at axis "
                                 f"{self.axis}", layer=layer.name, field="scale_param.axis")
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
        self.op = p.DESCRIPTOR.fields_by_name["operation"].enum_type.values_by_number[
            p.operation].name
        if len(bottom_shapes) < 2:
            raise CaffeError("Eltwise needs at least two bottoms", layer=layer.name)
        if any(s != bottom_shapes[0] for s in bottom_shapes):
            raise CaffeError(f"bottom shapes differ: {bottom_shapes}", layer=layer.name)
        if p.coeff and (self.op != "SUM" or len(p.coeff) != len(bottom_shapes)):
            raise CaffeError("coeff needs operation SUM and one value per bottom",
                             layer=layer.name, field="eltwise_param.coeff")
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


class Flatten(CaffeLayer):
    caffe_type = "Flatten"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.flatten_param
        ndim = len(bottom_shapes[0])
        self.start = _canonical_axis(p.axis, ndim, layer, "flatten_param.axis")
        self.end = _canonical_axis(p.end_axis, ndim, layer, "flatten_param.end_axis")

    def top_shapes(self) -> list[Shape]:
        s = self.bottom_shapes[0]
        return [(*s[: self.start], math.prod(s[self.start : self.end + 1]), *s[self.end + 1 :])]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.flatten(x, self.start, self.end)]


class Split(CaffeLayer):
    caffe_type = "Split"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        self.n_tops = len(layer.tops)

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]] * self.n_tops

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Distinct tensors per top: each top's diff is the gradient of its own consumers.
        return [x.view_as(x) for _ in range(self.n_tops)]


class Sigmoid(CaffeLayer):
    caffe_type = "Sigmoid"

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.sigmoid(x)]


class TanH(CaffeLayer):
    caffe_type = "TanH"

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tanh(x)]


LAYER_TYPES: dict[str, type[CaffeLayer]] = {
    cls.caffe_type: cls
    for cls in (Convolution, Pooling, LRN, InnerProduct, ReLU, Dropout, Softmax, Concat, BatchNorm,
                Scale, Eltwise, Flatten, Split, Sigmoid, TanH)
}

# Layers Caffe runs in place when top == bottom (the blob name then refers to the new values).
IN_PLACE_TYPES = {"ReLU", "Dropout", "BatchNorm", "Scale", "Sigmoid", "TanH"}


def build_layer(layer: LayerDef, bottom_shapes: list[Shape]) -> CaffeLayer:
    """Instantiate the module for one layer; unknown types raise :class:`CaffeError`."""
    cls = LAYER_TYPES.get(layer.type)
    if cls is None:
        raise CaffeError(f"layer type {layer.type!r} is not supported (supported: "
                         f"{', '.join(sorted(LAYER_TYPES))})", layer=layer.name, field="type")
    return cls(layer, bottom_shapes)
