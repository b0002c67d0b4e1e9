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

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_json", "save_image", "to_uint8",
           "load_rgb", "png_data_uri", "ImageReadError"]


class ImageReadError(ValueError):
    """A file that is not a readable RGB image."""


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
    Otherwise round and clip.
    """
    image = np.asarray(image, dtype=np.float64)
    if wrap:
        return (np.trunc(image).astype(np.int64) % 256).astype(np.uint8)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def save_image(path: str | Path, image_u8: np.ndarray, *, quality: int = 75,
               text: dict[str, str] | None = None) -> None:
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


def load_rgb(path: str | Path, *, allow_convert: bool = False) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB.

    Raises :class:`ImageReadError` for unreadable files and, unless ``allow_convert``, for
    images that are not RGB (greyscale, CMYK, with alpha...).
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGB":
                if not allow_convert:
                    raise ImageReadError(f"{path}: not an RGB image (mode {im.mode})")
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except ImageReadError:
        raise
    except Exception as e:  # PIL raises many types for broken files
        raise ImageReadError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


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
    return np.asarray(im)[top:top + th, left:left + tw].copy()


def provenance_text(parity: dict | None) -> dict[str, str]:
    """The text every image carries: which parity verdict (and report) the run relied on."""
    p = parity or {}
    return {"mfv-parity": f"{p.get('status', 'n/a')}; report: {p.get('report')}; {p.get('message', '')}"}


def png_data_uri(image_u8: np.ndarray, *, max_side: int | None = None, fmt: str = "PNG") -> str:
    """An image as a data URI, shrunk to ``max_side``; ``fmt="JPEG"`` for pages of many thumbnails."""
    im = Image.fromarray(np.asarray(image_u8, dtype=np.uint8))
    if max_side and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_data_uri(path: str | Path, *, max_side: int | None = 256, fmt: str = "PNG") -> str:
    return png_data_uri(load_rgb(path, allow_convert=True), max_side=max_side, fmt=fmt)
