"""Atomic file output and image conversion shared by the commands."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from port.atomic import write_bytes_atomic as atomic_write_bytes
from port.atomic import write_text_atomic as atomic_write_text

from .errors import MfvError

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


class ImageReadError(MfvError):
    """A file that is not a readable image (or a greyscale one where colour was asked for)."""


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


def save_image(
    path: str | Path, image_u8: np.ndarray, *, quality: int = 75, text: dict[str, str] | None = None
) -> None:
    """Atomic PNG (lossless) or JPEG (quality 75, PIL's default and the published means') save.

    ``text`` goes into PNG text chunks (JPEG: a comment), so that an image carries its provenance
    (the parity verdict it relied on) even when copied away from its trace.
    """
    path = Path(path)
    buf = io.BytesIO()
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    kwargs: dict = {"quality": quality} if fmt == "JPEG" else {}
    if text and fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for k, v in text.items():
            info.add_itxt(k, v)
        kwargs["pnginfo"] = info
    elif text:
        kwargs["comment"] = "; ".join(f"{k}: {v}" for k, v in text.items()).encode("utf-8")
    Image.fromarray(np.asarray(image_u8, dtype=np.uint8)).save(buf, fmt, **kwargs)
    atomic_write_bytes(path, buf.getvalue())


#: Modes of single-channel images (grey), which Caffe's loader replicates to RGB.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def load_rgb(path: str | Path, *, keep_grey: bool = True) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB, converted the way Caffe's ``caffe.io.load_image`` does.

    Caffe read images through scikit-image as floats in [0, 1] and scaled them by 255; the rules
    follow from that: greyscale is replicated to three channels, CMYK (and other colour spaces) is
    converted to RGB, an alpha channel is dropped (not composited), and 16-bit images are scaled
    (value * 255 / 65535, rounded), not clipped. Palette images become RGB.

    Parameters
    ----------
    path : str or Path
    keep_grey : bool
        ``False`` refuses greyscale images (:class:`ImageReadError`), for callers that want colour
        images only.

    Raises
    ------
    ImageReadError
        For unreadable files, and for greyscale ones unless ``keep_grey``.
    """
    try:
        with Image.open(path) as im:
            im.load()
            grey = im.mode in GREY_MODES
            if grey and not keep_grey:
                raise ImageReadError(f"{path}: a greyscale image (mode {im.mode}), skipped")
            return _caffe_rgb(im)
    except ImageReadError:
        raise
    except Exception as e:  # PIL raises many types for broken files
        raise ImageReadError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def _caffe_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im)
        if mode == "F":
            scale = 255.0  # float images are taken to lie in [0, 1], as scikit-image does
        else:
            # 16-bit sources (I;16*, and Pillow's "I" for 16-bit PNGs) scale by 65535.
            scale = 255.0 / (
                65535.0 if mode.startswith("I;16") or a.max(initial=0) <= 65535 else 2147483647.0
            )
        g = np.clip(np.rint(a.astype(np.float32) * np.float32(scale)), 0, 255).astype(np.uint8)
    elif mode in ("1", "L"):
        g = np.asarray(im.convert("L"), dtype=np.uint8)
    else:
        if mode in ("RGBA", "LA", "La", "PA", "RGBa", "RGBX") or (
            mode == "P" and "transparency" in im.info
        ):
            rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
            return np.ascontiguousarray(rgba[:, :, :3])  # alpha dropped, as Caffe's loader did
        if mode != "RGB":
            im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, palette
        return np.asarray(im, dtype=np.uint8).copy()
    return np.repeat(g[:, :, None], 3, axis=2)


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
    im.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_data_uri(path: str | Path, *, max_side: int | None = 256, fmt: str = "PNG") -> str:
    return png_data_uri(load_rgb(path), max_side=max_side, fmt=fmt)
