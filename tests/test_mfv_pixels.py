"""Pixel conventions: round trips, channel order, mean, std, and gradients in pixel space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mfv.pixels import CAFFE_VGG16, CAFFENET, TORCHVISION, PixelConvention

CONVENTIONS = [CAFFENET, CAFFE_VGG16, TORCHVISION]


@settings(max_examples=30, deadline=None)
@given(
    img=arrays(np.float64, (5, 4, 3), elements=st.floats(0, 255)), conv=st.sampled_from(CONVENTIONS)
)
def test_round_trip(img, conv):
    back = conv.deprocess(conv.preprocess(img))
    assert back.shape == img.shape
    np.testing.assert_allclose(back, img, atol=1e-3)  # float32 in the middle, as pycaffe


def test_caffenet_preprocess_is_bgr_minus_mean():
    img = np.zeros((2, 2, 3))
    img[..., 0], img[..., 1], img[..., 2] = 200.0, 100.0, 50.0  # R, G, B
    x = CAFFENET.preprocess(img)
    np.testing.assert_array_equal(x[:, 0, 0], [50 - 104, 100 - 117, 200 - 123])
    np.testing.assert_array_equal(CAFFENET.mean_pixels, [123, 117, 104])  # RGB order


def test_torchvision_scale_mean_std():
    img = np.full((1, 1, 3), 255.0)
    x = TORCHVISION.preprocess(img)[:, 0, 0]
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    np.testing.assert_allclose(TORCHVISION.mean_pixels, 255 * np.array([0.485, 0.456, 0.406]))


def test_gradient_honours_std():
    # d(network input)/d(pixel) = scale / std per channel: the step in pixel space must see it.
    p = torch.full((1, 3, 2, 2), 100.0, dtype=torch.float64, requires_grad=True)
    TORCHVISION.to_network(p).sum().backward()
    want = (1 / 255) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(p.grad[0, :, 0, 0].numpy(), want, rtol=1e-12)
    q = torch.zeros((1, 3, 2, 2), requires_grad=True)
    CAFFENET.to_network(q).sum().backward()
    assert torch.equal(q.grad, torch.ones_like(q))


def test_to_network_inverse_batched():
    x = torch.rand(3, 3, 4, 5, dtype=torch.float64) * 255
    for c in CONVENTIONS:
        torch.testing.assert_close(c.from_network(c.to_network(x)), x)


def test_bgr_flip_on_network_side():
    x = torch.zeros(1, 3, 1, 1)
    x[0, 0] = 255.0  # pure red
    y = CAFFENET.to_network(x)
    assert y[0, 2, 0, 0] == 255 - 123 and y[0, 0, 0, 0] == -104


def test_validation():
    with pytest.raises(ValueError):
        PixelConvention("RBG", (0, 0, 0), (1, 1, 1), (0, 255), (8, 8))
    with pytest.raises(ValueError):
        PixelConvention("RGB", (0, 0, 0), (1, 0, 1), (0, 255), (8, 8))
    with pytest.raises(ValueError):
        CAFFENET.preprocess(np.zeros((4, 4)))
