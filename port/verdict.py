"""Parity verdicts: the record, kept beside the weights, that a converted model was proven faithful.

``parity`` writes one after every run; ``mfv`` reads it and refuses a Caffe model whose verdict is
missing, failed or stale. The file sits beside the weights that were checked
(``<caffemodel>.parity.json``), or for seeded weights (no caffemodel) at
``cache/parity/<prototxt stem>.seed<N>.parity.json`` under the repository root::

    {
        "format": "caffe-mfv-parity-verdict/2",
        "verdict": "pass",  # or "fail": the float32 (fast) configuration's, as format /1 had it
        "configurations": {"float32": "pass", "accurate": "pass"},  # each judged one's verdict
        "report": "../../parity/caffenet.json",  # the parity report (relative to this file, or absolute)
        "prototxt_sha256": "<hex>",  # sha256 of the definition file's bytes
        "caffemodel_sha256": "<hex>" | null,  # null for seeded weights
        "seed": null | 1,  # the seed_weights seed; required for seeded weights
        "created": "2026-11-25T18:00:00Z",
        "summary": "...",  # one line
    }

A verdict only counts for the exact files it was computed on: the checksums must match, and only
for the configuration the caller will run (:data:`CONFIGURATIONS`: ``float32``, the fast port MFV's
default mode runs; ``accurate``, float64 accumulation, ``port.CaffeNet(accumulate="float64")``).
Format /1 files (no ``configurations``) vouch for ``float32`` alone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .artefact import sha256_file
from .atomic import write_text_atomic
from .errors import ToolError
from .paths import cache_root

__all__ = [
    "CONFIGURATIONS",
    "FORMAT",
    "ParityError",
    "check_parity",
    "verdict_path",
    "write_verdict",
]

FORMAT = "caffe-mfv-parity-verdict/2"
_FORMATS = ("caffe-mfv-parity-verdict/1", FORMAT)  # readable; /1 vouches for float32 alone

#: The port configurations a verdict records, by the name a caller asks for: ``float32`` (fast,
#: float32 arithmetic) and ``accurate`` (float32 blobs, float64 arithmetic).
CONFIGURATIONS = ("float32", "accurate")


class ParityError(ToolError, RuntimeError):
    """The model has no passing parity verdict for these exact files: the gate refuses it.

    A :class:`~port.errors.ToolError` (the user must run parity or pass ``--no-parity-check``); still a
    RuntimeError for callers that caught it as one. Not a failure to set a parity run up
    (``parity.ParitySetupError``).
    """


def verdict_path(
    prototxt: str | Path, caffemodel: str | Path | None, *, seed: int | None = None
) -> Path:
    """Where the verdict for these weights lives (see the module docstring)."""
    if caffemodel is not None:
        return Path(str(caffemodel) + ".parity.json")
    return cache_root() / "parity" / f"{Path(prototxt).stem}.seed{int(seed or 0)}.parity.json"


def write_verdict(
    *,
    passed: bool,
    prototxt: str | Path,
    caffemodel: str | Path | None,
    seed: int | None,
    report: str | Path,
    summary: str,
    path: str | Path | None = None,
    configurations: dict[str, bool] | None = None,
) -> Path:
    """Write a verdict atomically and return its path.

    Parameters
    ----------
    passed : bool
        Whether every blob passed (the ``verdict`` field holds ``float32``'s where
        ``configurations`` has it, so that a reader of format /1 reads the fast port's).
    prototxt, caffemodel : path
        The files that were checked (``caffemodel=None`` for seeded weights).
    seed : int or None
        The ``port.seed_weights`` seed of seeded weights.
    report : path
        The run's JSON report; stored relative to the verdict file when possible.
    summary : str
        One line for humans.
    path : path, optional
        Where to write (default: :func:`verdict_path`).
    configurations : dict of str to bool, optional
        Each judged configuration (:data:`CONFIGURATIONS`) and whether it passed; default
        ``{"float32": passed}``.
    """
    configurations = dict(configurations or {"float32": passed})
    out = Path(path) if path is not None else verdict_path(prototxt, caffemodel, seed=seed)
    report = Path(report).resolve()
    try:
        rel = os.path.relpath(report, out.parent.resolve())
    except ValueError:  # another drive
        rel = str(report)
    doc = {
        "format": FORMAT,
        "verdict": "pass" if configurations.get("float32", passed) else "fail",
        "configurations": {k: "pass" if v else "fail" for k, v in configurations.items()},
        "report": rel,
        "prototxt_sha256": sha256_file(prototxt),
        "caffemodel_sha256": None if caffemodel is None else sha256_file(caffemodel),
        "seed": None if caffemodel is not None else seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary,
    }
    write_text_atomic(out, json.dumps(doc, indent=1) + "\n")
    return out


def check_parity(
    prototxt: str | Path,
    caffemodel: str | Path | None,
    *,
    seed: int | None = None,
    verdict_file: str | Path | None = None,
    required: bool = True,
    configuration: str = "float32",
) -> dict:
    """Read and validate the parity verdict for a converted Caffe model.

    Parameters
    ----------
    prototxt, caffemodel : path
        The definition and weights (``caffemodel=None`` for seeded weights).
    seed : int, optional
        The weight seed, for seeded weights.
    verdict_file : path, optional
        Use this verdict file instead of the default location.
    required : bool
        False for ``--no-parity-check``: problems are recorded, not raised.
    configuration : str
        The configuration the caller will run (:data:`CONFIGURATIONS`); the verdict must say it
        passed.

    Returns
    -------
    dict
        ``{"checked": bool, "status": "pass"|"fail"|"missing"|"stale"|"invalid"|"skipped",
        "configuration", "verdict_file", "report", "message"}``: what every MFV output records.

    Raises
    ------
    ParityError
        When ``required`` and the status is anything but "pass".
    """
    path = (
        Path(verdict_file)
        if verdict_file is not None
        else verdict_path(prototxt, caffemodel, seed=seed)
    )
    if configuration not in CONFIGURATIONS:
        raise ValueError(f"configuration must be one of {', '.join(CONFIGURATIONS)}")
    info: dict = {
        "checked": required,
        "configuration": configuration,
        "verdict_file": str(path),
        "report": None,
    }
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        info.update(
            status="missing", message=f"no parity verdict at {path}: run parity on this model first"
        )
    except (OSError, ValueError) as e:
        info.update(status="invalid", message=f"unreadable parity verdict {path}: {e}")
    else:
        info.update(_validate(data, path, prototxt, caffemodel, seed, configuration))
    if not required:
        info["message"] = "parity check skipped (--no-parity-check); verdict: " + info["message"]
        info["status_if_checked"] = info["status"]
        info["status"] = "skipped"
    elif info["status"] != "pass":
        raise ParityError(
            info["message"] + " (pass --no-parity-check to run anyway; outputs will say so)"
        )
    return info


def _configuration_verdict(data: dict, configuration: str) -> str | None:
    """ "pass", "fail" or None (not judged) for one configuration; a format /1 file judged only
    float32, in its ``verdict``."""
    configs = data.get("configurations")
    if not isinstance(configs, dict):
        return data["verdict"] if configuration == "float32" else None
    return configs.get(configuration)


def _validate(  # long: one early return per way a verdict fails to vouch, in the order checked
    data: dict, path: Path, prototxt, caffemodel, seed, configuration: str = "float32"
) -> dict:
    if not isinstance(data, dict) or data.get("verdict") not in ("pass", "fail"):
        return {"status": "invalid", "message": f"{path}: 'verdict' must be 'pass' or 'fail'"}
    if data.get("format", FORMAT) not in _FORMATS:
        return {"status": "invalid", "message": f"{path}: unknown format {data.get('format')!r}"}
    report = data.get("report")
    if report is not None and not Path(report).is_absolute():
        report = str((path.parent / report).resolve())
    out = {"report": report}
    if data.get("prototxt_sha256") != sha256_file(prototxt):
        return {
            **out,
            "status": "stale",
            "message": f"{path}: verdict was for another prototxt (sha256 differs)",
        }
    want_w = None if caffemodel is None else sha256_file(caffemodel)
    if data.get("caffemodel_sha256") != want_w:
        return {
            **out,
            "status": "stale",
            "message": f"{path}: verdict was for other weights (sha256 differs)",
        }
    if caffemodel is None and data.get("seed") != seed:
        # Seeded weights are named by their seed alone: a verdict without one cannot vouch for them.
        return {
            **out,
            "status": "stale",
            "message": f"{path}: verdict was for weight seed {data.get('seed')}, not {seed}",
        }
    verdict = _configuration_verdict(data, configuration)
    if verdict not in ("pass", "fail"):
        return {
            **out,
            "status": "missing",
            "message": f"{path}: no parity verdict for the {configuration} configuration: run "
            "parity on this model again (it judges every configuration)",
        }
    if verdict == "fail":
        return {
            **out,
            "status": "fail",
            "message": f"parity FAILED for this model's {configuration} configuration "
            f"(report: {report})",
        }
    return {
        **out,
        "status": "pass",
        "message": f"parity passed for the {configuration} configuration (report: {report})",
    }
