"""What can be measured of the paper's criteria, per facet and across facets.

For each facet of a ``visualize`` output: the target's activation and softmax rank, against the real
images of the facet's cluster; diversity between facets (mean pairwise L2 distance of their codes,
the fc7 equivalent); whether the facet's nearest real image (in code space) lies in its own
cluster. Facet images larger than the input are resized to it (bicubic), as a classifier would see
the whole picture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import _io
from .codes import as_input, facet_path, image_batch, nearest_training_images, real_images
from .models import MODEL_SPECS, Model, load_model
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
        m["name"] if m["name"] in MODEL_SPECS else "caffe",
        prototxt=m.get("prototxt"),
        caffemodel=m.get("caffemodel"),
        weights=m.get("weights"),
        weight_seed=m.get("weight_seed") or 0,
        device=device,
        parity_check=parity.get("status") != "skipped" and m.get("source") == "caffe",
        parity_file=parity.get("verdict_file") if m.get("source") == "caffe" else None,
        proto=m.get("proto"),
        plugins=tuple(m.get("plugins") or ()),
    )


def _mean_pairwise(codes: np.ndarray) -> float | None:
    if len(codes) < 2:
        return None
    return float(np.mean([np.linalg.norm(a - b) for a, b in combinations(codes, 2)]))


@dataclass(frozen=True)
class _Probe:
    """What :func:`evaluate` measures of a batch of images, and with which network.

    ``rank_unit`` is the softmax unit whose rank and probability are reported: the target's,
    when the objective is a class unit; None otherwise.
    """

    model: Model
    objective: Objective
    layers: list[str]
    code_layer: str
    prob_layer: str
    rank_unit: int | None


class _Measures(NamedTuple):
    """Per image: the objective's value, the target's softmax rank and probability (None when
    the target is no class), and the code (the flattened code layer)."""

    value: np.ndarray
    rank: np.ndarray | None
    prob: np.ndarray | None
    code: np.ndarray


def _probe_of(trace: dict, model: Model) -> _Probe:
    """The objective, layers and code/probability layers recorded in (or implied by) a trace."""
    obj = objective_from_spec(trace["objective"])
    spec = model.spec
    code_layer = trace.get("code_layer") or (spec.code_layer if spec else None)
    prob_layer = model.prob_layer
    target_unit = trace["objective"].get("unit")
    ranked = trace["objective"].get("kind") in ("unit", "softmax_unit")
    return _Probe(
        model,
        obj,
        list(dict.fromkeys([*obj.layers, code_layer, prob_layer])),
        code_layer,
        prob_layer,
        target_unit if ranked else None,
    )


def _measure(probe: _Probe, images: list[np.ndarray]) -> _Measures:
    """One forward pass of ``images`` (H, W, 3 uint8, the model's input size)."""
    x = image_batch(images)
    with torch.no_grad():
        acts = probe.model.activations(x, probe.layers)
        val = probe.objective(acts).double().cpu().numpy()
    prob = acts[probe.prob_layer].reshape(len(images), -1).double().cpu().numpy()
    code = acts[probe.code_layer].reshape(len(images), -1).double().cpu().numpy()
    ranks = probs = None
    if probe.rank_unit is not None and probe.rank_unit < prob.shape[1]:
        ranks = (prob > prob[:, [probe.rank_unit]]).sum(1)
        probs = prob[:, probe.rank_unit]
    return _Measures(val, ranks, probs, code)


def _measure_facets(probe: _Probe, paths: list[Path], size: tuple[int, int]) -> _Measures:
    """The facet images, in one batch (empty measures when there is no facet image)."""
    if not paths:
        return _Measures(np.zeros(0), None, None, np.zeros((0, 1)))
    return _measure(probe, [as_input(p, size) for p in paths])


def _measure_real(probe: _Probe, paths: list[str], size: tuple[int, int]) -> _Measures | None:
    """The real images, 16 at a time (None when there are none); ``prob`` is not kept."""
    if not paths:
        return None
    chunks = [
        _measure(probe, [as_input(p, size) for p in paths[i : i + 16]])
        for i in range(0, len(paths), 16)
    ]
    return _Measures(
        np.concatenate([c.value for c in chunks]),
        None if chunks[0].rank is None else np.concatenate([c.rank for c in chunks]),
        None,
        np.concatenate([c.code for c in chunks]),
    )


def _provenance(
    out: Path, trace: dict, probe: _Probe, means: str | Path | None, size: tuple[int, int]
) -> dict:
    """The evaluation's header: what was evaluated, with which model, layers and means."""
    return {
        "format": "mfv-evaluation/1",
        "run": str(out),
        "objective": trace["objective"]["description"],
        "code_layer": probe.code_layer,
        "prob_layer": probe.prob_layer,
        "model": trace["model"]["name"],
        "parity": trace.get("parity"),
        "mode": trace.get("mode"),
        "fixes": trace.get("fixes", []),
        "means": None if means is None else str(means),
        "resize": f"facets resized to {size} (bicubic)",
        "facets": [],
    }


def _facet_record(
    f: dict,
    path: Path,
    j: int,
    facets: _Measures,
    real: _Measures | None,
    real_paths: list[str],
    labels: np.ndarray,
) -> dict:
    """Facet ``j``'s numbers: its own, against its cluster's real images, and its nearest real image."""
    rec = {
        "index": f["index"],
        "cluster": f.get("cluster"),
        "status": f["status"],
        "image": str(path),
        "activation": float(facets.value[j]),
        "softmax_rank": None if facets.rank is None else int(facets.rank[j]),
        "softmax_prob": None if facets.prob is None else float(facets.prob[j]),
    }
    c = f.get("cluster")
    if real is not None and c is not None and (labels == c).any():
        cv = real.value[labels == c]
        rec["cluster_size"] = int(len(cv))
        rec["cluster_activation_mean"] = float(cv.mean())
        rec["cluster_activation_max"] = float(cv.max())
        rec["activation_percentile_in_cluster"] = float(100.0 * (cv < facets.value[j]).mean())
        if real.rank is not None:
            rec["cluster_rank_median"] = float(np.median(real.rank[labels == c]))
    if real is not None:
        d = np.linalg.norm(real.code - facets.code[j], axis=1)
        k = int(np.argmin(d))
        rec["nearest_image"] = real_paths[k]
        rec["nearest_distance"] = float(d[k])
        rec["nearest_cluster"] = int(labels[k])
        rec["nearest_in_own_cluster"] = None if c is None else bool(labels[k] == c)
    return rec


def _diversity(
    probe: _Probe,
    facets: _Measures,
    real: _Measures | None,
    mean_paths: list[str | None],
    size: tuple[int, int],
) -> dict:
    """Mean pairwise code distance among the facets, the real images (at most ~200 of them, evenly
    spaced) and the mean images."""
    div = {"facets": _mean_pairwise(facets.code)}
    if real is not None:
        div["real_images"] = _mean_pairwise(real.code[:: max(1, len(real.code) // 200)])
    mp = [m for m in mean_paths if m]
    if mp:
        div["mean_images"] = _mean_pairwise(_measure(probe, [as_input(m, size) for m in mp]).code)
    return div


def evaluate(
    out: str | Path,
    *,
    model: Model | None = None,
    means: str | Path | None = None,
    device: str = "cpu",
    write: bool = True,
) -> dict:
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
    probe = _probe_of(trace, model)
    size = model.convention.input_size
    facets = [(f, facet_path(out, f)) for f in trace["facets"]]
    facets = [(f, p) for f, p in facets if p is not None]
    fm = _measure_facets(probe, [p for _, p in facets], size)
    result = _provenance(out, trace, probe, means, size)
    real_paths, real_labels, mean_paths = ([], [], [])
    if means is not None:
        real_paths, real_labels, mean_paths = real_images(means)
    real = _measure_real(probe, real_paths, size)
    labels = np.asarray(real_labels)
    result["facets"] = [
        _facet_record(f, p, j, fm, real, real_paths, labels) for j, (f, p) in enumerate(facets)
    ]
    result["diversity"] = _diversity(probe, fm, real, mean_paths, size)
    own = [
        r["nearest_in_own_cluster"]
        for r in result["facets"]
        if r.get("nearest_in_own_cluster") is not None
    ]
    result["nearest_in_own_cluster_fraction"] = None if not own else f"{sum(own)}/{len(own)}"
    if write:
        _io.write_json(out / "evaluation.json", result)
        from .report import write_evaluate_html

        write_evaluate_html(out / "evaluation.html", result)
    return result
