"""A whole octave on the model's device (the default mode with the torch denoiser).

The host draws the crop offsets and reads the trace back once per octave and at each checkpoint;
every other piece of a step (gradient, checks, move, denoising) stays on the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..models import Model
from ..objectives import Objective
from ..octaves import Octave, step_size, tv_weight
from .checkpoint import Saver
from .facet import (
    TV_EPS,
    TV_MAX_ITER,
    FacetState,
    draw_offsets,
    evaluate_batch,
    fail,
    margin_mask,
    problem_of,
)


@dataclass
class _DeviceRow:
    """One device step's trace, left on the device until the next host read."""

    step: int
    offsets: list[tuple[int, int]]  # each facet's crop offsets (drawn on the host)
    step_size: float
    tv_weight: float
    # (7, N) float64: value, mean |g|, gradient finite, value finite, gradient nonzero, image
    # finite after denoising, alive before the step.
    stats: torch.Tensor
    best: torch.Tensor | None  # (N,) best unit per facet, or None


@dataclass
class _DeviceOctave:
    """One octave's batch on the device, and the trace rows not yet read by the host."""

    active: list[FacetState]
    k: int  # the octave's index
    imgs: torch.Tensor  # (N, 3, H', W') the facets' images
    alive: torch.Tensor  # (N,) bool: not frozen
    mask: torch.Tensor | None  # the octave's margin mask (H, W)
    t0: float  # when the facets' time was last counted
    rows: list[_DeviceRow] = field(default_factory=list)


def octave_on_device(
    model: Model,
    objs: list[Objective],
    active: list[FacetState],
    octave: Octave,
    k: int,
    *,
    size: tuple[int, int],
    bar,
    first: int = 0,
    saver: Saver | None = None,
    checkpoint: Callable[[int, int], None] | None = None,
) -> None:
    """One octave (from step ``first``) of the default mode with the torch denoiser, every step on
    the model's device.

    The host draws the crop offsets (each facet's own stream, no device data needed) and reads the
    trace at the end of the octave and at each checkpoint. A facet that meets NaN/Inf or a zero
    gradient is frozen on the device from that step on and reported at the next read, as the host
    loop would; facets that failed earlier in this octave come in frozen.
    """
    from ..tv_bregman import denoise_tv_bregman as tv

    dev = model.device
    t0 = time.perf_counter()
    imgs = torch.from_numpy(np.stack([s.image for s in active])).to(dev)
    alive = torch.tensor([s.status == "running" for s in active], dtype=torch.bool, device=dev)
    mask = margin_mask(octave, size)
    run = _DeviceOctave(
        active, k, imgs, alive, None if mask is None else torch.from_numpy(mask).to(dev), t0
    )
    for i in range(first, octave.iter_n):
        _device_step(model, objs, run, octave, i, size=size, tv=tv)
        bar.update(1)
        if saver is not None and i + 1 < octave.iter_n and saver.due():
            _read_back(run)
            checkpoint(k, i + 1)
    _read_back(run)


def _device_step(  # long: one optimiser step in its fixed order (jitter, pass, TV, clip, checks)
    model: Model,
    objs: list[Objective],
    run: _DeviceOctave,
    octave: Octave,
    i: int,
    *,
    size: tuple[int, int],
    tv: Callable[..., torch.Tensor],
) -> None:
    """Step ``i`` of every facet of ``run`` on the device; its trace row joins ``run.rows``.

    One piece: the gradient, its checks, the move and the denoising share the step's tensors.
    """
    h, w = size
    offsets = draw_offsets(run.active, octave, size)
    whole = run.imgs.shape[-2:] == (h, w)  # no jitter yet: every offset is (0, 0)
    if whole:
        crops = run.imgs
    else:
        crops = torch.stack(
            [run.imgs[j, :, ox : ox + h, oy : oy + w] for j, (ox, oy) in enumerate(offsets)]
        )
    x = crops.to(model.dtype).detach().requires_grad_(True)  # crops itself stays out of the graph
    value, best = evaluate_batch(model, objs, run.active, x)
    value.sum().backward()
    g = x.grad.detach().float()
    if run.mask is not None:
        g = g * run.mask
    # mean |g| in one pass (an L1 norm); same value as abs().mean() up to summation order.
    mag = torch.linalg.vector_norm(g, ord=1, dim=(1, 2, 3)) / g[0].numel()
    # The L1 norm is finite exactly when every element is, except when finite magnitudes sum past
    # float32's range; such a gradient would make a zero step (step / mag), so it is no more usable
    # than a NaN. One pass fewer over the gradient than isfinite(g).all().
    grad_ok = torch.isfinite(mag)
    value = value.detach().double()
    value_ok = torch.isfinite(value)
    nonzero = mag != 0
    ok = run.alive & grad_ok & value_ok & nonzero
    step = step_size(octave, i, faithful=False)
    weight = tv_weight(octave, i, faithful=False)
    moved = torch.addcmul(crops, (step / torch.where(ok, mag, 1.0)).view(-1, 1, 1, 1), g).clamp_(
        0, 255
    )
    moved = _per_facet(ok, moved, crops)
    den = tv(
        moved, weight=weight, max_num_iter=TV_MAX_ITER, eps=TV_EPS, isotropic=True, border="current"
    )
    # The denoised image of a clipped 0..255 crop stays within that range when the solver works,
    # so its sum is finite exactly when every pixel is (a cheaper pass than isfinite().all()).
    image_ok = torch.isfinite(den.sum(dim=(1, 2, 3)))
    keep = ok & image_ok
    den = _per_facet(keep, den, crops)
    if whole:
        run.imgs = den
    else:
        for j, (ox, oy) in enumerate(offsets):
            run.imgs[j, :, ox : ox + h, oy : oy + w] = den[j]
    run.rows.append(
        _DeviceRow(
            i,
            offsets,
            step,
            weight,
            torch.stack(
                [
                    value,
                    mag.double(),
                    grad_ok.double(),
                    value_ok.double(),
                    nonzero.double(),
                    image_ok.double(),
                    run.alive.double(),
                ]
            ),
            best,
        )
    )
    run.alive = keep


def _per_facet(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Facet i of ``a`` where ``mask[i]``, else of ``b``. On the CPU, where reading the mask costs
    nothing, ``a`` itself when every facet's mask is set (the usual step: no pass over the batch);
    on a GPU always the select, which needs no synchronisation."""
    if a.device.type == "cpu" and bool(mask.all()):
        return a
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def _read_back(run: _DeviceOctave) -> None:
    """The host read: append the trace rows so far, mark failures, bring the images home."""
    n = len(run.active)
    rows = run.rows
    stats = torch.stack([r.stats for r in rows]).cpu().numpy() if rows else np.zeros((0, 7, n))
    bests = (
        None
        if not rows or rows[0].best is None
        else torch.stack([r.best for r in rows]).cpu().tolist()
    )
    final = run.imgs.cpu().numpy()
    dt = (time.perf_counter() - run.t0) / n
    run.t0 = time.perf_counter()
    for j, s in enumerate(run.active):
        if s.status == "running":
            s.seconds += dt
            _trace_device_rows(s, j, rows, stats, bests, run.k)
        s.image = np.ascontiguousarray(final[j], dtype=np.float32)
    rows.clear()


def _trace_device_rows(
    s: FacetState,
    j: int,
    rows: list[_DeviceRow],
    stats: np.ndarray,
    bests: list[list[int]] | None,
    k: int,
) -> None:
    """Facet ``s`` (column ``j`` of the batch) gets a trace step per row it was alive in; the first
    problem fails it."""
    for r, row in enumerate(rows):
        value, mag, grad_ok, value_ok, nonzero, image_ok, was_alive = stats[r, :, j]
        if not was_alive:
            break
        s.steps.append(
            {
                "octave": k + 1,
                "step": row.step,
                "activation": float(value),
                "best_unit": None if bests is None else int(bests[r][j]),
                "step_size": row.step_size,
                "tv_weight": row.tv_weight,
                "offset": list(row.offsets[j]),
                "mean_abs_grad": float(mag),
            }
        )
        problem = problem_of(bool(grad_ok), bool(value_ok), bool(nonzero))
        if problem is None and not image_ok:
            problem = "NaN/Inf in the image after denoising"
        if problem:
            fail(s, f"{problem} at octave {k + 1}, step {row.step}", k)
            break
