"""Reference MFV runs on real Caffe: the original loop (``inside/mfv_original.py``) for seeded CaffeNet.

The host side: stages the definition, the seeded weights and the decoded mean images in the exchange
folder, runs the loop inside the Debian 11 root with the chosen BLAS, and writes a folder that
``python -m mfv diff`` reads like a ``python -m mfv visualize`` output::

    OUT/facet_<k>_octave<j>.png   the whole image after octave j, uint8() wraparound, lossless
    OUT/facet_<k>.png             the final image (= last octave)
    OUT/trace.json                mfv-trace/1: per-step records in visualize's schema, plus environment

Facet ``k`` starts from ``mean_k.jpg``. The JPEGs are decoded here, by the same decoder the port's
``mfv visualize --init`` uses (``port.images.load_rgb``), and handed over as arrays, so that a libjpeg
difference between the root and the host cannot pass for a difference of the algorithm.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from port.artefact import sha256_file as file_sha256
from port.atomic import write_text_atomic
from port.paths import repo_root, shared_root

from . import engines, rootfs

__all__ = ["MEANS_DIR", "PROTOTXT", "generate_reference", "write_manifest", "file_sha256"]

PROTOTXT = shared_root() / "reference" / "mfv-original" / "deploy_alexnet_updated.prototxt"
MEANS_DIR = shared_root() / "reference" / "mfv-original" / "mean_images" / "n07720875"
GOLDEN_MFV = repo_root() / "golden" / "mfv"
#: OpenBLAS on its baseline kernel, one thread, as for the blob goldens: the kernel choice (and so
#: the rounding) would otherwise depend on the CPU; one thread keeps timings comparable with ATLAS
#: (Debian's ATLAS is single-threaded) and leaves the second core to other work.
REFERENCE_ENV = {
    "OPENBLAS_CORETYPE": "Prescott",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}


def _stage(src: Path, dst: Path) -> None:
    """Put a (possibly 240 MB) file into the exchange folder: hard link when possible."""
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def generate_reference(
    out: str | Path,
    *,
    blas: str,
    facets: list[int] = (0, 1, 2),
    unit: int = 945,
    seed: int = 1,
    caffemodel: str | Path | None = None,
    means_dir: str | Path = MEANS_DIR,
    max_octaves: int | None = None,
    env: dict[str, str | None] | None = None,
) -> dict:
    """Run the original loop on real Caffe and write images + ``trace.json`` into ``out``.

    Parameters
    ----------
    out : path
        Output folder (created).
    blas : {"atlas", "openblas"}
        The Caffe build.
    facets : list of int
        Mean images to start from (``mean_<k>.jpg``), run one after another in one process, each
        with a freshly seeded global random stream (as separate runs of the original were).
    unit, seed : int
        Target unit of fc8, seed of the global NumPy stream.
    caffemodel : path, optional
        Weights (default: the seeded CaffeNet of the goldens, ``golden_weights("caffenet")``).
    means_dir : path
        Folder with ``mean_<k>.jpg``.
    max_octaves : int, optional
        Stop after this many octaves (tests).
    env : dict, optional
        Replaces entries of :data:`REFERENCE_ENV`; a value of None removes one (the benchmarks run
        OpenBLAS on its own kernel and threads, as a user of the original would).

    Returns
    -------
    dict
        The trace written to ``out/trace.json``.
    """
    out = Path(out)
    if caffemodel is None:
        from .goldens import golden_weights

        caffemodel = golden_weights("caffenet")
    caffemodel = Path(caffemodel)
    exchange = rootfs.exchange_dir()
    exchange.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mfv-ref-", dir=exchange))
    try:
        _stage(caffemodel, work / "weights.caffemodel")
        shutil.copyfile(PROTOTXT, work / "deploy.prototxt")
        argv = ["python3", f"{rootfs.INSIDE_MOUNT}/mfv_original.py",
                "--prototxt", rootfs.host_to_inside(work / "deploy.prototxt"),
                "--caffemodel", rootfs.host_to_inside(work / "weights.caffemodel"),
                "--unit", str(unit), "--seed", str(seed),
                "--out", rootfs.host_to_inside(work / "result.npz"),
                "--trace", rootfs.host_to_inside(work / "trace.json")]  # fmt: skip
        inits = _stage_means(work, Path(means_dir), facets, argv)
        if max_octaves is not None:
            argv += ["--max-octaves", str(max_octaves)]
        t0 = time.perf_counter()
        inner = {k: v for k, v in {**REFERENCE_ENV, **(env or {})}.items() if v is not None}
        engines.run_inside(argv, blas=blas, env=inner)
        wall = time.perf_counter() - t0
        info = json.loads((work / "trace.json").read_text())
        _write_images(work / "result.npz", info, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env = info["environment"]
    if env.get("blas") != blas:
        raise rootfs.LegacyCaffeError(f"asked for {blas} but Caffe loaded {env.get('blas_loaded')}")
    trace = _trace(
        info, blas=blas, seed=seed, unit=unit, caffemodel=caffemodel, wall=wall, inits=inits
    )
    write_text_atomic(out / "trace.json", json.dumps(trace, indent=1) + "\n")
    return trace


def _stage_means(work: Path, means_dir: Path, facets: list[int], argv: list[str]) -> dict:
    """Decode ``mean_<k>.jpg`` here (mfv's decoder) into the exchange folder; adds ``--init`` args.

    Returns, per facet, the JPEG's name and the checksums of the file and of the decoded pixels.
    """
    from port.images import load_rgb

    inits = {}
    for k in facets:
        jpg = means_dir / f"mean_{k}.jpg"
        img = load_rgb(jpg)
        np.save(work / f"mean_{k}.npy", img)
        inits[k] = {
            "file": jpg.name,
            "sha256": file_sha256(jpg),
            "decoded_sha256": hashlib.sha256(img.tobytes()).hexdigest(),
        }
        argv += ["--init", rootfs.host_to_inside(work / f"mean_{k}.npy"), "--index", str(k)]
    return inits


def _write_images(result: Path, info: dict, out: Path) -> None:
    """Every facet's image after each octave, and the final image of facets that finished."""
    from port.images import save_image

    out.mkdir(parents=True, exist_ok=True)
    with np.load(result) as z:
        for f in info["facets"]:
            k = f["index"]
            for j in range(1, f["octaves_done"] + 1):
                save_image(out / f"facet_{k}_octave{j}.png", z[f"facet_{k}_octave{j}"])
            if f["octaves_done"] == len(info["octaves"]):
                save_image(out / f"facet_{k}.png", z[f"facet_{k}_octave{f['octaves_done']}"])


def _trace(
    info: dict, *, blas: str, seed: int, unit: int, caffemodel: Path, wall: float, inits: dict
) -> dict:
    """The run in ``mfv visualize``'s trace format (mfv-trace/1), from the script's own record."""
    return {
        "format": "mfv-trace/1",
        "source": "legacy_caffe mfv-reference (inside/mfv_original.py on real Caffe)",
        "blas": blas,
        "mode": "faithful",
        "seed": seed,
        "objective": {"kind": "unit", "layer": info["layer"], "unit": unit},
        "schedule": {"name": "published CaffeNet mean-image schedule", "octaves": info["octaves"]},
        "denoiser": info["denoiser"] + "; border of scikit-image >= 0.15 (0.13 reflected at "
        "bottom/right)",
        "weights": {"path": str(caffemodel), "sha256": file_sha256(caffemodel)},
        "prototxt": {"path": str(PROTOTXT), "sha256": file_sha256(PROTOTXT)},
        "environment": info["environment"],
        "wall_seconds": round(wall, 1),
        "facets": [
            {
                "index": f["index"],
                "init": inits[f["index"]]["file"],
                "init_sha256": inits[f["index"]],
                "status": "done" if f["octaves_done"] == len(info["octaves"]) else "partial",
                "octaves_done": f["octaves_done"],
                "octaves_total": len(info["octaves"]),
                "seconds": f["seconds"],
                "octave_seconds": f.get("octave_seconds"),
                "final_activation": f["steps"][-1]["activation"],
                "image": f"facet_{f['index']}.png",
                "steps": f["steps"],
            }
            for f in info["facets"]
        ],
    }


def write_manifest(golden: str | Path = GOLDEN_MFV) -> dict:
    """Summarise ``golden/mfv/<blas>/trace.json`` into ``golden/mfv/manifest.json``.

    Records per BLAS: versions, libraries, seed, unit, weights sha256, per-facet seconds and final
    activation, and every image's sha256.
    """
    golden = Path(golden)
    man: dict = {"format": "mfv-reference/1",
                 "spec": "shared/spec/original-mfv.md", "builds": {}}  # fmt: skip
    for tr_path in sorted(golden.glob("*/trace.json")):
        tr = json.loads(tr_path.read_text())
        env = tr["environment"]
        man["builds"][tr_path.parent.name] = {
            "blas": tr["blas"], "blas_loaded": env["blas_loaded"], "openblas": env.get("openblas"),
            "threads_env": env.get("threads_env"), "caffe": env["caffe"], "python": env["python"],
            "numpy": env["numpy"], "debian": env["debian"], "packages": env["packages"],
            "cpu": env["cpu"], "seed": tr["seed"], "objective": tr["objective"],
            "weights_sha256": tr["weights"]["sha256"], "prototxt_sha256": tr["prototxt"]["sha256"],
            "denoiser": tr["denoiser"], "wall_seconds": tr["wall_seconds"],
            "facets": {str(f["index"]): {"init": f["init"], "seconds": f["seconds"],
                                         "final_activation": f["final_activation"]}
                       for f in tr["facets"]},
            "images": {p.name: file_sha256(p) for p in sorted(tr_path.parent.glob("*.png"))},
        }  # fmt: skip
    write_text_atomic(golden / "manifest.json", json.dumps(man, indent=1) + "\n")
    return man
