"""What a sweep's workers run: one unit (or a batch of units) from images to evaluation.

Each Dask task is :func:`run_units`; a worker keeps its model between tasks. Bad input fails a
unit at once with a record saying why; anything else is left to Dask's retries.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import _io
from .octaves import Schedule
from .sweep_state import DONE_FORMAT, read_json, unit_status

if TYPE_CHECKING:  # torch is imported where a worker or a sweep needs it, not on import
    from .models import ModelArgs

__all__ = ["SweepParams", "UnitTask", "probe", "run_unit", "run_units"]


@dataclass(frozen=True)
class SweepParams:
    """What every unit of one sweep shares, as sent to the workers (picklable, hashable).

    :meth:`identity` holds the fields that decide a unit's result: it is ``sweep.json``'s
    ``params`` and, with the unit's image folder, the unit key. ``device``, ``threads``,
    ``batch_size`` and ``evaluate`` decide only how and where the result is computed.
    Fields left ``None`` are the model's defaults, filled in by :meth:`resolved`.

    Parameters
    ----------
    model : ModelArgs
        The model, as :func:`mfv.models.load_model` takes it; workers read its files at the same
        (absolute) paths.
    layer : str, optional
        Target layer (default: the model's logits, e.g. ``fc8``). Conv layers target each channel
        at the centre.
    softmax : bool
        Maximise the softmax of ``layer`` instead of the unit itself.
    code_layer : str, optional
        Layer of the codes that mean images cluster (default: the model's fc7 equivalent).
    k, m : int
        Facets (clusters) per unit, and images averaged per mean image.
    means_seed, seed : int
        Seed of the clustering, and of MFV's random streams (1 as published).
    schedule : Schedule or path, optional
        Octave schedule (default: the model's, ``mfv/schedules/``; :mod:`mfv.defaults`).
    faithful : bool
        Reproduce the original's arithmetic (:func:`mfv.visualize.visualize`).
    denoiser : {None, "auto", "skimage", "torch"}
        TV implementation; default as :func:`mfv.visualize.visualize` (:mod:`mfv.defaults`).
    keep_grey, exclude, batch_size
        As for :func:`mfv.means.make_means`.
    device : str
        ``cpu``, ``cuda`` (a local cluster's workers are spread over the visible GPUs) or
        ``cuda:<i>``.
    threads : int
        CPU threads each worker gives torch and OpenMP; a worker runs one unit at a time (a unit is
        a batch already; finer concurrency only makes threads fight for the cores).
    evaluate : bool
        Run :func:`mfv.evaluate.evaluate` on each unit (its figures go into ``summary.json``).
    """

    model: ModelArgs
    layer: str | None = None
    softmax: bool = False
    code_layer: str | None = None
    k: int = 10
    m: int = 15
    means_seed: int = 0
    seed: int = 1
    schedule: Schedule | str | Path | None = None
    faithful: bool = False
    denoiser: str | None = None
    keep_grey: bool = True
    exclude: tuple[str, ...] = ()
    device: str = "cpu"
    threads: int = 1
    batch_size: int = 16
    evaluate: bool = True

    def resolved(self) -> SweepParams:
        """The model's defaults filled in (target and code layers, schedule, denoiser) and its
        files made absolute; checks the model name."""
        from .codes import check_k_m
        from .defaults import resolve_denoiser, resolve_schedule
        from .models import model_spec

        check_k_m(self.k, self.m)
        spec = model_spec(self.model.name)
        layer = self.layer or (spec.target_layer if spec else None)
        code_layer = self.code_layer or (spec.code_layer if spec else None)
        if layer is None or code_layer is None:
            raise ValueError(
                f"model {self.model.name!r} has no default target/code layer: give layer= and "
                "code_layer="
            )
        return replace(
            self,
            model=self.model.resolved(),
            layer=layer,
            code_layer=code_layer,
            schedule=resolve_schedule(self.schedule, spec),
            denoiser=resolve_denoiser(self.denoiser, faithful=self.faithful),
            exclude=tuple(self.exclude),
            device=str(self.device),
        )

    def identity(self) -> dict:
        """The JSON-ready parameters that decide each unit's result."""
        return {
            "model": self.model.identity(),
            "layer": self.layer,
            "softmax": self.softmax,
            "code_layer": self.code_layer,
            "k": self.k,
            "m": self.m,
            "means_seed": self.means_seed,
            "seed": self.seed,
            "schedule": self.schedule.as_dict(),
            "faithful": self.faithful,
            "denoiser": self.denoiser,
            "keep_grey": self.keep_grey,
            "exclude": list(self.exclude),
        }


@dataclass(frozen=True)
class UnitTask:
    """One unit's work, as sent to a worker (picklable; no model, no open files)."""

    unit: int
    folder: str
    out: str
    key: str
    label: str
    params: SweepParams
    hook: Callable[[int, str], None] | None = field(default=None, compare=False)


# One model per worker process, loaded by its first task and kept: loading (and seeding 61M CaffeNet
# weights) costs seconds, a unit's forward passes milliseconds each.
_MODEL_CACHE: dict[tuple[ModelArgs, str], object] = {}

_MODEL_LOCK = threading.Lock()


def _worker_device(device: str) -> str:
    """``cuda`` without an index: spread the workers over the visible GPUs by the number that ends
    their name (a local cluster's workers are named 0, 1, ...)."""
    import torch

    if not device.startswith("cuda"):
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"--device {device}: CUDA is not available on worker host {socket.gethostname()}"
        )
    if device != "cuda" or torch.cuda.device_count() < 2:
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return device
    digits = re.search(r"(\d+)$", str(name))  # 0, 1 ... of a LocalCluster; gpu1, worker-3 by hand
    index = (
        int(digits.group(1)) if digits else int(hashlib.sha256(str(name).encode()).hexdigest(), 16)
    )
    return f"cuda:{index % torch.cuda.device_count()}"


def _worker_model(args: ModelArgs, device: str, threads: int):
    """The worker's cached model (loading it on first use); returns (model, seconds spent loading)."""
    import torch

    from ._process import keep_freed_memory

    # Every task sets it: a worker of an external cluster may have been started with another value.
    torch.set_num_threads(max(1, threads))
    keep_freed_memory()  # the worker process exists to run these tasks
    dev = _worker_device(device)
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get((args, dev))
        if model is not None:
            return model, 0.0
        _MODEL_CACHE.clear()  # a second model spec on the same worker would double its memory
        t0 = time.perf_counter()
        model = args.load(dev)
        _MODEL_CACHE[(args, dev)] = model
        return model, time.perf_counter() - t0


def probe(
    args: ModelArgs, device: str, threads: int, layer: str, code_layer: str, evaluate: bool = True
) -> dict:
    """Run on a worker before the sweep: the target layer's shape (and the model loads at all).

    Every blob a unit will need is checked here, before any unit's work: the target and code
    layers, and the softmax blob the evaluation ranks by when there is one.
    """
    model, _ = _worker_model(args, device, threads)
    shapes = model.layer_shapes()
    needed = [("target layer", layer), ("code layer", code_layer)]
    if evaluate:
        needed.append(
            ("softmax blob (for the evaluation; --no-evaluate skips it)", model.prob_layer)
        )
    for what, name in needed:
        if name not in shapes:
            raise ValueError(
                f"no {what} {name!r} in {model.name}; `python -m mfv layers --model "
                f"{args.name}` lists them"
            )
    return {
        "name": model.name,
        "layer_shape": list(shapes[layer]),
        "parity": model.info.get("parity"),
        "input_size": list(model.convention.input_size),
    }


def run_unit(task: UnitTask) -> dict:
    """One unit from images to evaluation; returns its summary record (also ``done.json``)."""
    return run_units([task])[0]


@dataclass
class _LiveUnit:
    """A unit whose means are ready, on its way through the MFV batch and its evaluation."""

    task: UnitTask
    base: dict  # the summary record's common fields (:func:`_base_record`)
    timings: dict[str, float | int]  # the record's "seconds", in the order the stages ran
    means_dir: Path


def run_units(tasks: list[UnitTask]) -> list[dict]:
    """Several units, their facets in one MFV batch; one summary record per unit (each also its
    ``done.json``). Each unit's means and evaluation are its own: one unit's bad input fails that
    unit only. A single unit runs :func:`mfv.visualize.visualize` exactly as before."""
    from port.verdict import ParityError

    t_start = time.perf_counter()
    sp = tasks[0].params
    records = _finished_meanwhile(tasks)
    tasks_left = [t for t in tasks if t.unit not in records]
    if not tasks_left:
        return [records[t.unit] for t in tasks]
    try:
        model, load_s = _worker_model(sp.model, sp.device, sp.threads)
    except (ValueError, FileNotFoundError, ParityError) as e:
        return [records.get(t.unit) or _failed(_base_record(t), t, e) for t in tasks]
    live = _start_units(model, tasks_left, load_s, records)
    for unit, trace in _visualize_batch(model, live, records):
        records[unit.task.unit] = _complete_unit(
            model, unit, trace, evaluate=sp.evaluate, t_start=t_start
        )
    return [records[t.unit] for t in tasks]


def _failed(base: dict, task: UnitTask, error: Exception) -> dict:
    """The summary record of a unit that failed (not written to ``done.json``: a rerun redoes it)."""
    return {**base, "status": "failed", "message": f"unit {task.unit} ({task.folder}): {error}"}


def _stage_hook(task: UnitTask) -> Callable[[int, str], None]:
    return task.hook or (lambda unit, stage: None)


def _finished_meanwhile(tasks: list[UnitTask]) -> dict[int, dict]:
    """The records of the units that another attempt finished meanwhile, by unit."""
    records: dict[int, dict] = {}
    for task in tasks:
        if unit_status(task.out, task.key) == "done":
            records[task.unit] = read_json(Path(task.out) / "done.json")
    return records


def _start_units(
    model, tasks: list[UnitTask], load_s: float, records: dict[int, dict]
) -> list[_LiveUnit]:
    """Mark each unit started (``unit.json``) and make or reuse its means; a unit whose input is bad
    gets its failed record in ``records`` and drops out. ``load_s`` (the model's load time) is
    counted on the first unit that gets as far as its timings."""
    from port.verdict import ParityError

    live = []
    for task in tasks:
        udir, base = Path(task.out), _base_record(task)
        hook = _stage_hook(task)
        try:
            udir.mkdir(parents=True, exist_ok=True)
            _io.write_json(
                udir / "unit.json",
                {
                    "format": DONE_FORMAT,
                    "unit": task.unit,
                    "key": task.key,
                    "folder": task.folder,
                    "label": task.label,
                },
            )
            hook(task.unit, "start")
            timings = {"model_load": round(load_s, 3)}
            load_s = 0.0  # the model loads once per batch; count it on its first unit
            t0 = time.perf_counter()
            means_dir = _ensure_means(model, task, udir)
            timings["means"] = round(time.perf_counter() - t0, 3)
            hook(task.unit, "means")
            live.append(_LiveUnit(task, base, timings, means_dir))
        except (ValueError, FileNotFoundError, ParityError) as e:
            # Bad input fails the same way on every worker: report it instead of letting Dask retry.
            records[task.unit] = _failed(base, task, e)
    return live


def _visualize_batch(
    model, live: list[_LiveUnit], records: dict[int, dict]
) -> list[tuple[_LiveUnit, dict]]:
    """The facets of every live unit in one MFV batch; each unit with its trace. If the batch fails,
    every unit of it gets its failed record in ``records`` and none is returned."""
    if not live:
        return []
    t0 = time.perf_counter()
    try:
        traces = _visualize_units(model, [(u.task, u.means_dir) for u in live])
        done = list(zip(live, traces, strict=True))
    except (ValueError, FileNotFoundError) as e:
        for u in live:
            records[u.task.unit] = _failed(u.base, u.task, e)
        done = []
    seconds = round(time.perf_counter() - t0, 3)
    for u, _ in done:
        u.timings["visualize"] = seconds  # the batch's time, shared by its units
        if len(done) > 1:
            u.timings["units_in_batch"] = len(done)
        _stage_hook(u.task)(u.task.unit, "visualize")
    return done


def _complete_unit(model, unit: _LiveUnit, trace: dict, *, evaluate: bool, t_start: float) -> dict:
    """Evaluate the unit (if asked) and write its ``done.json``; its summary record (failed, and no
    ``done.json``, when the evaluation meets bad input)."""
    from port.verdict import ParityError

    task, timings = unit.task, unit.timings
    udir = Path(task.out)
    ev = None
    try:
        if evaluate:
            from .evaluate import evaluate as evaluate_unit

            t0 = time.perf_counter()
            ev = evaluate_unit(udir, model=model, means=unit.means_dir)
            timings["evaluate"] = round(time.perf_counter() - t0, 3)
            _stage_hook(task)(task.unit, "evaluate")
    except (ValueError, FileNotFoundError, ParityError) as e:
        return _failed(unit.base, task, e)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    facets_done = sum(f["status"] == "done" for f in trace["facets"])
    record = {
        **unit.base,
        "format": DONE_FORMAT,
        "status": "done" if facets_done == len(trace["facets"]) else "facets failed",
        "message": "; ".join(
            f"facet {f['index']}: {f['message']}" for f in trace["facets"] if f["message"]
        ),
        "device": str(model.device),
        "seconds": timings,
        "facets": _facet_summary(trace, ev),
        "evaluation": None
        if ev is None
        else {
            "diversity": ev.get("diversity"),
            "nearest_in_own_cluster_fraction": ev.get("nearest_in_own_cluster_fraction"),
        },
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _io.write_json(udir / "done.json", record)  # last, atomically: the unit is complete
    return record


def _base_record(task: UnitTask) -> dict:
    return {
        "unit": task.unit,
        "label": task.label,
        "folder": task.folder,
        "key": task.key,
        "worker": _worker_name(),
    }


def _worker_name() -> str:
    try:
        from distributed import get_worker

        w = get_worker()
        return f"{w.name} ({w.address})"
    except (ImportError, ValueError):
        return f"{socket.gethostname()} pid {os.getpid()}"


def _ensure_means(model, task: UnitTask, udir: Path) -> Path:
    """The unit's mean images, computed unless a complete set is there (it is renamed into place
    whole, so a ``means/`` folder is always complete)."""
    from .means import make_means

    means_dir = udir / "means"
    sp = task.params
    if (means_dir / "clusters.json").is_file():
        return means_dir
    tmp = udir / f".means-{uuid.uuid4().hex[:8]}"
    try:
        make_means(
            model,
            task.folder,
            k=sp.k,
            m=sp.m,
            layer=sp.code_layer,
            seed=sp.means_seed,
            out=tmp,
            batch_size=sp.batch_size,
            keep_grey=sp.keep_grey,
            exclude=sp.exclude,
            progress=False,
        )
        if means_dir.exists():  # emptied by hand, or left by something else: not ours to keep
            shutil.rmtree(means_dir)
        os.replace(tmp, means_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return means_dir


def _unit_job(model, task: UnitTask, means_dir: Path):
    """The :class:`mfv.visualize.UnitJob` of one unit: its target and its mean images."""
    from .objectives import parse_target
    from .visualize import UnitJob

    sp = task.params
    shape = model.layer_shapes()[sp.layer]
    obj = parse_target(sp.layer, task.unit, softmax=sp.softmax, shape=shape)
    paths = sorted(means_dir.glob("mean_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    if len(paths) != sp.k:
        raise ValueError(f"{means_dir} holds {len(paths)} mean images, expected {sp.k}")
    extra = {
        "means": str(means_dir),
        "code_layer": sp.code_layer,
        "sweep": {"unit": task.unit, "label": task.label, "folder": task.folder, "key": task.key},
    }
    return UnitJob(
        obj,
        [_io.load_rgb(p) for p in paths],
        out=task.out,
        init_names=[str(p) for p in paths],
        clusters=list(range(len(paths))),
        extra=extra,
    )


def _visualize_units(model, units: list[tuple[UnitTask, Path]]) -> list[dict]:
    """MFV for the units' facets in one :func:`mfv.visualize.visualize_units` batch (one unit is
    exactly what :func:`mfv.visualize.visualize` runs)."""
    from .visualize import visualize_units

    sp = units[0][0].params
    jobs = [_unit_job(model, task, means_dir) for task, means_dir in units]
    return visualize_units(
        model,
        jobs,
        schedule=sp.schedule,
        seed=sp.seed,
        faithful=sp.faithful,
        resume=True,
        progress=False,
        denoiser=sp.denoiser,
    )


def _facet_summary(trace: dict, ev: dict | None) -> list[dict]:
    by_index = {f["index"]: f for f in (ev or {}).get("facets", [])}
    out = []
    for f in trace["facets"]:
        e = by_index.get(f["index"], {})
        out.append(
            {
                "index": f["index"],
                "status": f["status"],
                "image": f["image"],
                "final_activation": f["final_activation"],
                "seconds": f["seconds"],
                **{
                    k: e.get(k)
                    for k in (
                        "activation",
                        "softmax_rank",
                        "softmax_prob",
                        "cluster_activation_mean",
                        "activation_percentile_in_cluster",
                        "nearest_in_own_cluster",
                    )
                },
            }
        )
    return out
