"""Dump every blob's data and diff from real Caffe (runs inside the root: Python 3.9 + pycaffe).

    python3 dump_blobs.py --prototxt P --caffemodel W --input X.npy --blob fc8 --unit 945 \
        --out OUT.npz [--meta OUT.json]

X.npy is the preprocessed (N, C, H, W) float32 batch. The net is loaded in TEST phase, its input
reshaped to X's shape, run forward; then a one-hot at flat index UNIT of every sample of BLOB is set
as BLOB's diff and ``net.backward(start=<last layer with BLOB as top>)`` runs. The .npz holds
``data/<blob>``, ``diff/<blob>`` for every blob (Caffe's auto-inserted split blobs excluded) and
``input/<name>``: exactly what pycaffe's ``net.blobs[name].data/.diff`` hold.

Standalone on purpose: the root has no torch and no project package, only Debian's Python 3.9.
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import caffe_env  # noqa: E402

FORCE_BACKWARD = re.compile(r"^\s*force_backward\s*:\s*true\b", re.MULTILINE)


def with_force_backward(prototxt, workdir):
    """A prototxt Caffe will backpropagate to the input through (a temp copy if it needs one).

    Without force_backward Caffe skips backward for layers whose bottoms need no gradient, which
    leaves diff/data (and the diffs of the first layers) at zero.
    """
    with open(prototxt) as fh:
        text = fh.read()
    if FORCE_BACKWARD.search(text):
        return prototxt, False
    path = os.path.join(workdir, "force_backward.prototxt")
    with open(path, "w") as fh:
        # Top-level fields may come in any order in protobuf text format.
        fh.write("force_backward: true\n" + text)
    return path, True


def with_loss_at(prototxt, blob, workdir):
    """A prototxt whose last layer writing ``blob`` marks it a loss (loss_weight 1), no force_backward.

    For nets with bottoms Caffe cannot back-propagate to (Embed's indices, Filter's selector,
    BatchReindex's indices), where force_backward aborts: Caffe then back-propagates exactly into
    the blobs that need it (below a learnable layer, above the loss), as it does in training.
    """
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    net = caffe_pb2.NetParameter()
    with open(prototxt) as fh:
        text_format.Merge(fh.read(), net)
    if net.force_backward:
        sys.exit("dump_blobs: --no-force-backward with a definition that sets force_backward")
    writers = [layer for layer in net.layer if blob in layer.top]
    if not writers:
        sys.exit(f"dump_blobs: no layer writes {blob!r}")
    last = writers[-1]
    del last.loss_weight[:]
    last.loss_weight.extend([1.0 if t == blob else 0.0 for t in last.top])
    path = os.path.join(workdir, "loss_at_start.prototxt")
    with open(path, "w") as fh:
        fh.write(text_format.MessageToString(net))
    return path


def auto_split_blobs(net):
    """Tops of the Split layers Caffe inserted itself (named '<layer>_<blob>_<i>_split')."""
    out = set()
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type == "Split" and name.endswith("_split"):
            out.update(net.top_names[name])
    return out


def atomic_savez(path, arrays):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".dump_", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".meta_", suffix=".json.tmp", dir=directory)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prototxt", required=True, help="deploy definition")
    ap.add_argument("--caffemodel", required=True, help="weights")
    ap.add_argument(
        "--input",
        required=True,
        help="(N, C, H, W) float32 .npy, or an .npz of input blob name -> array "
        "(any shape; DummyData tops too) fed as they are",
    )
    ap.add_argument("--input-name", default=None, help="net input to feed (default: the first)")
    ap.add_argument(
        "--blob",
        required=True,
        help="blob the one-hot is seeded on (e.g. fc8), or 'auto': the top of the last "
        "InnerProduct/Convolution/Pooling layer",
    )
    ap.add_argument("--unit", type=int, default=945, help="flat index of the one-hot per sample")
    ap.add_argument("--out", required=True, help=".npz to write")
    ap.add_argument("--meta", default=None, help="JSON with environment and checks")
    ap.add_argument(
        "--no-force-backward",
        action="store_true",
        help="do not add force_backward (which aborts on Embed, Filter and "
        "BatchReindex bottoms); make BLOB a loss instead",
    )
    return ap.parse_args(argv)


def seed_blob(net, blob):
    """The blob to seed: ``blob``, or for 'auto' the last classifier-like output (fc8,
    loss3/classifier, SqueezeNet's pool10)."""
    if blob == "auto":
        scorers = [
            ln
            for ln, layer in zip(net._layer_names, net.layers)
            if layer.type in ("InnerProduct", "Convolution", "Pooling")
        ]
        if not scorers:
            sys.exit("dump_blobs: --blob auto found no InnerProduct/Convolution/Pooling layer")
        blob = net.top_names[scorers[-1]][0]
    if blob not in net.blobs:
        sys.exit(f"dump_blobs: net has no blob {blob!r}")
    return blob


def backward_from(net, blob, unit):
    """One-hot at flat index ``unit`` of every sample of ``blob``, then backward from the last
    layer that writes it. Returns (start layer, its index, seconds)."""
    writers = [ln for ln in net._layer_names if blob in net.top_names[ln]]
    start = writers[-1]
    start_idx = list(net._layer_names).index(start)
    target = net.blobs[blob]
    per_sample = int(np.prod(target.data.shape[1:]))
    if not 0 <= unit < per_sample:
        sys.exit(f"dump_blobs: unit {unit} outside {blob}'s {per_sample} values per sample")
    onehot = np.zeros(target.diff.shape, dtype=np.float32)
    onehot.reshape(onehot.shape[0], -1)[:, unit] = 1.0
    target.diff[...] = onehot
    t0 = time.time()
    net.backward(start=start)
    return start, start_idx, time.time() - t0


def downstream_blobs(net, start_idx):
    """Blobs produced only after the start layer: they never see a gradient."""
    downstream = set()
    for ln in list(net._layer_names)[start_idx + 1 :]:
        downstream.update(net.top_names[ln])
    for ln in list(net._layer_names)[: start_idx + 1]:
        downstream.difference_update(net.top_names[ln])
    return downstream


def meta_record(net, names, splits, in_name, backward, checks, timings):
    """What the host's manifest records of one dump: environment, blobs, backward, checks, times."""
    return {
        "environment": caffe_env.environment(),
        "blobs": names,
        "shapes": {b: list(net.blobs[b].data.shape) for b in names},
        "layers": [[ln, net.layers[i].type] for i, ln in enumerate(net._layer_names)],
        "input_name": in_name,
        "backward_blob": backward["blob"],
        "backward_unit": backward["unit"],
        "backward_start_layer": backward["start"],
        "force_backward_added": backward["forced"],
        "backward_mode": backward["mode"],
        "auto_split_blobs_excluded": sorted(splits),
        "checks": checks,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def read_feeds(path):
    """The arrays to feed: an .npz of input blob name -> array, or one (N, C, H, W) .npy (whose
    input blob is settled once the net is loaded: None here)."""
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k].astype(np.float32) for k in z.files}
    x = np.load(path).astype(np.float32)
    if x.ndim != 4:
        sys.exit(f"dump_blobs: input must be (N, C, H, W), got shape {x.shape}")
    return {None: x}


def load_net(caffe, args):
    """The net in TEST phase, with force_backward added (or ``--blob`` made a loss)."""
    workdir = tempfile.mkdtemp(prefix="dump_blobs_")
    if args.no_force_backward:
        if args.blob == "auto":
            sys.exit("dump_blobs: --no-force-backward needs an explicit --blob")
        proto, forced = with_loss_at(args.prototxt, args.blob, workdir), False
    else:
        proto, forced = with_force_backward(args.prototxt, workdir)
    return caffe.Net(proto, caffe.TEST, weights=args.caffemodel), forced


def feed(net, feeds, input_name):
    """Reshape the net to the feeds and copy them in; returns the feeds keyed by blob name."""
    if None in feeds:
        feeds = {input_name or net.inputs[0]: feeds[None]}
    for name in feeds:
        if name not in net.blobs:
            sys.exit(f"dump_blobs: net has no input blob {name!r} (inputs: {list(net.inputs)})")
    for name, arr in feeds.items():
        net.blobs[name].reshape(*arr.shape)
    net.reshape()
    for name, arr in feeds.items():
        net.blobs[name].data[...] = arr
    return feeds


def collect(net, names, feeds):
    """What pycaffe's blobs hold now, plus the inputs fed: the dump's arrays."""
    arrays = {}
    for b in names:
        arrays["data/" + b] = np.array(net.blobs[b].data, dtype=np.float32, copy=True)
        arrays["diff/" + b] = np.array(net.blobs[b].diff, dtype=np.float32, copy=True)
    for name, arr in feeds.items():
        arrays["input/" + name] = arr
    return arrays


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe

    caffe.set_mode_cpu()
    feeds = read_feeds(args.input)
    t0 = time.time()
    net, forced = load_net(caffe, args)
    load_s = time.time() - t0
    feeds = feed(net, feeds, args.input_name)
    in_name = next(iter(feeds))
    blob = seed_blob(net, args.blob)

    t0 = time.time()
    net.forward()
    forward_s = time.time() - t0

    splits = auto_split_blobs(net)
    names = [b for b in net.blobs if b not in splits]
    # A loss top's diff holds its loss weight from setup on; the one-hot replaces it below.
    nonzero_before = [
        b for b in names if np.any(net.blobs[b].diff) and not (args.no_force_backward and b == blob)
    ]
    start, start_idx, backward_s = backward_from(net, blob, args.unit)
    downstream = downstream_blobs(net, start_idx)
    # Blobs downstream of the start layer must still have a zero diff.
    downstream_nonzero = [b for b in names if b in downstream and np.any(net.blobs[b].diff)]
    atomic_savez(args.out, collect(net, names, feeds))

    if args.meta:
        checks = {
            "diffs_zero_before_backward": not nonzero_before,
            "downstream_blobs": sorted(b for b in names if b in downstream),
            "downstream_diffs_zero": not downstream_nonzero,
            "downstream_nonzero": downstream_nonzero,
        }
        timings = {"load": load_s, "forward": forward_s, "backward": backward_s}
        backward = {
            "blob": blob,
            "unit": args.unit,
            "start": start,
            "forced": forced,
            "mode": "loss_at_blob" if args.no_force_backward else "force_backward",
        }
        atomic_write_json(
            args.meta, meta_record(net, names, splits, in_name, backward, checks, timings)
        )
    if nonzero_before or downstream_nonzero:
        sys.exit(
            f"dump_blobs: diff check failed: nonzero before backward {nonzero_before}, "
            f"downstream {downstream_nonzero}"
        )


if __name__ == "__main__":
    main()
