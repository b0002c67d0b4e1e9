"""Issue 13 regressions for mfv: one-line errors, targets checked first, escaped pages, images read
the way Caffe read them. Each test names the numbered case of the issue it guards."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

import port
from mfv import _io
from mfv.cli import main
from mfv.errors import MfvError
from mfv.means import load_images, make_means
from mfv.objectives import channel, check_objective, parse_target, softmax_unit, unit
from mfv.report import write_visualize_html
from mfv.testing import torch_threads

BASE = ["--model", "caffe", "--no-parity-check", "--quiet"]


def _visualize_noise(prototxt, out, *args: str) -> list[str]:
    """``mfv visualize`` of ``prototxt`` from a noise init into ``out``, then ``args``."""
    return [
        "visualize",
        *BASE,
        "--prototxt",
        str(prototxt),
        "--init",
        "noise",
        "--out",
        str(out),
        *args,
    ]


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


# --- case 1: port errors through mfv ---------------------------------------------------------------


def test_bad_definitions_and_weights_are_one_line_errors(tiny_prototxt, tmp_path, capsys):
    garbage = tmp_path / "garbage.prototxt"
    garbage.write_text("garbage {\n")
    unknown = tmp_path / "unknown.prototxt"
    unknown.write_text(
        'input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
        'layer { name: "w" type: "Frobnicate" bottom: "data" top: "w" }\n'
    )
    netdef = port.load_prototxt(tiny_prototxt)
    weights = tmp_path / "w.caffemodel"
    port.write_caffemodel(weights, netdef, port.seed_weights(netdef, 0))
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(weights.read_bytes()[:300])
    for argv, word in (
        (["--prototxt", str(garbage)], "garbage"),
        (["--prototxt", str(unknown)], "Frobnicate"),
        (["--prototxt", str(tiny_prototxt), "--caffemodel", str(cut)], "truncated"),
    ):
        assert main(["layers", *BASE, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mfv: error: ") and err.count("\n") == 1 and word in err


# --- case 2: script injection --------------------------------------------------------------------------


def test_visualize_page_escapes_every_text(tmp_path):
    evil = "<script>alert(1)</script>"
    trace = {
        "model": {"name": evil},
        "objective": {"description": evil},
        "schedule": {"name": evil},
        "seed": evil,
        "status": f"crashed: KeyError: {evil}",
        "mode": evil,
        "fixes": [evil],
        "parity": {"status": evil, "message": evil, "report": evil},
        "facets": [
            {
                "index": 0,
                "init": evil,
                "cluster": evil,
                "status": evil,
                "message": evil,
                "octaves_done": 0,
                "octaves_total": evil,
                "seconds": 1.0,
                "final_activation": evil,
                "steps": [],
            }
        ],
    }
    write_visualize_html(tmp_path, trace)
    page = (tmp_path / "index.html").read_text()
    assert "<script" not in page and "&lt;script&gt;" in page


# --- case 3: targets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, word",
    [
        (["--layer", "fc", "--unit", "5"], "unit 5"),
        (["--layer", "fc", "--unit", "-1"], "unit -1"),
        (["--layer", "fc", "--unit", "10", "--softmax"], "unit 10"),
        (["--layer", "fc", "--unit", "-1", "--softmax"], "unit -1"),
        (["--layer", "conv1", "--unit", "-1"], "unit -1"),
        (["--layer", "conv1", "--unit", "1", "--x", "6"], "--x 6"),
        (["--layer", "conv1", "--unit", "1", "--y", "-1"], "--y -1"),
    ],
)
def test_targets_checked_before_anything_is_created(tiny_prototxt, tmp_path, capsys, args, word):
    out = tmp_path / "out"
    code = main(_visualize_noise(tiny_prototxt, out, *args))
    err = capsys.readouterr().err
    assert code == 2 and word in err and err.count("\n") == 1
    assert not out.exists()


def test_unknown_layer_is_a_usage_error_before_anything_is_created(tiny_prototxt, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(_visualize_noise(tiny_prototxt, out, "--layer", "nope", "--unit", "1"))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no layer 'nope'" in err and "Traceback" not in err
    assert not out.exists()


def test_check_objective_walks_composite_targets():
    shapes = {"fc": (5,), "conv": (4, 3, 3)}
    check_objective(
        unit("fc", 4) - 0.5 * softmax_unit("fc", 0) + channel("conv", 3, x=2, y=0), shapes
    )
    with pytest.raises(MfvError, match="unit 7"):
        check_objective(unit("fc", 1) + 2.0 * unit("fc", 7), shapes)
    with pytest.raises(MfvError, match="--x/--y"):
        parse_target("fc", 1, softmax=True, x=1, shape=(5,))


def test_library_run_refuses_a_bad_target_before_creating_its_folder(tmp_path):
    from mfv.models import MODEL_SPECS
    from mfv.octaves import load_schedule
    from mfv.testing import tiny_model
    from mfv.visualize import visualize

    sched = load_schedule(MODEL_SPECS["caffenet"].schedule_path)
    with pytest.raises(MfvError, match="unit 10"):
        visualize(
            tiny_model(),
            unit("8", 10),
            ["noise"],
            schedule=sched,
            out=tmp_path / "o",
            progress=False,
        )
    assert not (tmp_path / "o").exists()


# --- cases 8 and 9: images ---------------------------------------------------------------------------


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(values).save(p)
    got = _io.load_rgb(p)
    assert got.shape == (1, 4, 3)
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(got[..., 0], expected) and np.array_equal(got[..., 2], expected)


def test_caffe_conversion_rules(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "l.png")
    assert np.array_equal(_io.load_rgb(tmp_path / "l.png"), np.repeat(grey[:, :, None], 3, axis=2))
    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: Caffe drops alpha, it does not composite
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(_io.load_rgb(tmp_path / "a.png"), rgba[..., :3])
    la = Image.fromarray(grey).convert("LA")
    la.save(tmp_path / "la.png")
    assert np.array_equal(_io.load_rgb(tmp_path / "la.png"), np.repeat(grey[:, :, None], 3, axis=2))
    cmyk = Image.fromarray(rgba[..., :3]).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", quality=100)
    got = _io.load_rgb(tmp_path / "c.jpg")
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
        assert np.array_equal(got, np.asarray(im.convert("RGB")))
    with pytest.raises(_io.ImageReadError, match="greyscale"):
        _io.load_rgb(tmp_path / "l.png", keep_grey=False)


def test_means_keeps_grey_by_default_and_skips_unreadable_files(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / "grey.png")
    Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(folder / "rgb.png")
    (folder / "broken.png").write_bytes(b"not a png")
    paths = sorted(folder.iterdir())
    for keep in (True, False):  # the grey-keeping mode used to crash on the broken file
        kept, stack, skipped = load_images(paths, (4, 4), keep_grey=keep)
        assert [p.name for p in kept] == (["grey.png", "rgb.png"] if keep else ["rgb.png"])
        assert any("broken.png" in s for s in skipped)
    assert make_means.__kwdefaults__["keep_grey"] is True


def test_to_uint8_of_a_large_image_needs_little_memory():
    image = np.random.default_rng(0).uniform(-20, 280, (1500, 1500, 3)).astype(np.float32)
    tracemalloc.start()
    try:
        out = _io.to_uint8(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(out, np.clip(np.rint(image.astype(np.float64)), 0, 255).astype(np.uint8))
    # Three float64 copies were 3 x 54 MB; now the uint8 result (6.75 MB) and one block (8 MB).
    assert peak < out.nbytes + 20e6, peak
    u8 = out
    assert _io.to_uint8(u8) is u8
    assert np.array_equal(
        _io.to_uint8(np.array([-3.2, 300.7, 255.9, 12.5]), wrap=True), [253, 44, 255, 12]
    )
