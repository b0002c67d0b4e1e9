"""Checks of a run's parameters made before any work starts (a model name, sweep sizes, units).

Each check raises :class:`~mfv.errors.MfvError` (one line, exit status 2 on the command line), so
that bad parameters never surface after minutes of work, or as a NaN mean image cast to uint8, or as
an "incomplete" status (3) that no rerun can fix.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import MfvError

__all__ = ["MAX_UNITS", "check_model_name", "check_sweep_params", "check_units_spec"]

#: The most units one selection may name: far above any layer of the zoo (fc8 has 1000), and low
#: enough that a typo such as ``0-99999999999`` is refused before a list of that length is built.
MAX_UNITS = 1_000_000


def check_model_name(name: str) -> str:
    """``name`` if it is ``caffe`` or a model of :data:`mfv.models.MODELS`; else an MfvError."""
    from .models import MODELS  # here: checking parameters must not wait for torch at import

    if name != "caffe" and name not in MODELS:
        raise MfvError(f"unknown model {name!r}; known: caffe, {', '.join(MODELS)}")
    return name


def check_units_spec(spec: str) -> None:
    """Refuse a ``--units`` text naming a unit at or above :data:`MAX_UNITS`, before expansion.

    A file of units and ``all`` are left to the parser, which knows the layer; malformed items are
    also its to report (with file and line).
    """
    if spec.strip().lower() == "all" or Path(spec).is_file():
        return
    for number in re.findall(r"\d+", spec):
        if len(number) > 7 or int(number) >= MAX_UNITS:
            raise MfvError(
                f"--units: unit {number} is out of range: a selection names units below "
                f"{MAX_UNITS} (mfv.checks.MAX_UNITS)"
            )


def check_sweep_params(*, k: int, m: int, units: str | None = None) -> None:
    """Refuse ``k`` or ``m`` below 1 and, when given, a ``--units`` text out of range."""
    for option, value in (("--k", k), ("--m", m)):
        if value < 1:
            raise MfvError(f"{option} must be at least 1, got {value}")
    if units is not None:
        check_units_spec(units)
