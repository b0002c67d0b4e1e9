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

from .runners import CAFFE_BUILDS, NUMPY32, NUMPY64, ONNX, PORT32, PORT32_ACCURATE, PORT64

__all__ = ["RULES", "Comparison", "Configuration", "Noise", "Plan", "default_plan"]

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
class Configuration:
    """One way of running the port that a verdict vouches for, and the runner that stands for it.

    Attributes
    ----------
    name : str
        As the verdict file records it and a caller asks for it (``port.verdict.CONFIGURATIONS``:
        ``"float32"`` the fast port, ``"accurate"`` float64 accumulation).
    subject : str
        The runner judged for it; its judged pairs decide whether the configuration passed.
    closeness_goal : bool
        Whether "closer to float64 than Caffe" (:mod:`parity.closeness`) also gates it; otherwise
        its closeness is reported for information.
    """

    name: str
    subject: str
    closeness_goal: bool = False


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
    configurations : tuple of Configuration
        What the verdict records, one entry per judged subject (empty: none is recorded).
    """

    comparisons: tuple[Comparison, ...]
    noise: Noise
    prefer: tuple[str, ...] = ()
    configurations: tuple[Configuration, ...] = ()

    def runners(self) -> set[str]:
        """Every runner the plan names."""
        n = self.noise
        named = {n.over, *n.builds, n.data_truth, n.diff_truth}
        named |= {r for c in self.comparisons for r in (c.subject, c.reference)}
        named |= {c.subject for c in self.configurations}
        return named - {""}


def _subject_comparisons(subject: str, present: set[str], prefix: str = "") -> list[Comparison]:
    """One subject's pairs: the builds and numpy32/ONNX by the spread rule, the float64 runners by
    the truth rule; columns named ``<prefix><reference>`` (``truth`` for both truths)."""
    builds = [b for b in CAFFE_BUILDS if b in present]
    comps = [Comparison(subject, b, "spread", column=prefix + b, legend=f"{subject} vs {b}")
             for b in builds]  # fmt: skip
    comps += [
        Comparison(
            subject, r, "spread", blobs="data", column=prefix + r, legend=f"{subject} vs {r}"
        )
        for r in (NUMPY32, ONNX)
        if r in present
    ]
    if NUMPY64 in present:
        comps.append(
            Comparison(
                subject,
                NUMPY64,
                "truth",
                blobs="data",
                keys_from="subject",
                column=prefix + "truth",
                legend=f"{subject} vs truth",
            )  # fmt: skip
        )
    comps.append(
        Comparison(
            subject,
            PORT64,
            "truth",
            blobs="diff" if NUMPY64 in present else "all",
            keys_from="subject",
            column=prefix + "truth",
            legend=f"{subject} vs truth",
        )  # fmt: skip
    )
    return comps


#: Column prefix of the accurate port's pairs in reports (its columns beside the fast port's).
ACCURATE_PREFIX = "acc:"


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
        For the subject: against each Caffe build by the spread rule (data and diffs), against
        numpy32 and ONNX by the same rule (data), against numpy64 by the truth rule (data), and
        against port64 by the truth rule (diffs; data too without numpy64); port64 against numpy64
        in float64. When the accurate port (``port32-accurate``) ran, the same pairs for it against
        the builds and the truths, in columns prefixed ``acc:``; it is the ``accurate``
        configuration, the one the closeness goal holds, and the subject the ``float32`` one.
    """
    present = set(present)
    builds = tuple(b for b in CAFFE_BUILDS if b in present)
    comps = _subject_comparisons(subject, present)
    if NUMPY64 in present:
        comps.insert(
            len(comps) - 1,
            Comparison(
                PORT64,
                NUMPY64,
                "float64",
                blobs="data",
                keys_from="subject",
                column="f64-vs-numpy64",
                legend=f"{PORT64} vs {NUMPY64}",
            ),  # fmt: skip
        )
    configs = [Configuration("float32", subject)]
    if PORT32_ACCURATE in present:
        accurate = {PORT32_ACCURATE, *builds, NUMPY64, PORT64} & present
        comps += _subject_comparisons(PORT32_ACCURATE, accurate, ACCURATE_PREFIX)
        configs.append(Configuration("accurate", PORT32_ACCURATE, closeness_goal=True))
    noise = Noise(
        over=subject,
        builds=builds,
        data_truth=NUMPY64 if NUMPY64 in present else PORT64,
        diff_truth=PORT64,
        independent=NUMPY64 in present,
    )
    prefer = (*CAFFE_BUILDS, NUMPY64, PORT64, NUMPY32, ONNX)
    return Plan(tuple(comps), noise, prefer, tuple(configs))
