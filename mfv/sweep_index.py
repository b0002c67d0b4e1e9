"""The sweep's overview page: every unit's facets as thumbnails, linking to the unit's own page."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np

from port.atomic import write_text_atomic

from . import _io

__all__ = ["write_index"]

_CSS = (
    "body{font-family:sans-serif;margin:1em}.u{display:inline-block;vertical-align:top;margin:4px;"
    "padding:4px;border:1px solid #ccc;width:%dpx}.u img{margin:1px}.u p{margin:2px;font-size:12px}"
    ".bad{color:#b00}.pending{color:#888}a{text-decoration:none}"
)


def _thumb_uri(path: Path, side: int) -> str | None:
    try:  # JPEG: 10000 thumbnails must stay a page, not a download
        return _io.file_data_uri(path, max_side=side, fmt="JPEG")
    except (OSError, ValueError):
        return None


def write_index(
    out: str | Path, records: list[dict], params: dict | None = None, *, side: int = 64
) -> Path:
    """Write ``out/index.html``: every unit's facet thumbnails (inline), linking to its own page.

    Parameters
    ----------
    out : path
        The sweep folder.
    records : list of dict
        Unit records (``summary.json``'s ``units``).
    params : dict, optional
        The sweep's parameters, shown at the top.
    side : int
        Thumbnail size in pixels.

    Returns
    -------
    Path
        The page.
    """
    out = Path(out)
    cells, counts = [], {}
    for r in sorted(records, key=lambda r: r["unit"]):
        u, status = r["unit"], r.get("status", "?")
        counts[status] = counts.get(status, 0) + 1
        udir = out / str(u)
        thumbs = []
        for f in sorted(udir.glob("facet_*.png"), key=_facet_order):
            if re.fullmatch(r"facet_\d+\.png", f.name):
                uri = _thumb_uri(f, side)
                if uri:
                    thumbs.append(
                        f"<img src='{uri}' width='{side}' height='{side}' alt='{html.escape(f.stem)}'>"
                    )
        secs = (r.get("seconds") or {}).get("total")
        ev = r.get("evaluation") or {}
        acts = [f.get("activation") for f in r.get("facets", []) if f.get("activation") is not None]
        lines = [
            f"<b>{u}</b> {html.escape(str(r.get('label', '')))}",
            f"<span class='{'' if status == 'done' else 'pending' if status == 'pending' else 'bad'}'>"
            f"{html.escape(status)}</span>" + (f", {secs:.0f} s" if secs is not None else ""),
        ]
        if acts:
            lines.append(
                f"activation mean {np.mean(acts):.3g}, nearest own {ev.get('nearest_in_own_cluster_fraction')}"
            )
        if r.get("message") and status != "done":
            lines.append(f"<span class='bad'>{html.escape(str(r['message'])[:200])}</span>")
        body = "".join(f"<p>{x}</p>" for x in lines) + "".join(thumbs)
        link = (udir / "index.html").is_file()
        cells.append(
            "<div class='u'>"
            + (f"<a href='{u}/index.html'>{body}</a>" if link else body)
            + "</div>"
        )
    width = max(200, 5 * (side + 4))
    head = ", ".join(f"{n} {html.escape(s)}" for s, n in sorted(counts.items()))
    meta = (
        ""
        if params is None
        else (
            "<details><summary>parameters</summary><pre>"
            + html.escape(json.dumps(params, indent=1, default=str))
            + "</pre></details>"
        )
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>MFV sweep {html.escape(out.name)}</title>"
        f"<style>{_CSS % width}</style></head><body><h1>MFV sweep: {len(records)} units</h1>"
        f"<p>{head}. Each unit links to its own page (mean images, facets, nearest images, "
        f"activation curves); figures in <a href='summary.json'>summary.json</a>.</p>{meta}"
        + "".join(cells)
        + "</body></html>"
    )
    path = out / "index.html"
    write_text_atomic(path, page)
    return path


def _facet_order(p: Path) -> tuple[int, str]:
    m = re.search(r"\d+", p.stem)
    return (int(m.group()) if m else -1, p.name)
