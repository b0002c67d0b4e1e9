"""``mfv sweep``: unit parsing, unit -> folder mapping, skip/redo, and a 2-worker Dask sweep of seeded
CaffeNet that survives a killed worker and resumes to byte-identical outputs."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mfv import sweep as sw
from mfv import sweep_state, sweep_units, sweep_worker
from mfv.models import ModelArgs

from ._helpers import TINY_SCHEDULE

distributed = pytest.importorskip("distributed")

UNITS = [0, 1, 2, 3]
TOO_FEW = 4  # a class with fewer images than k * m: fails alone, the sweep goes on


# -- parse_units ---------------------------------------------------------------------------------


def test_parse_units_ranges_lists_and_all():
    assert sw.parse_units("0-3") == [0, 1, 2, 3]
    assert sw.parse_units("7, 3,1-2,3") == [1, 2, 3, 7]
    assert sw.parse_units("all", 5) == [0, 1, 2, 3, 4]
    assert sw.parse_units("ALL", 2) == [0, 1]
    assert sw.parse_units([5, 1, 5]) == [1, 5]
    assert sw.parse_units(945, 1000) == [945]
    assert sw.parse_units("0-999", 1000) == list(range(1000))


def test_huge_ranges_are_refused_before_they_are_expanded():
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(
            ValueError, match="unit 99999999999 is out of range: the layer has 1000"
        ):
            sw.parse_units("0-99999999999", 1000)
        with pytest.raises(ValueError, match="unit 5000 is out of range"):
            sw.parse_units("5000-99999999999", 1000)
        with pytest.raises(ValueError, match="more than 10,000,000 units"):
            sw.parse_units("0-99999999999")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A list of 1e11 ints would need terabytes; the refusals above allocate next to nothing.
    assert peak < 1 << 20


@pytest.mark.parametrize(
    ("k", "m", "message"), [(0, 15, "k must be"), (-1, 2, "k must be"), (10, 0, "m must be")]
)
def test_k_and_m_are_checked_before_any_work(k, m, message, tmp_path):
    # Before: m = 0 averaged no images into NaN means saved as uint8, and the sweep exited 0.
    params = sw.SweepParams(ModelArgs("caffenet", parity_check=False), k=k, m=m)
    with pytest.raises(ValueError, match=message):
        sw.sweep(params, out=tmp_path / "o", units=sw.SweepUnits("0", images=tmp_path))
    assert not (tmp_path / "o").exists()


def test_parse_units_file(tmp_path):
    f = tmp_path / "units.txt"
    f.write_text("# classes of the study\n945\n0-2, 10  # a range and one more\n\n  500\n")
    assert sw.parse_units(str(f), 1000) == [0, 1, 2, 10, 500, 945]
    f.write_text("1\n2-x\n")
    with pytest.raises(ValueError, match=r"units.txt:2: '2-x' is not a unit"):
        sw.parse_units(str(f))
    f.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no units selected"):
        sw.parse_units(str(f))


@pytest.mark.parametrize(
    "spec, n, message",
    [
        ("5-3", None, "runs backwards"),
        ("a", None, "'a' is not a unit"),
        ("-1", None, "not a unit"),
        ("0-1000", 1000, "unit 1000 is out of range: the layer has 1000 units"),
        ("all", None, "needs the number of units"),
        ("", None, "no units selected"),
    ],
)
def test_parse_units_errors(spec, n, message):
    with pytest.raises(ValueError, match=message):
        sw.parse_units(spec, n)


# -- unit -> folder ------------------------------------------------------------------------------


def test_unit_map_json_object_and_list(tmp_path):
    root = tmp_path / "imgs"
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"3": "a", "10": "/abs/b"}))
    assert sw.read_unit_map(f, root) == {3: (root / "a").resolve(), 10: Path("/abs/b")}
    # without a root, relative folders are the map file's neighbours
    assert sw.read_unit_map(f)[3] == (tmp_path / "a").resolve()
    f.write_text(json.dumps(["x", "y"]))
    assert sw.read_unit_map(f, root) == {0: (root / "x").resolve(), 1: (root / "y").resolve()}
    f.write_text(json.dumps({"one": "x"}))
    with pytest.raises(ValueError, match="map.json: entry 'one'"):
        sw.read_unit_map(f)
    f.write_text("{broken")
    with pytest.raises(ValueError, match="map.json: not valid JSON"):
        sw.read_unit_map(f)


def test_unit_map_tsv(tmp_path):
    f = tmp_path / "map.tsv"
    f.write_text("# unit\tfolder\n0\tclass zero\n\n7 seven\n")
    m = sw.read_unit_map(f, tmp_path)
    assert m == {0: (tmp_path / "class zero").resolve(), 7: (tmp_path / "seven").resolve()}
    f.write_text("0\ta\n0\tb\n")
    with pytest.raises(ValueError, match=r"map.tsv:2: unit 0 is mapped twice"):
        sw.read_unit_map(f)
    f.write_text("zero\ta\n")
    with pytest.raises(ValueError, match=r"map.tsv:1: expected 'unit<TAB>folder'"):
        sw.read_unit_map(f)
    with pytest.raises(FileNotFoundError, match="no unit map"):
        sw.read_unit_map(tmp_path / "nope.tsv")


def test_imagenet_classes_and_folders(shared, tmp_path):
    classes = sw.read_classes()
    assert len(classes) == 1000
    assert classes[945] == ("n07720875", "bell pepper")
    assert sw.imagenet_folders(tmp_path, classes)[945] == tmp_path.resolve() / "n07720875"
    bad = tmp_path / "words.txt"
    bad.write_text("n01440764 tench\nnot-a-wnid thing\n")
    with pytest.raises(ValueError, match=r"words.txt:2: expected 'nXXXXXXXX class name'"):
        sw.read_classes(bad)


def test_missing_folders_and_class_count_are_named(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("n00000001 one\nn00000002 two\nn00000003 three\n")
    (tmp_path / "n00000002").mkdir()
    with pytest.raises(FileNotFoundError, match=r"unit\(s\) 0, 2: .*n00000001"):
        sweep_units.unit_folders([0, 1, 2], 3, tmp_path, None, words)
    folders, labels = sweep_units.unit_folders([1], 3, tmp_path, None, words)
    assert folders == {1: tmp_path.resolve() / "n00000002"} and labels == {1: "n00000002 two"}
    with pytest.raises(ValueError, match="layer has 256 units but the class list has 3"):
        sweep_units.unit_folders([1], 256, tmp_path, None, words)
    umap = tmp_path / "m.tsv"
    umap.write_text("1\tn00000002\n")
    with pytest.raises(ValueError, match=r"m.tsv: no folder for unit\(s\) 5"):
        sweep_units.unit_folders([1, 5], 256, tmp_path, umap, None)
    assert sweep_units.unit_folders([1], 256, tmp_path, umap, None)[0] == {
        1: tmp_path.resolve() / "n00000002"
    }


# -- skip / redo ---------------------------------------------------------------------------------


def test_unit_status(tmp_path):
    params = {"k": 2, "m": 2}
    key = sw.unit_key(params, tmp_path / "a")
    assert (
        key != sw.unit_key({"k": 3, "m": 2}, tmp_path / "a") != sw.unit_key(params, tmp_path / "b")
    )
    u = tmp_path / "0"
    assert sw.unit_status(u, key) == "new"
    u.mkdir()
    assert sw.unit_status(u, key) == "new"  # created, nothing written yet
    (u / "unit.json").write_text(json.dumps({"key": key}))
    assert sw.unit_status(u, key) == "partial"
    (u / "done.json").write_text('{"key": "' + key[:5])  # torn: not done
    assert sw.unit_status(u, key) == "partial"
    (u / "done.json").write_text(json.dumps({"key": key}))
    assert sw.unit_status(u, key) == "done"
    assert sw.unit_status(u, "another") == "other"


def test_a_sweep_with_other_parameters_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    params = {"k": 2, "layer": "fc8"}
    (out / "sweep.json").write_text(json.dumps({"params": params}))
    sweep_state.check_sweep_file(out, params)  # same parameters: fine
    with pytest.raises(ValueError, match=r"holds a sweep with other parameters \(differ: k\)"):
        sweep_state.check_sweep_file(out, {"k": 3, "layer": "fc8"})


def test_index_page_links_units_and_inlines_thumbnails(tmp_path):
    (tmp_path / "4").mkdir()
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "4" / "facet_0.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "4" / "facet_0_octave1.png")
    (tmp_path / "4" / "index.html").write_text("<html></html>")
    records = [
        {
            "unit": 4,
            "label": "n0 four",
            "status": "done",
            "seconds": {"total": 3.0},
            "facets": [{"activation": 2.0}],
            "evaluation": {"nearest_in_own_cluster_fraction": "1/1"},
        },
        {"unit": 1, "label": "<one>", "status": "failed", "message": "unit 1: too few images"},
    ]
    page = sw.write_index(tmp_path, records, {"k": 1}).read_text()
    assert page.count("data:image/jpeg;base64,") == 1  # the facet, not its octave snapshot
    assert "href='4/index.html'" in page and "href='1/index.html'" not in page
    assert "&lt;one&gt;" in page and "too few images" in page
    assert page.index("<b>1</b>") < page.index("<b>4</b>")


# -- the sweep on a local Dask cluster -----------------------------------------------------------


def _kill_once(marker: str, unit: int, stage: str, u: int, s: str) -> None:
    """A sweep hook: the first time ``unit`` reaches ``stage``, its worker process dies (SIGKILL)."""
    if u == unit and s == stage and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture()
def image_tree(shared, tmp_path) -> Path:
    """ImageNet-style ROOT/<wnid>/*.JPEG for classes 0-3: crops of four scikit-image photographs."""
    from skimage import data

    root = tmp_path / "imagenet"
    classes = sw.read_classes()
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    for u in [*UNITS, TOO_FEW]:
        d = root / classes[u][0]
        d.mkdir(parents=True)
        p = photos[u % len(photos)]
        for j in range(5 if u != TOO_FEW else 3):  # k * m = 4 are needed
            y, x = rng.integers(0, p.shape[0] - 120), rng.integers(0, p.shape[1] - 120)
            Image.fromarray(p[y : y + 120, x : x + 120]).save(
                d / f"{classes[u][0]}_{j}.JPEG", quality=90
            )
    return root


def _bytes(out: Path) -> dict[str, bytes]:
    files = [
        *out.glob("*/facet_?.png"),
        *out.glob("*/means/mean_*.png"),
        *out.glob("*/means/mean_*.jpg"),
    ]
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(files)}


def test_sweep_survives_a_killed_worker_and_resumes_identically(image_tree, tmp_path, capsys):
    import cloudpickle
    from distributed import Client, LocalCluster

    from mfv.cli import main

    # The hook travels to spawned workers, which need not be able to import the tests package.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    schedule = tmp_path / "tiny.json"
    schedule.write_text(json.dumps(TINY_SCHEDULE))
    out, marker = tmp_path / "out", tmp_path / "killed"
    summary = sw.sweep(
        sw.SweepParams(ModelArgs("caffenet", parity_check=False), k=2, m=2, schedule=schedule),
        units=sw.SweepUnits("0-4", images=image_tree),
        run=sw.SweepRun(
            workers=2, progress=False, hook=functools.partial(_kill_once, str(marker), 1, "means")
        ),
        out=out,
    )
    assert marker.exists(), "the hook did not kill a worker"
    assert [r["unit"] for r in summary["units"]] == [*UNITS, TOO_FEW]
    assert summary["counts"] == {"done": 4, "failed": 1}, summary["units"]
    assert summary["units"][TOO_FEW]["message"].startswith(f"unit {TOO_FEW} (")
    assert "only 3 usable images" in summary["units"][TOO_FEW]["message"]
    assert not (out / str(TOO_FEW) / "done.json").exists()
    assert summary["run"]["units_completed"] == 5 and summary["run"]["units_per_hour"] > 0
    for u in UNITS:
        rec = json.loads((out / str(u) / "done.json").read_text())
        assert rec["status"] == "done" and len(rec["facets"]) == 2
        assert all(f["softmax_rank"] is not None for f in rec["facets"])
        assert set(rec["seconds"]) >= {"means", "visualize", "evaluate", "total"}
        assert (out / str(u) / "index.html").is_file() and (
            out / str(u) / "evaluation.json"
        ).is_file()
    assert json.loads((out / "summary.json").read_text())["counts"] == {"done": 4, "failed": 1}
    page = (out / "index.html").read_text()
    assert page.count("data:image/jpeg") == 8 and "href='3/index.html'" in page
    assert "only 3 usable images" in page
    before = _bytes(out)
    assert len(before) == 4 * 2 * 3

    # Unit 2 loses its facets and state (means kept), unit 3 everything; 0 and 1 are complete.
    for p in [out / "2" / "done.json", *(out / "2").glob("facet_*"), out / "2" / "trace.json"]:
        p.unlink()
    shutil.rmtree(out / "2" / "state")
    shutil.rmtree(out / "3")
    mtime = (out / "0" / "done.json").stat().st_mtime_ns
    capsys.readouterr()
    # The rerun goes through the command line to a cluster that was already running (--scheduler).
    env = {"OMP_NUM_THREADS": "1"}
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            env=env,
            dashboard_address=None,
            silence_logs=40,
        ) as cluster,
        Client(cluster) as client,
    ):
        assert (
            main(
                [
                    "sweep",
                    "--model",
                    "caffenet",
                    "--no-parity-check",
                    "--images",
                    str(image_tree),
                    "--units",
                    "0-4",
                    "--k",
                    "2",
                    "--m",
                    "2",
                    "--schedule",
                    str(schedule),
                    "--scheduler",
                    cluster.scheduler_address,
                    "--threads-per-worker",
                    "1",
                    "--out",
                    str(out),
                ]
            )
            == 3
        )  # unit 4 fails again
        assert (
            len(client.scheduler_info()["workers"]) == 2
        )  # the sweep leaves a cluster it did not start
    printed = capsys.readouterr()
    assert "2 of 5 unit(s) already done, 3 to run (2 resumed)" in printed.err + printed.out
    assert "5 units: 4 done, 1 failed" in printed.out
    assert (out / "0" / "done.json").stat().st_mtime_ns == mtime  # skipped, untouched
    assert json.loads((out / "summary.json").read_text())["run"]["units_run"] == 3
    assert _bytes(out) == before


def test_units_per_batch_share_one_batch_and_match_one_unit_runs(image_tree, tmp_path):
    """run_units (what one Dask task runs) with two good units and one that has too few images:
    the bad one fails alone, the good ones share one MFV batch and give the facets of one-unit runs
    up to a larger batch's float rounding."""
    from mfv.octaves import parse_schedule

    classes = sw.read_classes()
    margs = ModelArgs("caffenet", parity_check=False)
    sp = sw.SweepParams(
        margs,
        "fc8",
        False,
        "fc7",
        2,
        2,
        0,
        1,
        parse_schedule(TINY_SCHEDULE),
        False,
        "torch",
        False,
        (),
        evaluate=False,
    )

    def tasks(out: Path, units: list[int]) -> list[sw.UnitTask]:
        return [
            sw.UnitTask(
                u,
                str(image_tree / classes[u][0]),
                str(out / str(u)),
                sw.unit_key(sp.identity(), image_tree / classes[u][0]),
                classes[u][0],
                sp,
            )
            for u in units
        ]

    batched = sweep_worker.run_units(tasks(tmp_path / "b", [0, 1, TOO_FEW]))
    single = [sweep_worker.run_units(t)[0] for t in ([x] for x in tasks(tmp_path / "s", [0, 1]))]
    assert [r["status"] for r in batched] == ["done", "done", "failed"]
    assert "only 3 usable images" in batched[2]["message"]
    assert all(r["seconds"]["units_in_batch"] == 2 for r in batched[:2])
    assert all("units_in_batch" not in r["seconds"] for r in single)
    for u in (0, 1):
        for f in range(2):
            a = np.asarray(Image.open(tmp_path / "b" / str(u) / f"facet_{f}.png"), dtype=np.int16)
            b = np.asarray(Image.open(tmp_path / "s" / str(u) / f"facet_{f}.png"), dtype=np.int16)
            # Measured on this test (4 facets): at most 2 grey levels, mean at most 0.046; three of
            # the four differ in fewer than 0.04% of their pixels, by 1.
            d = np.abs(a - b)
            assert d.max() <= 3 and d.mean() < 0.1
    assert sw.unit_status(tmp_path / "b" / "0", batched[0]["key"]) == "done"


def test_probe_checks_the_softmax_blob_before_any_unit(tiny_prototxt, tmp_path):
    """Issue 22: a net without the softmax blob the evaluation needs failed every unit after its
    facets were computed; the probe that runs before any unit now names it (and --no-evaluate)."""
    lines = tiny_prototxt.read_text().splitlines()
    no_prob = tmp_path / "tiny.prototxt"
    no_prob.write_text("\n".join(x for x in lines if 'type: "Softmax"' not in x) + "\n")
    margs = ModelArgs("caffe", prototxt=str(no_prob), parity_check=False)
    with pytest.raises(ValueError, match=r"no softmax blob .*--no-evaluate.* 'prob' in tiny"):
        sweep_worker.probe(margs, "cpu", 1, "fc", "fc")
    found = sweep_worker.probe(margs, "cpu", 1, "fc", "fc", evaluate=False)
    assert found["layer_shape"] == [5]  # fc: num_output 5
    with pytest.raises(ValueError, match="no code layer 'fc7'"):
        sweep_worker.probe(margs, "cpu", 1, "fc", "fc7", evaluate=False)
