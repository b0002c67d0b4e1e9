"""Layers that move, copy or join values without arithmetic: Concat, Flatten, Split."""

from __future__ import annotations

import math

import torch

from ..errors import CaffeError
from ..netdef import LayerDef
from .base import CaffeLayer, Shape, _canonical_axis


class Concat(CaffeLayer):
    caffe_type = "Concat"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.concat_param
        if p.HasField("concat_dim") and p.HasField("axis"):
            raise CaffeError(
                "give either axis or the deprecated concat_dim",
                layer=layer.name,
                field="concat_param.concat_dim",
            )
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        ndim = len(bottom_shapes[0])
        self.axis = _canonical_axis(axis, ndim, layer, "concat_param.axis")
        for s in bottom_shapes[1:]:
            if len(s) != ndim or any(
                a != b
                for i, (a, b) in enumerate(zip(s, bottom_shapes[0], strict=True))
                if i != self.axis
            ):
                raise CaffeError(
                    f"bottoms {bottom_shapes} differ outside the concat axis",
                    layer=layer.name,
                    field="concat_param.axis",
                )

    def top_shapes(self) -> list[Shape]:
        first = list(self.bottom_shapes[0])
        first[self.axis] = sum(s[self.axis] for s in self.bottom_shapes)
        return [tuple(first)]

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        return [torch.cat(xs, dim=self.axis)]


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


class Reshape(CaffeLayer):
    caffe_type = "Reshape"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        if self.dims.count(-1) > 1:
            raise CaffeError(
                "at most one dimension may be -1 (inferred)",
                layer=layer.name,
                field="reshape_param.shape",
            )
        if any(d < -1 for d in self.dims):
            raise CaffeError(
                f"dimensions must be >= -1, got {self.dims}",
                layer=layer.name,
                field="reshape_param.shape",
            )
        ndim = len(bottom_shapes[0])
        start = int(p.axis) if p.axis >= 0 else ndim + int(p.axis) + 1
        if not 0 <= start <= ndim:
            raise CaffeError(
                f"axis {p.axis} out of range for a {ndim}-D bottom",
                layer=layer.name,
                field="reshape_param.axis",
            )
        if p.num_axes < -1:
            raise CaffeError(
                "num_axes must be >= -1", layer=layer.name, field="reshape_param.num_axes"
            )
        end = ndim if p.num_axes == -1 else start + int(p.num_axes)
        if end > ndim:
            raise CaffeError(
                "num_axes reaches past the bottom's axes",
                layer=layer.name,
                field="reshape_param.num_axes",
            )
        self.start, self.end = start, end
        for i, d in enumerate(self.dims):
            if d == 0 and start + i >= ndim:
                raise CaffeError(
                    f"dimension {i} copies axis {start + i}, which the bottom lacks",
                    layer=layer.name,
                    field="reshape_param.shape",
                )
        self.layer = layer
        self.top_shapes()  # check the count now

    def _shape(self, shape: Shape) -> Shape:
        new = [shape[self.start + i] if d == 0 else d for i, d in enumerate(self.dims)]
        out = list(shape[: self.start]) + new + list(shape[self.end :])
        count = math.prod(shape)
        if -1 in new:
            known = math.prod(d for d in out if d != -1)
            if known == 0 or count % known:
                raise CaffeError(
                    f"cannot infer the -1 dimension: {count} values do not split into {known}s",
                    layer=self.layer_name,
                    field="reshape_param.shape",
                )
            out[self.start + new.index(-1)] = count // known
        if math.prod(out) != count:
            raise CaffeError(
                f"shape {tuple(out)} holds {math.prod(out)} values, the bottom "
                f"{tuple(shape)} {count}",
                layer=self.layer_name,
                field="reshape_param.shape",
            )
        return tuple(out)

    def top_shapes(self) -> list[Shape]:
        return [self._shape(self.bottom_shapes[0])]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x.reshape(self._shape(tuple(x.shape)))]


class Slice(CaffeLayer):
    caffe_type = "Slice"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.slice_param
        shape = bottom_shapes[0]
        axis = p.slice_dim if p.HasField("slice_dim") else p.axis
        self.axis = _canonical_axis(axis, len(shape), layer, "slice_param.axis")
        n_tops = len(layer.tops)
        size = shape[self.axis]
        points = [int(s) for s in p.slice_point]
        if points:
            if len(points) != n_tops - 1:
                raise CaffeError(
                    f"{len(points)} slice points for {n_tops} tops (need {n_tops - 1})",
                    layer=layer.name,
                    field="slice_param.slice_point",
                )
            bounds = [0, *points, size]
            self.sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
            if any(s <= 0 for s in self.sizes):
                raise CaffeError(
                    f"slice points {points} must increase inside (0, {size})",
                    layer=layer.name,
                    field="slice_param.slice_point",
                )
        else:
            if n_tops < 1 or size % n_tops:
                raise CaffeError(
                    f"axis {self.axis} of size {size} does not split into {n_tops} equal parts",
                    layer=layer.name,
                    field="slice_param",
                )
            self.sizes = [size // n_tops] * n_tops

    def top_shapes(self) -> list[Shape]:
        shape = list(self.bottom_shapes[0])
        return [tuple(shape[: self.axis] + [s] + shape[self.axis + 1 :]) for s in self.sizes]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(x, self.sizes, dim=self.axis))


class Tile(CaffeLayer):
    caffe_type = "Tile"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        p = layer.param.tile_param
        if not p.HasField("tiles") or p.tiles < 1:
            raise CaffeError(
                "tiles must be given and positive", layer=layer.name, field="tile_param.tiles"
            )
        self.tiles = int(p.tiles)
        self.axis = _canonical_axis(p.axis, len(bottom_shapes[0]), layer, "tile_param.axis")

    def top_shapes(self) -> list[Shape]:
        shape = list(self.bottom_shapes[0])
        shape[self.axis] *= self.tiles
        return [tuple(shape)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Caffe copies the whole block from the axis on, tiles times: repeat's order.
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return [x.repeat(*reps)]


class Silence(CaffeLayer):
    caffe_type = "Silence"

    def top_shapes(self) -> list[Shape]:
        return []

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        return []


class BatchReindex(CaffeLayer):
    caffe_type = "BatchReindex"
    no_gradient = {1: "Caffe cannot back-propagate to BatchReindex's indices"}

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        if len(bottom_shapes) != 2 or len(bottom_shapes[1]) != 1:
            raise CaffeError(
                "BatchReindex takes the data and a 1-D blob of indices",
                layer=layer.name,
                field="bottom",
            )

    def top_shapes(self) -> list[Shape]:
        data, idx = self.bottom_shapes
        return [(idx[0], *data[1:])]

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> list[torch.Tensor]:
        i = idx.detach().to(torch.int64)
        # torch.export cannot guard on data (port.export's pt2); the program's gather still fails.
        if not torch.compiler.is_exporting() and bool(((i < 0) | (i >= x.shape[0])).any()):
            raise CaffeError(f"an index is outside [0, {x.shape[0]})", layer=self.layer_name)
        return [x[i]]


class Filter(CaffeLayer):
    caffe_type = "Filter"
    backward_note = "yes, not to the selector (last bottom)"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        if len(bottom_shapes) < 2 or len(layer.tops) != len(bottom_shapes) - 1:
            raise CaffeError(
                "Filter takes blobs to filter plus a selector, and one top per blob",
                layer=layer.name,
                field="bottom",
            )
        sel = bottom_shapes[-1]
        if any(d != 1 for d in sel[1:]):
            raise CaffeError(
                f"selector of shape {sel}: every axis after the first must be 1",
                layer=layer.name,
                field="bottom",
            )
        if any(s[0] != sel[0] for s in bottom_shapes[:-1]):
            raise CaffeError(
                f"bottoms {bottom_shapes} differ in their first axis",
                layer=layer.name,
                field="bottom",
            )
        self.no_gradient = {
            len(bottom_shapes) - 1: "Caffe cannot back-propagate to a Filter layer's selector"
        }

    def top_shapes(self) -> list[Shape]:
        # The number of items kept depends on the selector's values; Caffe sizes its first
        # reshape by the batch, as this does.
        return [tuple(s) for s in self.bottom_shapes[:-1]]

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        keep = torch.nonzero(xs[-1].detach().reshape(xs[-1].shape[0]) != 0).reshape(-1)
        return [x.index_select(0, keep) for x in xs[:-1]]


class Parameter(CaffeLayer):
    caffe_type = "Parameter"

    def __init__(self, layer: LayerDef, bottom_shapes: list[Shape]) -> None:
        super().__init__(layer, bottom_shapes)
        self.shape = tuple(int(d) for d in layer.param.parameter_param.shape.dim)
        self._make_blobs()

    def blob_shapes(self) -> list[Shape]:
        return [self.shape]

    def seed_blobs(self, rng) -> list:
        return [rng.normal(0.0, 1.0, self.shape)]

    def top_shapes(self) -> list[Shape]:
        return [self.shape]

    def forward(self) -> list[torch.Tensor]:
        # A copy, so that the top is a tensor of its own (outside autograd, a plain one).
        return [self.blobs[0].clone()]
