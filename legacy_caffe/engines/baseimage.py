"""The Dockerfile's base (Debian 11): pulled where a registry answers, else made with debootstrap.

Made here it is the same ``debootstrap --variant=minbase bullseye`` the chroot root starts from,
packed into ``cache/legacy_caffe/bullseye-minbase.tar`` and imported as ``BASE_TAG``. The tar is
kept: another engine or another user (rootless Podman keeps one image store per user) imports it
without a second debootstrap (``LEGACY_CAFFE_BASE_TAR`` names one made elsewhere).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Protocol

from port.atomic import atomic_path

from .. import rootfs
from .base import EngineError


class ImageStore(Protocol):
    """What the base needs of a container engine; a protocol so container.py can import this."""

    name: str

    def call(
        self, *args: str, timeout: float | None = None, stdin: object = None
    ) -> subprocess.CompletedProcess: ...

    def image_id(self, ref: str) -> str | None: ...


UPSTREAM = f"debian:{rootfs.SUITE}"
BASE_TAG = f"localhost/caffe-mfv-{rootfs.SUITE}-base:minbase"
PULL_TIMEOUT_S = 180


def base_tar() -> Path:
    env = os.environ.get("LEGACY_CAFFE_BASE_TAR")
    return Path(env) if env else rootfs.cache_dir() / f"{rootfs.SUITE}-minbase.tar"


def ensure_base(engine: ImageStore) -> tuple[str, str]:
    """(image reference, how it was had) of a Debian 11 base in this engine's image store.

    ``LEGACY_CAFFE_BASE`` names one to use as is. Otherwise: an earlier import, a pull of the
    official image, an import of the kept tar, or a fresh debootstrap, in that order.
    """
    env = os.environ.get("LEGACY_CAFFE_BASE")
    if env:
        if engine.image_id(env) is None:
            raise EngineError(f"engine {engine.name}: LEGACY_CAFFE_BASE={env} is not an image here")
        return env, "LEGACY_CAFFE_BASE"
    if engine.image_id(BASE_TAG) is not None:
        return BASE_TAG, f"imported earlier ({BASE_TAG})"
    if engine.image_id(UPSTREAM) is not None:
        return UPSTREAM, "already pulled"
    try:
        proc = engine.call("pull", UPSTREAM, timeout=PULL_TIMEOUT_S)
        pulled = proc.returncode == 0
        why = "" if pulled else proc.stderr
    except EngineError as exc:
        pulled, why = False, str(exc)
    if pulled:
        return UPSTREAM, "pulled"
    rootfs._say(
        f"engine {engine.name}: cannot pull {UPSTREAM} ({_last_line(why)}); "
        f"making the base from a minimal debootstrap tree instead"
    )
    tar = base_tar()
    how = f"imported from {tar}"
    if not tar.is_file():
        make_base_tar(tar)
        how = f"debootstrap --variant=minbase {rootfs.SUITE}, imported from {tar}"
    import_tar(engine, tar)
    return BASE_TAG, how


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def make_base_tar(tar: Path) -> None:
    """debootstrap a minimal tree and pack it into ``tar`` (atomically; the tree is removed)."""
    if os.geteuid() != 0:
        raise EngineError(
            f"cannot make the {rootfs.SUITE} base: no registry answered, and debootstrap needs "
            f"root; have an administrator run `python -m legacy_caffe build --engine podman` once "
            f"and point LEGACY_CAFFE_BASE_TAR at its {tar.name}"
        )
    if shutil.which("debootstrap") is None:
        raise EngineError(
            "cannot make the base: debootstrap is not installed (apt-get install debootstrap)"
        )
    tree = tar.with_name(tar.stem + ".partial")
    rootfs._remove_tree(tree)
    mirror = rootfs.find_mirror()
    t0 = time.monotonic()
    try:
        rootfs._run_logged(
            rootfs.supervised(["debootstrap", "--variant=minbase", rootfs.SUITE, str(tree), mirror]),
            "debootstrap (base)",
        )  # fmt: skip
        with atomic_path(tar, suffix=".tar") as tmp:
            subprocess.run(
                ["tar", "--numeric-owner", "-C", str(tree), "-cf", str(tmp), "."], check=True
            )
    finally:
        rootfs._remove_tree(tree)
    rootfs._say(f"base tree made and packed in {time.monotonic() - t0:.0f} s: {tar}")


def import_tar(engine: ImageStore, tar: Path) -> None:
    """``<cli> import`` the base tar as ``BASE_TAG``."""
    t0 = time.monotonic()
    with open(tar, "rb") as fh:
        proc = engine.call("import", "-", BASE_TAG, stdin=fh, timeout=600)
    if proc.returncode != 0:
        raise EngineError(
            f"engine {engine.name}: importing {tar} failed: {(proc.stderr or '').strip()[-300:]}"
        )
    rootfs._say(
        f"engine {engine.name}: imported {tar} as {BASE_TAG} in {time.monotonic() - t0:.0f} s"
    )
