"""Golden inputs: photographs scikit-image ships, preprocessed the way pycaffe's tools do it.

Done on the host (our Python) and handed to Caffe as a ready (N, C, H, W) float32 array, so the
goldens do not depend on the root's old scikit-image. The steps follow ``caffe.io.load_image``,
``caffe.io.resize_image`` and ``caffe.io.Transformer`` with ``raw_scale=255``,
``channel_swap=(2, 1, 0)`` and a per-channel mean:

1. the photo as RGB float32 in [0, 1] (``img_as_float``);
2. resized to the net's input size like ``caffe.io.resize_image`` (``port.preprocess``): stretched to [0, 1] by its own
   min/max, bilinear (order 1) ``skimage.transform.resize`` with ``mode="constant"`` and no
   anti-aliasing (the scikit-image of Caffe's time had none), stretched back;
3. HWC -> CHW, RGB -> BGR, x 255, minus the per-channel BGR mean (104, 117, 123).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from port.preprocess import Transformer

# ImageNet BGR channel means the Caffe examples subtract (ilsvrc_2012_mean averaged, rounded).
BGR_MEAN = (104.0, 117.0, 123.0)
RAW_SCALE = 255.0

# Colour photographs shipped inside scikit-image itself (no download needed).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")


@dataclass(frozen=True)
class InputSpec:
    """A named golden input: which photos, at which size (None: the net's declared size)."""

    name: str
    photos: tuple[str, ...]
    size: int | None = None

    def describe(self) -> dict:
        return {
            "photos": [f"skimage.data.{p}" for p in self.photos],
            "size": self.size,
            "batch": len(self.photos),
        }


def load_photo(name: str) -> np.ndarray:
    """An RGB photo from ``skimage.data`` as float32 HxWx3 in [0, 1]."""
    import skimage.data
    from skimage import img_as_float

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {', '.join(PHOTOS)}")
    img = getattr(skimage.data, name)()
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"skimage.data.{name} is not an RGB photo (shape {img.shape})")
    return img_as_float(img).astype(np.float32)


def caffe_preprocess(
    img: np.ndarray, size: tuple[int, int], mean: Sequence[float] = BGR_MEAN
) -> np.ndarray:
    """RGB [0, 1] HxWx3 -> the (3, H, W) float32 BGR array Caffe's input blob expects."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {img.shape}")
    transformer = Transformer(
        (3, *size),
        channel_swap=(2, 1, 0),
        raw_scale=RAW_SCALE,
        mean=np.asarray(mean, dtype=np.float32),
    )
    return transformer.preprocess(img)


def make_batch(photos: Sequence[str], size: tuple[int, int]) -> np.ndarray:
    """(N, 3, H, W) float32 batch of the named skimage photos."""
    return np.stack([caffe_preprocess(load_photo(p), size) for p in photos])
