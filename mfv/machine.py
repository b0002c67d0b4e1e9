"""What a speed figure depends on: the CPU, its instruction sets, the libraries and their caps.

Every saved benchmark records :func:`machine_info` (pytest-benchmark's ``machine_info`` through
``tests/conftest.py``, each line of ``tests/speed_cases.py``), so that a figure is never read
without the machine it was measured on: the same commands differ 3x between an Intel Xeon with
AVX-512 and an AMD EPYC with AVX2 only. ``python -m mfv.machine`` prints it as JSON.

The caps that make an AVX-512 machine run as an AVX2 one are recorded with it:
``ONEDNN_MAX_CPU_ISA`` (oneDNN's convolutions), ``ATEN_CPU_CAPABILITY`` (torch's own vector
kernels), ``MKL_ENABLE_INSTRUCTIONS`` (MKL's matrix products) and ``CAFFE_MFV_NATIVE_ISA`` (the TV
kernel, :mod:`mfv._tv_native`). :data:`AVX2_CAPS` sets all four.
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

__all__ = ["machine_info", "isa_class", "AVX2_CAPS", "CAP_VARIABLES"]

# The environment that caps every library this project's speed depends on at AVX2.
AVX2_CAPS = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "CAFFE_MFV_NATIVE_ISA": "avx2",
}
# ... and the settings that change how idle threads wait (a step took up to 2x longer with the
# wrong one on a loaded machine; see README, Performance).
CAP_VARIABLES = (
    *AVX2_CAPS,
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "CAFFE_MFV_NATIVE",
)
# The instruction-set flags that decide which code paths the libraries take.
_ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "asimd",
    "sve",
)


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _torch_info() -> dict:
    try:
        import torch
    except ImportError:
        return {}
    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", config)
    onednn = re.search(r"MKL-DNN v([\w.]+)", config)
    info = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": mkl.group(1) if mkl else None,
        "onednn": onednn.group(1) if onednn and torch.backends.mkldnn.is_available() else None,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
    }
    return info


def _tv_kernel() -> dict:
    try:
        from port import native

        from . import _tv_native

        if not _tv_native.available():
            return {"tv_kernel": None}
        return {
            "tv_kernel": {
                "isa": native.isa(),
                "vector_bytes": _tv_native.vector_bytes(),
                "openmp": _tv_native.threaded(),
            }
        }
    except (ImportError, ValueError) as e:
        return {"tv_kernel": f"unavailable: {e}"}


def _fc_kernel() -> dict:
    """The port's compiled small-batch fully connected kernel (:mod:`port.layers.skinny`)."""
    try:
        from port.layers import skinny

        if not skinny.available():
            return {"fc_kernel": None}
        return {"fc_kernel": {"vector_bytes": skinny.vector_bytes()}}
    except (ImportError, ValueError) as e:
        return {"fc_kernel": f"unavailable: {e}"}


def isa_class(flags: set[str] | list[str], caps: dict[str, str] | None = None) -> str:
    """The widest x86 vector class the CPU offers and the caps let the libraries use:
    ``"AVX-512"``, ``"AVX2"``, ``"SSE"`` or the architecture's own name elsewhere."""
    flags = set(flags)
    caps = dict(os.environ if caps is None else caps)
    capped = any(
        caps.get(k, "").upper().startswith("AVX2")
        for k in ("ONEDNN_MAX_CPU_ISA", "CAFFE_MFV_NATIVE_ISA")
    )
    if "avx512f" in flags and not capped:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2" + (" (capped)" if "avx512f" in flags else "")
    if "sse2" in flags or "sse4_2" in flags:
        return "SSE"
    return platform.machine()


def machine_info(tv_kernel: bool = True) -> dict:
    """CPU model, instruction sets, cores, memory, torch/MKL/oneDNN versions and the caps set.

    ``tv_kernel``: also report the compiled TV kernel's instruction set (compiles it if needed).
    """
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", cpu.get("Features", "")).split())
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    mem_gib = None
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kb = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
        mem_gib = round(int(kb.group(1)) / 2**20, 1) if kb else None
    except OSError:
        pass
    info = {
        "cpu_model": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": cpu.get("vendor_id"),
        "cpu_family_model": f"{cpu.get('cpu family', '?')}/{cpu.get('model', '?')}"
        if cpu
        else None,
        "isa_flags": sorted(f for f in _ISA_FLAGS if f in flags),
        "isa_class": isa_class(flags),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "memory_gib": mem_gib,
        "load_average": [round(x, 2) for x in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "python": platform.python_version(),
        "caps": {k: os.environ[k] for k in CAP_VARIABLES if k in os.environ},
    }
    info.update(_torch_info())
    if tv_kernel:
        info.update(_tv_kernel())
        info.update(_fc_kernel())
    return info


if __name__ == "__main__":
    print(json.dumps(machine_info(), indent=2))
