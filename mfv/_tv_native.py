"""The CPU backend of :func:`mfv.tv_bregman.denoise_tv_bregman`: a compiled Gauss-Seidel sweep.

scikit-image's sweep is sequential from pixel to pixel, which leaves tensor libraries two bad
choices on a CPU (hundreds of tiny wavefront operations, or dozens of bandwidth-bound passes).
A short C kernel (``_tv_native.c``) walks the pixels in scikit-image's order instead and puts the
parallelism where it is free: the channels of all images of a batch are independent lanes of one
SIMD loop, and groups of lanes are split between threads.

The kernel is compiled on first use with the system C compiler (``$CC``, else ``cc``) into
``$CAFFE_MFV_CACHE/native`` (default ``~/.cache/caffe-mfv/native``), keyed by the source, the
compiler and this CPU's instruction set, written to a temporary name and renamed into place.
Without a compiler, or with ``CAFFE_MFV_NATIVE=0``, :func:`available` is False and callers fall
back to the pure-torch solvers.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch

__all__ = ["available", "denoise"]

_SOURCE = Path(__file__).with_name("_tv_native.c")
# Lanes per group: a multiple of one AVX vector of float32, at most the kernel's 64.
_LANE_STEP, _MAX_LANES = 8, 64
# -ffp-contract=off: no fused multiply-add, so each operation rounds as scikit-image's does.
# -fno-math-errno lets sqrt vectorise; it changes no value.
_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]
_TYPES = {torch.float32: ("float", ctypes.c_float), torch.float64: ("double", ctypes.c_double)}


def _cpu_signature() -> str:
    """What -march=native depends on: a library built for one CPU may not run on another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("CAFFE_MFV_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "caffe-mfv") / "native"


@cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("CAFFE_MFV_NATIVE", "1") == "0" or platform.system() != "Linux":
        return None
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        key = hashlib.sha256("\0".join([_SOURCE.read_text(), version, _cpu_signature(),
                                        " ".join(_FLAGS)]).encode()).hexdigest()[:16]
        target = _cache_dir() / f"tv_sweep_{key}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            try:
                run = subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SOURCE), "-lm"],
                                     capture_output=True, text=True, timeout=300)
                if run.returncode != 0:
                    raise RuntimeError(f"{cc} failed on {_SOURCE}:\n{run.stderr.strip()}")
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        warnings.warn(f"the compiled TV sweep is unavailable ({e}); using the torch solver", stacklevel=3)
        return None
    for name, ctype in _TYPES.values():
        fn = getattr(lib, f"tv_sweep_{name}")
        fn.restype = None
        fn.argtypes = ([ctypes.POINTER(ctype)] * 10 + [ctypes.c_int] + [ctypes.c_long] * 5
                       + [ctypes.POINTER(ctypes.c_double)])
    return lib


def available() -> bool:
    """Whether the compiled sweep can be used (compiling it now if needed)."""
    return _library() is not None


def _lanes_for(n: int, threads: int) -> int:
    """Lanes per group: enough groups to keep every thread busy, few padding lanes."""
    per_thread = math.ceil(n / max(1, threads))
    return min(_MAX_LANES, _LANE_STEP * math.ceil(per_thread / _LANE_STEP))


def _pack(t: torch.Tensor, groups: int, lanes: int, fill: float = 0.0) -> torch.Tensor:
    """(n, ...) lanes -> (groups, ..., lanes), padding lanes filled with ``fill``."""
    n = t.shape[0]
    if groups * lanes > n:
        t = torch.cat([t, t.new_full((groups * lanes - n,) + tuple(t.shape[1:]), fill)])
    return t.view((groups, lanes) + tuple(t.shape[1:])).movedim(1, -1).contiguous()


def _pointer(t: torch.Tensor, ctype) -> ctypes.POINTER:
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctype))


def denoise(f: torch.Tensor, u0: torch.Tensor, weight: torch.Tensor, *, channels: int, max_num_iter: int,
            eps: float, isotropic: bool, per_image_stop: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the sweeps to each image's stop; scikit-image's loop for every image of the batch.

    ``f``: (B * C, H, W) float32/float64 CPU lanes; ``u0``: the same lanes with their ghost ring,
    (B * C, H + 2, W + 2); ``weight``: (B,). Returns the denoised (B * C, H, W) lanes and the
    number of sweeps per image.
    """
    lib = _library()
    assert lib is not None, "denoise() needs available()"
    name, ctype = _TYPES[f.dtype]
    fn = getattr(lib, f"tv_sweep_{name}")
    n, h, w = f.shape
    b = n // channels
    thresh = eps * eps * (channels * h * w)  # rmse <= eps  <=>  sum of squares <= eps^2 * total
    threads = max(1, torch.get_num_threads())
    num_iter = torch.zeros(b, dtype=torch.int64)
    if max_num_iter == 0:
        return f.clone(), num_iter

    lanes = _lanes_for(n, threads)
    groups = math.ceil(n / lanes)
    # Padding lanes: weight 1 on a zero image, never live, so they stay zero.
    wl = _pack(weight.to(f.dtype).repeat_interleave(channels), groups, lanes, 1.0)
    lam = 2 * wl  # scikit-image computes both in the image's dtype
    norm = wl + 4 * lam
    if f.dtype == torch.float32:
        norm = 1 / norm  # the float32 kernel multiplies by the reciprocal (see _tv_native.c)
    live = _pack(torch.ones(n, dtype=f.dtype), groups, lanes)
    u = _pack(u0, groups, lanes)
    state = [u] + [torch.zeros_like(u) for _ in range(4)]  # dx, dy, bx, by
    fp = _pack(f, groups, lanes)
    ptrs = [_pointer(t, ctype) for t in (*state, fp, wl, lam, norm, live)]
    ss = torch.zeros(groups * lanes, dtype=torch.float64)
    ss_p = _pointer(ss, ctypes.c_double)
    running = torch.ones(b, dtype=torch.bool)
    live_lanes = live.view(-1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for sweep in range(1, max_num_iter + 1):
            ss.zero_()
            busy = live_lanes.view(groups, lanes).any(1).nonzero().squeeze(1).tolist()
            # ctypes drops the GIL during the call, so the groups run in parallel.
            list(pool.map(lambda g: fn(*ptrs, int(isotropic), g, g + 1, h, w, lanes, ss_p), busy))
            per_image = ss[:n].view(b, channels).sum(1)
            if not per_image_stop:
                per_image = per_image.sum().expand(b) / int(running.sum())
            stop = running & ((per_image <= thresh) | (sweep == max_num_iter))
            num_iter[running] += 1
            if bool(stop.any()):
                running &= ~stop
                lane_stop = stop.repeat_interleave(channels)
                live_lanes[: n][lane_stop] = 0
            if not bool(running.any()):
                break
    out = u[:, 1:-1, 1:-1].movedim(-1, 1).reshape(groups * lanes, h, w)[:n]
    return out.contiguous(), num_iter
