"""The Debian 11 root filesystem with real Caffe 1.0, built with debootstrap and run with chroot.

Machines here have a docker client but no engine, so the same environment as docker/Dockerfile is
built as a plain directory tree. Layout under the cache (``LEGACY_CAFFE_ROOT`` overrides the root):

    cache/legacy_caffe/rootfs/          the finished root; holds MARKER once complete
    cache/legacy_caffe/rootfs.partial/  a build in progress (removed and restarted if found)
    cache/legacy_caffe/exchange/        bound at /exchange inside: files passed in and out
    cache/legacy_caffe/run.lock         serialises runs (the BLAS choice is global to the root)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from port.errors import ToolError
from port.paths import cache_root

from .packages import PACKAGES_FILE, packages_digest, read_packages

INSIDE_DIR = Path(__file__).resolve().parent / "inside"
SUITE = "bullseye"
MARKER = ".legacy_caffe_complete.json"
# Where the root sees the project: our inside scripts and the exchange folder.
INSIDE_MOUNT = "/opt/legacy_caffe/inside"
EXCHANGE_MOUNT = "/exchange"
BLAS_CHOICES = ("atlas", "openblas")
# Measured ~1.1 GB once installed; debootstrap also keeps its .debs while it works.
MIN_FREE_BYTES = 3 * 1024**3
# Every mount a build step makes (debootstrap's /proc and /sys, ours for apt) lives in a private
# mount namespace: it vanishes with the step's last process, so no later build finds a root it
# cannot delete. The step also gets its own PID namespace whose init (a shell that only waits, so
# its parent-death signal stays set: apt-get as init cleared it, measured) dies with unshare
# (--kill-child), and unshare dies with us (PR_SET_PDEATHSIG): a build killed with SIGKILL takes
# every process of the step, and so the namespace and its mounts, along.
PRIVATE_MOUNTS = (
    "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--",
)  # fmt: skip
_PR_SET_PDEATHSIG = 1


def supervised(argv: Sequence[str]) -> list[str]:
    """``argv`` as a child of a waiting init in private mount and PID namespaces."""
    return [*PRIVATE_MOUNTS, "sh", "-c", '"$@" & wait "$!"', "sh", *argv]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_WITH_PROC = 'set -e; mount -t proc proc "$1/proc"; shift; "$@" & wait "$!"'


class LegacyCaffeError(ToolError, RuntimeError):
    """Something the user has to fix before the legacy environment can be built or run."""


def _say(msg: str) -> None:
    print(f"[legacy_caffe] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """``<repo>/cache/legacy_caffe``: the root, the exchange folder and the run lock."""
    return cache_root() / "legacy_caffe"


def root_dir() -> Path:
    """The root filesystem's folder: ``$LEGACY_CAFFE_ROOT`` or ``<repo>/cache/legacy_caffe/rootfs``."""
    env = os.environ.get("LEGACY_CAFFE_ROOT")
    return Path(env).resolve() if env else cache_dir() / "rootfs"


def exchange_dir() -> Path:
    """Host side of /exchange: ``$LEGACY_CAFFE_EXCHANGE`` or beside the root."""
    env = os.environ.get("LEGACY_CAFFE_EXCHANGE")
    return Path(env).resolve() if env else root_dir().parent / "exchange"


def marker_info(root: Path | None = None) -> dict | None:
    """The completion marker's contents, or None when the root is absent or half-built."""
    path = (root or root_dir()) / MARKER
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_complete(root: Path | None = None) -> bool:
    return marker_info(root) is not None


# --- mirror ---------------------------------------------------------------------------------


def parse_apt_sources(text: str, *, deb822: bool) -> list[tuple[str, list[str]]]:
    """(uri, suites) of every binary 'deb' entry of an apt sources file, in file order."""
    entries: list[tuple[str, list[str]]] = []
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                entries.append((uri, fields.get("suites", "").split()))
    else:
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if not parts or parts[0] != "deb":
                continue
            parts = parts[1:]
            if parts and parts[0].startswith("["):  # options like [arch=amd64 signed-by=...]
                while parts and not parts[0].endswith("]"):
                    parts = parts[1:]
                parts = parts[1:]
            if len(parts) >= 2:
                entries.append((parts[0], [parts[1]]))
    return entries


def pick_debian_mirror(entries: Sequence[tuple[str, list[str]]]) -> str | None:
    """The first entry that serves the main Debian archive (not security, not updates)."""
    for uri, suites in entries:
        if "security" in uri:
            continue
        if suites and all(re.search(r"-(security|updates|backports)$", s) for s in suites):
            continue
        if re.search(r"/debian/?$", uri):
            return uri.rstrip("/")
    return None


def find_mirror() -> str:
    """The Debian mirror this machine's apt uses (``$LEGACY_CAFFE_MIRROR`` overrides).

    The repository never names a registry host; the machine's configuration already does.
    """
    env = os.environ.get("LEGACY_CAFFE_MIRROR")
    if env:
        return env
    entries: list[tuple[str, list[str]]] = []
    sources_d = Path("/etc/apt/sources.list.d")
    if sources_d.is_dir():
        for path in sorted(sources_d.glob("*.sources")):
            entries += parse_apt_sources(path.read_text(errors="replace"), deb822=True)
        for path in sorted(sources_d.glob("*.list")):
            entries += parse_apt_sources(path.read_text(errors="replace"), deb822=False)
    main_list = Path("/etc/apt/sources.list")
    if main_list.is_file():
        entries += parse_apt_sources(main_list.read_text(errors="replace"), deb822=False)
    mirror = pick_debian_mirror(entries)
    if mirror is None:
        raise LegacyCaffeError(
            "found no Debian archive in /etc/apt/sources.list{,.d/*}; "
            "set LEGACY_CAFFE_MIRROR to a Debian mirror URL that carries bullseye"
        )
    return mirror


# --- build ----------------------------------------------------------------------------------


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (a half-built root must not be deleted through them)."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            point = line.split()[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def _remove_tree(path: Path) -> None:
    """Delete a half-built root, refusing anything that does not look like one."""
    if not path.exists():
        return
    # LEGACY_CAFFE_ROOT may point anywhere: delete only an empty folder or a Debian tree.
    if (
        any(path.iterdir())
        and not (path / "etc" / "debian_version").is_file()
        and not (path / "debootstrap").is_dir()
    ):
        raise LegacyCaffeError(
            f"{path} is neither empty nor a Debian root filesystem; not deleting it "
            "(point LEGACY_CAFFE_ROOT at a new folder)"
        )
    busy = _mounts_under(path)
    if busy:
        raise LegacyCaffeError(
            f"{path} has mounts inside it ({', '.join(busy)}); unmount them (umount -R) first"
        )
    shutil.rmtree(path)


def _check_preconditions(parent: Path) -> None:
    if os.geteuid() != 0:
        raise LegacyCaffeError(
            "building the Caffe root needs root (debootstrap and chroot); run as root or with sudo"
        )
    if sys.platform != "linux":
        raise LegacyCaffeError("the debootstrap root needs Linux; elsewhere use docker/Dockerfile")
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < MIN_FREE_BYTES:
        raise LegacyCaffeError(
            f"only {free / 1024**3:.1f} GB free under {parent}; the root needs "
            f"{MIN_FREE_BYTES / 1024**3:.0f} GB (set LEGACY_CAFFE_ROOT to a roomier disk)"
        )
    if shutil.which("debootstrap") is None:
        if shutil.which("apt-get") is None:
            raise LegacyCaffeError(
                "debootstrap is not installed and there is no apt-get to install it; "
                "install the 'debootstrap' package (it is a shell script; any Linux can run it)"
            )
        _say("debootstrap is not installed; installing it with 'apt-get install -y debootstrap'")
        _run_logged(["apt-get", "install", "-y", "debootstrap"], "apt-get install debootstrap")
        if shutil.which("debootstrap") is None:
            raise LegacyCaffeError("apt-get installed debootstrap but it is not on PATH")


def _follow(proc: subprocess.Popen, log_name: str, what: str, start: float) -> None:
    """Wait for a step, echoing its latest log line every 5 s."""
    last = ""
    next_report = start + 5
    while proc.poll() is None:
        time.sleep(0.5)  # short polls: a step is not held up to the next report
        if time.monotonic() < next_report:
            continue
        next_report += 5
        with open(log_name, errors="replace") as fh:
            lines = [ln.strip() for ln in fh.readlines()[-1:]]
        if lines and lines[-1] != last:
            last = lines[-1]
            _say(f"  {what} ({time.monotonic() - start:.0f} s): {last[:100]}")


def _run_logged(argv: Sequence[str], what: str, *, env: dict[str, str] | None = None) -> None:
    """Run a long step, echoing a line of progress every few seconds and the log tail on failure."""
    start = time.monotonic()
    with tempfile.NamedTemporaryFile(
        "w+", prefix="legacy_caffe_", suffix=".log", delete=False
    ) as log:
        # Own process group, so an interrupted step can be stopped with all its children
        # (debootstrap is a shell script driving wget and dpkg).
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        try:
            _follow(proc, log.name, what, start)
        except BaseException:
            # Ctrl-C / SIGTERM: stop the step too, or it keeps writing into a tree the next
            # build is about to delete.
            _say(f"interrupted: stopping {what}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise
    if proc.returncode != 0:
        tail = Path(log.name).read_text(errors="replace").splitlines()[-25:]
        raise LegacyCaffeError(
            f"{what} failed (exit {proc.returncode}); full log {log.name}; last lines:\n"
            + "\n".join(tail)
        )
    os.unlink(log.name)


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """One build per root at a time: a second one would delete the tree the first is filling."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(root.name + ".build.lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"another build of {root} is running; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build(root: Path | None = None, *, force: bool = False) -> dict:
    """Build (or confirm) the root; return its marker (see ``_build``)."""
    root = (root or root_dir()).resolve()
    with _build_lock(root):
        return _build(root, force=force)


def _build(root: Path, *, force: bool) -> dict:
    """Build (or confirm) the root; return its marker. Idempotent and safe to interrupt.

    The tree is assembled in ``<root>.partial`` and renamed into place only once the packages are
    installed and the marker is written, so an interrupted build never looks finished.
    """
    packages = read_packages()
    digest = packages_digest(packages)
    info = marker_info(root)
    if info is not None and not force:
        if info.get("packages_digest") == digest:
            _say(f"root is complete at {root} (built {info.get('built_at')}); nothing to do")
            return info
        _say(f"{PACKAGES_FILE.name} changed since the root was built; installing the new list")
        _check_preconditions(root.parent)
        _install_packages(root, packages)
        return _write_marker(root, packages, info.get("mirror", ""), info.get("timings", {}))

    _check_preconditions(root.parent)
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        _say(f"removing a half-built root at {partial}")
        _remove_tree(partial)
    if root.exists():
        _say(f"{root} has no completion marker (interrupted or foreign); rebuilding it")
        _remove_tree(root)

    mirror = find_mirror()
    timings: dict[str, float] = {}
    _say(f"debootstrap --variant=minbase {SUITE} into {partial} from {mirror}")
    t0 = time.monotonic()
    _run_logged(
        supervised(["debootstrap", "--variant=minbase", SUITE, str(partial), mirror]),
        "debootstrap",
    )
    timings["debootstrap_s"] = round(time.monotonic() - t0, 1)
    _say(f"debootstrap done in {timings['debootstrap_s']} s")

    t0 = time.monotonic()
    _install_packages(partial, packages)
    timings["install_s"] = round(time.monotonic() - t0, 1)
    _say(f"packages installed in {timings['install_s']} s")

    for mount_point in (INSIDE_MOUNT, EXCHANGE_MOUNT):
        (partial / mount_point.lstrip("/")).mkdir(parents=True, exist_ok=True)
    info = _write_marker(partial, packages, mirror, timings)
    os.replace(partial, root)
    _say(f"root ready at {root}")
    return info


def _install_packages(root: Path, packages: list[str]) -> None:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LANG": "C.UTF-8",
        "HOME": "/root",
    }
    # apt inside the chroot resolves names through the root's own resolv.conf.
    if Path("/etc/resolv.conf").is_file():
        shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    _say(f"apt-get install {len(packages)} packages (and their dependencies) in the root")
    in_root = [*PRIVATE_MOUNTS, "sh", "-c", _WITH_PROC, "sh", str(root), "chroot", str(root)]
    _run_logged([*in_root, "apt-get", "update"], "apt-get update", env=env)
    _run_logged(
        [*in_root, "apt-get", "install", "-y", "--no-install-recommends", *packages],
        "apt-get install",
        env=env,
    )
    # The .debs are only needed once; dropping them saves ~250 MB per machine.
    subprocess.run([*in_root, "apt-get", "clean"], env=env, check=False)


def _write_marker(root: Path, packages: list[str], mirror: str, timings: dict) -> dict:
    info = {
        "suite": SUITE,
        "mirror": mirror,
        "packages": packages,
        "packages_digest": packages_digest(packages),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "timings": timings,
    }
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, root / MARKER)
    return info


# --- run ------------------------------------------------------------------------------------


def _require_root_fs(root: Path) -> None:
    if os.geteuid() != 0:
        raise LegacyCaffeError("running inside the Caffe root needs root (chroot, mount)")
    if not is_complete(root):
        raise LegacyCaffeError(
            f"no finished Caffe root at {root}; build it with: python -m legacy_caffe build"
        )


def chroot_argv(argv: Sequence[str], blas: str, env: dict[str, str]) -> list[str]:
    """The host command that runs ``with_blas.sh BLAS argv...`` inside the root.

    Mounts live in a private mount namespace (unshare), so they vanish with the process even if it
    is killed; nothing is left mounted inside the cache.
    """
    root = root_dir()
    _require_root_fs(root)
    for mount_point in (INSIDE_MOUNT, EXCHANGE_MOUNT):
        (root / mount_point.lstrip("/")).mkdir(parents=True, exist_ok=True)
    script = (
        'set -e; r="$1"; mount -t proc proc "$r/proc"; '
        f'mount --bind "$2" "$r{INSIDE_MOUNT}"; mount -o remount,bind,ro "$r{INSIDE_MOUNT}"; '
        f'mount --bind "$3" "$r{EXCHANGE_MOUNT}"; shift 3; exec chroot "$r" "$@"'
    )
    return [
        "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
        str(root), str(INSIDE_DIR), str(exchange_dir()),
        "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in env.items()],
        "sh", f"{INSIDE_MOUNT}/with_blas.sh", blas, *argv,
    ]  # fmt: skip


def host_to_inside(path: Path) -> str:
    """Path inside the root of a file under the exchange folder."""
    rel = Path(path).resolve().relative_to(exchange_dir().resolve())
    return f"{EXCHANGE_MOUNT}/{rel.as_posix()}"


def disk_usage(path: Path) -> int:
    """Bytes used under ``path`` (du, not following mounts)."""
    out = subprocess.run(["du", "-sxb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])
