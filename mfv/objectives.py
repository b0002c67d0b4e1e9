"""Targets for activation maximisation, as small composable objectives.

An objective names the layers it needs and maps their activations to one number per image (the
quantity whose gradient MFV follows). ``unit``, ``softmax_unit`` and ``channel`` cover what MFV needs;
objectives add and scale (``unit("fc8", 945) - 0.1 * unit("fc8", 1)``), so a new target is one
function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from .errors import MfvError

__all__ = ["Objective", "unit", "softmax_unit", "channel", "parse_target", "check_objective"]

Acts = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """A differentiable target: activations -> one value per image.

    Parameters
    ----------
    fn : callable
        ``fn(acts) -> Tensor (N,)``, ``acts`` a mapping layer name -> activation (N, ...).
    layers : tuple of str
        Layers ``fn`` reads.
    description : str
        Human-readable form, used in traces and reports.
    best : callable, optional
        ``best(acts) -> Tensor (N,)`` of the most active unit per image in the target's own terms (the
        trace's "best unit"); None for composite objectives.
    spec : dict
        Machine-readable form (kind, layer, unit, ...), kept in outputs.
    """

    fn: Callable[[Acts], torch.Tensor]
    layers: tuple[str, ...]
    description: str
    best: Callable[[Acts], torch.Tensor] | None = None
    spec: dict = field(default_factory=dict)

    def __call__(self, acts: Acts) -> torch.Tensor:
        return self.fn(acts)

    def best_unit(self, acts: Acts) -> list | None:
        """Most active unit per image as Python ints (None for composite objectives)."""
        found = self.best_units(acts)
        return None if found is None else [int(i) for i in found]

    def best_units(self, acts: Acts) -> torch.Tensor | None:
        """The same as a (N,) tensor on the activations' device: no host synchronisation."""
        return None if self.best is None else self.best(acts)

    def __add__(self, other: Objective) -> Objective:
        return Objective(
            lambda a: self.fn(a) + other.fn(a),
            tuple(dict.fromkeys(self.layers + other.layers)),
            f"({self.description} + {other.description})",
            None,
            {"kind": "sum", "terms": [self.spec, other.spec]},
        )

    def __mul__(self, k: float) -> Objective:
        k = float(k)
        return Objective(
            lambda a: k * self.fn(a),
            self.layers,
            f"{k:g} * {self.description}",
            self.best,
            {"kind": "scale", "factor": k, "term": self.spec},
        )

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return self * -1.0

    def __sub__(self, other: Objective) -> Objective:
        return self + (-other)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def unit(layer: str, index: int) -> Objective:
    """Unit ``index`` of ``layer``, flat per image (pycaffe's one-hot ``diff.flat[index]``).

    For an fc layer or the softmax blob this is the neuron ``index``; for a conv blob it is the
    flat index ``c * H * W + y * W + x`` (prefer :func:`channel` there).
    """
    index = int(index)

    def fn(a: Acts) -> torch.Tensor:
        t = _flat(a[layer])
        if not 0 <= index < t.shape[1]:
            raise IndexError(
                f"unit {index} out of range for layer {layer!r} with {t.shape[1]} units"
            )
        return t[:, index]

    def best(a: Acts) -> torch.Tensor:
        return _flat(a[layer]).argmax(1)

    return Objective(
        fn, (layer,), f"{layer}[{index}]", best, {"kind": "unit", "layer": layer, "unit": index}
    )


def softmax_unit(layer: str, index: int) -> Objective:
    """Softmax probability of class ``index``, computed from the logits ``layer`` (e.g. fc8)."""
    index = int(index)

    def fn(a: Acts) -> torch.Tensor:
        return torch.softmax(_flat(a[layer]), dim=1)[:, index]

    def best(a: Acts) -> torch.Tensor:
        return _flat(a[layer]).argmax(1)

    return Objective(
        fn,
        (layer,),
        f"softmax({layer})[{index}]",
        best,
        {"kind": "softmax_unit", "layer": layer, "unit": index},
    )


def channel(layer: str, index: int, *, x: int | None = None, y: int | None = None) -> Objective:
    """Channel ``index`` of a conv ``layer`` at column ``x``, row ``y`` (default: the centre).

    The original's conv path set ``diff[:, unit, xy, xy]`` (and crashed); this is that target, at
    any position.
    """
    index = int(index)

    def where(t: torch.Tensor) -> tuple[int, int]:
        if t.ndim != 4:
            raise ValueError(
                f"channel() needs a conv layer (N, C, H, W); {layer!r} has shape {tuple(t.shape)}"
            )
        h, w = t.shape[2], t.shape[3]
        yy = h // 2 if y is None else int(y)
        xx = w // 2 if x is None else int(x)
        if not (0 <= yy < h and 0 <= xx < w):
            raise IndexError(f"position (x={xx}, y={yy}) outside {layer!r} of size {w}x{h}")
        return yy, xx

    def fn(a: Acts) -> torch.Tensor:
        t = a[layer]
        yy, xx = where(t)
        return t[:, index, yy, xx]

    def best(a: Acts) -> torch.Tensor:
        t = a[layer]
        yy, xx = where(t)
        return t[:, :, yy, xx].argmax(1)

    pos = "centre" if x is None and y is None else f"x={x}, y={y}"
    return Objective(
        fn,
        (layer,),
        f"{layer}[channel {index} at {pos}]",
        best,
        {"kind": "channel", "layer": layer, "unit": index, "x": x, "y": y},
    )


def parse_target(
    layer: str,
    unit_index: int,
    *,
    softmax: bool = False,
    x: int | None = None,
    y: int | None = None,
    shape: tuple[int, ...] | None = None,
) -> Objective:
    """Build the objective the command line asks for.

    A conv layer (``shape`` of length 3, C x H x W) gets :func:`channel` at (x, y); ``softmax=True``
    gets :func:`softmax_unit`; anything else :func:`unit`.
    """
    if softmax:
        if x is not None or y is not None:
            raise MfvError("--x/--y do not apply to --softmax (a softmax over the flattened layer)")
        obj = softmax_unit(layer, unit_index)
    elif shape is not None and len(shape) == 3 and (shape[1] > 1 or shape[2] > 1):
        obj = channel(layer, unit_index, x=x, y=y)
    elif x is not None or y is not None:
        raise MfvError(f"--x/--y only apply to conv layers; {layer!r} has shape {shape}")
    else:
        obj = unit(layer, unit_index)
    if shape is not None:
        check_objective(obj, {layer: tuple(shape)})
    return obj


def check_objective(objective: Objective, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Check that a target lies inside its layers, before a run creates anything.

    Parameters
    ----------
    objective : Objective
        Built by :func:`unit`, :func:`softmax_unit`, :func:`channel` or their sums and multiples.
    shapes : mapping of str to tuple of int
        Per-image shape of every addressable layer (``Model.layer_shapes()``).

    Raises
    ------
    MfvError
        For an unknown layer, a negative unit, a unit past the layer, a position outside the map.
    """
    _check_spec(objective.spec, shapes)


def _check_spec(spec: dict, shapes: Mapping[str, tuple[int, ...]]) -> None:
    kind = spec.get("kind")
    if kind == "sum":
        for term in spec["terms"]:
            _check_spec(term, shapes)
        return
    if kind == "scale":
        _check_spec(spec["term"], shapes)
        return
    if kind not in ("unit", "softmax_unit", "channel"):
        return  # a custom objective checks itself
    layer, index = spec["layer"], spec["unit"]
    if layer not in shapes:
        near = ", ".join(list(shapes)[-8:])
        raise MfvError(
            f"no layer {layer!r} in this model (its last layers: {near}; "
            "`python -m mfv layers` lists them all)"
        )
    shape = tuple(shapes[layer])
    if kind == "channel":
        if len(shape) != 3:
            raise MfvError(
                f"channel targets need a conv layer (C, H, W); {layer!r} has shape {shape}"
            )
        c, h, w = shape
        if not 0 <= index < c:
            raise MfvError(f"unit {index} is outside {layer!r}: channels 0..{c - 1}")
        x, y = spec.get("x"), spec.get("y")
        if x is not None and not 0 <= x < w:
            raise MfvError(f"--x {x} is outside {layer!r}: columns 0..{w - 1}")
        if y is not None and not 0 <= y < h:
            raise MfvError(f"--y {y} is outside {layer!r}: rows 0..{h - 1}")
        return
    n = 1
    for d in shape:
        n *= d
    if not 0 <= index < n:
        raise MfvError(f"unit {index} is outside {layer!r}: units 0..{n - 1} (shape {shape})")
