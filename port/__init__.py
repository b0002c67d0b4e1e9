"""Caffe -> PyTorch: parse Caffe definitions and weights into modules that reproduce Caffe exactly."""

from .artefact import load, read_metadata, save, sha256_file
from .caffemodel import read_caffemodel, write_caffemodel
from .dump import dump_blobs
from .errors import CaffeError
from .net import CaffeNet, load_caffe
from .netdef import LayerDef, NetDef, load_prototxt, netdef_from_text
from .preprocess import Transformer
from .seed import seed_weights

__all__ = [
    "CaffeError", "CaffeNet", "LayerDef", "NetDef", "Transformer", "dump_blobs", "load",
    "load_caffe", "load_prototxt", "netdef_from_text", "read_caffemodel", "read_metadata", "save",
    "seed_weights", "sha256_file", "write_caffemodel",
]
