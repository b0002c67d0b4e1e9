"""One facet's state and the pieces of a step both engines share (crops, objective, checks, saves).

The MFV loop is split by what a piece of it does: this module (a facet, its random draws, the
objective over a batch of jobs, an octave's start and end), :mod:`mfv.loop.checkpoint` (state on
disk), :mod:`mfv.loop.host` (a step in numpy on the host) and :mod:`mfv.loop.device` (a whole
octave on the model's device). :mod:`mfv.visualize` drives them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from .. import _io
from ..errors import MfvError
from ..models import Model
from ..objectives import Objective, softmax_unit, unit
from ..octaves import Octave

#: The faithful denoiser call: scikit-image 0.13's defaults (max_iter=100, eps=1e-3, isotropic) on
#: the whole HxWx3 image at once, one joint stopping test (channel_axis=None; see the spec).
TV_MAX_ITER = 100

TV_EPS = 1e-3


@dataclass
class FacetState:
    """One facet's progress: image, random stream and trace; enough to resume at any step."""

    index: int
    init: str
    image: np.ndarray  # (3, H, W) float32, pixel space
    rng: np.random.RandomState
    octaves_done: int = 0
    steps: list = field(default_factory=list)
    status: str = "running"  # running | done | failed
    message: str = ""
    seconds: float = 0.0
    octave_seconds: list = field(default_factory=list)  # seconds of each finished octave
    cluster: int | None = None
    job: int = 0  # which UnitJob of a batched run
    steps_done: int = 0  # steps taken in octave ``octaves_done`` (0: not started, not yet zoomed)
    fail_octave: int | None = (
        None  # the octave it failed in (it stays frozen in that octave's batch)
    )


@dataclass
class JobRun:
    """One job's facets, trace metadata and output folder."""

    states: list[FacetState]
    meta: dict
    out: Path | None


def noise_image(rng: np.random.RandomState, size: tuple[int, int]) -> np.ndarray:
    """The original's first draw: an HxWx3 N(175, 8) image (float64), whatever the init."""
    return rng.normal(175, 8, (size[0], size[1], 3))


def crop_offset(rng: np.random.RandomState, span: int, window: float) -> int:
    """One jitter offset in [0, span]: N(span / 2, span * window), clipped, truncated to int.

    Draws with ``size=1`` and takes the element (the NumPy 2 porting trap in the spec), one
    Gaussian per call as the original consumed them.
    """
    v = rng.normal(span / 2.0, span * window, 1)[0]
    return int(np.clip(v, 0, span))


def denoise(image_hwc: np.ndarray, weight: float) -> np.ndarray:
    """TV-Bregman as the original called it (float64 in, float64 out, HxWx3, grey levels)."""
    # Imported here: skimage.restoration pulls in scipy.stats (~0.5 s of every run's start-up),
    # and only the modes that denoise with scikit-image need it.
    from skimage.restoration import denoise_tv_bregman

    return denoise_tv_bregman(
        np.asarray(image_hwc, dtype=np.float64),
        weight=weight,
        max_num_iter=TV_MAX_ITER,
        eps=TV_EPS,
        isotropic=True,
        channel_axis=None,
    )


def zoom_image(image: np.ndarray, factor: float, mean_pixels: np.ndarray) -> np.ndarray:
    """Zoom a (3, H, W) pixel-space image the way the original did: on the mean-subtracted
    network input (so the spline's constant border is the mean colour), cubic, scipy defaults."""
    mean = mean_pixels.astype(image.dtype)[:, None, None]
    return ndimage.zoom(image - mean, (1, factor, factor)) + mean


def objective_for(objective: Objective, octave: Octave) -> Objective:
    """An octave may retarget a unit objective to another layer (the centre-bias schedule's prob)."""
    if octave.layer is None or octave.layer == objective.layers[0]:
        return objective
    kind = objective.spec.get("kind")
    if kind == "unit":
        return unit(octave.layer, objective.spec["unit"])
    if kind == "softmax_unit":
        return softmax_unit(octave.layer, objective.spec["unit"])
    raise MfvError(f"schedule retargets to {octave.layer!r}, which needs a unit objective")


def save_u8(state: FacetState, faithful: bool) -> np.ndarray:
    return _io.to_uint8(np.transpose(state.image, (1, 2, 0)), wrap=faithful)


def fail(s: FacetState, msg: str, octave: int) -> None:
    s.status, s.message, s.fail_octave = "failed", msg, octave
    tqdm.write(f"facet {s.index} ({s.init}) stopped: {msg}")


def each_facet(fn: Callable[[FacetState], None], facets: Iterable[FacetState]) -> None:
    """``fn`` on every facet, on as many threads as torch has. For the per-facet work between
    steps (scipy's zoom, PNG encoding), which releases the GIL and would leave all but one core
    idle: a 3 x 251 x 251 zoom takes ~80 ms, ten facets' zooms ~0.8 s on one thread. Each facet's
    result is the same whichever thread computes it."""
    facets = list(facets)
    workers = min(len(facets), torch.get_num_threads())
    if workers <= 1:
        for s in facets:
            fn(s)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(fn, facets):  # re-raises a facet's exception here
            pass


def zoom_running(
    group: list[FacetState], zoom: float, mean_px: np.ndarray, *, faithful: bool
) -> None:
    """The start of a zooming octave: every running facet's image grows (clipped, unless faithful)."""

    def grow(s: FacetState) -> None:
        s.image = zoom_image(s.image, zoom, mean_px).astype(np.float32)
        if not faithful:
            np.clip(s.image, 0, 255, out=s.image)

    each_facet(grow, (s for s in group if s.status == "running"))


def end_octave(
    model: Model,
    group: list[FacetState],
    outs: list[Path | None],
    k: int,
    *,
    last: bool,
    faithful: bool,
) -> None:
    """Octave ``k`` is over: the running facets move on (or are done, after the ``last`` octave) and
    their images are saved, the octave's and, when done, the final one."""
    text = _io.provenance_text(model.info.get("parity"))

    def save(s: FacetState) -> None:
        out = outs[s.job]
        u8 = save_u8(s, faithful)
        png = _io.save_image(out / f"facet_{s.index}_octave{k + 1}.png", u8, text=text)
        if s.status == "done":  # the final image is the last octave's: the same bytes
            _io.atomic_write_bytes(out / f"facet_{s.index}.png", png)
            if faithful:  # the original also wrote a JPEG
                _io.save_image(out / f"facet_{s.index}.jpg", u8, text=text)

    running = [s for s in group if s.status == "running"]
    for s in running:
        s.octaves_done, s.steps_done = k + 1, 0
        s.octave_seconds.append(s.seconds - sum(s.octave_seconds))
        if last:
            s.status = "done"
    each_facet(save, (s for s in running if outs[s.job] is not None))


def draw_offsets(
    active: list[FacetState], octave: Octave, size: tuple[int, int]
) -> list[tuple[int, int]]:
    """Each facet's crop offsets for this step, drawn from its own stream (x, then y)."""
    h, w = size
    offsets = []
    for s in active:
        span_x, span_y = s.image.shape[-2] - h, s.image.shape[-1] - w
        if span_x > 0 or span_y > 0:  # the image outgrew the input: jitter
            offsets.append(
                (
                    crop_offset(s.rng, span_x, octave.window),
                    crop_offset(s.rng, span_y, octave.window),
                )
            )
        else:
            offsets.append((0, 0))
    return offsets


def evaluate_batch(
    model: Model, objs: list[Objective], active: list[FacetState], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward for the whole batch; each job's objective on its own (contiguous) facets.

    Returns the target values (N,) and the best unit per facet ((N,) long, or None when some
    objective has no notion of it).
    """
    jobs = [s.job for s in active]
    layers = tuple(dict.fromkeys(name for j in dict.fromkeys(jobs) for name in objs[j].layers))
    acts = model.activations(x, layers)
    values, bests = [], []
    start = 0
    for j in dict.fromkeys(jobs):
        n = jobs.count(j)
        part = {name: a[start : start + n] for name, a in acts.items()}
        values.append(objs[j](part))
        best = objs[j].best_units({name: a.detach() for name, a in part.items()})
        bests.append(best)
        start += n
    best = None if any(b is None for b in bests) else torch.cat(bests)
    return torch.cat(values), best


def margin_mask(octave: Octave, size: tuple[int, int]) -> np.ndarray | None:
    if octave.margin <= 0:
        return None
    h, w = size
    m = octave.margin
    mask = np.zeros((h, w), dtype=bool)
    mask[m : h - m, m : w - m] = True
    return mask


def problem_of(grad_finite: bool, value_finite: bool, grad_nonzero: bool) -> str | None:
    """Why a facet cannot take its step, if it cannot."""
    if not grad_finite:
        return "NaN/Inf in the gradient"
    if not value_finite:
        return "NaN/Inf target activation"
    if not grad_nonzero:
        return "zero gradient (the step size would be infinite; dead unit?)"
    return None
