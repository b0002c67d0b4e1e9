"""The compiled TV kernel under a capped instruction set (``CAFFE_MFV_NATIVE_ISA``).

Each lane's arithmetic is the same IEEE expression whatever the vector width, and the build uses
no fused multiply-add, so every cap this CPU supports gives the same bytes as the native build.
That is what makes an AVX2-capped run on an AVX-512 machine a faithful stand-in for an AVX2 one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfv import _tv_native
from mfv.tv_bregman import denoise_tv_bregman
from port import native


@pytest.fixture
def fresh_library(monkeypatch):
    """_library() rebuilt (or found in the cache) for the environment the test sets."""
    _tv_native._library.cache_clear()
    yield monkeypatch
    _tv_native._library.cache_clear()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(3)
    imgs = torch.from_numpy(rng.uniform(0, 255, (7, 3, 23, 19)))
    return imgs, torch.from_numpy(rng.uniform(0.05, 3.0, 7))


@pytest.mark.parametrize("isa", ["avx2", "sse2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("isotropic", [True, False], ids=["iso", "aniso"])
def test_capped_isa_gives_the_native_bytes(
    fresh_library, isa: str, dtype: torch.dtype, isotropic: bool
) -> None:
    if not _tv_native.available():
        pytest.skip("no C compiler")
    imgs, weights = _batch()
    imgs = imgs.to(dtype)
    kw = {
        "weight": weights,
        "eps": 1e-3,
        "isotropic": isotropic,
        "return_num_iter": True,
        "solver": "native",
    }
    ref, n_ref = denoise_tv_bregman(imgs, **kw)
    native_bytes = _tv_native.vector_bytes()
    fresh_library.setenv("CAFFE_MFV_NATIVE_ISA", isa)
    _tv_native._library.cache_clear()
    try:
        native.isa()
    except ValueError as e:
        pytest.skip(str(e))  # this CPU lacks it
    out, n = denoise_tv_bregman(imgs, **kw)
    assert _tv_native.vector_bytes() == {"avx2": 32, "sse2": 16}[isa] <= native_bytes
    assert torch.equal(out, ref) and torch.equal(n, n_ref)


def test_unknown_isa_is_a_clear_error(fresh_library) -> None:
    fresh_library.setenv("CAFFE_MFV_NATIVE_ISA", "avx9000")
    with pytest.raises(ValueError, match="CAFFE_MFV_NATIVE_ISA='avx9000': expected one of"):
        _tv_native.available()


def test_isa_the_cpu_lacks_is_a_clear_error(fresh_library) -> None:
    fresh_library.setattr(native, "cpu_signature", lambda: "flags : fpu sse sse2")
    fresh_library.setattr(native.platform, "machine", lambda: "x86_64")
    fresh_library.setenv("CAFFE_MFV_NATIVE_ISA", "avx512")
    with pytest.raises(ValueError, match="this CPU lacks avx512f"):
        _tv_native.available()
