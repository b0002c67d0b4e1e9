"""Caffe -> PyTorch: parse Caffe definitions and weights into modules that reproduce Caffe exactly.

The names below load on first use (as scikit-image's do), so that the torch-free modules other
packages build on (``port.errors``, ``port.paths``, ``port.command``, ``port.atomic``) import without
torch: ``python -m legacy_caffe doctor`` and ``python -m port --help`` start in a blink.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "BackwardSeed",
    "CaffeError",
    "CaffeNet",
    "LayerDef",
    "NetDef",
    "ToolError",
    "Transformer",
    "UsageError",
    "dump_blobs",
    "load",
    "load_caffe",
    "load_prototxt",
    "netdef_from_text",
    "read_caffemodel",
    "read_metadata",
    "register_layer",
    "save",
    "seed_weights",
    "sha256_file",
    "unregister_layer",
    "write_caffemodel",
]

# public name -> the submodule that defines it
_HOME = {
    "load": "artefact",
    "read_metadata": "artefact",
    "save": "artefact",
    "sha256_file": "artefact",
    "read_caffemodel": "caffemodel",
    "write_caffemodel": "caffemodel",
    "BackwardSeed": "dump",
    "dump_blobs": "dump",
    "CaffeError": "errors",
    "ToolError": "errors",
    "UsageError": "errors",
    "CaffeNet": "net",
    "load_caffe": "net",
    "LayerDef": "netdef",
    "NetDef": "netdef",
    "load_prototxt": "netdef",
    "netdef_from_text": "netdef",
    "Transformer": "preprocess",
    "register_layer": "layers",
    "unregister_layer": "layers",
    "seed_weights": "seed",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        try:  # a submodule: ``import port; port.zoo.MODELS``
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .artefact import load, read_metadata, save, sha256_file
    from .caffemodel import read_caffemodel, write_caffemodel
    from .dump import BackwardSeed, dump_blobs
    from .errors import CaffeError, ToolError, UsageError
    from .layers import register_layer, unregister_layer
    from .net import CaffeNet, load_caffe
    from .netdef import LayerDef, NetDef, load_prototxt, netdef_from_text
    from .preprocess import Transformer
    from .seed import seed_weights
