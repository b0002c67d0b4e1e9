"""Octave schedules: data files, and the per-step arithmetic in both modes.

A schedule is JSON (see ``mfv/schedules/``)::

    {
        "name": ...,
        "description": ...,
        "input_size": [227, 227],
        "octaves": [
            {
                "iter_n": 190,
                "zoom": null,
                "margin": 0,
                "window": 0.3,
                "step_size": [1, 2],
                "tv_weight": [0.4, 0.4],
                "layer": "prob"(optional),
            },
            ...,
        ],
    }

JSON keeps the difference between ``1`` and ``1.0``, and so does this module: in faithful mode an
all-int ramp is evaluated with Python 2 integer division, as the original did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import MfvError

__all__ = ["Octave", "Schedule", "load_schedule", "step_size", "tv_weight", "py2_div", "FIXES"]

Number = int | float

#: What the default (non-faithful) mode changes, recorded in every output of a default run.
FIXES = (
    "step size ramps with true division (the original's Python 2 integer division froze octave 1 at 1)",
    "TV weight ramps from start to end (the original's `start - (start - end * i) / n` ramps to start + end)",
    "the image is clipped to 0..255 after each zoom (the cubic spline overshoots; untouched areas stayed unclipped)",
    "images are saved rounded and clipped (the original's uint8() cast wrapped values outside 0..255)",
)


def py2_div(a: Number, b: Number) -> Number:
    """``a / b`` as Python 2 evaluated it: floor division when both are ints."""
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
        return a // b
    return a / b


@dataclass(frozen=True)
class Octave:
    iter_n: int
    zoom: float | None
    margin: int
    window: float
    step_size: tuple[Number, Number]
    tv_weight: tuple[Number, Number]
    layer: str | None = None

    def as_dict(self) -> dict:
        return {
            "iter_n": self.iter_n,
            "zoom": self.zoom,
            "margin": self.margin,
            "window": self.window,
            "step_size": list(self.step_size),
            "tv_weight": list(self.tv_weight),
            "layer": self.layer,
        }


@dataclass(frozen=True)
class Schedule:
    name: str
    octaves: tuple[Octave, ...]
    input_size: tuple[int, int] | None = None
    description: str = ""
    path: str | None = None

    @property
    def total_steps(self) -> int:
        return sum(o.iter_n for o in self.octaves)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "path": self.path,
            "input_size": list(self.input_size) if self.input_size else None,
            "octaves": [o.as_dict() for o in self.octaves],
        }


def _pair(v, what: str, i: int) -> tuple[Number, Number]:
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int | float) for x in v)):
        raise MfvError(f"octave {i}: {what} must be [start, end], got {v!r}")
    return v[0], v[1]


def parse_schedule(data: dict, *, path: str | None = None) -> Schedule:
    """Validate a schedule dictionary (the JSON's content)."""
    octs = data.get("octaves")
    if not isinstance(octs, list) or not octs:
        raise MfvError(f"{path or 'schedule'}: 'octaves' must be a non-empty list")
    out = []
    for i, o in enumerate(octs, 1):
        n = o.get("iter_n")
        if not isinstance(n, int) or n < 0:
            raise MfvError(f"octave {i}: iter_n must be a non-negative int, got {n!r}")
        zoom = o.get("zoom")
        if zoom is not None and (not isinstance(zoom, int | float) or zoom <= 0):
            raise MfvError(f"octave {i}: zoom must be a positive number or null, got {zoom!r}")
        margin = int(o.get("margin", 0))
        window = float(o.get("window", 0.3))
        if margin < 0 or window < 0:
            raise MfvError(f"octave {i}: margin and window must be >= 0")
        out.append(
            Octave(
                n,
                zoom,
                margin,
                window,
                _pair(o.get("step_size"), "step_size", i),
                _pair(o.get("tv_weight"), "tv_weight", i),
                o.get("layer"),
            )
        )
    size = data.get("input_size")
    return Schedule(
        str(data.get("name", Path(path).stem if path else "schedule")),
        tuple(out),
        tuple(size) if size else None,
        str(data.get("description", "")),
        path,
    )


def load_schedule(path: str | Path) -> Schedule:
    """Read a schedule file."""
    path = Path(path)
    return parse_schedule(json.loads(path.read_text()), path=str(path))


def step_size(octave: Octave, i: int, *, faithful: bool) -> float:
    """Step size at step ``i`` (0-based) of ``octave``.

    Faithful: ``start + ((end - start) * i) / iter_n`` with Python 2 division (ints stay ints).
    """
    start, end = octave.step_size
    n = octave.iter_n
    if faithful:
        return float(start + py2_div((end - start) * i, n))
    return float(start) + (float(end) - float(start)) * i / n


def tv_weight(octave: Octave, i: int, *, faithful: bool) -> float:
    """TV weight at step ``i``.

    Faithful: ``start - (start - end * i) / iter_n`` exactly as written (Python 2 division), which
    ramps from about ``start`` to ``start + end``. Default: ``start -> end`` linearly.
    """
    start, end = octave.tv_weight
    n = octave.iter_n
    if faithful:
        return float(start - py2_div(start - end * i, n))
    return float(start) + (float(end) - float(start)) * i / n
