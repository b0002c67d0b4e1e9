"""mfv.diff: metrics on synthetic images and traces; the port against the real-Caffe references (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mfv import _io
from mfv.diff import diff_runs, first_divergence, image_metrics, trace_divergence, write_html

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "golden" / "mfv"


def _img(seed: int = 0, shape=(40, 50, 3)) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, shape).astype(np.uint8)


def test_identical_images_are_perfect():
    a = _img()
    m = image_metrics(a, a)
    assert m["max"] == m["mean"] == m["p99"] == 0.0
    assert m["psnr"] == math.inf
    assert m["ssim"] == pytest.approx(1.0)


def test_constant_offset_gives_exact_figures():
    a = np.full((30, 30, 3), 100, np.uint8)
    b = a + 3
    m = image_metrics(a, b)
    assert m["max"] == m["mean"] == m["p99"] == 3.0
    assert m["psnr"] == pytest.approx(10 * math.log10(255**2 / 9))


def test_one_outlier_shows_in_max_and_mean_not_p99():
    a = _img(1, (20, 20, 3))
    b = a.copy()
    b[5, 5, 1] = a[5, 5, 1] ^ 0x80  # exactly 128 away
    m = image_metrics(a, b)
    assert m["max"] == 128.0
    assert m["mean"] == pytest.approx(128.0 / a.size)
    assert m["p99"] == 0.0
    assert 0.9 < m["ssim"] < 1.0


def test_ssim_drops_for_unrelated_images():
    assert image_metrics(_img(1), _img(2))["ssim"] < 0.1


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        image_metrics(_img(0, (10, 10, 3)), _img(0, (12, 10, 3)))


def _trace(n: int = 30, *, seed: int = 0) -> list[dict]:
    rng = np.random.RandomState(seed)
    steps = []
    for i in range(n):
        octave = 1 if i < 20 else 2
        steps.append({"octave": octave, "step": i if octave == 1 else i - 20,
                      "activation": float(100 + 10 * rng.randn()), "best_unit": 3,
                      "step_size": 1.0, "tv_weight": 0.4 + 0.01 * i,
                      "mean_abs_grad": float(0.002 + 1e-4 * rng.rand()),
                      "offset": [0, 0] if octave == 1 else [int(rng.randint(45)), int(rng.randint(45))]})  # fmt: skip
    return steps


def test_first_divergence_finds_the_step_and_ignores_noise():
    ref = _trace()
    assert first_divergence(ref, ref)["index"] is None
    out = json.loads(json.dumps(ref))
    out[4]["activation"] *= 1 + 1e-6  # below the float-noise threshold
    out[12]["mean_abs_grad"] *= 1 + 1e-3  # above it
    d = first_divergence(ref, out)
    assert (d["index"], d["octave"], d["step"]) == (12, 1, 12)
    assert d["offset"]["index"] is None and d["schedule"]["index"] is None
    assert first_divergence(ref, out, rtol=1e-2)["index"] is None


def test_offsets_and_schedule_are_exact():
    ref = _trace()
    out = json.loads(json.dumps(ref))
    out[23]["offset"] = [out[23]["offset"][1] + 1, out[23]["offset"][0]]
    out[7]["step_size"] = 2.0
    d = first_divergence(ref, out)
    assert (d["offset"]["index"], d["offset"]["octave"], d["offset"]["step"]) == (23, 2, 3)
    assert d["schedule"]["index"] == 7
    assert d["index"] is None  # activations untouched


def test_trace_divergence_is_relative_to_the_rms_activation():
    ref = [{"octave": 1, "step": i, "activation": a, "mean_abs_grad": 1.0, "offset": [0, 0],
            "step_size": 1.0, "tv_weight": 0.4} for i, a in enumerate([3.0, -4.0])]  # fmt: skip
    out = json.loads(json.dumps(ref))
    out[1]["activation"] = -4.5
    cur = trace_divergence(ref, out)
    assert cur["activation"] == pytest.approx([0.0, 0.5 / math.sqrt(12.5)])


def _write_run(folder: Path, images: dict[tuple[int, int], np.ndarray], steps: list[dict]) -> None:
    folder.mkdir(parents=True)
    for (k, j), im in images.items():
        _io.save_image(folder / f"facet_{k}_octave{j}.png", im)
    (folder / "trace.json").write_text(
        json.dumps(
            {"format": "mfv-trace/1", "facets": [{"index": 0, "steps": steps, "seconds": 1.0}]}
        )
    )


def _noisy(base: np.ndarray, amount: int, seed: int) -> np.ndarray:
    noise = np.random.RandomState(seed).randint(-amount, amount + 1, base.shape)
    return np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8)


def test_diff_runs_verdict_against_the_floor(tmp_path: Path):
    base = _img(5, (30, 30, 3))
    steps = _trace()
    _write_run(tmp_path / "ref", {(0, 1): base, (0, 2): base}, steps)
    _write_run(tmp_path / "floor", {(0, 1): _noisy(base, 4, 1), (0, 2): _noisy(base, 4, 2)}, steps)
    _write_run(tmp_path / "close", {(0, 1): _noisy(base, 4, 3), (0, 2): _noisy(base, 4, 4)}, steps)
    _write_run(tmp_path / "far", {(0, 1): _noisy(base, 4, 3), (0, 2): _noisy(base, 30, 4)}, steps)
    r = diff_runs(tmp_path / "ref", tmp_path / "close", floor=tmp_path / "floor", factor=1.5)
    assert r["verdict"]["passed"], r["verdict"]
    fr = r["facets"][0]
    assert set(fr["octaves"]) == {"1", "2"} and fr["final"]["octave"] == 2
    assert 0.5 < fr["octaves"]["1"]["ratio"]["mean"] < 1.5
    r = diff_runs(tmp_path / "ref", tmp_path / "far", floor=tmp_path / "floor", factor=1.5)
    assert not r["verdict"]["passed"]
    assert all("octave 2" in p for p in r["verdict"]["problems"])  # octave 1 alone would pass

    tr = json.loads((tmp_path / "close" / "trace.json").read_text())
    tr["facets"][0]["init"] = "/x/mean_1.jpg"
    (tmp_path / "close" / "trace.json").write_text(json.dumps(tr))
    tr["facets"][0]["init"] = "mean_0.jpg"
    (tmp_path / "ref" / "trace.json").write_text(json.dumps(tr))
    r2 = diff_runs(tmp_path / "ref", tmp_path / "close", floor=tmp_path / "floor", factor=1.5)
    assert r2["verdict"]["problems"] == [
        "facet 0: started from mean_1.jpg, the reference from "
        "mean_0.jpg (give --init in the reference's facet order)"
    ]

    html_path = tmp_path / "v.html"
    write_html(r, html_path)
    text = html_path.read_text()
    assert "data:image/png;base64," in text and "FAIL" in text
    assert "http://" not in text and "https://" not in text  # self-contained


def test_cli_exit_status(tmp_path: Path):
    base = _img(6, (24, 24, 3))
    steps = _trace()
    _write_run(tmp_path / "ref", {(0, 1): base}, steps)
    _write_run(tmp_path / "floor", {(0, 1): _noisy(base, 2, 1)}, steps)
    _write_run(tmp_path / "out", {(0, 1): _noisy(base, 40, 2)}, steps)
    cmd = [sys.executable, "-m", "mfv", "diff", str(tmp_path / "ref"), str(tmp_path / "out"),
           "--floor", str(tmp_path / "floor"), "--json", str(tmp_path / "d.json")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout
    assert json.loads((tmp_path / "d.json").read_text())["verdict"]["passed"] is False
    proc = subprocess.run(cmd[:8] + ["--factor", "100"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the port against real Caffe -------------------------------------------------------------------

#: Allowed (port vs ATLAS) / (OpenBLAS vs ATLAS), mean and p99, every octave. Measured on facets
#: 0-2: 0.97-1.03 (mean), 0.88-1.14 (p99). The port with one quirk wrong (octave 1's step ramped
#: 1.0 -> 2.0 with true division) measured 2.8-3.0x after octave 1, 1.6-1.9x after octave 2 (and
#: only 1.10-1.18x at the end): this factor fails it at octaves 1 and 2.
PORT_FACTOR = 1.5
#: Steps of octave 1 that stay within float noise (NOISE_RTOL) of ATLAS: the deterministic part.
#: Measured first divergence beyond 1e-4: port steps 2, 3, 4; OpenBLAS 2, 4, 4 (facets 0, 1, 2); the
#: port with scikit-image 0.13's denoiser border (--denoiser torch) already at step 1 (3.6e-4).
DETERMINISTIC_STEPS = 2


def _weights_and_verdict() -> Path:
    from legacy_caffe.goldens import golden_weights

    weights = golden_weights("caffenet")
    if not Path(str(weights) + ".parity.json").exists():
        subprocess.run([sys.executable, "-m", "parity", "run", "--model", "caffenet", "--quiet",
                        "--no-local"], cwd=REPO, check=True)  # fmt: skip
    return weights


@pytest.mark.slow
def test_port_is_as_close_to_atlas_as_openblas_is(tmp_path: Path):
    """``mfv visualize --faithful`` for the committed facets, all four octaves (~2.5 min, 2 cores).

    The loop amplifies float noise about tenfold per step at first (relative activation difference
    1e-7 at step 1, 1e-4 at step 2-4, 1e-2 by step 7, in both the port and OpenBLAS), so a per-step
    comparison is honest only for the first steps, and the image comparison only relative to the
    other Caffe build. Requires: octave by octave, mean and p99 |port - ATLAS| within PORT_FACTOR x
    |OpenBLAS - ATLAS|; the crop offsets and the schedule (step size, TV weight) of all 370 steps
    equal (exact quantities); the first DETERMINISTIC_STEPS steps within float noise of ATLAS.
    """
    man = json.loads((GOLDEN / "manifest.json").read_text())
    facets = sorted(int(k) for k in man["builds"]["atlas"]["facets"])
    means = REPO.parent / "shared" / "reference" / "mfv-original" / "mean_images" / "n07720875"
    if not means.is_dir():
        pytest.skip(f"{means} not found")
    # the port numbers its facets 0.. in --init order; the references by mean image
    assert facets == list(range(len(facets))), "give the port the reference's facets in order"
    weights = _weights_and_verdict()
    assert _file_sha256(weights) == man["builds"]["atlas"]["weights_sha256"]
    cmd = [sys.executable, "-m", "mfv", "visualize", "--model", "caffenet", "--caffemodel",
           str(weights), "--unit", "945", "--faithful", "--seed", "1", "--threads", "1", "--quiet",
           "--out", str(tmp_path / "port")]  # fmt: skip
    for k in facets:
        cmd += ["--init", str(means / f"mean_{k}.jpg")]
    subprocess.run(cmd, cwd=REPO, check=True)
    r = diff_runs(
        GOLDEN / "atlas", tmp_path / "port", floor=GOLDEN / "openblas", factor=PORT_FACTOR
    )
    write_html(r, tmp_path / "diff.html")
    assert r["verdict"]["passed"], r["verdict"]["problems"]
    for fr in r["facets"]:
        assert set(fr["octaves"]) == {"1", "2", "3", "4"}
        port, floor = fr["divergence"]["out"], fr["divergence"]["floor"]
        assert port["steps"] == floor["steps"] == 370
        assert floor["index"] >= DETERMINISTIC_STEPS, floor  # the two Caffe builds, as measured
        assert port["index"] >= DETERMINISTIC_STEPS, port


def _file_sha256(path: Path) -> str:
    from legacy_caffe.mfv_reference import file_sha256

    return file_sha256(path)
