"""Compare two MFV runs (a reference and a candidate), octave by octave, against a floor.

Both folders are ``python -m mfv visualize`` outputs or ``python -m legacy_caffe mfv-reference``
outputs: ``facet_<k>_octave<j>.png`` (lossless, uint8) and ``trace.json`` (``mfv-trace/1``). Facets
are matched by index (run the port with its ``--init`` images in the reference's facet order).

What is measured, per facet and octave (and for the final image, which is the last octave's):

* image: max, mean and 99th percentile of ``|ref - out|`` over all pixels and channels (grey levels
  0..255), PSNR (dB, data range 255) and SSIM (``skimage.metrics.structural_similarity``, colour,
  data range 255, default 7x7 window);
* trace: the first step whose records differ by more than float noise (see
  :func:`first_divergence`), the first step whose crop offsets differ (the random stream; offsets do
  not depend on the image, so any difference is a quirk, never noise) and the first step whose
  step size or TV weight differs (the schedule arithmetic).

With a floor (a second reference, e.g. the other Caffe build) the same figures between the reference
and the floor are reported beside them, with the ratio candidate / floor: the candidate passes an
octave when its mean and p99 distance are within ``factor`` times the floor's.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np

from . import _io
from .errors import MfvError

__all__ = [
    "image_metrics",
    "first_divergence",
    "trace_divergence",
    "diff_runs",
    "verdict",
    "write_html",
    "format_table",
    "NOISE_RTOL",
    "DEFAULT_FACTOR",
    "AMPLIFY",
]

#: Float noise of one step, relative. One forward/backward of CaffeNet differs between two real Caffe
#: builds by up to 1.8e-6 of a blob's range (legacy_caffe README, goldens); a trace value differing
#: by more than ~50 times that has been changed by the accumulated drift or by a real difference.
NOISE_RTOL = 1e-4
#: Default pass factor: candidate-vs-reference distance / floor distance, per octave (mean and p99).
#: Port vs ATLAS over OpenBLAS vs ATLAS measured 0.97-1.03 (mean), 0.88-1.14 (p99) on CaffeNet,
#: facets 0-2; one wrong quirk measured 2.8-3.0x (mfv/README.md, "Diff against real Caffe").
DEFAULT_FACTOR = 1.5
#: Gain of the amplified difference image in the HTML view.
AMPLIFY = 8


def image_metrics(ref: np.ndarray, out: np.ndarray) -> dict:
    """Distances between two uint8 (or grey-level float) HxWx3 images.

    Parameters
    ----------
    ref, out : ndarray
        Same shape, grey levels 0..255.

    Returns
    -------
    dict
        ``max``, ``mean``, ``p99`` (of the absolute difference, grey levels), ``psnr`` (dB; ``inf``
        when identical), ``ssim`` (colour, data range 255), ``shape``.
    """
    from skimage.metrics import structural_similarity

    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(out, dtype=np.float64)
    if a.shape != b.shape:
        raise MfvError(f"image shapes differ: {a.shape} vs {b.shape}")
    d = np.abs(a - b)
    mse = float(np.mean(d * d))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
    ssim = structural_similarity(a, b, data_range=255.0,
                                 channel_axis=-1 if a.ndim == 3 else None)  # fmt: skip
    return {"max": float(d.max()), "mean": float(d.mean()), "p99": float(np.percentile(d, 99)),
            "psnr": psnr, "ssim": float(ssim), "shape": list(a.shape)}  # fmt: skip


def _rel(a: float, b: float, scale: float) -> float:
    return abs(a - b) / scale


def trace_divergence(ref_steps: list[dict], out_steps: list[dict]) -> dict:
    """Per-step relative differences of two traces (the curves behind :func:`first_divergence`).

    ``activation`` is compared relative to the RMS activation of the reference trace (the
    activation itself crosses zero in later octaves), ``mean_abs_grad`` relative to the reference
    value.

    Returns
    -------
    dict
        ``activation``, ``mean_abs_grad``: lists of relative differences, one per common step;
        ``offset_equal``, ``schedule_equal``: lists of bools; ``octave``, ``step``: the labels.
    """
    n = min(len(ref_steps), len(out_steps))
    acts = np.array([s["activation"] for s in ref_steps[:n]], dtype=np.float64)
    scale = float(np.sqrt(np.mean(acts**2))) if n else 1.0
    scale = scale if scale > 0 else 1.0
    cur: dict = {"activation": [], "mean_abs_grad": [], "offset_equal": [], "schedule_equal": [],
                 "octave": [], "step": []}  # fmt: skip
    for r, o in zip(ref_steps[:n], out_steps[:n], strict=True):
        cur["activation"].append(_rel(r["activation"], o["activation"], scale))
        g = r.get("mean_abs_grad")
        cur["mean_abs_grad"].append(
            _rel(g, o["mean_abs_grad"], abs(g)) if g and o.get("mean_abs_grad") is not None else 0.0
        )
        cur["offset_equal"].append(list(r["offset"]) == list(o["offset"]))
        cur["schedule_equal"].append(
            math.isclose(r["step_size"], o["step_size"], rel_tol=1e-12)
            and math.isclose(r["tv_weight"], o["tv_weight"], rel_tol=1e-12)
        )
        cur["octave"].append(r["octave"])
        cur["step"].append(r["step"])
    return cur


def first_divergence(
    ref_steps: list[dict], out_steps: list[dict], *, rtol: float = NOISE_RTOL
) -> dict:
    """The first step at which two traces differ by more than float noise.

    A step diverges when its target activation differs by more than ``rtol`` times the reference
    trace's RMS activation, or its ``mean(|g|)`` by more than ``rtol`` relative. Offsets and the
    schedule (step size, TV weight) are exact quantities and reported separately.

    Returns
    -------
    dict
        ``index`` (0-based over the whole run; ``None`` when none diverges), ``octave`` and ``step``
        of it, the same three for the first ``offset`` and ``schedule`` mismatch, ``steps`` compared,
        ``rtol``.
    """
    cur = trace_divergence(ref_steps, out_steps)

    def at(flags: list[bool]) -> dict:
        i = next((j for j, f in enumerate(flags) if f), None)
        if i is None:
            return {"index": None, "octave": None, "step": None}
        return {"index": i, "octave": cur["octave"][i], "step": cur["step"][i]}

    noisy = [a > rtol or g > rtol
             for a, g in zip(cur["activation"], cur["mean_abs_grad"], strict=True)]  # fmt: skip
    return {**at(noisy), "offset": at([not e for e in cur["offset_equal"]]),
            "schedule": at([not e for e in cur["schedule_equal"]]),
            "steps": len(cur["octave"]), "steps_ref": len(ref_steps), "steps_out": len(out_steps),
            "rtol": rtol}  # fmt: skip


def _load_run(folder: Path) -> tuple[dict, dict[int, dict[int, Path]]]:
    trace = json.loads((folder / "trace.json").read_text())
    images: dict[int, dict[int, Path]] = {}
    for p in folder.glob("facet_*_octave*.png"):
        m = re.fullmatch(r"facet_(\d+)_octave(\d+)\.png", p.name)
        if m:
            images.setdefault(int(m[1]), {})[int(m[2])] = p
    return trace, images


def _read_u8(path: Path) -> np.ndarray:
    return _io.load_rgb(path)


def _steps(trace: dict, index: int) -> list[dict]:
    for f in trace.get("facets", []):
        if f["index"] == index:
            return f.get("steps", [])
    return []


def _init_name(trace: dict | None, index: int) -> str | None:
    for f in (trace or {}).get("facets", []):
        if f["index"] == index and isinstance(f.get("init"), str):
            return Path(f["init"]).name
    return None


def _seconds(trace: dict, index: int) -> float | None:
    for f in trace.get("facets", []):
        if f["index"] == index:
            return f.get("seconds")
    return None


def diff_runs(
    reference: str | Path,
    out: str | Path,
    *,
    floor: str | Path | None = None,
    rtol: float = NOISE_RTOL,
    factor: float = DEFAULT_FACTOR,
) -> dict:
    """Compare ``out`` with ``reference`` (and ``floor`` with ``reference``), facet by facet.

    Parameters
    ----------
    reference, out : path
        Run folders (images + ``trace.json``).
    floor : path, optional
        A second reference (the other Caffe build): its distance to ``reference`` is the floor.
    rtol : float
        Float-noise threshold of :func:`first_divergence`.
    factor : float
        Pass when, per octave, candidate mean and p99 are within ``factor`` x the floor's.

    Returns
    -------
    dict
        ``facets``: per facet ``octaves`` (per octave ``out`` and ``floor`` metrics and ``ratio``),
        ``final``, ``divergence`` (:func:`first_divergence` for out and floor), ``seconds``;
        ``verdict`` (when a floor is given).
    """
    reference, out = Path(reference), Path(out)
    ref_trace, ref_imgs = _load_run(reference)
    out_trace, out_imgs = _load_run(out)
    fl_trace, fl_imgs = _load_run(Path(floor)) if floor is not None else (None, {})
    result: dict = {"reference": str(reference), "out": str(out),
                    "floor": str(floor) if floor is not None else None, "rtol": rtol,
                    "factor": factor, "facets": []}  # fmt: skip
    for k in sorted(ref_imgs):
        if k not in out_imgs:
            result["facets"].append({"index": k, "missing": "out has no images for this facet"})
            continue
        fr: dict = {"index": k, "octaves": {},
                    "init": {"reference": _init_name(ref_trace, k), "out": _init_name(out_trace, k)},
                    "seconds": {
            "reference": _seconds(ref_trace, k), "out": _seconds(out_trace, k),
            "floor": _seconds(fl_trace, k) if fl_trace else None}}  # fmt: skip
        for j in sorted(ref_imgs[k]):
            if j not in out_imgs[k]:
                continue
            a = _read_u8(ref_imgs[k][j])
            row: dict = {"out": image_metrics(a, _read_u8(out_imgs[k][j]))}
            if k in fl_imgs and j in fl_imgs[k]:
                row["floor"] = image_metrics(a, _read_u8(fl_imgs[k][j]))
                row["ratio"] = {
                    m: _ratio(row["out"][m], row["floor"][m]) for m in ("mean", "p99", "max")
                }
            fr["octaves"][str(j)] = row
        if fr["octaves"]:
            last = max(fr["octaves"], key=int)
            fr["final"] = {"octave": int(last), **fr["octaves"][last]}
        ref_steps = _steps(ref_trace, k)
        fr["divergence"] = {"out": first_divergence(ref_steps, _steps(out_trace, k), rtol=rtol)}
        if fl_trace is not None:
            fr["divergence"]["floor"] = first_divergence(ref_steps, _steps(fl_trace, k), rtol=rtol)
        result["facets"].append(fr)
    if floor is not None:
        result["verdict"] = verdict(result, factor=factor)
    return result


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return 0.0 if a == 0 else math.inf
    return a / b


def verdict(result: dict, *, factor: float = DEFAULT_FACTOR) -> dict:
    """Pass/fail per facet and octave: candidate mean and p99 within ``factor`` x the floor's,
    and no offset or schedule mismatch in the traces (those are quirks, not noise)."""
    problems = []
    for fr in result["facets"]:
        if "missing" in fr:
            problems.append(f"facet {fr['index']}: {fr['missing']}")
            continue
        for j, row in fr["octaves"].items():
            if "floor" not in row:
                problems.append(f"facet {fr['index']} octave {j}: no floor image")
                continue
            for m in ("mean", "p99"):
                if row["out"][m] > factor * row["floor"][m]:
                    problems.append(f"facet {fr['index']} octave {j}: {m} {row['out'][m]:.3g} > "
                                    f"{factor} x floor {row['floor'][m]:.3g}")  # fmt: skip
        inits = fr.get("init", {})
        if inits.get("reference") and inits.get("out") and inits["reference"] != inits["out"]:
            problems.append(f"facet {fr['index']}: started from {inits['out']}, the reference from "
                            f"{inits['reference']} (give --init in the reference's facet order)")  # fmt: skip
        div = fr["divergence"]["out"]
        for what in ("offset", "schedule"):
            if div[what]["index"] is not None:
                problems.append(f"facet {fr['index']}: {what} differs from octave "
                                f"{div[what]['octave']} step {div[what]['step']}")  # fmt: skip
    return {"passed": not problems, "factor": factor, "problems": problems}


def _amplified(a: np.ndarray, b: np.ndarray, gain: int = AMPLIFY) -> np.ndarray:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)
    return np.repeat(np.clip(d * gain, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _sparkline(values: list[float], rtol: float, width: int = 600, height: int = 80) -> str:
    """Inline SVG of log10 relative difference per step, with the noise threshold dashed."""
    if not values:
        return ""
    lo, hi = -9.0, 1.0
    pts = []
    for i, v in enumerate(values):
        y = min(max(math.log10(v) if v > 0 else lo, lo), hi)
        pts.append(f"{i * width / max(len(values) - 1, 1):.1f},{(hi - y) / (hi - lo) * height:.1f}")
    ty = (hi - math.log10(rtol)) / (hi - lo) * height
    return (f'<svg width="{width}" height="{height}" style="background:#f6f6f6">'
            f'<line x1="0" x2="{width}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#c00" '
            f'stroke-dasharray="4"/><polyline fill="none" stroke="#036" points="{" ".join(pts)}"/>'
            "</svg>")  # fmt: skip


def _exact_text(div: dict) -> str:
    """Offsets and schedule are exact quantities: where they first differ, or that they never do."""
    parts = []
    for key, what in (("offset", "crop offsets"), ("schedule", "step sizes and TV weights")):
        at = div[key]["index"]
        parts.append(
            f"{what} identical at every step"
            if at is None
            else f"{what} differ from step index {at}"
        )
    return "; ".join(parts)


def write_html(result: dict, path: str | Path) -> None:
    """Self-contained HTML (images inline, no external resources): per facet and octave the
    reference, the candidate, ``|ref - out|`` x :data:`AMPLIFY` and the floor's amplified difference,
    the figures, and the trace divergence curves (log10 relative difference of the activation)."""
    from port.atomic import write_text_atomic

    ref, out = Path(result["reference"]), Path(result["out"])
    floor = Path(result["floor"]) if result.get("floor") else None
    traces = {
        "reference": json.loads((ref / "trace.json").read_text()),
        "candidate": json.loads((out / "trace.json").read_text()),
        "floor": json.loads((floor / "trace.json").read_text()) if floor else None,
    }
    h = [
        "<!doctype html><meta charset='utf-8'><title>mfv diff</title><style>body{font:13px sans-serif}"
        "td{vertical-align:top;padding:3px}img{image-rendering:pixelated}table.m td{text-align:right}"
        "</style>",
        f"<h1>mfv diff</h1><p>reference <code>{html.escape(str(ref))}</code><br>candidate "
        f"<code>{html.escape(str(out))}</code><br>floor <code>{html.escape(str(floor))}</code></p>",
    ]
    if "verdict" in result:
        v = result["verdict"]
        h.append(
            f"<p><b>{'PASS' if v['passed'] else 'FAIL'}</b> (factor {v['factor']})</p><ul>"
            + "".join(f"<li>{html.escape(p)}</li>" for p in v["problems"])
            + "</ul>"
        )
    for fr in result["facets"]:
        h.append(f"<h2>facet {fr['index']}</h2>")
        if "missing" in fr:
            h.append(f"<p>{html.escape(fr['missing'])}</p>")
            continue
        h.append(_figures_table(fr))
        h.extend(_divergence_html(fr, traces, result["rtol"]))
        h.append(_images_table(fr["index"], list(fr["octaves"]), ref, out, floor))
    write_text_atomic(path, "\n".join(h) + "\n")


def _figures_table(fr: dict) -> str:
    """One facet's figures per octave, the floor's beside them."""
    rows = [
        "<table class='m'><tr><th>octave</th><th>mean</th><th>p99</th><th>max</th>"
        "<th>PSNR</th><th>SSIM</th><th>floor mean</th><th>floor p99</th><th>floor max</th>"
        "<th>mean ratio</th></tr>"
    ]
    for j, row in fr["octaves"].items():
        o, f = row["out"], row.get("floor")
        cells = [
            j,
            f"{o['mean']:.2f}",
            f"{o['p99']:.1f}",
            f"{o['max']:.0f}",
            f"{o['psnr']:.1f}",
            f"{o['ssim']:.3f}",
        ]
        if f:
            cells += [
                f"{f['mean']:.2f}",
                f"{f['p99']:.1f}",
                f"{f['max']:.0f}",
                f"{row['ratio']['mean']:.2f}",
            ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _divergence_html(fr: dict, traces: dict, rtol: float) -> list[str]:
    """Where the candidate's (and the floor's) trace leaves the reference's, with its curve."""
    k, out = fr["index"], []
    for who in ("candidate", "floor"):
        tr = traces[who]
        if tr is None:
            continue
        div = fr["divergence"]["out" if who == "candidate" else "floor"]
        cur = trace_divergence(_steps(traces["reference"], k), _steps(tr, k))
        out.append(
            f"<p>{who}: first divergence beyond {rtol:g} at step index "
            f"{div['index']} (octave {div['octave']}, step {div['step']}); "
            f"{_exact_text(div)}</p>" + _sparkline(cur["activation"], rtol)
        )
    return out


def _images_table(k: int, octaves: list, ref: Path, out: Path, floor: Path | None) -> str:
    """Per octave the reference, candidate and floor images and the amplified differences."""
    from ._io import png_data_uri

    rows = [
        "<table><tr><th></th><th>reference</th><th>candidate</th>"
        f"<th>|ref - cand| x{AMPLIFY}</th><th>floor</th><th>|ref - floor| x{AMPLIFY}</th></tr>"
    ]
    for j in octaves:
        a = _read_u8(ref / f"facet_{k}_octave{j}.png")
        b = _read_u8(out / f"facet_{k}_octave{j}.png")
        cells = [png_data_uri(a), png_data_uri(b), png_data_uri(_amplified(a, b))]
        if floor and (floor / f"facet_{k}_octave{j}.png").exists():
            c = _read_u8(floor / f"facet_{k}_octave{j}.png")
            cells += [png_data_uri(c), png_data_uri(_amplified(a, c))]
        rows.append(
            f"<tr><td>octave {j}</td>"
            + "".join(f"<td><img src='{u}'></td>" for u in cells)
            + "</tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def format_table(result: dict) -> str:
    """Plain-text summary: one line per facet and octave."""
    lines = [
        "facet octave | out mean   p99   max  PSNR   SSIM | floor mean   p99   max | ratio mean p99"
    ]
    for fr in result["facets"]:
        if "missing" in fr:
            lines.append(f"{fr['index']:5d} {fr['missing']}")
            continue
        for j, row in fr["octaves"].items():
            o, f = row["out"], row.get("floor")
            s = (f"{fr['index']:5d} {j:>6s} | {o['mean']:8.2f} {o['p99']:5.1f} {o['max']:5.0f} "
                 f"{o['psnr']:5.1f} {o['ssim']:6.3f}")  # fmt: skip
            if f:
                s += (f" | {f['mean']:10.2f} {f['p99']:5.1f} {f['max']:5.0f} | "
                      f"{row['ratio']['mean']:10.2f} {row['ratio']['p99']:4.2f}")  # fmt: skip
            lines.append(s)
        for who, d in fr["divergence"].items():
            lines.append(f"      {who}: first divergence (rtol {d['rtol']:g}) at index {d['index']} "
                         f"(octave {d['octave']} step {d['step']}); {_exact_text(d)}")  # fmt: skip
        secs = fr["seconds"]
        lines.append(
            f"      seconds: reference {secs['reference']}, out {secs['out']}, floor {secs['floor']}"
        )
    if "verdict" in result:
        v = result["verdict"]
        lines.append(("PASS" if v["passed"] else "FAIL") + f" (factor {v['factor']})")
        lines += [f"  {p}" for p in v["problems"]]
    return "\n".join(lines)
