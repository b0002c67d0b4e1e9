"""Caffe's Python preprocessing (``caffe.io.Transformer``, ``caffe.io.load_image``, ``resize_image``).

Order, as pycaffe applies it: float32 -> HWC to CHW -> channel swap (RGB -> BGR) -> x raw_scale ->
minus mean -> x input_scale. A mean given per channel is used as is; a full-size mean image (e.g.
``ilsvrc_2012_mean.npy``, 3x256x256) is resized, not cropped, to the input size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CaffeError
from .images import load_float


def load_image(path: str | Path, *, color: bool = True) -> np.ndarray:
    """An image as float32 in [0, 1], HxWx3 RGB (or HxWx1), like ``caffe.io.load_image``.

    The decode is :func:`port.images.load_float` (bounded, Caffe's channel rules); this name stays
    for callers of the ``caffe.io`` vocabulary.
    """
    return load_float(path, color=color)


def resize_image(image: np.ndarray, size: tuple[int, int], *, order: int = 1) -> np.ndarray:
    """Resize HxWxK like ``caffe.io.resize_image``: scikit-image on the [min, max]-normalised image.

    Caffe-era scikit-image did no anti-aliasing; it is switched off here to match.
    """
    from skimage.transform import resize

    lo, hi = float(image.min()), float(image.max())
    if hi > lo:
        norm = (image - lo) / (hi - lo)
        out = resize(norm, size, order=order, mode="constant", anti_aliasing=False)
        return (out * (hi - lo) + lo).astype(np.float32)
    return np.full((*size, image.shape[-1]), lo, dtype=np.float32)


def load_mean(path: str | Path) -> np.ndarray:
    """A mean from ``.npy`` (CxHxW or C) or ``.binaryproto`` (a BlobProto)."""
    path = Path(path)
    if path.suffix == ".npy":
        from .arrays import load_npy

        return load_npy(path).astype(np.float32)
    from . import schema
    from .limits import read_bounded

    raw = read_bounded(path, "npy")
    blob = schema.BlobProto()
    try:
        blob.ParseFromString(raw)
    except Exception as exc:
        raise CaffeError(f"not a BlobProto mean file: {exc}", path=path) from None
    shape = list(blob.shape.dim) or [blob.num, blob.channels, blob.height, blob.width]
    data = np.asarray(blob.data or blob.double_data, dtype=np.float32)
    if data.size != int(np.prod(shape)):
        raise CaffeError("mean blob size does not match its shape", path=path, field="data")
    arr = data.reshape(shape)
    return arr[0] if arr.ndim == 4 else arr


@dataclass(frozen=True)
class Transformer:
    """Caffe's input transformation for one input blob.

    Parameters
    ----------
    input_shape : (C, H, W)
    channel_swap : tuple of int, optional
        Order taken from the loaded image's channels, e.g. (2, 1, 0) for RGB -> BGR.
    raw_scale : float, optional
        Multiplies the [0, 1] image (255 for the reference models).
    mean : array, optional
        Per-channel (C,) or full image (C, H', W'), subtracted after raw_scale.
    input_scale : float, optional
        Multiplies the result last.
    """

    input_shape: tuple[int, int, int]
    channel_swap: tuple[int, ...] | None = (2, 1, 0)
    raw_scale: float | None = 255.0
    mean: np.ndarray | None = None
    input_scale: float | None = None

    def _mean(self) -> np.ndarray | None:
        if self.mean is None:
            return None
        m = np.asarray(self.mean, dtype=np.float32)
        c, h, w = self.input_shape
        if m.ndim == 1:
            if m.shape[0] != c:
                raise CaffeError(f"mean has {m.shape[0]} channels, the input {c}", field="mean")
            return m[:, None, None]
        if m.shape[0] != c:
            raise CaffeError(f"mean has {m.shape[0]} channels, the input {c}", field="mean")
        if m.shape[1:] != (h, w):
            m = resize_image(m.transpose(1, 2, 0), (h, w)).transpose(2, 0, 1)
        return m

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """HxWxK float image (already at the input size) -> CxHxW network input (float32)."""
        c, h, w = self.input_shape
        img = np.asarray(image, dtype=np.float32)
        if img.shape[:2] != (h, w):
            img = resize_image(img, (h, w))
        x = img.transpose(2, 0, 1)
        if self.channel_swap is not None:
            x = x[list(self.channel_swap), :, :]
        if self.raw_scale is not None:
            x = x * self.raw_scale
        mean = self._mean()
        if mean is not None:
            x = x - mean
        if self.input_scale is not None:
            x = x * self.input_scale
        return np.ascontiguousarray(x, dtype=np.float32)

    def deprocess(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`preprocess`: CxHxW network input -> HxWxK image in [0, 1] scale."""
        x = np.asarray(x, dtype=np.float32).copy()
        if self.input_scale is not None:
            x = x / self.input_scale
        mean = self._mean()
        if mean is not None:
            x = x + mean
        if self.raw_scale is not None:
            x = x / self.raw_scale
        if self.channel_swap is not None:
            x = x[np.argsort(self.channel_swap), :, :]
        return x.transpose(1, 2, 0)
