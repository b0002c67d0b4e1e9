"""Reports of a parity run: a terminal table, and a self-contained HTML page (no external assets)."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass

import numpy as np

from port.blobkeys import is_data, is_diff

from .closeness import configurations_text, render_all_html, report_lines
from .compare import BlobCheck, ParityResult
from .diagnosis import flip_sentence
from .heatmap import png_heatmap

__all__ = [
    "columns",
    "format_table",
    "render_html",
    "png_heatmap",
    "summary_line",
    "worst_ratios",
]


def columns(result: ParityResult) -> dict[str, dict[str, BlobCheck]]:
    """Judged checks arranged by column (each pair's ``column``, by default its reference's name)
    then blob key; the first pair of a column to judge a blob fills its cell."""
    cols: dict[str, dict[str, BlobCheck]] = {}
    for p in result.pairs:
        if p.rule == "info":
            continue
        col = cols.setdefault(p.column or p.reference, {})
        for c in p.checks:
            col.setdefault(c.key, c)
    return cols


def _legends(result: ParityResult) -> dict[str, str]:
    """Each column's legend in the chart: its first pair's (``"<subject> vs <column>"`` by default)."""
    out: dict[str, str] = {}
    for p in result.pairs:
        if p.rule != "info":
            name = p.column or p.reference
            out.setdefault(name, p.legend or f"{p.subject} vs {name}")
    return out


def _keys(result: ParityResult, cols: dict[str, dict[str, BlobCheck]]) -> list[str]:
    seen: dict[str, None] = {}
    for k in result.noise:
        seen[k] = None
    for col in cols.values():
        for k in col:
            seen.setdefault(k, None)
    fwd = [k for k in seen if is_data(k)]
    bwd = [k for k in seen if is_diff(k)]
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


_MAX_LISTED_FAILURES = 20


def format_table(result: ParityResult) -> str:
    """The terminal report: one row per blob (forward, then backward as the gradient flows).

    Each cell shows the error relative to the reference's range and, after it, that error as a
    multiple of the blob's noise (the smallest multiple that would have passed; the policy's
    multiples are in the header). ``*`` marks cells where gate flips (:mod:`parity.gates`) were
    corrected for (or excused, without a float64 net).
    """
    return "\n".join(
        [
            _verdict_line(result),
            *_text_blob_table(result),
            "",
            *_text_gate_flips(result),
            *_text_local_check(result),
            *_text_why_it_fails(result),
            *_text_failures(result),
            *_text_closing(result),
        ]
    )


def _layer_of(cols: dict[str, dict[str, BlobCheck]], key: str) -> str:
    """The layer that writes blob ``key``, as the first column judging it names it ("" if none)."""
    return next((col[key].layer for col in cols.values() if key in col), "")


def _starts_backward(keys: list[str], i: int) -> bool:
    """Whether row ``i`` is the first backward (``diff/``) row after the forward (``data/``) ones."""
    return bool(i) and is_diff(keys[i]) and is_data(keys[i - 1])


def _verdict_line(result: ParityResult) -> str:
    """The first line: verdict, backward seed, the policy's multiples, and a synthetic input."""
    verdict = "PASS" if result.passed else "FAIL"
    pol = result.policy
    return (
        f"parity {result.model}: {verdict}   backward from {result.backward_from}   "
        f"(allowed: {pol['spread_multiple']}x spread vs builds, {pol['truth_multiple']}x Caffe's own vs truth, "
        f"floor {pol['floor_rel32']:.2e}; float64 {pol['floor_rel64']:.0e})"
        + (f"   INPUT {result.input_source}" if result.input_source.startswith("SYNTHETIC") else "")
    )


def _text_blob_table(result: ParityResult) -> list[str]:
    """Header, rule and one padded row per blob; a rule between the forward and backward rows."""
    cols = columns(result)
    keys = _keys(result, cols)
    names = list(cols)
    head = ["blob", "layer", "spread", "caffe-own"] + names
    rows = []
    for k in keys:
        nz = result.noise.get(k, {})
        rows.append(
            [k, _layer_of(cols, k), _fmt(nz.get("spread")), _fmt(nz.get("caffe_own"))]
            + [_cell(cols[n].get(k)) for n in names]
        )
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    rule = "  ".join("-" * w for w in widths)
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), rule]
    for i, r in enumerate(rows):
        if _starts_backward(keys, i):
            lines.append(rule)
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    return lines


def _text_gate_flips(result: ParityResult) -> list[str]:
    """One line per kinked layer's flips per pair of runners, as the HTML lists them."""
    return [f"gate flips {flip_sentence(pair, f)}" for pair, fl in result.flips.items() for f in fl]


def _text_local_check(result: ParityResult) -> list[str]:
    """One line on the layer-alone check, if it ran: its worst layer and the first that departs."""
    if not result.local:
        return []
    worst = max(result.local, key=lambda r: r.get("worst_ratio", 0.0))
    return [
        f"local check ({len(result.local)} layer runs): worst {worst['layer']} "
        f"{worst['worst_ratio']:.2f}x of its local noise; "
        + (
            f"FIRST LAYER THAT DEPARTS: {result.first_departure}"
            if result.first_departure
            else "no layer departs when run alone"
        )
    ]


def _text_why_it_fails(result: ParityResult) -> list[str]:
    """The diagnosed cause of a failure, when there is one."""
    diag = result.diagnosis or {}
    if not diag.get("cause"):
        return []
    return [f"WHY IT FAILS ({diag['cause']}, layer {diag['layer']}): {diag['lines'][0]}"]


def _text_failures(result: ParityResult) -> list[str]:
    """The first failing checks, each with the multiple of the noise it would have needed."""
    fails = [(p, c) for p in result.pairs for c in p.checks if not c.passed]
    lines = [
        f"FAIL {p.subject} vs {p.reference} {c.key} (layer {c.layer}): rel {_fmt(c.metrics.max_rel)} > "
        f"allowed {_fmt(c.rule.allowed)}; would need {c.needed_multiple:.3g}x the noise "
        f"({c.rule.noise_source} {_fmt(c.rule.noise)}) instead of {c.rule.multiple}x"
        for p, c in fails[:_MAX_LISTED_FAILURES]
    ]
    if len(fails) > _MAX_LISTED_FAILURES:
        lines.append(f"... and {len(fails) - _MAX_LISTED_FAILURES} more failures")
    return lines


def _text_closing(result: ParityResult) -> list[str]:
    """The worst error per column against its noise floor, the notes, the timings."""
    lines = []
    wr = worst_ratios(result)
    if wr:
        lines.append(
            "worst error / noise floor: "
            + ", ".join(f"{n} {r:.2f}x ({k})" for n, (r, k) in wr.items())
        )
    lines += report_lines(result)
    if result.notes:
        lines.extend(f"note: {n}" for n in result.notes)
    if result.timings:
        lines.append("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    return lines


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
    if result.configurations:
        parts.append(f"({configurations_text(result.configurations)})")
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


@dataclass(frozen=True)
class _ChartFrame:
    """The chart's geometry: the canvas, its margins, a log10 error axis from ``lo`` to ``hi``,
    and ``n`` blobs spread evenly along x."""

    n: int
    w: int = 1200
    h: int = 420
    ml: int = 64
    mr: int = 260
    mt: int = 20
    mb: int = 120
    lo: int = -16
    hi: int = 0

    def x(self, i: int) -> float:
        """The x of blob ``i`` (the middle of its slot)."""
        return self.ml + (self.w - self.ml - self.mr) * (i + 0.5) / self.n

    def y(self, v: float | None) -> float | None:
        """The y of error ``v`` on the log axis, clipped to it; None for a missing or non-finite one."""
        if v is None or not math.isfinite(v):
            return None
        # Zero error sits on the bottom edge of the log axis.
        lv = self.lo if v <= 0 else max(self.lo, min(self.hi, math.log10(v)))
        return self.mt + (self.h - self.mt - self.mb) * (self.hi - lv) / (self.hi - self.lo)


def _svg_chart(result: ParityResult) -> str:
    """The per-blob error chart (log scale): every judged column against the allowed error and
    the builds' spread, forward then backward."""
    cols = columns(result)
    keys = _keys(result, cols)
    if not keys:
        return "<p>nothing compared</p>"
    frame = _ChartFrame(len(keys))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{frame.w}" height="{frame.h}" font-family="sans-serif" font-size="11">'
    ]
    parts += _svg_axes(frame, keys)
    legend: list[tuple[str, str]] = []
    parts += _svg_series(
        frame, keys, _allowed_per_blob(cols, keys), "#888", dash="6 4", width=2, dots=False
    )
    legend.append(("#888", "allowed vs builds (noise floor x multiple)"))
    spread = [result.noise.get(k, {}).get("spread") for k in keys]
    if any(v is not None for v in spread):
        parts += _svg_series(frame, keys, spread, "#000", width=2, label="spread")
        legend.append(("#000", "ATLAS vs OpenBLAS spread"))
    legends = _legends(result)
    for j, (name, col) in enumerate(cols.items()):
        color = _PALETTE[j % len(_PALETTE)]
        parts += _svg_series(
            frame, keys, [col[k].metrics.max_rel if k in col else None for k in keys], color
        )
        legend.append((color, legends[name]))
    parts += _svg_legend(frame, legend)
    parts += _svg_titles(frame, keys)
    parts.append("</svg>")
    return "\n".join(parts)


def _allowed_per_blob(cols: dict[str, dict[str, BlobCheck]], keys: list[str]) -> list[float | None]:
    """The error allowed against the builds per blob (from the first column judging it by the
    spread rule), None where no column does."""
    allowed: list[float | None] = []
    for k in keys:
        a = None
        for col in cols.values():
            c = col.get(k)
            if c is not None and c.rule is not None and c.rule.name == "spread":
                a = c.rule.allowed
                break
        allowed.append(a)
    return allowed


def _svg_axes(frame: _ChartFrame, keys: list[str]) -> list[str]:
    """Grid lines with their powers of ten, the forward/backward divider, and the blob labels."""
    w, h, ml, mr, mt, mb = frame.w, frame.h, frame.ml, frame.mr, frame.mt, frame.mb
    parts = []
    for e in range(frame.lo, frame.hi + 1, 2):
        yy = frame.y(10.0**e)
        parts.append(f'<line x1="{ml}" x2="{w - mr}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{ml - 6}" y="{yy + 4:.1f}" text-anchor="end">1e{e}</text>')
    label_every = max(1, math.ceil(frame.n / 70))
    for i, k in enumerate(keys):
        if is_diff(k) and (i == 0 or is_data(keys[i - 1])):
            xx = (frame.x(i) + frame.x(i - 1)) / 2 if i else ml
            parts.append(
                f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{mt}" y2="{h - mb}" stroke="#999" stroke-dasharray="4 3"/>'
            )
        # Deep nets have hundreds of blobs: label a readable subset; every point has a tooltip.
        if i % label_every == 0:
            parts.append(
                f'<text transform="translate({frame.x(i):.1f},{h - mb + 8}) rotate(60)" font-size="9">'
                f"{html.escape(k)}</text>"
            )
    return parts


def _svg_series(
    frame: _ChartFrame,
    keys: list[str],
    vals: list[float | None],
    color: str,
    *,
    dash: str = "",
    width: float = 1.5,
    dots: bool = True,
    label: str = "",
) -> list[str]:
    """One series: polylines broken where a value is missing, and (``dots``) a point with a
    tooltip naming ``label``, the blob and the value at each present value."""
    pts = [(frame.x(i), frame.y(v)) for i, v in enumerate(vals)]
    dash_attr = f'stroke-dasharray="{dash}"' if dash else ""
    parts = []
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
    return parts


def _svg_legend(frame: _ChartFrame, legend: list[tuple[str, str]]) -> list[str]:
    """A swatch and its label per ``(colour, label)``, in the right margin."""
    parts = []
    for j, (color, label) in enumerate(legend):
        yy = frame.mt + 14 * j
        parts.append(
            f'<rect x="{frame.w - frame.mr + 8}" y="{yy}" width="10" height="10" fill="{color}"/>'
        )
        parts.append(
            f'<text x="{frame.w - frame.mr + 22}" y="{yy + 9}">{html.escape(label)}</text>'
        )
    return parts


def _svg_titles(frame: _ChartFrame, keys: list[str]) -> list[str]:
    """The y axis' title and the "forward" / "backward" captions over their halves."""
    parts = [
        f'<text transform="translate(14,{(frame.h - frame.mb) / 2}) rotate(-90)" text-anchor="middle">'
        "max|a-b| / max|ref| (log; exact agreement on the bottom line)</text>",
        f'<text x="{frame.ml + 4}" y="{frame.mt + 12}" fill="#555">forward (data)</text>',
    ]
    dx = next((frame.x(i) for i, k in enumerate(keys) if is_diff(k)), None)
    if dx is not None:
        parts.append(f'<text x="{dx + 4}" y="{frame.mt + 12}" fill="#555">backward (diff)</text>')
    return parts


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
    out = [
        *_html_header(result),
        "<h2>Error per blob (forward, then backward)</h2>",
        _svg_chart(result),
        *_html_heatmap(heatmap),
        *_html_blob_table(result),
        *render_all_html(result),
        *_html_diagnosis(result),
        *_html_local_check(result),
        *_html_notes_and_timings(result),
        "</body></html>",
    ]
    return "\n".join(out)


def _html_header(result: ParityResult) -> list[str]:
    """The page's head, its title with the verdict, the runners, and the policy in one paragraph."""
    esc = html.escape
    verdict = (
        '<span class="pass">PASS</span>' if result.passed else '<span class="fail">FAIL</span>'
    )
    return [
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
    ]


def _html_heatmap(heatmap: dict | None) -> list[str]:
    """Where the worst blob's error sits, as an inline PNG (nothing without a heat map)."""
    if heatmap is None:
        return []
    esc = html.escape
    png = base64.b64encode(png_heatmap(heatmap["map"])).decode()
    return [
        f"<h2>Where the worst blob's error sits: {esc(heatmap['key'])} ({esc(heatmap['pair'])})</h2>",
        f"<p>{heatmap['ratio']:.2f}&times; its noise. |a&minus;b| of sample 0, max over channels; "
        f"colour scale 0 (dark) to {float(np.max(heatmap['map'])):.3g} (yellow); allowed "
        f"{heatmap['allowed_abs']:.3g}.</p>",
        f"<img alt='error heat map' src='data:image/png;base64,{png}' style='image-rendering:pixelated'>",
    ]


def _html_blob_table(result: ParityResult) -> list[str]:
    """The blob-by-blob table: noise columns, then one coloured cell per judged column."""
    esc = html.escape
    cols = columns(result)
    keys = _keys(result, cols)
    out = [
        "<h2>Blob by blob</h2><p class='muted'>cell: relative error, and that error as a multiple of the "
        "blob's noise (the smallest multiple that would have passed). Yellow: gate flips (ReLU, MAX pooling, Eltwise MAX decided differently within noise) corrected for (or excused).</p>",
        "<table><tr><th>blob</th><th>layer</th><th>spread</th><th>Caffe own</th>"
        + "".join(f"<th>{esc(n)}</th>" for n in cols)
        + "</tr>",
    ]
    for i, k in enumerate(keys):
        sep = " class='sep'" if _starts_backward(keys, i) else ""
        nz = result.noise.get(k, {})
        cells = "".join(_html_cell(cols[n].get(k)) for n in cols)
        out.append(
            f"<tr{sep}><td>{esc(k)}</td><td>{esc(_layer_of(cols, k))}</td><td>{_fmt(nz.get('spread'))}</td>"
            f"<td>{_fmt(nz.get('caffe_own'))}</td>{cells}</tr>"
        )
    out.append("</table>")
    return out


def _html_cell(c: BlobCheck | None) -> str:
    """One judged cell: error and its multiple of the noise, coloured by outcome, metrics as tooltip."""
    if c is None:
        return "<td class='muted'>-</td>"
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
    return f"<td class='{cls}' title='{html.escape(title)}'>{_fmt(c.metrics.max_rel)} {rs}</td>"


def _html_diagnosis(result: ParityResult) -> list[str]:
    """Why it fails (when a cause was found), then every gate flip of every pair."""
    esc = html.escape
    out = []
    diag = result.diagnosis or {}
    if diag.get("cause"):
        out.append(
            f"<h2>Why it fails</h2><p class='bad'><b>{esc(diag['cause'])}</b> at layer "
            f"<b>{esc(str(diag['layer']))}</b>: {esc(diag['lines'][0])}</p>"
        )
    out.append("<h2>Gate flips</h2>")
    if not result.flips:
        out.append(
            "<p>None: every ReLU, MAX window and Eltwise MAX decided the same way on both sides of "
            "every pair.</p>"
        )
        return out
    out.append("<ul>")
    for pair, fl in result.flips.items():
        for f in fl:
            cls = "" if f["in_band"] else " class='bad'"
            out.append(f"<li{cls}>{esc(flip_sentence(pair, f))}</li>")
    out.append("</ul>")
    return out


def _html_local_check(result: ParityResult) -> list[str]:
    """The layer-alone check (if it ran): the first departing layer, then one row per layer run."""
    if not result.local:
        return []
    esc = html.escape
    out = [
        "<h2>Local check: each layer alone on the reference's own inputs</h2>",
        f"<p>First layer that departs: <b>{esc(str(result.first_departure or 'none'))}</b></p>",
        "<table><tr><th>layer</th><th>type</th><th>reference</th><th>worst &times; local noise</th>"
        "<th>forward: port / Caffe vs float64</th><th>backward: port vs reference</th></tr>",
    ]
    for r in result.local:
        fw = "; ".join(
            f"{esc(t)} {_fmt(v['port'])} / {_fmt(v['reference'])}" for t, v in r["forward"].items()
        )
        bw = "; ".join(f"{esc(t)} {_fmt(v['port_vs_reference'])}" for t, v in r["backward"].items())
        cls = "bad" if r["departs"] else "ok"
        out.append(
            f"<tr><td>{esc(r['layer'])}</td><td>{esc(r['type'])}</td><td>{esc(r['reference'])}</td>"
            f"<td class='{cls}'>{r['worst_ratio']:.2f}</td><td>{fw}</td><td>{bw}</td></tr>"
        )
    out.append("</table>")
    return out


def _html_notes_and_timings(result: ParityResult) -> list[str]:
    """The run's notes and its timings, each only when there are any."""
    esc = html.escape
    out = []
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
    return out
