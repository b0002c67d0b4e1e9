"""The layering docs/architecture.md states, checked on the source: which package may import which.

Every ``import`` statement counts, at module level or inside a function (a lazy import is still a
dependency), read with :mod:`ast` so that nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("port", "legacy_caffe", "parity", "mfv")

#: Which of our packages each package may import (docs/architecture.md, "knows about").
ALLOWED = {
    "port": set(),
    "legacy_caffe": {"port"},
    "parity": {"port", "legacy_caffe"},
    "mfv": {"port"},
}


def _imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, absolute module, imported name or None) of every import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, module, alias.name) for alias in node.names]
    return found


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO)}:{line}"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_the_architecture_allows(package):
    wrong = []
    for path in _sources(package):
        if package == "legacy_caffe" and "inside" in path.parts:
            continue  # checked below: they run inside the Caffe root
        for line, module, _ in _imports(path):
            top = module.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{_where(path, line)} imports {module}")
    assert not wrong, (
        f"{package} may import only {sorted(ALLOWED[package]) or 'none of ours'}:\n"
        + "\n".join(wrong)
    )


def test_scripts_inside_the_caffe_root_import_no_torch_and_nothing_of_ours():
    scripts = _sources("legacy_caffe/inside")
    assert scripts, "legacy_caffe/inside holds the scripts that run in the root"
    wrong = [
        f"{_where(path, line)} imports {module}"
        for path in scripts
        for line, module, _ in _imports(path)
        if module.split(".")[0] in (*PACKAGES, "torch", "torchvision", "tests")
    ]
    assert not wrong, "\n".join(wrong)


def test_no_package_imports_another_packages_private_names():
    wrong = []
    for package in PACKAGES:
        for path in _sources(package):
            for line, module, name in _imports(path):
                parts = module.split(".")
                if parts[0] not in PACKAGES or parts[0] == package:
                    continue
                private = [p for p in [*parts[1:], name or ""] if p.startswith("_")]
                if private and private != ["__version__"]:
                    wrong.append(
                        f"{_where(path, line)} imports {module}" + (f".{name}" if name else "")
                    )
    assert not wrong, "give the name a public home instead:\n" + "\n".join(wrong)


def test_the_checker_sees_relative_and_lazy_imports():
    # A checker that finds nothing would pass every rule: prove it finds each kind of import.
    netdef = {(m, n) for _, m, n in _imports(REPO / "port" / "netdef.py")}
    assert ("port.errors", "CaffeError") in netdef  # relative, module level
    cli = {(m, n) for _, m, n in _imports(REPO / "port" / "cli.py")}
    assert ("torch", None) in cli  # absolute, inside a function
    mfv_cli = {(m, n) for _, m, n in _imports(REPO / "mfv" / "cli.py")}
    assert ("port.command", "Tool") in mfv_cli  # another package


def test_architecture_doc_lists_the_allowed_dependencies():
    doc = (REPO / "docs" / "architecture.md").read_text()
    for package, allowed in ALLOWED.items():
        row = next(
            (line for line in doc.splitlines() if line.startswith(f"| `{package}/` |")), None
        )
        assert row is not None, f"docs/architecture.md has no row for {package}/"
        knows = row.split("|")[2]
        for other in PACKAGES:
            if other == package:
                continue
            listed = f"`{other}`" in knows.replace(f"never `{other}`", "")
            assert listed == (other in allowed), (
                f"docs/architecture.md row {package}/ and ALLOWED disagree about {other}"
            )
