"""The original MFV optimisation loop on pycaffe, our own code from ``shared/spec/original-mfv.md``.

Runs inside the Debian 11 root (Python 3.9, numpy 1.19, scipy 1.6, scikit-image 0.18, pycaffe);
imports nothing of the project. Reproduces the published script's arithmetic, quirks included:

* schedule: ``start + ((end - start) * i) / iter_n`` with Python 2 division (``//`` when both ends are
  ints, so octave 1 stays at step 1), TV weight ``start - (start - end * i) / iter_n`` as written;
* random stream: the global legacy NumPy generator seeded once per run, a 227x227x3 N(175, 8) noise
  image drawn before the mean image is loaded, crop offsets drawn x (rows) then y (columns) from
  N((size - 227) / 2., (size - 227) * window) with ``size=1``, element taken, clipped, ``int()``;
* state: the network input (3xHxW BGR minus mean, float32), zoomed with ``scipy.ndimage.zoom`` (cubic,
  mode 'constant', so the new border is the mean colour), crops written back after each step;
* step: forward to the target, one-hot diff, backward, margin mask, ``x += step / mean|g| * g`` in
  NumPy 1 casting, clip to [-mean, 255 - mean], deprocess to float64 RGB, TV-Bregman, preprocess back;
* output: the deprocessed whole image after every octave (float32) and its ``uint8()`` wraparound.

Denoiser: scikit-image 0.18's ``denoise_tv_bregman(image, weight, max_iter=100, eps=1e-3,
isotropic=True, multichannel=False)``. Same call and semantics as 0.13 (float64 input stays float64;
0.13's ``img_as_float`` made float64 too; ``multichannel=False`` on HxWx3 = every channel smoothed
with one joint stopping test, which is what 0.13 did), except the border: since 0.15 the bottom and
right border replicate instead of reflecting. We keep 0.18's border (documented in the trace); the
port's ``--denoiser skimage`` uses the same border.

Usage (inside the root)::

    python3 mfv_original.py --prototxt P --caffemodel W --init mean_0.npy [--init ...] \
        --index 0 [--index ...] --unit 945 --seed 1 --out /exchange/.../result.npz --trace T.json
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import caffe_env  # noqa: E402

#: The published schedule for mean-image initialisation, numbers exactly as written (int vs float
#: matters for Python 2 division).
OCTAVES = [
    {
        "layer": "fc8",
        "iter_n": 190,
        "start_sigma": 2.5,
        "end_sigma": 0.78,
        "start_step_size": 1,
        "end_step_size": 2,
        "start_denoise_weight": 0.4,
        "end_denoise_weight": 0.4,
        "margin": 0,
        "window": 0.3,
        "scale": None,
    },
    {
        "layer": "fc8",
        "iter_n": 150,
        "start_step_size": 1.0,
        "end_step_size": 1.0,
        "start_denoise_weight": 0.01,
        "end_denoise_weight": 2,
        "margin": 0,
        "window": 0.3,
        "scale": 1.2,
    },
    {
        "layer": "fc8",
        "iter_n": 20,
        "start_step_size": 2.0,
        "end_step_size": 2.0,
        "start_denoise_weight": 0.1,
        "end_denoise_weight": 2,
        "margin": 50,
        "window": 0.2,
        "scale": 1.0,
    },
    {
        "layer": "fc8",
        "iter_n": 10,
        "start_step_size": 2.0,
        "end_step_size": 2.0,
        "start_denoise_weight": 0.4,
        "end_denoise_weight": 2,
        "margin": 0,
        "window": 0.3,
        "scale": None,
    },
]
#: BGR mean as the published script configured it (float32, as caffe.Transformer stores it).
MEAN_BGR = np.float32([104.0, 117.0, 123.0])[:, None, None]
TV_MAX_ITER = 100
TV_EPS = 1e-3


def py2_div(a, b):
    """``a / b`` as Python 2 evaluated it: floor division when both operands are ints."""
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    return a / b


def step_size_at(o, i):
    """The published step-size ramp, Python 2 division."""
    start, end = o["start_step_size"], o["end_step_size"]
    return start + py2_div((end - start) * i, o["iter_n"])


def tv_weight_at(o, i):
    """The published TV-weight formula exactly as written (ramps to about start + end)."""
    start, end = o["start_denoise_weight"], o["end_denoise_weight"]
    return start - py2_div(start - end * i, o["iter_n"])


def preprocess(img_hwc_rgb):
    """HxWx3 RGB grey levels -> 3xHxW BGR minus mean, float32 (the published helper)."""
    return np.float32(np.rollaxis(img_hwc_rgb, 2)[::-1]) - MEAN_BGR


def deprocess(x_chw):
    """The inverse: 3xHxW BGR minus mean -> HxWx3 RGB grey levels (float32)."""
    return np.dstack((x_chw + MEAN_BGR)[::-1])


def to_uint8_wrap(img):
    """``uint8(image)``: truncate toward zero, modulo 256 (the x86 cast, written out)."""
    return (np.trunc(np.asarray(img, dtype=np.float64)).astype(np.int64) % 256).astype(np.uint8)


def denoise(img_hwc, weight):
    from skimage.restoration import denoise_tv_bregman

    return denoise_tv_bregman(
        img_hwc, weight=weight, max_iter=TV_MAX_ITER, eps=TV_EPS, isotropic=True, multichannel=False
    )


def crop_offset(span, window):
    """One offset from the global stream: N(span / 2., span * window), clipped, truncated."""
    v = np.random.normal(span / 2.0, span * window, 1)
    # The original did int(np.clip(array_of_1, ...)); take the element so NumPy 2 would agree too.
    return int(np.clip(v, 0, span)[0])


def make_step(net, x_crop, unit, end, step_size, weight, margin):
    """One gradient step on a 3x227x227 crop; returns (new crop, step record)."""
    src, dst = net.blobs["data"], net.blobs[end]
    src.data[0] = x_crop
    net.forward(end=end)
    fc = dst.data[0].copy()
    one_hot = np.zeros_like(dst.data)
    one_hot.flat[unit] = 1.0
    dst.diff[:] = one_hot
    net.backward(start=end)
    g = src.diff[0]
    if margin > 0:
        mask = np.zeros_like(g)
        mask[:, margin:-margin, margin:-margin] = 1.0
        g = g * mask
    mag = np.abs(g).mean()
    # NumPy 1 casting on purpose: python number / float32 scalar -> float64 scalar, times a float32
    # array -> float32 array (value-based casting), as the original computed it.
    src.data[:] += step_size / mag * g
    np.clip(src.data, -MEAN_BGR, 255 - MEAN_BGR, out=src.data)
    asimg = deprocess(src.data[0]).astype(np.float64)
    src.data[0] = preprocess(denoise(asimg, weight))
    record = {
        "activation": float(fc.flat[unit]),
        "best_unit": int(fc.argmax()),
        "step_size": float(step_size),
        "tv_weight": float(weight),
        "mean_abs_grad": float(mag),
    }
    return src.data[0].copy(), record


def run_facet(net, init_rgb, unit, seed, end="fc8", octaves=OCTAVES, max_octaves=None):
    """The whole published loop for one mean image.

    Returns (octave images, steps, seconds, seconds of each octave)."""
    t0 = time.perf_counter()
    h, w = net.blobs["data"].data.shape[2:]
    np.random.seed(seed)
    # Drawn and discarded for a mean-image start: it only advances the stream, as the original did.
    np.random.normal(175, 8, (h, w, 3))
    image = preprocess(np.asarray(init_rgb, dtype=np.float32))
    images, steps, octave_seconds = [], [], []
    for k, o in enumerate(octaves[:max_octaves]):
        t_octave = time.perf_counter()
        if o["scale"] is not None:
            from scipy import ndimage

            image = ndimage.zoom(image, (1, o["scale"], o["scale"]))
        _, imw, imh = image.shape
        for i in range(o["iter_n"]):
            if imw > w:
                ox = crop_offset(imw - w, o["window"])
                oy = crop_offset(imh - h, o["window"])
            else:
                ox = oy = 0
            crop, rec = make_step(
                net,
                image[:, ox : ox + w, oy : oy + h],
                unit,
                end,
                step_size_at(o, i),
                tv_weight_at(o, i),
                o["margin"],
            )
            image[:, ox : ox + w, oy : oy + h] = crop
            steps.append({"octave": k + 1, "step": i, **rec, "offset": [ox, oy]})
        images.append(deprocess(image).astype(np.float32))
        octave_seconds.append(round(time.perf_counter() - t_octave, 3))
    return images, steps, time.perf_counter() - t0, octave_seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prototxt", required=True)
    ap.add_argument("--caffemodel", required=True)
    ap.add_argument("--init", action="append", required=True, help=".npy HxWx3 uint8 RGB")
    ap.add_argument("--index", action="append", type=int, required=True)
    ap.add_argument("--unit", type=int, default=945)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--layer", default="fc8")
    ap.add_argument("--max-octaves", type=int, default=None, help="stop early (testing)")
    ap.add_argument("--out", required=True, help=".npz: float and uint8 image per facet and octave")
    ap.add_argument("--trace", required=True, help="JSON: steps, timings, environment")
    a = ap.parse_args(argv)
    if len(a.init) != len(a.index):
        ap.error("one --index per --init")

    import caffe

    caffe.set_mode_cpu()
    net = caffe.Net(a.prototxt, caffe.TEST, weights=a.caffemodel)
    arrays, facets = {}, []
    for idx, path in zip(a.index, a.init):
        init = np.load(path)
        images, steps, secs, octave_secs = run_facet(
            net, init, a.unit, a.seed, a.layer, max_octaves=a.max_octaves
        )
        for k, img in enumerate(images, 1):
            arrays[f"facet_{idx}_octave{k}_float"] = img
            arrays[f"facet_{idx}_octave{k}"] = to_uint8_wrap(img)
        facets.append(
            {
                "index": idx,
                "seconds": round(secs, 3),
                "octave_seconds": octave_secs,  # for the benchmarks (tests/bench.py)
                "steps": steps,
                "octaves_done": len(images),
            }
        )
        print(
            f"facet {idx}: {len(steps)} steps, {secs:.1f} s, "
            f"final activation {steps[-1]['activation']:.4g}",
            flush=True,
        )
    np.savez(a.out + ".tmp.npz", **arrays)
    os.replace(a.out + ".tmp.npz", a.out)
    env = caffe_env.environment()
    info = {
        "facets": facets,
        "environment": env,
        "octaves": OCTAVES,
        "unit": a.unit,
        "seed": a.seed,
        "layer": a.layer,
        "denoiser": f"skimage {env['packages'].get('python3-skimage')} denoise_tv_bregman("
        f"max_iter={TV_MAX_ITER}, eps={TV_EPS:g}, isotropic=True, "
        "multichannel=False)",
    }
    with open(a.trace + ".tmp", "w") as fh:
        json.dump(info, fh)
    os.replace(a.trace + ".tmp", a.trace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
