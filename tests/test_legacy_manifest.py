"""Manifest checksums, statistics, comparisons, atomic writes and the golden reading API."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from legacy_caffe import goldens
from legacy_caffe.manifest import (
    MANIFEST_FORMAT,
    GoldenError,
    array_sha256,
    array_stats,
    bytes_identical,
    compare_dumps,
    count_outliers,
    describe_arrays,
    load_npz,
    rel_error,
    save_npz,
    verify_arrays,
    write_json,
)


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "data/conv1": rng.standard_normal((1, 4, 5, 5)).astype(np.float32),
        "diff/conv1": rng.standard_normal((1, 4, 5, 5)).astype(np.float32),
        "data/inception_3a/1x1": rng.standard_normal((1, 2, 3, 3)).astype(np.float32),
        "input/data": rng.standard_normal((1, 3, 7, 7)).astype(np.float32),
    }


def test_sha256_is_of_little_endian_values_not_the_file():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert array_sha256(a) == hashlib.sha256(a.tobytes()).hexdigest()
    assert array_sha256(a.astype(">f4")) == array_sha256(a)  # byte order does not matter
    assert array_sha256(np.asfortranarray(a)) == array_sha256(a)  # nor memory layout
    b = a.copy()
    b[1, 2] = np.nextafter(b[1, 2], np.float32(100))  # one ulp
    assert array_sha256(b) != array_sha256(a)


def test_stats_against_numpy():
    a = np.array([[-3.0, 0.0], [1.0, 2.0]], dtype=np.float32)
    s = array_stats(a)
    assert (s["min"], s["max"], s["absmax"], s["nonzero"]) == (-3.0, 2.0, 3.0, 3)
    assert s["mean"] == pytest.approx(0.0)
    assert s["std"] == pytest.approx(float(np.std(a.astype(np.float64))))


def test_describe_then_verify_round_trip_and_tampering(tmp_path):
    arrays = _arrays()
    described = describe_arrays(arrays)
    assert list(described) == list(arrays)  # dump order kept
    save_npz(tmp_path / "d.npz", arrays)
    back = load_npz(tmp_path / "d.npz")
    assert "data/inception_3a/1x1" in back  # '/' in blob names survives the zip
    assert verify_arrays(back, described) == []

    tampered = dict(back)
    tampered["diff/conv1"] = tampered["diff/conv1"].copy()
    tampered["diff/conv1"][0, 0, 0, 0] += 1e-3
    assert any("diff/conv1: sha256" in p for p in verify_arrays(tampered, described))
    reshaped = dict(back, **{"data/conv1": back["data/conv1"].reshape(1, 4, 25)})
    assert any("shape" in p for p in verify_arrays(reshaped, described))
    missing = {k: v for k, v in back.items() if k != "input/data"}
    assert any("missing arrays: input/data" in p for p in verify_arrays(missing, described))
    extra = dict(back, **{"data/extra": np.zeros(1, np.float32)})
    assert any("does not list: data/extra" in p for p in verify_arrays(extra, described))


def test_rel_error_is_max_abs_diff_over_max_abs_reference():
    b = np.array([1.0, -4.0, 2.0], dtype=np.float32)
    a = np.array([1.5, -4.0, 2.0], dtype=np.float32)
    assert rel_error(a, b) == pytest.approx(0.5 / 4.0)
    assert rel_error(b, b) == 0.0
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error(np.ones(3), np.zeros(3)) == float("inf")
    with pytest.raises(GoldenError, match="shapes differ"):
        rel_error(np.zeros(2), np.zeros(3))


def test_compare_dumps_covers_data_and_diff_only_and_needs_same_blobs():
    a, b = _arrays(0), _arrays(0)
    b["data/conv1"] = b["data/conv1"] * np.float32(1 + 1e-6)
    rel = compare_dumps(a, b)
    assert set(rel) == {k for k in a if not k.startswith("input/")}
    assert 0 < rel["data/conv1"] < 2e-6
    assert rel["diff/conv1"] == 0.0
    del b["diff/conv1"]
    with pytest.raises(GoldenError, match="only in first"):
        compare_dumps(a, b)


def test_outliers_separate_routing_flips_from_uniform_noise():
    b = np.linspace(-1, 1, 1000)
    noisy = b * (1 + 1e-7)
    flipped = b.copy()
    flipped[[3, 500]] += 0.3
    assert count_outliers(noisy, b) == 0
    assert count_outliers(flipped, b) == 2


def test_bytes_identical():
    a = _arrays(1)
    assert bytes_identical(a, {k: v.copy() for k, v in a.items()})
    b = dict(a, **{"data/conv1": a["data/conv1"] + np.float32(0)})
    b["data/conv1"] = b["data/conv1"].copy()
    b["data/conv1"].flat[3] = np.nextafter(b["data/conv1"].flat[3], np.float32(9))
    assert not bytes_identical(a, b)


def test_atomic_writes_leave_no_temp_files(tmp_path):
    (tmp_path / "m").mkdir()
    man = tmp_path / "m" / "manifest.json"
    write_json(man, {"format": MANIFEST_FORMAT, "x": [1, 2]})
    save_npz(tmp_path / "a.npz", _arrays())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.npz", "m", "manifest.json"]
    assert goldens.load_manifest("m", tmp_path)["x"] == [1, 2]
    # A failing write keeps the old file and removes its temp file.
    with pytest.raises(TypeError):
        write_json(man, {"format": MANIFEST_FORMAT, "bad": object()})
    assert goldens.load_manifest("m", tmp_path)["x"] == [1, 2]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.npz", "m", "manifest.json"]


def test_load_manifest_errors(tmp_path):
    with pytest.raises(GoldenError, match="no manifest"):
        goldens.load_manifest("absent", tmp_path)
    for model, text in (("bad", "{"), ("old", json.dumps({"format": 0}))):
        (tmp_path / model).mkdir()
        (tmp_path / model / "manifest.json").write_text(text)
    with pytest.raises(GoldenError, match="not valid JSON"):
        goldens.load_manifest("bad", tmp_path)
    with pytest.raises(GoldenError, match="format"):
        goldens.load_manifest("old", tmp_path)


# --- reading API on a synthetic golden tree -------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """golden/ with one committed set and one cache-only set whose file is not there."""
    golden_dir, cache_dir = tmp_path / "golden", tmp_path / "cache"
    committed, cached = _arrays(2), _arrays(3)
    save_npz(golden_dir / "toy" / "openblas" / "astronaut.npz", committed)
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": "toy",
        "inputs": {"astronaut": {"shape": [1, 3, 7, 7]}, "photos3": {"shape": [3, 3, 7, 7]}},
        "sets": {
            "openblas/astronaut": {
                "blas": "openblas",
                "input": "astronaut",
                "file": "openblas/astronaut.npz",
                "committed": True,
                "arrays": describe_arrays(committed),
            },
            "atlas/photos3": {
                "blas": "atlas",
                "input": "photos3",
                "file": "atlas/photos3.npz",
                "committed": False,
                "arrays": describe_arrays(cached),
            },
        },
    }
    write_json(golden_dir / "toy" / "manifest.json", manifest)
    return golden_dir, cache_dir, committed, cached


def test_list_goldens_reports_where_and_whether(tree):
    golden_dir, cache_dir, _, _ = tree
    sets = {
        (g.blas, g.input): g
        for g in goldens.list_goldens(golden_dir=golden_dir, cache_dir=cache_dir)
    }
    assert sets[("openblas", "astronaut")].committed and sets[("openblas", "astronaut")].available
    cached = sets[("atlas", "photos3")]
    assert not cached.committed and not cached.available
    assert cached.path == cache_dir / "toy" / "atlas" / "photos3.npz"
    assert cached.shape == (3, 3, 7, 7)


def test_load_golden_reads_and_verifies(tree):
    golden_dir, cache_dir, committed, cached = tree
    got = goldens.load_golden(
        "toy", "openblas", "astronaut", golden_dir=golden_dir, cache_dir=cache_dir
    )
    assert bytes_identical(got, committed)

    with pytest.raises(GoldenError, match="python -m legacy_caffe goldens --model toy"):
        goldens.load_golden("toy", "atlas", "photos3", golden_dir=golden_dir, cache_dir=cache_dir)
    with pytest.raises(GoldenError, match="has no golden set 'atlas/astronaut'"):
        goldens.load_golden("toy", "atlas", "astronaut", golden_dir=golden_dir, cache_dir=cache_dir)

    # A cache file that is not what the manifest describes is refused.
    wrong = dict(cached, **{"data/conv1": cached["data/conv1"] * 2})
    save_npz(cache_dir / "toy" / "atlas" / "photos3.npz", wrong)
    with pytest.raises(GoldenError, match="data/conv1: sha256"):
        goldens.load_golden("toy", "atlas", "photos3", golden_dir=golden_dir, cache_dir=cache_dir)
    save_npz(cache_dir / "toy" / "atlas" / "photos3.npz", cached)
    got = goldens.load_golden("toy", "atlas", "photos3", golden_dir=golden_dir, cache_dir=cache_dir)
    assert bytes_identical(got, cached)
