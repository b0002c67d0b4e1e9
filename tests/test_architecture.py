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

#: Packages whose remaining faults are reported as expected failures (none: every package is held
#: to the rules; a package mid-restructure may be named here for the length of that change).
PENDING: tuple[str, ...] = ()

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
    if package in PENDING and wrong:
        pytest.xfail("pending restructure (issue 23): " + "; ".join(wrong))
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


#: A function may pass LIMIT_FUNCTION lines of code only with ``# long: <why>`` on its def line.
LIMIT_MODULE = 600
LIMIT_FUNCTION = 60
LONG_MARK = "# long:"
#: Offenders in port/ and parity/ not yet split (issue 23, left for a next step), each with why.
#: The test fails on any new offender and on any listed one that no longer offends.
KNOWN = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _cycles(package: str) -> list[list[str]]:
    """Import circles between the modules of one package, lazy imports included."""
    modules = {_module_name(p): p for p in _sources(package) if "inside" not in p.parts}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for _, module, imported in _imports(path):
            for cand in (f"{module}.{imported}" if imported else None, module):
                if cand in modules and cand != name:
                    targets.add(cand)
                    break
        graph[name] = targets
    found, state = [], {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def _code_lines(node: ast.AST, lines: list[str]) -> int:
    """Lines of a function that hold code: no blank lines, comments or docstring."""
    body = node.body
    skip = set()
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        skip = set(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(
        1
        for n in range(node.lineno, node.end_lineno + 1)
        if n not in skip and lines[n - 1].strip() and not lines[n - 1].strip().startswith("#")
    )


def _size_faults(package: str) -> list[tuple[str, str]]:
    faults = []
    for path in _sources(package):
        text = path.read_text()
        lines = text.splitlines()
        if len(lines) > LIMIT_MODULE:
            faults.append((f"{path.relative_to(REPO)} module", f"{len(lines)} lines"))
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            n = _code_lines(node, lines)
            if n > LIMIT_FUNCTION and LONG_MARK not in lines[node.lineno - 1]:
                where = f"{path.relative_to(REPO)} {node.name}"
                faults.append((where, f"line {node.lineno}: {n} lines of code"))
    return faults


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle_inside_a_package(package):
    circles = _cycles(package)
    if package in PENDING and circles:
        pytest.xfail(
            "pending restructure (issue 23): " + "; ".join(" -> ".join(c) for c in circles)
        )
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_and_functions_stay_small(package):
    faults = dict(_size_faults(package))
    if package in PENDING and faults:
        pytest.xfail(
            "pending restructure (issue 23):\n" + "\n".join(f"{k}: {v}" for k, v in faults.items())
        )
    new = [f"{k}: {v}" for k, v in faults.items() if k not in KNOWN]
    gone = [k for k in KNOWN if k.startswith(f"{package}/") and k not in faults]
    assert not new, (
        f"modules over {LIMIT_MODULE} lines or functions over {LIMIT_FUNCTION} lines of code "
        f"without '{LONG_MARK} <why>' on the def line:\n" + "\n".join(new)
    )
    assert not gone, "no longer offending, drop from KNOWN: " + ", ".join(gone)


def test_the_circle_and_size_checks_can_fail(tmp_path):
    pkg = tmp_path / "port"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")  # lazy import counts
    (pkg / "b.py").write_text("from port.a import f\n" + "x = 1\n" * 601)
    globals()["REPO"], saved = tmp_path, REPO
    try:
        assert _cycles("port") == [["port.a", "port.b", "port.a"]]
        assert ("port/b.py module", "602 lines") in _size_faults("port")
        body = "".join(f"    x{i} = {i}\n" for i in range(61))
        (pkg / "c.py").write_text(f"def big():\n{body}\ndef ok():  # long: a table\n{body}")
        faults = dict(_size_faults("port"))
        assert faults["port/c.py big"] == "line 1: 62 lines of code"  # the def line counts
        assert "port/c.py ok" not in faults
    finally:
        globals()["REPO"] = saved
