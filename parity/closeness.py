"""How close the float32 port is to float64 truth, blob by blob, next to Caffe's own distance.

Parity asks whether the port departs from Caffe; this asks a stricter question a user of gradients
cares about: is the port's float32 result at least as accurate as the framework it replaces? For
every blob that the float32 subject is compared with a float64 truth (forward: the numpy float64
reference; backward: the float64 port), the same truth is compared with each Caffe build, and the
port's distance is set against the *better* build's.

The goal (issue 26), judged by :func:`closeness`:

- the port is at most the better build's distance on at least ``SHARE_GOAL`` of the blobs, and
- at most ``RATIO_LIMIT`` times it on every blob.

A blob where both distances are below float32 resolution of the blob's range (one unit in the last
place of its largest magnitude, relative to that magnitude) counts as met: below that, a float32
result cannot be more accurate, and the ratio of two rounding residues says nothing. Distances are
the pairs' ``max_rel`` after parity's gate-flip corrections, so a ReLU or MAX-pool flip within the
noise band does not count against either side.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "RATIO_LIMIT",
    "SHARE_GOAL",
    "BlobCloseness",
    "Closeness",
    "closeness",
    "report_lines",
    "render_all_html",
]

#: Share of blobs on which the port must be at least as close to float64 as the better Caffe build.
SHARE_GOAL = 0.9
#: The most the port's distance may exceed the better Caffe build's on any blob.
RATIO_LIMIT = 1.5


@dataclass(frozen=True)
class BlobCloseness:
    """One blob: the subject's and the better Caffe build's relative distance to float64."""

    key: str
    truth: str  # the float64 runner both were compared with
    port: float
    caffe: float  # the better (smaller) of the builds' distances
    caffe_build: str  # which build that was
    resolution: float  # float32 resolution of the blob's range, relative to the range

    @property
    def below_resolution(self) -> bool:
        return max(self.port, self.caffe) <= self.resolution

    @property
    def ratio(self) -> float:
        """port / better Caffe (0 where both are below resolution)."""
        if self.below_resolution:
            return 0.0
        return self.port / self.caffe if self.caffe > 0 else float("inf")

    @property
    def closer(self) -> bool:
        """At least as close to float64 as the better build (or both below resolution)."""
        return self.below_resolution or self.port <= self.caffe

    @property
    def within_limit(self) -> bool:
        return self.ratio <= RATIO_LIMIT

    def to_json(self) -> dict:
        ratio = self.ratio
        return {
            "key": self.key,
            "truth": self.truth,
            "port": self.port,
            "caffe": self.caffe,
            "caffe_build": self.caffe_build,
            "resolution": self.resolution,
            "ratio": ratio if np.isfinite(ratio) else None,
            "closer": self.closer,
            "within_limit": self.within_limit,
        }


@dataclass(frozen=True)
class Closeness:
    """Every blob's :class:`BlobCloseness` and the goal's verdict over them."""

    subject: str
    blobs: tuple[BlobCloseness, ...]
    goal: bool = True  # False: reported for information, the goal does not hold this subject

    @property
    def n_closer(self) -> int:
        return sum(b.closer for b in self.blobs)

    @property
    def share(self) -> float:
        return self.n_closer / len(self.blobs) if self.blobs else 1.0

    @property
    def worst(self) -> BlobCloseness | None:
        return max(self.blobs, key=lambda b: b.ratio, default=None)

    @property
    def met(self) -> bool:
        return self.share >= SHARE_GOAL and all(b.within_limit for b in self.blobs)

    def summary(self) -> str:
        """One line: ``closer to float64 than Caffe on N of M blobs ...``."""
        if not self.blobs:
            return f"{self.subject}: no blob compared with float64 next to a Caffe build"
        n_res = sum(b.below_resolution for b in self.blobs)
        w = self.worst
        worst = f"worst {w.key} {w.ratio:.2f}x" if w is not None and w.ratio > 0 else "worst 0x"
        if self.goal:
            goal = "goal met" if self.met else "GOAL NOT MET"
        else:
            goal = ("within" if self.met else "outside") + " the goal (informational)"
        return (
            f"{self.subject} closer to float64 than Caffe on {self.n_closer} of {len(self.blobs)} "
            f"blobs ({n_res} below float32 resolution on both sides); {worst} of the better "
            f"build (goal: >= {SHARE_GOAL:.0%} of blobs, none above {RATIO_LIMIT}x): {goal}"
        )

    def to_json(self) -> dict:
        w = self.worst
        return {
            "subject": self.subject,
            "goal": self.goal,
            "n_closer": self.n_closer,
            "n_blobs": len(self.blobs),
            "share_goal": SHARE_GOAL,
            "ratio_limit": RATIO_LIMIT,
            "met": self.met,
            "worst": None if w is None else w.key,
            "blobs": [b.to_json() for b in self.blobs],
        }


def _resolution(ref_range: float) -> float:
    if not ref_range or not np.isfinite(ref_range):
        return 0.0
    return float(np.spacing(np.float32(ref_range))) / float(ref_range)


def closeness(
    pairs: Iterable, builds: Sequence[str], *, subject: str = "port32", goal: bool = True
) -> Closeness:
    """Set the subject's distance to float64 against the better Caffe build's, blob by blob.

    Parameters
    ----------
    pairs : iterable of PairResult
        A parity run's pairs (:class:`parity.compare.PairResult`): the subject's ``truth`` pairs
        and the builds' pairs against the same float64 runners.
    builds : sequence of str
        Names of the Caffe runners (e.g. ``("caffe-atlas", "caffe-openblas")``).
    subject : str
        The float32 runner judged.
    goal : bool
        Whether the goal holds this subject (False: its line says it is for information).

    Returns
    -------
    Closeness
        One row per blob that the subject and at least one build were both compared with the
        same float64 truth on (blobs without a Caffe counterpart, e.g. without goldens, are left
        out).
    """
    pairs = list(pairs)
    by_pair = {(p.subject, p.reference): {c.key: c for c in p.checks} for p in pairs}
    rows: dict[str, BlobCloseness] = {}
    for p in pairs:
        if p.subject != subject or p.rule != "truth":
            continue
        for c in p.checks:
            if c.key in rows:
                continue
            theirs = [
                (by_pair[(b, p.reference)][c.key].metrics.max_rel, b)
                for b in builds
                if c.key in by_pair.get((b, p.reference), {})
            ]
            theirs = [(e, b) for e, b in theirs if np.isfinite(e)]
            if not theirs or not np.isfinite(c.metrics.max_rel):
                continue
            best, build = min(theirs)
            rows[c.key] = BlobCloseness(
                key=c.key,
                truth=p.reference,
                port=float(c.metrics.max_rel),
                caffe=float(best),
                caffe_build=build,
                resolution=_resolution(c.metrics.ref_range),
            )
    return Closeness(subject=subject, blobs=tuple(rows.values()), goal=goal)


def _bar(value: float, scale: float, width: int = 160) -> str:
    """An inline SVG bar: ``value`` on a log axis from 1e-9 to ``scale``."""
    lo = np.log10(1e-9)
    frac = 0.0 if value <= 0 else (np.log10(value) - lo) / (np.log10(scale) - lo)
    w = int(round(width * min(max(frac, 0.0), 1.0)))
    return (
        f"<svg width='{width}' height='8'><rect width='{w}' height='8' fill='currentColor'/></svg>"
    )


def report_lines(result: Any) -> list[str]:
    """The text report's closeness lines: one per configuration with blobs compared (the goal's
    first), then which configurations passed."""
    found = [result.closeness, *getattr(result, "closeness_info", [])]
    lines = [c.summary() for c in found if c is not None and c.blobs]
    configs = getattr(result, "configurations", {})
    if configs:
        lines.append("configurations: " + configurations_text(configs))
    return lines


def configurations_text(configs: dict[str, dict]) -> str:
    """``float32 (port32) PASS, accurate (port32-accurate) PASS``."""
    return ", ".join(
        f"{name} ({c['subject']}) {'PASS' if c['passed'] else 'FAIL'}"
        for name, c in configs.items()
    )


def render_all_html(result: Any) -> list[str]:
    """The HTML sections of every configuration's closeness (the goal's first)."""
    found = [result.closeness, *getattr(result, "closeness_info", [])]
    return [line for c in found if c is not None for line in render_html(c)]


def render_html(result: Closeness) -> list[str]:
    """The HTML section: summary, then per blob both distances (log bars), the ratio, the verdict."""
    import html

    esc = html.escape
    cls = "ok" if result.met else ("bad" if result.goal else "")
    title = "As close to float64 as Caffe?" + ("" if result.goal else " (informational)")
    out = [
        f"<h2>{esc(result.subject)}: {esc(title)}</h2>",
        f"<p class='{cls}'>{esc(result.summary())}</p>",
        "<table><tr><th>blob</th><th>truth</th><th>port vs float64</th><th></th>"
        "<th>better Caffe vs float64</th><th></th><th>port / Caffe</th></tr>",
    ]
    scale = max([1e-8] + [max(b.port, b.caffe) for b in result.blobs])
    for b in result.blobs:
        good = "ok" if b.closer else ("bad" if not b.within_limit else "")
        ratio = "below resolution" if b.below_resolution else f"{b.ratio:.2f}x"
        out.append(
            f"<tr><td>{esc(b.key)}</td><td>{esc(b.truth)}</td><td>{b.port:.1e}</td>"
            f"<td>{_bar(b.port, scale)}</td><td>{b.caffe:.1e} ({esc(b.caffe_build)})</td>"
            f"<td>{_bar(b.caffe, scale)}</td><td class='{good}'>{ratio}</td></tr>"
        )
    out.append("</table>")
    return out
