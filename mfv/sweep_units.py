"""Which units a sweep covers and where each one's images are (``--units``, unit maps, classes)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MfvError

__all__ = [
    "DEFAULT_CLASSES",
    "SweepUnits",
    "imagenet_folders",
    "parse_units",
    "read_classes",
    "read_unit_map",
    "short",
    "unit_folders",
]

#: The most units one range may name when the layer's size is not known yet.
MAX_UNITS = 10_000_000

#: The 1000 ImageNet classes in output order (``wnid name`` per line), as the original MFV code used.
DEFAULT_CLASSES = Path("reference") / "mfv-original" / "synset_words.txt"


@dataclass(frozen=True)
class SweepUnits:
    """The units of a sweep and where their images are.

    Parameters
    ----------
    units : str or sequence of int
        Units of the target layer: ``"all"``, ``"0-999"``, ``"3,7,10-12"``, a file of such lists,
        or ints (:func:`parse_units`).
    images : path, optional
        ImageNet-style root ``images/<wnid>/*``: unit ``i`` uses the folder of the ``i``-th class of
        ``classes``. With ``unit_map``, the folder relative paths are resolved against.
    unit_map : path, optional
        JSON or TSV file mapping unit -> image folder (:func:`read_unit_map`), for layers whose
        units are not the ImageNet classes.
    classes : path, optional
        ``synset_words.txt``-style class list (default: the one under ``port.zoo.shared_root()``).
    """

    units: str | Sequence[int] = "all"
    images: str | Path | None = None
    unit_map: str | Path | None = None
    classes: str | Path | None = None

    def check(self) -> None:
        """Refuse a selection that names no images at all (before any work)."""
        if self.images is None and self.unit_map is None:
            raise MfvError("give images= (an ImageNet-style root) or unit_map=")


def parse_units(spec: str | int | Sequence[int], n_units: int | None = None) -> list[int]:
    """The units a sweep covers, sorted, without duplicates.

    Parameters
    ----------
    spec : str, int or sequence of int
        ``"all"``; a comma-separated list of units and inclusive ranges (``"0-999"``,
        ``"3,7,10-12"``); or the path of a text file holding such lists, one or more per line
        (``#`` starts a comment). A sequence of ints is taken as is.
    n_units : int, optional
        Number of units of the target layer: required for ``"all"``, and every unit must lie in
        ``0 .. n_units - 1`` when given.

    Returns
    -------
    list of int

    Raises
    ------
    ValueError
        For malformed items (naming the file and line for a file), reversed ranges, units out of
        range, an empty selection, or ``"all"`` without ``n_units``.
    """
    if isinstance(spec, int | np.integer):
        units, where = [int(spec)], "units"
    elif not isinstance(spec, str):
        units, where = [int(u) for u in spec], "units"
    elif spec.strip().lower() == "all":
        if n_units is None:
            raise MfvError("--units all needs the number of units of the layer")
        units, where = list(range(n_units)), "units"
    elif Path(spec).is_file():
        units, where = [], str(spec)
        for lineno, line in enumerate(Path(spec).read_text().splitlines(), 1):
            text = line.split("#", 1)[0].strip()
            if text:
                units += _parse_list(text, f"{spec}:{lineno}", n_units)
    else:
        units, where = _parse_list(spec, "--units", n_units), "--units"
    if not units:
        raise MfvError(f"{where}: no units selected")
    if n_units is not None:
        bad = [u for u in units if not 0 <= u < n_units]
        if bad:
            raise MfvError(_out_of_range(where, bad[0], n_units))
    return sorted(set(units))


def _parse_list(text: str, where: str, n_units: int | None = None) -> list[int]:
    """Units and ranges of one list; each range checked against the layer before it is expanded."""
    units: list[int] = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if m is None:
            raise MfvError(f"{where}: {item!r} is not a unit or a range like 0-999")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise MfvError(f"{where}: range {item!r} runs backwards")
        # Checked before range() is expanded: "0-99999999999" must not build a list of 1e11 ints.
        if n_units is not None and hi >= n_units:
            raise MfvError(_out_of_range(where, hi if lo < n_units else lo, n_units))
        if n_units is None and hi - lo >= MAX_UNITS:
            raise MfvError(f"{where}: range {item!r} has more than {MAX_UNITS:,} units")
        units.extend(range(lo, hi + 1))
    return units


def _out_of_range(where: str, unit: int, n_units: int) -> str:
    return f"{where}: unit {unit} is out of range: the layer has {n_units} units (0-{n_units - 1})"


def read_classes(path: str | Path | None = None) -> list[tuple[str, str]]:
    """ImageNet classes in output order: ``(wnid, name)`` per line of a ``synset_words.txt`` file.

    Parameters
    ----------
    path : path, optional
        Default: ``reference/mfv-original/synset_words.txt`` under :func:`port.zoo.shared_root`.
    """
    if path is None:
        from port.zoo import shared_root

        path = shared_root() / DEFAULT_CLASSES
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no class list at {path} (give --classes FILE or --unit-map FILE)")
    classes = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        if not re.fullmatch(r"n\d{8}", wnid):
            raise MfvError(
                f"{path}:{lineno}: expected 'nXXXXXXXX class name', got {line.strip()[:60]!r}"
            )
        classes.append((wnid, name.strip()))
    return classes


def read_unit_map(path: str | Path, root: str | Path | None = None) -> dict[int, Path]:
    """A unit -> image folder mapping from a JSON or TSV file.

    Parameters
    ----------
    path : path
        JSON: an object ``{"945": "n07720875", ...}`` or a list whose index is the unit. Anything
        else: text lines ``unit<TAB>folder`` (or ``unit folder``); blank lines and ``#`` comments are
        skipped.
    root : path, optional
        Relative folders are resolved against it (the images root), otherwise against the map file's
        own folder.

    Returns
    -------
    dict of int -> Path
        Absolute folders.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no unit map at {path}")
    base = Path(root) if root is not None else path.parent
    text = path.read_text()
    raw: dict[int, str] = {}
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise MfvError(f"{path}: not valid JSON ({e})") from None
        items = (
            enumerate(data)
            if isinstance(data, list)
            else data.items()
            if isinstance(data, dict)
            else None
        )
        if items is None:
            raise MfvError(f"{path}: expected a JSON object unit -> folder or a list of folders")
        for k, v in items:
            if not str(k).strip().isdigit() or not isinstance(v, str):
                raise MfvError(f"{path}: entry {k!r}: {v!r} is not unit -> folder")
            raw[int(k)] = v
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = (
                line.rstrip("\n").split("\t", 1) if "\t" in line else line.strip().split(None, 1)
            )
            if len(parts) != 2 or not parts[0].strip().isdigit() or not parts[1].strip():
                raise MfvError(
                    f"{path}:{lineno}: expected 'unit<TAB>folder', got {line.strip()[:60]!r}"
                )
            u = int(parts[0])
            if u in raw:
                raise MfvError(f"{path}:{lineno}: unit {u} is mapped twice")
            raw[u] = parts[1].strip()
    return {u: (base / f).resolve() for u, f in raw.items()}


def imagenet_folders(root: str | Path, classes: list[tuple[str, str]]) -> dict[int, Path]:
    """Unit ``i`` -> ``root/<wnid of class i>`` (an ImageNet-style ``ROOT/<wnid>/*.JPEG`` tree)."""
    root = Path(root).resolve()
    return {i: root / wnid for i, (wnid, _) in enumerate(classes)}


def short(units: list[int], n: int = 8) -> str:
    return ", ".join(map(str, units[:n])) + (
        f" and {len(units) - n} more" if len(units) > n else ""
    )


def unit_folders(
    chosen: list[int], n_units: int, images, unit_map, classes
) -> tuple[dict[int, Path], dict[int, str]]:
    if unit_map is not None:
        mapping = read_unit_map(unit_map, images)
        unmapped = [u for u in chosen if u not in mapping]
        if unmapped:
            raise MfvError(f"{unit_map}: no folder for unit(s) {short(unmapped)}")
        labels = {u: mapping[u].name for u in chosen}
    else:
        cls = read_classes(classes)
        if len(cls) != n_units:
            raise MfvError(
                f"the target layer has {n_units} units but the class list has {len(cls)} "
                "classes: give a unit map (--unit-map FILE)"
            )
        mapping = imagenet_folders(images, cls)
        labels = {u: f"{cls[u][0]} {cls[u][1]}" for u in chosen}
    missing = [u for u in chosen if not mapping[u].is_dir()]
    if missing:
        raise FileNotFoundError(
            f"no image folder for unit(s) {short(missing)}: "
            + ", ".join(str(mapping[u]) for u in missing[:3])
        )
    return {u: mapping[u] for u in chosen}, labels
