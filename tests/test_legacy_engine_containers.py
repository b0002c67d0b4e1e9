"""Real Caffe through the container engines: Docker's CLI on Podman's API, rootless Podman, and a
build killed at several instants. Each builds or runs the real thing (marker ``caffe``)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import pytest

from legacy_caffe import engines, rootfs
from legacy_caffe.engines import baseimage

pytestmark = pytest.mark.caffe
REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def _legacy(
    *argv: str, env: dict | None = None, timeout: float = 1500
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "legacy_caffe", *argv], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=timeout,
    )  # fmt: skip


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (Debian: apt-get install podman runc uidmap)")


@pytest.fixture
def podman_api(tmp_path):
    """Podman's Docker-API service on a private socket and a private image store."""
    _need("podman")
    _need("docker")
    podman = engines.make("podman")
    podman.require()
    flags = podman.quirks()["global"]
    sock = tmp_path / "docker.sock"
    store = rootfs.cache_dir() / f"docker-api-store-{os.getpid()}"
    run = Path(tempfile.mkdtemp(prefix="lcapi-"))  # podman: a runroot of at most 50 characters
    cmd = ["podman", *flags, "--root", str(store / "root"), "--runroot", str(run),
           "system", "service", "--time=0", f"unix://{sock}"]  # fmt: skip
    log = tmp_path / "service.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):  # a loaded machine took over 20 s
            if sock.exists() or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert sock.exists(), f"podman system service opened no socket: {log.read_text()[-2000:]}"
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        subprocess.run(["podman", "--root", str(store / "root"), "--runroot", str(run),
                        "rmi", "-a", "-f"], capture_output=True)  # fmt: skip
        for folder in (store, run):
            for point in sorted(_mounts_below(folder), reverse=True):  # the store's overlay mount
                subprocess.run(["umount", point], capture_output=True)
            shutil.rmtree(folder, ignore_errors=True)
            assert _mounts_below(folder) == [] and not folder.exists()


def test_docker_cli_through_podman_api_builds_and_matches_git(podman_api):
    # A store of its own: the docker CLI imports the base and builds the image from the Dockerfile
    # itself, then regenerates CaffeNet's goldens, which must be git's bytes.
    env = {"DOCKER_HOST": podman_api, "LEGACY_CAFFE_BASE_TAR": str(baseimage.base_tar())}
    if not baseimage.base_tar().is_file():
        # A podman store that already held the base (an earlier build on this machine) never
        # needed the tar: make it here (debootstrap, root; ~1 min).
        baseimage.make_base_tar(baseimage.base_tar())
    built = _legacy("build", "--engine", "docker", env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    info = json.loads(built.stdout)
    assert info["name"] == "docker" and info["image_id"]
    doctor = _legacy("doctor", "--engine", "docker", env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "engine:    docker" in doctor.stdout
    checked = _legacy("goldens", "--check", "--model", "caffenet", "--engine", "docker", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr[-3000:]
    assert "check: OK" in checked.stdout


# --- rootless Podman ------------------------------------------------------------------------

USER = f"lcrootless{os.getpid() % 100000}"


@pytest.fixture
def throwaway_user():
    """A new user with a subuid/subgid range; removed with its home and image store after."""
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root (run the rootless path as yourself instead)")
    for tool in ("useradd", "userdel", "newuidmap"):
        _need(tool)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
    try:
        if USER not in Path("/etc/subuid").read_text():
            subprocess.run(["usermod", "--add-subuids", "400000-465535", "--add-subgids",
                            "400000-465535", USER], check=True)  # fmt: skip
        yield pwd.getpwnam(USER)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True)
        subprocess.run(["userdel", "-r", "-f", USER], capture_output=True)
        for table in ("/etc/subuid", "/etc/subgid"):
            lines = Path(table).read_text().splitlines(keepends=True)
            Path(table).write_text("".join(ln for ln in lines if not ln.startswith(USER + ":")))


def _copy_for(user: pwd.struct_passwd) -> Path:
    """The project as the user's own clone would hold it (sources and CaffeNet's goldens)."""
    home = Path(user.pw_dir)
    repo = home / "caffe-mfv"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("legacy_caffe", "port", "docker", "golden/caffenet"):
        shutil.copytree(REPO / part, repo / part, ignore=ignore)
    shutil.copyfile(REPO / "pyproject.toml", repo / "pyproject.toml")
    shutil.copyfile(baseimage.base_tar(), home / "base.tar")
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(home)], check=True)
    return repo


def _as_user(user: pwd.struct_passwd, script: str) -> list[str]:
    """``su`` to ``user``, with this interpreter reachable at ``~/python`` (it may live under a
    folder only root can enter, as /root/.pyenv does here): bound there read-only in a private
    mount namespace, which ends with the command."""
    mnt = Path(user.pw_dir) / "python"
    mnt.mkdir()
    bind = (
        'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && exec su -s /bin/sh "$3" -c "$4"'
    )
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", bind, "sh",
            sys.base_prefix, str(mnt), user.pw_name, script]  # fmt: skip


@pytest.mark.slow  # ~6 min idle, 13 min on a loaded 2-core machine (vfs copies every layer)
def test_rootless_podman_regenerates_git_goldens(throwaway_user):
    _need("podman")
    if not baseimage.base_tar().is_file():
        # A podman store that already held the base (an earlier build on this machine) never
        # needed the tar: make it here (debootstrap, root; ~1 min).
        baseimage.make_base_tar(baseimage.base_tar())
    repo = _copy_for(throwaway_user)
    home = throwaway_user.pw_dir
    shared = Path(os.environ.get("CAFFE_MFV_SHARED", REPO.parent / "shared")).resolve()
    python = (
        Path(home)
        / "python"
        / Path(os.path.realpath(sys.executable)).relative_to(Path(sys.base_prefix).resolve())
    )
    site = sysconfig.get_paths()["purelib"]
    script = (
        f"cd {repo} && export HOME={home} PYTHONPATH={repo}:{site} CAFFE_MFV_SHARED={shared} "
        f"LEGACY_CAFFE_BASE_TAR={home}/base.tar && "
        f"{python} -m legacy_caffe goldens --check --model caffenet --engine podman && "
        f"{python} -m legacy_caffe doctor --engine podman"
    )
    proc = subprocess.run(
        _as_user(throwaway_user, script), capture_output=True, text=True, timeout=2400
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "check: OK" in proc.stdout
    assert "rootless" in proc.stdout
    exchange = repo / "cache" / "legacy_caffe" / "exchange"
    assert exchange.stat().st_uid == throwaway_user.pw_uid
    assert list(exchange.iterdir()) == []
    print(proc.stdout, proc.stderr[-3000:])


# --- a killed build leaves nothing mounted --------------------------------------------------


def _mounts_below(path: Path) -> list[str]:
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(path))]  # fmt: skip


def _processes_naming(path: Path) -> list[int]:
    """Processes whose command line, root (chroot) or working folder is inside ``path``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [os.readlink(proc / "root"), os.readlink(proc / "cwd")]
            if str(path).encode() in (proc / "cmdline").read_bytes() or any(
                link.startswith(str(path)) for link in links
            ):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def _kill_build_when(root: Path, marker: str) -> str:
    """Start a chroot build, SIGKILL it once its log shows ``marker``; return the log so far."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "LEGACY_CAFFE_ROOT": str(root)}
    proc = subprocess.Popen(
        [PY, "-m", "legacy_caffe", "build", "--engine", "chroot"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: list[str] = []
    hit = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            seen.append(line)
            if marker in line:
                hit.set()

    threading.Thread(target=read, daemon=True).start()
    hit.wait(timeout=600)
    proc.send_signal(signal.SIGKILL)  # the worst case: no handler runs
    proc.wait()
    return "".join(seen)


@pytest.mark.slow
@pytest.mark.parametrize(
    "marker",
    ["debootstrap (5 s)", "Configuring", "packages (and their dependencies)", "apt-get install ("],
)
def test_build_killed_at_any_step_leaves_nothing_mounted(tmp_path, marker):
    if os.geteuid() != 0:
        pytest.skip("the chroot build needs root")
    root = tmp_path / "rootfs"
    log = _kill_build_when(root, marker)
    assert marker in log, log[-2000:]
    deadline = time.monotonic() + 30
    while _processes_naming(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_naming(tmp_path) == [], "a build step outlived the killed build"
    assert _mounts_below(tmp_path) == []
    # What the next build does first: delete the half-built tree. It must be able to.
    rootfs._remove_tree(root.with_name("rootfs.partial"))
    assert not root.with_name("rootfs.partial").exists()


# --- a user's model, start to finish --------------------------------------------------------


def test_user_model_goldens_are_accepted_by_parity(tmp_path):
    # The model zoo's CaffeNet deploy: no golden plan, no committed manifest; seeded weights and
    # a photo of the user's, through whichever engine LEGACY_CAFFE_ENGINE (auto) picks.
    shared = Path(os.environ.get("CAFFE_MFV_SHARED", REPO.parent / "shared"))
    proto = shared / "reference" / "model-zoo" / "bvlc_reference_caffenet" / "deploy.prototxt"
    image = shared / "reference" / "mfv-original" / "mean_images" / "n07720875" / "mean_0.jpg"
    weights = tmp_path / "w.caffemodel"
    seeded = subprocess.run(
        [PY, "-m", "port", "seed-weights", "--prototxt", str(proto), "--weight-seed", "7",
         "--out", str(weights)], cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert seeded.returncode == 0, seeded.stderr
    out = tmp_path / "goldens"
    made = _legacy("goldens", "--prototxt", str(proto), "--caffemodel", str(weights),
                   "--input", str(image), "--out", str(out), "--no-repeat")  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    man = json.loads((out / "manifest.json").read_text())
    assert man["engine"]["name"] == engines.current().name
    goldens = [f"{b}={out / b / 'mean_0.npz'}" for b in ("atlas", "openblas")]
    parity = subprocess.run(
        [PY, "-m", "parity", "run", "--prototxt", str(proto), "--caffemodel", str(weights),
         "--golden", goldens[0], "--golden", goldens[1], "--no-verdict", "--quiet",
         "--json", str(tmp_path / "parity.json")],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert parity.returncode == 0, parity.stdout + parity.stderr[-3000:]
