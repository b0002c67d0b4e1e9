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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from port.atomic import remove_stale_temporaries

from . import _io
from .codes import nearest_training_images
from .defaults import resolve_denoiser
from .errors import MfvError
from .loop.checkpoint import CHECKPOINT_SECONDS, ChecksumError, Saver, resume_runs, save_position
from .loop.device import octave_on_device
from .loop.facet import (
    FacetState,
    JobRun,
    crop_offset,
    denoise,
    end_octave,
    noise_image,
    objective_for,
    zoom_image,
    zoom_running,
)
from .loop.host import octave_on_host
from .models import Model
from .objectives import Objective, check_objective
from .octaves import FIXES, Schedule
from .report import write_visualize_html

__all__ = [
    "visualize",
    "visualize_units",
    "UnitJob",
    "FacetState",
    "denoise",
    "crop_offset",
    "zoom_image",
    "noise_image",
    "CHECKPOINT_SECONDS",
    "ChecksumError",
]


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
    denoiser: str | None = None,
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
    denoiser : {None, "auto", "torch", "skimage"}
        ``"torch"``: :mod:`mfv.tv_bregman`, all facets in one call on the model's device (same
        semantics as scikit-image; float32 with the current border in the default mode, float64
        with scikit-image 0.13's border, which the original ran, in faithful mode). In the default
        mode the whole step then stays on the device and the host reads the trace once per octave.
        ``"skimage"``: one scikit-image call per facet on the host (the spec's reference).
        ``None`` or ``"auto"``: torch in the default mode, skimage in faithful mode
        (:func:`mfv.defaults.resolve_denoiser`).
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


def visualize_units(  # long: the public entry: argument checks, grouping, resume, results
    model: Model,
    jobs: list[UnitJob],
    *,
    schedule: Schedule,
    seed: int = 1,
    faithful: bool = False,
    resume: bool = True,
    progress: bool = True,
    denoiser: str | None = None,
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
    denoiser = resolve_denoiser(denoiser, faithful=faithful)
    if not jobs:
        return []
    # Every target is checked before anything is created (no output folder for a bad --unit).
    shapes = model.layer_shapes()
    for job in jobs:
        for octave in (None, *schedule.octaves):
            check_objective(
                job.objective if octave is None else objective_for(job.objective, octave), shapes
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
        resume_runs(runs)
    objectives = [job.objective for job in jobs]
    outs = [r.out for r in runs]
    states = [s for r in runs for s in r.states]
    saver = Saver(runs, checkpoint_seconds, checkpoint_steps)
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
) -> JobRun:
    """One job's facets at the start, its trace metadata, and its output folder made ready."""
    names = list(
        job.init_names
        or [i if isinstance(i, str) else f"init {k}" for k, i in enumerate(job.inits)]
    )
    states = _initial_states(model, job, j, names, seed)
    key = _run_key(model, job.objective, schedule, seed, faithful, names, denoiser)
    meta = _trace_meta(model, job, key, schedule, seed, faithful, denoiser)
    out = Path(job.out) if job.out is not None else None
    if out is not None:
        _ready_out(out, key, resume)
    return JobRun(states, meta, out)


def _initial_states(
    model: Model, job: UnitJob, j: int, names: list[str], seed: int
) -> list[FacetState]:
    h, w = model.convention.input_size
    states = []
    for i, init in enumerate(job.inits):
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
    return states


def _trace_meta(
    model: Model,
    job: UnitJob,
    key: str,
    schedule: Schedule,
    seed: int,
    faithful: bool,
    denoiser: str,
) -> dict:
    return {
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


def _ready_out(out: Path, key: str, resume: bool) -> None:
    """``out`` made, its temporaries gone, and its run file checked (resume) or its old run cleared."""
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


def _remove_stale(out: Path) -> None:
    """Temporaries that a killed run left in ``out`` and ``out/state``."""
    for folder in (out, out / "state"):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name.startswith("."):
                    target = folder / p.name[1:].split(".tmp", 1)[0]
                    remove_stale_temporaries(target)


def _finish(model: Model, run: JobRun, schedule: Schedule, status: str) -> dict:
    trace = {
        **run.meta,
        "status": status,
        "facets": [_facet_record(s, schedule) for s in run.states],
    }
    if run.out is not None:
        _remove_stale(run.out)
        _io.write_json(run.out / "trace.json", trace)
        try:
            # After Ctrl-C, skip the nearest-image search: it runs the net over the whole set.
            nearest = _nearest(model, run.out, trace) if status == "finished" else {}
            write_visualize_html(run.out, trace, nearest=nearest)
        except Exception:
            if status == "finished":
                raise  # otherwise keep the original exception, not the report's
    return trace


def _nearest(model: Model, out: Path, trace: dict) -> dict:
    """The report's nearest training images, or why there are none (the report must not lose a
    finished run over them)."""
    if not trace.get("means"):
        return {}
    try:
        return nearest_training_images(model, out, trace, n=3)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


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
        "octave_seconds": [round(t, 3) for t in s.octave_seconds],
        "final_activation": acts[-1] if acts else None,
        "image": f"facet_{s.index}.png" if s.status == "done" else None,
        "steps": s.steps,
    }


def _run_group(  # long: one group of facets through every octave, with checkpoints
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
    saver: Saver,
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
    checkpoint = partial(save_position, group, saver)
    try:
        for k in range(k0, len(schedule.octaves)):
            octave = schedule.octaves[k]
            first = i0 if k == k0 else 0
            objs = [objective_for(o, octave) for o in objectives]
            if first == 0 and octave.zoom is not None:
                zoom_running(group, octave.zoom, mean_px, faithful=faithful)
            if on_device:
                # The octave's batch is fixed at its start: facets that failed in it stay, frozen,
                # so that a resumed octave computes on the same batch as an uninterrupted one.
                active = [s for s in group if s.status == "running" or s.fail_octave == k]
                if any(s.status == "running" for s in active):
                    octave_on_device(
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
                octave_on_host(
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
            end_octave(
                model, group, outs, k, last=k + 1 == len(schedule.octaves), faithful=faithful
            )
            saver.save((k + 1, 0))
    finally:
        bar.close()
