"""Export the port so it runs without this project: Python source, ``torch.export``, ONNX.

:func:`export_net` writes one artefact atomically and, beside it, ``<artefact>.export.json``: the
sha256 of the definition and weights it came from, the parity verdict those files carry (if any),
the export time and the size of every file written. ``python -m port export`` is its command line
(:mod:`port.export.cli`).

| format | files | needs |
|---|---|---|
| ``python`` | ``NAME.py`` (an ``nn.Module`` class) + ``NAME.safetensors`` (its state dict) | torch, safetensors |
| ``pt2`` | ``NAME.pt2`` (``torch.export`` program; a dict of every blob) | torch |
| ``onnx`` | ``NAME.onnx`` (every blob an output) | onnxruntime |
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..artefact import sha256_file
from ..atomic import atomic_path, write_text_atomic
from ..errors import CaffeError
from ..net import CaffeNet

__all__ = ["FORMATS", "RECORD_FORMAT", "export_net", "example_inputs", "record_path", "read_record"]

FORMATS = ("python", "pt2", "onnx")
RECORD_FORMAT = "caffe-mfv-export/1"
_SUFFIX = {"python": ".py", "pt2": ".pt2", "onnx": ".onnx"}


def record_path(artefact: str | Path) -> Path:
    """Where an artefact's provenance record lives: ``<artefact>.export.json``."""
    return Path(str(artefact) + ".export.json")


def read_record(artefact: str | Path) -> dict:
    """The provenance record of an artefact (``{}`` when there is none)."""
    path = record_path(artefact)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CaffeError(f"unreadable export record: {exc}", path=path) from None


def example_inputs(net: CaffeNet) -> dict[str, torch.Tensor]:
    """Batches of ones of the declared input shapes (a traced graph bakes in any non-batch size).

    Ones, not zeros: a Filter selector keeps every item and an Embed index is in range, so data-
    dependent layers trace their general path.
    """
    return {
        name: torch.ones(tuple(shape), dtype=torch.float32)
        for name, shape in net.netdef.inputs.items()
    }


def _source_verdict(prototxt: Path | None, caffemodel: Path | None, seed: int | None) -> dict:
    """The parity verdict the source files carry: the verdict file's content when its checksums
    are those of the files, else why there is none."""
    from ..verdict import verdict_path

    if prototxt is None:
        return {"verdict": "none", "reason": "no definition file"}
    path = verdict_path(prototxt, caffemodel, seed=seed)
    if not path.is_file():
        return {"verdict": "none", "reason": f"no verdict file {path}"}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"verdict": "none", "reason": f"unreadable verdict {path}: {exc}"}
    same = data.get("prototxt_sha256") == sha256_file(prototxt) and data.get(
        "caffemodel_sha256"
    ) == (sha256_file(caffemodel) if caffemodel else None)
    if not same:
        return {"verdict": "none", "reason": f"{path} was computed on other files (stale)"}
    return {"verdict": data.get("verdict"), "file": str(path), "summary": data.get("summary")}


def _write_python(net: CaffeNet, out: Path, class_name: str | None, header: str) -> dict:
    from safetensors.torch import save_file

    from .python_source import generate_python

    weights = out.with_suffix(".safetensors")
    name, source, state = generate_python(
        net, class_name=class_name, header=header, weights_name=weights.name
    )
    with atomic_path(weights, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"class": name, "module": out.name})
    write_text_atomic(out, source)
    return {"class": name, "weights": weights.name, "files": [out, weights]}


def _onnx_batch_check(path: Path, example: dict[str, torch.Tensor]) -> str:
    """ "dynamic" when ONNX Runtime runs the file on one more sample than the example, else why
    not (a recurrent net's axis 0 is time, unrolled at export)."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {
        i.name: np.ones((example[i.name].shape[0] + 1, *example[i.name].shape[1:]), np.float32)
        for i in sess.get_inputs()
    }
    try:
        sess.run(None, feed)
    except Exception as exc:  # ORT's errors have no common base class
        return f"static (ONNX Runtime on batch + 1: {str(exc).splitlines()[0][:160]})"
    return "dynamic"


def export_net(
    net: CaffeNet,
    fmt: str,
    out: str | Path,
    *,
    prototxt: str | Path | None = None,
    caffemodel: str | Path | None = None,
    seed: int | None = None,
    class_name: str | None = None,
    sources: dict | None = None,
) -> dict:
    """Export ``net`` (float32, weights loaded) as ``fmt`` to ``out`` and write its record.

    Parameters
    ----------
    net : CaffeNet
    fmt : {"python", "pt2", "onnx"}
    out : path
        The artefact (``.py``, ``.pt2`` or ``.onnx``); the python format also writes the weights
        as ``<out stem>.safetensors`` beside it.
    prototxt, caffemodel : path, optional
        The source files, for the record's checksums and the verdict they carry.
    seed : int, optional
        The ``seed_weights`` seed of seeded weights (no caffemodel).
    class_name : str, optional
        The python format's class name (default from the definition's name).
    sources : dict, optional
        Checksums known otherwise (``prototxt_sha256``, ``caffemodel_sha256`` of a ``port
        convert`` artefact's sources), recorded where the files themselves are not given.

    Returns
    -------
    dict
        The record written beside the artefact.

    Raises
    ------
    CaffeError
        A layer the format cannot express (named), or a format not in :data:`FORMATS`.
    """
    if fmt not in FORMATS:
        raise CaffeError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    if out.suffix != _SUFFIX[fmt]:
        raise CaffeError(f"a {fmt} artefact's name ends in {_SUFFIX[fmt]}", path=out, field="out")
    prototxt = Path(prototxt) if prototxt else None
    caffemodel = Path(caffemodel) if caffemodel else None
    known = dict(sources or {})
    sources = {
        "prototxt": str(prototxt) if prototxt else None,
        "prototxt_sha256": sha256_file(prototxt) if prototxt else known.get("prototxt_sha256"),
        "caffemodel": str(caffemodel) if caffemodel else None,
        "caffemodel_sha256": (
            sha256_file(caffemodel) if caffemodel else known.get("caffemodel_sha256")
        ),
        "seed": None if caffemodel else seed,
    }
    net = net.float().eval()
    t0 = time.perf_counter()
    info: dict = {"files": [out]}
    if fmt == "python":
        header = "\n".join(f"{k}: {v}" for k, v in sources.items() if v is not None)
        info = _write_python(net, out, class_name, "Exported by caffe-mfv from\n" + header)
    elif fmt == "pt2":
        from .pt2 import export_pt2

        _, note = export_pt2(net, out, example_inputs(net))
        info["batch"] = note or "dynamic"
    else:
        from .onnx_file import OPSET, export_onnx

        export_onnx(net, out, example_inputs(net))
        info.update(opset=OPSET, batch=_onnx_batch_check(out, example_inputs(net)))
    files = info.pop("files")
    record = {
        "format": RECORD_FORMAT,
        "artefact_format": fmt,
        "artefact": out.name,
        **info,
        **sources,
        "parity": _source_verdict(prototxt, caffemodel, seed),
        "export_seconds": round(time.perf_counter() - t0, 3),
        "files": {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files},
        "torch": torch.__version__,
    }
    write_text_atomic(record_path(out), json.dumps(record, indent=1) + "\n")
    return record
