"""Spatial layers: convolution, pooling, local response normalisation, inner product."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CaffeError
from ..netdef import LayerDef
from . import skinny
from .base import CaffeLayer, Shape, _canonical_axis, _enum_name, _opt, _pair
from .blocked import blocked_linear
from .lrn import caffe_lrn
from .maxpool import max_pool2d
from .strided import caffe_conv2d


class Convolution(CaffeLayer):
    caffe_type = "Convolution"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.convolution_param
        if p.axis != 1:
            raise CaffeError(
                "only axis 1 (channels) is supported",
                layer=layer.name,
                field="convolution_param.axis",
            )
        (shape,) = bottom_shapes
        _four_d(layer, shape)
        if not p.HasField("num_output"):
            raise CaffeError(
                "num_output is required", layer=layer.name, field="convolution_param.num_output"
            )
        self.kernel = _pair(
            p.kernel_size, _opt(p, "kernel_h"), _opt(p, "kernel_w"), None, layer, "kernel_size"
        )
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
            raise CaffeError(
                f"group {self.group} does not divide {channels} input channels and "
                f"{self.num_output} outputs",
                layer=layer.name,
                field="convolution_param.group",
            )
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.dilation) < 1:
            raise CaffeError(
                "kernel, stride and dilation must be positive",
                layer=layer.name,
                field="convolution_param",
            )
        self.channels = channels
        self._make_blobs()

    def blob_shapes(self) -> list[Shape]:
        w = (self.num_output, self.channels // self.group, *self.kernel)
        return [w, (self.num_output,)] if self.bias_term else [w]

    def top_shapes(self) -> list[Shape]:
        n, _, h, w = self.bottom_shapes[0]
        out = [
            (size + 2 * p - (d * (k - 1) + 1)) // s + 1
            for size, p, d, k, s in zip(
                (h, w), self.pad, self.dilation, self.kernel, self.stride, strict=True
            )
        ]
        return [(n, self.num_output, *out)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        bias = self.blobs[1] if self.bias_term else None
        return [
            caffe_conv2d(x, self.blobs[0], bias, self.stride, self.pad, self.dilation, self.group)
        ]


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
        _four_d(layer, shape)
        self.method = p.DESCRIPTOR.fields_by_name["pool"].enum_type.values_by_number[p.pool].name
        if self.method not in ("MAX", "AVE"):
            raise CaffeError(
                f"pooling method {self.method} is not supported (MAX, AVE)",
                layer=layer.name,
                field="pooling_param.pool",
            )
        self.global_pooling = bool(p.global_pooling)
        if self.global_pooling and (p.HasField("kernel_size") or p.HasField("kernel_h")):
            raise CaffeError(
                "global pooling takes no kernel size",
                layer=layer.name,
                field="pooling_param.kernel_size",
            )
        self.kernel, self.stride, self.pad = _pooling_window(layer, shape)
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise CaffeError(
                "global pooling needs pad 0 and stride 1",
                layer=layer.name,
                field="pooling_param.global_pooling",
            )
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise CaffeError(
                "kernel and stride must be positive",
                layer=layer.name,
                field="pooling_param.kernel_size",
            )
        if any(pd >= k for pd, k in zip(self.pad, self.kernel, strict=True)):
            raise CaffeError(
                "pad must be smaller than the kernel", layer=layer.name, field="pooling_param.pad"
            )
        self._geometry_cache: dict[tuple[int, int], tuple] = {}

    def geometry(
        self, h: int, w: int
    ) -> tuple[tuple[int, int], tuple[int, int], torch.Tensor | None]:
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
                    torch.tensor(
                        [min(o * s - pd + k, size + pd) - (o * s - pd) for o in range(n)],
                        dtype=torch.float64,
                    )
                    for n, s, pd, k, size in zip(
                        out, self.stride, self.pad, kernel, (h, w), strict=True
                    )
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
        extra = [
            max((o - 1) * s + k - size - pd, 0)
            for o, s, k, size, pd in zip(out, self.stride, kernel, (h, w), self.pad, strict=True)
        ]
        pads = (self.pad[1], extra[1], self.pad[0], extra[0])
        if self.method == "MAX":
            # Windows are clipped to the image: padding can never win.
            xp = F.pad(x, pads, value=-math.inf) if any(pads) else x
            y = max_pool2d(xp, kernel, self.stride)
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
            raise CaffeError(
                "local_size must be odd", layer=layer.name, field="lrn_param.local_size"
            )
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = (
            p.DESCRIPTOR.fields_by_name["norm_region"]
            .enum_type.values_by_number[p.norm_region]
            .name
        )
        if len(bottom_shapes[0]) != 4:
            raise CaffeError(f"bottom of shape {bottom_shapes[0]} is not 4-D", layer=layer.name)

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        across = self.region == "ACROSS_CHANNELS"
        return [caffe_lrn(x, self.size, self.alpha, self.beta, self.k, across)]


class InnerProduct(CaffeLayer):
    caffe_type = "InnerProduct"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.inner_product_param
        (shape,) = bottom_shapes
        if not p.HasField("num_output"):
            raise CaffeError(
                "num_output is required", layer=layer.name, field="inner_product_param.num_output"
            )
        self.axis = _canonical_axis(p.axis, len(shape), layer, "inner_product_param.axis")
        self.num_output = int(p.num_output)
        self.k_in = math.prod(shape[self.axis :])
        self.bias_term = bool(p.bias_term)
        self.transpose = bool(p.transpose)
        self._make_blobs()
        # weight.T for the compiled kernel's input gradient, made on the first backward.
        self._transposed = skinny.TransposedWeights()

    def blob_shapes(self) -> list[Shape]:
        w = (self.k_in, self.num_output) if self.transpose else (self.num_output, self.k_in)
        return [w, (self.num_output,)] if self.bias_term else [w]

    def top_shapes(self) -> list[Shape]:
        return [(*self.bottom_shapes[0][: self.axis], self.num_output)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        lead = x.shape[: self.axis]
        flat = x.reshape(*lead, -1)
        if flat.shape[-1] != self.k_in:
            raise CaffeError(
                f"bottom has {flat.shape[-1]} inputs per sample, the weights expect {self.k_in}",
                layer=self.layer_name,
            )
        weight = self.blobs[0].t() if self.transpose else self.blobs[0]
        bias = self.blobs[1] if self.bias_term else None
        rows = flat.reshape(-1, self.k_in)
        if skinny.usable(rows, weight):
            y = skinny.linear(rows, weight, bias, self._transposed)
        else:
            y = blocked_linear(rows, weight, bias)
        return [y.reshape(*lead, self.num_output)]


def _conv_geometry(layer: LayerDef, p) -> dict:
    """Kernel, stride, pad and dilation (h, w) of a ``convolution_param`` (2-D only)."""
    if p.axis != 1:
        raise CaffeError(
            "only axis 1 (channels) is supported", layer=layer.name, field="convolution_param.axis"
        )
    g = {
        "kernel": _pair(
            p.kernel_size, _opt(p, "kernel_h"), _opt(p, "kernel_w"), None, layer, "kernel_size"
        ),
        "stride": _pair(p.stride, _opt(p, "stride_h"), _opt(p, "stride_w"), 1, layer, "stride"),
        "pad": _pair(p.pad, _opt(p, "pad_h"), _opt(p, "pad_w"), 0, layer, "pad"),
        "dilation": _pair(p.dilation, None, None, 1, layer, "dilation"),
    }
    if min(g["kernel"]) < 1 or min(g["stride"]) < 1 or min(g["dilation"]) < 1:
        raise CaffeError(
            "kernel, stride and dilation must be positive",
            layer=layer.name,
            field="convolution_param",
        )
    return g


def _four_d(layer: LayerDef, shape: Shape) -> None:
    if len(shape) != 4:
        raise CaffeError(f"bottom of shape {shape} is not 4-D (N,C,H,W)", layer=layer.name)


def _pooling_window(
    layer: LayerDef, shape: Shape
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Kernel, stride and pad of a ``pooling_param``, each (h, w); a global pooling's kernel is
    the bottom's spatial size."""
    p = layer.param.pooling_param
    if p.global_pooling:
        kernel = tuple(shape[2:])
    else:
        ks = [p.kernel_size] if p.HasField("kernel_size") else []
        kernel = _pair(ks, _opt(p, "kernel_h"), _opt(p, "kernel_w"), None, layer, "kernel_size")
    stride = [p.stride] if p.HasField("stride") else []
    pad = [p.pad] if p.HasField("pad") else []
    return (
        kernel,
        _pair(stride, _opt(p, "stride_h"), _opt(p, "stride_w"), 1, layer, "stride"),
        _pair(pad, _opt(p, "pad_h"), _opt(p, "pad_w"), 0, layer, "pad"),
    )


class Deconvolution(CaffeLayer):
    caffe_type = "Deconvolution"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.convolution_param
        (shape,) = bottom_shapes
        _four_d(layer, shape)
        if not p.HasField("num_output"):
            raise CaffeError(
                "num_output is required", layer=layer.name, field="convolution_param.num_output"
            )
        g = _conv_geometry(layer, p)
        self.kernel, self.stride, self.pad, self.dilation = (
            g["kernel"],
            g["stride"],
            g["pad"],
            g["dilation"],
        )
        self.group = int(p.group)
        self.num_output = int(p.num_output)
        self.bias_term = bool(p.bias_term)
        self.channels = shape[1]
        if self.group < 1 or self.channels % self.group or self.num_output % self.group:
            raise CaffeError(
                f"group {self.group} does not divide {self.channels} input channels "
                f"and {self.num_output} outputs",
                layer=layer.name,
                field="convolution_param.group",
            )
        self._make_blobs()

    def blob_shapes(self) -> list[Shape]:
        # Caffe keeps the convolution layout with input and output swapped, as torch does.
        w = (self.channels, self.num_output // self.group, *self.kernel)
        return [w, (self.num_output,)] if self.bias_term else [w]

    def seed_blobs(self, rng) -> list:
        shapes = self.blob_shapes()
        fan_in = math.prod(shapes[0][1:])
        return [rng.normal(0.0, math.sqrt(2.0 / fan_in), shapes[0])] + [
            rng.normal(0.0, 0.01, s) for s in shapes[1:]
        ]

    def top_shapes(self) -> list[Shape]:
        n, _, h, w = self.bottom_shapes[0]
        out = [
            s * (size - 1) + d * (k - 1) + 1 - 2 * p
            for size, p, d, k, s in zip(
                (h, w), self.pad, self.dilation, self.kernel, self.stride, strict=True
            )
        ]
        if min(out) < 1:
            raise CaffeError(f"output size {out} is empty", layer=self.layer_name)
        return [(n, self.num_output, *out)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        bias = self.blobs[1] if self.bias_term else None
        return [
            F.conv_transpose2d(
                x, self.blobs[0], bias, self.stride, self.pad, 0, self.group, self.dilation
            )
        ]


class Im2col(CaffeLayer):
    caffe_type = "Im2col"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        _four_d(layer, bottom_shapes[0])
        g = _conv_geometry(layer, layer.param.convolution_param)
        self.kernel, self.stride, self.pad, self.dilation = (
            g["kernel"],
            g["stride"],
            g["pad"],
            g["dilation"],
        )

    def top_shapes(self) -> list[Shape]:
        n, c, h, w = self.bottom_shapes[0]
        out = [
            (size + 2 * p - (d * (k - 1) + 1)) // s + 1
            for size, p, d, k, s in zip(
                (h, w), self.pad, self.dilation, self.kernel, self.stride, strict=True
            )
        ]
        return [(n, c * self.kernel[0] * self.kernel[1], *out)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # unfold's rows are channel-major, then kernel row, then column: Caffe's im2col order.
        cols = F.unfold(x, self.kernel, self.dilation, self.pad, self.stride)
        n, c, h, w = x.shape
        oh = (h + 2 * self.pad[0] - (self.dilation[0] * (self.kernel[0] - 1) + 1)) // self.stride[
            0
        ] + 1
        return [cols.reshape(n, cols.shape[1], oh, -1)]


class StochasticPooling(CaffeLayer):
    """Pooling STOCHASTIC at TEST: each window's sum of squares over its sum (Caffe's GPU rule).

    Caffe's CPU code has no STOCHASTIC pooling (NOT_IMPLEMENTED) and its TEST backward reads
    indices only a TRAIN forward sets, so the port computes forward only.
    """

    caffe_type = "Pooling"
    backward = False
    backward_note = "none (Caffe's TEST backward reads indices only a TRAIN forward sets)"
    no_gradient = {0: "STOCHASTIC pooling has no TEST-phase backward in Caffe"}

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        (shape,) = bottom_shapes
        _four_d(layer, shape)
        self.kernel, self.stride, pad = _pooling_window(layer, shape)
        if pad != (0, 0):
            raise CaffeError(
                "Caffe implements padding only for AVE and MAX pooling",
                layer=layer.name,
                field="pooling_param.pad",
            )

    def top_shapes(self) -> list[Shape]:
        n, c, h, w = self.bottom_shapes[0]
        return [
            (
                n,
                c,
                *(
                    pooled_size(s, k, st, 0)
                    for s, k, st in zip((h, w), self.kernel, self.stride, strict=True)
                ),
            )
        ]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.detach()
        h, w = x.shape[2:]
        out = [
            pooled_size(int(s), k, st, 0)
            for s, k, st in zip((h, w), self.kernel, self.stride, strict=True)
        ]
        extra = [
            max((o - 1) * st + k - int(s), 0)
            for o, st, k, s in zip(out, self.stride, self.kernel, (h, w), strict=True)
        ]
        xp = F.pad(x, (0, extra[1], 0, extra[0]))
        area = self.kernel[0] * self.kernel[1]
        total = F.avg_pool2d(xp, self.kernel, self.stride) * area
        squares = F.avg_pool2d(xp * xp, self.kernel, self.stride) * area
        # Caffe starts the window sum at FLT_MIN and writes 0 where it is not positive.
        total = total + torch.finfo(torch.float32).tiny
        y = torch.where(total > 0, squares / total, torch.zeros_like(total))
        return [y[:, :, : out[0], : out[1]]]


class SPP(CaffeLayer):
    caffe_type = "SPP"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        from .. import schema

        p = layer.param.spp_param
        (shape,) = bottom_shapes
        _four_d(layer, shape)
        self.height = int(p.pyramid_height)
        if self.height < 1:
            raise CaffeError(
                "pyramid_height must be positive",
                layer=layer.name,
                field="spp_param.pyramid_height",
            )
        h, w = shape[2:]
        levels = []
        for level in range(self.height):
            bins = 2**level
            kh, kw = math.ceil(h / bins), math.ceil(w / bins)
            param = schema.LayerParameter(name=f"{layer.name}/level{level}", type="Pooling")
            pp = param.pooling_param
            pp.pool = p.pool
            pp.kernel_h, pp.kernel_w = kh, kw
            pp.stride_h, pp.stride_w = kh, kw
            pp.pad_h, pp.pad_w = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
            sub = LayerDef(
                name=param.name,
                type="Pooling",
                bottoms=list(layer.bottoms),
                tops=[param.name],
                param=param,
            )
            cls = StochasticPooling if _enum_name(pp, "pool") == "STOCHASTIC" else Pooling
            levels.append(cls(sub, bottom_shapes))
        self.levels = nn.ModuleList(levels)
        self.backward = all(m.backward for m in levels)

    def top_shapes(self) -> list[Shape]:
        if self.height == 1:
            return self.levels[0].top_shapes()
        n = self.bottom_shapes[0][0]
        return [(n, sum(math.prod(m.top_shapes()[0][1:]) for m in self.levels))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.height == 1:
            return self.levels[0](x)
        return [torch.cat([m(x)[0].flatten(1) for m in self.levels], dim=1)]


class Crop(CaffeLayer):
    caffe_type = "Crop"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.crop_param
        if len(bottom_shapes) != 2:
            raise CaffeError(
                "Crop takes two bottoms (the blob to crop and the shape reference)",
                layer=layer.name,
                field="bottom",
            )
        a, b = bottom_shapes
        if len(a) != len(b):
            raise CaffeError(
                f"bottoms {a} and {b} differ in their number of axes", layer=layer.name
            )
        self.axis = _canonical_axis(p.axis, len(a), layer, "crop_param.axis")
        n = len(a) - self.axis
        offsets = [int(o) for o in p.offset]
        if len(offsets) not in (0, 1, n):
            raise CaffeError(
                f"{len(offsets)} offsets: give none, one, or one per cropped axis ({n})",
                layer=layer.name,
                field="crop_param.offset",
            )
        offsets = offsets * n if len(offsets) == 1 else offsets or [0] * n
        self.offsets = [0] * self.axis + offsets
        for i in range(self.axis, len(a)):
            if a[i] - self.offsets[i] < b[i]:
                raise CaffeError(
                    f"axis {i}: offset {self.offsets[i]} + size {b[i]} exceeds {a[i]}",
                    layer=layer.name,
                    field="crop_param.offset",
                )

    def top_shapes(self) -> list[Shape]:
        a, b = self.bottom_shapes
        return [tuple(a[: self.axis]) + tuple(b[self.axis :])]

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> list[torch.Tensor]:
        # The reference gives only its shape (Caffe never writes its diff).
        index = tuple(
            slice(o, o + s) if i >= self.axis else slice(None)
            for i, (o, s) in enumerate(zip(self.offsets, ref.shape, strict=True))
        )
        return [x[index]]
