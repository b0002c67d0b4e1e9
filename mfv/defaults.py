"""The one place where a run's defaults are decided: the schedule and the denoiser.

The command line, :func:`mfv.visualize.visualize` and the sweep all ask here, so that "the model's
schedule" and "the default denoiser" mean the same thing whichever way a run is started.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import MfvError
from .octaves import Schedule, load_schedule

if TYPE_CHECKING:  # torch is loaded with the models, not with the defaults
    from .models import ModelSpec

__all__ = ["DENOISERS", "default_schedule_path", "resolve_denoiser", "resolve_schedule"]

#: The TV denoisers; ``None`` or ``"auto"`` asks for the mode's default.
DENOISERS = ("skimage", "torch")


def resolve_denoiser(denoiser: str | None, *, faithful: bool) -> str:
    """The denoiser a run uses: ``"skimage"`` in faithful mode, ``"torch"`` otherwise, unless given.

    Parameters
    ----------
    denoiser : {None, "auto", "skimage", "torch"}
        ``None`` and ``"auto"`` both mean the mode's default.
    faithful : bool
        Whether the run reproduces the original's arithmetic (its reference is scikit-image).

    Raises
    ------
    MfvError
        For any other name.
    """
    if denoiser is None or denoiser == "auto":
        return "skimage" if faithful else "torch"
    if denoiser not in DENOISERS:
        raise MfvError(f"denoiser must be 'auto', 'skimage' or 'torch', not {denoiser!r}")
    return denoiser


def default_schedule_path(spec: ModelSpec | None) -> Path:
    """The model's own schedule file; CaffeNet's published one for a definition given by hand."""
    if spec is None:
        from .models import MODEL_SPECS

        spec = MODEL_SPECS["caffenet"]
    return spec.schedule_path


def resolve_schedule(schedule: str | Path | Schedule | None, spec: ModelSpec | None) -> Schedule:
    """The schedule a run uses: the one given (a :class:`Schedule` or a file), else the model's.

    Parameters
    ----------
    schedule : Schedule, path or None
    spec : ModelSpec or None
        The model's spec (``Model.spec``); None for a definition given by hand.
    """
    if isinstance(schedule, Schedule):
        return schedule
    return load_schedule(schedule if schedule else default_schedule_path(spec))
