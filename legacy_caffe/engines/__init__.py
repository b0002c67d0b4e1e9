"""Where real Caffe runs: a container engine (Podman, Docker) or the debootstrap root (chroot).

``--engine`` / ``LEGACY_CAFFE_ENGINE`` picks one; ``auto`` takes the first container engine that
answers, then the chroot root when running as root, else stops with one line saying what to
install. Everything else (BLAS switch, exchange folder, run lock, manifests) is engine-independent::

    from legacy_caffe import engines

    engines.use("podman")  # or leave it to LEGACY_CAFFE_ENGINE / auto
    engines.current().ensure_built()
    engines.run_inside(["python3", "-c", "import caffe"], blas="atlas")
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from ..rootfs import BLAS_CHOICES, LegacyCaffeError
from .base import Engine, EngineError
from .chroot import ChrootEngine
from .container import DockerEngine, PodmanEngine

__all__ = [
    "ENGINE_CHOICES", "Engine", "EngineError", "current", "ensure_built", "make", "resolve",
    "run_inside", "use",
]  # fmt: skip

ENGINE_CHOICES = ("auto", "podman", "docker", "chroot")
_CLASSES = {"podman": PodmanEngine, "docker": DockerEngine, "chroot": ChrootEngine}
_current: Engine | None = None


def make(name: str) -> Engine:
    """A fresh engine object by name (podman, docker, chroot)."""
    if name not in _CLASSES:
        raise EngineError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_CHOICES)}")
    return _CLASSES[name]()


def resolve(name: str | None = None) -> Engine:
    """The engine ``name`` (default ``$LEGACY_CAFFE_ENGINE``, else auto), checked to be usable."""
    name = name or os.environ.get("LEGACY_CAFFE_ENGINE") or "auto"
    if name != "auto":
        engine = make(name)
        engine.require()
        return engine
    reasons = []
    for candidate in ("podman", "docker", "chroot"):
        engine = make(candidate)
        reason = engine.problem()
        if reason is None:
            return engine
        reasons.append(f"{candidate}: {reason}")
    raise EngineError(
        "no engine can run Caffe here; install Podman (Debian/Ubuntu: apt-get install podman "
        "runc uidmap) or run as root for the debootstrap root (" + "; ".join(reasons) + ")"
    )


def use(name: str | None) -> Engine:
    """Pick the engine every later run goes through (the CLI calls this once)."""
    global _current
    _current = resolve(name)
    return _current


def current() -> Engine:
    """The engine picked with :func:`use`, or resolved from the environment on first need."""
    return _current if _current is not None else use(None)


def run_inside(
    argv: Sequence[str],
    *,
    blas: str,
    env: dict[str, str] | None = None,
    capture: bool = False,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``argv`` inside the current engine's environment with the chosen BLAS."""
    if blas not in BLAS_CHOICES:  # before an engine is looked for
        raise LegacyCaffeError(f"unknown BLAS {blas!r}; choose one of {', '.join(BLAS_CHOICES)}")
    return current().run(argv, blas=blas, env=env, capture=capture, check=check)


def ensure_built() -> None:
    """Build the current engine's environment first if there is none (nothing to goldens in one go)."""
    current().ensure_built()
