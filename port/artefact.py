"""The converted artefact: one safetensors file holding the weights and the definition text.

Tensors are named ``<layer>/<i>`` in Caffe's blob layout; the metadata holds the definition (as V2
prototxt text), a format tag and the sha256 of the files it was converted from, so that a later
parity verdict can be tied to exactly these bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .atomic import atomic_path
from .errors import CaffeError
from .net import CaffeNet
from .netdef import netdef_from_text

FORMAT = "caffe-mfv-port/1"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def save(net: CaffeNet, path: str | Path, *, metadata: dict[str, str] | None = None) -> None:
    """Write ``net`` (definition + weights) to ``path`` atomically.

    Parameters
    ----------
    net : CaffeNet
    path : str or Path
        Destination ``.safetensors`` file.
    metadata : dict of str to str, optional
        Extra provenance (e.g. the sha256 of the source prototxt and caffemodel).
    """
    path = Path(path)
    tensors = {
        f"{layer}/{i}": np.ascontiguousarray(blob)
        for layer, blobs in net.caffe_blobs().items()
        for i, blob in enumerate(blobs)
    }
    meta = {"format": FORMAT, "prototxt": net.netdef.to_prototxt(), "name": net.netdef.name}
    if net.netdef.schema.source:  # a fork's caffe.proto: load() needs it to parse the definition
        meta["proto"] = net.netdef.schema.text
        meta["proto_source"] = net.netdef.schema.source
    meta.update(metadata or {})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a saved artefact, without loading its weights."""
    from safetensors import safe_open

    from .limits import open_regular

    open_regular(path, "caffemodel").close()  # a regular file within the weights' cap
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise CaffeError(f"not a converted model: {exc}", path=path) from None
    if meta.get("format") != FORMAT:
        raise CaffeError(f"not a converted model (format {meta.get('format')!r})", path=path)
    return meta


def load(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    accumulate: str = "float32",
) -> CaffeNet:
    """Load an artefact written by :func:`save` into a :class:`CaffeNet` in eval mode.

    ``accumulate="float64"`` gives the accurate mode (float32 blobs, float64 arithmetic in every
    layer; see :class:`port.CaffeNet`).
    """
    meta = read_metadata(path)
    proto = None
    if "proto" in meta:
        from .schema import schema_from_proto_text

        proto = schema_from_proto_text(meta["proto"], path=meta.get("proto_source", "<proto>"))
    netdef = netdef_from_text(meta["prototxt"], path=f"{path} (embedded definition)", proto=proto)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CaffeError(f"cannot read weights: {exc}", path=path) from None
    weights: dict[str, list[np.ndarray]] = {}
    for key in sorted(tensors, key=lambda k: (k.rpartition("/")[0], int(k.rpartition("/")[2]))):
        layer, _, _ = key.rpartition("/")
        weights.setdefault(layer, []).append(tensors[key])
    net = CaffeNet(netdef, zero_init=False, accumulate=accumulate)
    net.load_blobs(weights, source=path, share=True)
    return net.to(device=device, dtype=dtype).eval()
