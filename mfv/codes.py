"""Codes of images at a layer, their clusters, and the training images nearest a result.

One batched forward path (:func:`compute_codes`) serves the mean images (:mod:`mfv.means`), the
nearest training images of a visualize report and the evaluation (:mod:`mfv.evaluate`); the
cluster files a means run writes (or the published layout) are read here too, so that neither
the report nor the evaluation has to import the other.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import _io
from .errors import MfvError
from .models import Model

__all__ = [
    "IMAGE_SUFFIXES",
    "as_input",
    "check_k_m",
    "cluster_codes",
    "compute_codes",
    "facet_path",
    "find_images",
    "image_batch",
    "nearest_training_images",
    "read_clusters",
    "real_images",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp", ".gif")


def find_images(folder: str | Path, *, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Every file under ``folder`` (recursively, sorted) whose suffix looks like an image, minus
    those whose path relative to ``folder`` matches a glob in ``exclude``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(fnmatch.fnmatch(str(p.relative_to(folder)), g) for g in exclude)
    )


def image_batch(images) -> torch.Tensor:
    """(N, H, W, 3) images (an array or a list of arrays, grey levels) as a contiguous float32
    (N, 3, H, W) tensor: the one layout every forward of real or facet images gets."""
    arr = np.stack(images) if isinstance(images, list) else np.asarray(images)
    return torch.from_numpy(np.ascontiguousarray(np.transpose(arr, (0, 3, 1, 2)))).float()


def compute_codes(
    model: Model, images, layer: str, *, batch_size: int = 16, progress: bool = True
) -> np.ndarray:
    """Activations of ``layer`` for (N, H, W, 3) images, flattened: (N, D) float64.

    Parameters
    ----------
    model : Model
    images : array (N, H, W, 3) or list of (H, W, 3) arrays
        Grey levels at the model's input size.
    layer : str
    batch_size : int
        Images per forward pass.
    progress : bool
        Show a progress bar.
    """
    out = []
    with torch.no_grad():
        for i in tqdm(
            range(0, len(images), batch_size),
            desc=f"codes at {layer}",
            disable=not progress,
            unit="batch",
        ):
            a = model.activations(image_batch(images[i : i + batch_size]), [layer])[layer]
            out.append(a.reshape(a.shape[0], -1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def check_k_m(k: int, m: int) -> None:
    """Refuse cluster counts no clustering can use: ``k`` clusters of ``m`` images, both >= 1.

    Raises
    ------
    ValueError
        Naming the value (``m = 0`` would average no images into a NaN mean image).
    """
    for name, v in (("k", k), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise MfvError(f"{name} must be a whole number >= 1, got {v!r}")


def cluster_codes(
    codes: np.ndarray,
    *,
    k: int,
    m: int,
    seed: int = 0,
    pca_dims: int = 50,
    perplexity: float = 30.0,
) -> dict:
    """PCA -> t-SNE -> k-means; the m members nearest each centroid.

    Parameters
    ----------
    codes : (N, D) array
    k, m : int
        Number of clusters and images averaged per cluster.
    seed : int
        Seeds PCA (randomised solver), t-SNE and k-means: same seed, same clusters.
    pca_dims : int
        PCA dimensions (capped by N and D).
    perplexity : float
        t-SNE perplexity, capped below N / 3 for small sets.

    Returns
    -------
    dict
        ``embedding`` (N, 2), ``labels`` (N,), ``centroids`` (k, 2), ``members`` (k lists of m
        indices, nearest first), ``pca_dims``, ``perplexity``.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    check_k_m(k, m)
    n = len(codes)
    if n < k * m:
        raise MfvError(f"{n} images are fewer than k * m = {k * m}")
    # Identical codes leave PCA nothing to keep and t-SNE dividing by zero (scikit-learn then
    # crashed the process); fewer distinct codes than clusters cannot make k clusters anyway.
    distinct = len(np.unique(codes, axis=0))
    if distinct < k:
        raise MfvError(
            f"the {n} codes take only {distinct} distinct value(s), fewer than k = {k} clusters: "
            "are the images copies of one another, or is the code layer constant?"
        )
    dims = int(min(pca_dims, n, codes.shape[1]))
    perp = float(min(perplexity, max(2.0, (n - 1) / 3.0)))
    # One thread: results then do not depend on the thread count, and on a busy machine OpenMP's
    # spinning threads made t-SNE of 150 points take 50 s instead of 2 s (measured).
    with threadpool_limits(limits=1):
        reduced = PCA(n_components=dims, random_state=seed).fit_transform(codes)
        emb = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(
            reduced
        )
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(emb)
    members = []
    for c in range(k):
        d = np.linalg.norm(emb - km.cluster_centers_[c], axis=1)
        # Nearest to the centroid, from anywhere: the paper averages the m images closest to it.
        members.append([int(i) for i in np.argsort(d, kind="stable")[:m]])
    return {
        "embedding": emb,
        "labels": km.labels_.astype(int),
        "centroids": km.cluster_centers_,
        "members": members,
        "pca_dims": dims,
        "perplexity": perp,
    }


def read_clusters(folder: str | Path) -> dict:
    """Clusters of a ``means`` output folder, or of the published layout (``mean_<i>.jpg`` beside
    folders ``<i>/`` holding each mean's crops), as ``{"clusters": [{"index", "mean_image",
    "members": [absolute paths]}]}``."""
    folder = Path(folder)
    cj = folder / "clusters.json"
    if cj.exists():
        data = json.loads(cj.read_text())
        root = Path(data["images_root"])
        for c in data["clusters"]:
            c["members"] = [str(root / p) for p in c["members"]]
            c["mean_image"] = str(folder / c["mean_image"])
        return data
    clusters = []
    i = 0
    while (folder / str(i)).is_dir():
        mean = next(
            (
                folder / f"mean_{i}{s}"
                for s in (".png", ".jpg")
                if (folder / f"mean_{i}{s}").exists()
            ),
            None,
        )
        clusters.append(
            {
                "index": i,
                "mean_image": None if mean is None else str(mean),
                "members": [str(p) for p in find_images(folder / str(i))],
            }
        )
        i += 1
    if not clusters:
        raise FileNotFoundError(
            f"{folder}: neither clusters.json nor folders 0/, 1/, ... of a published layout"
        )
    return {"format": "published-layout", "clusters": clusters}


def real_images(means_dir: str | Path) -> tuple[list[str], list[int], list[str | None]]:
    """The training images of a means folder: paths, cluster labels, and each cluster's mean image."""
    data = read_clusters(means_dir)
    if "images" in data:  # a means output: every image with its cluster
        root = Path(data["images_root"])
        paths = [str(root / d["path"]) for d in data["images"]]
        labels = [int(d["cluster"]) for d in data["images"]]
    else:  # the published layout: only each mean's members are known
        paths = [p for c in data["clusters"] for p in c["members"]]
        labels = [c["index"] for c in data["clusters"] for _ in c["members"]]
    return paths, labels, [c.get("mean_image") for c in data["clusters"]]


def facet_path(out: Path, f: dict) -> Path | None:
    """A facet's final image, else its last octave's, else None."""
    p = out / f"facet_{f['index']}.png"
    if p.exists():
        return p
    p = out / f"facet_{f['index']}_octave{f.get('octaves_done', 0)}.png"
    return p if p.exists() else None


def as_input(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """An image file at the model's input size (bicubic resize when it is not), uint8 RGB."""
    img = _io.load_rgb(path)
    if img.shape[:2] != tuple(size):
        img = np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BICUBIC))
    return img


def nearest_training_images(model: Model, out: Path, trace: dict, *, n: int = 3) -> dict:
    """The ``n`` real images nearest each facet in code space: {facet: [(path, distance, cluster)]}."""
    layer = trace.get("code_layer") or (model.spec.code_layer if model.spec else None)
    paths, labels, _ = real_images(trace["means"])
    size = model.convention.input_size
    facets = [(f["index"], facet_path(out, f)) for f in trace["facets"]]
    facets = [(i, p) for i, p in facets if p is not None]
    if not facets or not paths:
        return {}
    real = compute_codes(model, [as_input(p, size) for p in paths], layer, progress=False)
    fc = compute_codes(model, [as_input(p, size) for _, p in facets], layer, progress=False)
    result = {}
    for (i, _), code in zip(facets, fc, strict=True):
        d = np.linalg.norm(real - code, axis=1)
        order = np.argsort(d, kind="stable")[:n]
        result[i] = [(paths[j], float(d[j]), labels[j]) for j in order]
    return result
