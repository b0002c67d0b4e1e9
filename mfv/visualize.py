"""Activation maximisation from mean images: the MFV loop (Nguyen et al. 2016).

Each step (``../shared/spec/original-mfv.md``): crop (jittered once the image outgrows the input),
forward, gradient of the target, margin mask, step normalised by mean |g|, clip to 0..255, TV-Bregman
denoise, write the crop back. Octaves zoom the image (``scipy.ndimage.zoom``, cubic) at their start.
All of it happens in pixel space (RGB grey levels, :mod:`mfv.pixels`).

Two modes. ``faithful=True`` reproduces the original's arithmetic: Python 2 division in the
schedule, the TV weight formula as written, the legacy NumPy random stream of each facet's own run
(seeded, with the N(175, 8) noise image drawn before the mean image is loaded), float64 denoising,
``uint8()`` wraparound on save. The default mode corrects what is plainly a bug (:data:`FIXES`) and
records which in every output.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.restoration import denoise_tv_bregman
from tqdm.auto import tqdm

from port.atomic import atomic_path, remove_stale_temporaries

from . import _io
from .errors import MfvError
from .models import Model
from .objectives import Objective, check_objective, softmax_unit, unit
from .octaves import FIXES, Octave, Schedule, step_size, tv_weight

__all__ = [
    "visualize",
    "visualize_units",
    "UnitJob",
    "FacetState",
    "denoise",
    "crop_offset",
    "zoom_image",
    "noise_image",
]

#: The faithful denoiser call: scikit-image 0.13's defaults (max_iter=100, eps=1e-3, isotropic) on
#: the whole HxWx3 image at once, one joint stopping test (channel_axis=None; see the spec).
TV_MAX_ITER = 100
TV_EPS = 1e-3


@dataclass
class FacetState:
    """One facet's progress: image, random stream and trace; enough to resume at any step."""

    index: int
    init: str
    image: np.ndarray  # (3, H, W) float32, pixel space
    rng: np.random.RandomState
    octaves_done: int = 0
    steps: list = field(default_factory=list)
    status: str = "running"  # running | done | failed
    message: str = ""
    seconds: float = 0.0
    cluster: int | None = None
    job: int = 0  # which UnitJob of a batched run
    steps_done: int = 0  # steps taken in octave ``octaves_done`` (0: not started, not yet zoomed)
    fail_octave: int | None = (
        None  # the octave it failed in (it stays frozen in that octave's batch)
    )


def noise_image(rng: np.random.RandomState, size: tuple[int, int]) -> np.ndarray:
    """The original's first draw: an HxWx3 N(175, 8) image (float64), whatever the init."""
    return rng.normal(175, 8, (size[0], size[1], 3))


def crop_offset(rng: np.random.RandomState, span: int, window: float) -> int:
    """One jitter offset in [0, span]: N(span / 2, span * window), clipped, truncated to int.

    Draws with ``size=1`` and takes the element (the NumPy 2 porting trap in the spec), one
    Gaussian per call as the original consumed them.
    """
    v = rng.normal(span / 2.0, span * window, 1)[0]
    return int(np.clip(v, 0, span))


def denoise(image_hwc: np.ndarray, weight: float) -> np.ndarray:
    """TV-Bregman as the original called it (float64 in, float64 out, HxWx3, grey levels)."""
    return denoise_tv_bregman(
        np.asarray(image_hwc, dtype=np.float64),
        weight=weight,
        max_num_iter=TV_MAX_ITER,
        eps=TV_EPS,
        isotropic=True,
        channel_axis=None,
    )


def zoom_image(image: np.ndarray, factor: float, mean_pixels: np.ndarray) -> np.ndarray:
    """Zoom a (3, H, W) pixel-space image the way the original did: on the mean-subtracted
    network input (so the spline's constant border is the mean colour), cubic, scipy defaults."""
    mean = mean_pixels.astype(image.dtype)[:, None, None]
    return ndimage.zoom(image - mean, (1, factor, factor)) + mean


def _objective_for(objective: Objective, octave: Octave) -> Objective:
    """An octave may retarget a unit objective to another layer (the centre-bias schedule's prob)."""
    if octave.layer is None or octave.layer == objective.layers[0]:
        return objective
    kind = objective.spec.get("kind")
    if kind == "unit":
        return unit(octave.layer, objective.spec["unit"])
    if kind == "softmax_unit":
        return softmax_unit(octave.layer, objective.spec["unit"])
    raise MfvError(f"schedule retargets to {octave.layer!r}, which needs a unit objective")


def _save_u8(state: FacetState, faithful: bool) -> np.ndarray:
    return _io.to_uint8(np.transpose(state.image, (1, 2, 0)), wrap=faithful)


def _run_key(
    model: Model,
    objective: Objective,
    schedule: Schedule,
    seed: int,
    faithful: bool,
    inits: list[str],
    denoiser: str,
) -> str:
    blob = json.dumps(
        [
            model.name,
            model.info.get("weight_seed"),
            model.info.get("caffemodel"),
            model.info.get("weights"),
            objective.spec,
            schedule.as_dict()["octaves"],
            seed,
            faithful,
            inits,
            denoiser,
        ],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: Default seconds of work between two checkpoints: a kill loses at most about this much.
CHECKPOINT_SECONDS = 5.0
_CKPT, _PREV = "checkpoint.npz", "checkpoint.prev.npz"
# /2 carries a checksum; a /1 state (no checksum) is refused like any other unreadable one.
_FORMAT = "mfv-checkpoint/2"
_START = (0, 0)  # (octaves done, steps done in the next octave): no checkpoint is ever saved there


def _npz_bytes(**arrays) -> bytes:
    import io

    b = io.BytesIO()
    np.savez(b, **arrays)
    return b.getvalue()


def _checkpoint_bytes(states: list[FacetState], position: tuple[int, int], key: str) -> bytes:
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


def _save_checkpoint(
    out: Path, states: list[FacetState], position: tuple[int, int], key: str
) -> None:
    """Write the job's checkpoint atomically, keeping the one before it.

    The jobs of a batch are saved one after the other; a kill between two of them leaves some jobs
    one checkpoint ahead, and the previous one is what lets every job resume from the same point.
    """
    data = _checkpoint_bytes(states, position, key)
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


def _read_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
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


def _apply_checkpoint(states: list[FacetState], meta: dict, arrays: dict[str, np.ndarray]) -> None:
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
        s.octaves_done, s.steps_done, s.fail_octave = (
            f["octaves_done"],
            f["steps_done"],
            f["fail_octave"],
        )


def _resume(runs: list[_Run]) -> None:
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
                meta, arrays = _read_checkpoint(path)
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
            _apply_checkpoint(r.states, meta, arrays)
        except (KeyError, ValueError) as e:
            raise MfvError(
                f"{r.out / 'state'}: damaged checkpoint ({e}); rerun with --restart"
            ) from None
        if path.name == _PREV:
            # This job was one save ahead of the others: drop that save, so that the next one
            # keeps this point as the previous checkpoint, which the other jobs may still need.
            os.replace(path, r.out / "state" / _CKPT)


class _Saver:
    """When to checkpoint (every ``seconds`` of work, or every ``steps`` steps) and how."""

    def __init__(self, runs: list[_Run], seconds: float, steps: int | None) -> None:
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
                _save_checkpoint(r.out, r.states, position, r.meta["run_key"])
        self.last = time.perf_counter()
        self.count = 0


@dataclass
class UnitJob:
    """One target and its facets, for :func:`visualize_units` (fields as in :func:`visualize`)."""

    objective: Objective
    inits: list
    out: str | Path | None = None
    init_names: list[str] | None = None
    clusters: list[int | None] | None = None
    extra: dict | None = None


def visualize(
    model: Model,
    objective: Objective,
    inits: list,
    *,
    schedule: Schedule,
    seed: int = 1,
    faithful: bool = False,
    out: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    init_names: list[str] | None = None,
    clusters: list[int | None] | None = None,
    denoiser: str = "auto",
    extra: dict | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    checkpoint_steps: int | None = None,
) -> dict:
    """Run MFV from one or more initial images, as one batch.

    Parameters
    ----------
    model : Model
        The network (:func:`mfv.models.load_model` or :func:`mfv.models.wrap`).
    objective : Objective
        The target (:mod:`mfv.objectives`).
    inits : list of (H, W, 3) arrays or the string "noise"
        One per facet: RGB grey levels (uint8 or float), resized to the input size if needed;
        "noise" starts from the N(175, 8) image.
    schedule : Schedule
        Octaves (:func:`mfv.octaves.load_schedule`).
    seed : int
        Seed of each facet's own legacy NumPy stream (every facet gets the stream its own run of
        the original had).
    faithful : bool
        Reproduce the original's arithmetic instead of fixing its bugs.
    out : path, optional
        Output folder: images, ``trace.json``, ``index.html``, ``state/`` (to resume).
    resume : bool
        Continue from ``out/state`` when it holds the same run.
    progress : bool
        Show a progress bar.
    init_names, clusters : list, optional
        Labels of the initial images and the cluster each comes from (for the report).
    denoiser : {"auto", "torch", "skimage"}
        ``"torch"``: :mod:`mfv.tv_bregman`, all facets in one call on the model's device (same
        semantics as scikit-image; float32 with the current border in the default mode, float64
        with scikit-image 0.13's border, which the original ran, in faithful mode). In the default
        mode the whole step then stays on the device and the host reads the trace once per octave.
        ``"skimage"``: one scikit-image call per facet on the host (the spec's reference).
        ``"auto"``: torch in the default mode, skimage in faithful mode.
    extra : dict, optional
        More metadata for ``trace.json`` (command line, means folder).
    checkpoint_seconds : float
        Seconds of work between two checkpoints in ``out/state`` (default
        :data:`CHECKPOINT_SECONDS`); octave ends are always saved.
    checkpoint_steps : int, optional
        Checkpoint every this many steps instead (tests).

    Returns
    -------
    dict
        The trace (also written to ``out/trace.json``).

    Notes
    -----
    A facet whose image or gradient turns NaN or Inf stops with a message; the others go on.
    The state (every facet's image, random stream and trace, in one file per output folder) is
    saved every few seconds of work and at each octave's end; after an interruption of any kind,
    ``kill -9`` included, the same call with the same ``out`` resumes from the last save and ends
    with the same bytes as a run that was never interrupted. :func:`visualize_units` runs several
    targets in one batch.
    """
    job = UnitJob(objective, inits, out, init_names, clusters, extra)
    return visualize_units(
        model,
        [job],
        schedule=schedule,
        seed=seed,
        faithful=faithful,
        resume=resume,
        progress=progress,
        denoiser=denoiser,
        checkpoint_seconds=checkpoint_seconds,
        checkpoint_steps=checkpoint_steps,
    )[0]


def visualize_units(
    model: Model,
    jobs: list[UnitJob],
    *,
    schedule: Schedule,
    seed: int = 1,
    faithful: bool = False,
    resume: bool = True,
    progress: bool = True,
    denoiser: str = "auto",
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    checkpoint_steps: int | None = None,
) -> list[dict]:
    """Run MFV for several targets at once: every facet of every job in one forward/backward.

    Each job is what one :func:`visualize` call would be (its own target, initial images and
    output folder, with the same files); facets share the batch, nothing else. The results equal
    separate calls up to the float rounding of a larger batch. Parameters as in :func:`visualize`.

    Returns
    -------
    list of dict
        One trace per job, in order.
    """
    if denoiser == "auto":
        denoiser = "skimage" if faithful else "torch"
    if denoiser not in ("skimage", "torch"):
        raise ValueError(f"denoiser must be 'auto', 'skimage' or 'torch', not {denoiser!r}")
    if not jobs:
        return []
    # Every target is checked before anything is created (no output folder for a bad --unit).
    shapes = model.layer_shapes()
    for job in jobs:
        for octave in (None, *schedule.octaves):
            check_objective(
                job.objective if octave is None else _objective_for(job.objective, octave), shapes
            )
    runs = [
        _prepare(
            model,
            job,
            j,
            schedule=schedule,
            seed=seed,
            faithful=faithful,
            resume=resume,
            denoiser=denoiser,
        )
        for j, job in enumerate(jobs)
    ]
    if resume and all(r.out is not None for r in runs):
        _resume(runs)
    objectives = [job.objective for job in jobs]
    outs = [r.out for r in runs]
    states = [s for r in runs for s in r.states]
    saver = _Saver(runs, checkpoint_seconds, checkpoint_steps)
    status = "finished"
    try:
        running = [s for s in states if s.status == "running"]
        if running:
            # Checkpoints hold every job at one point, so all running facets share it.
            start = min((s.octaves_done, s.steps_done) for s in running)
            _run_group(
                model,
                objectives,
                schedule,
                states,
                start,
                faithful=faithful,
                outs=outs,
                progress=progress,
                denoiser=denoiser,
                saver=saver,
            )
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException as e:
        status = f"crashed: {type(e).__name__}: {e}"
        raise
    finally:
        traces = [_finish(model, r, schedule, status) for r in runs]
    return traces


@dataclass
class _Run:
    """One job's facets, trace metadata and output folder."""

    states: list[FacetState]
    meta: dict
    out: Path | None


def _prepare(
    model: Model,
    job: UnitJob,
    j: int,
    *,
    schedule: Schedule,
    seed: int,
    faithful: bool,
    resume: bool,
    denoiser: str,
) -> _Run:
    h, w = model.convention.input_size
    inits = job.inits
    names = list(
        job.init_names or [i if isinstance(i, str) else f"init {k}" for k, i in enumerate(inits)]
    )
    out = Path(job.out) if job.out is not None else None
    states = []
    for i, init in enumerate(inits):
        rng = np.random.RandomState(seed)
        noise = noise_image(rng, (h, w))  # drawn before the init is loaded, as the original did
        if isinstance(init, str) and init == "noise":
            img = noise
        else:
            img = np.asarray(init)
            if img.shape[:2] != (h, w):
                img = _io.fit_to(_io.to_uint8(img), (h, w))
        s = FacetState(
            i, names[i], np.ascontiguousarray(np.transpose(img, (2, 0, 1)), dtype=np.float32), rng
        )
        s.cluster = None if job.clusters is None else job.clusters[i]
        s.job = j
        states.append(s)

    key = _run_key(model, job.objective, schedule, seed, faithful, names, denoiser)
    meta = {
        "format": "mfv-trace/1",
        "run_key": key,
        "model": {"name": model.name, "convention": model.convention.as_dict(), **model.info},
        "parity": model.info.get("parity"),
        "objective": {"description": job.objective.description, **job.objective.spec},
        "schedule": schedule.as_dict(),
        "seed": seed,
        "mode": "faithful" if faithful else "default",
        "fixes": [] if faithful else list(FIXES),
        "denoiser": {
            "skimage": "skimage.restoration.denoise_tv_bregman (current border)",
            "torch": "mfv.tv_bregman "
            + ("float64, scikit-image 0.13 border" if faithful else "float32, current border"),
        }[denoiser],
        "faithful_notes": [
            "each facet replays the original's per-run legacy NumPy stream (RandomState(seed)); noise image drawn first",
            "crop offsets: x is the row offset, y the column offset; centre (size - input) / 2",
            "state kept in RGB pixel space (float32); the original kept BGR minus mean, which differs by float32 rounding only",
        ]
        if faithful
        else [],
        **(job.extra or {}),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        run_file = out / "state" / "run.json"
        _remove_stale(out)
        if resume and run_file.exists():
            try:
                held = json.loads(run_file.read_text()).get("run_key")
            except (OSError, ValueError, AttributeError):
                raise MfvError(f"{run_file} is damaged; rerun with --restart") from None
            if held != key:
                raise MfvError(f"{out} holds a different run; use another --out or --restart")
        else:
            # A fresh start: earlier facets and states must not be mistaken for this run's.
            for old in [
                *out.glob("facet_*.png"),
                *out.glob("facet_*.jpg"),
                *(out / "state").glob("facet_*"),
                *(out / "state").glob("checkpoint*.npz"),
            ]:
                old.unlink()
        _io.write_json(run_file, {"run_key": key})
    return _Run(states, meta, out)


def _remove_stale(out: Path) -> None:
    """Temporaries that a killed run left in ``out`` and ``out/state``."""
    for folder in (out, out / "state"):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name.startswith("."):
                    target = folder / p.name[1:].split(".tmp", 1)[0]
                    remove_stale_temporaries(target)


def _finish(model: Model, run: _Run, schedule: Schedule, status: str) -> dict:
    trace = {
        **run.meta,
        "status": status,
        "facets": [_facet_record(s, schedule) for s in run.states],
    }
    if run.out is not None:
        _remove_stale(run.out)
        _io.write_json(run.out / "trace.json", trace)
        from .report import write_visualize_html

        try:
            # After Ctrl-C, skip the nearest-image search: it runs the net over the whole set.
            write_visualize_html(run.out, trace, model=model if status == "finished" else None)
        except Exception:
            if status == "finished":
                raise  # otherwise keep the original exception, not the report's
    return trace


def _facet_record(s: FacetState, schedule: Schedule) -> dict:
    acts = [st["activation"] for st in s.steps]
    return {
        "index": s.index,
        "init": s.init,
        "cluster": s.cluster,
        "status": s.status,
        "message": s.message,
        "octaves_done": s.octaves_done,
        "octaves_total": len(schedule.octaves),
        "seconds": round(s.seconds, 3),
        "final_activation": acts[-1] if acts else None,
        "image": f"facet_{s.index}.png" if s.status == "done" else None,
        "steps": s.steps,
    }


def _fail(s: FacetState, msg: str, octave: int) -> None:
    s.status, s.message, s.fail_octave = "failed", msg, octave
    tqdm.write(f"facet {s.index} ({s.init}) stopped: {msg}")


def _run_group(
    model: Model,
    objectives: list[Objective],
    schedule: Schedule,
    group: list[FacetState],
    start: tuple[int, int],
    *,
    faithful: bool,
    outs: list[Path | None],
    progress: bool,
    denoiser: str,
    saver: _Saver,
) -> None:
    """Run every facet of ``group`` from ``start`` = (octave, step within it) to the end."""
    h, w = model.convention.input_size
    mean_px = model.convention.mean_pixels
    group = sorted(
        group, key=lambda s: (s.job, s.index)
    )  # each job's facets contiguous in the batch
    k0, i0 = start
    total = sum(o.iter_n for o in schedule.octaves[k0:]) - i0
    bar = tqdm(total=total, desc=f"MFV {len(group)} facet(s)", disable=not progress, unit="step")
    on_device = not faithful and denoiser == "torch"
    checkpoint = partial(_checkpoint, group, saver)
    try:
        for k in range(k0, len(schedule.octaves)):
            octave = schedule.octaves[k]
            first = i0 if k == k0 else 0
            objs = [_objective_for(o, octave) for o in objectives]
            if first == 0 and octave.zoom is not None:
                _zoom_running(group, octave.zoom, mean_px, faithful=faithful)
            if on_device:
                # The octave's batch is fixed at its start: facets that failed in it stay, frozen,
                # so that a resumed octave computes on the same batch as an uninterrupted one.
                active = [s for s in group if s.status == "running" or s.fail_octave == k]
                if any(s.status == "running" for s in active):
                    _octave_on_device(
                        model,
                        objs,
                        active,
                        octave,
                        k,
                        size=(h, w),
                        bar=bar,
                        first=first,
                        saver=saver,
                        checkpoint=checkpoint,
                    )
            else:
                _octave_on_host(
                    model,
                    objs,
                    group,
                    octave,
                    k,
                    size=(h, w),
                    bar=bar,
                    first=first,
                    faithful=faithful,
                    denoiser=denoiser,
                    saver=saver,
                    checkpoint=checkpoint,
                )
            _end_octave(
                model, group, outs, k, last=k + 1 == len(schedule.octaves), faithful=faithful
            )
            saver.save((k + 1, 0))
    finally:
        bar.close()


def _checkpoint(group: list[FacetState], saver: _Saver, k: int, i: int) -> None:
    """Save the batch at step ``i`` of octave ``k`` (the running facets' position first)."""
    for s in group:
        if s.status == "running":
            s.octaves_done, s.steps_done = k, i
    saver.save((k, i))


def _zoom_running(
    group: list[FacetState], zoom: float, mean_px: np.ndarray, *, faithful: bool
) -> None:
    """The start of a zooming octave: every running facet's image grows (clipped, unless faithful)."""
    for s in group:
        if s.status == "running":
            s.image = zoom_image(s.image, zoom, mean_px).astype(np.float32)
            if not faithful:
                np.clip(s.image, 0, 255, out=s.image)


def _octave_on_host(
    model: Model,
    objs: list[Objective],
    group: list[FacetState],
    octave: Octave,
    k: int,
    *,
    size: tuple[int, int],
    bar,
    first: int,
    faithful: bool,
    denoiser: str,
    saver: _Saver,
    checkpoint: Callable[[int, int], None],
) -> None:
    """One octave (from step ``first``) on the host, step by step (:func:`_step`); the batch is the
    facets still running at each step."""
    for i in range(first, octave.iter_n):
        active = [s for s in group if s.status == "running"]
        if not active:
            break
        t0 = time.perf_counter()
        _step(model, objs, active, octave, k, i, faithful=faithful, size=size, denoiser=denoiser)
        dt = (time.perf_counter() - t0) / len(active)
        for s in active:
            s.seconds += dt
        bar.update(1)
        if active[0].steps:
            bar.set_postfix(act=f"{active[0].steps[-1]['activation']:.3g}")
        if i + 1 < octave.iter_n and saver.due():
            checkpoint(k, i + 1)


def _end_octave(
    model: Model,
    group: list[FacetState],
    outs: list[Path | None],
    k: int,
    *,
    last: bool,
    faithful: bool,
) -> None:
    """Octave ``k`` is over: the running facets move on (or are done, after the ``last`` octave) and
    their images are saved, the octave's and, when done, the final one."""
    for s in group:
        out = outs[s.job]
        if s.status != "running":
            continue
        s.octaves_done, s.steps_done = k + 1, 0
        if last:
            s.status = "done"
        if out is not None:
            u8 = _save_u8(s, faithful)
            text = _io.provenance_text(model.info.get("parity"))
            _io.save_image(out / f"facet_{s.index}_octave{k + 1}.png", u8, text=text)
            if s.status == "done":
                _io.save_image(out / f"facet_{s.index}.png", u8, text=text)
                if faithful:  # the original also wrote a JPEG
                    _io.save_image(out / f"facet_{s.index}.jpg", u8, text=text)


def _offsets(
    active: list[FacetState], octave: Octave, size: tuple[int, int]
) -> list[tuple[int, int]]:
    """Each facet's crop offsets for this step, drawn from its own stream (x, then y)."""
    h, w = size
    offsets = []
    for s in active:
        span_x, span_y = s.image.shape[-2] - h, s.image.shape[-1] - w
        if span_x > 0 or span_y > 0:  # the image outgrew the input: jitter
            offsets.append(
                (
                    crop_offset(s.rng, span_x, octave.window),
                    crop_offset(s.rng, span_y, octave.window),
                )
            )
        else:
            offsets.append((0, 0))
    return offsets


def _evaluate(
    model: Model, objs: list[Objective], active: list[FacetState], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward for the whole batch; each job's objective on its own (contiguous) facets.

    Returns the target values (N,) and the best unit per facet ((N,) long, or None when some
    objective has no notion of it).
    """
    jobs = [s.job for s in active]
    layers = tuple(dict.fromkeys(name for j in dict.fromkeys(jobs) for name in objs[j].layers))
    acts = model.activations(x, layers)
    values, bests = [], []
    start = 0
    for j in dict.fromkeys(jobs):
        n = jobs.count(j)
        part = {name: a[start : start + n] for name, a in acts.items()}
        values.append(objs[j](part))
        best = objs[j].best_units({name: a.detach() for name, a in part.items()})
        bests.append(best)
        start += n
    best = None if any(b is None for b in bests) else torch.cat(bests)
    return torch.cat(values), best


def _margin_mask(octave: Octave, size: tuple[int, int]) -> np.ndarray | None:
    if octave.margin <= 0:
        return None
    h, w = size
    m = octave.margin
    mask = np.zeros((h, w), dtype=bool)
    mask[m : h - m, m : w - m] = True
    return mask


def _step(
    model: Model,
    objs: list[Objective],
    active: list[FacetState],
    octave: Octave,
    k: int,
    i: int,
    *,
    faithful: bool,
    size: tuple[int, int],
    denoiser: str = "skimage",
) -> None:
    """One step on the host, numpy arithmetic (faithful mode, and the scikit-image denoiser)."""
    h, w = size
    offsets = _offsets(active, octave, size)
    crops = np.stack(
        [s.image[:, ox : ox + h, oy : oy + w] for s, (ox, oy) in zip(active, offsets, strict=True)]
    )
    x = torch.from_numpy(crops).to(device=model.device, dtype=model.dtype).requires_grad_(True)
    value, best_t = _evaluate(model, objs, active, x)
    value.sum().backward()
    g = x.grad.detach().to("cpu", torch.float32).numpy()
    values = value.detach().cpu().double().numpy()
    best = [None] * len(active) if best_t is None else best_t.tolist()
    mask = _margin_mask(octave, size)
    if mask is not None:
        g[:, :, ~mask] = 0
    step = step_size(octave, i, faithful=faithful)
    weight = tv_weight(octave, i, faithful=faithful)
    stepped = []  # (facet, offsets, crop after step and clip)
    for j, (s, (ox, oy)) in enumerate(zip(active, offsets, strict=True)):
        record = {
            "octave": k + 1,
            "step": i,
            "activation": float(values[j]),
            "best_unit": best[j],
            "step_size": step,
            "tv_weight": weight,
            "offset": [ox, oy],
        }
        s.steps.append(record)
        gj = g[j]
        mag = np.abs(gj).mean()  # float32 mean, as numpy computed it on the float32 diff
        record["mean_abs_grad"] = float(mag)
        problem = _problem(bool(np.isfinite(gj).all()), bool(np.isfinite(values[j])), mag != 0)
        if problem:
            _fail(s, f"{problem} at octave {k + 1}, step {i}", k)
            continue
        # Python float / float32 scalar was float64 in NumPy 1, then cast to the float32 array's type.
        crop = crops[j] + np.float32(step / float(mag)) * gj
        np.clip(crop, 0, 255, out=crop)
        stepped.append((s, (ox, oy), crop))
    if not stepped:
        return
    if denoiser == "torch":
        denoised = _denoise_torch([c for _, _, c in stepped], weight, device=model.device)
    else:
        denoised = [
            np.transpose(denoise(np.transpose(c, (1, 2, 0)), weight), (2, 0, 1))
            for _, _, c in stepped
        ]
    for (s, (ox, oy), _), den in zip(stepped, denoised, strict=True):
        crop = np.asarray(den, dtype=np.float32)
        if not np.isfinite(crop).all():
            _fail(s, f"NaN/Inf in the image after denoising at octave {k + 1}, step {i}", k)
            continue
        s.image[:, ox : ox + h, oy : oy + w] = crop


def _problem(grad_finite: bool, value_finite: bool, grad_nonzero: bool) -> str | None:
    """Why a facet cannot take its step, if it cannot."""
    if not grad_finite:
        return "NaN/Inf in the gradient"
    if not value_finite:
        return "NaN/Inf target activation"
    if not grad_nonzero:
        return "zero gradient (the step size would be infinite; dead unit?)"
    return None


@dataclass
class _DeviceRow:
    """One device step's trace, left on the device until the next host read."""

    step: int
    offsets: list[tuple[int, int]]  # each facet's crop offsets (drawn on the host)
    step_size: float
    tv_weight: float
    # (7, N) float64: value, mean |g|, gradient finite, value finite, gradient nonzero, image
    # finite after denoising, alive before the step.
    stats: torch.Tensor
    best: torch.Tensor | None  # (N,) best unit per facet, or None


@dataclass
class _DeviceOctave:
    """One octave's batch on the device, and the trace rows not yet read by the host."""

    active: list[FacetState]
    k: int  # the octave's index
    imgs: torch.Tensor  # (N, 3, H', W') the facets' images
    alive: torch.Tensor  # (N,) bool: not frozen
    mask: torch.Tensor | None  # the octave's margin mask (H, W)
    t0: float  # when the facets' time was last counted
    rows: list[_DeviceRow] = field(default_factory=list)


def _octave_on_device(
    model: Model,
    objs: list[Objective],
    active: list[FacetState],
    octave: Octave,
    k: int,
    *,
    size: tuple[int, int],
    bar,
    first: int = 0,
    saver: _Saver | None = None,
    checkpoint: Callable[[int, int], None] | None = None,
) -> None:
    """One octave (from step ``first``) of the default mode with the torch denoiser, every step on
    the model's device.

    The host draws the crop offsets (each facet's own stream, no device data needed) and reads the
    trace at the end of the octave and at each checkpoint. A facet that meets NaN/Inf or a zero
    gradient is frozen on the device from that step on and reported at the next read, as the host
    loop would; facets that failed earlier in this octave come in frozen.
    """
    from .tv_bregman import denoise_tv_bregman as tv

    dev = model.device
    t0 = time.perf_counter()
    imgs = torch.from_numpy(np.stack([s.image for s in active])).to(dev)
    alive = torch.tensor([s.status == "running" for s in active], dtype=torch.bool, device=dev)
    mask = _margin_mask(octave, size)
    run = _DeviceOctave(
        active, k, imgs, alive, None if mask is None else torch.from_numpy(mask).to(dev), t0
    )
    for i in range(first, octave.iter_n):
        _device_step(model, objs, run, octave, i, size=size, tv=tv)
        bar.update(1)
        if saver is not None and i + 1 < octave.iter_n and saver.due():
            _read_back(run)
            checkpoint(k, i + 1)
    _read_back(run)


def _device_step(
    model: Model,
    objs: list[Objective],
    run: _DeviceOctave,
    octave: Octave,
    i: int,
    *,
    size: tuple[int, int],
    tv: Callable[..., torch.Tensor],
) -> None:
    """Step ``i`` of every facet of ``run`` on the device; its trace row joins ``run.rows``.

    One piece: the gradient, its checks, the move and the denoising share the step's tensors.
    """
    h, w = size
    offsets = _offsets(run.active, octave, size)
    crops = torch.stack(
        [run.imgs[j, :, ox : ox + h, oy : oy + w] for j, (ox, oy) in enumerate(offsets)]
    )
    x = crops.to(model.dtype).detach().requires_grad_(True)  # crops itself stays out of the graph
    value, best = _evaluate(model, objs, run.active, x)
    value.sum().backward()
    g = x.grad.detach().float()
    if run.mask is not None:
        g = g * run.mask
    # mean |g| in one pass (an L1 norm); same value as abs().mean() up to summation order.
    mag = torch.linalg.vector_norm(g, ord=1, dim=(1, 2, 3)) / g[0].numel()
    grad_ok = torch.isfinite(g).all(dim=(1, 2, 3))
    value = value.detach().double()
    value_ok = torch.isfinite(value)
    nonzero = mag != 0
    ok = run.alive & grad_ok & value_ok & nonzero
    step = step_size(octave, i, faithful=False)
    weight = tv_weight(octave, i, faithful=False)
    ok4 = ok.view(-1, 1, 1, 1)
    moved = torch.addcmul(crops, (step / torch.where(ok, mag, 1.0)).view(-1, 1, 1, 1), g).clamp_(
        0, 255
    )
    moved = torch.where(ok4, moved, crops)
    den = tv(
        moved, weight=weight, max_num_iter=TV_MAX_ITER, eps=TV_EPS, isotropic=True, border="current"
    )
    image_ok = torch.isfinite(den).all(dim=(1, 2, 3))
    keep = ok & image_ok
    den = torch.where(keep.view(-1, 1, 1, 1), den, crops)
    if run.imgs.shape[-2:] == (h, w):  # no jitter yet: the crops are the images
        run.imgs = den
    else:
        for j, (ox, oy) in enumerate(offsets):
            run.imgs[j, :, ox : ox + h, oy : oy + w] = den[j]
    run.rows.append(
        _DeviceRow(
            i,
            offsets,
            step,
            weight,
            torch.stack(
                [
                    value,
                    mag.double(),
                    grad_ok.double(),
                    value_ok.double(),
                    nonzero.double(),
                    image_ok.double(),
                    run.alive.double(),
                ]
            ),
            best,
        )
    )
    run.alive = keep


def _read_back(run: _DeviceOctave) -> None:
    """The host read: append the trace rows so far, mark failures, bring the images home."""
    n = len(run.active)
    rows = run.rows
    stats = torch.stack([r.stats for r in rows]).cpu().numpy() if rows else np.zeros((0, 7, n))
    bests = (
        None
        if not rows or rows[0].best is None
        else torch.stack([r.best for r in rows]).cpu().tolist()
    )
    final = run.imgs.cpu().numpy()
    dt = (time.perf_counter() - run.t0) / n
    run.t0 = time.perf_counter()
    for j, s in enumerate(run.active):
        if s.status == "running":
            s.seconds += dt
            _trace_device_rows(s, j, rows, stats, bests, run.k)
        s.image = np.ascontiguousarray(final[j], dtype=np.float32)
    rows.clear()


def _trace_device_rows(
    s: FacetState,
    j: int,
    rows: list[_DeviceRow],
    stats: np.ndarray,
    bests: list[list[int]] | None,
    k: int,
) -> None:
    """Facet ``s`` (column ``j`` of the batch) gets a trace step per row it was alive in; the first
    problem fails it."""
    for r, row in enumerate(rows):
        value, mag, grad_ok, value_ok, nonzero, image_ok, was_alive = stats[r, :, j]
        if not was_alive:
            break
        s.steps.append(
            {
                "octave": k + 1,
                "step": row.step,
                "activation": float(value),
                "best_unit": None if bests is None else int(bests[r][j]),
                "step_size": row.step_size,
                "tv_weight": row.tv_weight,
                "offset": list(row.offsets[j]),
                "mean_abs_grad": float(mag),
            }
        )
        problem = _problem(bool(grad_ok), bool(value_ok), bool(nonzero))
        if problem is None and not image_ok:
            problem = "NaN/Inf in the image after denoising"
        if problem:
            _fail(s, f"{problem} at octave {k + 1}, step {row.step}", k)
            break


def _denoise_torch(crops: list[np.ndarray], weight: float, *, device) -> list[np.ndarray]:
    """Faithful mode's torch TV (mfv.tv_bregman): all facets in one call, float64 with scikit-image
    0.13's border (reflect at bottom/right), as the original ran. The default mode denoises on the
    device inside :func:`_octave_on_device`."""
    from .tv_bregman import denoise_tv_bregman as tv

    x = torch.from_numpy(np.stack(crops)).to(device=device, dtype=torch.float64)
    y = tv(x, weight=weight, max_num_iter=TV_MAX_ITER, eps=TV_EPS, isotropic=True, border="0.13")
    return list(y.cpu().numpy())
