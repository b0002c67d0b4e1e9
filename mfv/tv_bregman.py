"""Split-Bregman total-variation denoising in torch, batched, with scikit-image's semantics.

:func:`denoise_tv_bregman` reproduces ``skimage.restoration.denoise_tv_bregman(img_hwc, weight=w,
max_num_iter=n, eps=e, isotropic=i, channel_axis=None)`` for every image of a batch at once, on any
device, each image with its own weight and its own stopping test.

How the Gauss-Seidel sweep of scikit-image becomes tensor operations
--------------------------------------------------------------------
scikit-image visits the pixels in raster order and updates, at each pixel, first ``u`` and then the
split variables ``d`` and the Bregman variables ``b``. Reading its arithmetic closely:

* the ``d``/``b`` update of a pixel uses the forward differences of ``u`` taken *before* that
  pixel's ``u`` was updated, against right and lower neighbours not yet visited, so every
  ``d``/``b`` update of a sweep depends on the previous sweep's ``u`` only: it is one elementwise
  pass over the whole tensor;
* ``d`` and ``b`` enter the ``u`` update only through ``e = d - b`` (the new ``e`` of the left and
  upper neighbours, the old ``e`` of the pixel itself);
* what stays sequential is the ``u`` update itself: ``u[i, j] = x[i, j] + a * (u[i-1, j] +
  u[i, j-1])`` with ``a = lam / norm = 2 / 9`` for every weight, a lower-triangular solve.

The solve is done either exactly, one anti-diagonal at a time (``H + W - 1`` small steps, cheap on a
CPU where an operation's fixed cost is small and the batch amortises it), or by a Jacobi iteration
on the triangular system started from the previous sweep, which contracts by ``2a = 4/9`` per step
in the max norm and is exact after ``H + W - 1`` steps; the number of steps is chosen so that the
truncation error is below the dtype's resolution on 0..255 data (few large operations: the GPU
path). On the CPU the default is neither: a compiled kernel (:mod:`mfv._tv_native`) walks the
pixels in scikit-image's own order, which no tensor formulation matches in speed there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import _tv_native

__all__ = ["denoise_tv_bregman", "jacobi_steps"]

_BORDERS = ("current", "0.13")
_SOLVERS = ("auto", "native", "wavefront", "jacobi")
# lam / norm = 2w / (w + 4 * 2w) and w / norm: both independent of the weight.
_A = 2.0 / 9.0
_BETA = 1.0 / 9.0
# Rows per band of the elementwise pass: ~10 arrays of this size stay within a 2 MiB L2.
_BAND_BYTES = 160_000


def jacobi_steps(dtype: torch.dtype, height: int, width: int) -> int:
    """Jacobi steps per sweep for the ``"jacobi"`` solver: exact, or below the dtype's resolution.

    The error of one sweep's solve shrinks by ``4/9`` per step from at most the sweep's largest
    change (bounded by 255 on 0..255 data); 44 steps reach 1e-13 grey levels (float64), 24 reach
    8e-7 (float32, whose own resolution at 255 is 1.5e-5). ``H + W - 1`` steps are exact.
    """
    steps = 44 if dtype == torch.float64 else 24
    return min(steps, height + width - 1)


def _as_weights(weight: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Weights as a float64 (B,) tensor on ``device``, validated (positive and finite)."""
    if isinstance(weight, torch.Tensor):
        w = weight.detach().to(device=device, dtype=torch.float64)
        if w.dim() == 0:
            w = w.expand(batch)
        if w.shape != (batch,):
            raise ValueError(
                f"weight tensor must have shape ({batch},) or be a scalar, got {tuple(weight.shape)}"
            )
    elif isinstance(weight, (int, float)) and not isinstance(weight, bool):
        w = torch.full((batch,), float(weight), dtype=torch.float64, device=device)
    else:
        raise TypeError(f"weight must be a float or a tensor, got {type(weight).__name__}")
    if not bool(torch.isfinite(w).all()) or not bool((w > 0).all()):
        raise ValueError(
            "weight must be positive and finite (weight 0 divides by zero in the update)"
        )
    return w


def _validate(
    images: torch.Tensor,
    max_num_iter: int,
    eps: float,
    border: str,
    solver: str,
    check_every: int | None,
) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        # img_as_float would rescale integers to 0..1; MFV works in float grey levels, so an
        # integer tensor is more likely a mistake than a request for that rescaling.
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
    if images.dim() not in (3, 4):
        raise ValueError(
            f"images must be (C, H, W) or (B, C, H, W), got shape {tuple(images.shape)}"
        )
    h, w = images.shape[-2:]
    if h < 2 or w < 2:
        # The reflected top/left ghost cells read row/column 1 (out of bounds in scikit-image).
        raise ValueError(f"images must be at least 2x2, got {h}x{w}")
    if images.shape[-3] < 1:
        raise ValueError("images must have at least one channel")
    if isinstance(max_num_iter, bool) or not isinstance(max_num_iter, int) or max_num_iter < 0:
        raise ValueError(f"max_num_iter must be a non-negative int, got {max_num_iter!r}")
    if (
        isinstance(eps, bool)
        or not isinstance(eps, (int, float))
        or not eps >= 0
        or math.isinf(eps)
    ):
        raise ValueError(f"eps must be a finite non-negative float, got {eps!r}")
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {_BORDERS}, got {border!r}")
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
    if check_every is not None and (
        isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1
    ):
        raise ValueError(f"check_every must be a positive int or None, got {check_every!r}")


def _padded(f: torch.Tensor, border: str) -> torch.Tensor:
    """(H+2, W+2, N, C): ``f`` inside, scikit-image's fixed ghost cells around it.

    Top and left reflect (row/column 1); bottom and right replicate the last row/column since
    scikit-image 0.15 and reflected (row/column H-2, W-2) in 0.13. Corners are never read.
    """
    h, w = f.shape[:2]
    p = f.new_zeros((h + 2, w + 2) + tuple(f.shape[2:]))
    p[1:-1, 1:-1] = f
    p[0, 1:-1] = f[1]
    p[1:-1, 0] = f[:, 1]
    last_r, last_c = (h - 1, w - 1) if border == "current" else (h - 2, w - 2)
    p[-1, 1:-1] = f[last_r]
    p[1:-1, -1] = f[:, last_c]
    return p


def _diagonals(u_pad: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(current, upper, left) views of every anti-diagonal of the interior of a padded buffer.

    The buffer is (H+2, W+2, N, C) so that the N*C planes of one pixel are contiguous: a
    wavefront step then reads whole cache lines. With row stride ``s`` and pixel stride ``p`` the
    anti-diagonal ``i + j = d`` is a view with stride ``s - p``; its upper neighbours lie ``s``
    elements before it and its left neighbours ``p`` before, so each step is two in-place ops.
    """
    assert u_pad.is_contiguous()
    hp, wp, n, c = u_pad.shape
    h, w = hp - 2, wp - 2
    pix = n * c
    row = wp * pix
    base = u_pad.storage_offset()
    views = []
    for d in range(h + w - 1):
        i0, i1 = max(0, d - (w - 1)), min(d, h - 1)
        shape, stride = (i1 - i0 + 1, pix), (row - pix, 1)
        off = base + (i0 + 1) * row + (d - i0 + 1) * pix
        views.append(
            (
                u_pad.as_strided(shape, stride, off),
                u_pad.as_strided(shape, stride, off - row),
                u_pad.as_strided(shape, stride, off - pix),
            )
        )
    return views


class _State:
    """Buffers of the images still iterating, laid out (H, W, N, C); images are dropped (dim 2)
    as they converge. Temporaries are kept: fresh large tensors cost page faults every sweep."""

    _BATCHED = (
        "u_pad",
        "fb",
        "lam",
        "inv_lam",
        "bx",
        "by",
        "ex",
        "ey",
        "spare",
        "tx",
        "ty",
        "m",
        "x",
        "u_old",
    )

    def __init__(self, f: torch.Tensor, lam: torch.Tensor, border: str, solver: str) -> None:
        self.u_pad = _padded(f, border)
        self.fb = f * _BETA
        self.lam = lam
        self.inv_lam = 1.0 / lam
        self.bx, self.by, self.ex, self.ey = (torch.zeros_like(f) for _ in range(4))
        self.tx, self.ty, self.x, self.u_old = (torch.empty_like(f) for _ in range(4))
        self.m = torch.empty_like(f)
        self.solver = solver
        self.spare = self.u_pad.clone() if solver == "jacobi" else None
        self._views: list | None = None

    def keep(self, rows: torch.Tensor) -> None:
        for name in self._BATCHED:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(2, rows).contiguous())
        self._views = None

    @property
    def views(self) -> list:
        if self._views is None:
            self._views = _diagonals(self.u_pad)
        return self._views

    @property
    def u(self) -> torch.Tensor:
        return self.u_pad[1:-1, 1:-1]


def _elementwise(st: _State, isotropic: bool, u_pad: torch.Tensor, r0: int, r1: int) -> None:
    """Rows r0:r1 of the d/b update and of the u update's right-hand side (x, into ``st.x``)."""
    u = u_pad[1 + r0 : 1 + r1, 1:-1]
    right, below = u_pad[1 + r0 : 1 + r1, 2:], u_pad[2 + r0 : 2 + r1, 1:-1]
    bx, by = st.bx[r0:r1], st.by[r0:r1]
    # d/b subproblem from the previous sweep's u: t = grad(u) + b.
    tx = torch.sub(right, u, out=st.tx[r0:r1]).add_(bx)
    ty = torch.sub(below, u, out=st.ty[r0:r1]).add_(by)
    if isotropic:
        # d = k t with k = lam s / (lam s + 1), s = |t|; b_new = t - d = t / (lam s + 1).
        m = torch.mul(tx, tx, out=st.m[r0:r1]).addcmul_(ty, ty).sqrt_().mul_(st.lam)
        m.add_(1.0).reciprocal_()
        torch.mul(tx, m, out=bx)
        torch.mul(ty, m, out=by)
    else:
        # Soft thresholding at 1/lam leaves b_new = t - d = clamp(t, -1/lam, 1/lam).
        torch.clamp(tx, -st.inv_lam, st.inv_lam, out=bx)
        torch.clamp(ty, -st.inv_lam, st.inv_lam, out=by)
    tx.sub_(bx, alpha=2.0)  # new e = d - b = t - 2 b (into the t buffers)
    ty.sub_(by, alpha=2.0)
    # Right-hand side of the u update: everything but the upper and left neighbours' new u.
    x = torch.add(below, right, out=st.x[r0:r1])
    x.sub_(st.ex[r0:r1]).sub_(st.ey[r0:r1])
    x[:, 1:].add_(tx[:, :-1])
    if r0 > 0:
        x.add_(st.ty[r0 - 1 : r1 - 1])
    else:
        x[1:].add_(ty[:-1])
    st.u_old[r0:r1].copy_(u)


def _sweep(st: _State, isotropic: bool, steps: int) -> torch.Tensor:
    """One Gauss-Seidel sweep in place; returns each image's sum of squared changes (float64)."""
    u_pad = st.u_pad
    u = u_pad[1:-1, 1:-1]

    # Elementwise part in bands of rows so that its ~20 passes run on cache-resident data: on a
    # memory-starved CPU whole-batch passes are bandwidth-bound. Row order matters only for x,
    # which reads the new e of the row above (computed by the previous band).
    h = u.shape[0]
    band = max(1, _BAND_BYTES // max(1, u[0].numel() * u.element_size()))
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        _elementwise(st, isotropic, u_pad, r0, r1)
    st.ex, st.ey, st.tx, st.ty = st.tx, st.ty, st.ex, st.ey  # old e buffers become temporaries
    x = st.x

    u_old = st.u_old
    if st.solver == "wavefront":
        # u = a * (x + up + left) + f / 9, pixel by pixel along anti-diagonals (ghosts included).
        torch.add(st.fb, x, alpha=_A, out=u)
        for cur, up, left in st.views:
            cur.add_(up, alpha=_A).add_(left, alpha=_A)
    else:
        x.mul_(_A).add_(st.fb)
        src, dst = u_pad, st.spare
        for _ in range(steps):
            inner = dst[1:-1, 1:-1]
            torch.add(src[:-2, 1:-1], src[1:-1, :-2], out=inner)
            inner.mul_(_A).add_(x)
            src, dst = dst, src
        if src is not u_pad:
            st.u_pad, st.spare = src, dst  # both buffers carry the same fixed ghosts
    diff = u_old.sub_(st.u)
    return torch.linalg.vector_norm(diff, dim=(0, 1, 3), dtype=torch.float64).square_()


def denoise_tv_bregman(
    images: torch.Tensor,
    *,
    weight: float | torch.Tensor,
    max_num_iter: int = 100,
    eps: float = 1e-3,
    isotropic: bool = True,
    border: str = "current",
    per_image_stop: bool = True,
    return_num_iter: bool = False,
    solver: str = "auto",
    check_every: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Total-variation denoising by split-Bregman iterations, batched, scikit-image semantics.

    Each image of the batch gives the result of
    ``skimage.restoration.denoise_tv_bregman(img_hwc, weight=w, max_num_iter=max_num_iter,
    eps=eps, isotropic=isotropic, channel_axis=None)``: every channel is smoothed on its own, and
    all channels of one image share one stopping test.

    Parameters
    ----------
    images : torch.Tensor
        (B, C, H, W) or (C, H, W), any floating dtype, any device, H and W at least 2. Values are
        used as they are (no rescaling): MFV passes grey levels 0..255, possibly out of range.
        float16/bfloat16 are computed in float32.
    weight : float or torch.Tensor
        Data-fidelity weight :math:`\lambda / 2`, positive. A LARGER weight means LESS smoothing.
        A tensor of shape (B,) gives each image its own weight.
    max_num_iter : int, optional
        Largest number of sweeps per image.
    eps : float, optional
        Stopping tolerance: an image stops after the first sweep ``n`` with
        ``sqrt(mean((u_n - u_{n-1})**2)) <= eps``, the mean over all its channels and pixels.
    isotropic : bool, optional
        Isotropic (shrink the gradient vector) or anisotropic (shrink each component) TV.
    border : {"current", "0.13"}, optional
        Fixed ghost cells around the image. Both reflect at the top and left (row/column 1). At the
        bottom and right, ``"current"`` (scikit-image >= 0.15) replicates the last row/column;
        ``"0.13"`` (what the original MFV ran) reflects it, i.e. uses row H-2 and column W-2.
    per_image_stop : bool, optional
        If True each image has its own stopping test and a converged image stops changing while
        the others go on. If False the whole batch shares one test (the mean runs over all images),
        as scikit-image would on the images stacked along the channel axis.
    return_num_iter : bool, optional
        Also return the number of sweeps each image ran.
    solver : {"auto", "native", "wavefront", "jacobi"}, optional
        ``"native"``: the compiled CPU kernel (:mod:`mfv._tv_native`; scikit-image's pixel order,
        the batch's channels as SIMD lanes; float64 operation by operation as scikit-image, float32
        with reciprocals and a reordered sum, ~3e-4 grey levels away). Otherwise how the
        sequential part of a sweep is solved in torch: ``"wavefront"`` (exact, ``H + W - 1`` small
        operations per sweep) or ``"jacobi"`` (:func:`jacobi_steps` large operations per sweep,
        error below the dtype's resolution). ``"auto"``: native on the CPU when a C compiler is
        available, else wavefront; jacobi on other devices.
    check_every : int or None, optional
        Sweeps between host reads of the convergence flags. Converged images are frozen on the
        device in between, so this changes only how often the host synchronises, never the result.
        Default: 1 on CPU (where reading costs nothing and dropping converged images saves work),
        8 elsewhere.

    Returns
    -------
    torch.Tensor
        Denoised images, same shape, dtype and device as ``images``.
    torch.Tensor
        Only if ``return_num_iter``: (B,) int64 on the CPU, sweeps run per image.

    Notes
    -----
    The sweeps reproduce scikit-image's Gauss-Seidel order exactly (see the module docstring), so
    results agree to rounding (about 1e-12 grey levels in float64) and iteration counts agree
    except when a sweep's change lies within rounding of ``eps``. Weight 0 is rejected (scikit-image
    divides by zero). Integer input is rejected rather than rescaled as ``img_as_float`` would.

    References
    ----------
    .. [1] T. Goldstein and S. Osher, "The Split Bregman Method for L1-Regularized Problems",
           SIAM J. Imaging Sciences 2(2), 2009.
    .. [2] P. Getreuer, "Rudin-Osher-Fatemi Total Variation Denoising using Split Bregman",
           Image Processing On Line 2, 2012.
    .. [3] scikit-image, ``skimage.restoration.denoise_tv_bregman``.
    """
    _validate(images, max_num_iter, eps, border, solver, check_every)
    single = images.dim() == 3
    f = images.unsqueeze(0) if single else images
    dtype = f.dtype if f.dtype in (torch.float32, torch.float64) else torch.float32
    f = f.detach().to(dtype).contiguous()
    weights = _as_weights(weight, f.shape[0], f.device)
    solver = _resolve_solver(solver, f.device)
    if solver == "native":
        b, c, h, w = f.shape
        res, num_iter = _tv_native.denoise(
            f.reshape(b * c, h, w),
            weights,
            channels=c,
            border=border,
            max_num_iter=max_num_iter,
            eps=eps,
            isotropic=isotropic,
            per_image_stop=per_image_stop,
        )
        out = res.view(b, c, h, w)
    else:
        if check_every is None:
            check_every = 1 if f.device.type == "cpu" else 8
        stop = _Stop(max_num_iter, eps, per_image_stop, check_every)
        out, num_iter = _denoise_sweeps(
            f, weights, border=border, solver=solver, isotropic=isotropic, stop=stop
        )
    result = out.to(images.dtype)
    if single:
        result = result.squeeze(0)
    if return_num_iter:
        return result, num_iter.cpu()
    return result


def _resolve_solver(solver: str, device: torch.device) -> str:
    """The solver ``"auto"`` stands for on ``device``; ``"native"`` checked to be possible."""
    if solver == "auto":
        solver = (
            "jacobi"
            if device.type != "cpu"
            else "native"
            if _tv_native.available()
            else "wavefront"
        )
    if solver == "native" and (device.type != "cpu" or not _tv_native.available()):
        raise ValueError("solver 'native' needs CPU tensors and a C compiler (see mfv._tv_native)")
    return solver


@dataclass(frozen=True)
class _Stop:
    """When the torch sweeps stop (parameters as in :func:`denoise_tv_bregman`)."""

    max_num_iter: int
    eps: float
    per_image_stop: bool
    check_every: int  # sweeps between host reads of the convergence flags


@dataclass
class _Active:
    """The images still iterating, by row of the :class:`_State` buffers."""

    index: torch.Tensor  # (A,) original index of each row
    done: torch.Tensor  # (A,) bool: converged since the last host read (frozen until then)
    count: torch.Tensor  # (A,) int64: sweeps run


def _denoise_sweeps(
    f: torch.Tensor,
    weights: torch.Tensor,
    *,
    border: str,
    solver: str,
    isotropic: bool,
    stop: _Stop,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``"wavefront"`` and ``"jacobi"`` solvers: sweeps over the batch until every image has
    stopped; the (B, C, H, W) result and the sweeps per image (on ``f``'s device)."""
    b, c, h, w = f.shape
    dev = f.device
    lam = (2.0 * weights).to(f.dtype).view(b, 1, 1, 1)
    steps = jacobi_steps(f.dtype, h, w)
    out = f.clone()
    num_iter = torch.zeros(b, dtype=torch.int64, device=dev)
    st = _State(f.permute(2, 3, 0, 1).contiguous(), lam.view(1, 1, b, 1), border, solver)
    act = _Active(
        torch.arange(b, device=dev),
        torch.zeros(b, dtype=torch.bool, device=dev),
        torch.zeros(b, dtype=torch.int64, device=dev),
    )
    thresh = stop.eps * stop.eps * (c * h * w)  # rmse <= eps  <=>  sum of squares <= eps^2 * total
    frozen_possible = False
    sweep = 0
    while act.index.numel() and sweep < stop.max_num_iter:
        ss = _sweep_active(
            st, act, isotropic, steps, per_image_stop=stop.per_image_stop, keep_done=frozen_possible
        )
        sweep += 1
        act.count += (~act.done).long()
        act.done |= ss <= thresh
        last = sweep == stop.max_num_iter
        if sweep % stop.check_every and not last:
            frozen_possible = True
            continue
        frozen_possible = False
        if _retire(st, act, act.done | last, out, num_iter):
            break
    return out, num_iter


def _sweep_active(
    st: _State, act: _Active, isotropic: bool, steps: int, *, per_image_stop: bool, keep_done: bool
) -> torch.Tensor:
    """One sweep over the active images; each one's sum of squared changes (shared by the batch
    unless ``per_image_stop``). With ``keep_done``, images that converged since the last host read
    keep their final u."""
    if keep_done:
        u_before = st.u.clone()  # only between host reads (not on CPU by default)
    ss = _sweep(st, isotropic, steps)
    if not per_image_stop:
        ss = ss.sum().expand_as(ss) / act.index.numel()
    if keep_done:
        # Undo the sweep on images that converged earlier: they must keep their final u.
        st.u.copy_(torch.where(act.done.view(1, 1, -1, 1), u_before, st.u))
    return ss


def _retire(
    st: _State, act: _Active, finished: torch.Tensor, out: torch.Tensor, num_iter: torch.Tensor
) -> bool:
    """At a host read: the ``finished`` images' results go to ``out`` and ``num_iter`` and they leave
    the batch. True when none is left."""
    if bool(finished.all()):
        out[act.index] = st.u.permute(2, 3, 0, 1)
        num_iter[act.index] = act.count
        return True
    if bool(finished.any()):
        idx = finished.nonzero().squeeze(1)
        out[act.index[idx]] = st.u.index_select(2, idx).permute(2, 3, 0, 1)
        num_iter[act.index[idx]] = act.count[idx]
        keep = (~finished).nonzero().squeeze(1)
        st.keep(keep)
        act.index, act.count, act.done = act.index[keep], act.count[keep], act.done[keep]
    return False
