"""Multifaceted Feature Visualization (Nguyen et al. 2016) on any torch module with a pixel convention.

Function-first API: :func:`load_model` / :func:`wrap` give a :class:`Model`; :func:`make_means` makes
the mean images of a class's facets; :func:`visualize` runs the MFV loop; :func:`evaluate` measures a
run. Objectives live in :mod:`mfv.objectives`, schedules in :mod:`mfv.octaves` and ``mfv/schedules``.
"""

from port.images import load_rgb, save_image
from port.verdict import ParityError, check_parity

from ._io import fit_to
from .errors import MfvError
from .evaluate import evaluate
from .means import make_means
from .models import MODEL_SPECS, Model, load_model, wrap
from .objectives import Objective, channel, softmax_unit, unit
from .octaves import Schedule, load_schedule
from .pixels import CAFFENET, TORCHVISION, PixelConvention
from .visualize import visualize

__all__ = [
    "CAFFENET",
    "MODEL_SPECS",
    "MfvError",
    "TORCHVISION",
    "Model",
    "Objective",
    "ParityError",
    "PixelConvention",
    "Schedule",
    "channel",
    "check_parity",
    "evaluate",
    "fit_to",
    "load_model",
    "load_rgb",
    "load_schedule",
    "make_means",
    "save_image",
    "softmax_unit",
    "unit",
    "visualize",
    "wrap",
]
