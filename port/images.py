"""The one image reader and writer: files decoded the way Caffe's ``caffe.io.load_image`` decoded them.

``caffe.io.load_image`` is ``skimage.img_as_float(skimage.io.imread(path, as_gray=not color))``,
then a grey image becomes three channels and a fourth (alpha) channel is dropped. The scikit-image
of Caffe's time read files through its PIL plugin, which decides the channels before any of that:
a palette image becomes grey (grey palette), RGBA (PNG with transparency) or RGB; mode ``1`` becomes
grey; every mode with alpha (``LA``, ``PA``, ``RGBa``...) becomes RGBA; CMYK becomes RGB; 16-bit
PNGs stay 16-bit. So a grey+alpha image ends up grey replicated to RGB, alpha dropped (the imageio
reader of today's scikit-image would hand back two channels instead).

Two views of the same decode: :func:`load_float` (float32 in [0, 1], what ``caffe.io.load_image``
returns) and :func:`load_rgb` (uint8 RGB, the float image x 255 rounded, what MFV works on).

Reads are bounded: only regular files are opened (a device or a FIFO would never end), and the
pixel count declared in the header is checked against a cap before anything is decoded.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import write_bytes_atomic
from .errors import ToolError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "GREY_MODES",
    "ImageReadError",
    "MAX_PIXELS_ENV",
    "load_float",
    "load_rgb",
    "pixel_cap",
    "save_image",
]

#: Modes of single-channel images (grey), which Caffe's loader replicates to RGB.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

#: The environment variable that raises (or lowers) the pixel cap.
MAX_PIXELS_ENV = "CAFFE_MFV_MAX_IMAGE_PIXELS"
#: 50 megapixels: a 7000x7000 photo fits; decoded as float64 RGB it already takes 1.2 GB.
DEFAULT_MAX_PIXELS = 50_000_000

# Modes whose alpha channel the PIL plugin kept (as RGBA) and caffe.io.load_image then dropped.
_ALPHA_MODES = ("RGBA", "LA", "La", "PA", "RGBa", "RGBX")


class ImageReadError(ToolError, ValueError):
    """A file that is not a readable image, too large, not a regular file, or grey where colour was asked.

    A :class:`ValueError` too, so that library callers who caught ``ValueError`` still do.
    """

    def __init__(self, message: str, *, path: str | Path) -> None:
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


def pixel_cap() -> int:
    """The pixel cap in force: ``$CAFFE_MFV_MAX_IMAGE_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        cap = int(raw)
    except ValueError:
        raise ToolError(f"{MAX_PIXELS_ENV}={raw!r} is not a whole number of pixels") from None
    if cap < 1:
        raise ToolError(f"{MAX_PIXELS_ENV}={raw!r} must be at least 1")
    return cap


def _open(path: str | Path, cap: int | None) -> Image.Image:
    """Open ``path`` as a PIL image after the file-type and header checks; nothing decoded yet."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ImageReadError(f"cannot read ({e.strerror or e})", path=path) from None
    if not stat.S_ISREG(st.st_mode):
        # A FIFO would block the open, a device never end: neither is an image file.
        raise ImageReadError("not a regular file (a device, FIFO or folder)", path=path)
    cap = pixel_cap() if cap is None else cap
    try:
        with warnings.catch_warnings():
            # The cap below is the check; PIL's own bomb warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Exception as e:  # PIL raises many types for broken files
        raise ImageReadError(f"unreadable ({type(e).__name__}: {e})", path=path) from None
    w, h = im.size
    if w * h > cap:
        im.close()
        raise ImageReadError(
            f"{w}x{h} = {w * h:,} pixels is over the cap of {cap:,} pixels read from its header "
            f"before decoding; set {MAX_PIXELS_ENV} to raise the cap",
            path=path,
        )
    return im


def _decoded(path: str | Path, cap: int | None, keep_grey: bool, convert):
    """Open, check, decode and hand the loaded image to ``convert``; PIL's errors named once."""
    im = _open(path, cap)
    try:
        with im:
            if im.mode in GREY_MODES and not keep_grey:
                raise ImageReadError(f"a greyscale image (mode {im.mode}), skipped", path=path)
            im.load()
            return convert(im)
    except ImageReadError:
        raise
    except Exception as e:  # PIL raises many types for broken files
        raise ImageReadError(f"unreadable ({type(e).__name__}: {e})", path=path) from None


def load_rgb(
    path: str | Path, *, keep_grey: bool = True, max_pixels: int | None = None
) -> np.ndarray:
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
    max_pixels : int, optional
        The pixel cap; default :func:`pixel_cap` (the environment's, else 50 megapixels).

    Returns
    -------
    numpy.ndarray
        HxWx3 uint8.

    Raises
    ------
    ImageReadError
        For unreadable, oversized or non-regular files, and for greyscale ones unless ``keep_grey``.
    """
    return _decoded(path, max_pixels, keep_grey, _caffe_rgb)


def load_float(
    path: str | Path, *, color: bool = True, max_pixels: int | None = None
) -> np.ndarray:
    """Read an image as ``caffe.io.load_image`` does: float32 in [0, 1], HxWx3 RGB (or HxWx1 grey).

    Parameters
    ----------
    path : str or Path
    color : bool
        ``True``: three channels (grey replicated, alpha dropped). ``False``: one grey channel, a
        colour image converted as ``skimage.io.imread(..., as_gray=True)`` does (alpha composited on
        white by ``rgba2rgb``, then ``rgb2gray``).
    max_pixels : int, optional
        The pixel cap; default :func:`pixel_cap`.

    Returns
    -------
    numpy.ndarray
        HxWx3 (or HxWx1) float32.

    Raises
    ------
    ImageReadError
        For unreadable, oversized or non-regular files.
    """
    from skimage import img_as_float

    native = _decoded(path, max_pixels, True, _plugin_array)
    img = img_as_float(native)
    if not color and img.ndim == 3:
        from skimage.color import rgb2gray, rgba2rgb

        img = rgb2gray(rgba2rgb(img) if img.shape[2] == 4 else img)
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def _plugin_array(im: Image.Image) -> np.ndarray:
    """The array scikit-image's PIL plugin made of a loaded image (channels decided, dtype native)."""
    mode = im.mode
    if mode == "P":
        if "transparency" in im.info:
            return np.asarray(im.convert("RGBA"))
        rgb = np.asarray(im.convert("RGB"))
        grey = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
        return np.ascontiguousarray(rgb[..., 0]) if grey else rgb
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in _ALPHA_MODES:
        return np.asarray(im.convert("RGBA"))
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":
        a = np.asarray(im)
        return a.astype(np.uint16) if a.max(initial=0) <= 65535 and a.min(initial=0) >= 0 else a
    if mode in ("L", "RGB", "F"):
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV


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
        if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
            rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
            return np.ascontiguousarray(rgba[:, :, :3])  # alpha dropped, as Caffe's loader did
        if mode != "RGB":
            im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, palette
        return np.asarray(im, dtype=np.uint8).copy()
    return np.repeat(g[:, :, None], 3, axis=2)


def save_image(
    path: str | Path,
    image_u8: np.ndarray,
    *,
    quality: int = 75,
    text: dict[str, str] | None = None,
    compress_level: int = 1,
) -> bytes:
    """Atomic PNG (lossless) or JPEG (quality 75, PIL's default and the published means') save;
    returns the bytes written (to write the same file elsewhere without encoding it again).

    Parameters
    ----------
    path : str or Path
        ``.jpg``/``.jpeg`` writes JPEG, anything else PNG.
    image_u8 : numpy.ndarray
        HxWx3 (or HxW) uint8.
    quality : int
        JPEG quality.
    text : dict, optional
        Goes into PNG text chunks (JPEG: a comment), so that an image carries its provenance (the
        parity verdict it relied on) even when copied away from its trace.
    compress_level : int
        PNG's zlib level, 0-9 (the pixels are the same at every level). 1 by default: a 272 x 272
        visualisation encodes in ~6 ms and ~90 KB against ~30 ms and ~75 KB at Pillow's 6, and an
        MFV run writes an image per facet and octave.

    Returns
    -------
    bytes
        The file's contents, as written.
    """
    path = Path(path)
    buf = io.BytesIO()
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    kwargs: dict = {"quality": quality} if fmt == "JPEG" else {"compress_level": compress_level}
    if text and fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for k, v in text.items():
            info.add_itxt(k, v)
        kwargs["pnginfo"] = info
    elif text:
        kwargs["comment"] = "; ".join(f"{k}: {v}" for k, v in text.items()).encode("utf-8")
    Image.fromarray(np.asarray(image_u8, dtype=np.uint8)).save(buf, fmt, **kwargs)
    data = buf.getvalue()
    write_bytes_atomic(path, data)
    return data
