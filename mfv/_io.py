"""Atomic file output and image conversion shared by the commands.

Images are read and written by :mod:`port.images` (the one Caffe-rule reader); its names are
re-exported here for mfv's modules.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from port.atomic import write_bytes_atomic as atomic_write_bytes
from port.atomic import write_text_atomic as atomic_write_text
from port.images import GREY_MODES, ImageReadError, load_rgb, save_image

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "write_json",
    "save_image",
    "to_uint8",
    "load_rgb",
    "png_data_uri",
    "ImageReadError",
    "GREY_MODES",
]


def _default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=_default, allow_nan=True) + "\n")


def to_uint8(image: np.ndarray, *, wrap: bool = False) -> np.ndarray:
    """HxWx3 float grey levels -> uint8.

    ``wrap=True`` is the original's ``np.uint8(image)``: truncation toward zero, then modulo 256
    (what the C cast does on x86; written out because NumPy calls that cast undefined).
    Otherwise round and clip. uint8 input is returned as is; others are converted a block of rows
    at a time, so that a large image needs its uint8 result and one small float64 block, not three
    float64 copies.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    out = np.empty(image.shape, dtype=np.uint8)
    rows = max(1, (1 << 20) // max(1, image[:1].size))
    for r in range(0, image.shape[0], rows):
        block = image[r : r + rows].astype(np.float64)
        if wrap:
            out[r : r + rows] = np.trunc(block).astype(np.int64) % 256
        else:
            np.rint(block, out=block)
            np.clip(block, 0, 255, out=block)
            out[r : r + rows] = block
    return out


def fit_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the shorter side to fit ``size`` (bicubic) and centre-crop; no-op at the right size."""
    h, w = image.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return image
    s = max(th / h, tw / w)
    nh, nw = max(th, round(h * s)), max(tw, round(w * s))
    im = Image.fromarray(image).resize((nw, nh), Image.BICUBIC)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return np.asarray(im)[top : top + th, left : left + tw].copy()


def provenance_text(parity: dict | None) -> dict[str, str]:
    """The text every image carries: which parity verdict (and report) the run relied on."""
    p = parity or {}
    return {
        "mfv-parity": f"{p.get('status', 'n/a')}; report: {p.get('report')}; {p.get('message', '')}"
    }


def png_data_uri(image_u8: np.ndarray, *, max_side: int | None = None, fmt: str = "PNG") -> str:
    """An image as a data URI, shrunk to ``max_side``; ``fmt="JPEG"`` for pages of many thumbnails."""
    im = Image.fromarray(np.asarray(image_u8, dtype=np.uint8))
    if max_side and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.BICUBIC)
    buf = io.BytesIO()
    # zlib level 1 as in save_image: a run's report encodes two images per facet.
    im.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {"compress_level": 1}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_data_uri(path: str | Path, *, max_side: int | None = 256, fmt: str = "PNG") -> str:
    return png_data_uri(load_rgb(path), max_side=max_side, fmt=fmt)
