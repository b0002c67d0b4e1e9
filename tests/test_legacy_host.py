"""Host-side parts of legacy_caffe: package list, mirror discovery, build guards, CLI, input sizes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from legacy_caffe import engines, rootfs
from legacy_caffe.goldens import PLANS, declared_input_size
from legacy_caffe.packages import (
    PACKAGES_FILE,
    PackageListError,
    packages_digest,
    parse_packages,
    read_packages,
)

REPO = Path(__file__).resolve().parent.parent


# --- package list ---------------------------------------------------------------------------


def test_parse_packages_skips_comments_and_blank_lines():
    text = "# header\n\ncaffe   # trailing comment\n  libcaffe1\n#python3-caffe\nlibopenblas0-pthread\n"
    assert parse_packages(text) == ["caffe", "libcaffe1", "libopenblas0-pthread"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("caffe\ncaffe\n", "already listed on line 1"),
        ("caffe libcaffe1\n", "one package per line"),
        ("Caffe\n", "not a Debian package name"),
        ("# nothing\n\n", "no packages"),
    ],
)
def test_parse_packages_rejects_malformed_lists(text, message):
    with pytest.raises(PackageListError, match=message):
        parse_packages(text, source="list.txt")


def test_shipped_list_has_caffe_and_both_blas():
    names = read_packages()
    for needed in ("python3-caffe", "libcaffe1", "libatlas3-base", "libopenblas0-pthread"):
        assert needed in names


def test_digest_ignores_order_but_not_content():
    assert packages_digest(["a1", "b2"]) == packages_digest(["b2", "a1"])
    assert packages_digest(["a1", "b2"]) != packages_digest(["a1", "b3"])


def test_dockerfile_installs_the_same_list_and_copies_inside_scripts():
    # One list for both paths: the Dockerfile must read packages.txt rather than name packages.
    docker = (REPO / "docker" / "Dockerfile").read_text()
    # The base is an argument (an imported debootstrap tree where no registry answers); its
    # default is the official image of the same suite.
    assert re.search(r"^ARG BASE=debian:bullseye\s*$", docker, re.M)
    assert re.search(r"^FROM \$\{BASE\}\s*$", docker, re.M)
    assert "COPY legacy_caffe/packages.txt" in docker
    assert "COPY legacy_caffe/inside/" in docker
    install = next(
        block for block in re.split(r"\n(?=[A-Z]+ )", docker) if "apt-get install" in block
    )
    assert "packages.txt" in install
    for name in read_packages():
        pattern = rf"(?<![\w/.-]){re.escape(name)}(?![\w/.-])"
        assert not re.search(pattern, install), f"{name} hard-coded in the Dockerfile's install"
    for script in ("with_blas.sh", "dump_blobs.py", "doctor.py", "caffe_env.py"):
        assert (REPO / "legacy_caffe" / "inside" / script).is_file()
    assert PACKAGES_FILE.is_file()


def test_no_registry_host_written_in_repository_files():
    for path in list((REPO / "legacy_caffe").rglob("*")) + list((REPO / "docker").rglob("*")):
        if path.is_file() and path.suffix in {".py", ".txt", ".sh", ""}:
            assert "deb.debian.org" not in path.read_text(errors="replace"), path


# --- mirror discovery -----------------------------------------------------------------------

DEB822 = """\
Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
# a comment line
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
"""


def test_deb822_sources_pick_the_main_archive():
    entries = rootfs.parse_apt_sources(DEB822, deb822=True)
    assert ("http://src.example/debian", ["bookworm"]) not in entries  # deb-src skipped
    assert rootfs.pick_debian_mirror(entries) == "http://mirror.example/debian"


def test_one_line_sources_with_options_and_updates_only_entries():
    text = (
        "deb [arch=amd64 signed-by=/k.gpg] http://a.example/debian bookworm-updates main\n"
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64] http://a.example/debian/ bookworm main contrib\n"
    )
    entries = rootfs.parse_apt_sources(text, deb822=False)
    assert entries[0] == ("http://a.example/debian", ["bookworm-updates"])
    assert rootfs.pick_debian_mirror(entries) == "http://a.example/debian"


def test_no_debian_archive_means_none():
    assert rootfs.pick_debian_mirror([("https://apt.example/node", ["nodistro"])]) is None


def test_mirror_env_override(monkeypatch):
    monkeypatch.setenv("LEGACY_CAFFE_MIRROR", "http://override.example/debian")
    assert rootfs.find_mirror() == "http://override.example/debian"


# --- build guards ---------------------------------------------------------------------------


def test_build_refuses_without_root_privileges(monkeypatch, tmp_path):
    monkeypatch.setattr(rootfs.os, "geteuid", lambda: 1000)
    with pytest.raises(rootfs.LegacyCaffeError, match="needs root"):
        rootfs.build(tmp_path / "rootfs")


def test_build_says_when_disk_is_short(monkeypatch, tmp_path):
    monkeypatch.setattr(rootfs.os, "geteuid", lambda: 0)
    usage = type("U", (), {"free": 100 * 1024**2})()
    monkeypatch.setattr(rootfs.shutil, "disk_usage", lambda _p: usage)
    with pytest.raises(rootfs.LegacyCaffeError, match=r"0\.1 GB free"):
        rootfs.build(tmp_path / "rootfs")


def test_build_says_when_debootstrap_cannot_be_had(monkeypatch, tmp_path):
    monkeypatch.setattr(rootfs.os, "geteuid", lambda: 0)
    monkeypatch.setattr(rootfs.shutil, "which", lambda _name: None)
    # Plenty of room, whatever the machine running the test has left.
    usage = type("U", (), {"free": 100 * 1024**3})()
    monkeypatch.setattr(rootfs.shutil, "disk_usage", lambda _p: usage)
    with pytest.raises(rootfs.LegacyCaffeError, match="debootstrap is not installed"):
        rootfs.build(tmp_path / "rootfs")


def test_half_built_root_is_not_complete_and_marker_makes_it_so(tmp_path):
    root = tmp_path / "rootfs"
    (root / "usr").mkdir(parents=True)
    assert rootfs.marker_info(root) is None
    info = rootfs._write_marker(root, ["caffe"], "http://m.example/debian", {"debootstrap_s": 1})
    assert rootfs.marker_info(root) == info
    assert info["packages_digest"] == packages_digest(["caffe"])
    (root / rootfs.MARKER).write_text("{truncated")
    assert not rootfs.is_complete(root)


def test_complete_root_with_same_list_is_left_alone(monkeypatch, tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    rootfs._write_marker(root, read_packages(), "http://m.example/debian", {})
    monkeypatch.setattr(rootfs, "_check_preconditions", lambda _p: pytest.fail("rebuilt"))
    assert rootfs.build(root)["packages"] == read_packages()


def test_removing_a_tree_refuses_what_is_not_a_debian_root(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me")
    with pytest.raises(rootfs.LegacyCaffeError, match="not deleting"):
        rootfs._remove_tree(tmp_path / "home")
    assert (tmp_path / "home" / "notes.txt").is_file()
    (tmp_path / "half" / "debootstrap").mkdir(parents=True)  # debootstrap's own work folder
    rootfs._remove_tree(tmp_path / "half")
    assert not (tmp_path / "half").exists()


def test_removing_a_tree_refuses_when_something_is_mounted_inside(monkeypatch, tmp_path):
    (tmp_path / "r" / "proc").mkdir(parents=True)
    (tmp_path / "r" / "etc").mkdir()
    (tmp_path / "r" / "etc" / "debian_version").write_text("11.11\n")
    monkeypatch.setattr(rootfs, "_mounts_under", lambda p: [str(p / "proc")])
    with pytest.raises(rootfs.LegacyCaffeError, match="umount"):
        rootfs._remove_tree(tmp_path / "r")
    assert (tmp_path / "r" / "proc").is_dir()


def test_run_rejects_unknown_blas():
    with pytest.raises(rootfs.LegacyCaffeError, match="unknown BLAS"):
        engines.run_inside(["true"], blas="mkl")


def test_root_location_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("LEGACY_CAFFE_ROOT", str(tmp_path / "elsewhere"))
    assert rootfs.root_dir() == tmp_path / "elsewhere"
    assert rootfs.exchange_dir() == tmp_path / "exchange"


def test_host_to_inside_maps_exchange_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("LEGACY_CAFFE_EXCHANGE", str(tmp_path))
    assert rootfs.host_to_inside(tmp_path / "job" / "x.npy") == "/exchange/job/x.npy"
    with pytest.raises(ValueError):
        rootfs.host_to_inside(tmp_path.parent / "outside.npy")


# --- CLI ------------------------------------------------------------------------------------


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "legacy_caffe", "--help"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for command in ("build", "run", "doctor", "goldens", "list"):
        assert re.search(rf"^\s+{command}\s", out, re.M), command


def test_user_model_needs_both_files(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "legacy_caffe", "goldens", "--prototxt", str(tmp_path / "a")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--prototxt and --caffemodel" in proc.stderr


# --- input sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (
            'input: "data"\ninput_dim: 10\ninput_dim: 3\ninput_dim: 227\ninput_dim: 229\n',
            (227, 229),
        ),
        ('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 224 dim: 225 }\n', (224, 225)),
        (
            'layer { name: "data" type: "Input" top: "data"\n'
            "  input_param { shape: { dim: 1 dim: 3 dim: 227 dim: 227 } } }\n",
            (227, 227),
        ),
    ],
)
def test_declared_input_size_all_three_styles(text, size):
    assert declared_input_size(text) == size


def test_declared_input_size_of_the_reference_definitions():
    from port.zoo import MODELS

    expected = {"caffenet": 227, "alexnet": 227, "googlenet": 224, "squeezenet1.0": 227}
    for name, side in expected.items():
        prototxt = MODELS[name].prototxt
        if not prototxt.is_file():
            pytest.skip(f"{prototxt} not present")
        assert declared_input_size(prototxt.read_text()) == (side, side)


def test_every_plan_is_a_registered_model_and_has_a_batch_and_an_odd_size():
    from port.zoo import MODELS

    assert set(PLANS) <= set(MODELS)
    specs = [s for p in PLANS.values() for s in p.inputs]
    assert any(len(s.photos) > 1 for s in specs)
    assert any(s.size and s.size % 2 == 1 and s.size != 227 for s in specs)
    assert PLANS["caffenet"].committed


def test_input_images_need_a_user_model():
    proc = subprocess.run(
        [sys.executable, "-m", "legacy_caffe", "goldens", "--model", "caffenet", "--input", "a.png"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "go with --prototxt" in proc.stderr
