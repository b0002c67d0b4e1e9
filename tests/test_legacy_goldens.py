"""The committed goldens: they match their manifests, and Caffe's numbers obey the layer rules.

No Caffe needed: every check recomputes one layer in float64 numpy from the golden's own input
blob and compares with Caffe's output blob (forward) or its diff (backward, pycaffe's meaning).
"""

from __future__ import annotations

import numpy as np
import pytest

from legacy_caffe import goldens
from legacy_caffe.manifest import rel_error, verify_arrays
from legacy_caffe.preprocess import make_batch
from port.blobkeys import data_key, diff_key

COMMITTED = (
    [g for g in goldens.list_goldens() if g.committed] if goldens.GOLDEN_DIR.exists() else []
)


def _ceil_pool_windows(h: int, k: int, s: int):
    out = int(np.ceil((h - k) / s)) + 1
    return [(i * s, min(i * s + k, h)) for i in range(out)]


def _maxpool(x: np.ndarray, k: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Caffe MAX pooling (ceil rounding, window clipped to the image, first maximum wins),
    returning the output and the flat index of each output's argmax in the input plane."""
    n, c, h, w = x.shape
    rows, cols = _ceil_pool_windows(h, k, s), _ceil_pool_windows(w, k, s)
    out = np.empty((n, c, len(rows), len(cols)), dtype=np.float64)
    arg = np.empty(out.shape, dtype=np.int64)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            win = x[:, :, r0:r1, c0:c1].reshape(n, c, -1)
            a = win.argmax(axis=2)
            out[:, :, i, j] = np.take_along_axis(win, a[..., None], 2)[..., 0]
            ww = c1 - c0
            arg[:, :, i, j] = (r0 + a // ww) * w + (c0 + a % ww)
    return out, arg


def _lrn(x: np.ndarray, n: int = 5, alpha: float = 1e-4, beta: float = 0.75) -> np.ndarray:
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (n // 2, n // 2), (0, 0), (0, 0)))
    window = sum(sq[:, i : i + x.shape[1]] for i in range(n))
    return x * (1.0 + alpha / n * window) ** -beta


@pytest.fixture(scope="module", params=COMMITTED, ids=lambda g: f"{g.model}-{g.blas}-{g.input}")
def golden(request):
    g = request.param
    return g, goldens.load_golden(g.model, g.blas, g.input)  # verifies every sha256


def test_caffenet_goldens_are_committed_for_both_blas():
    have = {(g.model, g.blas) for g in COMMITTED}
    assert {("caffenet", "atlas"), ("caffenet", "openblas")} <= have


def test_manifest_records_environment_spread_and_determinism():
    man = goldens.load_manifest("caffenet")
    assert man["caffe"]["version"] == "1.0.0"
    assert man["weights"]["generator"] == "port seed-weights"
    for blas in ("atlas", "openblas"):
        assert blas in man["blas"][blas]["blas_loaded"][0]
        assert man["determinism"][blas]["repeats"] >= 1
    spread = man["spread_atlas_vs_openblas"]["per_input"]["astronaut"]
    arrays = man["sets"]["openblas/astronaut"]["arrays"]
    assert set(spread) == {k for k in arrays if not k.startswith("input/")}
    # Two real builds agree to ~1e-6 of each forward blob's range (caffe-semantics.md).
    for key, value in spread.items():
        if key.startswith("data/"):
            assert value < 1e-5, (key, value)


def test_input_is_the_documented_photo_preprocessed(golden):
    g, arrays = golden
    man = goldens.load_manifest(g.model)
    info = man["inputs"][g.input]
    photos = [p.rsplit(".", 1)[1] for p in info["photos"]]
    x = arrays["input/data"]
    assert list(x.shape) == info["shape"]
    np.testing.assert_allclose(x, make_batch(photos, x.shape[2:]), atol=1e-3)
    np.testing.assert_array_equal(arrays["data/data"], x)


def test_committed_files_match_manifest(golden):
    g, arrays = golden
    entry = goldens.load_manifest(g.model)["sets"][f"{g.blas}/{g.input}"]
    assert verify_arrays(arrays, entry["arrays"]) == []
    assert (
        entry["checks"]["downstream_diffs_zero"] and entry["checks"]["diffs_zero_before_backward"]
    )
    assert not any("_split_" in k for k in arrays)


def test_one_hot_seed_and_downstream_zero(golden):
    g, arrays = golden
    man = goldens.load_manifest(g.model)
    blob, unit = man["backward"]["blob"], man["backward"]["unit"]
    seed = arrays[diff_key(blob)].reshape(len(arrays["input/data"]), -1)
    want = np.zeros_like(seed)
    want[:, unit] = 1.0
    np.testing.assert_array_equal(seed, want)
    for name in man["sets"][f"{g.blas}/{g.input}"]["checks"]["downstream_blobs"]:
        assert not np.any(arrays[diff_key(name)]), name


def test_caffenet_forward_layers_recomputed(golden):
    g, a = golden
    if g.model != "caffenet":
        pytest.skip("layer recomputation written for CaffeNet")
    f64 = {k: v.astype(np.float64) for k, v in a.items()}
    # In-place ReLU: conv blobs hold post-ReLU values.
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        assert f64[data_key(name)].min() >= 0.0, name
    for src, dst in (("conv1", "pool1"), ("conv2", "pool2"), ("conv5", "pool5")):
        pooled, _ = _maxpool(f64[data_key(src)], 3, 2)
        assert rel_error(pooled, f64[data_key(dst)]) == 0.0, dst  # max is exact
    # Caffe's LRN keeps a float32 running sum of squares across channels and calls powf: ~1e-6 of
    # the range off float64 (caffe-semantics.md measures 1.2e-6 for ATLAS vs float64).
    assert rel_error(_lrn(f64["data/pool1"]), f64["data/norm1"]) < 5e-6
    assert rel_error(_lrn(f64["data/pool2"]), f64["data/norm2"]) < 5e-6
    logits = f64["data/fc8"]
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    assert rel_error(soft, f64["data/prob"]) < 1e-5


def test_caffenet_backward_meaning_recomputed(golden):
    """diff/conv5 is the gradient w.r.t. conv5 *before* its in-place ReLU: pool5's diff routed
    to each window's maximum, then masked where the ReLU output is 0."""
    g, a = golden
    if g.model != "caffenet":
        pytest.skip("layer recomputation written for CaffeNet")
    conv5, dpool5 = a["data/conv5"].astype(np.float64), a["diff/pool5"].astype(np.float64)
    _, arg = _maxpool(conv5, 3, 2)
    n, c, h, w = conv5.shape
    routed = np.zeros((n, c, h * w))
    for i in range(n):
        for j in range(c):
            np.add.at(routed[i, j], arg[i, j].ravel(), dpool5[i, j].ravel())
    want = routed.reshape(conv5.shape) * (conv5 > 0)
    assert rel_error(a["diff/conv5"], want) < 1e-6
    # LRN backward leaves norm2's diff in pool2's window shape; pool2's diff is nonzero only at
    # the maxima conv2 routed to, so conv2's diff is zero wherever no window picked the element.
    _, arg2 = _maxpool(a["data/conv2"].astype(np.float64), 3, 2)
    picked = np.zeros(a["data/conv2"].size, dtype=bool)
    n2, c2, h2, w2 = a["data/conv2"].shape
    offsets = (np.arange(n2 * c2) * h2 * w2)[:, None]
    picked[(arg2.reshape(n2 * c2, -1) + offsets).ravel()] = True
    assert not np.any(a["diff/conv2"].ravel()[~picked])


def test_caffenet_fc_layers_against_seeded_weights(golden):
    """fc8 = fc7 W8^T + b8, and diff/fc7 = W8[unit] masked by fc7's ReLU, with the weights the
    goldens were made with. golden_weights re-seeds them with port (~5 s, 244 MB into cache/) and
    checks the manifest's sha256, so this also fails if port's seeding drifts from the goldens."""
    g, a = golden
    if g.model != "caffenet":
        pytest.skip("layer recomputation written for CaffeNet")
    from port import read_caffemodel

    path = goldens.golden_weights("caffenet")

    w8, b8 = (x.astype(np.float64) for x in read_caffemodel(path)["fc8"])
    fc7 = a["data/fc7"].astype(np.float64)
    assert rel_error(fc7 @ w8.T + b8, a["data/fc8"]) < 1e-5
    unit = goldens.load_manifest("caffenet")["backward"]["unit"]
    want = np.broadcast_to(w8[unit], fc7.shape) * (fc7 > 0)
    assert rel_error(a["diff/fc7"], want) < 1e-6
