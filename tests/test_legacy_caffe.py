"""Tests that run real Caffe (``pytest -m caffe``) through the engine ``LEGACY_CAFFE_ENGINE`` picks
(auto: Podman where it works, else the debootstrap root as root); its environment must be built:
``python -m legacy_caffe build``."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from legacy_caffe import engines, goldens, rootfs
from legacy_caffe.manifest import load_npz, rel_error
from legacy_caffe.preprocess import caffe_preprocess, load_photo
from port.blobkeys import data_key, diff_key

pytestmark = pytest.mark.caffe


@pytest.fixture(scope="module", autouse=True)
def _need_engine():
    engine = engines.current()
    if not engine.is_built():
        pytest.fail(
            f"engine {engine.name} has no Caffe environment: python -m legacy_caffe build "
            f"--engine {engine.name}"
        )


@pytest.fixture
def work():
    rootfs.exchange_dir().mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="test-", dir=rootfs.exchange_dir()))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _inside(path: Path) -> str:
    return rootfs.host_to_inside(path)


@pytest.mark.parametrize("blas", rootfs.BLAS_CHOICES)
def test_doctor_sees_the_chosen_blas(blas):
    proc = engines.run_inside(
        ["python3", f"{rootfs.INSIDE_MOUNT}/doctor.py"], blas=blas, capture=True
    )
    env = json.loads(proc.stdout)
    assert env["caffe"] == "1.0.0"
    assert env["python"].startswith("3.9")
    assert env["blas"] == blas
    assert all(v for k, v in env["packages"].items() if k != "python3-skimage")


TINY = """\
name: "tiny"
input: "data"
input_shape { dim: 2 dim: 3 dim: 9 dim: 9 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 5 } }
layer { name: "fc2" type: "InnerProduct" bottom: "pool1" top: "fc2"
  inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def _reference(x, w1, b1, wf, bf, unit):
    """float64 forward/backward of TINY with pycaffe's blob meaning, written from the layer rules."""
    n = x.shape[0]
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))  # n,c,7,7,3,3
    pre = np.einsum("ncijkl,ockl->noij", win, w1) + b1[None, :, None, None]
    post = np.maximum(pre, 0)
    # 7x7 with kernel 2 stride 2: Caffe rounds up to 4x4, the last window clipped to one row/col.
    pool = np.empty((n, 4, 4, 4))
    arg = np.empty((n, 4, 4, 4, 2), dtype=int)
    for i in range(4):
        for j in range(4):
            blk = post[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            flat = blk.reshape(n, 4, -1)
            a = flat.argmax(axis=2)
            pool[:, :, i, j] = flat.max(axis=2)
            arg[:, :, i, j, 0] = 2 * i + a // blk.shape[3]
            arg[:, :, i, j, 1] = 2 * j + a % blk.shape[3]
    fc = pool.reshape(n, -1) @ wf.T + bf
    dfc = np.zeros_like(fc)
    dfc[:, unit] = 1.0
    dpool = (dfc @ wf).reshape(pool.shape)
    dpost = np.zeros_like(post)
    for s in range(n):
        for o in range(4):
            for i in range(4):
                for j in range(4):
                    r, c = arg[s, o, i, j]
                    dpost[s, o, r, c] += dpool[s, o, i, j]
    dpre = dpost * (pre > 0)  # what diff/conv1 holds: gradient before the in-place ReLU
    ddata = np.zeros_like(x)
    for k in range(3):
        for m in range(3):
            ddata[:, :, k : k + 7, m : m + 7] += np.einsum("noij,oc->ncij", dpre, w1[:, :, k, m])
    return {"conv1": (post, dpre), "pool1": (pool, dpool), "fc": (fc, dfc), "data": (x, ddata)}


@pytest.mark.parametrize("blas", rootfs.BLAS_CHOICES)
def test_dump_blobs_matches_a_float64_reference(work, blas):
    (work / "tiny.prototxt").write_text(TINY)
    weights, params = work / "tiny.caffemodel", work / "params.npz"
    engines.run_inside(
        ["python3", f"{rootfs.INSIDE_MOUNT}/seed_fallback.py", "--prototxt",
         _inside(work / "tiny.prototxt"), "--seed", "3", "--out", _inside(weights)],
        blas=blas,
    )  # fmt: skip
    # The weights as Caffe itself holds them after loading the file.
    engines.run_inside(
        ["python3", "-c",
         "import sys, numpy, caffe; n = caffe.Net(sys.argv[1], caffe.TEST, weights=sys.argv[2]); "
         "numpy.savez(sys.argv[3], **{k + '_' + str(i): b.data for k, v in n.params.items() "
         "for i, b in enumerate(v)})",
         _inside(work / "tiny.prototxt"), _inside(weights), _inside(params)],
        blas=blas,
    )  # fmt: skip
    p = {k: v.astype(np.float64) for k, v in np.load(params).items()}
    x = np.random.default_rng(5).standard_normal((2, 3, 9, 9)).astype(np.float32)
    np.save(work / "x.npy", x)
    out = work / "dump.npz"

    def dump(blob: str) -> tuple[dict[str, np.ndarray], dict]:
        """dump_blobs.py inside, backward from unit 2 of ``blob``: its arrays and meta."""
        engines.run_inside(
            ["python3", f"{rootfs.INSIDE_MOUNT}/dump_blobs.py", "--prototxt",
             _inside(work / "tiny.prototxt"), "--caffemodel", _inside(weights),
             "--input", _inside(work / "x.npy"), "--blob", blob, "--unit", "2",
             "--out", _inside(out), "--meta", _inside(work / "meta.json")],
            blas=blas,
        )  # fmt: skip
        return load_npz(out), json.loads((work / "meta.json").read_text())

    got, meta = dump("auto")
    assert meta["backward_blob"] == "fc2"  # 'auto' takes the last InnerProduct
    assert meta["force_backward_added"] is True
    assert meta["auto_split_blobs_excluded"]  # pool1 feeds two layers: Caffe split it
    assert not any("split" in k for k in got)
    assert meta["environment"]["blas"] == blas

    # Now seed fc (an earlier blob): fc2 and prob are downstream and must keep zero diffs.
    got, meta = dump("fc")
    assert meta["backward_start_layer"] == "fc"
    assert sorted(meta["checks"]["downstream_blobs"]) == ["fc2", "prob"]
    assert not np.any(got["diff/fc2"]) and not np.any(got["diff/prob"])
    np.testing.assert_array_equal(got["input/data"], x)

    ref = _reference(x.astype(np.float64), p["conv1_0"], p["conv1_1"], p["fc_0"], p["fc_1"], 2)
    for blob, (data, diff) in ref.items():
        assert rel_error(got[data_key(blob)], data) < 1e-5, data_key(blob)
        assert rel_error(got[diff_key(blob)], diff) < 1e-5, diff_key(blob)


def test_host_preprocessing_matches_caffe_io_transformer(work):
    """Our host-side preprocessing against caffe.io itself (Debian's scikit-image 0.18).

    caffe.io.resize_image calls skimage's resize without anti_aliasing; scikit-image >= 0.15
    turned that on by default when downscaling, the scikit-image of Caffe's time had none. The
    goldens (and port.preprocess) follow Caffe's time, so the check pins it off inside as well;
    left on, the two differ by up to ~11 of 255 at edges.
    """
    img = load_photo("chelsea")
    np.save(work / "rgb.npy", img)
    script = (
        "import sys, functools, numpy as np, caffe, caffe.io, skimage.transform\n"
        "caffe.io.resize = functools.partial(skimage.transform.resize, anti_aliasing=False)\n"
        "img = np.load(sys.argv[1])\n"
        "t = caffe.io.Transformer({'data': (1, 3, 227, 227)})\n"
        "t.set_transpose('data', (2, 0, 1)); t.set_channel_swap('data', (2, 1, 0))\n"
        "t.set_raw_scale('data', 255); t.set_mean('data', np.array([104.0, 117.0, 123.0]))\n"
        "np.save(sys.argv[2], t.preprocess('data', caffe.io.resize_image(img, (227, 227))))\n"
    )
    engines.run_inside(
        ["python3", "-c", script, _inside(work / "rgb.npy"), _inside(work / "caffe.npy")],
        blas="openblas",
    )
    theirs = np.load(work / "caffe.npy")
    ours = caffe_preprocess(img, (227, 227))
    assert theirs.shape == ours.shape == (3, 227, 227)
    # scikit-image 0.18 and ours round the interpolation differently: measured max difference
    # 2.1e-3 on a 255 range (0.1% of the elements over 1e-3).
    np.testing.assert_allclose(ours, theirs, atol=5e-3)


@pytest.mark.slow
def test_committed_caffenet_goldens_regenerate():
    assert goldens.check_model("caffenet") == []
