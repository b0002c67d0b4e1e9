"""Stand-in for `python -m port seed-weights` while port/ lacks it (runs inside the root).

    python3 seed_fallback.py --prototxt P --seed S --out W.caffemodel

Fills every parameter blob from a seeded numpy RNG (He-normal weights, small normal biases) and lets
pycaffe write the caffemodel. Goldens made this way are marked as such in their manifest.
"""

import argparse
import os
import sys

import numpy as np

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--prototxt", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe

    net = caffe.Net(a.prototxt, caffe.TEST)
    rng = np.random.RandomState(a.seed)
    for name in net._layer_names:
        for i, blob in enumerate(net.params.get(name, [])):
            shape = blob.data.shape
            if i == 0 and len(shape) > 1:
                fan_in = int(np.prod(shape[1:]))
                blob.data[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            else:
                blob.data[...] = rng.normal(0.0, 0.01, shape)
    tmp = a.out + ".tmp"
    net.save(tmp)
    os.replace(tmp, a.out)
    sys.exit(0)
