"""Mean images of a class's facets (Nguyen et al. 2016, section 3.1; their code was never published).

Codes of every image at a layer (fc7) -> PCA to 50 dimensions -> t-SNE to 2-D -> k-means with k
clusters in the embedding -> for each cluster, the pixel mean of the m images nearest its centroid
(in the embedding). The published mean images of class 945 are, within JPEG error, the rounded
uint8 mean of their 15 crops saved as JPEG at quality 75 (measured: see the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import _io
from .codes import (
    IMAGE_SUFFIXES,
    check_k_m,
    cluster_codes,
    compute_codes,
    find_images,
    read_clusters,
)
from .errors import MfvError
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
    check_k_m(k, m)  # before any image is read
    layer = layer or (model.spec.code_layer if model.spec else None)
    if layer is None:
        raise MfvError("no code layer given and the model has no default")
    paths, images, skipped = load_images(
        find_images(folder, exclude=tuple(exclude)),
        model.convention.input_size,
        keep_grey=keep_grey,
    )
    for msg in skipped:
        tqdm.write(f"skipped: {msg}")
    if len(paths) < k * m:
        raise MfvError(
            f"only {len(paths)} usable images in {folder} ({len(skipped)} skipped); need k * m = {k * m}"
        )
    codes = compute_codes(model, images, layer, batch_size=batch_size, progress=progress)
    cl = cluster_codes(codes, k=k, m=m, seed=seed)
    means = [mean_image(images[idx]) for idx in cl["members"]]
    if out is not None:
        inputs = {"skipped": skipped, "exclude": list(exclude), "keep_grey": keep_grey}
        settings = {"layer": layer, "k": k, "m": m, "seed": seed}
        record = _clusters_record(model, Path(folder), paths, cl, settings, inputs)
        _write_means(model, Path(out), means, cl, record)
    return MeansResult(paths, cl, means, skipped)


def _clusters_record(
    model: Model, root: Path, paths: list[Path], cl: dict, settings: dict, inputs: dict
) -> dict:
    """``clusters.json``: the clustering, every image with its place in the embedding, the means."""
    return {
        "format": "mfv-clusters/1",
        "images_root": str(root.resolve()),
        "model": {"name": model.name, "convention": model.convention.as_dict(), **model.info},
        "parity": model.info.get("parity"),
        **settings,  # layer, k, m, seed
        "pca_dims": cl["pca_dims"],
        "tsne_perplexity": cl["perplexity"],
        "preprocessing": f"shorter side resized to {model.convention.input_size} (bicubic), centre crop",
        **inputs,  # skipped, exclude, keep_grey
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
            for i in range(settings["k"])
        ],
    }


def _write_means(model: Model, out: Path, means: list, cl: dict, record: dict) -> None:
    """The mean images (PNG and JPEG), ``clusters.json`` and ``tsne.png`` in ``out``."""
    from .report import draw_tsne

    text = _io.provenance_text(model.info.get("parity"))
    for i, mi in enumerate(means):
        _io.save_image(out / f"mean_{i}.png", mi, text=text)
        _io.save_image(out / f"mean_{i}.jpg", mi, quality=75, text=text)
    _io.write_json(out / "clusters.json", record)
    _io.save_image(
        out / "tsne.png",
        draw_tsne(cl["embedding"], cl["labels"], cl["centroids"], means),
        text=text,
    )
