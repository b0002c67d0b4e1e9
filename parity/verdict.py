"""Write the verdict of a parity run in the format ``port.verdict`` defines and MFV's gate reads."""

from __future__ import annotations

from pathlib import Path

from port.verdict import FORMAT, verdict_path
from port.verdict import write_verdict as _write

from .compare import ParityResult
from .report import summary_line

__all__ = ["FORMAT", "verdict_path", "write_verdict"]


def write_verdict(
    result: ParityResult,
    *,
    prototxt: str | Path,
    caffemodel: str | Path | None,
    seed: int | None,
    report: str | Path,
    path: str | Path | None = None,
) -> Path:
    """Write the verdict of a finished run, atomically (see :func:`port.verdict.write_verdict`)."""
    return _write(
        passed=bool(result.passed),
        prototxt=prototxt,
        caffemodel=caffemodel,
        seed=seed,
        report=report,
        summary=summary_line(result),
        path=path,
        configurations={k: bool(c["passed"]) for k, c in result.configurations.items()} or None,
    )
