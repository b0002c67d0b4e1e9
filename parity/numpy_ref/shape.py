"""Layers that move values without arithmetic: Concat, Flatten, Split, Reshape, Slice, Tile,
Silence, BatchReindex, Filter, Parameter."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .params import has_field, sub_param
from .registry import registers

__all__ = [
    "batch_reindex",
    "concat",
    "filter_rows",
    "flatten",
    "reshape_shape",
    "slice_sizes",
    "split",
    "tile",
]


def concat(xs: Sequence[np.ndarray], *, axis: int = 1) -> np.ndarray:
    """Caffe Concat along ``axis``."""
    return np.concatenate([np.asarray(a) for a in xs], axis=axis)


def flatten(x: np.ndarray, *, axis: int = 1, end_axis: int = -1) -> np.ndarray:
    """Caffe Flatten: merge axes ``axis..end_axis`` (inclusive, negatives count from the end)."""
    x = np.asarray(x)
    a, e = axis % x.ndim, end_axis % x.ndim
    return x.reshape(x.shape[:a] + (int(np.prod(x.shape[a : e + 1])),) + x.shape[e + 1 :])


def split(x: np.ndarray, n: int) -> list[np.ndarray]:
    """Caffe Split: ``n`` copies of the input."""
    return [np.array(x, copy=True) for _ in range(n)]


def reshape_shape(
    shape: Sequence[int], dims: Sequence[int], *, axis: int = 0, num_axes: int = -1
) -> tuple[int, ...]:
    """Caffe Reshape's top shape: ``dims`` replace axes [axis, axis + num_axes); 0 copies, -1 infers."""
    ndim = len(shape)
    start = axis if axis >= 0 else ndim + axis + 1
    end = ndim if num_axes == -1 else start + num_axes
    new = [shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
    out = list(shape[:start]) + new + list(shape[end:])
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(shape) // known
    return tuple(out)


def slice_sizes(size: int, n_tops: int, points: Sequence[int]) -> list[int]:
    """Sizes of Slice's tops along the axis: between slice points, else ``size / n_tops`` each."""
    if points:
        bounds = [0, *points, size]
        return [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]
    return [size // n_tops] * n_tops


def tile(x: np.ndarray, *, axis: int = 1, tiles: int = 1) -> np.ndarray:
    """The block of axes from ``axis`` on, repeated ``tiles`` times along ``axis``."""
    axis %= x.ndim
    return np.concatenate([x] * tiles, axis=axis)


def batch_reindex(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``x[int(idx[i])]``."""
    return x[np.asarray(idx).astype(np.int64)]


def filter_rows(xs: Sequence[np.ndarray], selector: np.ndarray) -> list[np.ndarray]:
    """The rows of each ``x`` whose selector value is non-zero."""
    keep = np.flatnonzero(np.asarray(selector).reshape(selector.shape[0]) != 0)
    return [x[keep] for x in xs]


@registers("Concat")
def _concat(layer, bottoms, weights):
    p = sub_param(layer, "concat_param")
    axis = int(p.concat_dim) if has_field(p, "concat_dim") else int(p.axis)
    return [concat(bottoms, axis=axis)]


@registers("Flatten")
def _flatten(layer, bottoms, weights):
    p = sub_param(layer, "flatten_param")
    return [flatten(bottoms[0], axis=int(p.axis), end_axis=int(p.end_axis))]


@registers("Split")
def _split(layer, bottoms, weights):
    return split(bottoms[0], len(layer.tops))


@registers("Reshape")
def _reshape(layer, bottoms, weights):
    p = sub_param(layer, "reshape_param")
    x = bottoms[0]
    return [
        x.reshape(
            reshape_shape(
                x.shape, [int(d) for d in p.shape.dim], axis=int(p.axis), num_axes=int(p.num_axes)
            )
        )
    ]


@registers("Slice")
def _slice(layer, bottoms, weights):
    p = sub_param(layer, "slice_param")
    x = bottoms[0]
    axis = (int(p.slice_dim) if has_field(p, "slice_dim") else int(p.axis)) % x.ndim
    sizes = slice_sizes(x.shape[axis], len(layer.tops), [int(s) for s in p.slice_point])
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


@registers("Tile")
def _tile(layer, bottoms, weights):
    p = sub_param(layer, "tile_param")
    return [tile(bottoms[0], axis=int(p.axis), tiles=int(p.tiles))]


@registers("Silence")
def _silence(layer, bottoms, weights):
    return []


@registers("BatchReindex")
def _batch_reindex(layer, bottoms, weights):
    return [batch_reindex(bottoms[0], bottoms[1])]


@registers("Filter")
def _filter(layer, bottoms, weights):
    return filter_rows(bottoms[:-1], bottoms[-1])


@registers("Parameter")
def _parameter(layer, bottoms, weights):
    shape = tuple(int(d) for d in sub_param(layer, "parameter_param").shape.dim)
    return [np.asarray(weights[0]).reshape(shape)]
