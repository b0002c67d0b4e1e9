"""Caffe's local response normalisation as one function, shared by the layer and the exporter.

The python exporter copies this module's function into generated files (it needs only torch), so
an exported module rounds exactly as the port does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["caffe_lrn"]


def caffe_lrn(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, across_channels: bool = True
) -> torch.Tensor:
    """Caffe's LRN of a 4-D ``x``.

    ACROSS_CHANNELS: ``x / (k + alpha / n * sum of x^2 over the n channels centred on c)^beta``;
    WITHIN_CHANNEL: ``x / (1 + alpha / n^2 * sum of x^2 over the n x n window)^beta``, zero padded
    (``k`` unused, as in Caffe).
    """
    half = (size - 1) // 2
    sq = x * x
    if not across_channels:
        window = F.avg_pool2d(sq, size, stride=1, padding=half, count_include_pad=True)
        return x * (1.0 + alpha * window).pow(-beta)
    # The channel window as n shifted adds: 3.5x faster forward and backward than a 3-D average
    # pool over a channel axis (CaffeNet's norm1 at batch 10: 20.1 -> 5.4 ms), the same error
    # against float64.
    padded = F.pad(sq, (0, 0, 0, 0, half, half))
    channels = x.shape[1]
    window = padded.narrow(1, 0, channels)
    for i in range(1, size):
        window = window + padded.narrow(1, i, channels)
    return x * (k + (alpha / size) * window).pow(-beta)
