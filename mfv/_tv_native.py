"""The CPU backend of :func:`mfv.tv_bregman.denoise_tv_bregman`: a compiled Gauss-Seidel sweep.

scikit-image's sweep is sequential from pixel to pixel, which leaves tensor libraries two bad
choices on a CPU (hundreds of tiny wavefront operations, or dozens of bandwidth-bound passes).
A short C kernel (``_tv_native.c``) walks the pixels in scikit-image's order instead and puts the
parallelism where it is free: the channels of all images of a batch are independent lanes of one
SIMD loop, groups of lanes are split between threads, and each pass over memory runs two
consecutive sweeps, the second two rows behind the first. One call runs a batch to the end: the
threads load their lane groups, sweep them, and meet at a barrier after each pass, where the
stopping tests of its sweeps run; the per-sweep cost in Python is nil. The large work arrays
are kept between calls of the same shape (one set per calling thread): MFV denoises a batch of the
same size at every step, and fresh buffers cost more in page faults than a converged image's sweeps.

The kernel is built on first use by :mod:`port.native` (the system C compiler, OpenMP so that its
threads are torch's own, a cache keyed by source, compiler, flags and CPU, and the
``CAFFE_MFV_NATIVE`` / ``CAFFE_MFV_NATIVE_ISA`` switches). Without it :func:`available` is False
and callers fall back to the pure-torch solvers. With ``CAFFE_MFV_NATIVE_ISA=avx2`` (and
``ONEDNN_MAX_CPU_ISA=AVX2``) an AVX-512 machine shows how the whole step runs on an AVX2-only one.
"""

from __future__ import annotations

import ctypes
import math
import threading
from functools import cache
from pathlib import Path

import torch

from port import native

__all__ = ["available", "denoise", "threaded", "vector_bytes"]

_SOURCE = Path(__file__).with_name("_tv_native.c")
# A group's pixel is at most one 64-byte cache line of lanes (measured on Zen 4 at 227 x 227: 16
# float lanes per group beat 32 with AVX-512, 8 and 16 tie with AVX2), and at least one vector.
_GROUP_BYTES = 64
# The kernel's work arrays per group: two u buffers, d (or e = d - b) in x and y, b in x and y.
_STATE_ARRAYS = 6
# -ffp-contract=off: no fused multiply-add, so each operation rounds as scikit-image's does.
# -fno-math-errno lets sqrt vectorise; it changes no value.
_FLAGS = ["-ffp-contract=off", "-fno-math-errno"]
# -O2, not -O3: GCC 12's -O3 build of the float32 sweep takes a third longer with AVX2 (Zen 4, ten
# 227 x 227 images, 56 sweeps: 54 -> 41 ms) and a little longer with AVX-512 (35 -> 33 ms), and no
# single -O3 pass accounts for it; SSE2 builds alone lose (82 -> 88 ms). Both give the same bytes.
_OPTIMIZE = "-O2"
_TYPES = {torch.float32: ("float", ctypes.c_float), torch.float64: ("double", ctypes.c_double)}


@cache
def _library() -> ctypes.CDLL | None:
    lib = native.load(_SOURCE, "tv_sweep", _FLAGS, fallback="the torch solver", optimize=_OPTIMIZE)
    if lib is None:
        return None
    lib.tv_max_vectors.restype = ctypes.c_int
    lib.tv_threaded.restype = ctypes.c_int
    for name, ctype in _TYPES.values():
        getattr(lib, f"tv_vector_lanes_{name}").restype = ctypes.c_int
        fn = getattr(lib, f"tv_denoise_{name}")
        fn.restype = None
        fn.argtypes = (
            [ctypes.POINTER(ctype)] * 7
            + [ctypes.c_int] * 2
            + [ctypes.c_long] * 7
            + [ctypes.c_double, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_long)]
        )
    return lib


def available() -> bool:
    """Whether the compiled sweep can be used (compiling it now if needed)."""
    return _library() is not None


def vector_bytes() -> int:
    """Width in bytes of the vectors the compiled kernel uses (64: AVX-512, 32: AVX2, 16: SSE2),
    0 when it is unavailable."""
    lib = _library()
    return 0 if lib is None else 4 * int(lib.tv_vector_lanes_float())


def threaded() -> bool:
    """Whether the compiled kernel was built with OpenMP (else it runs on one thread)."""
    lib = _library()
    return lib is not None and bool(lib.tv_threaded())


def _lanes_for(n: int, threads: int, vector: int, max_vectors: int, itemsize: int) -> int:
    """Lanes per group: whole vectors, enough groups to keep every thread busy, at most one
    64-byte line per pixel (and the kernel's maximum vectors per group)."""
    per_thread = math.ceil(n / max(1, threads))
    cap = vector * max(1, min(max_vectors, _GROUP_BYTES // (itemsize * vector)))
    return min(cap, vector * math.ceil(per_thread / vector))


class _Workspace(threading.local):
    """The last call's buffers, per thread. MFV denoises same-sized batches every step; fresh
    tens-of-megabyte buffers would cost more in page faults than the sweeps of a converged image."""

    key: tuple | None = None
    buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(
        self, dtype: torch.dtype, groups: int, h: int, w: int, lanes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dtype, groups, h, w, lanes)
        if self.key != key:
            self.buffers = None  # release the old ones first
            self.buffers = (
                torch.empty((_STATE_ARRAYS, groups, h + 2, w + 2, lanes), dtype=dtype),
                torch.empty((groups, h, w, lanes), dtype=dtype),
            )
            self.key = key
        return self.buffers


_WORKSPACE = _Workspace()


def _pack_small(t: torch.Tensor, groups: int, lanes: int, fill: float) -> torch.Tensor:
    """(n,) per-lane values -> (groups, lanes), padding lanes set to ``fill``."""
    out = t.new_full((groups * lanes,), fill)
    out[: t.shape[0]] = t
    return out.view(groups, lanes)


def _pointer(t: torch.Tensor, ctype) -> ctypes.POINTER:
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctype))


def denoise(
    f: torch.Tensor,
    weight: torch.Tensor,
    *,
    channels: int,
    border: str,
    max_num_iter: int,
    eps: float,
    isotropic: bool,
    per_image_stop: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the sweeps to each image's stop; scikit-image's loop for every image of the batch.

    ``f``: (B * C, H, W) contiguous float32/float64 CPU lanes (image b's channels are lanes
    b * C .. b * C + C - 1); ``weight``: (B,); ``border``: ghost cells as in
    :func:`mfv.tv_bregman.denoise_tv_bregman`. Returns the denoised (B * C, H, W) lanes and the
    number of sweeps per image.
    """
    lib = _library()
    assert lib is not None, "denoise() needs available()"
    name, ctype = _TYPES[f.dtype]
    fn = getattr(lib, f"tv_denoise_{name}")
    n, h, w = f.shape
    b = n // channels
    thresh = eps * eps * (channels * h * w)  # rmse <= eps  <=>  sum of squares <= eps^2 * total
    threads = max(1, torch.get_num_threads())
    num_iter = torch.zeros(b, dtype=torch.int64)
    if max_num_iter == 0:
        return f.clone(), num_iter

    vector = int(getattr(lib, f"tv_vector_lanes_{name}")())
    lanes = _lanes_for(n, threads, vector, int(lib.tv_max_vectors()), f.element_size())
    groups = math.ceil(n / lanes)
    state, wf = _WORKSPACE.get(f.dtype, groups, h, w, lanes)  # the kernel initialises them
    # Padding lanes: weight 1 on a zero image, so they stay zero; the kernel never reads them out.
    wl = _pack_small(weight.to(f.dtype).repeat_interleave(channels), groups, lanes, 1.0)
    lam = 2 * wl  # scikit-image computes both in the image's dtype
    norm = wl + 4 * lam
    if f.dtype == torch.float32:
        norm = 1 / norm  # the float32 kernel multiplies by the reciprocal (see _tv_native.c)
    out = torch.empty_like(f)
    ptrs = [_pointer(t, ctype) for t in (f, out, state, wf, wl, lam, norm)]
    # One call does it all: its threads load, sweep and write out their groups; thread 0 applies
    # the stopping tests between passes (ctypes releases the GIL for the call's duration).
    fn(
        *ptrs,
        int(isotropic),
        int(border == "0.13"),
        n,
        groups,
        h,
        w,
        lanes,
        channels,
        max_num_iter,
        thresh,
        int(per_image_stop),
        min(threads, groups),
        ctypes.cast(num_iter.data_ptr(), ctypes.POINTER(ctypes.c_long)),
    )
    return out, num_iter
