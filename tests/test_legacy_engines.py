"""legacy_caffe engines and argument checks that need no Caffe: selection, errors, manifests."""

from __future__ import annotations

import copy
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from legacy_caffe import check, engines, goldens
from legacy_caffe.engines import container
from legacy_caffe.engines.base import EngineError
from legacy_caffe.manifest import load_npz

REPO = Path(__file__).resolve().parent.parent
CAFFENET = json.loads((REPO / "golden" / "caffenet" / "manifest.json").read_text())


# --- engine selection -----------------------------------------------------------------------


def test_unknown_engine_is_refused():
    with pytest.raises(EngineError, match="unknown engine 'lxc'"):
        engines.make("lxc")


def test_auto_without_any_engine_says_what_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(EngineError) as err:
        engines.resolve("auto")
    msg = str(err.value)
    assert "\n" not in msg
    assert "apt-get install podman" in msg
    assert "podman: `podman` is not installed" in msg
    assert "chroot: needs root" in msg


def test_auto_takes_a_working_container_engine_before_the_root(monkeypatch):
    monkeypatch.setattr(container.PodmanEngine, "problem", lambda self: None)
    assert engines.resolve("auto").name == "podman"
    monkeypatch.setattr(container.PodmanEngine, "problem", lambda self: "broken")
    monkeypatch.setattr(container.DockerEngine, "problem", lambda self: None)
    assert engines.resolve("auto").name == "docker"


def test_engine_from_the_environment(monkeypatch):
    monkeypatch.setenv("LEGACY_CAFFE_ENGINE", "chroot")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(EngineError, match="engine chroot: needs root"):
        engines.resolve()


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI here")
def test_docker_without_a_daemon_is_one_line_naming_the_engine(monkeypatch, tmp_path):
    # The real CLI against a socket nobody serves: what a machine without dockerd gives.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(EngineError) as err:
        engines.resolve("docker")
    assert str(err.value).startswith("engine docker: `docker info` failed: ")
    assert "\n" not in str(err.value)


def test_ulimit_candidates_never_exceed_this_process():
    candidates = container.ulimit_candidates()
    assert candidates[0] == []
    limits = {"nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC}
    for flags in candidates[1:]:
        for spec in flags[1::2]:
            name, values = spec.split("=")
            soft, hard = (int(v) for v in values.split(":"))
            own_soft, own_hard = resource.getrlimit(limits[name])
            assert soft <= own_soft and hard <= own_hard and soft <= hard


def test_configured_quirks_replace_probing(monkeypatch):
    monkeypatch.setenv("LEGACY_CAFFE_RUN_ARGS", "--ulimit nofile=512:512")
    monkeypatch.setenv("LEGACY_CAFFE_BUILD_ARGS", "--isolation=chroot --network=host")
    monkeypatch.setenv("LEGACY_CAFFE_RUNTIME", "runc")
    q = container.PodmanEngine().quirks()
    assert q["global"] == ["--runtime", "runc"]
    assert q["run"] == ["--ulimit", "nofile=512:512"]
    assert q["build"] == ["--isolation=chroot", "--network=host"]


def test_image_tag_carries_the_package_list_digest():
    from legacy_caffe.packages import packages_digest, read_packages

    tag = container.PodmanEngine().image_tag()
    assert tag == f"localhost/caffe-mfv-legacy:{packages_digest(read_packages())}"


# --- every command given a missing file: exit 2, one line, nothing built --------------------


def _bad_cases(tmp: Path) -> list[tuple[list[str], str]]:
    proto = tmp / "net.prototxt"
    proto.write_text('input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n')
    weights = tmp / "w.caffemodel"
    weights.write_bytes(b"\0")
    afile = tmp / "afile"
    afile.write_text("x")
    user = ["goldens", "--prototxt", str(proto), "--caffemodel", str(weights)]
    return [
        (["goldens", "--prototxt", str(tmp / "nope.prototxt"), "--caffemodel", str(weights)],
         "--prototxt"),
        (["goldens", "--prototxt", str(proto), "--caffemodel", "/nonexistent"], "/nonexistent"),
        (["goldens", "--prototxt", str(proto), "--caffemodel", str(tmp)], "is a folder"),
        ([*user, "--input", str(tmp / "missing.jpg")], "missing.jpg"),
        ([*user, "--input-arrays", str(tmp / "missing.npz")], "missing.npz"),
        ([*user, "--python-path", str(tmp / "layers")], "--python-path"),
        ([*user, "--python-path", str(afile)], "--python-path"),
        ([*user, "--out", str(afile)], "--out"),
        ([*user, "--blob", "nosuchblob"], "nosuchblob"),
        ([*user, "--unit", "-1"], "--unit"),
        (["mfv-reference", "--blas", "atlas", "--caffemodel", "/nonexistent", "--out",
          str(tmp / "o")], "/nonexistent"),
        (["mfv-reference", "--blas", "atlas", "--out", str(afile)], "--out"),
        (["goldens", "--engine", "lxc"], "--engine"),
    ]  # fmt: skip


def test_every_bad_argument_is_one_line_exit_2_and_builds_nothing(tmp_path):
    root, exchange = tmp_path / "root" / "rootfs", tmp_path / "exchange"
    env = {**os.environ, "LEGACY_CAFFE_ROOT": str(root), "LEGACY_CAFFE_EXCHANGE": str(exchange),
           "LEGACY_CAFFE_ENGINE": "chroot", "PYTHONPATH": str(REPO)}  # fmt: skip
    for argv, names in _bad_cases(tmp_path):
        proc = subprocess.run(
            [sys.executable, "-m", "legacy_caffe", *argv],
            cwd=REPO, capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, (argv, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("legacy_caffe: error: ") and names in last, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert not root.parent.exists() and not exchange.exists(), argv


# --- goldens --check compares manifests -----------------------------------------------------


def test_identical_manifests_and_machine_fields_pass():
    fresh = copy.deepcopy(CAFFENET)
    fresh["generated"] = {"at": "2031-01-01T00:00:00Z", "seconds": 1.0, "command": "x"}
    fresh["engine"] = {"name": "podman", "image_id": "abc"}
    fresh["caffe"]["cpu"] = "Some Other CPU"
    fresh["caffe"]["nproc"] = 64
    for entry in fresh["sets"].values():
        entry["timings_s"] = {"forward": 9.0}
    fresh["blas"]["openblas"]["openblas"]["num_threads"] = 64
    assert check.manifest_differences(CAFFENET, fresh) == []


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda m: m["caffe"]["packages"].update(libcaffe1="1.0.1"), "caffe.packages.libcaffe1"),
        (lambda m: m["backward"].pop("mode"), "backward.mode: only in the committed"),
        (lambda m: m["backward"].update(extra=1), "backward.extra: only in the regenerated"),
        (lambda m: m["weights"].update(seed=2), "weights.seed"),
        (lambda m: m["blobs"].pop(), "blobs"),
        (lambda m: m["sets"]["atlas/astronaut"]["checks"].update(downstream_diffs_zero=False),
         "sets.atlas/astronaut.checks.downstream_diffs_zero"),
    ],
)  # fmt: skip
def test_any_other_changed_field_is_reported(edit, expected):
    fresh = copy.deepcopy(CAFFENET)
    edit(fresh)
    diffs = check.manifest_differences(CAFFENET, fresh)
    assert len(diffs) == 1 and diffs[0].startswith(expected), diffs


def _fake_regeneration(committed: dict, edit):
    """A generate_model that 'regenerates' the committed dumps and a manifest edited by ``edit``."""

    def fake(model, *, golden_dir, cache_dir, **kwargs):
        for entry in committed["sets"].values():
            if entry["committed"]:
                arrays = load_npz(goldens.GOLDEN_DIR / model / entry["file"])
                dest = golden_dir / model / entry["file"]
            else:
                arrays = {k: np.zeros(v["shape"], v["dtype"]) for k, v in entry["arrays"].items()}
                dest = cache_dir / model / entry["file"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            np.savez(dest, **arrays)
        man = copy.deepcopy(committed)
        edit(man)
        return man

    return fake


def test_check_fails_on_a_stale_manifest_even_with_identical_dumps(monkeypatch):
    committed = copy.deepcopy(CAFFENET)
    # Only the committed sets: the cache-only ones are not on every machine.
    committed["sets"] = {k: v for k, v in committed["sets"].items() if v["committed"]}
    monkeypatch.setattr(goldens, "load_manifest", lambda model, d=None: committed)
    monkeypatch.setattr(check, "load_manifest", lambda model, d=None: committed)
    monkeypatch.setattr(check, "generate_model", _fake_regeneration(committed, lambda m: None))
    assert check.check_model("caffenet") == []
    stale = _fake_regeneration(committed, lambda m: m["backward"].update(mode="loss"))
    monkeypatch.setattr(check, "generate_model", stale)
    problems = check.check_model("caffenet")
    assert problems == ["caffenet manifest backward.mode: committed 'force_backward', "
                        "regenerated 'loss'"]  # fmt: skip


def test_committed_manifests_carry_every_field_the_generator_writes():
    for path in sorted((REPO / "golden").glob("*/manifest.json")):
        man = json.loads(path.read_text())
        if man.get("format") != 1 or "sets" not in man:
            continue
        assert "mode" in man["backward"], path
        assert man["engine"]["name"] in ("podman", "docker", "chroot"), path
        assert list(man)[-2:] == ["engine", "generated"], path


def test_a_base_that_cannot_be_made_says_how_to_get_one(monkeypatch, tmp_path):
    from legacy_caffe.engines import baseimage

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(EngineError) as err:
        baseimage.make_base_tar(tmp_path / "base.tar")
    assert "LEGACY_CAFFE_BASE_TAR" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
