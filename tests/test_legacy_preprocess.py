"""Host-side preprocessing of golden inputs, against an independent numpy bilinear resize."""

from __future__ import annotations

import numpy as np
import pytest

from legacy_caffe.preprocess import (
    BGR_MEAN,
    InputSpec,
    caffe_preprocess,
    load_photo,
    make_batch,
)
from port.preprocess import resize_image


def _bilinear_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Separable bilinear with pixel-centre alignment, float64 (what skimage order 1 computes
    when downscaling without anti-aliasing; no sample falls outside the image then)."""
    img = img.astype(np.float64)
    in_h, in_w = img.shape[:2]

    def axis_weights(n_in, n_out):
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
        hi = np.clip(lo + 1, 0, n_in - 1)
        frac = pos - np.floor(pos)
        return lo, hi, frac

    r0, r1, fr = axis_weights(in_h, out_h)
    rows = img[r0] * (1 - fr)[:, None, None] + img[r1] * fr[:, None, None]
    c0, c1, fc = axis_weights(in_w, out_w)
    return rows[:, c0] * (1 - fc)[None, :, None] + rows[:, c1] * fc[None, :, None]


def test_resize_matches_independent_bilinear_when_downscaling():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.1, 0.9, (53, 71, 3)).astype(np.float32)
    got = resize_image(img, (23, 31))
    want = _bilinear_reference(img, 23, 31)
    assert got.dtype == np.float32 and got.shape == (23, 31, 3)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_preprocess_order_resize_chw_bgr_scale_mean():
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (40, 30, 3)).astype(np.float32)
    got = caffe_preprocess(img, (20, 15))
    resized = _bilinear_reference(img, 20, 15)
    want = resized[:, :, ::-1].transpose(2, 0, 1) * 255.0 - np.array(BGR_MEAN)[:, None, None]
    assert got.shape == (3, 20, 15) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-3)  # x255: float32 resize error ~1e-4


def test_pure_red_photo_lands_in_the_last_channel():
    img = np.zeros((10, 10, 3), dtype=np.float32)
    img[..., 0] = 1.0
    x = caffe_preprocess(img, (10, 10))
    np.testing.assert_allclose(x[0], -BGR_MEAN[0])
    np.testing.assert_allclose(x[1], -BGR_MEAN[1])
    np.testing.assert_allclose(x[2], 255.0 - BGR_MEAN[2])


def test_constant_image_survives_the_min_max_stretch():
    img = np.full((12, 9, 3), 0.25, dtype=np.float32)
    np.testing.assert_allclose(resize_image(img, (5, 4)), 0.25)


def test_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        caffe_preprocess(np.zeros((5, 5), np.float32), (3, 3))
    with pytest.raises(ValueError, match="unknown photo"):
        load_photo("not_a_photo")


def test_skimage_photos_make_a_batch():
    spec = InputSpec("photos3", ("astronaut", "chelsea", "coffee"))
    x = make_batch(spec.photos, (227, 227))
    assert x.shape == (3, 3, 227, 227) and x.dtype == np.float32
    # Each sample is its own photo: distinct, and within the BGR-minus-mean range.
    assert not np.array_equal(x[0], x[1]) and not np.array_equal(x[1], x[2])
    lo = -np.array(BGR_MEAN)[:, None, None]
    assert np.all(x >= lo - 1e-3) and np.all(x <= lo + 255 + 1e-3)
    assert spec.describe()["photos"][1] == "skimage.data.chelsea"


def test_user_image_files_go_through_the_one_reader(tmp_path):
    """A grey+alpha file: the reader port.preprocess had gave it two channels and caffe_preprocess
    refused it; read through port.images it is grey on three channels, as Caffe's loader made it."""
    from PIL import Image

    from legacy_caffe.goldens import user_inputs
    from port.images import load_float

    grey = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    Image.merge("LA", [Image.fromarray(grey), Image.fromarray(255 - grey)]).save(
        tmp_path / "la.png"
    )
    img = load_float(tmp_path / "la.png")
    np.testing.assert_array_equal(
        img, np.repeat((grey / 255.0).astype(np.float32)[:, :, None], 3, 2)
    )
    (batch,) = user_inputs([str(tmp_path / "la.png")], (5, 6)).values()
    assert batch.shape == (1, 3, 5, 6)
    np.testing.assert_array_equal(batch[0], caffe_preprocess(img, (5, 6)))
