"""Small C kernels compiled on first use with the system's C compiler, and loaded with ctypes.

The port and MFV each have a kernel where no tensor library runs well on a CPU (the fully connected
product of a small batch, :mod:`port.layers.skinny`; scikit-image's TV sweep,
:mod:`mfv._tv_native`). Both are built here the same way: with ``$CC`` (else ``cc``), into
``$CAFFE_MFV_CACHE/native`` (default ``~/.cache/caffe-mfv/native``), keyed by the source, the
compiler, the flags and this CPU's instruction set, written to a temporary name and renamed into
place. They are built with OpenMP (``-fopenmp``) so that their threads are torch's own libgomp
pool; a compiler without OpenMP gets a one-thread build. Without a compiler, on a system other than
Linux, or with ``CAFFE_MFV_NATIVE=0``, :func:`load` returns None and callers take their
pure-torch path.

``CAFFE_MFV_NATIVE_ISA`` caps the instruction set the kernels are built for: ``native`` (default,
``-march=native``), ``avx512`` (x86-64-v4), ``avx2`` (x86-64-v3), ``avx`` (Sandy Bridge: AVX without
FMA) or ``sse2`` (x86-64), each tuned
for this CPU. With ``ONEDNN_MAX_CPU_ISA=AVX2`` it shows on an AVX-512 machine how a run goes on an
AVX2-only one. Asking for an instruction set the CPU lacks is an error, not a crash.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

__all__ = ["ISAS", "cache_dir", "cpu_signature", "enabled", "isa", "load"]

# CAFFE_MFV_NATIVE_ISA -> (compiler flags, /proc/cpuinfo flags the CPU must have).
ISAS = {
    "native": (["-march=native"], ()),
    "avx512": (
        ["-march=x86-64-v4", "-mtune=native"],
        ("avx512f", "avx512bw", "avx512dq", "avx512vl"),
    ),
    "avx2": (["-march=x86-64-v3", "-mtune=native"], ("avx2", "fma", "bmi2")),
    "avx": (["-march=corei7-avx", "-mtune=native"], ("avx",)),  # Sandy Bridge: no FMA
    "sse2": (["-march=x86-64", "-mtune=native"], ("sse2",)),
}
_COMMON = ["-shared", "-fPIC"]


def cpu_signature() -> str:
    """What -march=native depends on: a library built for one CPU may not run on another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa() -> str:
    """The instruction-set cap asked for through ``CAFFE_MFV_NATIVE_ISA`` (validated)."""
    name = os.environ.get("CAFFE_MFV_NATIVE_ISA", "native").strip().lower() or "native"
    if name not in ISAS:
        raise ValueError(f"CAFFE_MFV_NATIVE_ISA={name!r}: expected one of {sorted(ISAS)}")
    if name != "native":
        if platform.machine() not in ("x86_64", "AMD64"):
            raise ValueError(
                f"CAFFE_MFV_NATIVE_ISA={name!r} applies to x86-64 only, not {platform.machine()}"
            )
        have = set(cpu_signature().split())
        missing = [f for f in ISAS[name][1] if f not in have]
        if missing:
            raise ValueError(f"CAFFE_MFV_NATIVE_ISA={name!r}: this CPU lacks {', '.join(missing)}")
    return name


def enabled() -> bool:
    """Whether compiled kernels may be used at all (Linux, and ``CAFFE_MFV_NATIVE`` is not 0)."""
    return os.environ.get("CAFFE_MFV_NATIVE", "1") != "0" and platform.system() == "Linux"


def cache_dir() -> Path:
    """Where built kernels are kept."""
    root = os.environ.get("CAFFE_MFV_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "caffe-mfv") / "native"


def _build(source: Path, stem: str, cc: str, flags: list[str], version: str) -> Path:
    """The kernel built with ``flags`` (from the cache, else compiled and renamed into place)."""
    key = hashlib.sha256(
        "\0".join([source.read_text(), version, cpu_signature(), " ".join(flags)]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"{stem}_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        run = subprocess.run(
            [cc, *flags, "-o", tmp, str(source), "-lm"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if run.returncode != 0:
            raise RuntimeError(f"{cc} failed on {source}:\n{run.stderr.strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(
    source: Path, stem: str, flags: list[str], *, fallback: str, optimize: str = "-O3"
) -> ctypes.CDLL | None:
    """Build ``source`` (once per source, compiler, flags and CPU) and load it.

    Parameters
    ----------
    source : Path
        The C file.
    stem : str
        Name stem of the built library in :func:`cache_dir`.
    flags : list of str
        Compiler flags beyond the optimisation level, ``-shared -fPIC``, the instruction set
        (:func:`isa`) and ``-fopenmp`` (dropped when the compiler lacks OpenMP).
    fallback : str
        What the caller does without the kernel, for the warning a failed build gives.
    optimize : str
        The optimisation level (a kernel whose ``-O3`` build measured slower chooses another).

    Returns
    -------
    ctypes.CDLL or None
        None when compiled kernels are disabled, there is no compiler, or the build fails (with a
        warning naming the compiler's error).
    """
    if not enabled():
        return None
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    flags = [optimize, *_COMMON, *flags, *ISAS[isa()][0]]
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
        try:
            target = _build(source, stem, cc, [*flags, "-fopenmp"], version)
        except RuntimeError:  # a compiler without OpenMP: the kernel runs on one thread
            target = _build(source, stem, cc, flags, version)
        return ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        warnings.warn(f"{source.name} could not be built ({e}); using {fallback}", stacklevel=3)
        return None
