"""What a run judges, as data: which runner is compared with which, by which rule, on which blobs.

:func:`parity.core.judge` knows no runner by name; it measures the noise and compares the pairs a
:class:`Plan` lists (after Polygraphy, whose comparisons are passed in rather than built in).
:func:`default_plan` is the one place the pairs of ``parity run`` are decided
(``parity/SCHEMA.md``, "Which pairs a run holds"); a new runner (an exported artefact, another
framework) needs a plan, not an edit of the judge, the diagnosis or the report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .runners import CAFFE_BUILDS, NUMPY32, NUMPY64, ONNX, PORT32, PORT64

__all__ = ["RULES", "Comparison", "Noise", "Plan", "default_plan"]

#: The tolerance rules a comparison may name (``parity/tolerance.py``).
RULES = ("spread", "truth", "float64")


@dataclass(frozen=True)
class Comparison:
    """One judged pair of runners.

    Attributes
    ----------
    subject, reference : str
        Runner names, as the outputs passed to ``judge`` are keyed.
    rule : str
        The tolerance rule: ``"spread"`` (within a multiple of the float32 builds' spread),
        ``"truth"`` (within a multiple of Caffe's own error against float64) or ``"float64"``
        (float64 against float64).
    gates : bool
        Whether the pair decides the verdict; a pair that does not is measured under rule
        ``"info"`` and never fails.
    blobs : str
        ``"all"``, ``"data"`` (forward blobs only) or ``"diff"`` (diffs only).
    keys_from : str
        ``"both"``: every key either side has (one side lacking it fails); ``"subject"``: the
        subject's keys only.
    column : str
        The report's column for the pair ("" names it after the reference); pairs sharing a column
        fill it in plan order.
    legend : str
        The chart's legend for the column ("" gives ``"<subject> vs <column>"``).
    """

    subject: str
    reference: str
    rule: str
    gates: bool = True
    blobs: str = "all"
    keys_from: str = "both"
    column: str = ""
    legend: str = ""

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}; one of {', '.join(RULES)}")
        if self.blobs not in ("all", "data", "diff"):
            raise ValueError(f"blobs must be 'all', 'data' or 'diff', not {self.blobs!r}")
        if self.keys_from not in ("both", "subject"):
            raise ValueError(f"keys_from must be 'both' or 'subject', not {self.keys_from!r}")


@dataclass(frozen=True)
class Noise:
    """Which runners measure the noise of the run's own input.

    Attributes
    ----------
    over : str
        The runner whose blobs the noise is measured for (the judged subject).
    builds : tuple of str
        Independent float32 builds of the reference; the first two give the spread.
    data_truth, diff_truth : str
        The float64 runners the builds' own error is measured against, for forward blobs and
        diffs.
    independent : bool
        Whether ``data_truth`` is independent of the subject; only then may the builds' own error
        widen the spread rule (against a truth the subject shares, a wrong subject would make the
        builds look noisy and widen its own tolerance).
    """

    over: str
    builds: tuple[str, ...] = ()
    data_truth: str = ""
    diff_truth: str = ""
    independent: bool = False


@dataclass(frozen=True)
class Plan:
    """Everything ``judge`` needs to know about the runners.

    Attributes
    ----------
    comparisons : tuple of Comparison
        The judged pairs, in the order the result lists them.
    noise : Noise
    prefer : tuple of str
        References in the order a diagnosis prefers to speak of when several fail at one blob.
    """

    comparisons: tuple[Comparison, ...]
    noise: Noise
    prefer: tuple[str, ...] = ()

    def runners(self) -> set[str]:
        """Every runner the plan names."""
        n = self.noise
        named = {n.over, *n.builds, n.data_truth, n.diff_truth}
        named |= {r for c in self.comparisons for r in (c.subject, c.reference)}
        return named - {""}


def default_plan(present: Iterable[str], *, subject: str = PORT32) -> Plan:
    """The pairs ``parity run`` judges, for the runners that produced an output.

    Parameters
    ----------
    present : iterable of str
        Names of the runners that ran (``port64`` must be among them: it is the diffs' truth).
    subject : str
        The float32 runner judged (the port, or an exported artefact in its place).

    Returns
    -------
    Plan
        Against each Caffe build by the spread rule (data and diffs), against numpy32 and ONNX by
        the same rule (data), against numpy64 by the truth rule (data), port64 against numpy64 in
        float64, and against port64 by the truth rule (diffs; data too without numpy64).
    """
    present = set(present)
    builds = tuple(b for b in CAFFE_BUILDS if b in present)
    comps = [Comparison(subject, b, "spread") for b in builds]
    comps += [
        Comparison(subject, r, "spread", blobs="data") for r in (NUMPY32, ONNX) if r in present
    ]
    if NUMPY64 in present:
        comps += [
            Comparison(
                subject, NUMPY64, "truth", blobs="data", keys_from="subject", column="truth"
            ),
            Comparison(
                PORT64,
                NUMPY64,
                "float64",
                blobs="data",
                keys_from="subject",
                column="f64-vs-numpy64",
                legend=f"{PORT64} vs {NUMPY64}",
            ),  # fmt: skip
        ]
    comps.append(
        Comparison(
            subject,
            PORT64,
            "truth",
            blobs="diff" if NUMPY64 in present else "all",
            keys_from="subject",
            column="truth",
        )  # fmt: skip
    )
    noise = Noise(
        over=subject,
        builds=builds,
        data_truth=NUMPY64 if NUMPY64 in present else PORT64,
        diff_truth=PORT64,
        independent=NUMPY64 in present,
    )
    prefer = (*CAFFE_BUILDS, NUMPY64, PORT64, NUMPY32, ONNX)
    return Plan(tuple(comps), noise, prefer)
