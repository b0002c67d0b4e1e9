"""Pixel conventions: how a network wants its pixels, and the one pixel space MFV works in.

MFV takes its steps, clips and denoises in one *pixel space* for every model: RGB, channels first,
grey levels 0..255 as floats. The schedule's step sizes and TV weights are therefore in grey levels
whatever the network, and a :class:`PixelConvention` maps pixel space to the network's input
(channel order, scale to the network's value range, mean, std) and back. The gradient is taken with
respect to pixel space through that map, so a network trained on std-normalised input (torchvision)
gets steps of the right size; the original ignored the std, which is why it failed on those networks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = [
    "PixelConvention",
    "CAFFENET",
    "CAFFE_VGG16",
    "CAFFE_224",
    "TORCHVISION",
    "convention_for",
]


@dataclass(frozen=True)
class PixelConvention:
    """The preprocessing a network was trained with.

    Parameters
    ----------
    channel_order : {"RGB", "BGR"}
        Channel order of the network input.
    mean, std : tuple of 3 floats
        Per-channel mean subtracted and std divided, in the network's channel order and in units of
        its value range (``(104, 117, 123)`` BGR for CaffeNet; ``(0.485, 0.456, 0.406)`` RGB for
        torchvision).
    value_range : tuple of 2 floats
        What grey levels 0 and 255 become before the mean is subtracted: ``(0, 255)`` for Caffe,
        ``(0, 1)`` for torchvision.
    input_size : tuple of 2 ints
        (height, width) the network takes.
    name : str
        Label used in outputs.
    """

    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    value_range: tuple[float, float]
    input_size: tuple[int, int]
    name: str = ""

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', not {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values each")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.value_range[1] <= self.value_range[0]:
            raise ValueError(f"value_range must increase, got {self.value_range}")

    # -- per-channel constants in pixel space (RGB, grey levels) -------------------------------

    @property
    def scale(self) -> float:
        """Network value units per grey level."""
        lo, hi = self.value_range
        return (hi - lo) / 255.0

    def _rgb(self, values: tuple[float, float, float]) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        return v[::-1].copy() if self.channel_order == "BGR" else v

    @property
    def mean_pixels(self) -> np.ndarray:
        """The mean as an RGB colour in grey levels (the colour the network sees as zero)."""
        return (self._rgb(self.mean) - self.value_range[0]) / self.scale

    def as_dict(self) -> dict:
        return asdict(self)

    # -- torch, batched (N, 3, H, W) ---------------------------------------------------------------

    def to_network(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map a batch in pixel space, (N, 3, H, W) RGB grey levels, to network input.

        Differentiable, so gradients come back to pixel space with the std honoured.
        """
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) pixels, got shape {tuple(pixels.shape)}")
        x = pixels
        if self.channel_order == "BGR":
            x = x.flip(1)
        lo = self.value_range[0]
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        # Multiplying by exactly 1.0 and dividing by exactly 1.0 leaves Caffe's arithmetic intact.
        if self.scale != 1.0 or lo != 0.0:
            x = x * self.scale + lo
        x = x - mean
        if any(s != 1.0 for s in self.std):
            x = x / std
        return x

    def from_network(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_network`."""
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        y = x * std + mean
        y = (y - self.value_range[0]) / self.scale
        if self.channel_order == "BGR":
            y = y.flip(1)
        return y

    # -- numpy, one image, the original's layout -----------------------------------------------------

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) RGB grey levels -> (3, H, W) network input, float32 (pycaffe's ``preprocess``)."""
        image = np.asarray(image, dtype=np.float64)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
        chw = np.transpose(image, (2, 0, 1))
        t = self.to_network(torch.from_numpy(np.ascontiguousarray(chw))[None])
        return t[0].numpy().astype(np.float32)

    def deprocess(self, x: np.ndarray) -> np.ndarray:
        """(3, H, W) network input -> (H, W, 3) RGB grey levels, float64 (pycaffe's ``deprocess``)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) array, got shape {x.shape}")
        t = self.from_network(torch.from_numpy(np.ascontiguousarray(x))[None])
        return np.transpose(t[0].numpy(), (1, 2, 0))


#: CaffeNet as MFV used it (deploy_alexnet_updated.prototxt): BGR, mean (104, 117, 123), no std.
CAFFENET = PixelConvention(
    "BGR", (104.0, 117.0, 123.0), (1.0, 1.0, 1.0), (0.0, 255.0), (227, 227), "caffe-227"
)
#: Caffe model-zoo nets at 224 (GoogLeNet): same mean as CaffeNet.
CAFFE_224 = PixelConvention(
    "BGR", (104.0, 117.0, 123.0), (1.0, 1.0, 1.0), (0.0, 255.0), (224, 224), "caffe-224"
)
#: VGG16 (Simonyan & Zisserman's Caffe release): the ImageNet mean pixel.
CAFFE_VGG16 = PixelConvention(
    "BGR", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), (0.0, 255.0), (224, 224), "caffe-vgg16"
)
#: torchvision's ImageNet classifiers: RGB on 0..1, mean/std normalised, 224.
TORCHVISION = PixelConvention(
    "RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (0.0, 1.0), (224, 224), "torchvision"
)


def convention_for(base: PixelConvention, *, input_size: tuple[int, int]) -> PixelConvention:
    """``base`` with another input size (the size a Caffe definition declares wins)."""
    return PixelConvention(
        base.channel_order, base.mean, base.std, base.value_range, tuple(input_size), base.name
    )
