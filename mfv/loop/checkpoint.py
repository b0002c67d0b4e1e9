"""The loop's state on disk: one checkpoint per output folder, the one before it, and a checksum.

Every facet of a job (image, random stream, trace) goes into ``state/checkpoint.npz``, written
atomically; the previous one is kept as ``state/checkpoint.prev.npz``, so that the jobs of a batch,
saved one after the other, always share a point to resume from. Each file carries a SHA-256 of its
metadata and arrays: a state changed after it was saved (in both files alike, say) is refused with
an error that offers ``--restart``, never resumed into other bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from port.atomic import atomic_path

from ..errors import MfvError
from .facet import FacetState, JobRun

#: Default seconds of work between two checkpoints: a kill loses at most about this much.
CHECKPOINT_SECONDS = 5.0

_CKPT, _PREV = "checkpoint.npz", "checkpoint.prev.npz"

# /2 carries a checksum; a /1 state (no checksum) is refused like any other unreadable one.
_FORMAT = "mfv-checkpoint/2"

_START = (0, 0)  # (octaves done, steps done in the next octave): no checkpoint is ever saved there


def _npz_bytes(**arrays) -> bytes:
    b = io.BytesIO()
    np.savez(b, **arrays)
    return b.getvalue()


def checkpoint_bytes(states: list[FacetState], position: tuple[int, int], key: str) -> bytes:
    """Every facet of one job in one file: images, random streams and traces, at ``position``."""
    arrays: dict[str, np.ndarray] = {}
    facets = []
    for s in states:
        _, keys, pos, has_gauss, cached = s.rng.get_state()
        arrays[f"image_{s.index}"] = np.ascontiguousarray(s.image, dtype=np.float32)
        arrays[f"rng_keys_{s.index}"] = np.asarray(keys, dtype=np.uint32)
        arrays[f"rng_{s.index}"] = np.array([pos, has_gauss, cached], dtype=np.float64)
        facets.append(
            {
                "index": s.index,
                "steps": s.steps,
                "status": s.status,
                "message": s.message,
                "seconds": s.seconds,
                "octave_seconds": s.octave_seconds,
                "octaves_done": s.octaves_done,
                "steps_done": s.steps_done,
                "fail_octave": s.fail_octave,
            }
        )
    meta = {
        "format": _FORMAT,
        "run_key": key,
        "position": list(position),
        "facets": facets,
    }
    meta["sha256"] = _checksum(meta, arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    return _npz_bytes(**arrays)


def save_checkpoint(
    out: Path, states: list[FacetState], position: tuple[int, int], key: str
) -> None:
    """Write the job's checkpoint atomically, keeping the one before it.

    The jobs of a batch are saved one after the other; a kill between two of them leaves some jobs
    one checkpoint ahead, and the previous one is what lets every job resume from the same point.
    """
    data = checkpoint_bytes(states, position, key)
    cur, prev = out / "state" / _CKPT, out / "state" / _PREV
    with atomic_path(cur) as tmp:
        tmp.write_bytes(data)
        if cur.exists():
            os.replace(cur, prev)


class ChecksumError(MfvError):
    """A checkpoint whose contents do not match the checksum it was saved with."""


def _checksum(meta: dict, arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the metadata (without its own checksum) and of every array's name, type and bytes."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A checkpoint's metadata and arrays, after its checksum was verified (:class:`ChecksumError`)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    if meta.get("format") != _FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, this mfv reads {_FORMAT!r}")
    if meta.get("sha256") != _checksum(meta, arrays):
        # Both files of a job can be altered alike; only the checksum tells such a state from
        # the one this run saved, and resuming from it would give other bytes in silence.
        raise ChecksumError(
            f"{path}: checksum mismatch (the checkpoint was changed after it was saved); "
            "rerun with --restart to start over"
        )
    return meta, arrays


def apply_checkpoint(states: list[FacetState], meta: dict, arrays: dict[str, np.ndarray]) -> None:
    records = {f["index"]: f for f in meta["facets"]}
    if sorted(records) != sorted(s.index for s in states):
        raise ValueError(f"facets {sorted(records)}, the run has {sorted(s.index for s in states)}")
    for s in states:
        f = records[s.index]
        s.image = arrays[f"image_{s.index}"].astype(np.float32)
        pos, has_gauss, cached = arrays[f"rng_{s.index}"]
        s.rng.set_state(
            (
                "MT19937",
                arrays[f"rng_keys_{s.index}"].astype(np.uint32),
                int(pos),
                int(has_gauss),
                float(cached),
            )
        )
        s.steps, s.status, s.message, s.seconds = (
            f["steps"],
            f["status"],
            f["message"],
            f["seconds"],
        )
        s.octave_seconds = list(f.get("octave_seconds", []))
        s.octaves_done, s.steps_done, s.fail_octave = (
            f["octaves_done"],
            f["steps_done"],
            f["fail_octave"],
        )


def resume_runs(runs: list[JobRun]) -> None:
    """Put every job of the batch back at the latest point that all of their checkpoints share.

    A damaged state is never taken for a fresh start in silence: when the only point left in common
    is the start and some checkpoint could not be read, this raises :class:`MfvError`.
    """
    found: list[dict[tuple[int, int], tuple[dict, dict, Path] | None]] = []
    problems: list[str] = []
    any_state = False
    for r in runs:
        # The start is always a point to resume from: when the batch's first save was cut short,
        # some jobs hold a checkpoint and others none, and the start is what they share.
        options: dict[tuple[int, int], tuple[dict, dict, Path] | None] = {_START: None}
        folder = r.out / "state"
        legacy = sorted(folder.glob("facet_*.npz"))
        for path in (folder / _CKPT, folder / _PREV):
            if not path.exists():
                continue
            any_state = True
            try:
                meta, arrays = read_checkpoint(path)
                if meta["run_key"] != r.meta["run_key"]:
                    raise ValueError("it belongs to another run")
                options[tuple(meta["position"])] = (meta, arrays, path)
            except ChecksumError:
                raise
            except Exception as e:  # a damaged file: reported below if nothing else will do
                problems.append(f"{path}: {type(e).__name__}: {e}")
        if legacy and not options:
            any_state = True
            problems.append(f"{folder}: per-facet state of an older mfv version")
        found.append(options)
    if not any_state:
        return
    position = max(set.intersection(*(set(f) for f in found)))
    if position == _START and (problems or all(len(f) > 1 for f in found)):
        # Never a silent start from step 0 over a damaged state.
        raise MfvError(
            "the saved state gives no point that every facet can resume from ("
            + ("; ".join(problems) or "checkpoints of different steps")
            + "); rerun with --restart to start over"
        )
    for r, options in zip(runs, found, strict=True):
        if options[position] is None:
            continue  # the start: the states as prepared
        meta, arrays, path = options[position]
        try:
            apply_checkpoint(r.states, meta, arrays)
        except (KeyError, ValueError) as e:
            raise MfvError(
                f"{r.out / 'state'}: damaged checkpoint ({e}); rerun with --restart"
            ) from None
        if path.name == _PREV:
            # This job was one save ahead of the others: drop that save, so that the next one
            # keeps this point as the previous checkpoint, which the other jobs may still need.
            os.replace(path, r.out / "state" / _CKPT)


class Saver:
    """When to checkpoint (every ``seconds`` of work, or every ``steps`` steps) and how."""

    def __init__(self, runs: list[JobRun], seconds: float, steps: int | None) -> None:
        self.runs, self.seconds, self.steps = runs, seconds, steps
        self.last = time.perf_counter()
        self.count = 0

    def due(self) -> bool:
        self.count += 1
        if self.steps is not None:
            return self.count >= self.steps
        return time.perf_counter() - self.last >= self.seconds

    def save(self, position: tuple[int, int]) -> None:
        for r in self.runs:
            if r.out is not None:
                save_checkpoint(r.out, r.states, position, r.meta["run_key"])
        self.last = time.perf_counter()
        self.count = 0


def save_position(group: list[FacetState], saver: Saver, k: int, i: int) -> None:
    """Save the batch at step ``i`` of octave ``k`` (the running facets' position first)."""
    for s in group:
        if s.status == "running":
            s.octaves_done, s.steps_done = k, i
    saver.save((k, i))
