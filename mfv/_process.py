"""Process-wide tuning that only the command line and Dask workers apply (they own their process).

glibc hands large freed blocks (above a threshold that adapts up to 32 MiB) back to the kernel, so
a network whose activations run to hundreds of megabytes page-faults them in again at every step:
measured on the 2-core machine, VGG16 at batch 10 spent 18% of its forward/backward time that way
(0.299 -> 0.245 s per facet-step once freed memory is kept). Keeping it costs resident memory up to
the largest working set seen (+0.5 GB for VGG16), which a long MFV run holds anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER = 2**30  # bytes; mallopt takes an int


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the kernel.

    Returns True when applied (Linux with glibc), False elsewhere. Results do not depend on it.
    """
    if platform.system() != "Linux":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # No mmap'd blocks (they go back to the kernel on free, whatever their size), and no trimming
    # of the heap's top: freed blocks stay mapped for the next step's tensors.
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    return bool(mallopt(_M_TRIM_THRESHOLD, _NEVER) == 1 and ok)
