"""Self-contained reports: the t-SNE figure (PIL only) and HTML pages with inlined images and SVG."""

from __future__ import annotations

import colorsys
import html
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import _io

__all__ = ["draw_tsne", "svg_curve", "write_visualize_html", "write_evaluate_html", "palette"]


def palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct colours (evenly spaced hues)."""
    return [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.85, 0.9)) for i in range(n)
    ]


def draw_tsne(
    embedding: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    means: list[np.ndarray],
    *,
    size: int = 1000,
    thumb: int = 110,
) -> np.ndarray:
    """The paper's figure 4: points coloured by cluster, each cluster's mean image at its centroid."""
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    pad = thumb // 2 + 10
    lo, hi = embedding.min(0), embedding.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)

    def to_px(p):
        q = (np.asarray(p) - lo) / span
        return pad + q[0] * (size - 2 * pad), pad + (1 - q[1]) * (size - 2 * pad)

    cols = palette(len(means))
    for p, c in zip(embedding, labels, strict=True):
        x, y = to_px(p)
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=cols[int(c)])
    for i, (cen, mean) in enumerate(zip(centroids, means, strict=True)):
        x, y = to_px(cen)
        t = Image.fromarray(mean).resize((thumb, thumb), Image.BICUBIC)
        x0, y0 = int(x - thumb / 2), int(y - thumb / 2)
        d.rectangle([x0 - 4, y0 - 4, x0 + thumb + 3, y0 + thumb + 3], fill=cols[i])
        img.paste(t, (x0, y0))
        d.text((x0, y0 + thumb + 5), f"cluster {i}", fill=(0, 0, 0))
    return np.asarray(img)


def svg_curve(
    values: list[float], *, width: int = 360, height: int = 140, marks: list[int] | None = None
) -> str:
    """An inline SVG line chart of ``values`` (octave boundaries as vertical lines)."""
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return "<svg width='10' height='10'></svg>"
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    n = max(len(values) - 1, 1)
    pts = " ".join(
        f"{30 + i * (width - 40) / n:.1f},{height - 20 - (v - lo) / span * (height - 30):.1f}"
        for i, v in enumerate(values)
        if v is not None and np.isfinite(v)
    )
    lines = "".join(
        f"<line x1='{30 + m * (width - 40) / n:.1f}' y1='5' x2='{30 + m * (width - 40) / n:.1f}' "
        f"y2='{height - 20}' stroke='#ccc'/>"
        for m in (marks or [])
    )
    # Inline SVG in HTML5 needs no xmlns, and the page then names no URL at all.
    return (
        f"<svg width='{width}' height='{height}'>"
        f"<rect width='100%' height='100%' fill='white' stroke='#ddd'/>{lines}"
        f"<polyline fill='none' stroke='#c22' stroke-width='1.5' points='{pts}'/>"
        f"<text x='2' y='12' font-size='10'>{hi:.4g}</text>"
        f"<text x='2' y='{height - 22}' font-size='10'>{lo:.4g}</text>"
        f"<text x='30' y='{height - 5}' font-size='10'>step 0</text>"
        f"<text x='{width - 60}' y='{height - 5}' font-size='10'>step {len(values) - 1}</text></svg>"
    )


_CSS = (
    "body{font-family:sans-serif;margin:20px}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:6px;vertical-align:top;font-size:13px}"
    "img{image-rendering:pixelated}.warn{color:#b00;font-weight:bold}pre{font-size:12px}"
)


def _img_tag(src: str | None, title: str = "", side: int = 227) -> str:
    if not src:
        return "<i>none</i>"
    return f"<img src='{html.escape(src, quote=True)}' width='{int(side)}' title='{html.escape(title, quote=True)}'>"


def _provenance(trace: dict) -> str:
    parity = trace.get("parity") or {}
    status = parity.get("status", "n/a")
    cls = " class='warn'" if status not in ("pass", "not applicable") else ""
    msg = html.escape(str(parity.get("message", "")))
    report = html.escape(str(parity.get("report")))
    fixes = "".join(f"<li>{html.escape(f)}</li>" for f in trace.get("fixes", []))
    return (
        f"<p{cls}>Parity: <b>{html.escape(status)}</b> - {msg} (report: {report})</p>"
        f"<p>Mode: <b>{html.escape(str(trace.get('mode')))}</b>"
        + (f"; fixed relative to the original:<ul>{fixes}</ul>" if fixes else "")
        + "</p>"
    )


def write_visualize_html(out: Path, trace: dict, *, nearest: dict | None = None) -> None:
    """``index.html`` of a visualize run: per facet the mean image, result, nearest training images
    and the activation curve. Everything inlined, no network.

    Parameters
    ----------
    out : Path
        The run's folder (its images are read from there, the page written there).
    trace : dict
        The run's trace.
    nearest : dict, optional
        ``{facet index: [(path, distance, cluster)]}`` as
        :func:`mfv.codes.nearest_training_images` gives it, or ``{"error": message}`` when that
        search failed; rendering only, nothing is computed here.
    """
    nearest = nearest or {}
    rows = []
    for f in trace["facets"]:
        init = f["init"]
        init_src = _io.file_data_uri(init) if init and Path(init).is_file() else None
        res = out / f"facet_{f['index']}.png"
        if not res.exists():
            last = f.get("octaves_done", 0)
            res = out / f"facet_{f['index']}_octave{last}.png"
        res_src = _io.file_data_uri(res, max_side=400) if res.exists() else None
        acts = [s["activation"] for s in f["steps"]]
        marks, seen = [], None
        for j, s in enumerate(f["steps"]):
            if s["octave"] != seen and j:
                marks.append(j)
            seen = s["octave"]
        near = nearest.get(f["index"], []) if isinstance(nearest, dict) else []
        near_html = (
            " ".join(
                _img_tag(_io.file_data_uri(p, max_side=128), f"{p} d={d:.4g}", 96)
                for p, d, _c in near
            )
            or "<i>no means folder</i>"
        )
        status = _esc(f["status"]) + (
            f": <span class='warn'>{_esc(f['message'])}</span>" if f["message"] else ""
        )
        e = _esc
        rows.append(
            f"<tr><td>facet {e(f['index'])}<br>cluster {e(f.get('cluster'))}<br>{status}<br>"
            f"{e(f['octaves_done'])}/{e(f['octaves_total'])} octaves<br>{float(f['seconds']):.1f} s</td>"
            f"<td>{_img_tag(init_src, str(init))}</td><td>{_img_tag(res_src, str(res), 272)}</td>"
            f"<td>{near_html}</td><td>{svg_curve(acts, marks=marks)}<br>final: {e(f['final_activation'])}</td></tr>"
        )
    err = nearest.get("error") if isinstance(nearest, dict) else None
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>MFV {_esc(trace['model']['name'])}</title>"
        f"<style>{_CSS}</style></head><body><h1>MFV: {_esc(trace['objective']['description'])}</h1>"
        f"<p>Model <b>{_esc(trace['model']['name'])}</b>, schedule "
        f"<b>{_esc(trace['schedule']['name'])}</b>, seed {_esc(trace['seed'])}, status {_esc(trace['status'])}</p>"
        + _provenance(trace)
        + (f"<p class='warn'>nearest images unavailable: {_esc(err)}</p>" if err else "")
        + "<table><tr><th>facet</th><th>initial (mean) image</th><th>result</th>"
        "<th>3 nearest training images (code space)</th><th>target activation per step</th></tr>"
        + "".join(rows)
        + "</table><details><summary>run metadata</summary><pre>"
        + html.escape(
            json.dumps({k: v for k, v in trace.items() if k != "facets"}, indent=1, default=str)
        )
        + "</pre></details></body></html>"
    )
    _io.atomic_write_text(out / "index.html", page)


def write_evaluate_html(path: Path, result: dict) -> None:
    """The evaluation as a table of numbers."""
    rows = []
    for f in result["facets"]:
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    f["index"],
                    f.get("cluster"),
                    f.get("status"),
                    _fmt(f.get("activation")),
                    f.get("softmax_rank"),
                    _fmt(f.get("softmax_prob")),
                    _fmt(f.get("cluster_activation_mean")),
                    _fmt(f.get("cluster_activation_max")),
                    _fmt(f.get("cluster_rank_median")),
                    f.get("activation_percentile_in_cluster"),
                    f.get("nearest_image"),
                    f.get("nearest_cluster"),
                    f.get("nearest_in_own_cluster"),
                )
            )
            + "</tr>"
        )
    heads = [
        "facet",
        "cluster",
        "status",
        "activation",
        "softmax rank",
        "softmax p",
        "cluster act. mean",
        "cluster act. max",
        "cluster rank median",
        "act. percentile in cluster",
        "nearest real image",
        "its cluster",
        "in own cluster",
    ]
    d = result["diversity"]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>MFV evaluation</title><style>{_CSS}</style>"
        f"</head><body><h1>MFV evaluation: {html.escape(str(result['run']))}</h1>"
        + _provenance(result)
        + f"<p>Target {_esc(result['objective'])}; code layer {_esc(result['code_layer'])}.</p>"
        + f"<p>Diversity (mean pairwise L2 distance of code vectors): facets <b>{_esc(_fmt(d.get('facets')))}</b>, "
        f"mean images {_esc(_fmt(d.get('mean_images')))}, real images {_esc(_fmt(d.get('real_images')))}.</p>"
        + f"<p>Facets whose nearest real image lies in their own cluster: <b>{_esc(result.get('nearest_in_own_cluster_fraction'))}</b></p>"
        + "<table><tr>"
        + "".join(f"<th>{h}</th>" for h in heads)
        + "</tr>"
        + "".join(rows)
        + "</table>"
        + "<pre>"
        + html.escape(json.dumps(result, indent=1, default=str)[:20000])
        + "</pre></body></html>"
    )
    _io.atomic_write_text(path, page)


def _esc(v) -> str:
    """Any value as HTML text: every string that reaches a page passes through here."""
    return html.escape(str(v), quote=True)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
