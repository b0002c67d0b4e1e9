"""What a golden dump was fed, and the error of a run that cannot be set up.

Kept apart from :mod:`parity.run` so that the golden check (:mod:`parity.golden_check`), which
``run`` calls, can use both without an import circle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from port.blobkeys import data_key
from port.errors import ToolError

__all__ = ["ParitySetupError", "golden_inputs"]


class ParitySetupError(ToolError):
    """The run cannot be set up (missing goldens, unknown reference, a golden without its input...)."""


def golden_inputs(netdef: Any, arrays: Mapping[str, np.ndarray], source: str) -> dict:
    """The input batch a golden dump was made from, per net input.

    ``input/<name>`` (what ``legacy_caffe goldens`` writes) is taken first, then ``data/<name>``
    (pycaffe's ``net.blobs[name].data`` and ``python -m port dump``'s naming).

    Raises
    ------
    ParitySetupError
        When the file carries neither for some net input: judging it on any other input would
        compare two different computations.
    """
    out = {}
    for name in netdef.inputs:
        for key in (f"input/{name}", data_key(name)):
            if key in arrays:
                out[name] = np.asarray(arrays[key])
                break
        else:
            raise ParitySetupError(
                f"{source}: the golden file holds no input for net input {name!r} (neither "
                f"'input/{name}' nor 'data/{name}'); dump it with its input, e.g. "
                "`python -m legacy_caffe goldens` or pycaffe's net.blobs"
            )
    return out
