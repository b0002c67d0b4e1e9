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

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import _io
from .errors import MfvError
from .sweep_index import write_index
from .sweep_state import (
    SWEEP_FORMAT,
    check_sweep_file,
    read_json,
    summarise,
    unit_key,
    unit_status,
)
from .sweep_units import (
    DEFAULT_CLASSES,
    SweepUnits,
    imagenet_folders,
    parse_units,
    read_classes,
    read_unit_map,
    short,
    unit_folders,
)
from .sweep_worker import SweepParams, UnitTask, probe, run_units

__all__ = [
    "sweep",
    "SweepRun",
    "SweepUnits",
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


@dataclass(frozen=True)
class SweepRun:
    """Where and how a sweep runs: the Dask cluster, retries, batching, progress.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``). Default: start a
        ``distributed.LocalCluster`` of worker processes, closed at the end.
    workers : int, optional
        Workers of the local cluster (default: one per GPU with ``device="cuda"``, otherwise
        CPU cores // ``threads``). Ignored with ``scheduler``.
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
    """

    scheduler: str | None = None
    workers: int | None = None
    retries: int = 2
    progress: bool = True
    units_per_batch: int = 1
    hook: Callable[[int, str], None] | None = None

    def check(self) -> None:
        """Refuse settings no run can use (before any work)."""
        n = self.units_per_batch
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MfvError(f"units_per_batch must be a positive int, got {n!r}")


def sweep(
    params: SweepParams,
    *,
    out: str | Path,
    units: SweepUnits,
    run: SweepRun | None = None,
) -> dict:
    """Mean images, MFV facets and evaluation for many units, one Dask task per unit.

    Parameters
    ----------
    params : SweepParams
        What every unit shares: the model, target and code layers, clustering, schedule, mode,
        device; the model's defaults fill what is left ``None``.
    out : path
        Output folder (layout in the module docstring). Rerunning with the same parameters resumes.
    units : SweepUnits
        The units of the target layer and where their images are.
    run : SweepRun, optional
        The cluster, retries, batching and progress (default: a local cluster, as
        :class:`SweepRun` says).

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
        units, an unknown model or layer.
    RuntimeError
        No scheduler at ``scheduler``, or workers that cannot import this package.
    """
    from tqdm.auto import tqdm

    run = run or SweepRun()
    out = Path(out).resolve()
    sp = params.resolved()
    run.check()
    units.check()
    check_sweep_file(out, sp.identity())
    say = tqdm.write if run.progress else (lambda *_a, **_k: None)
    client, cluster = _connect(run.scheduler, run.workers, sp.threads, sp.device, say)
    try:
        found = _submit_probe(client, sp, run.scheduler)
        plan, labels, records, status = _plan(out, sp, units, found)
        todo = [u for u in plan if status[u] != "done"]
        say(
            f"mfv sweep: {len(plan) - len(todo)} of {len(plan)} unit(s) already done, {len(todo)} to run "
            f"({sum(status[u] == 'partial' for u in todo)} resumed) on {_n_workers(client)} worker(s); out {out}"
        )
        return _run(client, out, todo, plan, labels, sp, run, records, found)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _plan(out: Path, sp: SweepParams, units: SweepUnits, found: dict):
    """Each chosen unit's folder and key, label, record so far and status; ``sweep.json`` written.

    Refuses units that a sweep with other parameters started in ``out``.
    """
    params = sp.identity()
    n_units = found["layer_shape"][0]
    chosen = parse_units(units.units, n_units)
    folders, labels = unit_folders(chosen, n_units, units.images, units.unit_map, units.classes)
    plan = {u: (folders[u], unit_key(params, folders[u])) for u in chosen}
    status = {u: unit_status(out / str(u), key) for u, (_, key) in plan.items()}
    other = [u for u, s in status.items() if s == "other"]
    if other:
        raise MfvError(
            f"{out}: unit(s) {short(other)} were made by a sweep with other parameters "
            "(their unit.json keys differ); use another out folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    _io.write_json(
        out / "sweep.json",
        {
            "format": SWEEP_FORMAT,
            "params": params,
            "model_name": found["name"],
            "layer_shape": found["layer_shape"],
            "parity": found["parity"],
        },
    )
    records: dict[int, dict] = {}
    for u, s in status.items():
        if s == "done":
            records[u] = read_json(out / str(u) / "done.json")
        else:
            records[u] = {
                "unit": u,
                "label": labels[u],
                "folder": str(folders[u]),
                "status": "pending",
            }
    return plan, labels, records, status


def _connect(scheduler: str | None, workers: int | None, threads: int, device, say):
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise MfvError(
            f"mfv sweep runs on Dask distributed, which is not installed ({e}): "
            "pip install 'dask[distributed]' (or the project's [sweep] extra)"
        ) from None

    if scheduler:
        if workers is not None:
            say(f"--workers {workers} ignored: the cluster at {scheduler} has its own workers")
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise MfvError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        cluster = None
    else:
        import torch

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise MfvError(f"--device {device}: CUDA is not available here")
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


def _submit_probe(client, sp: SweepParams, scheduler: str | None) -> dict:
    """The model loaded once on a worker before the sweep: its name, target layer shape, parity."""
    args = (sp.model, sp.device, sp.threads, sp.layer, sp.code_layer, sp.evaluate)
    fut = client.submit(probe, *args, pure=False)
    try:
        return fut.result()
    except ModuleNotFoundError as e:
        raise MfvError(
            f"the Dask workers{' at ' + scheduler if scheduler else ''} cannot import "
            f"this package ({e}); install it on every worker (mfv/SWEEP.md)"
        ) from None


def _run(
    client,
    out: Path,
    todo: list[int],
    plan: dict,
    labels: dict,
    sp: SweepParams,
    run: SweepRun,
    records: dict[int, dict],
    found: dict,
) -> dict:
    """Run the units to do and collect their records as they finish; ``summary.json`` follows the
    run, and ``summary.json`` and ``index.html`` are written at its end (or interruption)."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    params = sp.identity()
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    futures = _submit_units(client, out, todo, plan, labels, sp, run)
    tally = {"completed": 0, "failed": 0}
    last_write = 0.0

    def summary(final: bool) -> dict:
        wall = time.perf_counter() - t0
        return summarise(
            out, records, params, found, started, wall, tally["completed"], len(todo), final
        )

    bar = tqdm(total=len(todo), desc="units", unit="unit", disable=not run.progress, smoothing=0.1)
    try:
        for fut in as_completed(futures):
            units = futures[fut]
            _collect(units, _records_of(fut, units, plan, labels), records, tally, bar)
            hours = (time.perf_counter() - t0) / 3600
            per_hour = f"{tally['completed'] / hours:.0f}" if hours > 0 else "-"
            bar.set_postfix(failed=tally["failed"], per_hour=per_hour)
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


def _submit_units(client, out: Path, todo, plan, labels, sp: SweepParams, run: SweepRun) -> dict:
    """One Dask task per batch of ``run.units_per_batch`` units; future -> its units."""
    tasks = [
        UnitTask(u, str(plan[u][0]), str(out / str(u)), plan[u][1], labels[u], sp, run.hook)
        for u in todo
    ]
    n = run.units_per_batch
    chunks = [tasks[i : i + n] for i in range(0, len(tasks), n)]
    # Lower units first: priority breaks Dask's ties in the order a person reads the index.
    return {
        client.submit(
            run_units,
            c,
            key=f"mfv-units-{c[0].unit}-{c[0].key}-{len(c)}",
            retries=run.retries,
            pure=False,
            priority=-c[0].unit,
        ): [t.unit for t in c]
        for c in chunks
    }


def _records_of(fut, units: list[int], plan: dict, labels: dict) -> list[dict]:
    """A finished task's unit records; failed records when the task itself failed."""
    try:
        return fut.result()
    except Exception as e:  # retries spent, or the worker died too often (KilledWorker)
        return [
            {
                "unit": u,
                "label": labels[u],
                "folder": str(plan[u][0]),
                "status": "failed",
                "message": f"unit {u}: {type(e).__name__}: {e}",
            }
            for u in units
        ]


def _collect(units: list[int], recs: list[dict], records: dict, tally: dict, bar) -> None:
    for u, rec in zip(units, recs, strict=True):
        records[u] = rec
        tally["completed"] += 1
        if rec.get("status") != "done":
            tally["failed"] += 1
            bar.write(f"unit {u}: {rec.get('status')}: {rec.get('message')}")
