"""The heat map of a blob's error as PNG bytes, written with zlib alone (no imaging library)."""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["png_heatmap"]


def _png(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 image as PNG (zlib only, no imaging library)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def png_heatmap(m: np.ndarray, *, vmax: float | None = None, scale: int = 0) -> bytes:
    """A heat map (dark blue = 0, yellow = vmax) of a 2-D array as PNG bytes, upscaled to ~400 px."""
    m = np.asarray(m, np.float64)
    vmax = float(m.max()) if vmax is None else vmax
    t = np.clip(m / vmax, 0, 1) if vmax > 0 else np.zeros_like(m)
    stops = np.array(
        [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], float
    )
    pos = t * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[..., None]
    rgb = (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)
    scale = scale or max(1, 400 // max(m.shape))
    rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    return _png(rgb)
