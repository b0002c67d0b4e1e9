"""``goldens --check``: regenerate a built-in model's goldens elsewhere and compare with git.

Both the dumps and the manifest are compared. The manifest fields that describe the machine or the
run's timing (``IGNORED``) are skipped; every other field must be equal, so a stale committed
manifest (a field the generator now writes, a changed package version) fails the check.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from . import rootfs
from .generation import generate_model
from .golden_plans import BLAS, DEFAULT_SEED, GOLDEN_DIR, load_manifest
from .manifest import compare_dumps, load_npz, verify_arrays

# Paths into the manifest ("*" is any key): the machine, the engine and the clock, not Caffe.
IGNORED: tuple[tuple[str, ...], ...] = (
    ("generated",),
    ("engine",),
    ("caffe", "cpu"),
    ("caffe", "nproc"),
    ("blas", "*", "threads_env"),
    ("blas", "*", "openblas", "num_threads"),
    ("sets", "*", "timings_s"),
    # --check makes each dump once: it measures no repeat, so it has no determinism to compare.
    ("determinism",),
)
# Derived from the arrays' values: where bytes legitimately differ (another CPU's OpenBLAS kernel),
# the numerical comparison of the dumps judges them instead.
FROM_ARRAYS: tuple[tuple[str, ...], ...] = (("sets", "*", "arrays"), ("spread_atlas_vs_openblas",))


def _say(msg: str) -> None:
    print(f"[goldens] {msg}", file=sys.stderr, flush=True)


def _ignored(path: tuple[str, ...], patterns: Iterable[tuple[str, ...]]) -> bool:
    return any(
        len(path) >= len(p) and all(q in ("*", k) for q, k in zip(p, path, strict=False))
        for p in patterns
    )


def manifest_differences(
    committed: Mapping, fresh: Mapping, *, ignore: Iterable[tuple[str, ...]] = IGNORED
) -> list[str]:
    """Fields that differ between two manifests, as ``a.b.c: committed X, regenerated Y``.

    Parameters
    ----------
    committed, fresh : mapping
        The manifest in git and the one regeneration wrote.
    ignore : iterable of tuple of str
        Key paths skipped with everything below them; ``"*"`` matches any key.
    """
    ignore = tuple(ignore)
    out: list[str] = []

    def walk(a: object, b: object, path: tuple[str, ...]) -> None:
        if _ignored(path, ignore):
            return
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in list(a) + [k for k in b if k not in a]:
                if key not in a or key not in b:
                    side = "committed" if key in a else "regenerated"
                    if not _ignored((*path, str(key)), ignore):
                        out.append(f"{'.'.join((*path, str(key)))}: only in the {side} manifest")
                    continue
                walk(a[key], b[key], (*path, str(key)))
        elif a != b:
            out.append(f"{'.'.join(path)}: committed {_short(a)}, regenerated {_short(b)}")

    walk(committed, fresh, ())
    return out


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _restricted(committed: dict, blas: list[str]) -> dict:
    """The committed manifest cut down to the BLAS a partial check regenerated."""
    if set(blas) == set(committed.get("blas", {})):
        return committed
    cut = copy.deepcopy(committed)
    cut["blas"] = {b: v for b, v in cut.get("blas", {}).items() if b in blas}
    cut["sets"] = {k: v for k, v in cut.get("sets", {}).items() if v.get("blas") in blas}
    cut.pop("spread_atlas_vs_openblas", None)  # needs both builds
    return cut


def check_model(
    model: str, *, blas: Iterable[str] = BLAS, golden_dir: Path = GOLDEN_DIR
) -> list[str]:
    """Regenerate a model's goldens elsewhere and compare with what git holds; returns problems.

    Arrays must have the manifest's sha256. Where they do not (a different CPU picks a different
    OpenBLAS kernel), a committed dump is compared numerically and passes within the measured
    ATLAS-vs-OpenBLAS spread of that array, reported as a note rather than a failure. The manifest
    must match field for field, apart from ``IGNORED`` (and ``FROM_ARRAYS`` when bytes differed).
    """
    blas = list(blas)
    committed = load_manifest(model, golden_dir)
    rootfs.cache_dir().mkdir(parents=True, exist_ok=True)  # a fresh clone has no cache yet
    with tempfile.TemporaryDirectory(prefix=f"check-{model}-", dir=rootfs.cache_dir()) as tmp:
        tmp_dir = Path(tmp)
        man = generate_model(
            model, blas=blas, seed=committed["weights"].get("seed", DEFAULT_SEED),
            golden_dir=tmp_dir / "golden", cache_dir=tmp_dir / "cache", repeat=False,
            write_manifest=False,
        )  # fmt: skip
        problems, bytes_differ = _check_dumps(model, committed, man, tmp_dir, golden_dir)
    ignore = IGNORED + (FROM_ARRAYS if bytes_differ else ())
    problems += [
        f"{model} manifest {d}"
        for d in manifest_differences(_restricted(committed, blas), man, ignore=ignore)
    ]
    return problems


def _check_dumps(
    model: str, committed: dict, man: dict, tmp_dir: Path, golden_dir: Path
) -> tuple[list[str], bool]:
    """Problems of the regenerated dumps against git's, and whether any bytes differed."""
    problems: list[str] = []
    bytes_differ = False
    spread = committed["spread_atlas_vs_openblas"]["per_input"]
    for key, entry in man["sets"].items():
        want = committed["sets"].get(key)
        if want is None:
            problems.append(f"{model} {key}: not in the committed manifest")
            continue
        base = tmp_dir / ("golden" if entry["committed"] else "cache") / model
        fresh = load_npz(base / entry["file"])
        mismatched = verify_arrays(fresh, want["arrays"])
        if not mismatched:
            _say(f"check {model} {key}: identical to the manifest")
            continue
        bytes_differ = True
        if not want.get("committed"):
            problems.append(f"{model} {key}: " + "; ".join(mismatched[:3]))
            continue
        old = load_npz(golden_dir / model / want["file"])
        stale = verify_arrays(old, want["arrays"])
        if stale:
            problems.append(f"{model} {key}: committed file vs its manifest: {stale[:3]}")
        rel = compare_dumps(fresh, old)
        floor = spread.get(entry["input"], {})
        over = {k: v for k, v in rel.items() if v > max(2 * floor.get(k, 0.0), 1e-7)}
        if over:
            worst = sorted(over.items(), key=lambda kv: -kv[1])[:5]
            problems.append(f"{model} {key}: beyond 2x the BLAS spread: {worst}")
        else:
            _say(f"check {model} {key}: bytes differ, max rel {max(rel.values()):.2e} "
                 "within the ATLAS-vs-OpenBLAS spread")  # fmt: skip
    return problems, bytes_differ
