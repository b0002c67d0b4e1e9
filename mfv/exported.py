"""MFV on a module written by ``python -m port export --format python``: ``--module FILE.py:Class``.

The generated class answers ``forward(x, blobs=[...])`` and ``blob_names`` as the port does, so MFV
reads its blobs by their Caffe names and runs it as it runs the port (same pixels for the same
seed). The parity verdict recorded is the one its export record carries (``<file>.export.json``);
a module whose record carries no passing verdict is refused, as a Caffe model would be, unless
``--no-parity-check``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from port.verdict import ParityError

from . import pixels as px
from .errors import MfvError
from .models import MODEL_SPECS, Model, wrap

__all__ = ["load_exported"]


def load_exported(
    module: str,
    weights: str | Path,
    *,
    name: str = "caffe",
    device: str = "cpu",
    parity_check: bool = True,
) -> Model:
    """The generated class of ``module`` ("FILE.py:ClassName") with the state dict ``weights``.

    Parameters
    ----------
    module : str
        ``path/to/file.py:ClassName``.
    weights : path
        Its safetensors state dict (written beside the file by the export).
    name : str
        A known model's name (``MODEL_SPECS``) for its pixel convention, target and schedule; any
        other name takes CaffeNet's convention at the module's declared input size.
    device : str
    parity_check : bool
        Refuse a module whose export record does not carry a passing parity verdict of the files
        it was exported from (:class:`port.verdict.ParityError`), as a Caffe model is refused;
        ``False`` (``--no-parity-check``) runs it anyway and the outputs record why.
    """
    from safetensors.torch import load_file

    path_text, sep, cls_name = module.rpartition(":")
    path = Path(path_text)
    if not sep or not path.is_file():
        raise MfvError(f"--module {module!r}: give FILE.py:ClassName of an existing file")
    spec = importlib.util.spec_from_file_location(f"_mfv_exported_{path.stem}", path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded
    spec.loader.exec_module(loaded)
    cls = getattr(loaded, cls_name, None)
    if cls is None or not hasattr(cls, "blob_names"):
        raise MfvError(f"{path}: no generated module class {cls_name!r} (with blob_names)")
    if weights is None or not Path(weights).is_file():
        raise MfvError(f"--module needs --weights FILE.safetensors (got {weights!r})")
    net = cls()
    net.load_state_dict(load_file(str(weights)))
    net.to(device)
    known = MODEL_SPECS.get(name)
    shape = dict(cls.INPUTS)[cls.INPUTS[0][0]]
    conv = px.convention_for(
        known.convention if known else px.CAFFENET, input_size=(int(shape[-2]), int(shape[-1]))
    )
    record = Path(str(path) + ".export.json")
    parity = json.loads(record.read_text()).get("parity") if record.is_file() else None
    _gate(path, record, parity, required=parity_check)
    info = {
        "source": "exported module",
        "module": str(path.resolve()),
        "class": cls_name,
        "weights": str(Path(weights).resolve()),
        "parity": parity or {"checked": False, "status": "no export record"},
    }
    return wrap(net, conv, name=known.name if known else cls_name, spec=known, info=info)


def _gate(path: Path, record: Path, parity: dict | None, *, required: bool) -> None:
    """Refuse (when required) a module whose source files had no passing verdict at export."""
    if not required or (parity or {}).get("verdict") == "pass":
        return
    why = "no export record" if parity is None else parity.get("reason") or parity.get("verdict")
    raise ParityError(
        f"{path}: its export record {record.name} carries no passing parity verdict ({why}). "
        "Run parity on the definition and weights it was exported from, export again, or pass "
        "--no-parity-check to run it anyway (every output then says so)"
    )
