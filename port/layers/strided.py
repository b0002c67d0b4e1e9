"""Strided convolutions on few input channels as stride-1 convolutions of a space-to-depth input.

A first layer such as CaffeNet's conv1 (3 channels, 11x11, stride 4) is a poor fit for oneDNN's
kernels: its input gradient (what feature visualisation needs) ran at about a fifth of the
machine's matrix-product rate, 53 ms of a 307 ms MFV step at batch 10 (AMD Zen 4, 2 threads), and
its float32 sums landed farther from float64 than Caffe's im2col + BLAS did (issue 26). Folding each
``stride x stride`` cell of the input into channels turns the same arithmetic into a stride-1
convolution on ``C * sh * sw`` channels with a kernel of ``ceil(k / s)`` cells, the weights
zero-padded to whole cells (the extra terms are exact zeros). Measured on conv1 at batch 10:
forward and input gradient together 65 -> 27 ms, and the error relative to range against float64
3.9e-7 -> 1.7e-7 forward and 5.8e-7 -> 1.7e-7 backward.

:func:`caffe_conv2d` picks the form; both give Caffe's convolution up to float rounding. The module
needs only torch: the python exporter copies its source into generated files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["caffe_conv2d", "folds_space_to_depth"]

#: Input channels per group up to which a strided convolution is folded (an image's 3 or 1).
FOLD_MAX_CHANNELS = 4


def folds_space_to_depth(
    channels_per_group: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> bool:
    """Whether :func:`caffe_conv2d` runs this convolution as a space-to-depth one: a stride above
    1, no dilation, a kernel at least as large as the stride (else the fold multiplies the work),
    and few input channels per group."""
    return (
        max(stride) > 1
        and dilation == (1, 1)
        and kernel[0] >= stride[0]
        and kernel[1] >= stride[1]
        and channels_per_group <= FOLD_MAX_CHANNELS
    )


def _exporting() -> bool:
    """Traced graphs (ONNX files, TorchScript) get the one standard convolution operator: the
    tracer cannot give the folded kernel a static shape. torch.export follows the fold."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _fold(t: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """(N, C, H, W) with H, W multiples of the strides -> (N, C * sh * sw, H / sh, W / sw), each
    input channel's ``sh x sw`` phases kept together (so groups stay contiguous)."""
    n, c, h, w = t.shape
    t = t.reshape(n, c, h // sh, sh, w // sw, sw).permute(0, 1, 3, 5, 2, 4)
    return t.reshape(n, c * sh * sw, h // sh, w // sw)


def caffe_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    pad: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """Caffe's convolution of ``x`` (N, C, H, W): ``F.conv2d``, or its space-to-depth form when
    :func:`folds_space_to_depth` says so (same values up to float rounding, same gradients)."""
    kh, kw = weight.shape[-2:]
    if _exporting() or not folds_space_to_depth(
        weight.shape[1], (kh, kw), tuple(stride), tuple(dilation)
    ):
        return F.conv2d(x, weight, bias, stride, pad, dilation, groups)
    sh, sw = stride
    ph, pw = pad
    out_h = (x.shape[-2] + 2 * ph - kh) // sh + 1
    out_w = (x.shape[-1] + 2 * pw - kw) // sw + 1
    cells_h, cells_w = -(-kh // sh), -(-kw // sw)
    # Rows and columns the output reads, in whole cells: pad with zeros or drop the unread rest.
    rows = (out_h - 1 + cells_h) * sh
    cols = (out_w - 1 + cells_w) * sw
    xp = F.pad(x, (pw, cols - x.shape[-1] - pw, ph, rows - x.shape[-2] - ph))
    wp = F.pad(weight, (0, cells_w * sw - kw, 0, cells_h * sh - kh))
    return F.conv2d(_fold(xp, sh, sw), _fold(wp, sh, sw), bias, 1, 0, 1, groups)
