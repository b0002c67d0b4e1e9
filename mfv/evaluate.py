"""What can be measured of the paper's criteria, per facet and across facets.

For each facet of a ``visualize`` output: the target's activation and softmax rank, against the real
images of the facet's cluster; diversity between facets (mean pairwise L2 distance of their codes,
the fc7 equivalent); whether the facet's nearest real image (in code space) lies in its own
cluster. Facet images larger than the input are resized to it (bicubic), as a classifier would see
the whole picture.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from . import _io
from .means import read_clusters
from .models import Model, load_model
from .objectives import Objective, channel, softmax_unit, unit

__all__ = ["evaluate", "objective_from_spec", "model_from_trace", "nearest_training_images"]


def objective_from_spec(spec: dict) -> Objective:
    """Rebuild an objective from the ``spec`` recorded in a trace."""
    kind = spec.get("kind")
    if kind == "unit":
        return unit(spec["layer"], spec["unit"])
    if kind == "softmax_unit":
        return softmax_unit(spec["layer"], spec["unit"])
    if kind == "channel":
        return channel(spec["layer"], spec["unit"], x=spec.get("x"), y=spec.get("y"))
    raise ValueError(f"cannot rebuild objective {spec!r}")


def model_from_trace(trace: dict, *, device: str = "cpu") -> Model:
    """Load the model a run used, with the parity check it ran under."""
    m = trace["model"]
    parity = m.get("parity") or {}
    return load_model(
        m["name"] if m["name"] in _known() else "caffe",
        prototxt=m.get("prototxt"), caffemodel=m.get("caffemodel"), weights=m.get("weights"),
        weight_seed=m.get("weight_seed") or 0, device=device,
        parity_check=parity.get("status") != "skipped" and m.get("source") == "caffe",
        parity_file=parity.get("verdict_file") if m.get("source") == "caffe" else None,
    )


def _known():
    from .models import MODELS

    return MODELS


def _as_input(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    img = _io.load_rgb(path)
    if img.shape[:2] != tuple(size):
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BICUBIC))
    return img


def _forward(model: Model, images: list[np.ndarray], layers: list[str], batch: int = 16) -> dict[str, np.ndarray]:
    out: dict[str, list] = {k: [] for k in layers}
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.stack(images[i:i + batch]).transpose(0, 3, 1, 2).astype(np.float32))
            acts = model.activations(x, layers)
            for k in layers:
                out[k].append(acts[k].reshape(acts[k].shape[0], -1).double().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _real_images(means_dir: str | Path) -> tuple[list[str], list[int], list[str | None]]:
    data = read_clusters(means_dir)
    if "images" in data:  # a means output: every image with its cluster
        root = Path(data["images_root"])
        paths = [str(root / d["path"]) for d in data["images"]]
        labels = [int(d["cluster"]) for d in data["images"]]
    else:  # the published layout: only each mean's members are known
        paths = [p for c in data["clusters"] for p in c["members"]]
        labels = [c["index"] for c in data["clusters"] for _ in c["members"]]
    return paths, labels, [c.get("mean_image") for c in data["clusters"]]


def _facet_path(out: Path, f: dict) -> Path | None:
    p = out / f"facet_{f['index']}.png"
    if p.exists():
        return p
    p = out / f"facet_{f['index']}_octave{f.get('octaves_done', 0)}.png"
    return p if p.exists() else None


def nearest_training_images(model: Model, out: Path, trace: dict, *, n: int = 3) -> dict:
    """The ``n`` real images nearest each facet in code space: {facet: [(path, distance, cluster)]}."""
    layer = trace.get("code_layer") or (model.spec.code_layer if model.spec else None)
    paths, labels, _ = _real_images(trace["means"])
    size = model.convention.input_size
    facets = [(f["index"], _facet_path(out, f)) for f in trace["facets"]]
    facets = [(i, p) for i, p in facets if p is not None]
    if not facets or not paths:
        return {}
    real = _forward(model, [_as_input(p, size) for p in paths], [layer])[layer]
    fc = _forward(model, [_as_input(p, size) for _, p in facets], [layer])[layer]
    result = {}
    for (i, _), code in zip(facets, fc, strict=True):
        d = np.linalg.norm(real - code, axis=1)
        order = np.argsort(d, kind="stable")[:n]
        result[i] = [(paths[j], float(d[j]), labels[j]) for j in order]
    return result


def _mean_pairwise(codes: np.ndarray) -> float | None:
    if len(codes) < 2:
        return None
    return float(np.mean([np.linalg.norm(a - b) for a, b in combinations(codes, 2)]))


def evaluate(out: str | Path, *, model: Model | None = None, means: str | Path | None = None,
             device: str = "cpu", write: bool = True) -> dict:
    """Evaluate a ``visualize`` output folder.

    Parameters
    ----------
    out : path
        The visualize output (reads ``trace.json`` and the facet images).
    model : Model, optional
        The network; default: reloaded from the trace (same weights and parity check).
    means : path, optional
        Means folder (``clusters.json``, or the published layout); default: the one the run used.
    device : str
        Torch device for reloading.
    write : bool
        Write ``evaluation.json`` and ``evaluation.html`` into ``out``.

    Returns
    -------
    dict
        Per-facet numbers, diversity, the nearest-image test, provenance.
    """
    out = Path(out)
    trace = json.loads((out / "trace.json").read_text())
    model = model or model_from_trace(trace, device=device)
    means = means or trace.get("means")
    obj = objective_from_spec(trace["objective"])
    spec = model.spec
    code_layer = trace.get("code_layer") or (spec.code_layer if spec else None)
    prob_layer = spec.prob_layer if spec else "prob"
    size = model.convention.input_size
    layers = list(dict.fromkeys([*obj.layers, code_layer, prob_layer]))
    target_unit = trace["objective"].get("unit")

    facets = [(f, _facet_path(out, f)) for f in trace["facets"]]
    facets = [(f, p) for f, p in facets if p is not None]

    def measure(images):
        x = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).astype(np.float32))
        with torch.no_grad():
            acts = model.activations(x, layers)
            val = obj(acts).double().cpu().numpy()
        prob = acts[prob_layer].reshape(len(images), -1).double().cpu().numpy()
        code = acts[code_layer].reshape(len(images), -1).double().cpu().numpy()
        ranks = probs = None
        if trace["objective"].get("kind") in ("unit", "softmax_unit") and target_unit is not None \
                and target_unit < prob.shape[1]:
            ranks = (prob > prob[:, [target_unit]]).sum(1)
            probs = prob[:, target_unit]
        return val, ranks, probs, code

    fimgs = [_as_input(p, size) for _, p in facets]
    fval, frank, fprob, fcode = measure(fimgs) if fimgs else (np.zeros(0), None, None, np.zeros((0, 1)))
    result = {"format": "mfv-evaluation/1", "run": str(out), "objective": trace["objective"]["description"],
              "code_layer": code_layer, "prob_layer": prob_layer, "model": trace["model"]["name"],
              "parity": trace.get("parity"), "mode": trace.get("mode"), "fixes": trace.get("fixes", []),
              "means": None if means is None else str(means), "resize": f"facets resized to {size} (bicubic)",
              "facets": []}
    real_paths, real_labels, mean_paths = ([], [], [])
    if means is not None:
        real_paths, real_labels, mean_paths = _real_images(means)
    rval = rrank = rcode = None
    if real_paths:
        chunks = [measure([_as_input(p, size) for p in real_paths[i:i + 16]]) for i in range(0, len(real_paths), 16)]
        rval = np.concatenate([c[0] for c in chunks])
        rrank = None if chunks[0][1] is None else np.concatenate([c[1] for c in chunks])
        rcode = np.concatenate([c[3] for c in chunks])
    labels = np.asarray(real_labels)
    for j, (f, p) in enumerate(facets):
        rec = {"index": f["index"], "cluster": f.get("cluster"), "status": f["status"], "image": str(p),
               "activation": float(fval[j]),
               "softmax_rank": None if frank is None else int(frank[j]),
               "softmax_prob": None if fprob is None else float(fprob[j])}
        c = f.get("cluster")
        if rval is not None and c is not None and (labels == c).any():
            cv = rval[labels == c]
            rec["cluster_size"] = int(len(cv))
            rec["cluster_activation_mean"] = float(cv.mean())
            rec["cluster_activation_max"] = float(cv.max())
            rec["activation_percentile_in_cluster"] = float(100.0 * (cv < fval[j]).mean())
            if rrank is not None:
                rec["cluster_rank_median"] = float(np.median(rrank[labels == c]))
        if rcode is not None:
            d = np.linalg.norm(rcode - fcode[j], axis=1)
            k = int(np.argmin(d))
            rec["nearest_image"] = real_paths[k]
            rec["nearest_distance"] = float(d[k])
            rec["nearest_cluster"] = int(labels[k])
            rec["nearest_in_own_cluster"] = None if c is None else bool(labels[k] == c)
        result["facets"].append(rec)
    div = {"facets": _mean_pairwise(fcode)}
    if rcode is not None:
        div["real_images"] = _mean_pairwise(rcode[:: max(1, len(rcode) // 200)])
    mp = [m for m in mean_paths if m]
    if mp:
        div["mean_images"] = _mean_pairwise(measure([_as_input(m, size) for m in mp])[3])
    result["diversity"] = div
    own = [r["nearest_in_own_cluster"] for r in result["facets"] if r.get("nearest_in_own_cluster") is not None]
    result["nearest_in_own_cluster_fraction"] = None if not own else f"{sum(own)}/{len(own)}"
    if write:
        _io.write_json(out / "evaluation.json", result)
        from .report import write_evaluate_html

        write_evaluate_html(out / "evaluation.html", result)
    return result
