"""Gate flips between pairs of runners: which flipped, what they reach, and their exact effect."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from port.blobkeys import is_data

from . import gates
from .routing import flip_reach, teacher_forced_backward
from .runners import RunnerOutput

__all__ = ["FlipAnalysis"]


class FlipAnalysis:
    """Gate flips between pairs of runners, their reach and (with a float64 net) their exact effect.

    Flips are found from both sides' own forward data (:func:`parity.gates.find_gate_flips`); only
    those within the noise band of their kink are handled. With ``net64`` the diffs of each side
    are recomputed in float64 on that side's own forward data
    (:func:`parity.routing.teacher_forced_backward`); within the in-band flips' reach the subject's
    diff is corrected by the difference of the two recomputations, so the flipped gradient is
    subtracted exactly and every element is still compared. Without ``net64`` the reach is excused.
    Flips outside the band are reported and left alone: the diffs they touch are compared as they
    are (and fail).
    """

    def __init__(
        self,
        netdef: Any,
        outputs: Mapping[str, RunnerOutput],
        band: gates.Band,
        net64: Any = None,
        backward_from: str | None = None,
    ) -> None:
        self.netdef = netdef
        self.outputs = outputs
        self.band = band
        self.net64 = net64
        self.backward_from = backward_from
        self._recomputed: dict[str, dict[str, np.ndarray] | None] = {}
        self.failures: dict[str, str] = {}
        self._pairs: dict[tuple[str, str], tuple[list[gates.GateFlip], dict[str, np.ndarray]]] = {}
        self._reaches: dict[tuple[str, str], list[dict[str, np.ndarray]]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for o in outputs.values():
            for k, v in o.blobs.items():
                if is_data(k):
                    self.shapes.setdefault(k[5:], v.shape)

    @staticmethod
    def _key(a: str, b: str) -> tuple[str, str]:
        return (a, b) if a <= b else (b, a)

    def get(self, a: str, b: str) -> tuple[list[gates.GateFlip], dict[str, np.ndarray]]:
        """The flips between two runners (in and out of band) and the reach of those in band."""
        key = self._key(a, b)
        if key not in self._pairs:
            fl = gates.find_gate_flips(
                self.netdef, self.outputs[key[0]].blobs, self.outputs[key[1]].blobs, self.band
            )
            # One walk per layer's record (the report shows each record's reach); the region to
            # correct is the union over those in band, as reach distributes over a union of seeds.
            reaches = [flip_reach(self.netdef, [f], self.shapes) for f in fl]
            region: dict[str, np.ndarray] = {}
            for f, reach in zip(fl, reaches, strict=True):
                if f.in_band:
                    for blob, mask in reach.items():
                        region[blob] = region[blob] | mask if blob in region else mask.copy()
            self._reaches[key] = reaches
            self._pairs[key] = (fl, region)
        return self._pairs[key]

    def correction(self, subject: str, reference: str, blob: str) -> np.ndarray | None:
        """What the in-band flips between the two sides moved ``diff/<blob>`` by (None: unknown)."""
        _, region = self.get(subject, reference)
        if blob not in region or not self.corrects:
            return None
        ts, tr = self.recomputed(subject), self.recomputed(reference)
        if ts is None or tr is None or blob not in ts or blob not in tr:
            return None
        return np.where(region[blob], ts[blob] - tr[blob], 0.0)

    def handling(self, a: str, b: str) -> str:
        """ "corrected" when both sides' float64 recomputations exist, else "excused"."""
        ok = self.corrects and self._recomputed.get(a) is not None
        return "corrected" if ok and self._recomputed.get(b) is not None else "excused"

    @property
    def corrects(self) -> bool:
        return self.net64 is not None and self.backward_from is not None

    def recomputed(self, name: str) -> dict[str, np.ndarray] | None:
        """The side's float64 backward on its own data; None if the port's layers cannot take its
        blobs (a broken port: the flip is then excused, and the port fails elsewhere anyway)."""
        if name not in self._recomputed:
            try:
                self._recomputed[name] = teacher_forced_backward(
                    self.netdef, self.net64, self.outputs[name].blobs, self.backward_from
                )
            except (RuntimeError, ValueError) as exc:
                self._recomputed[name] = None
                self.failures[name] = str(exc).splitlines()[0][:200]
        return self._recomputed[name]

    def summary(self) -> dict[str, list[dict]]:
        """Every pair with flips: ``"a|b" -> [GateFlip.summary() + handling + reach]``."""
        out: dict[str, list[dict]] = {}
        for (a, b), (fl, _) in sorted(self._pairs.items(), key=lambda kv: kv[0]):
            if not fl:
                continue
            handled = self.handling(a, b)
            out[f"{a}|{b}"] = [
                {
                    **f.summary(),
                    "handling": handled if f.in_band else "not corrected",
                    "reach": {k: int(v.sum()) for k, v in reach.items()},
                }
                for f, reach in zip(fl, self._reaches[(a, b)], strict=True)
            ]
        return out
