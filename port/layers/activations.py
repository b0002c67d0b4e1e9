"""Point-wise activations, dropout and softmax."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import CaffeError
from ..netdef import LayerDef
from .base import CaffeLayer, Shape, _canonical_axis


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
        self.axis = _canonical_axis(
            layer.param.softmax_param.axis, len(bottom_shapes[0]), layer, "softmax_param.axis"
        )

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.softmax(x, dim=self.axis)]


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


class _Pointwise(CaffeLayer):
    """A layer whose one top has its bottom's shape."""

    def top_shapes(self) -> list[Shape]:
        return [self.bottom_shapes[0]]


class AbsVal(_Pointwise):
    caffe_type = "AbsVal"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        if layer.in_place:
            raise CaffeError(
                "AbsVal does not allow in-place computation (Caffe checks top != bottom)",
                layer=layer.name,
                field="top",
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Caffe's gradient is sign(x) * dy with sign(0) = 0, as is torch's.
        return [torch.abs(x)]


class BNLL(_Pointwise):
    caffe_type = "BNLL"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # log(1 + e^x), written as Caffe does so that neither branch overflows; the gradient
        # e^x / (1 + e^x) is the same either way.
        pos = x + torch.log1p(torch.exp(-x.clamp(min=0)))
        neg = torch.log1p(torch.exp(x.clamp(max=0)))
        return [torch.where(x > 0, pos, neg)]


class ELU(_Pointwise):
    caffe_type = "ELU"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        self.alpha = float(layer.param.elu_param.alpha)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Caffe's gradient for x <= 0 is y + alpha, i.e. alpha at x == 0, as is F.elu's.
        return [F.elu(x, self.alpha)]


class Exp(_Pointwise):
    caffe_type = "Exp"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.exp_param
        base, scale, shift = float(p.base), float(p.scale), float(p.shift)
        if base != -1 and base <= 0:
            raise CaffeError(
                "base must be strictly positive (or -1 for e)",
                layer=layer.name,
                field="exp_param.base",
            )
        log_base = 1.0 if base == -1 else math.log(base)
        # y = base^(shift + scale x) = outer * exp(inner x), Caffe's factoring.
        self.inner = log_base * scale
        self.outer = math.exp(shift) if base == -1 else base**shift

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = torch.exp(x if self.inner == 1 else x * self.inner)
        return [y if self.outer == 1 else y * self.outer]


class Log(_Pointwise):
    caffe_type = "Log"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.log_param
        base = float(p.base)
        if base != -1 and base <= 0:
            raise CaffeError(
                "base must be strictly positive (or -1 for e)",
                layer=layer.name,
                field="log_param.base",
            )
        self.base_scale = 1.0 if base == -1 else 1.0 / math.log(base)
        self.scale, self.shift = float(p.scale), float(p.shift)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.scale != 1:
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        y = torch.log(x)
        return [y if self.base_scale == 1 else y * self.base_scale]


class Power(_Pointwise):
    caffe_type = "Power"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.power * self.scale == 0:
            # Caffe fills a constant and back-propagates zeros.
            value = 1.0 if self.power == 0 else self.shift**self.power
            return [torch.full_like(x, value) + 0 * x]
        y = x * self.scale if self.scale != 1 else x
        if self.shift != 0:
            y = y + self.shift
        return [y if self.power == 1 else torch.pow(y, self.power)]


class PReLU(_Pointwise):
    caffe_type = "PReLU"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise CaffeError(f"bottom of shape {shape} has no channel axis", layer=layer.name)
        self.channel_shared = bool(layer.param.prelu_param.channel_shared)
        self.channels = shape[1]
        self._make_blobs()

    def blob_shapes(self) -> list[Shape]:
        # A shared slope is a 0-axis blob (one value), as in Caffe.
        return [()] if self.channel_shared else [(self.channels,)]

    def seed_blobs(self, rng) -> list:
        """Slopes around Caffe's default filler value 0.25."""
        return [rng.uniform(0.1, 0.4, self.blob_shapes()[0])]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        slope = self.blobs[0].reshape((1, -1) + (1,) * (x.dim() - 2))
        # Caffe's gradient at x == 0 is the slope (the x <= 0 branch).
        return [torch.where(x > 0, x, x * slope)]


class Clip(_Pointwise):
    caffe_type = "Clip"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise CaffeError("min and max are required", layer=layer.name, field="clip_param")
        self.min, self.max = float(p.min), float(p.max)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Caffe passes the gradient where min <= x <= max (bounds included), as clamp does.
        return [torch.clamp(x, self.min, self.max)]


class Swish(_Pointwise):
    caffe_type = "Swish"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        self.beta = float(layer.param.swish_param.beta)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x * torch.sigmoid(x * self.beta if self.beta != 1 else x)]


class Threshold(_Pointwise):
    caffe_type = "Threshold"
    backward = False
    no_gradient = {0: "Threshold's Backward is NOT_IMPLEMENTED"}

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        self.threshold = float(layer.param.threshold_param.threshold)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [(x.detach() > self.threshold).to(x.dtype)]
