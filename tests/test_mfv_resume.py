"""MFV interrupted at any instant (kill -9 included) resumes to the very bytes of an uninterrupted run.

The kill tests run the loop in processes forked from one that has imported torch
(``tests/mfv_kill_child.py``), kill them with SIGKILL after a random delay, rerun until a run ends by
itself, and compare every image and the trace with an uninterrupted run: two targets in one batch,
three facets, jitter, zoom and margin, checkpoints every two steps. The default suite kills a few
times per loop; the slow suite at least 50 times per loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mfv.errors import MfvError
from mfv.loop.checkpoint import read_checkpoint
from mfv.objectives import unit
from mfv.testing import tiny_model, torch_threads
from mfv.visualize import visualize

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "mfv_kill_child.py"


class Forker:
    """The forking process of ``mfv_kill_child.py``."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def start(self, mode: str, out: Path) -> int:
        self.proc.stdin.write(f"run {mode} {out}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.startswith("pid "), f"forker said {line!r}"
        return int(line.split()[1])

    def wait(self) -> int:
        line = self.proc.stdout.readline()
        assert line.startswith("exit "), f"forker said {line!r}"
        return int(line.split()[1])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def forker():
    f = Forker()
    yield f
    f.close()


def _digest(out: Path) -> dict:
    """Every image's bytes and every trace field that does not measure time."""
    found = {}
    for job in sorted(p for p in out.iterdir() if p.is_dir()):
        for img in sorted(job.glob("facet_*.png")):
            found[f"{job.name}/{img.name}"] = img.read_bytes()
        trace = json.loads((job / "trace.json").read_text())
        assert trace["status"] == "finished"
        found[f"{job.name}/trace"] = [
            {k: v for k, v in f.items() if k not in ("seconds", "octave_seconds")}
            for f in trace["facets"]
        ]
    return found


def _temporaries(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*"))


def _kill_until_done(
    forker: Forker, mode: str, out: Path, rng, *, duration: float, kills: int
) -> int:
    """Run, killing after random delays, until a run ends by itself; the number of kills made."""
    made = 0
    while True:
        pid = forker.start(mode, out)
        if made < kills:
            time.sleep(float(rng.uniform(0, duration)))
            with contextlib.suppress(ProcessLookupError):  # it may have finished already
                os.kill(pid, signal.SIGKILL)
        status = forker.wait()
        if os.WIFSIGNALED(status):
            assert os.WTERMSIG(status) == signal.SIGKILL
            made += 1
            continue
        assert os.WEXITSTATUS(status) == 0, f"a resumed run failed (status {status}); see stderr"
        return made


def _kill_test(forker: Forker, tmp_path: Path, mode: str, kills_wanted: int, seed: int) -> int:
    # The first run pays for one-time set-up (the compiled TV kernel); the second one is timed.
    for attempt in ("warm", "ref"):
        ref = tmp_path / f"{attempt}_{mode}"
        t0 = time.perf_counter()
        forker.start(mode, ref)
        assert forker.wait() == 0
        duration = time.perf_counter() - t0
    expected = _digest(ref)
    assert len([k for k in expected if k.endswith(".png")]) == 3 * 3 + 3  # octaves + finals
    rng = np.random.default_rng(seed)
    total = chain = 0
    while total < kills_wanted:
        out = tmp_path / f"{mode}_{chain}"
        total += _kill_until_done(
            forker, mode, out, rng, duration=duration, kills=min(4, kills_wanted - total)
        )
        got = _digest(out)
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key] == expected[key], f"chain {chain}: {key} differs after kills"
        assert _temporaries(out) == [], f"chain {chain}: temporaries left"
        chain += 1
    return total


@pytest.mark.parametrize("mode", ["default", "faithful"])
def test_kill_9_then_resume_is_byte_identical(forker, tmp_path, mode):
    assert _kill_test(forker, tmp_path, mode, kills_wanted=3, seed=1) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "faithful"])
def test_kill_9_at_50_random_instants_is_byte_identical(forker, tmp_path, mode):
    assert _kill_test(forker, tmp_path, mode, kills_wanted=60, seed=2) >= 50


# -- in-process checks of the state files -------------------------------------------------------------


def _sched():
    from mfv.octaves import parse_schedule

    keys = ("iter_n", "zoom", "margin", "window", "step_size", "tv_weight")
    return parse_schedule(
        {
            "name": "t",
            "octaves": [
                dict(zip(keys, o, strict=True))
                for o in (
                    (6, None, 0, 0.3, [1, 2], [0.4, 0.4]),
                    (3, 1.2, 0, 0.3, [1.0, 1.0], [0.01, 2]),
                )
            ],
        }
    )


def _inits():
    return [
        np.random.default_rng(i).integers(40, 215, (32, 32, 3)).astype(np.uint8) for i in range(2)
    ]


def _interrupted(out: Path, at_call: int, **kw):
    from mfv.objectives import Objective

    base = unit("8", 3)
    calls = {"n": 0}

    def fn(a):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return base(a)

    obj = Objective(fn, base.layers, base.description, base.best, base.spec)
    with torch_threads(1), pytest.raises(KeyboardInterrupt):
        visualize(
            tiny_model(), obj, _inits(), schedule=_sched(), seed=1, out=out, progress=False, **kw
        )


def test_state_is_saved_inside_the_first_octave(tmp_path):
    """A stop at step 4 of the first octave keeps the steps before it (the old state kept nothing)."""
    out = tmp_path / "run"
    _interrupted(out, 5, checkpoint_steps=1)
    with np.load(out / "state" / "checkpoint.npz") as z:
        meta = json.loads(z["meta"].tobytes())
    assert meta["position"] == [0, 4]
    assert [len(f["steps"]) for f in meta["facets"]] == [4, 4]
    assert "rng_keys_0" in np.load(out / "state" / "checkpoint.npz").files


def test_time_based_checkpoints_by_default(tmp_path):
    out = tmp_path / "run"
    _interrupted(out, 4, checkpoint_seconds=0.0)
    with np.load(out / "state" / "checkpoint.npz") as z:
        assert json.loads(z["meta"].tobytes())["position"] == [0, 3]


def test_damaged_state_is_an_error_not_a_silent_restart(tmp_path):
    out = tmp_path / "run"
    _interrupted(out, 5, checkpoint_steps=1)
    for name in ("checkpoint.npz", "checkpoint.prev.npz"):
        p = out / "state" / name
        data = bytearray(p.read_bytes())
        data[len(data) // 2 :] = b"\0" * (len(data) - len(data) // 2)
        p.write_bytes(bytes(data))
    with torch_threads(1), pytest.raises(MfvError, match="--restart"):
        visualize(
            tiny_model(), unit("8", 3), _inits(), schedule=_sched(), seed=1, out=out, progress=False
        )


def _resave_npz(path: Path, **changes) -> None:
    """Rewrite a checkpoint with some arrays changed and everything else (meta included) kept."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    with path.open("wb") as f:
        np.savez(f, **arrays)


def test_checkpoints_altered_alike_are_refused_not_resumed(tmp_path):
    """Both state files changed the same way (a valid npz, valid meta): without a checksum the run
    resumed into other bytes in silence; now it is an error that offers --restart."""
    from port.errors import ToolError

    out = tmp_path / "run"
    _interrupted(out, 5, checkpoint_steps=1)
    for name in ("checkpoint.npz", "checkpoint.prev.npz"):
        p = out / "state" / name
        with np.load(p) as z:
            image = z["image_0"].copy()
        image[0, 0, 0] += 1.0
        _resave_npz(p, image_0=image)
    with torch_threads(1), pytest.raises(ToolError, match="checksum mismatch.*--restart") as e:
        visualize(
            tiny_model(), unit("8", 3), _inits(), schedule=_sched(), seed=1, out=out, progress=False
        )
    assert isinstance(e.value, MfvError)
    # --restart (resume=False) is the way out, and it gives the uninterrupted run's bytes.
    ref = tmp_path / "ref"
    kw = {"schedule": _sched(), "seed": 1, "progress": False}
    with torch_threads(1):
        visualize(tiny_model(), unit("8", 3), _inits(), out=out, resume=False, **kw)
        visualize(tiny_model(), unit("8", 3), _inits(), out=ref, **kw)
    pngs = sorted(p.name for p in ref.glob("facet_*.png"))
    assert pngs and all((out / n).read_bytes() == (ref / n).read_bytes() for n in pngs)


def test_checksum_covers_the_random_stream_and_the_metadata(tmp_path):
    out = tmp_path / "run"
    _interrupted(out, 5, checkpoint_steps=1)
    p = out / "state" / "checkpoint.npz"
    with np.load(p) as z:
        keys = z["rng_keys_1"].copy()
        meta = json.loads(z["meta"].tobytes())
    keys[0] ^= 1
    _resave_npz(p, rng_keys_1=keys)
    with pytest.raises(MfvError, match="checksum"):
        read_checkpoint(p)
    keys[0] ^= 1  # the stream restored, the metadata changed instead
    meta["facets"][0]["steps_done"] += 1
    _resave_npz(p, rng_keys_1=keys, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    with pytest.raises(MfvError, match="checksum"):
        read_checkpoint(p)


def test_finished_run_leaves_no_temporaries(tmp_path):
    out = tmp_path / "run"
    _interrupted(out, 5, checkpoint_steps=1)
    # What kill -9 of an earlier run leaves: temporaries of a process that is gone.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (out / f".facet_0.png.tmp{dead}-abcdefgh").write_bytes(b"x")
    (out / "state" / f".checkpoint.npz.tmp{dead}-abcdefgh").write_bytes(b"x")
    with torch_threads(1):
        visualize(
            tiny_model(), unit("8", 3), _inits(), schedule=_sched(), seed=1, out=out, progress=False
        )
    assert _temporaries(out) == []


def test_stops_between_two_jobs_saves_resume_to_the_same_bytes(tmp_path, monkeypatch):
    """Jobs are saved one after the other: a stop between them leaves one job a save ahead, twice
    in a row here (the second time right after resuming), and the run must still finish exactly."""
    from mfv.loop import checkpoint as V
    from mfv.visualize import UnitJob, visualize_units

    def jobs(out):
        return [
            UnitJob(unit("8", 3), _inits(), out / "a"),
            UnitJob(unit("8", 5), _inits()[:1], out / "b"),
        ]

    model = tiny_model()
    kw = {"schedule": _sched(), "seed": 1, "progress": False, "checkpoint_steps": 1}
    with torch_threads(1):
        visualize_units(model, jobs(tmp_path / "ref"), **kw)
    real = V.save_checkpoint

    def stopping_after(n_saves):
        count = {"n": 0}

        def save(out, states, position, key):
            real(out, states, position, key)
            count["n"] += 1
            if count["n"] == n_saves:
                raise KeyboardInterrupt

        return save

    out = tmp_path / "run"
    # Job a's first save (b has none yet), its third (b at its second), and a's first after resuming.
    for stop in (1, 5, 1):
        monkeypatch.setattr(V, "save_checkpoint", stopping_after(stop))
        with torch_threads(1), pytest.raises(KeyboardInterrupt):
            visualize_units(model, jobs(out), **kw)
    monkeypatch.setattr(V, "save_checkpoint", real)
    with torch_threads(1):
        visualize_units(model, jobs(out), **kw)
    for job in ("a", "b"):
        ref = sorted((tmp_path / "ref" / job).glob("facet_*.png"))
        assert ref and [p.read_bytes() for p in ref] == [
            (out / job / p.name).read_bytes() for p in ref
        ]


def test_command_line_refuses_a_changed_checkpoint_with_status_2(tmp_path, tiny_prototxt, capsys):
    """Issue 22: the same command rerun over a state changed in both files stops with one line,
    exit 2, naming the checksum and --restart; --restart then runs."""
    from mfv.cli import main

    from ._helpers import TINY_SCHEDULE

    schedule = tmp_path / "tiny.json"
    schedule.write_text(json.dumps(TINY_SCHEDULE))
    out = tmp_path / "run"
    argv = ["visualize", "--model", "caffe", "--prototxt", str(tiny_prototxt)]
    argv += ["--no-parity-check", "--quiet", "--layer", "fc", "--unit", "0", "--init", "noise"]
    argv += ["--schedule", str(schedule), "--out", str(out)]
    with torch_threads(1):
        assert main(argv) == 0
    names = [p.name for p in sorted((out / "state").glob("checkpoint*.npz"))]
    assert names == ["checkpoint.npz", "checkpoint.prev.npz"]
    for name in names:
        p = out / "state" / name
        with np.load(p) as z:
            image = z["image_0"].copy()
        _resave_npz(p, image_0=image * np.float32(0.5))
    capsys.readouterr()
    with torch_threads(1):
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checksum mismatch" in err[0] and "--restart" in err[0], err
    with torch_threads(1):
        assert main([*argv, "--restart"]) == 0
