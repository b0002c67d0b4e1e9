"""What every engine shares: the interface, the environment passed inside, the run lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from .. import rootfs
from ..rootfs import BLAS_CHOICES, LegacyCaffeError

# Passed through from the host when set: thread counts and the OpenBLAS kernel decide the rounding.
PASSTHROUGH_ENV = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "GLOG_minloglevel",
)


class EngineError(LegacyCaffeError):
    """An engine is absent, broken, or cannot make its environment; the message says which."""


def inner_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a command sees inside, whichever engine runs it."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "GLOG_minloglevel": "2",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for key in PASSTHROUGH_ENV:
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


@contextlib.contextmanager
def run_lock() -> Iterator[None]:
    """Serialise runs: the chroot root's BLAS alternative is global, and two jobs on two cores
    would make each other's timings meaningless in a container too."""
    path = rootfs.cache_dir() / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Engine(ABC):
    """One way of running real Caffe: a debootstrap root (chroot) or an image (podman, docker).

    The BLAS choice (``inside/with_blas.sh``), the exchange folder (at ``/exchange``), the inside
    scripts (read-only at ``/opt/legacy_caffe/inside``) and the run lock are the same for all.
    """

    name: str = ""

    @abstractmethod
    def problem(self) -> str | None:
        """Why this engine cannot be used here (one line), or None when it can. Builds nothing."""

    @abstractmethod
    def is_built(self) -> bool:
        """Whether the environment (root or image) exists and matches the package list."""

    @abstractmethod
    def build(self, *, force: bool = False) -> dict:
        """Make the environment (idempotent); returns what was built, for the user."""

    @abstractmethod
    def _argv(self, argv: Sequence[str], blas: str, env: dict[str, str]) -> list[str]:
        """The host command that runs ``with_blas.sh BLAS argv...`` inside."""

    @abstractmethod
    def describe(self) -> dict:
        """What this engine is (name, image or root, quirks used), for doctor and the manifest."""

    def require(self) -> None:
        """Raise EngineError with the one-line reason when the engine is unusable."""
        reason = self.problem()
        if reason:
            raise EngineError(f"engine {self.name}: {reason}")

    def ensure_built(self) -> None:
        if not self.is_built():
            rootfs._say(f"engine {self.name}: no Caffe environment yet; building it first")
            self.build()

    def run(
        self,
        argv: Sequence[str],
        *,
        blas: str,
        env: dict[str, str] | None = None,
        capture: bool = False,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside with the chosen BLAS; the exchange folder is at ``/exchange``."""
        if blas not in BLAS_CHOICES:
            raise LegacyCaffeError(
                f"unknown BLAS {blas!r}; choose one of {', '.join(BLAS_CHOICES)}"
            )
        rootfs.exchange_dir().mkdir(parents=True, exist_ok=True)
        cmd = self._argv(argv, blas, inner_env(env))
        with run_lock():
            return subprocess.run(cmd, check=check, capture_output=capture, text=capture)
