"""Podman and Docker: the image of ``docker/Dockerfile``, built and run through the engine's CLI.

The image tag carries the package list's digest (``caffe-mfv-legacy:<digest>``), so a changed list
builds a new image. The inside scripts are mounted over the image's copy at run time, as the chroot
engine mounts them, so an edited script needs no rebuild.

Engines differ between machines in what their sandbox may do (measured: crun refused cgroups in
hybrid mode, both runtimes refused to raise RLIMIT_NOFILE/NPROC, buildah's default isolation could
not start RUN steps). Rather than hard-code one machine's flags, the first use probes candidates
from the plainest up (a ``true`` in the base image; a one-line build) and keeps the first that works
in ``cache/legacy_caffe/quirks-<engine>-<uid>-<service>.json``; ``LEGACY_CAFFE_RUN_ARGS`` /
``LEGACY_CAFFE_BUILD_ARGS`` (and ``LEGACY_CAFFE_RUNTIME`` for podman) set them instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from port.atomic import write_text_atomic
from port.paths import repo_root

from .. import rootfs
from ..packages import PACKAGES_FILE, packages_digest, read_packages
from . import baseimage
from .base import Engine, EngineError

IMAGE_REPO = "localhost/caffe-mfv-legacy"
DOCKERFILE = repo_root() / "docker" / "Dockerfile"
PROBE_TIMEOUT_S = 120


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def ulimit_candidates() -> list[list[str]]:
    """``--ulimit`` sets to try, plainest first: none (the engine's defaults), this process's own
    limits, then low ones (1024 files, 4096 processes; measured: a sandbox that refused even the
    host's own nproc limit accepted these). Never above this process's limits."""
    own, low = [], []
    for name, which, floor in (
        ("nofile", resource.RLIMIT_NOFILE, 1024),
        ("nproc", resource.RLIMIT_NPROC, 4096),
    ):
        soft, hard = resource.getrlimit(which)
        if soft == resource.RLIM_INFINITY or hard == resource.RLIM_INFINITY:
            continue
        own += ["--ulimit", f"{name}={soft}:{hard}"]
        n = min(floor, soft)
        low += ["--ulimit", f"{name}={n}:{n}"]
    return [[], *[c for c in (own, low) if c]]


class ContainerEngine(Engine):
    """An OCI engine driven through its command line (``podman`` or ``docker``)."""

    cli = ""
    install_hint = ""
    isolation_candidates: tuple[tuple[str, ...], ...] = ((),)

    def __init__(self) -> None:
        self._quirks: dict | None = None
        self._problem: str | None = None  # "" once checked and fine

    # --- the command line ---------------------------------------------------------------------

    def _global(self) -> list[str]:
        """Flags before the subcommand (podman's ``--runtime``)."""
        return []

    def cmd(self, *args: str) -> list[str]:
        return [self.cli, *self._global(), *args]

    def call(
        self, *args: str, timeout: float | None = None, stdin: object = None
    ) -> subprocess.CompletedProcess:
        """Run the CLI, capturing its output; a missing or hung CLI becomes an EngineError."""
        try:
            return subprocess.run(
                self.cmd(*args), capture_output=True, text=True, timeout=timeout, stdin=stdin,
                env=self.env(),
            )  # fmt: skip
        except FileNotFoundError:
            raise EngineError(f"engine {self.name}: `{self.cli}` is not installed") from None
        except subprocess.TimeoutExpired:
            raise EngineError(
                f"engine {self.name}: `{self.cli} {' '.join(args[:2])}` hung for {timeout} s"
            ) from None

    def env(self) -> dict[str, str] | None:
        """The CLI's environment (None: ours)."""
        return None

    def problem(self) -> str | None:
        if self._problem is None:
            self._problem = self._find_problem() or ""
        return self._problem or None

    def _find_problem(self) -> str | None:
        if shutil.which(self.cli) is None:
            return f"`{self.cli}` is not installed ({self.install_hint})"
        try:
            proc = subprocess.run(
                [self.cli, "info", "--format", "{{json .}}"],
                capture_output=True, text=True, timeout=60, env=self.env(),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"`{self.cli} info` did not answer within 60 s"
        if proc.returncode != 0:
            return f"`{self.cli} info` failed: {_tail(proc.stderr or proc.stdout)}"
        return None

    # --- the image ----------------------------------------------------------------------------

    def image_tag(self) -> str:
        return f"{IMAGE_REPO}:{packages_digest(read_packages())}"

    def image_id(self, ref: str) -> str | None:
        proc = self.call("image", "inspect", "--format", "{{.Id}}", ref, timeout=120)
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    def is_built(self) -> bool:
        return self.image_id(self.image_tag()) is not None

    def build(self, *, force: bool = False) -> dict:
        """Build the image from docker/Dockerfile (the base pulled, or made with debootstrap)."""
        self.require()
        tag = self.image_tag()
        if not force and self.is_built():
            rootfs._say(f"engine {self.name}: image {tag} is there; nothing to do")
            return self.describe()
        t0 = time.monotonic()
        base, base_how = baseimage.ensure_base(self)
        quirks = self.quirks(base)
        timings = {"base_s": round(time.monotonic() - t0, 1)}
        t0 = time.monotonic()
        with _staged_context() as ctx:
            rootfs._say(f"engine {self.name}: building {tag} from {DOCKERFILE.name} on {base}")
            rootfs._run_logged(
                self.cmd("build", *quirks["build"], "--force-rm", "--build-arg", f"BASE={base}",
                         "-f", str(ctx / "Dockerfile"), "-t", tag, str(ctx)),
                f"{self.cli} build", env=self.env(),
            )  # fmt: skip
        timings["image_s"] = round(time.monotonic() - t0, 1)
        rootfs._say(f"engine {self.name}: image {tag} built in {timings['image_s']} s")
        return {**self.describe(), "base": base, "base_source": base_how, "timings": timings}

    # --- quirks -------------------------------------------------------------------------------

    def _quirks_file(self) -> Path:
        # Per user (rootless and rootful Podman differ) and per service the CLI talks to.
        where = os.environ.get("DOCKER_HOST" if self.cli == "docker" else "CONTAINER_HOST", "")
        tag = hashlib.sha256(where.encode()).hexdigest()[:8] if where else "local"
        return rootfs.cache_dir() / f"quirks-{self.name}-{os.geteuid()}-{tag}.json"

    def _version(self) -> str:
        return self.call("--version", timeout=60).stdout.strip()

    def quirks(self, base: str | None = None) -> dict:
        """Flags this machine needs: {"global": [...], "run": [...], "build": [...], "how": ...}."""
        if self._quirks is not None:
            return self._quirks
        configured = self._configured_quirks()
        if configured is not None:
            self._quirks = configured
            return configured
        path = self._quirks_file()
        version = self._version()
        try:
            saved = json.loads(path.read_text())
            if saved.get("version") == version:
                self._quirks = saved
                return saved
        except (OSError, ValueError):
            pass
        if base is None:
            base, _ = baseimage.ensure_base(self)
        found = {"version": version, "how": "probed", **self._probe(base)}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(found, indent=1) + "\n")
        self._quirks = found
        return found

    def _configured_quirks(self) -> dict | None:
        run, build = (
            os.environ.get("LEGACY_CAFFE_RUN_ARGS"),
            os.environ.get("LEGACY_CAFFE_BUILD_ARGS"),
        )
        if run is None and build is None:
            return None
        return {
            "how": "LEGACY_CAFFE_RUN_ARGS / LEGACY_CAFFE_BUILD_ARGS",
            "global": self._runtime_flags(os.environ.get("LEGACY_CAFFE_RUNTIME")),
            "run": shlex.split(run or ""),
            "build": shlex.split(build or ""),
        }

    def _runtime_flags(self, runtime: str | None) -> list[str]:
        return []

    def _runtimes(self) -> list[str | None]:
        return [None]

    def _probe(self, base: str) -> dict:
        """The plainest runtime/ulimit/isolation/network flags with which a container runs."""
        failures = []
        for runtime in self._runtimes():
            self._quirks = {"global": self._runtime_flags(runtime), "run": [], "build": []}
            for ulimits in ulimit_candidates():
                proc = self.call("run", "--rm", "--network=none", *ulimits, base, "true",
                                 timeout=PROBE_TIMEOUT_S)  # fmt: skip
                if proc.returncode != 0:
                    failures.append(
                        f"runtime {runtime or 'default'} {ulimits}: {_tail(proc.stderr)}"
                    )
                    continue
                build = self._probe_build(base, failures)
                if build is not None:
                    self._quirks = None
                    return {"global": self._runtime_flags(runtime), "run": ulimits, "build": build}
        self._quirks = None
        raise EngineError(
            f"engine {self.name}: no runtime/ulimit/isolation combination could run a container "
            f"here; tried: {' | '.join(failures[-6:])} (set LEGACY_CAFFE_RUN_ARGS and "
            "LEGACY_CAFFE_BUILD_ARGS to the flags this machine needs)"
        )

    def _probe_build(self, base: str, failures: list[str]) -> list[str] | None:
        """Flags under which a one-line build reaches the Debian mirror (what the real one needs)."""
        host = rootfs.find_mirror().split("//", 1)[-1].split("/", 1)[0]
        with tempfile.TemporaryDirectory(prefix="probe-", dir=_tmp_parent()) as ctx:
            (Path(ctx) / "Dockerfile").write_text(f"FROM {base}\nRUN getent hosts {host}\n")
            for network in ((), ("--network=host",)):
                for isolation in self.isolation_candidates:
                    flags = [*isolation, *network]
                    proc = self.call("build", "--no-cache", "--force-rm", "-q", *flags,
                                     "-f", f"{ctx}/Dockerfile", ctx, timeout=PROBE_TIMEOUT_S)  # fmt: skip
                    if proc.returncode == 0:
                        image = _tail(proc.stdout)
                        self.call("rmi", "-f", image, timeout=PROBE_TIMEOUT_S)
                        return flags
                    failures.append(f"build {flags}: {_tail(proc.stderr)}")
        return None

    # --- running ------------------------------------------------------------------------------

    def _argv(self, argv: Sequence[str], blas: str, env: dict[str, str]) -> list[str]:
        self.require()
        tag = self.image_tag()
        if self.image_id(tag) is None:
            raise EngineError(
                f"engine {self.name}: no image {tag}; build it with: "
                f"python -m legacy_caffe build --engine {self.name}"
            )
        q = self.quirks()
        exchange = rootfs.exchange_dir().resolve()
        return [
            self.cli, *q["global"], "run", "--rm", "--network=none", *q["run"],
            "-v", f"{rootfs.INSIDE_DIR}:{rootfs.INSIDE_MOUNT}:ro",
            "-v", f"{exchange}:{rootfs.EXCHANGE_MOUNT}",
            *[a for k, v in env.items() for a in ("-e", f"{k}={v}")],
            tag, blas, *argv,
        ]  # fmt: skip

    def describe(self) -> dict:
        tag = self.image_tag()
        return {
            "name": self.name,
            "cli": self._version(),
            "image": tag,
            "image_id": self.image_id(tag),
            "rootless": os.geteuid() != 0,
            "quirks": {k: v for k, v in (self._quirks or {}).items() if k != "version"},
        }


class PodmanEngine(ContainerEngine):
    name = cli = "podman"
    install_hint = "Debian/Ubuntu: apt-get install podman runc uidmap"
    isolation_candidates = ((), ("--isolation=chroot",))

    def _global(self) -> list[str]:
        return list((self._quirks or {}).get("global", []))

    def _runtime_flags(self, runtime: str | None) -> list[str]:
        return ["--runtime", runtime] if runtime else []

    def _runtimes(self) -> list[str | None]:
        # The default runtime first; then the others installed (Debian ships crun and runc).
        return [None, *[r for r in ("runc", "crun") if shutil.which(r)]]


class DockerEngine(ContainerEngine):
    """The ``docker`` CLI against whatever ``DOCKER_HOST`` serves (dockerd, or Podman's API)."""

    name = cli = "docker"
    install_hint = "a running Docker daemon, or DOCKER_HOST at Podman's `podman system service`"

    def env(self) -> dict[str, str]:
        # The classic builder: the context is staged (no .dockerignore needed) and Podman's
        # Docker-API service has no BuildKit session endpoint.
        return {**os.environ, "DOCKER_BUILDKIT": "0"}


def _tmp_parent() -> Path:
    """Scratch space in the cache (the engines must be able to read it; /tmp may be private)."""
    path = rootfs.cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


class _staged_context:
    """A build context holding only what the Dockerfile copies (no multi-GB cache/ sent)."""

    def __enter__(self) -> Path:
        self._tmp = tempfile.TemporaryDirectory(prefix="context-", dir=_tmp_parent())
        ctx = Path(self._tmp.name)
        shutil.copyfile(DOCKERFILE, ctx / "Dockerfile")
        (ctx / "legacy_caffe").mkdir()
        shutil.copyfile(PACKAGES_FILE, ctx / "legacy_caffe" / "packages.txt")
        shutil.copytree(
            rootfs.INSIDE_DIR, ctx / "legacy_caffe" / "inside",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )  # fmt: skip
        return ctx

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()
