"""TV denoise ms per 227x227 RGB image: torch (batch 10) against scikit-image (one at a time).

Issue 14's target is the compiled kernel >= 4x scikit-image per image at batch 10 in float32, on
AVX-512 and AVX2 machines alike (issue 7's was 3x); ``CAFFE_MFV_NATIVE_ISA=avx2`` measures the
AVX2 build on an AVX-512 machine. Run with
``.venv/bin/pytest -m benchmark --benchmark-enable tests/test_mfv_tv_bench.py``; both timings and
their ratio land in ``extra_info`` of the torch benchmark. The test asserts parity of the timed
outputs, not the speed target (the machine's load decides the speed; the report says which).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from skimage import data, transform
from skimage.restoration import denoise_tv_bregman as sk_denoise

from mfv.tv_bregman import denoise_tv_bregman

pytestmark = pytest.mark.benchmark

BATCH = 10
WEIGHTS = [0.4, 0.41, 0.6, 1.0, 1.5, 2.0, 2.4, 0.1, 0.8, 1.2]  # a spread of MFV's TV weights


@pytest.fixture(scope="module")
def batch_hwc() -> np.ndarray:
    """Ten 227x227 RGB float64 0..255 images: photographs plus mid-optimisation noise."""
    rng = np.random.default_rng(0)
    photos = [
        transform.resize(getattr(data, n)(), (227, 227), anti_aliasing=True) * 255.0
        for n in ("astronaut", "chelsea", "coffee")
    ]
    return np.stack([photos[i % 3] + rng.normal(0, 8, photos[0].shape) for i in range(BATCH)])


def _skimage_ms_per_image(batch_hwc: np.ndarray, rounds: int) -> tuple[float, list[np.ndarray]]:
    best = float("inf")
    outs: list[np.ndarray] = []
    for _ in range(rounds):
        t = time.perf_counter()
        outs = [
            sk_denoise(img, weight=w, max_num_iter=100, eps=1e-3, channel_axis=None)
            for img, w in zip(batch_hwc, WEIGHTS, strict=True)
        ]
        best = min(best, time.perf_counter() - t)
    return best / BATCH * 1e3, outs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_tv_torch_batch10_vs_skimage(benchmark, batch_hwc: np.ndarray, dtype: torch.dtype) -> None:
    """float32 is what the default MFV mode runs (the issue's target applies to it); float64 is
    the faithful mode's, which follows scikit-image operation by operation."""
    images = torch.from_numpy(batch_hwc).permute(0, 3, 1, 2).contiguous().to(dtype)
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        return denoise_tv_bregman(images, weight=weights, return_num_iter=True)

    run()  # compiles the kernel on a first run on this machine
    # Interleave: scikit-image right before torch so both see the same machine load.
    sk_ms, sk_outs = _skimage_ms_per_image(batch_hwc, rounds=2)
    out, n_iter = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    torch_ms = benchmark.stats.stats.min / BATCH * 1e3
    got = out.permute(0, 2, 3, 1).double().numpy()
    max_diff = float(max(np.abs(g - r).max() for g, r in zip(got, sk_outs, strict=True)))
    benchmark.extra_info.update(
        torch_ms_per_image=round(torch_ms, 2),
        skimage_ms_per_image=round(sk_ms, 2),
        speedup=round(sk_ms / torch_ms, 3),
        target_speedup=4.0 if dtype == torch.float32 else None,
        batch=BATCH,
        dtype=str(dtype),
        torch_threads=torch.get_num_threads(),
        sweeps=n_iter.tolist(),
        max_abs_diff=max_diff,
    )
    # The parity bound (0.05 grey levels); float64 is measured at ~1e-12.
    assert max_diff < (0.05 if dtype == torch.float32 else 1e-8)


def test_tv_skimage_one_image(benchmark, batch_hwc: np.ndarray) -> None:
    """scikit-image alone, one image per call, for the saved JSON's own row."""
    img = batch_hwc[0]
    benchmark.pedantic(
        sk_denoise,
        args=(img,),
        kwargs={"weight": 0.4, "channel_axis": None},
        rounds=3,
        iterations=1,
    )
    benchmark.extra_info.update(per="image")
