"""Reports of a parity run: a terminal table, and a self-contained HTML page (no external assets)."""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib

import numpy as np

from .compare import BlobCheck, ParityResult
from .diagnosis import flip_sentence

__all__ = [
    "columns",
    "format_table",
    "render_html",
    "png_heatmap",
    "summary_line",
    "worst_ratios",
]



def columns(result: ParityResult) -> dict[str, dict[str, BlobCheck]]:
    """Judged checks arranged by column (reference name; "truth"; "float64") then blob key."""
    cols: dict[str, dict[str, BlobCheck]] = {}
    for p in result.pairs:
        if p.rule == "info":
            continue
        name = {"truth": "truth", "float64": "f64-vs-numpy64"}.get(p.rule, p.reference)
        col = cols.setdefault(name, {})
        for c in p.checks:
            col.setdefault(c.key, c)
    return cols


def _keys(result: ParityResult, cols: dict[str, dict[str, BlobCheck]]) -> list[str]:
    seen: dict[str, None] = {}
    for k in result.noise:
        seen[k] = None
    for col in cols.values():
        for k in col:
            seen.setdefault(k, None)
    fwd = [k for k in seen if k.startswith("data/")]
    bwd = [k for k in seen if k.startswith("diff/")]
    return fwd + bwd


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return "inf"
    return f"{v:.1e}"


def _cell(c: BlobCheck | None) -> str:
    if c is None:
        return "-"
    r = c.needed_multiple
    mark = "" if c.passed else " FAIL"
    ex = "*" if (c.metrics.n_excused or c.metrics.n_corrected) else ""
    return (
        f"{_fmt(c.metrics.max_rel)} {r:5.2f}x{ex}{mark}"
        if r is not None and math.isfinite(r)
        else f"inf{mark}"
    )


def format_table(result: ParityResult) -> str:
    """The terminal report: one row per blob (forward, then backward as the gradient flows).

    Each cell shows the error relative to the reference's range and, after it, that error as a
    multiple of the blob's noise (the smallest multiple that would have passed; the policy's
    multiples are in the header). ``*`` marks cells where gate flips (:mod:`parity.gates`) were
    corrected for (or excused, without a float64 net).
    """
    cols = columns(result)
    keys = _keys(result, cols)
    names = list(cols)
    head = ["blob", "layer", "spread", "caffe-own"] + names
    rows = []
    for k in keys:
        layer = next((col[k].layer for col in cols.values() if k in col), "")
        nz = result.noise.get(k, {})
        rows.append(
            [k, layer, _fmt(nz.get("spread")), _fmt(nz.get("caffe_own"))]
            + [_cell(cols[n].get(k)) for n in names]
        )
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = []
    verdict = "PASS" if result.passed else "FAIL"
    pol = result.policy
    lines.append(
        f"parity {result.model}: {verdict}   backward from {result.backward_from}   "
        f"(allowed: {pol['spread_multiple']}x spread vs builds, {pol['truth_multiple']}x Caffe's own vs truth, "
        f"floor {pol['floor_rel32']:.2e}; float64 {pol['floor_rel64']:.0e})"
        + (f"   INPUT {result.input_source}" if result.input_source.startswith("SYNTHETIC") else "")
    )
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for i, r in enumerate(rows):
        if i and keys[i].startswith("diff/") and keys[i - 1].startswith("data/"):
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    lines.append("")
    diag = result.diagnosis or {}
    lines.extend(f"gate flips {line}" for line in diag.get("lines", [])[1 if diag.get("cause") else 0 :])
    if result.local:
        worst = max(result.local, key=lambda r: r.get("worst_ratio", 0.0))
        lines.append(
            f"local check ({len(result.local)} layer runs): worst {worst['layer']} "
            f"{worst['worst_ratio']:.2f}x of its local noise; "
            + (
                f"FIRST LAYER THAT DEPARTS: {result.first_departure}"
                if result.first_departure
                else "no layer departs when run alone"
            )
        )
    if diag.get("cause"):
        lines.append(f"WHY IT FAILS ({diag['cause']}, layer {diag['layer']}): {diag['lines'][0]}")
    fails = [(p, c) for p in result.pairs for c in p.checks if not c.passed]
    for p, c in fails[:20]:
        lines.append(
            f"FAIL {p.subject} vs {p.reference} {c.key} (layer {c.layer}): rel {_fmt(c.metrics.max_rel)} > "
            f"allowed {_fmt(c.rule.allowed)}; would need {c.needed_multiple:.3g}x the noise "
            f"({c.rule.noise_source} {_fmt(c.rule.noise)}) instead of {c.rule.multiple}x"
        )
    if len(fails) > 20:
        lines.append(f"... and {len(fails) - 20} more failures")
    wr = worst_ratios(result)
    if wr:
        lines.append(
            "worst error / noise floor: "
            + ", ".join(f"{n} {r:.2f}x ({k})" for n, (r, k) in wr.items())
        )
    if result.notes:
        lines.extend(f"note: {n}" for n in result.notes)
    if result.timings:
        lines.append("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    return "\n".join(lines)


def worst_ratios(result: ParityResult) -> dict[str, tuple[float, str]]:
    """Per judged column: the worst error as a multiple of its noise floor, and the blob it is at."""
    out: dict[str, tuple[float, str]] = {}
    for name, col in columns(result).items():
        best = max(
            (c for c in col.values() if c.needed_multiple is not None),
            key=lambda c: c.needed_multiple,
            default=None,
        )
        if best is not None:
            out[name] = (best.needed_multiple, best.key)
    return out


def summary_line(result: ParityResult) -> str:
    """One line per model: verdict, worst ratio to the noise floor per reference, flips, time."""
    parts = [f"{result.model}: {'PASS' if result.passed else 'FAIL'}"]
    for name, (r, key) in worst_ratios(result).items():
        parts.append(f"{name} {r:.2f}x ({key})")
    nflips = sum(f["count"] for fl in result.flips.values() for f in fl)
    parts.append(f"gate flips (all pairs) {nflips}")
    diag = result.diagnosis or {}
    if diag.get("cause"):
        parts.append(f"cause: {diag['cause']} at {diag['layer']}")
    if "total" in result.timings:
        parts.append(f"{result.timings['total']:.1f} s")
    return "  ".join(parts)


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _png(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 image as PNG (zlib only, no imaging library)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def png_heatmap(m: np.ndarray, *, vmax: float | None = None, scale: int = 0) -> bytes:
    """A heat map (dark blue = 0, yellow = vmax) of a 2-D array as PNG bytes, upscaled to ~400 px."""
    m = np.asarray(m, np.float64)
    vmax = float(m.max()) if vmax is None else vmax
    t = np.clip(m / vmax, 0, 1) if vmax > 0 else np.zeros_like(m)
    stops = np.array(
        [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], float
    )
    pos = t * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[..., None]
    rgb = (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)
    scale = scale or max(1, 400 // max(m.shape))
    rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    return _png(rgb)


def _svg_chart(result: ParityResult) -> str:
    cols = columns(result)
    keys = _keys(result, cols)
    if not keys:
        return "<p>nothing compared</p>"
    w, h, ml, mr, mt, mb = 1200, 420, 64, 260, 20, 120
    lo, hi = -16, 0
    n = len(keys)
    label_every = max(1, math.ceil(n / 70))

    def x(i: int) -> float:
        return ml + (w - ml - mr) * (i + 0.5) / n

    def y(v: float | None) -> float | None:
        if v is None or not math.isfinite(v):
            return None
        # Zero error sits on the bottom edge of the log axis.
        lv = lo if v <= 0 else max(lo, min(hi, math.log10(v)))
        return mt + (h - mt - mb) * (hi - lv) / (hi - lo)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">'
    ]
    for e in range(lo, hi + 1, 2):
        yy = y(10.0**e)
        parts.append(f'<line x1="{ml}" x2="{w - mr}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{ml - 6}" y="{yy + 4:.1f}" text-anchor="end">1e{e}</text>')
    for i, k in enumerate(keys):
        if k.startswith("diff/") and (i == 0 or keys[i - 1].startswith("data/")):
            xx = (x(i) + x(i - 1)) / 2 if i else ml
            parts.append(
                f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{mt}" y2="{h - mb}" stroke="#999" stroke-dasharray="4 3"/>'
            )
        # Deep nets have hundreds of blobs: label a readable subset; every point has a tooltip.
        if i % label_every == 0:
            parts.append(
                f'<text transform="translate({x(i):.1f},{h - mb + 8}) rotate(60)" font-size="9">'
                f"{html.escape(k)}</text>"
            )

    def series(
        vals: list[float | None],
        color: str,
        dash: str = "",
        width: float = 1.5,
        dots: bool = True,
        label: str = "",
    ) -> None:
        pts = [(x(i), y(v)) for i, v in enumerate(vals)]
        dash_attr = f'stroke-dasharray="{dash}"' if dash else ""
        seg: list[str] = []
        for px, py in pts + [(0, None)]:
            if py is None:
                if len(seg) > 1:
                    parts.append(
                        f'<polyline fill="none" stroke="{color}" stroke-width="{width}" '
                        f'{dash_attr} points="{" ".join(seg)}"/>'
                    )
                seg = []
            else:
                seg.append(f"{px:.1f},{py:.1f}")
        if dots:
            for i, (px, py) in enumerate(pts):
                if py is not None:
                    tip = f"{label}: {keys[i]} {_fmt(vals[i])}"
                    parts.append(
                        f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}">'
                        f"<title>{html.escape(tip)}</title></circle>"
                    )

    legend = []
    spread = [result.noise.get(k, {}).get("spread") for k in keys]
    allowed = []
    for k in keys:
        a = None
        for col in cols.values():
            c = col.get(k)
            if c is not None and c.rule is not None and c.rule.name == "spread":
                a = c.rule.allowed
                break
        allowed.append(a)
    series(allowed, "#888", dash="6 4", width=2, dots=False)
    legend.append(("#888", "allowed vs builds (noise floor x multiple)"))
    if any(v is not None for v in spread):
        series(spread, "#000", width=2, label="spread")
        legend.append(("#000", "ATLAS vs OpenBLAS spread"))
    for j, (name, col) in enumerate(cols.items()):
        color = _PALETTE[j % len(_PALETTE)]
        series([col[k].metrics.max_rel if k in col else None for k in keys], color)
        legend.append(
            (color, f"port32 vs {name}" if not name.startswith("f64") else "port64 vs numpy64")
        )
    for j, (color, label) in enumerate(legend):
        yy = mt + 14 * j
        parts.append(f'<rect x="{w - mr + 8}" y="{yy}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{w - mr + 22}" y="{yy + 9}">{html.escape(label)}</text>')
    parts.append(
        f'<text transform="translate(14,{(h - mb) / 2}) rotate(-90)" text-anchor="middle">'
        "max|a-b| / max|ref| (log; exact agreement on the bottom line)</text>"
    )
    parts.append(f'<text x="{ml + 4}" y="{mt + 12}" fill="#555">forward (data)</text>')
    dx = next((x(i) for i, k in enumerate(keys) if k.startswith("diff/")), None)
    if dx is not None:
        parts.append(f'<text x="{dx + 4}" y="{mt + 12}" fill="#555">backward (diff)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px}
.pass{color:#1a7f37;font-weight:bold} .fail{color:#c62828;font-weight:bold}
table{border-collapse:collapse;font-size:12px} td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
td:first-child,td:nth-child(2),th{text-align:left} tr.sep td{border-top:3px solid #888}
td.bad{background:#fde0e0} td.ok{background:#eef8ee} td.exc{background:#fff6d6}
.muted{color:#777} code{background:#f3f3f3;padding:1px 3px}
"""


def render_html(result: ParityResult, heatmap: dict | None = None) -> str:
    """A self-contained HTML page: verdict, per-blob chart (log scale) against the noise floor,
    the table, a heat map of the worst blob's error, gate flips, the diagnosis, the local analysis, notes.

    Parameters
    ----------
    result : ParityResult
    heatmap : dict, optional
        From :func:`parity.run.worst_heatmap`.
    """
    esc = html.escape
    cols = columns(result)
    keys = _keys(result, cols)
    verdict = (
        '<span class="pass">PASS</span>' if result.passed else '<span class="fail">FAIL</span>'
    )
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>parity {esc(result.model)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Parity of the PyTorch port: {esc(result.model)} &mdash; {verdict}</h1>",
        f"<p>Backward from <code>{esc(str(result.backward_from))}</code>. Runners: "
        + ", ".join(
            f"<b>{esc(n)}</b> <span class='muted'>({esc(d.get('source', ''))})</span>"
            for n, d in result.runners.items()
        )
        + "</p>",
        "<p>Error unit: <code>max|a&minus;b| / max|reference|</code> per blob. Policy: port vs each "
        f"float32 build within {result.policy['spread_multiple']}&times; the ATLAS-vs-OpenBLAS spread; "
        f"port vs float64 truth within {result.policy['truth_multiple']}&times; Caffe's own error; floor "
        f"{result.policy['floor_rel32']:.2e}; float64 port vs numpy64 within {result.policy['floor_rel64']:.0e}. "
        "Multiples and their measurements: <code>parity/tolerance.py</code>.</p>",
        "<h2>Error per blob (forward, then backward)</h2>",
        _svg_chart(result),
    ]
    if heatmap is not None:
        png = base64.b64encode(png_heatmap(heatmap["map"])).decode()
        out += [
            f"<h2>Where the worst blob's error sits: {esc(heatmap['key'])} ({esc(heatmap['pair'])})</h2>",
            f"<p>{heatmap['ratio']:.2f}&times; its noise. |a&minus;b| of sample 0, max over channels; "
            f"colour scale 0 (dark) to {float(np.max(heatmap['map'])):.3g} (yellow); allowed "
            f"{heatmap['allowed_abs']:.3g}.</p>",
            f"<img alt='error heat map' src='data:image/png;base64,{png}' style='image-rendering:pixelated'>",
        ]
    out.append(
        "<h2>Blob by blob</h2><p class='muted'>cell: relative error, and that error as a multiple of the "
        "blob's noise (the smallest multiple that would have passed). Yellow: gate flips (ReLU, MAX pooling, Eltwise MAX decided differently within noise) corrected for (or excused).</p>"
    )
    out.append(
        "<table><tr><th>blob</th><th>layer</th><th>spread</th><th>Caffe own</th>"
        + "".join(f"<th>{esc(n)}</th>" for n in cols)
        + "</tr>"
    )
    for i, k in enumerate(keys):
        sep = (
            " class='sep'"
            if i and k.startswith("diff/") and keys[i - 1].startswith("data/")
            else ""
        )
        layer = next((col[k].layer for col in cols.values() if k in col), "")
        nz = result.noise.get(k, {})
        cells = []
        for n in cols:
            c = cols[n].get(k)
            if c is None:
                cells.append("<td class='muted'>-</td>")
                continue
            flipped = c.metrics.n_excused or c.metrics.n_corrected
            cls = "bad" if not c.passed else ("exc" if flipped else "ok")
            r = c.needed_multiple
            rs = f"{r:.2f}&times;" if r is not None and math.isfinite(r) else "inf"
            title = (
                f"max_abs {c.metrics.max_abs:.3g}, mean_abs {c.metrics.mean_abs:.3g}, ulp median "
                f"{c.metrics.ulp_median:g} p99 {c.metrics.ulp_p99:g} max {c.metrics.ulp_max:g}, "
                f"bitwise equal {c.metrics.frac_equal:.1%}, excused {c.metrics.n_excused}, "
                f"flip-corrected {c.metrics.n_corrected} (flips moved it by {c.metrics.flip_effect:.2g})"
            )
            cells.append(
                f"<td class='{cls}' title='{esc(title)}'>{_fmt(c.metrics.max_rel)} {rs}</td>"
            )
        out.append(
            f"<tr{sep}><td>{esc(k)}</td><td>{esc(layer)}</td><td>{_fmt(nz.get('spread'))}</td>"
            f"<td>{_fmt(nz.get('caffe_own'))}</td>{''.join(cells)}</tr>"
        )
    out.append("</table>")
    diag = result.diagnosis or {}
    if diag.get("cause"):
        out.append(
            f"<h2>Why it fails</h2><p class='bad'><b>{esc(diag['cause'])}</b> at layer "
            f"<b>{esc(str(diag['layer']))}</b>: {esc(diag['lines'][0])}</p>"
        )
    out.append("<h2>Gate flips</h2>")
    if result.flips:
        out.append("<ul>")
        for pair, fl in result.flips.items():
            for f in fl:
                cls = "" if f["in_band"] else " class='bad'"
                out.append(f"<li{cls}>{esc(flip_sentence(pair, f))}</li>")
        out.append("</ul>")
    else:
        out.append(
            "<p>None: every ReLU, MAX window and Eltwise MAX decided the same way on both sides of "
            "every pair.</p>"
        )
    if result.local:
        out.append("<h2>Local check: each layer alone on the reference's own inputs</h2>")
        out.append(
            f"<p>First layer that departs: <b>{esc(str(result.first_departure or 'none'))}</b></p>"
        )
        out.append(
            "<table><tr><th>layer</th><th>type</th><th>reference</th><th>worst &times; local noise</th>"
            "<th>forward: port / Caffe vs float64</th><th>backward: port vs reference</th></tr>"
        )
        for r in result.local:
            fw = "; ".join(
                f"{esc(t)} {_fmt(v['port'])} / {_fmt(v['reference'])}"
                for t, v in r["forward"].items()
            )
            bw = "; ".join(
                f"{esc(t)} {_fmt(v['port_vs_reference'])}" for t, v in r["backward"].items()
            )
            cls = "bad" if r["departs"] else "ok"
            out.append(
                f"<tr><td>{esc(r['layer'])}</td><td>{esc(r['type'])}</td><td>{esc(r['reference'])}</td>"
                f"<td class='{cls}'>{r['worst_ratio']:.2f}</td><td>{fw}</td><td>{bw}</td></tr>"
            )
        out.append("</table>")
    if result.notes:
        out.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in result.notes) + "</ul>"
        )
    if result.timings:
        out.append(
            "<p class='muted'>timings (s): "
            + ", ".join(f"{esc(k)} {v:.2f}" for k, v in result.timings.items())
            + "</p>"
        )
    out.append("</body></html>")
    return "\n".join(out)
