"""What a sweep keeps on disk: its parameters, each unit's key and status, and the summary."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .errors import MfvError

__all__ = [
    "DONE_FORMAT",
    "SUMMARY_FORMAT",
    "SWEEP_FORMAT",
    "check_sweep_file",
    "read_json",
    "summarise",
    "unit_key",
    "unit_status",
]

SUMMARY_FORMAT = "mfv-sweep-summary/1"

SWEEP_FORMAT = "mfv-sweep/1"

DONE_FORMAT = "mfv-sweep-unit/1"


def unit_key(params: dict, folder: str | Path) -> str:
    """The identity of one unit's result: the study's parameters plus its image folder."""
    blob = json.dumps([params, str(folder)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def unit_status(unit_dir: str | Path, key: str) -> str:
    """``"done"``, ``"partial"`` (started, not finished: redo), ``"new"``, or ``"other"`` (started
    or finished by a sweep with other parameters)."""
    unit_dir = Path(unit_dir)
    started = read_json(unit_dir / "unit.json")
    if started is None:
        return "new"
    if started.get("key") != key:
        return "other"
    done = read_json(unit_dir / "done.json")
    return "done" if done is not None and done.get("key") == key else "partial"


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # absent, or torn by a crash before atomic writes existed: not done
    return data if isinstance(data, dict) else None


def check_sweep_file(out: Path, params: dict) -> None:
    old = read_json(out / "sweep.json")
    if old is None or old.get("params") == params:
        return
    differ = sorted(
        k
        for k in set(params) | set(old.get("params", {}))
        if params.get(k) != old.get("params", {}).get(k)
    )
    raise MfvError(
        f"{out} holds a sweep with other parameters (differ: {', '.join(differ)}); "
        "use another out folder"
    )


def summarise(
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
