"""port.preprocess: caffe.io.Transformer's order of operations, mean files, and the inverse."""

from __future__ import annotations

import numpy as np

from port import schema
from port.preprocess import Transformer, load_mean, resize_image


def test_transformer_order_and_inverse():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (8, 6, 3)).astype(np.float32)
    mean = np.array([104.0, 117.0, 123.0], np.float32)
    t = Transformer((3, 8, 6), channel_swap=(2, 1, 0), raw_scale=255.0, mean=mean, input_scale=0.5)
    x = t.preprocess(img)
    want = (img[:, :, ::-1].transpose(2, 0, 1) * 255.0 - mean[:, None, None]) * 0.5
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(t.deprocess(x), img, atol=1e-5)


def test_full_size_mean_is_resized_not_cropped(tmp_path):
    # A mean image whose left half is 0 and right half 100: a crop of the middle would be flat at
    # one value, a resize keeps both halves.
    mean = np.zeros((3, 16, 16), np.float32)
    mean[:, :, 8:] = 100
    blob = schema.BlobProto(num=1, channels=3, height=16, width=16)
    blob.data.extend(mean.ravel().tolist())
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    np.testing.assert_array_equal(load_mean(path), mean)
    t = Transformer((3, 4, 4), channel_swap=None, raw_scale=None, mean=load_mean(path))
    x = t.preprocess(np.zeros((4, 4, 3), np.float32))
    np.testing.assert_allclose(-x[0, :, 0], 0, atol=1e-4)
    np.testing.assert_allclose(-x[0, :, -1], 100, atol=1e-4)


def test_resize_of_a_flat_image_keeps_its_value():
    np.testing.assert_allclose(resize_image(np.full((5, 7, 3), 0.25, np.float32), (3, 2)), 0.25)
