"""port.images: the one Caffe-rule image reader (float and uint8 views agree), bounded reads, and the
goldens' inputs reproduced byte for byte from image files."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mfv.cli import main as mfv_main
from port.images import (
    MAX_PIXELS_ENV,
    ImageReadError,
    load_float,
    load_rgb,
    save_image,
)
from port.preprocess import load_image

ROOT = Path(__file__).resolve().parents[1]


def _images(tmp_path: Path) -> dict[str, np.ndarray]:
    """One file per mode Caffe's loader met, and the grey or RGB values it must come back as."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    alpha = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    grey3 = np.repeat(grey[:, :, None], 3, axis=2)
    files = {
        "rgb.png": (Image.fromarray(rgb), rgb),
        "l.png": (Image.fromarray(grey), grey3),
        "rgba.png": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), rgb),
        "la.png": (Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)]), grey3),
        "one.png": (Image.fromarray(grey > 127), np.repeat((grey > 127)[:, :, None] * 255, 3, 2)),
    }
    out = {}
    for name, (im, want) in files.items():
        im.save(tmp_path / name)
        out[name] = want.astype(np.uint8)
    return out


def test_grey_alpha_is_grey_replicated_and_alpha_dropped_in_both_views(tmp_path):
    # The reader port.preprocess had (today's skimage.io.imread) gave grey+alpha two channels;
    # Caffe's scikit-image read it through PIL as RGBA, and load_image dropped the alpha.
    for name, want in _images(tmp_path).items():
        u8 = load_rgb(tmp_path / name)
        f = load_float(tmp_path / name)
        assert np.array_equal(u8, want), name
        assert f.dtype == np.float32 and f.shape == want.shape, name
        np.testing.assert_array_equal(f, (want / 255.0).astype(np.float32), err_msg=name)
        np.testing.assert_array_equal(load_image(tmp_path / name), f, err_msg=name)


def test_uint8_view_is_the_float_view_times_255_rounded(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    Image.fromarray(rng.integers(0, 65536, (8, 8)).astype(np.uint16)).save(tmp_path / "i16.png")
    for name in ("p.png", "c.jpg", "i16.png"):
        f = load_float(tmp_path / name).astype(np.float64)
        assert np.array_equal(np.rint(f * 255).astype(np.uint8), load_rgb(tmp_path / name)), name


def test_color_false_gives_one_grey_channel(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "l.png")
    got = load_float(tmp_path / "l.png", color=False)
    assert got.shape == (3, 4, 1)
    np.testing.assert_array_equal(got[..., 0], (grey / 255.0).astype(np.float32))
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 1] = 255  # pure green: rgb2gray's weight of G is 0.7154
    Image.fromarray(rgb).save(tmp_path / "g.png")
    np.testing.assert_allclose(load_float(tmp_path / "g.png", color=False), 0.7154, atol=1e-6)


MANIFESTS = sorted(
    p.parent.name
    for p in (ROOT / "golden").glob("*/manifest.json")
    if "inputs" in json.loads(p.read_text())
)


@pytest.mark.parametrize("model", MANIFESTS)
def test_goldens_inputs_reproduced_byte_for_byte_from_png_files(tmp_path, model):
    import skimage.data

    from legacy_caffe.preprocess import caffe_preprocess

    inputs = json.loads((ROOT / "golden" / model / "manifest.json").read_text())["inputs"]
    for name, spec in inputs.items():
        batch = []
        for photo in spec["photos"]:
            p = tmp_path / f"{photo.split('.')[-1]}.png"
            Image.fromarray(getattr(skimage.data, photo.split(".")[-1])()).save(p)
            batch.append(caffe_preprocess(load_image(p), tuple(spec["shape"][2:])))
        x = np.stack(batch)
        # The photo files, read by port.images, give the arrays Caffe's goldens were made from.
        assert list(x.shape) == spec["shape"]
        assert hashlib.sha256(x.tobytes()).hexdigest() == spec["sha256"], name


def test_every_golden_with_inputs_is_checked():
    assert {"alexnet", "caffenet", "googlenet", "vgg16"} <= set(MANIFESTS)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares ``width`` x ``height`` grey pixels and whose data is a stub."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_pixel_cap_refuses_from_the_header_and_names_how_to_raise_it(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    _png_header_only(big, 12000, 12000)
    with pytest.raises(
        ImageReadError, match=rf"144,000,000 pixels is over the cap .*{MAX_PIXELS_ENV}"
    ):
        load_rgb(big)
    with pytest.raises(ImageReadError, match="over the cap"):
        load_float(big)
    # Raised above the image, the cap lets the header through and the stub data fails to decode:
    # the cap, not the decoder, was what refused it before.
    monkeypatch.setenv(MAX_PIXELS_ENV, str(200_000_000))
    with pytest.raises(ImageReadError, match="unreadable"):
        load_rgb(big)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(Exception, match=MAX_PIXELS_ENV):
        load_rgb(big)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)
    assert load_rgb(small, max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(ImageReadError, match="over the cap of 99 pixels"):
        load_rgb(small, max_pixels=99)


def test_devices_fifos_and_folders_are_refused(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(ImageReadError, match="not a regular file"):
            load_rgb(path)
        with pytest.raises(ImageReadError, match="not a regular file"):
            load_float(path)
    with pytest.raises(ImageReadError, match="cannot read"):
        load_rgb(tmp_path / "missing.png")


def test_mfv_visualize_refuses_a_huge_init_with_one_line(tmp_path, tiny_prototxt, capsys):
    big = tmp_path / "big.png"
    _png_header_only(big, 12000, 12000)
    argv = [
        "visualize",
        "--model",
        "caffe",
        "--no-parity-check",
        "--quiet",
        "--layer",
        "fc",
        "--unit",
        "0",
    ]
    argv += ["--prototxt", str(tiny_prototxt), "--init", str(big), "--out", str(tmp_path / "o")]
    assert mfv_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "over the cap" in err[0] and MAX_PIXELS_ENV in err[0]
    assert not (tmp_path / "o").exists()


def test_save_then_load_round_trips_png(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    save_image(tmp_path / "x.png", rgb, text={"k": "v"})
    assert np.array_equal(load_rgb(tmp_path / "x.png"), rgb)
    with Image.open(tmp_path / "x.png") as im:
        assert im.text["k"] == "v"
