"""What the inside scripts report about the environment they run in (Python 3.9, inside the root).

Standalone: runs under Debian 11's Python with pycaffe; imports nothing of the project.
"""

import ctypes
import os
import platform
import subprocess
import sys

LIBDIR = "/usr/lib/x86_64-linux-gnu"


def blas_alternative():
    """Where the libblas.so.3 alternative points (what the next process will load)."""
    return os.path.realpath(os.path.join(LIBDIR, "libblas.so.3"))


def loaded_blas():
    """BLAS / LAPACK libraries actually mapped into this process (import caffe first)."""
    found = set()
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            # Only the system libraries: scipy's and numpy's wrapper modules also say "blas".
            if len(parts) < 6 or not parts[5].startswith(LIBDIR + "/"):
                continue
            if any(word in parts[5] for word in ("blas", "lapack", "atlas")):
                found.add(os.path.realpath(parts[5]))
    return sorted(found)


def blas_name(paths):
    """'atlas' or 'openblas' from the mapped libraries; None when neither is recognisable."""
    joined = " ".join(paths)
    if "openblas" in joined:
        return "openblas"
    if "atlas" in joined:
        return "atlas"
    return None


def openblas_config():
    """OpenBLAS's build string and the CPU kernel it chose (the kernel decides its rounding)."""
    for path in loaded_blas():
        if "openblas" not in path:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            return None
        out = {}
        for name in ("openblas_get_config", "openblas_get_corename"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                out[name[len("openblas_get_") :]] = fn().decode()
        nthreads = getattr(lib, "openblas_get_num_threads", None)
        if nthreads is not None:
            out["num_threads"] = nthreads()
        return out
    return None


def package_versions(names):
    """Installed Debian versions of the given packages (missing ones map to None)."""
    out = {}
    for name in names:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        out[name] = proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None
    return out


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def debian_version():
    try:
        with open("/etc/debian_version") as fh:
            return fh.read().strip()
    except OSError:
        return None


PACKAGES = [
    "caffe",
    "libcaffe1",
    "python3-caffe",
    "libatlas3-base",
    "libopenblas0-pthread",
    "python3",
    "python3-numpy",
    "python3-protobuf",
    "python3-skimage",
    "libprotobuf23",
]


def environment():
    """Everything a golden manifest records about the Caffe that made it."""
    import caffe
    import numpy

    loaded = loaded_blas()
    return {
        "caffe": getattr(caffe, "__version__", None),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "debian": debian_version(),
        "blas_alternative": blas_alternative(),
        "blas_loaded": loaded,
        "blas": blas_name(loaded),
        "blas_requested": os.environ.get("LEGACY_CAFFE_BLAS"),
        "openblas": openblas_config(),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "threads_env": {
            k: os.environ[k]
            for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE")
            if k in os.environ
        },
        "packages": package_versions(PACKAGES),
        "argv0": sys.argv[0],
    }
