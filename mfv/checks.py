"""Checks of a run's parameters made before any work starts (a model name, sweep sizes, units).

Each check raises :class:`~mfv.errors.MfvError` (one line, exit status 2 on the command line), so
that bad parameters never surface after minutes of work, or as a NaN mean image cast to uint8, or as
an "incomplete" status (3) that no rerun can fix.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import MfvError

__all__ = [
    "MAX_MAP_BYTES",
    "MAX_UNITS",
    "check_model_name",
    "check_sweep_inputs",
    "check_sweep_params",
    "check_unit_map",
    "check_units_spec",
]

#: The most units one selection may name: far above any layer of the zoo (fc8 has 1000), and low
#: enough that a typo such as ``0-99999999999`` is refused before a list of that length is built.
MAX_UNITS = 1_000_000


def check_model_name(name: str) -> str:
    """``name`` if it is ``caffe`` or a model of :data:`mfv.models.MODEL_SPECS`; else an MfvError."""
    from .models import model_spec  # here: checking parameters must not wait for torch at import

    model_spec(name)
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


#: The largest unit map or units file read (bytes): a map of a million units is about 30 MB.
MAX_MAP_BYTES = 64 * 2**20


def _text(path: Path, option: str) -> str:
    """The UTF-8 text of a user's file, bounded; errors name the option and the file."""
    if not path.is_file():
        raise MfvError(f"{option} {path}: no such file")
    if path.stat().st_size > MAX_MAP_BYTES:
        raise MfvError(
            f"{option} {path}: larger than {MAX_MAP_BYTES} bytes (mfv.checks.MAX_MAP_BYTES)"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MfvError(f"{option} {path}: not UTF-8 text (byte {exc.start})") from None


def _no_duplicate_keys(path: Path):
    def pairs(items: list[tuple[str, object]]) -> dict:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise MfvError(f"--unit-map {path}: unit {key!r} is mapped twice")
            seen.add(key)
        return dict(items)

    return pairs


def check_unit_map(path: str | Path) -> None:
    """Refuse a unit map that is missing, too large, not UTF-8, or JSON with a key given twice.

    The map's entries themselves are read by :func:`mfv.sweep.read_unit_map`, whose errors name
    the file and line too.
    """
    import json

    p = Path(path)
    text = _text(p, "--unit-map")
    if p.suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "["):
        try:
            json.loads(text, object_pairs_hook=_no_duplicate_keys(p))
        except json.JSONDecodeError as exc:
            raise MfvError(
                f"--unit-map {p}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})"
            ) from None


def check_sweep_inputs(
    *, units: str, unit_map: str | None, classes: str | None, images: str | None
) -> None:
    """The sweep's input files and folders, checked before a cluster starts.

    ``images`` must be a folder when given, and one of ``images`` and ``unit_map`` is needed;
    a ``--units`` file, the unit map and the class list must be readable UTF-8 text.
    """
    if images is None and unit_map is None:
        raise MfvError("give --images ROOT (an ImageNet-style root) or --unit-map FILE")
    if images is not None and not Path(images).is_dir():
        raise MfvError(f"--images {images}: no such folder")
    if unit_map is not None:
        check_unit_map(unit_map)
    if classes is not None:
        _text(Path(classes), "--classes")
    if units.strip().lower() != "all" and Path(units).exists():
        _text(Path(units), "--units")
