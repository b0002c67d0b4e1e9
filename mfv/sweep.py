"""Many units at once: mean images, facets and evaluation for every unit of a layer, on Dask.

A study visualises every class of a network (1000 units x 10 facets) or every channel of a layer.
:func:`sweep` turns each unit into one Dask task (``make_means`` -> ``visualize`` -> ``evaluate``,
all facets of the unit in one batch) and runs the tasks on a local cluster or on an existing one
(``scheduler="tcp://host:8786"``). Dask does the scheduling, the retries and the bookkeeping of dead
workers; this module only decides what a unit is, where its images are, and when it is finished.

Layout of ``out``::

    sweep.json            the study's parameters (a rerun with other parameters is refused)
    summary.json          per unit: status, timings, evaluation figures; run rate
    index.html            one self-contained page: every unit's facets, linking to <unit>/index.html
    <unit>/unit.json      written when the unit starts: its key (parameters + folder)
    <unit>/means/         mean images, clusters.json, tsne.png (renamed into place when complete)
    <unit>/facet_*.png, trace.json, index.html, state/      what ``visualize`` writes
    <unit>/evaluation.json, evaluation.html                 what ``evaluate`` writes
    <unit>/done.json      written last, atomically: the unit is complete

A unit is complete exactly when ``done.json`` holds the current key. A rerun skips complete units
and redoes the rest: complete means are reused, ``visualize`` resumes from its octave state. A worker
that dies loses only the task it ran: Dask reruns it elsewhere (``retries``; deaths count against
``distributed.scheduler.allowed-failures``).
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from port.atomic import write_text_atomic

from . import _io
from .octaves import Schedule

if TYPE_CHECKING:  # torch is imported where a worker or a sweep needs it, not on import
    from .models import ModelArgs

__all__ = [
    "sweep",
    "parse_units",
    "read_unit_map",
    "read_classes",
    "imagenet_folders",
    "unit_status",
    "unit_key",
    "SweepParams",
    "UnitTask",
    "write_index",
    "DEFAULT_CLASSES",
]

log = logging.getLogger(__name__)

#: The 1000 ImageNet classes in output order (``wnid name`` per line), as the original MFV code used.
DEFAULT_CLASSES = Path("reference") / "mfv-original" / "synset_words.txt"

SUMMARY_FORMAT = "mfv-sweep-summary/1"
SWEEP_FORMAT = "mfv-sweep/1"
DONE_FORMAT = "mfv-sweep-unit/1"


# -- units and their images ----------------------------------------------------------------------


def parse_units(spec: str | int | Sequence[int], n_units: int | None = None) -> list[int]:
    """The units a sweep covers, sorted, without duplicates.

    Parameters
    ----------
    spec : str, int or sequence of int
        ``"all"``; a comma-separated list of units and inclusive ranges (``"0-999"``,
        ``"3,7,10-12"``); or the path of a text file holding such lists, one or more per line
        (``#`` starts a comment). A sequence of ints is taken as is.
    n_units : int, optional
        Number of units of the target layer: required for ``"all"``, and every unit must lie in
        ``0 .. n_units - 1`` when given.

    Returns
    -------
    list of int

    Raises
    ------
    ValueError
        For malformed items (naming the file and line for a file), reversed ranges, units out of
        range, an empty selection, or ``"all"`` without ``n_units``.
    """
    if isinstance(spec, int | np.integer):
        units, where = [int(spec)], "units"
    elif not isinstance(spec, str):
        units, where = [int(u) for u in spec], "units"
    elif spec.strip().lower() == "all":
        if n_units is None:
            raise ValueError("--units all needs the number of units of the layer")
        units, where = list(range(n_units)), "units"
    elif Path(spec).is_file():
        units, where = [], str(spec)
        for lineno, line in enumerate(Path(spec).read_text().splitlines(), 1):
            text = line.split("#", 1)[0].strip()
            if text:
                units += _parse_list(text, f"{spec}:{lineno}")
    else:
        units, where = _parse_list(spec, "--units"), "--units"
    if not units:
        raise ValueError(f"{where}: no units selected")
    if n_units is not None:
        bad = [u for u in units if not 0 <= u < n_units]
        if bad:
            raise ValueError(
                f"{where}: unit {bad[0]} is out of range: the layer has {n_units} units (0-{n_units - 1})"
            )
    return sorted(set(units))


def _parse_list(text: str, where: str) -> list[int]:
    units: list[int] = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if m is None:
            raise ValueError(f"{where}: {item!r} is not a unit or a range like 0-999")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise ValueError(f"{where}: range {item!r} runs backwards")
        units.extend(range(lo, hi + 1))
    return units


def read_classes(path: str | Path | None = None) -> list[tuple[str, str]]:
    """ImageNet classes in output order: ``(wnid, name)`` per line of a ``synset_words.txt`` file.

    Parameters
    ----------
    path : path, optional
        Default: ``reference/mfv-original/synset_words.txt`` under :func:`port.zoo.shared_root`.
    """
    if path is None:
        from port.zoo import shared_root

        path = shared_root() / DEFAULT_CLASSES
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no class list at {path} (give --classes FILE or --unit-map FILE)")
    classes = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not re.fullmatch(r"n\d{8}", wnid):
            raise ValueError(
                f"{path}:{lineno}: expected 'nXXXXXXXX class name', got {line.strip()[:60]!r}"
            )
        classes.append((wnid, name.strip()))
    return classes


def read_unit_map(path: str | Path, root: str | Path | None = None) -> dict[int, Path]:
    """A unit -> image folder mapping from a JSON or TSV file.

    Parameters
    ----------
    path : path
        JSON: an object ``{"945": "n07720875", ...}`` or a list whose index is the unit. Anything
        else: text lines ``unit<TAB>folder`` (or ``unit folder``); blank lines and ``#`` comments are
        skipped.
    root : path, optional
        Relative folders are resolved against it (the images root), otherwise against the map file's
        own folder.

    Returns
    -------
    dict of int -> Path
        Absolute folders.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no unit map at {path}")
    base = Path(root) if root is not None else path.parent
    text = path.read_text()
    raw: dict[int, str] = {}
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        items = (
            enumerate(data)
            if isinstance(data, list)
            else data.items()
            if isinstance(data, dict)
            else None
        )
        if items is None:
            raise ValueError(f"{path}: expected a JSON object unit -> folder or a list of folders")
        for k, v in items:
            if not str(k).strip().isdigit() or not isinstance(v, str):
                raise ValueError(f"{path}: entry {k!r}: {v!r} is not unit -> folder")
            raw[int(k)] = v
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = (
                line.rstrip("\n").split("\t", 1) if "\t" in line else line.strip().split(None, 1)
            )
            if len(parts) != 2 or not parts[0].strip().isdigit() or not parts[1].strip():
                raise ValueError(
                    f"{path}:{lineno}: expected 'unit<TAB>folder', got {line.strip()[:60]!r}"
                )
            u = int(parts[0])
            if u in raw:
                raise ValueError(f"{path}:{lineno}: unit {u} is mapped twice")
            raw[u] = parts[1].strip()
    return {u: (base / f).resolve() for u, f in raw.items()}


def imagenet_folders(root: str | Path, classes: list[tuple[str, str]]) -> dict[int, Path]:
    """Unit ``i`` -> ``root/<wnid of class i>`` (an ImageNet-style ``ROOT/<wnid>/*.JPEG`` tree)."""
    root = Path(root).resolve()
    return {i: root / wnid for i, (wnid, _) in enumerate(classes)}


# -- what a worker runs --------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepParams:
    """What every unit of one sweep shares, as sent to the workers (picklable, hashable).

    :meth:`identity` holds the fields that decide a unit's result: it is ``sweep.json``'s
    ``params`` and, with the unit's image folder, the unit key. ``device``, ``threads``,
    ``batch_size`` and ``evaluate`` decide only how and where the result is computed.
    """

    model: ModelArgs
    layer: str
    softmax: bool
    code_layer: str
    k: int
    m: int
    means_seed: int
    seed: int
    schedule: Schedule
    faithful: bool
    denoiser: str
    keep_grey: bool
    exclude: tuple[str, ...]
    device: str = "cpu"
    threads: int = 1
    batch_size: int = 16
    evaluate: bool = True

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


def _probe(args: ModelArgs, device: str, threads: int, layer: str, code_layer: str) -> dict:
    """Run on a worker before the sweep: the target layer's shape (and the model loads at all)."""
    model, _ = _worker_model(args, device, threads)
    shapes = model.layer_shapes()
    for what, name in (("target layer", layer), ("code layer", code_layer)):
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


def unit_key(params: dict, folder: str | Path) -> str:
    """The identity of one unit's result: the study's parameters plus its image folder."""
    blob = json.dumps([params, str(folder)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def unit_status(unit_dir: str | Path, key: str) -> str:
    """``"done"``, ``"partial"`` (started, not finished: redo), ``"new"``, or ``"other"`` (started
    or finished by a sweep with other parameters)."""
    unit_dir = Path(unit_dir)
    started = _read_json(unit_dir / "unit.json")
    if started is None:
        return "new"
    if started.get("key") != key:
        return "other"
    done = _read_json(unit_dir / "done.json")
    return "done" if done is not None and done.get("key") == key else "partial"


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # absent, or torn by a crash before atomic writes existed: not done
    return data if isinstance(data, dict) else None


def _run_unit(task: UnitTask) -> dict:
    """One unit from images to evaluation; returns its summary record (also ``done.json``)."""
    return _run_units([task])[0]


@dataclass
class _LiveUnit:
    """A unit whose means are ready, on its way through the MFV batch and its evaluation."""

    task: UnitTask
    base: dict  # the summary record's common fields (:func:`_base_record`)
    timings: dict[str, float | int]  # the record's "seconds", in the order the stages ran
    means_dir: Path


def _run_units(tasks: list[UnitTask]) -> list[dict]:
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
            records[task.unit] = _read_json(Path(task.out) / "done.json")
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


# -- the sweep -----------------------------------------------------------------------------------


def sweep(
    *,
    model: str,
    out: str | Path,
    units: str | Sequence[int] = "all",
    images: str | Path | None = None,
    unit_map: str | Path | None = None,
    classes: str | Path | None = None,
    prototxt: str | Path | None = None,
    caffemodel: str | Path | None = None,
    weights: str | Path | None = None,
    weight_seed: int = 0,
    parity_check: bool = True,
    parity_file: str | Path | None = None,
    proto: str | Path | None = None,
    plugins: Sequence[str] = (),
    device: str = "cpu",
    layer: str | None = None,
    softmax: bool = False,
    code_layer: str | None = None,
    k: int = 10,
    m: int = 15,
    means_seed: int = 0,
    seed: int = 1,
    schedule: str | Path | None = None,
    faithful: bool = False,
    denoiser: str | None = None,
    keep_grey: bool = True,
    exclude: Sequence[str] = (),
    batch_size: int = 16,
    evaluate: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    retries: int = 2,
    progress: bool = True,
    units_per_batch: int = 1,
    hook: Callable[[int, str], None] | None = None,
) -> dict:
    """Mean images, MFV facets and evaluation for many units, one Dask task per unit.

    Parameters
    ----------
    model : str
        Model name as for :func:`mfv.models.load_model` (``caffenet``, ``torchvision.vgg16``, or
        ``caffe`` with ``prototxt``).
    out : path
        Output folder (layout in the module docstring). Rerunning with the same parameters resumes.
    units : str or sequence of int
        Units of ``layer``: ``"all"``, ``"0-999"``, ``"3,7,10-12"``, a file of such lists, or
        ints (:func:`parse_units`).
    images : path, optional
        ImageNet-style root ``images/<wnid>/*``: unit ``i`` uses the folder of the ``i``-th class of
        ``classes``. With ``unit_map``, the folder relative paths are resolved against.
    unit_map : path, optional
        JSON or TSV file mapping unit -> image folder (:func:`read_unit_map`), for layers whose
        units are not the ImageNet classes.
    classes : path, optional
        ``synset_words.txt``-style class list (default: the one under ``port.zoo.shared_root()``).
    prototxt, caffemodel, weights, weight_seed, parity_check, parity_file, proto, plugins
        Model options as for :func:`mfv.models.load_model`. Workers read the files at the same
        (absolute) paths.
    device : str
        ``cpu``, ``cuda`` (a local cluster's workers are spread over the visible GPUs) or
        ``cuda:<i>``.
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
    schedule : path, optional
        Octave schedule JSON (default: the model's, ``mfv/schedules/``).
    faithful : bool
        Reproduce the original's arithmetic (:func:`mfv.visualize.visualize`).
    denoiser : {"skimage", "torch"}, optional
        TV implementation; default as :func:`mfv.visualize.visualize` (``torch``, or ``skimage``
        in faithful mode).
    keep_grey, exclude, batch_size
        As for :func:`mfv.means.make_means`.
    evaluate : bool
        Run :func:`mfv.evaluate.evaluate` on each unit (its figures go into ``summary.json``).
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``). Default: start a
        ``distributed.LocalCluster`` of worker processes, closed at the end.
    workers : int, optional
        Workers of the local cluster (default: one per GPU with ``device="cuda"``, otherwise
        CPU cores // ``threads_per_worker``). Ignored with ``scheduler``.
    threads_per_worker : int
        CPU threads each worker gives torch and OpenMP; a worker runs one unit at a time (a unit is
        a batch already; finer concurrency only makes threads fight for the cores).
    retries : int
        Dask retries of a unit whose task raised an unexpected exception. Bad input (too few
        images, a missing folder, a refused parity check) fails the unit at once and is reported.
    progress : bool
        Progress bar (units done, rate, ETA) and messages on the terminal.
    units_per_batch : int
        Units whose facets share one MFV batch (one Dask task; :func:`mfv.visualize.visualize_units`).
        Larger batches read the fully connected weights once for more facets, at the price of
        coarser resumption (a batch's units finish together) and results that equal the one-unit
        runs up to the float rounding of a larger batch. Default 1.
    hook : callable, optional
        ``hook(unit, stage)`` called on the worker after each stage (``"start"``, ``"means"``,
        ``"visualize"``, ``"evaluate"``) of a unit; must be picklable (tests use it to kill workers).

    Returns
    -------
    dict
        The summary (also ``out/summary.json``): ``units`` (one record per unit, in unit order:
        status, seconds per stage, per-facet activation, softmax rank, nearest-in-own-cluster,
        diversity), ``counts``, ``run`` (wall time, units completed, units per hour).

    Raises
    ------
    ValueError, FileNotFoundError
        Bad units, mapping, missing image folders (named), an ``out`` that holds another sweep's
        units, an unknown layer.
    RuntimeError
        No scheduler at ``scheduler``, or workers that cannot import this package.
    """
    from tqdm.auto import tqdm

    from .models import MODELS
    from .octaves import load_schedule

    out = Path(out).resolve()
    spec = MODELS.get(model)
    if spec is None and model != "caffe":
        raise ValueError(f"unknown model {model!r}; known: caffe, {', '.join(MODELS)}")
    layer = layer or (spec.target_layer if spec else None)
    code_layer = code_layer or (spec.code_layer if spec else None)
    if layer is None or code_layer is None:
        raise ValueError(
            f"model {model!r} has no default target/code layer: give layer= and code_layer="
        )
    sched_path = (
        Path(schedule)
        if schedule
        else (spec.schedule_path if spec else MODELS["caffenet"].schedule_path)
    )
    sched = load_schedule(sched_path)
    if (
        isinstance(units_per_batch, bool)
        or not isinstance(units_per_batch, int)
        or units_per_batch < 1
    ):
        raise ValueError(f"units_per_batch must be a positive int, got {units_per_batch!r}")
    if denoiser is None:
        denoiser = "skimage" if faithful else "torch"
    if images is None and unit_map is None:
        raise ValueError("give images= (an ImageNet-style root) or unit_map=")
    from .models import ModelArgs

    margs = ModelArgs(
        model,
        *(None if p is None else str(p) for p in (prototxt, caffemodel, weights)),
        weight_seed,
        parity_check,
        None if parity_file is None else str(parity_file),
        None if proto is None else str(proto),
        tuple(plugins),
    ).resolved()
    sp = SweepParams(
        margs,
        layer,
        softmax,
        code_layer,
        k,
        m,
        means_seed,
        seed,
        sched,
        faithful,
        denoiser,
        keep_grey,
        tuple(exclude),
        str(device),
        threads_per_worker,
        batch_size,
        evaluate,
    )
    params = sp.identity()
    _check_sweep_file(out, params)
    say = tqdm.write if progress else (lambda *_a, **_k: None)

    client, cluster = _connect(scheduler, workers, threads_per_worker, device, say)
    try:
        probe = _submit_probe(
            client, margs, str(device), threads_per_worker, layer, code_layer, scheduler
        )
        n_units = probe["layer_shape"][0]
        chosen = parse_units(units, n_units)
        folders, labels = _folders(chosen, n_units, images, unit_map, classes)
        plan = {u: (folders[u], unit_key(params, folders[u])) for u in chosen}
        status = {u: unit_status(out / str(u), key) for u, (_, key) in plan.items()}
        other = [u for u, s in status.items() if s == "other"]
        if other:
            raise ValueError(
                f"{out}: unit(s) {_short(other)} were made by a sweep with other parameters "
                "(their unit.json keys differ); use another out folder"
            )
        out.mkdir(parents=True, exist_ok=True)
        _io.write_json(
            out / "sweep.json",
            {
                "format": SWEEP_FORMAT,
                "params": params,
                "model_name": probe["name"],
                "layer_shape": probe["layer_shape"],
                "parity": probe["parity"],
            },
        )
        records: dict[int, dict] = {}
        for u, s in status.items():
            if s == "done":
                records[u] = _read_json(out / str(u) / "done.json")
            else:
                records[u] = {
                    "unit": u,
                    "label": labels[u],
                    "folder": str(folders[u]),
                    "status": "pending",
                }
        todo = [u for u in chosen if status[u] != "done"]
        say(
            f"mfv sweep: {len(chosen) - len(todo)} of {len(chosen)} unit(s) already done, {len(todo)} to run "
            f"({sum(status[u] == 'partial' for u in todo)} resumed) on {_n_workers(client)} worker(s); out {out}"
        )
        run = _run(
            client,
            out,
            todo,
            plan,
            labels,
            sp,
            retries,
            progress,
            hook,
            records,
            probe,
            units_per_batch,
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return run


def _check_sweep_file(out: Path, params: dict) -> None:
    old = _read_json(out / "sweep.json")
    if old is None or old.get("params") == params:
        return
    differ = sorted(
        k
        for k in set(params) | set(old.get("params", {}))
        if params.get(k) != old.get("params", {}).get(k)
    )
    raise ValueError(
        f"{out} holds a sweep with other parameters (differ: {', '.join(differ)}); "
        "use another out folder"
    )


def _short(units: list[int], n: int = 8) -> str:
    return ", ".join(map(str, units[:n])) + (
        f" and {len(units) - n} more" if len(units) > n else ""
    )


def _folders(
    chosen: list[int], n_units: int, images, unit_map, classes
) -> tuple[dict[int, Path], dict[int, str]]:
    if unit_map is not None:
        mapping = read_unit_map(unit_map, images)
        unmapped = [u for u in chosen if u not in mapping]
        if unmapped:
            raise ValueError(f"{unit_map}: no folder for unit(s) {_short(unmapped)}")
        labels = {u: mapping[u].name for u in chosen}
    else:
        cls = read_classes(classes)
        if len(cls) != n_units:
            raise ValueError(
                f"the target layer has {n_units} units but the class list has {len(cls)} "
                "classes: give a unit map (--unit-map FILE)"
            )
        mapping = imagenet_folders(images, cls)
        labels = {u: f"{cls[u][0]} {cls[u][1]}" for u in chosen}
    missing = [u for u in chosen if not mapping[u].is_dir()]
    if missing:
        raise FileNotFoundError(
            f"no image folder for unit(s) {_short(missing)}: "
            + ", ".join(str(mapping[u]) for u in missing[:3])
        )
    return {u: mapping[u] for u in chosen}, labels


def _connect(scheduler: str | None, workers: int | None, threads: int, device, say):
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise RuntimeError(
            f"mfv sweep runs on Dask distributed, which is not installed ({e}): "
            "pip install 'dask[distributed]' (or the project's [sweep] extra)"
        ) from None

    if scheduler:
        if workers is not None:
            say(f"--workers {workers} ignored: the cluster at {scheduler} has its own workers")
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise RuntimeError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        cluster = None
    else:
        import torch

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"--device {device}: CUDA is not available here")
        if workers is None:
            if str(device) == "cuda":
                workers = torch.cuda.device_count()
            else:
                workers = max(1, (os.cpu_count() or 1) // max(1, threads))
        env = {
            v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        }
        # Idle OpenMP threads sleep instead of spinning: workers share the cores with each other
        # (and often with other jobs), where spinning threads take the cores from working ones;
        # measured at load 5-6 on 2 vCPUs, a 2-thread CaffeNet step ran 1.7-2.3x faster.
        env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
        # threads_per_worker=1: one unit at a time per worker; torch gets `threads` inside the task.
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            env=env,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    if "dashboard" in client.scheduler_info().get("services", {}):
        import importlib.util

        # Without bokeh on the scheduler's machine the link serves only a notice saying so.
        hint = (
            ""
            if importlib.util.find_spec("bokeh")
            else " (the pages need bokeh: pip install bokeh)"
        )
        say(f"Dask dashboard: {client.dashboard_link}{hint}")
    return client, cluster


def _n_workers(client) -> int:
    return len(client.scheduler_info().get("workers", {}))


def _submit_probe(client, margs, device, threads, layer, code_layer, scheduler) -> dict:
    fut = client.submit(_probe, margs, device, threads, layer, code_layer, pure=False)
    try:
        return fut.result()
    except ModuleNotFoundError as e:
        raise RuntimeError(
            f"the Dask workers{' at ' + scheduler if scheduler else ''} cannot import "
            f"this package ({e}); install it on every worker (mfv/SWEEP.md)"
        ) from None


def _run(
    client,
    out: Path,
    todo: list[int],
    plan,
    labels,
    sp: SweepParams,
    retries,
    progress,
    hook,
    records,
    probe,
    units_per_batch: int,
) -> dict:
    from distributed import as_completed
    from tqdm.auto import tqdm

    params = sp.identity()
    tasks = [
        UnitTask(u, str(plan[u][0]), str(out / str(u)), plan[u][1], labels[u], sp, hook)
        for u in todo
    ]
    chunks = [tasks[i : i + units_per_batch] for i in range(0, len(tasks), units_per_batch)]
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    # Lower units first: priority breaks Dask's ties in the order a person reads the index.
    futures = {
        client.submit(
            _run_units,
            c,
            key=f"mfv-units-{c[0].unit}-{c[0].key}-{len(c)}",
            retries=retries,
            pure=False,
            priority=-c[0].unit,
        ): [t.unit for t in c]
        for c in chunks
    }
    completed = failed = 0
    last_write = 0.0

    def summary(final: bool) -> dict:
        wall = time.perf_counter() - t0
        return _summary(out, records, params, probe, started, wall, completed, len(todo), final)

    bar = tqdm(total=len(todo), desc="units", unit="unit", disable=not progress, smoothing=0.1)
    try:
        for fut in as_completed(futures):
            units = futures[fut]
            try:
                recs = fut.result()
            except Exception as e:  # retries spent, or the worker died too often (KilledWorker)
                recs = [
                    {
                        "unit": u,
                        "label": labels[u],
                        "folder": str(plan[u][0]),
                        "status": "failed",
                        "message": f"unit {u}: {type(e).__name__}: {e}",
                    }
                    for u in units
                ]
            for u, rec in zip(units, recs, strict=True):
                records[u] = rec
                completed += 1
                if rec.get("status") != "done":
                    failed += 1
                    bar.write(f"unit {u}: {rec.get('status')}: {rec.get('message')}")
            hours = (time.perf_counter() - t0) / 3600
            bar.set_postfix(
                failed=failed, per_hour=f"{completed / hours:.0f}" if hours > 0 else "-"
            )
            bar.update(len(units))
            if time.perf_counter() - last_write > 10:  # the summary on disk follows the run
                _io.write_json(out / "summary.json", summary(False))
                last_write = time.perf_counter()
    except BaseException:
        for fut in futures:
            fut.cancel()
        _io.write_json(out / "summary.json", summary(False))
        write_index(out, list(records.values()), params)
        raise
    finally:
        bar.close()
    result = summary(True)
    _io.write_json(out / "summary.json", result)
    write_index(out, list(records.values()), params)
    return result


def _summary(
    out: Path,
    records: dict[int, dict],
    params: dict,
    probe: dict,
    started: str,
    wall: float,
    completed: int,
    todo: int,
    final: bool,
) -> dict:
    recs = [records[u] for u in sorted(records)]
    counts: dict[str, int] = {}
    for r in recs:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    done_secs = [
        r["seconds"]["total"] for r in recs if r.get("status") == "done" and r.get("seconds")
    ]
    return {
        "format": SUMMARY_FORMAT,
        "out": str(out),
        "model": probe["name"],
        "parity": probe["parity"],
        "params": {k: v for k, v in params.items() if k != "schedule"},
        "schedule": params["schedule"].get("name"),
        "finished": final,
        "counts": counts,
        "run": {
            "started": started,
            "wall_seconds": round(wall, 3),
            "units_run": todo,
            "units_completed": completed,
            "units_per_hour": round(completed / (wall / 3600), 2)
            if wall > 0 and completed
            else None,
        },
        "unit_seconds_mean": round(float(np.mean(done_secs)), 3) if done_secs else None,
        "units": recs,
    }


# -- the overview page ---------------------------------------------------------------------------

_CSS = (
    "body{font-family:sans-serif;margin:1em}.u{display:inline-block;vertical-align:top;margin:4px;"
    "padding:4px;border:1px solid #ccc;width:%dpx}.u img{margin:1px}.u p{margin:2px;font-size:12px}"
    ".bad{color:#b00}.pending{color:#888}a{text-decoration:none}"
)


def _thumb_uri(path: Path, side: int) -> str | None:
    try:  # JPEG: 10000 thumbnails must stay a page, not a download
        return _io.file_data_uri(path, max_side=side, fmt="JPEG")
    except (OSError, ValueError):
        return None


def write_index(
    out: str | Path, records: list[dict], params: dict | None = None, *, side: int = 64
) -> Path:
    """Write ``out/index.html``: every unit's facet thumbnails (inline), linking to its own page.

    Parameters
    ----------
    out : path
        The sweep folder.
    records : list of dict
        Unit records (``summary.json``'s ``units``).
    params : dict, optional
        The sweep's parameters, shown at the top.
    side : int
        Thumbnail size in pixels.

    Returns
    -------
    Path
        The page.
    """
    out = Path(out)
    cells, counts = [], {}
    for r in sorted(records, key=lambda r: r["unit"]):
        u, status = r["unit"], r.get("status", "?")
        counts[status] = counts.get(status, 0) + 1
        udir = out / str(u)
        thumbs = []
        for f in sorted(udir.glob("facet_*.png"), key=_facet_order):
            if re.fullmatch(r"facet_\d+\.png", f.name):
                uri = _thumb_uri(f, side)
                if uri:
                    thumbs.append(
                        f"<img src='{uri}' width='{side}' height='{side}' alt='{html.escape(f.stem)}'>"
                    )
        secs = (r.get("seconds") or {}).get("total")
        ev = r.get("evaluation") or {}
        acts = [f.get("activation") for f in r.get("facets", []) if f.get("activation") is not None]
        lines = [
            f"<b>{u}</b> {html.escape(str(r.get('label', '')))}",
            f"<span class='{'' if status == 'done' else 'pending' if status == 'pending' else 'bad'}'>"
            f"{html.escape(status)}</span>" + (f", {secs:.0f} s" if secs is not None else ""),
        ]
        if acts:
            lines.append(
                f"activation mean {np.mean(acts):.3g}, nearest own {ev.get('nearest_in_own_cluster_fraction')}"
            )
        if r.get("message") and status != "done":
            lines.append(f"<span class='bad'>{html.escape(str(r['message'])[:200])}</span>")
        body = "".join(f"<p>{x}</p>" for x in lines) + "".join(thumbs)
        link = (udir / "index.html").is_file()
        cells.append(
            "<div class='u'>"
            + (f"<a href='{u}/index.html'>{body}</a>" if link else body)
            + "</div>"
        )
    width = max(200, 5 * (side + 4))
    head = ", ".join(f"{n} {html.escape(s)}" for s, n in sorted(counts.items()))
    meta = (
        ""
        if params is None
        else (
            "<details><summary>parameters</summary><pre>"
            + html.escape(json.dumps(params, indent=1, default=str))
            + "</pre></details>"
        )
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>MFV sweep {html.escape(out.name)}</title>"
        f"<style>{_CSS % width}</style></head><body><h1>MFV sweep: {len(records)} units</h1>"
        f"<p>{head}. Each unit links to its own page (mean images, facets, nearest images, "
        f"activation curves); figures in <a href='summary.json'>summary.json</a>.</p>{meta}"
        + "".join(cells)
        + "</body></html>"
    )
    path = out / "index.html"
    write_text_atomic(path, page)
    return path


def _facet_order(p: Path) -> tuple[int, str]:
    m = re.search(r"\d+", p.stem)
    return (int(m.group()) if m else -1, p.name)
