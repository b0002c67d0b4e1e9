"""The torch split-Bregman TV denoiser against scikit-image (the installed release) and against a
plain-Python transcription of scikit-image's raster loop (for the 0.13 border, which the installed
release no longer has).

Measured agreement (float64): max abs difference about 1e-12 grey levels on 0..255 data and equal
iteration counts, so the float64 tolerances below (1e-8) are loose by four orders of magnitude and
still tight enough that one sweep more or fewer (which moves pixels by about eps = 1e-3) fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data, transform
from skimage.restoration import denoise_tv_bregman as sk_denoise

from mfv.tv_bregman import denoise_tv_bregman, jacobi_steps

TIGHT = 1e-8  # float64: measured ~1e-12 (rounding order only)
ISSUE_BOUND = 0.05  # grey levels, the parity bound of issue 7


def sk_ref(
    img_hwc: np.ndarray,
    weight: float,
    *,
    max_num_iter: int = 100,
    eps: float = 1e-3,
    isotropic: bool = True,
) -> tuple[np.ndarray, int]:
    """scikit-image's result and the number of sweeps it ran.

    scikit-image does not report the count; the result with ``max_num_iter = m`` equals the full
    result exactly iff ``m`` is at least the count, so bisect on that.
    """

    def run(m: int) -> np.ndarray:
        return sk_denoise(
            img_hwc, weight=weight, max_num_iter=m, eps=eps, isotropic=isotropic, channel_axis=None
        )

    full = run(max_num_iter)
    lo, hi = 0, max_num_iter
    while lo < hi:
        mid = (lo + hi) // 2
        if np.array_equal(run(mid), full):
            hi = mid
        else:
            lo = mid + 1
    # Bisection finds the last sweep that changed anything. scikit-image always runs the first
    # sweep, and when sweep `lo` still failed the test (rms change > eps), it ran one more sweep
    # that changed nothing exactly (a fixed point) and stopped there.
    if max_num_iter and (
        lo == 0 or (lo < max_num_iter and np.sqrt(np.mean((run(lo) - run(lo - 1)) ** 2)) > eps)
    ):
        lo += 1
    return full.reshape(img_hwc.shape), lo


def loop_ref(
    img_hwc: np.ndarray,
    weight: float,
    *,
    max_num_iter: int = 100,
    eps: float = 1e-3,
    isotropic: bool = True,
    border: str = "current",
) -> tuple[np.ndarray, int]:
    """scikit-image's raster Gauss-Seidel loop, pixel by pixel, with either border (small images)."""
    rows, cols, dims = img_hwc.shape
    f = img_hwc.astype(np.float64)
    out = np.zeros((rows + 2, cols + 2, dims))
    dx, dy, bx, by = (np.zeros_like(out) for _ in range(4))
    out[1:-1, 1:-1] = f
    out[0, 1:-1], out[1:-1, 0] = f[1], f[:, 1]
    last_r, last_c = (rows - 1, cols - 1) if border == "current" else (rows - 2, cols - 2)
    out[-1, 1:-1], out[1:-1, -1] = f[last_r], f[:, last_c]
    lam = 2.0 * weight
    norm = weight + 4 * lam
    rmse, n = math.inf, 0
    while n < max_num_iter and rmse > eps:
        acc = 0.0
        for r in range(1, rows + 1):
            for c in range(1, cols + 1):
                for k in range(dims):
                    prev = out[r, c, k]
                    ux, uy = out[r, c + 1, k] - prev, out[r + 1, c, k] - prev
                    new = (
                        lam
                        * (
                            out[r + 1, c, k]
                            + out[r - 1, c, k]
                            + out[r, c + 1, k]
                            + out[r, c - 1, k]
                            + dx[r, c - 1, k]
                            - dx[r, c, k]
                            + dy[r - 1, c, k]
                            - dy[r, c, k]
                            - bx[r, c - 1, k]
                            + bx[r, c, k]
                            - by[r - 1, c, k]
                            + by[r, c, k]
                        )
                        + weight * f[r - 1, c - 1, k]
                    ) / norm
                    out[r, c, k] = new
                    acc += (new - prev) ** 2
                    tx, ty = ux + bx[r, c, k], uy + by[r, c, k]
                    if isotropic:
                        s = math.sqrt(tx * tx + ty * ty)
                        dxx, dyy = s * lam * tx / (s * lam + 1), s * lam * ty / (s * lam + 1)
                    else:
                        dxx = math.copysign(max(abs(tx) - 1 / lam, 0.0), tx)
                        dyy = math.copysign(max(abs(ty) - 1 / lam, 0.0), ty)
                    dx[r, c, k], dy[r, c, k] = dxx, dyy
                    bx[r, c, k] += ux - dxx
                    by[r, c, k] += uy - dyy
        rmse = math.sqrt(acc / f.size)
        n += 1
    return out[1:-1, 1:-1], n


def to_chw(img_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img_hwc.transpose(2, 0, 1)))


def to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).double().numpy()


def photo(name: str, size: int = 227) -> np.ndarray:
    """A skimage.data photograph as float64 0..255, resized to size x size (RGB)."""
    img = getattr(data, name)()
    return transform.resize(img, (size, size), anti_aliasing=True) * 255.0


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: photo(name) for name in ("astronaut", "chelsea", "coffee")}


# -- photographs at the network's size ----------------------------------------------------------


@pytest.mark.parametrize(("name", "weight"), [("astronaut", 0.4), ("coffee", 2.4)])
def test_photographs_227_match_skimage(photos: dict, name: str, weight: float) -> None:
    img = photos[name]
    ref = sk_denoise(img, weight=weight, max_num_iter=100, eps=1e-3, channel_axis=None)
    out = denoise_tv_bregman(to_chw(img), weight=weight)
    assert np.abs(to_hwc(out) - ref).max() < TIGHT


def test_mfv_call_on_mid_optimisation_batch(photos: dict) -> None:
    """The way MFV calls it: a batch of facets with different TV weights, 0..255 float64 images
    that a gradient step pushed out of range and filled with high-frequency noise."""
    rng = np.random.default_rng(7)
    imgs = [photos[n][60:124, 80:144] for n in ("astronaut", "chelsea", "coffee")]
    imgs = [np.clip(i + rng.normal(0, 25, i.shape), -40, 300) for i in imgs]
    weights = [0.41, 0.01 + 2 * 37 / 150, 2.1]  # octave-1, mid octave-2 and octave-3 weights
    batch = torch.stack([to_chw(i) for i in imgs])
    out, n_iter = denoise_tv_bregman(
        batch, weight=torch.tensor(weights, dtype=torch.float64), return_num_iter=True
    )
    for k, (img, w) in enumerate(zip(imgs, weights, strict=True)):
        ref, n = sk_ref(img, w)
        assert np.abs(to_hwc(out[k]) - ref).max() < TIGHT
        assert int(n_iter[k]) == n


# -- hypothesis over weights, sizes, channel counts, content -------------------------------------


def _content(kind: str, h: int, w: int, c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "photo":
        base = photo("astronaut", 64)
        y, x = rng.integers(0, 64 - h + 1), rng.integers(0, 64 - w + 1)
        img = base[y : y + h, x : x + w, rng.integers(0, 3, c)]
    elif kind == "noisy":  # mid-optimisation: out of range, not yet clipped
        img = rng.normal(128, 90, (h, w, c))
    else:  # high-frequency pattern plus noise
        yy, xx = np.mgrid[:h, :w]
        img = (((yy + xx) % 2) * 255.0)[..., None] + rng.normal(0, 10, (h, w, c))
    return np.ascontiguousarray(img, dtype=np.float64)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(2, 11),
    w=st.integers(2, 11),
    c=st.integers(1, 4),
    weight=st.floats(0.01, 5.0),
    kind=st.sampled_from(["photo", "noisy", "pattern"]),
    isotropic=st.booleans(),
    seed=st.integers(0, 2**16),
    solver=st.sampled_from(["native", "wavefront"]),
)
def test_hypothesis_matches_skimage(
    h: int, w: int, c: int, weight: float, kind: str, isotropic: bool, seed: int, solver: str
) -> None:
    img = _content(kind, h, w, c, seed)
    ref, n = sk_ref(img, weight, isotropic=isotropic)
    out, n_iter = denoise_tv_bregman(
        to_chw(img), weight=weight, isotropic=isotropic, return_num_iter=True, solver=solver
    )
    assert np.abs(to_hwc(out) - ref).max() < TIGHT
    assert int(n_iter[0]) == n


@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(2, 7),
    w=st.integers(2, 7),
    c=st.integers(1, 3),
    weight=st.floats(0.01, 5.0),
    isotropic=st.booleans(),
    border=st.sampled_from(["current", "0.13"]),
    seed=st.integers(0, 99),
    solver=st.sampled_from(["native", "wavefront"]),
)
def test_hypothesis_matches_loop_transcription(
    h: int, w: int, c: int, weight: float, isotropic: bool, border: str, seed: int, solver: str
) -> None:
    img = _content("noisy", h, w, c, seed)
    ref, n = loop_ref(img, weight, isotropic=isotropic, border=border, max_num_iter=40)
    out, n_iter = denoise_tv_bregman(
        to_chw(img),
        weight=weight,
        isotropic=isotropic,
        border=border,
        max_num_iter=40,
        return_num_iter=True,
        solver=solver,
    )
    assert np.abs(to_hwc(out) - ref).max() < TIGHT
    assert int(n_iter[0]) == n


def test_loop_transcription_is_skimage() -> None:
    """The transcription used for the 0.13 border is itself scikit-image for the current border."""
    img = _content("noisy", 5, 6, 2, 3)
    ref, n = sk_ref(img, 0.3, max_num_iter=30)
    mine, m = loop_ref(img, 0.3, max_num_iter=30)
    assert np.abs(mine - ref).max() < 1e-12 and m == n


def test_border_013_differs_only_through_bottom_right_ghosts() -> None:
    """0.13 reflects the bottom row / right column; a symmetric image under both rules sees the
    same ghosts only where row H-1 equals row H-2, so make them equal and the results agree."""
    img = _content("photo", 8, 9, 3, 1)
    img[-1], img[:, -1] = img[-2], img[:, -2]
    a = denoise_tv_bregman(to_chw(img), weight=0.5)
    b = denoise_tv_bregman(to_chw(img), weight=0.5, border="0.13")
    assert torch.equal(a, b)
    img = _content("photo", 8, 9, 3, 1)
    a = denoise_tv_bregman(to_chw(img), weight=0.5)
    b = denoise_tv_bregman(to_chw(img), weight=0.5, border="0.13")
    assert (a - b).abs().max() > 1e-3


# -- batching and per-image stopping ---------------------------------------------------------------


def test_batch_with_different_weights_equals_single_calls() -> None:
    imgs = torch.stack(
        [
            to_chw(_content(k, 12, 10, 3, s))
            for k, s in [("photo", 1), ("noisy", 2), ("pattern", 3), ("photo", 4)]
        ]
    )
    weights = torch.tensor([0.05, 0.4, 1.5, 5.0], dtype=torch.float64)
    out, n_iter = denoise_tv_bregman(imgs, weight=weights, return_num_iter=True)
    for k in range(4):
        one, n = denoise_tv_bregman(imgs[k], weight=float(weights[k]), return_num_iter=True)
        assert torch.equal(out[k], one)
        assert int(n_iter[k]) == int(n[0])
    assert len(set(n_iter.tolist())) > 1  # the images really stopped at different sweeps


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_native_many_lane_groups_equal_single_calls(threads: int, monkeypatch) -> None:
    """25 RGB images are 75 lanes: more than one group of the compiled kernel whatever the
    thread count, each image stopping at its own sweep while its group goes on."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    rng = np.random.default_rng(threads)
    imgs = torch.from_numpy(rng.uniform(0, 255, (25, 3, 9, 11)))
    weights = torch.from_numpy(rng.uniform(0.05, 4.0, 25))
    kw = {"weight": weights, "eps": 0.05, "return_num_iter": True}
    out, n_iter = denoise_tv_bregman(imgs, solver="native", **kw)
    ref, n_ref = denoise_tv_bregman(imgs, solver="wavefront", **kw)
    assert (out - ref).abs().max() < TIGHT
    assert torch.equal(n_iter, n_ref)
    assert len(set(n_iter.tolist())) > 3


def test_native_falls_back_when_disabled(monkeypatch) -> None:
    from mfv import _tv_native

    monkeypatch.setattr(_tv_native, "available", lambda: False)
    img = to_chw(_content("photo", 6, 7, 3, 2))
    ref = denoise_tv_bregman(img, weight=0.5, solver="wavefront")
    assert torch.equal(denoise_tv_bregman(img, weight=0.5), ref)  # auto chose the torch solver
    with pytest.raises(ValueError, match="native"):
        denoise_tv_bregman(img, weight=0.5, solver="native")


@pytest.mark.parametrize("solver", ["wavefront", "jacobi"])
@pytest.mark.parametrize("check_every", [1, 3, 8])
def test_deferred_checks_and_solvers_agree(solver: str, check_every: int) -> None:
    """The GPU settings (Jacobi solve, host reads every few sweeps, converged images frozen on the
    device meanwhile), run on the CPU, give the same images and counts as skimage."""
    imgs = [_content(k, 9, 13, 3, s) for k, s in [("photo", 5), ("noisy", 6), ("photo", 8)]]
    weights = [0.1, 0.7, 3.0]
    out, n_iter = denoise_tv_bregman(
        torch.stack([to_chw(i) for i in imgs]),
        weight=torch.tensor(weights, dtype=torch.float64),
        solver=solver,
        check_every=check_every,
        return_num_iter=True,
    )
    for k, (img, w) in enumerate(zip(imgs, weights, strict=True)):
        ref, n = sk_ref(img, w)
        assert np.abs(to_hwc(out[k]) - ref).max() < TIGHT
        assert int(n_iter[k]) == n


def test_joint_stop_equals_skimage_on_stacked_channels() -> None:
    imgs = [_content("photo", 10, 8, 3, s) for s in (11, 12)]
    stacked = np.concatenate(imgs, axis=2)
    ref, n = sk_ref(stacked, 0.6)
    out, n_iter = denoise_tv_bregman(
        torch.stack([to_chw(i) for i in imgs]),
        weight=0.6,
        per_image_stop=False,
        return_num_iter=True,
    )
    got = np.concatenate([to_hwc(o) for o in out], axis=2)
    assert np.abs(got - ref).max() < TIGHT
    assert n_iter.tolist() == [n, n]


def test_jacobi_steps_bound() -> None:
    # (4/9)^steps * 255 is the worst truncation per sweep: under 1e-12 (f64) and 1e-6 (f32).
    assert 255 * (4 / 9) ** jacobi_steps(torch.float64, 227, 227) < 1e-12
    assert 255 * (4 / 9) ** jacobi_steps(torch.float32, 227, 227) < 1e-6
    assert jacobi_steps(torch.float64, 3, 4) == 6


# -- dtypes, shapes, inputs ------------------------------------------------------------------------


def test_float32_close_to_skimage_float32(photos: dict) -> None:
    img = photos["chelsea"][50:114, 70:134].astype(np.float32)
    ref = sk_denoise(img, weight=0.4, max_num_iter=100, eps=1e-3, channel_axis=None)
    out = denoise_tv_bregman(to_chw(img), weight=0.4)
    assert out.dtype == torch.float32
    # Two float32 computations in different orders: measured 2e-4 grey levels apart.
    assert np.abs(to_hwc(out) - ref).max() < 5e-3


def test_half_input_keeps_dtype_and_shape() -> None:
    img = torch.from_numpy(_content("photo", 6, 7, 3, 0)).permute(2, 0, 1)
    out = denoise_tv_bregman(img.half(), weight=1.0)
    assert out.dtype == torch.float16 and out.shape == img.shape
    ref = denoise_tv_bregman(img.float(), weight=1.0)
    assert (out.float() - ref).abs().max() < 0.25  # float16's spacing at 255


def test_zero_iterations_returns_input() -> None:
    img = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    out, n = denoise_tv_bregman(img, weight=1.0, max_num_iter=0, return_num_iter=True)
    assert torch.equal(out, img) and n.tolist() == [0, 0]


def test_larger_weight_smooths_less() -> None:
    img = to_chw(_content("noisy", 16, 16, 3, 4))
    tv = [
        float(denoise_tv_bregman(img, weight=w).diff(dim=-1).abs().sum()) for w in (0.05, 0.5, 5.0)
    ]
    assert tv[0] < tv[1] < tv[2]


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"weight": 0.0}, ValueError),
        ({"weight": -1.0}, ValueError),
        ({"weight": float("nan")}, ValueError),
        ({"weight": torch.ones(3)}, ValueError),
        ({"weight": "1"}, TypeError),
        ({"weight": 1.0, "max_num_iter": -1}, ValueError),
        ({"weight": 1.0, "eps": -1e-3}, ValueError),
        ({"weight": 1.0, "border": "reflect"}, ValueError),
        ({"weight": 1.0, "solver": "cg"}, ValueError),
        ({"weight": 1.0, "check_every": 0}, ValueError),
    ],
)
def test_bad_arguments_raise(kwargs: dict, exc: type) -> None:
    with pytest.raises(exc):
        denoise_tv_bregman(torch.rand(2, 3, 4, 4), **kwargs)


@pytest.mark.parametrize(
    ("images", "exc"),
    [
        (np.zeros((3, 4, 4)), TypeError),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), TypeError),
        (torch.zeros(4, 4), ValueError),
        (torch.zeros(3, 1, 4), ValueError),
    ],
)
def test_bad_images_raise(images: object, exc: type) -> None:
    with pytest.raises(exc):
        denoise_tv_bregman(images, weight=1.0)  # type: ignore[arg-type]


def test_native_build_failure_warns_and_falls_back(monkeypatch, tmp_path) -> None:
    """A compiler that fails leaves no library behind and makes available() False, with a warning."""
    from mfv import _tv_native

    monkeypatch.setenv("CAFFE_MFV_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # exists everywhere, always fails
    build = _tv_native._library.__wrapped__
    with pytest.warns(UserWarning, match="_tv_native.c could not be built"):
        assert build() is None
    assert not list((tmp_path / "native").glob("*.so"))
    monkeypatch.setenv("CAFFE_MFV_NATIVE", "0")
    assert build() is None


def test_native_without_openmp_runs_one_thread_with_the_same_bytes(monkeypatch, tmp_path) -> None:
    """A compiler that refuses -fopenmp gets the one-thread build; its results are the threaded
    build's to the bit (each lane's arithmetic does not depend on which thread runs it)."""
    from mfv import _tv_native

    if not _tv_native.available():
        pytest.skip("no C compiler")
    rng = np.random.default_rng(5)
    imgs = torch.from_numpy(rng.uniform(0, 255, (9, 3, 13, 17))).float()
    kw = {"weight": torch.from_numpy(rng.uniform(0.1, 3.0, 9)), "return_num_iter": True}
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert _tv_native.threaded()
    ref, n_ref = denoise_tv_bregman(imgs, solver="native", **kw)
    cc = tmp_path / "cc-without-openmp"
    cc.write_text(
        '#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec cc "$@"\n'
    )
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("CAFFE_MFV_CACHE", str(tmp_path))
    _tv_native._library.cache_clear()
    try:
        assert _tv_native.available() and not _tv_native.threaded()
        out, n = denoise_tv_bregman(imgs, solver="native", **kw)
    finally:
        _tv_native._library.cache_clear()
    assert torch.equal(out, ref) and torch.equal(n, n_ref)


@pytest.mark.parametrize("max_num_iter", [1, 2, 3, 7])
@pytest.mark.parametrize("per_image_stop", [True, False])
def test_native_two_sweep_passes_stop_where_single_sweeps_do(
    max_num_iter: int, per_image_stop: bool
) -> None:
    """The compiled kernel runs two sweeps per pass; an odd sweep limit ends with a pass of one,
    and an image that stops after the first sweep of a pair keeps that sweep's result. The
    wavefront solver sweeps one at a time: both must agree on every image and sweep count."""
    rng = np.random.default_rng(max_num_iter)
    imgs = torch.from_numpy(rng.uniform(0, 255, (6, 3, 9, 8)))
    kw = {
        "weight": torch.from_numpy(rng.uniform(0.05, 4.0, 6)),
        "eps": 0.02,
        "max_num_iter": max_num_iter,
        "per_image_stop": per_image_stop,
        "return_num_iter": True,
    }
    out, n = denoise_tv_bregman(imgs, solver="native", **kw)
    ref, n_ref = denoise_tv_bregman(imgs, solver="wavefront", **kw)
    assert torch.equal(n, n_ref)
    assert (out - ref).abs().max() < TIGHT


def test_native_images_stopping_on_both_sweeps_of_a_pass() -> None:
    """Across many images some stop after an odd sweep count, some after an even one (the first
    and the second sweep of a pass); each has the result of the sweep it stopped at, as the
    wavefront solver (one sweep at a time) computes it."""
    rng = np.random.default_rng(11)
    imgs = torch.from_numpy(rng.uniform(0, 255, (12, 3, 10, 9)))
    kw = {"weight": torch.from_numpy(rng.uniform(0.05, 4.0, 12)), "eps": 0.01}
    out, n = denoise_tv_bregman(imgs, solver="native", return_num_iter=True, **kw)
    ref, n_ref = denoise_tv_bregman(imgs, solver="wavefront", return_num_iter=True, **kw)
    assert {int(k) % 2 for k in n} == {0, 1}
    assert torch.equal(n, n_ref)
    assert (out - ref).abs().max() < TIGHT
