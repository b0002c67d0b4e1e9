"""mfv._process: the allocator setting of the command line, applied in a child process only."""

from __future__ import annotations

import subprocess
import sys


def test_keep_freed_memory_in_a_fresh_process() -> None:
    code = (
        "import ctypes, platform; from mfv._process import keep_freed_memory; "
        "ok = keep_freed_memory(); "
        "print(ok, platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    applied, glibc = out == ["True", "True"], out[1] == "True"
    assert applied == glibc  # applied exactly where glibc is the allocator
