"""The debootstrap root entered with ``unshare`` and ``chroot`` (needs root on the host)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

from .. import rootfs
from ..packages import packages_digest, read_packages
from .base import Engine


class ChrootEngine(Engine):
    """``cache/legacy_caffe/rootfs`` (see :mod:`legacy_caffe.rootfs`)."""

    name = "chroot"

    def problem(self) -> str | None:
        if sys.platform != "linux":
            return "the debootstrap root needs Linux; use --engine podman or docker"
        if os.geteuid() != 0:
            return "needs root (debootstrap, chroot, mount); without sudo use --engine podman"
        missing = [t for t in ("unshare", "chroot", "mount") if shutil.which(t) is None]
        if missing:
            return f"{', '.join(missing)} not found on PATH (util-linux, coreutils)"
        return None

    def is_built(self) -> bool:
        info = rootfs.marker_info()
        return info is not None and info.get("packages_digest") == packages_digest(read_packages())

    def build(self, *, force: bool = False) -> dict:
        self.require()
        return {"root": str(rootfs.root_dir()), **rootfs.build(force=force)}

    def _argv(self, argv: Sequence[str], blas: str, env: dict[str, str]) -> list[str]:
        self.require()
        return rootfs.chroot_argv(argv, blas, env)

    def describe(self) -> dict:
        info = rootfs.marker_info() or {}
        return {
            "name": self.name,
            "root": str(rootfs.root_dir()),
            "built_at": info.get("built_at"),
            "packages_digest": info.get("packages_digest"),
        }
