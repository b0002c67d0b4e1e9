"""Where a default-mode step's time goes: ``python -m mfv.profile [--facets N] [--steps K]``.

Measured in one process, with the threads torch was given:

* the machine's own peaks: a large float32 matrix product (``sgemm``, 4096^3) and a 256 MiB copy
  (memory bandwidth, bytes read plus bytes written);
* each layer of the Caffe model alone, forward and backward (the gradient of its input only: MFV's
  weights are frozen), on its real input from a forward pass of the batch, with its FLOPs (layers
  with weights: two per multiply-add, backward as many as forward) or, for the others, the bytes
  its tensors occupy (read and written once: a lower bound on its traffic), and the rate this
  reaches as a share of the matching peak;
* the forward+backward pass of the whole net on the batch (the step's bound), a whole default
  step (:func:`mfv.visualize.visualize` on a one-octave schedule: a ``--steps``-step call less a
  one-step call, per step, so the call's own set-up is a line of its own, not the step's) and,
  inside those steps, the float32 TV calls the step makes (on the images it denoises, at its
  weights: a noisier stand-in took ~60% more sweeps, and the rows no longer added up to the step);
* the step's own torch ops: the top-level ops of a step under ``torch.profiler`` less those of
  the net's pass and of the TV call, per op name (the crops, the gradient norm, the move, the
  finiteness checks: the step's element-wise work), the largest listed;
* derived rows (``residual``): the net's pass minus its layers measured alone (dispatch and Python
  between layers), and the step minus the pass, the TV and the step's own ops (its Python and
  glue). Each is a difference of timings taken apart, so it carries their noise (and a part may
  cost more alone than inside the whole); the table says so when one comes out negative.

Every time is the median of ``--steps`` repeats after one warm-up (the whole step: a run of
``--steps`` steps less the median of three one-step runs, per step). Public API only
(:mod:`mfv.models`, :mod:`mfv.visualize`, :mod:`mfv.tv_bregman`, ``port``'s layer modules), except
that the timed steps run with ``mfv.tv_bregman.denoise_tv_bregman`` wrapped to time each call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

__all__ = ["machine_peaks", "profile_step", "main"]


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-call allocations, kernel selection
    times = []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine_peaks(repeats: int = 3, n: int = 4096, mib: int = 256) -> dict:
    """This process's large-sgemm rate (GFLOP/s) and copy bandwidth (GB/s, read + write), best
    of ``repeats``: the peaks the profile's rates are shares of."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    gemm = min(_median_seconds(lambda: torch.mm(a, b, out=c), 1) for _ in range(repeats))
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    copy = min(_median_seconds(lambda: dst.copy_(src), 1) for _ in range(repeats))
    return {
        "sgemm_gflops": 2 * n**3 / gemm / 1e9,
        "bandwidth_gbs": 2 * src.numel() * 4 / copy / 1e9,
        "sgemm_n": n,
        "copy_mib": mib,
    }


def _layer_rows(model, pixels: torch.Tensor, repeats: int, peaks: dict) -> list[dict]:
    """One forward and one backward row per layer of a Caffe model (see module doc)."""
    net = model.module
    with torch.no_grad():
        blobs = net(model.convention.to_network(pixels), blobs="all")
    rows = []
    for layer in net.netdef.layers:
        module = net.layer_modules[layer.name]
        ins = [blobs[b].detach().clone().requires_grad_(True) for b in layer.bottoms]
        outs = module(*ins)
        weights = list(getattr(module, "blobs", []) or [])
        flop = 2 * outs[0].numel() * (weights[0][0].numel() if weights else 0)
        # Tensors and weights read or written once: a lower bound on the layer's traffic.
        nbytes = 4 * sum(t.numel() for t in [*ins, *outs, *weights])
        grads = [torch.ones_like(o) for o in outs]
        fwd = _median_seconds(lambda m=module, i=ins: m(*i), repeats)
        bwd = _median_seconds(
            lambda o=outs, g=grads: torch.autograd.backward(o, g, retain_graph=True), repeats
        )
        for part, sec in (("forward", fwd), ("backward", bwd)):
            rows.append(_row(f"{layer.name} {part}", sec, flop if weights else None, nbytes, peaks))
            rows[-1]["layer_type"] = layer.type
    return rows


def _row(name: str, sec: float, flop: float | None, nbytes: float | None, peaks: dict) -> dict:
    """A profile row; ``of_peak`` is the larger of the FLOP rate's share of sgemm's and the byte
    rate's share of the copy bandwidth (``bound_by`` says which): the fully connected layers at a
    small batch are limited by reading their weights, the convolutions by arithmetic."""
    row: dict = {"name": name, "ms": sec * 1e3}
    shares = {}
    if flop:
        row.update(gflop=flop / 1e9, gflops=flop / sec / 1e9)
        shares["flops"] = row["gflops"] / peaks["sgemm_gflops"]
    if nbytes:
        row.update(mbytes=nbytes / 1e6, gbs=nbytes / sec / 1e9)
        shares["bytes"] = row["gbs"] / peaks["bandwidth_gbs"]
    if shares and sec > 0:
        row["bound_by"] = max(shares, key=shares.get)
        row["of_peak"] = shares[row["bound_by"]]
    return row


def _inits(model, facets: int) -> list[np.ndarray]:
    from mfv import fit_to, load_rgb
    from port.zoo import shared_root

    folder = shared_root() / "reference" / "mfv-original" / "mean_images" / "n07720875"
    paths = sorted(folder.glob("mean_*.jpg"))
    if not paths:  # noise stands in; timings of dense kernels do not depend on pixel values
        rng = np.random.default_rng(0)
        h, w = model.convention.input_size
        return [rng.normal(175, 8, (h, w, 3)).astype(np.float32) for _ in range(facets)]
    imgs = [fit_to(load_rgb(p), model.convention.input_size) for p in paths]
    return [imgs[i % len(imgs)] for i in range(facets)]


@contextmanager
def _tv_calls(calls: list[dict]) -> Iterator[None]:
    """Record every :func:`mfv.tv_bregman.denoise_tv_bregman` call made inside the block (the
    default step looks the function up in its module at each octave): its seconds, its sweeps
    and its arguments, to replay it alone (the step never writes to them after the call, so
    they are kept as they are: a copy would add to the step being timed)."""
    from mfv import tv_bregman

    inner = tv_bregman.denoise_tv_bregman

    def recorded(images, **kw):
        t = time.perf_counter()
        out, iters = inner(images, **kw, return_num_iter=True)
        calls.append({"seconds": time.perf_counter() - t, "sweeps": float(iters.sum()),
                      "images": images, "kw": kw})  # fmt: skip
        return out

    tv_bregman.denoise_tv_bregman = recorded
    try:
        yield
    finally:
        tv_bregman.denoise_tv_bregman = inner


def _whole_rows(model, inits: list[np.ndarray], repeats: int, peaks: dict) -> dict:
    """The net's pass and a whole default step, each timed as a whole, and the step's TV calls."""
    from mfv.objectives import unit
    from mfv.octaves import load_schedule, parse_schedule
    from mfv.tv_bregman import denoise_tv_bregman
    from mfv.visualize import visualize

    obj = unit(model.spec.target_layer, 945)
    x0 = torch.from_numpy(np.stack([np.transpose(i, (2, 0, 1)) for i in inits]).astype(np.float32))

    def pass_():
        x = x0.clone().requires_grad_(True)
        obj(model.activations(x, obj.layers)).sum().backward()

    first = dict(load_schedule(model.spec.schedule_path).as_dict()["octaves"][0])

    def step_run(n: int) -> None:
        sched = parse_schedule({"name": "profile", "octaves": [{**first, "iter_n": n}]})
        visualize(model, obj, inits, schedule=sched, seed=1, progress=False)

    def timed_run(n: int) -> float:
        t = time.perf_counter()
        step_run(n)
        return time.perf_counter() - t

    step_run(2)  # warm-up: the TV kernel's first call, first-call allocations
    steps = max(repeats, 2)
    calls: list[dict] = []
    with _tv_calls(calls):
        long = timed_run(steps)
    # A call's own set-up (the facets' noise draw, the octave's set-up) is paid once per call:
    # one-step calls measure it, and the difference leaves the step alone.
    short = statistics.median(timed_run(1) for _ in range(3))
    step = (long - short) / (steps - 1)
    if not calls:
        raise RuntimeError(
            "mfv.profile saw no TV call in the default step: the step no longer looks up "
            "mfv.tv_bregman.denoise_tv_bregman when it runs, so the profile cannot time it"
        )
    middle = calls[len(calls) // 2]

    def tv() -> None:  # one of the step's calls alone: which of its torch ops are the TV's
        denoise_tv_bregman(middle["images"], **middle["kw"])

    step_ops = _op_seconds(lambda: step_run(repeats))
    return {
        "bound": _median_seconds(pass_, repeats),
        "tv": statistics.median(c["seconds"] for c in calls),
        # u read and written once per sweep of each image: a lower bound on the kernel's traffic
        "tv_bytes": statistics.median(c["sweeps"] for c in calls) * x0[0].numel() * 4 * 2,
        "step": step,
        "call_setup": short - step,
        # torch ops of the step that are neither the net's pass nor the TV call's
        "step_only_ops": _step_only(step_ops, repeats, _op_seconds(pass_), _op_seconds(tv)),
    }


def _op_seconds(fn: Callable[[], object]) -> dict[str, tuple[float, int]]:
    """Seconds and calls per top-level torch op name (autograd's backward nodes included) of one
    ``fn()``, under ``torch.profiler`` (which adds a little to each op)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    out: dict[str, tuple[float, int]] = {}
    for e in prof.events():
        if e.cpu_parent is None:
            sec, n = out.get(e.name, (0.0, 0))
            out[e.name] = (sec + e.cpu_time_total / 1e6, n + 1)
    return out


def _step_only(
    step: dict[str, tuple[float, int]], steps: int, *parts: dict[str, tuple[float, int]]
) -> dict[str, float]:
    """Seconds per step of the calls the step makes beyond those of ``parts`` (one pass, one TV
    call), per op name, largest first. The calls are counted, and timed at the step's own mean
    time per call: the parts' runs only say how many calls are theirs, so the noise of separate
    runs does not move ops between rows."""
    left = {}
    for name, (sec, n) in step.items():
        own = n - steps * sum(p.get(name, (0.0, 0))[1] for p in parts)
        if own > 0:
            left[name] = sec / n * own / steps
    return dict(sorted(left.items(), key=lambda kv: -kv[1]))


def profile_step(model_name: str = "caffenet", facets: int = 10, repeats: int = 5) -> dict:
    """The profile of a default-mode step of ``facets`` facets (see module doc) as a dict."""
    from mfv.models import load_model

    peaks = machine_peaks()
    model = load_model(model_name, parity_check=False)
    inits = _inits(model, facets)
    pixels = torch.from_numpy(np.stack([np.transpose(i, (2, 0, 1)) for i in inits]))
    rows = _layer_rows(model, pixels.float(), repeats, peaks) if model.is_caffe else []
    whole = _whole_rows(model, inits, repeats, peaks)
    layers_s = sum(r["ms"] for r in rows) / 1e3
    flop = sum(r.get("gflop", 0.0) for r in rows) * 1e9
    elementwise = sum(whole["step_only_ops"].values())
    residuals = [
        _row("net pass minus its layers", whole["bound"] - layers_s, None, None, peaks),
        _row("step's Python and glue", whole["step"] - whole["bound"] - whole["tv"] - elementwise,
             None, None, peaks),
    ]  # fmt: skip
    for r in residuals:
        r["residual"] = True  # a difference of separate timings, so it carries their noise
    rows += [
        residuals[0],
        _row("TV kernel (float32)", whole["tv"], None, whole["tv_bytes"], peaks),
        _row("step's own torch ops", elementwise, None, None, peaks),
        *[_row(f"  {name}", sec, None, None, peaks)
          for name, sec in list(whole["step_only_ops"].items())[:8]],
        residuals[1],
    ]  # fmt: skip
    bound_gflops = flop / whole["bound"] / 1e9 if flop else None
    return {
        "model": model_name,
        "facets": facets,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        **peaks,
        "parts": rows,
        "bound_ms": whole["bound"] * 1e3,
        "step_ms": whole["step"] * 1e3,
        "call_setup_ms": whole["call_setup"] * 1e3,
        "bound_gflops": bound_gflops,
        "bound_over_sgemm": bound_gflops / peaks["sgemm_gflops"] if bound_gflops else None,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m mfv.profile``: print the table; ``--json`` also writes it."""
    p = argparse.ArgumentParser(prog="python -m mfv.profile", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="caffenet", help="model (default caffenet)")
    p.add_argument("--facets", type=int, default=10, help="facets per batch (default 10)")
    p.add_argument("--steps", type=int, default=5, help="repeats of each timing (default 5)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, help="write the profile here")
    p.add_argument("--quiet", action="store_true", help="no table")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    prof = profile_step(a.model, a.facets, a.steps)
    if a.json:
        from port.atomic import write_text_atomic

        write_text_atomic(a.json, json.dumps(prof, indent=1) + "\n")
    if not a.quiet:
        print(render(prof))
    return 0


def render(prof: dict) -> str:
    """The profile as a plain-text table."""
    rows = [
        f"{prof['model']}, default step, batch {prof['facets']}, {prof['threads']} threads: "
        f"sgemm {prof['sgemm_gflops']:.1f} GFLOP/s, copy {prof['bandwidth_gbs']:.1f} GB/s",
        f"{'part':30s} {'ms/step':>9s} {'GFLOP':>8s} {'MB':>9s} {'rate':>14s} {'of peak':>8s}",
    ]
    for r in prof["parts"]:
        by = r.get("bound_by")
        rate = {
            "flops": f"{r.get('gflops', 0):.1f} GFLOP/s",
            "bytes": f"{r.get('gbs', 0):.1f} GB/s",
        }
        rate = rate.get(by, "-")
        share = f"{r['of_peak']:.0%}" if "of_peak" in r else "-"
        gflop = f"{r['gflop']:.3f}" if "gflop" in r else "-"
        mb = f"{r['mbytes']:.1f}" if "mbytes" in r else "-"
        name = r["name"].replace("autograd::engine::evaluate_function: ", "backward ")[:30]
        rows.append(f"{name:30s} {r['ms']:9.2f} {gflop:>8s} {mb:>9s} {rate:>14s} {share:>8s}")
    b = prof["bound_over_sgemm"]
    negative = [r["name"] for r in prof["parts"] if r.get("residual") and r["ms"] < 0]
    if negative:
        rows.append(
            f"({' and '.join(negative)}: negative: the parts, each timed alone, took longer than "
            "the whole they are subtracted from (this machine's noise, or a part dearer alone "
            "than inside the whole): read the row as unmeasured)"
        )
    rows.append(
        f"{'whole step':30s} {prof['step_ms']:9.2f}   net pass (bound) {prof['bound_ms']:.2f} ms"
        + (f" = {b:.0%} of the sgemm rate" if b else "")
    )
    if "call_setup_ms" in prof:
        rows.append(
            f"{'set-up, once per call':30s} {prof['call_setup_ms']:9.2f}   (not in the step: "
            "the facets' noise draw and the octave's set-up, paid once per visualize call)"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
