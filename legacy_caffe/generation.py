"""Golden generation: run real Caffe on a net (built-in or a user's) and write dumps and manifest.

Every run goes through the current engine (:mod:`legacy_caffe.engines`); the manifest records
which engine and image made it.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from port.artefact import sha256_file
from port.atomic import atomic_path
from port.blobkeys import diff_key
from port.errors import CaffeError
from port.zoo import MODELS as ZOO

from . import engines, rootfs
from .golden_plans import (
    BLAS,
    CACHE_DIR,
    DEFAULT_SEED,
    DEFAULT_UNIT,
    GOLDEN_DIR,
    GOLDEN_ENV,
    INSIDE,
    PLANS,
    declared_input_size,
    load_manifest,
    manifest_path,
    port_seed_available,
    seed_weights,
)
from .manifest import (
    MANIFEST_FORMAT,
    GoldenError,
    bytes_identical,
    compare_dumps,
    count_outliers,
    describe_arrays,
    load_npz,
    verify_arrays,
    write_json,
)
from .preprocess import BGR_MEAN, RAW_SCALE, InputSpec, make_batch


def _say(msg: str) -> None:
    print(f"[goldens] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class GoldenRequest:
    """What one net's golden generation makes: which net, weights, inputs and BLAS, and where to.

    Committed dumps go to ``out_committed/<blas>/<input>.npz``, the rest to ``out_cache/...``.

    Attributes
    ----------
    name : str
        The net's name in the manifest (a built-in model's name, or the user's prototxt stem).
    prototxt : Path
        Deploy definition Caffe runs.
    prototxt_ref : str
        How the manifest names the definition (repository-relative for built-in models).
    blob : str
        Blob the one-hot is seeded on, or ``"auto"`` (the script picks the last unconsumed blob).
    inputs : sequence of InputSpec, or mapping of name to batch
        The photos to preprocess here, or ready (N, C, H, W) batches (a user's images), or per
        input set a mapping of input blob name to array of any shape, fed as it is (DummyData
        tops, Embed indices, LSTM sequences).
    out_committed, out_cache : Path
        Folders of committed and cached dumps (the seeded weights are kept in ``out_cache``).
    blas : tuple of str
        Caffe builds to run, from ``BLAS``.
    unit : int
        Flat index of the one-hot in ``blob``.
    seed : int or None
        Seed of ``port seed-weights`` (unused with ``caffemodel``).
    weight_format : {"v2", "v1"}
        Format of the seeded weights file.
    caffemodel : Path, optional
        The user's weights instead of seeded ones.
    committed : tuple of str
        Input names whose dumps are committed.
    repeat : bool
        Make each dump twice and record whether that BLAS gives the same bytes.
    require_gradient : bool
        Fail (rather than warn) when the one-hot's gradient reaches no input element.
    force_backward : bool
        Add ``force_backward`` so every diff is computed; without it ``blob`` is made a loss, as
        nets whose bottoms Caffe cannot back-propagate to (Embed, Filter, BatchReindex) need.
    """

    name: str
    prototxt: Path
    prototxt_ref: str
    blob: str
    inputs: Sequence[InputSpec] | Mapping[str, np.ndarray | Mapping[str, np.ndarray]]
    out_committed: Path
    out_cache: Path
    blas: tuple[str, ...] = BLAS
    unit: int = DEFAULT_UNIT
    seed: int | None = DEFAULT_SEED
    weight_format: str = "v2"
    caffemodel: Path | None = None
    committed: tuple[str, ...] = ()
    repeat: bool = True
    require_gradient: bool = False
    force_backward: bool = True
    # A folder of Python-layer modules (python_param module) the net imports; copied next to the
    # job and put on the root's PYTHONPATH.
    python_path: Path | None = None

    def __post_init__(self) -> None:
        for b in self.blas:
            if b not in BLAS:
                raise GoldenError(f"unknown BLAS {b!r}; choose from {', '.join(BLAS)}")
        # Normalise what callers may pass as str or list (the dataclass is frozen).
        object.__setattr__(self, "prototxt", Path(self.prototxt))
        object.__setattr__(self, "blas", tuple(self.blas))
        object.__setattr__(self, "committed", tuple(self.committed))


@dataclass
class _Job:
    """Files of one net's generation inside the exchange folder."""

    work: Path
    prototxt: Path
    weights: Path
    inputs: dict[str, Path]
    python: Path | None = None


@dataclass
class _Results:
    """What the dumps of one generation gathered for its manifest, filled in run order."""

    sets: dict[str, dict] = field(default_factory=dict)
    environments: dict[str, dict] = field(default_factory=dict)  # per BLAS
    determinism: dict[str, dict] = field(default_factory=dict)  # per BLAS
    dumps: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    first_meta: dict = field(default_factory=dict)  # blob list and shapes
    last_meta: dict = field(default_factory=dict)  # backward start (the same in every run)


def _dump(
    job: _Job,
    input_name: str,
    blas: str,
    out: Path,
    blob: str,
    unit: int,
    force_backward: bool = True,
) -> dict:
    """Run dump_blobs.py inside the root; returns its meta (environment, blobs, checks)."""
    meta = out.with_suffix(".json")
    engines.run_inside(
        ["python3", f"{INSIDE}/dump_blobs.py",
         "--prototxt", rootfs.host_to_inside(job.prototxt),
         "--caffemodel", rootfs.host_to_inside(job.weights),
         "--input", rootfs.host_to_inside(job.inputs[input_name]),
         "--blob", blob, "--unit", str(unit),
         "--out", rootfs.host_to_inside(out), "--meta", rootfs.host_to_inside(meta)]
        + ([] if force_backward else ["--no-force-backward"]),
        blas=blas,
        env={**GOLDEN_ENV, **({"PYTHONPATH": rootfs.host_to_inside(job.python)} if job.python
                              else {})},
    )  # fmt: skip
    info = json.loads(meta.read_text())
    env = info["environment"]
    if env.get("blas") != blas:
        raise GoldenError(
            f"asked for {blas} but Caffe loaded {env.get('blas_loaded')}; the BLAS switch failed"
        )
    return info


def generate(request: GoldenRequest) -> dict:
    """Make every (BLAS, input) dump of one net and return its manifest (not yet written)."""
    engine = engines.current()
    engine.ensure_built()
    rootfs.exchange_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{re.sub(r'[^A-Za-z0-9_.-]', '_', request.name)}-",
                                 dir=rootfs.exchange_dir()))  # fmt: skip
    try:
        man = _generate_in(work, request)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Which engine and image made the dumps; --check ignores it (the dumps must not depend on it).
    generated = man.pop("generated")
    man["engine"] = engine.describe()
    man["generated"] = generated
    return man


def _generate_in(work: Path, req: GoldenRequest) -> dict:
    t_start = time.monotonic()
    job = _Job(work, work / "net.prototxt", work / "weights.caffemodel", {})
    shutil.copyfile(req.prototxt, job.prototxt)
    if req.python_path is not None:
        job.python = work / "python"
        _copy_python_layers(Path(req.python_path), job.python)
    weights_info = _prepare_weights(req, job)
    batches, inputs_info = _prepare_inputs(req, job)
    results = _Results()
    for b in req.blas:
        det = {"repeats": 0, "byte_identical": True, "max_rel_diff": 0.0, "differing_arrays": []}
        for input_name, batch in batches.items():
            _dump_set(req, job, results, det, b, input_name, _shape_of(batch))
        results.determinism[b] = det
    return _manifest(req, results, batches, weights_info, inputs_info, t_start)


def _copy_python_layers(src: Path, dest: Path) -> None:
    """The .py files of ``src`` (Python layers' modules), where the root can import them."""
    modules = sorted(src.glob("*.py")) if src.is_dir() else []
    if not modules:
        raise GoldenError(
            f"--python-path {src}: no .py modules there (a folder holding the "
            "Python layers' modules is expected)"
        )
    dest.mkdir()
    for module in modules:
        shutil.copyfile(module, dest / module.name)


def _shape_of(batch: np.ndarray | Mapping[str, np.ndarray]) -> object:
    """A batch's shape for the log: a tuple, or input name -> tuple for named arrays."""
    if isinstance(batch, Mapping):
        return {k: tuple(v.shape) for k, v in batch.items()}
    return tuple(batch.shape)


def _prepare_weights(req: GoldenRequest, job: _Job) -> dict:
    """Put the weights Caffe loads into ``job.weights`` (a file, never arrays handed over).

    Returns the manifest's ``weights`` entry. Seeded weights are also kept in ``req.out_cache``.
    """
    if req.caffemodel is not None:
        shutil.copyfile(req.caffemodel, job.weights)
        weights_info = {"generator": "user file", "source": str(req.caffemodel)}
    elif port_seed_available():
        _say(
            f"{req.name}: python -m port seed-weights --weight-seed {req.seed} "
            f"--format {req.weight_format}"
        )
        seed_weights(req.prototxt, req.seed, job.weights, req.weight_format)
        weights_info = {"generator": "port seed-weights", "seed": req.seed,
                        "format": req.weight_format}  # fmt: skip
    else:
        raise GoldenError(
            "`python -m port seed-weights` is not available; the goldens must use port's seeded "
            "weights (install the project: pip install -e .)"
        )
    weights_info["sha256"] = sha256_file(job.weights)
    weights_info["bytes"] = job.weights.stat().st_size
    if weights_info["generator"] == "port seed-weights":
        keep = req.out_cache / "weights.caffemodel"
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(job.weights, keep)
    return weights_info


def _prepare_inputs(req: GoldenRequest, job: _Job) -> tuple[dict, dict[str, dict]]:
    """Preprocess the input batches here on the host and stage them in the exchange folder.

    Returns the batches by input name (an array, or named arrays fed as they are) and the
    manifest's ``inputs`` entry.
    """
    inputs_info: dict[str, dict] = {}
    if isinstance(req.inputs, Mapping):
        batches = dict(req.inputs)
        for input_name, x in batches.items():
            inputs_info[input_name] = {
                "source": "user arrays" if isinstance(x, Mapping) else "user images"
            }
    else:
        size = declared_input_size(req.prototxt.read_text())
        batches = {}
        for spec in req.inputs:
            hw = (spec.size, spec.size) if spec.size else size
            batches[spec.name] = make_batch(spec.photos, hw)
            inputs_info[spec.name] = spec.describe()
    for input_name, x in batches.items():
        if isinstance(x, Mapping):
            # Named arrays of any shape, fed as they are (dump_blobs.py reads the .npz).
            path = job.work / f"input_{input_name}.npz"
            np.savez(path, **x)
            job.inputs[input_name] = path
            inputs_info[input_name].update(
                arrays={k: {"shape": list(v.shape), **describe_arrays({k: v})[k]}
                        for k, v in x.items()})  # fmt: skip
            continue
        path = job.work / f"input_{input_name}.npy"
        np.save(path, x)
        job.inputs[input_name] = path
        inputs_info[input_name].update(
            shape=list(x.shape),
            sha256=describe_arrays({"x": x})["x"]["sha256"],
            preprocessing={"resize": "caffe.io.resize_image order 1 (skimage, mode constant, "
                           "no anti-aliasing)", "channel_order": "BGR",
                           "raw_scale": RAW_SCALE, "mean_bgr": list(BGR_MEAN)},
        )  # fmt: skip
    return batches, inputs_info


def _dump_set(
    req: GoldenRequest, job: _Job, results: _Results, det: dict, blas: str, input_name: str,
    shape: object,
) -> None:  # fmt: skip
    """Make one (BLAS, input) dump, check it, store its file and record its manifest entry."""
    t0 = time.monotonic()
    out = job.work / blas / f"{input_name}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = _dump(job, input_name, blas, out, req.blob, req.unit, req.force_backward)
    results.first_meta = results.first_meta or meta
    results.last_meta = meta
    arrays = load_npz(out)
    reached = _gradient_reaches_input(req, meta, arrays, blas, input_name)
    msg = (
        f"{req.name}: {blas} {input_name} {shape}: "
        f"{len(meta['blobs'])} blobs in {time.monotonic() - t0:.1f} s (Caffe forward "
        f"{meta['timings_s']['forward']} s, backward {meta['timings_s']['backward']} s)"
    )
    if req.repeat:
        _repeat(req, job, det, blas, input_name, arrays)
        msg += " (repeat: " + ("same bytes)" if det["byte_identical"] else "differs)")
    _say(msg)
    results.dumps[(blas, input_name)] = arrays
    results.environments[blas] = meta["environment"]
    is_committed = input_name in req.committed
    rel_file = f"{blas}/{input_name}.npz"
    described = describe_arrays(arrays)
    _store(out, (req.out_committed if is_committed else req.out_cache) / rel_file, described)
    results.sets[f"{blas}/{input_name}"] = {
        "blas": blas,
        "input": input_name,
        "file": rel_file,
        "committed": is_committed,
        "checks": {**meta["checks"], "gradient_reaches_input": reached},
        "timings_s": meta["timings_s"],
        "arrays": described,
    }


def _gradient_reaches_input(
    req: GoldenRequest, meta: dict, arrays: dict[str, np.ndarray], blas: str, input_name: str
) -> bool:
    """Whether the one-hot's gradient reaches some input element; fails or warns when not."""
    reached = bool(np.any(arrays[diff_key(meta["input_name"])]))
    # Without force_backward Caffe never writes an input's diff: nothing to warn about.
    if not reached and req.force_backward:
        msg = (
            f"{req.name}: the one-hot at {meta['backward_blob']}[{req.unit}] reaches no input "
            f"element with {blas} on {input_name} (a ReLU or dead unit stops it), so every "
            "diff below it is zero"
        )
        if req.require_gradient:
            raise GoldenError(msg + "; choose another --seed")
        _say("warning: " + msg)
    return reached


def _repeat(
    req: GoldenRequest, job: _Job, det: dict, blas: str, input_name: str,
    arrays: dict[str, np.ndarray],
) -> None:  # fmt: skip
    """Make the dump again and record in ``det`` whether this BLAS gave the same bytes."""
    again = job.work / blas / f"{input_name}.repeat.npz"
    _dump(job, input_name, blas, again, req.blob, req.unit, req.force_backward)
    second = load_npz(again)
    det["repeats"] += 1
    if not bytes_identical(arrays, second):
        det["byte_identical"] = False
        rel = compare_dumps(arrays, second)
        bad = {k: v for k, v in rel.items() if v > 0}
        det["differing_arrays"] = sorted(set(det["differing_arrays"]) | set(bad))
        det["max_rel_diff"] = max(det["max_rel_diff"], max(bad.values(), default=0.0))


def _store(out: Path, dest: Path, described: dict[str, dict]) -> None:
    """Put a fresh dump at ``dest`` atomically, unless ``dest`` already holds the same arrays."""
    if _same_arrays(dest, described):
        # Same values: keep the old file, whose zip timestamps would otherwise make git see a new
        # multi-MB blob on every regeneration.
        _say(f"{dest} unchanged")
        return
    with atomic_path(dest) as tmp:
        shutil.copyfile(out, tmp)


def _spread(results: _Results, req: GoldenRequest, inputs: Iterable[str]) -> tuple[dict, dict]:
    """ATLAS vs OpenBLAS per input: max relative error per array and the outlier counts."""
    spread: dict[str, dict[str, float]] = {}
    outliers: dict[str, dict[str, int]] = {}
    if "atlas" in req.blas and "openblas" in req.blas:
        for input_name in inputs:
            a, b = results.dumps[("atlas", input_name)], results.dumps[("openblas", input_name)]
            spread[input_name] = compare_dumps(a, b)
            counts = {k: count_outliers(a[k], b[k]) for k in spread[input_name]}
            outliers[input_name] = {k: n for k, n in counts.items() if n}
    return spread, outliers


def _manifest(
    req: GoldenRequest, results: _Results, batches: dict[str, np.ndarray], weights_info: dict,
    inputs_info: dict[str, dict], t_start: float,
) -> dict:  # fmt: skip
    """The manifest of one generation; the key order is the file's (manifests are not sorted)."""
    spread, outliers = _spread(results, req, batches)
    first_env = next(iter(results.environments.values()))
    meta, first_meta = results.last_meta, results.first_meta
    return {
        "format": MANIFEST_FORMAT,
        "model": req.name,
        "prototxt": req.prototxt_ref,
        "prototxt_sha256": sha256_file(req.prototxt),
        "backward": {
            "blob": meta["backward_blob"],
            "unit": req.unit,
            "start_layer": meta["backward_start_layer"],
            "force_backward_added": meta["force_backward_added"],
            "mode": meta.get("backward_mode", "force_backward"),
        },  # fmt: skip
        "meaning": "pycaffe net.blobs[name].data after forward() and .diff after "
        "backward(start=<last layer writing blob>) from a one-hot at flat index unit "
        "of every sample; Caffe's auto-inserted *_split_* blobs excluded",
        "weights": weights_info,
        "caffe": {
            "version": first_env["caffe"],
            **{k: first_env[k] for k in ("python", "numpy", "debian", "packages", "cpu", "nproc")},
        },
        "blas": {
            b: {k: env[k] for k in ("blas_loaded", "openblas", "threads_env")}
            for b, env in results.environments.items()
        },  # fmt: skip
        "blobs": [
            {"name": n, "shape_first_input": first_meta["shapes"][n]} for n in first_meta["blobs"]
        ],
        "inputs": inputs_info,
        "determinism": results.determinism,
        "spread_atlas_vs_openblas": {
            "measure": "max|atlas - openblas| / max|openblas| per array",
            "per_input": spread,
            "elements_over_1e-4_of_range": outliers,
            "note": "large diff spreads confined to a few elements (see elements_over_1e-4_of_range) "
            "are max-pooling routing flips: the two BLAS break a near-tie differently",
        },
        "sets": results.sets,
        "generated": {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.monotonic() - t_start, 1),
            "command": "python -m legacy_caffe goldens",
        },
    }


def _same_arrays(path: Path, described: dict[str, dict]) -> bool:
    if not path.is_file():
        return False
    try:
        return not verify_arrays(load_npz(path), described)
    except (OSError, ValueError, CaffeError):  # port.arrays refuses a damaged cached file
        return False


def generate_model(
    model: str,
    *,
    blas: Iterable[str] = BLAS,
    seed: int | None = None,
    only_inputs: Sequence[str] | None = None,
    cache_only: bool = False,
    golden_dir: Path = GOLDEN_DIR,
    cache_dir: Path = CACHE_DIR,
    repeat: bool = True,
    write_manifest: bool = True,
) -> dict:
    """Generate a built-in model's goldens and (unless told not to) write its manifest.

    ``cache_only`` regenerates dumps into the cache without touching git's copy: used to fill the
    cache on demand; the committed manifest is then the reference the new files are checked against.
    """
    if model not in PLANS:
        raise GoldenError(f"no golden plan for {model!r}; built-in: {', '.join(PLANS)}")
    plan = PLANS[model]
    zm = ZOO[model]
    if not zm.prototxt.is_file():
        raise GoldenError(f"{model}: definition {zm.prototxt} is missing")
    inputs = [s for s in plan.inputs if only_inputs is None or s.name in only_inputs]
    ref = f"port/models/{zm.relative}" if zm.bundled else f"../shared/reference/{zm.relative}"
    man = generate(GoldenRequest(
        name=model, prototxt=zm.prototxt, prototxt_ref=ref, blob=zm.classifier, inputs=inputs,
        blas=tuple(blas), seed=plan.seed if seed is None else seed, weight_format=plan.weight_format,
        require_gradient=True,
        committed=() if cache_only else plan.committed,
        out_committed=golden_dir / model, out_cache=cache_dir / model,
        repeat=repeat and not cache_only,
    ))  # fmt: skip
    if cache_only:
        committed = load_manifest(model, golden_dir)
        for key, entry in man["sets"].items():
            want = committed["sets"].get(key)
            if want is None:
                continue
            problems = verify_arrays(load_npz(cache_dir / model / entry["file"]), want["arrays"])
            if problems:
                raise GoldenError(
                    f"regenerated {model} {key} does not match the manifest: {'; '.join(problems[:5])}"
                )
        return man
    if write_manifest:
        write_json(manifest_path(model, golden_dir), man)
        _say(f"wrote {manifest_path(model, golden_dir)}")
    return man
