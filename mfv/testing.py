"""Tiny seeded networks for tests and examples (CPU, milliseconds per step)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .models import Model, wrap
from .pixels import PixelConvention

__all__ = ["tiny_convention", "tiny_model", "torch_threads"]


def tiny_convention(size: int = 32, *, caffe: bool = True) -> PixelConvention:
    """CaffeNet's convention (or torchvision's) at a small input size."""
    if caffe:
        return PixelConvention(
            "BGR", (104.0, 117.0, 123.0), (1.0, 1.0, 1.0), (0.0, 255.0), (size, size), "tiny-caffe"
        )
    return PixelConvention(
        "RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (0.0, 1.0), (size, size), "tiny-tv"
    )


def tiny_model(seed: int = 0, *, size: int = 32, caffe: bool = True, classes: int = 10) -> Model:
    """conv -> relu -> conv -> relu -> pool -> fc(16) -> relu -> fc(classes), seeded."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=2),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 16),
        nn.ReLU(inplace=True),
        nn.Linear(16, classes),
    )
    with torch.no_grad():
        net[0].weight.mul_(0.05)  # keeps activations in a sane range for 0..255 inputs
    return wrap(net, tiny_convention(size, caffe=caffe), name="tiny")


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run with ``n`` torch CPU threads, then restore: on a busy shared 2-core machine one thread was
    ~20x faster than two for small nets (OpenMP threads spin while waiting for a core)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
