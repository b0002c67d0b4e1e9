"""A step of the loop on the host: numpy arithmetic, one denoiser call per facet or one torch call.

Faithful mode runs here (the original's float rounding, the scikit-image denoiser), and so does the
default mode with the scikit-image denoiser.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
    denoise,
    draw_offsets,
    evaluate_batch,
    fail,
    margin_mask,
    problem_of,
)


def octave_on_host(
    model: Model,
    objs: list[Objective],
    group: list[FacetState],
    octave: Octave,
    k: int,
    *,
    size: tuple[int, int],
    bar,
    first: int,
    faithful: bool,
    denoiser: str,
    saver: Saver,
    checkpoint: Callable[[int, int], None],
) -> None:
    """One octave (from step ``first``) on the host, step by step (:func:`host_step`); the batch is the
    facets still running at each step."""
    for i in range(first, octave.iter_n):
        active = [s for s in group if s.status == "running"]
        if not active:
            break
        t0 = time.perf_counter()
        host_step(
            model, objs, active, octave, k, i, faithful=faithful, size=size, denoiser=denoiser
        )
        dt = (time.perf_counter() - t0) / len(active)
        for s in active:
            s.seconds += dt
        bar.update(1)
        if active[0].steps:
            bar.set_postfix(act=f"{active[0].steps[-1]['activation']:.3g}")
        if i + 1 < octave.iter_n and saver.due():
            checkpoint(k, i + 1)


def host_step(  # long: one optimiser step in its fixed order, the faithful host-side twin
    model: Model,
    objs: list[Objective],
    active: list[FacetState],
    octave: Octave,
    k: int,
    i: int,
    *,
    faithful: bool,
    size: tuple[int, int],
    denoiser: str = "skimage",
) -> None:
    """One step on the host, numpy arithmetic (faithful mode, and the scikit-image denoiser)."""
    h, w = size
    offsets = draw_offsets(active, octave, size)
    crops = np.stack(
        [s.image[:, ox : ox + h, oy : oy + w] for s, (ox, oy) in zip(active, offsets, strict=True)]
    )
    x = torch.from_numpy(crops).to(device=model.device, dtype=model.dtype).requires_grad_(True)
    value, best_t = evaluate_batch(model, objs, active, x)
    value.sum().backward()
    g = x.grad.detach().to("cpu", torch.float32).numpy()
    values = value.detach().cpu().double().numpy()
    best = [None] * len(active) if best_t is None else best_t.tolist()
    mask = margin_mask(octave, size)
    if mask is not None:
        g[:, :, ~mask] = 0
    step = step_size(octave, i, faithful=faithful)
    weight = tv_weight(octave, i, faithful=faithful)
    stepped = []  # (facet, offsets, crop after step and clip)
    for j, (s, (ox, oy)) in enumerate(zip(active, offsets, strict=True)):
        record = {
            "octave": k + 1,
            "step": i,
            "activation": float(values[j]),
            "best_unit": best[j],
            "step_size": step,
            "tv_weight": weight,
            "offset": [ox, oy],
        }
        s.steps.append(record)
        gj = g[j]
        mag = np.abs(gj).mean()  # float32 mean, as numpy computed it on the float32 diff
        record["mean_abs_grad"] = float(mag)
        problem = problem_of(bool(np.isfinite(gj).all()), bool(np.isfinite(values[j])), mag != 0)
        if problem:
            fail(s, f"{problem} at octave {k + 1}, step {i}", k)
            continue
        # Python float / float32 scalar was float64 in NumPy 1, then cast to the float32 array's type.
        crop = crops[j] + np.float32(step / float(mag)) * gj
        np.clip(crop, 0, 255, out=crop)
        stepped.append((s, (ox, oy), crop))
    if not stepped:
        return
    if denoiser == "torch":
        denoised = _denoise_torch([c for _, _, c in stepped], weight, device=model.device)
    else:
        denoised = [
            np.transpose(denoise(np.transpose(c, (1, 2, 0)), weight), (2, 0, 1))
            for _, _, c in stepped
        ]
    for (s, (ox, oy), _), den in zip(stepped, denoised, strict=True):
        crop = np.asarray(den, dtype=np.float32)
        if not np.isfinite(crop).all():
            fail(s, f"NaN/Inf in the image after denoising at octave {k + 1}, step {i}", k)
            continue
        s.image[:, ox : ox + h, oy : oy + w] = crop


def _denoise_torch(crops: list[np.ndarray], weight: float, *, device) -> list[np.ndarray]:
    """Faithful mode's torch TV (mfv.tv_bregman): all facets in one call, float64 with scikit-image
    0.13's border (reflect at bottom/right), as the original ran. The default mode denoises on the
    device inside :func:`octave_on_device`."""
    from ..tv_bregman import denoise_tv_bregman as tv

    x = torch.from_numpy(np.stack(crops)).to(device=device, dtype=torch.float64)
    y = tv(x, weight=weight, max_num_iter=TV_MAX_ITER, eps=TV_EPS, isotropic=True, border="0.13")
    return list(y.cpu().numpy())
