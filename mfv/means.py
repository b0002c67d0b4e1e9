"""Mean images of a class's facets (Nguyen et al. 2016, section 3.1; their code was never published).

Codes of every image at a layer (fc7) -> PCA to 50 dimensions -> t-SNE to 2-D -> k-means with k
clusters in the embedding -> for each cluster, the pixel mean of the m images nearest its centroid
(in the embedding). The published mean images of class 945 are, within JPEG error, the rounded
uint8 mean of their 15 crops saved as JPEG at quality 75 (measured: see the tests).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import _io
from .models import Model

__all__ = [
    "IMAGE_SUFFIXES",
    "find_images",
    "load_images",
    "compute_codes",
    "cluster_codes",
    "mean_image",
    "make_means",
    "MeansResult",
    "read_clusters",
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


def load_images(
    paths: list[Path], size: tuple[int, int], *, keep_grey: bool = True
) -> tuple[list[Path], np.ndarray, list[str]]:
    """Read images the way Caffe's loader did (:func:`mfv._io.load_rgb`) and fit them to ``size``
    (shorter side resized, bicubic, then centre crop).

    Returns the paths kept, an (N, H, W, 3) uint8 array and one message per skipped file
    (unreadable, or greyscale with ``keep_grey=False``). By default greyscale images are
    replicated to RGB as Caffe's ``caffe.io.load_image`` did; the published mean_5 of class 945
    contains such a crop.
    """
    kept, arrays, skipped = [], [], []
    for p in paths:
        try:
            arrays.append(_io.fit_to(_io.load_rgb(p, keep_grey=keep_grey), size))
            kept.append(p)
        except _io.ImageReadError as e:
            skipped.append(str(e))
    stack = np.stack(arrays) if arrays else np.zeros((0, size[0], size[1], 3), np.uint8)
    return kept, stack, skipped


def compute_codes(
    model: Model, images: np.ndarray, layer: str, *, batch_size: int = 16, progress: bool = True
) -> np.ndarray:
    """Activations of ``layer`` for (N, H, W, 3) images, flattened: (N, D) float64."""
    out = []
    with torch.no_grad():
        for i in tqdm(
            range(0, len(images), batch_size),
            desc=f"codes at {layer}",
            disable=not progress,
            unit="batch",
        ):
            x = torch.from_numpy(
                np.ascontiguousarray(np.transpose(images[i : i + batch_size], (0, 3, 1, 2)))
            )
            a = model.activations(x.float(), [layer])[layer]
            out.append(a.reshape(a.shape[0], -1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


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

    n = len(codes)
    if n < k * m:
        raise ValueError(f"{n} images are fewer than k * m = {k * m}")
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


def mean_image(images: np.ndarray) -> np.ndarray:
    """Pixel mean of (N, H, W, 3) uint8 images, rounded to uint8 (as the published means were)."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float64).mean(axis=0)), 0, 255).astype(
        np.uint8
    )


@dataclass
class MeansResult:
    paths: list[Path]
    clusters: dict
    means: list[np.ndarray]
    skipped: list[str]


def make_means(
    model: Model,
    folder: str | Path,
    *,
    k: int = 10,
    m: int = 15,
    layer: str | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    batch_size: int = 16,
    keep_grey: bool = True,
    exclude: tuple[str, ...] = (),
    progress: bool = True,
) -> MeansResult:
    """The whole ``means`` command: codes, clusters, mean images, ``clusters.json``, ``tsne.png``.

    Parameters
    ----------
    model : Model
    folder : path
        Images of one class (searched recursively).
    k, m : int
        Clusters, and images averaged per cluster.
    layer : str, optional
        Code layer (default: the model's fc7 equivalent).
    seed : int
        Clustering seed.
    out : path, optional
        Output folder.
    batch_size : int
        Images per forward pass.
    keep_grey : bool
        Replicate greyscale images to RGB as Caffe did (default); ``False`` skips them.
    exclude : tuple of str
        Globs (relative paths) of files to leave out.
    progress : bool
        Progress bar.
    """
    layer = layer or (model.spec.code_layer if model.spec else None)
    if layer is None:
        raise ValueError("no code layer given and the model has no default")
    paths, images, skipped = load_images(
        find_images(folder, exclude=tuple(exclude)),
        model.convention.input_size,
        keep_grey=keep_grey,
    )
    for msg in skipped:
        tqdm.write(f"skipped: {msg}")
    if len(paths) < k * m:
        raise ValueError(
            f"only {len(paths)} usable images in {folder} ({len(skipped)} skipped); need k * m = {k * m}"
        )
    codes = compute_codes(model, images, layer, batch_size=batch_size, progress=progress)
    cl = cluster_codes(codes, k=k, m=m, seed=seed)
    means = [mean_image(images[idx]) for idx in cl["members"]]
    if out is not None:
        out = Path(out)
        text = _io.provenance_text(model.info.get("parity"))
        for i, mi in enumerate(means):
            _io.save_image(out / f"mean_{i}.png", mi, text=text)
            _io.save_image(out / f"mean_{i}.jpg", mi, quality=75, text=text)
        root = Path(folder)
        record = {
            "format": "mfv-clusters/1",
            "images_root": str(root.resolve()),
            "model": {"name": model.name, "convention": model.convention.as_dict(), **model.info},
            "parity": model.info.get("parity"),
            "layer": layer,
            "k": k,
            "m": m,
            "seed": seed,
            "pca_dims": cl["pca_dims"],
            "tsne_perplexity": cl["perplexity"],
            "preprocessing": f"shorter side resized to {model.convention.input_size} (bicubic), centre crop",
            "skipped": skipped,
            "exclude": list(exclude),
            "keep_grey": keep_grey,
            "images": [
                {
                    "path": str(p.relative_to(root)),
                    "x": float(e[0]),
                    "y": float(e[1]),
                    "cluster": int(c),
                }
                for p, e, c in zip(paths, cl["embedding"], cl["labels"], strict=True)
            ],
            "clusters": [
                {
                    "index": i,
                    "centroid": [float(v) for v in cl["centroids"][i]],
                    "mean_image": f"mean_{i}.png",
                    "members": [str(paths[j].relative_to(root)) for j in cl["members"][i]],
                }
                for i in range(k)
            ],
        }
        _io.write_json(out / "clusters.json", record)
        from .report import draw_tsne

        _io.save_image(
            out / "tsne.png",
            draw_tsne(cl["embedding"], cl["labels"], cl["centroids"], means),
            text=text,
        )
    return MeansResult(paths, cl, means, skipped)


def read_clusters(folder: str | Path) -> dict:
    """Clusters of a ``means`` output folder, or of the published layout (``mean_<i>.jpg`` beside
    folders ``<i>/`` holding each mean's crops), as ``{"clusters": [{"index", "mean_image",
    "members": [absolute paths]}]}``."""
    folder = Path(folder)
    cj = folder / "clusters.json"
    if cj.exists():
        import json

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
