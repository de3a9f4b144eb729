"""`migration_final_report.html`: the report model as one self-contained page.

Inline CSS and an inline SVG timeline; no script, no font, no image, no URL loaded from anywhere; every value goes
through `html.escape`; `@media print` keeps it readable on paper (no backgrounds needed, rows not split).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from timetodo.ops.migrate.report.model import Report, Row, Window, clock, human_seconds

CSS = """
:root{--ok:#2e7d32;--bad:#c62828;--warn:#ef6c00;--run:#1565c0;--back:#6a1b9a;--muted:#666;--line:#ddd}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;margin:0 auto;
 max-width:1100px;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:2px solid #333;padding-bottom:2px}
.sub{color:var(--muted);margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid var(--line);border-radius:6px;padding:10px 14px;min-width:170px}
.card b{display:block;font-size:20px}.card span{color:var(--muted);font-size:12px;text-transform:uppercase}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;text-transform:uppercase;color:var(--muted)}
td.when{white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.sub td:first-child{padding-left:26px;color:#444}
tr.rollback td{background:#f6eefa}
.status{font-weight:600}.s-done,.s-ok{color:var(--ok)}.s-failed,.s-FAILED{color:var(--bad)}
.s-interrupted,.s-warning{color:var(--warn)}.s-running{color:var(--run)}.s-skipped{color:var(--muted)}
.err{color:var(--bad);font-size:12px}
svg{width:100%;height:auto;display:block}
svg text{font:11px system-ui,sans-serif;fill:#222}
.legend{font-size:12px;color:var(--muted)}
@media print{
 body{max-width:none;padding:0;font-size:11px}
 h2{break-after:avoid}tr,.card,svg{break-inside:avoid}
 *{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
"""

COLORS = {"done": "#43a047", "failed": "#e53935", "interrupted": "#fb8c00", "running": "#1e88e5"}


def e(value: Any) -> str:
    """Escaped for HTML text and attribute values."""
    return html.escape("—" if value is None else str(value), quote=True)


def _status(value: str) -> str:
    return f'<span class="status s-{e(value)}">{e(value)}</span>'


def _row_name(row: Row) -> str:
    if row.parent:
        return row.step
    return row.step + (f" (attempt {row.attempt})" if row.attempt > 1 else "")


def _tick_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400):
        if span / step <= 8:
            return step
    return 86400 * max(1, round(span / 86400 / 8))


def _tick_label(offset: float) -> str:
    if offset < 60:
        return f"+{offset:.0f} s"
    if offset < 3600:
        return f"+{offset / 60:.0f} min" if offset % 60 == 0 else f"+{int(offset // 60)} min {int(offset % 60)} s"
    return f"+{offset / 3600:.1f} h"


def timeline(report: Report) -> str:
    """The phases on a time axis (inline SVG): one lane per row, the freeze / forwarding windows across all lanes."""
    rows = list(report.rows)
    if not rows:
        return '<p id="timeline">nothing ran yet</p>'
    windows = [w for w in (report.freeze, report.forwarding) if w is not None]
    t0 = min([row.started_at for row in rows] + [w.started_at for w in windows])
    ends = [row.ended_at for row in rows if row.ended_at] + [w.ended_at for w in windows if w.ended_at]
    t1 = max([*ends, *(row.started_at for row in rows)])
    span = max(t1 - t0, 1.0)
    label_w, width, lane, top = 190, 1000, 18, 24
    chart = width - label_w - 20
    height = top + lane * len(rows) + 26

    def x(ts: float) -> float:
        return label_w + (ts - t0) / span * chart

    parts = [
        f'<svg id="timeline" role="img" aria-label="timeline" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    step = _tick_step(span)
    tick = 0.0
    while tick <= span + 1e-9:
        tx = x(t0 + tick)
        parts.append(f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{height - 20}" stroke="#eee"/>')
        parts.append(f'<text x="{tx:.1f}" y="{height - 6}" text-anchor="middle">{e(_tick_label(tick))}</text>')
        tick += step
    for window, color, cls in (
        (report.freeze, "#e53935", "freeze"),
        (report.forwarding, "#fbc02d", "forwarding"),
    ):
        if window is None:
            continue
        parts.append(_window(window, color, cls, x, top, height, t1))
    for i, row in enumerate(rows):
        y = top + i * lane
        start = x(row.started_at)
        end = x(row.ended_at if row.ended_at else (rows[i + 1].started_at if i + 1 < len(rows) else t1))
        color = "#8e24aa" if row.step == "rollback" and row.status == "done" else COLORS.get(row.status, "#9e9e9e")
        opacity = "0.6" if row.parent else "1"
        indent = "   · " if row.parent else ""
        parts.append(f'<text x="4" y="{y + 12}">{e(indent + _row_name(row))}</text>')
        parts.append(
            f'<rect class="bar" x="{start:.1f}" y="{y + 3}" width="{max(end - start, 2):.1f}" height="{lane - 6}" '
            f'fill="{color}" fill-opacity="{opacity}"><title>{e(_row_name(row))}: {e(human_seconds(row.seconds))}'
            f"</title></rect>"
        )
    parts.append("</svg>")
    legend = (
        '<p class="legend">Bars: green done, red failed, orange interrupted (killed, resumed later), purple rollback; '
        "the red band is the write freeze"
        + ("; the yellow band the forwarding window" if report.forwarding else "")
        + f". Axis: time since {e(clock(t0))}.</p>"
    )
    return "".join(parts) + legend


def _window(window: Window, color: str, cls: str, x: Callable[[float], float], top: int, height: int, t1: float) -> str:
    start = x(window.started_at)
    end = x(window.ended_at if window.ended_at else t1)
    seconds = None if window.ended_at is None else window.ended_at - window.started_at
    return (
        f'<g class="{cls}"><rect x="{start:.1f}" y="{top - 8}" width="{max(end - start, 2):.1f}" '
        f'height="{height - top - 12}" fill="{color}" fill-opacity="0.15" stroke="{color}" stroke-dasharray="3 2"/>'
        f'<text x="{start:.1f}" y="{top - 12}" fill="{color}">{e(window.label)} {e(human_seconds(seconds))}</text></g>'
    )


def _steps_table(report: Report) -> str:
    head = "<tr><th>step</th><th>status</th><th>start</th><th>end</th><th>duration</th><th>moved</th></tr>"
    body = []
    for row in report.rows:
        cls = "sub" if row.parent else ("rollback" if row.step == "rollback" else "")
        moved = "<br>".join(f"{e(m.what)}: {e(m.label)}" + (f" · {e(m.rate)}" if m.rate else "") for m in row.moved)
        error = f'<div class="err">{e(row.error)}</div>' if row.error else ""
        body.append(
            f'<tr class="{cls}"><td>{e(_row_name(row))}{error}</td><td>{_status(row.status)}</td>'
            f'<td class="when">{e(clock(row.started_at))}</td><td class="when">{e(clock(row.ended_at))}</td>'
            f'<td class="num">{e(human_seconds(row.seconds))}</td><td>{moved}</td></tr>'
        )
    return f'<table id="steps">{head}{"".join(body)}</table>'


def _moved_table(report: Report) -> str:
    rows = [(row, m) for row in report.rows for m in row.moved]
    if not rows:
        return "<p>Nothing recorded as moved.</p>"
    head = "<tr><th>phase</th><th>what</th><th>amount</th><th>time</th><th>speed</th></tr>"
    body = "".join(
        f"<tr><td>{e(_row_name(row))}</td><td>{e(m.what)}</td><td class=num>{e(m.label)}</td>"
        f"<td class=num>{e(human_seconds(m.seconds))}</td><td class=num>{e(m.rate or '—')}</td></tr>"
        for row, m in rows
    )
    return f'<table id="moved">{head}{body}</table>'


def _verification_table(report: Report) -> str:
    if not report.verification:
        return '<p id="verification">Not validated.</p>'
    head = "<tr><th>section</th><th>check</th><th>result</th><th>figures</th></tr>"
    body = "".join(
        f"<tr><td>{e(c.section)}</td><td>{e(c.check)}</td><td>{_status(c.status)}</td><td>{e(c.figures)}</td></tr>"
        for c in report.verification
    )
    return f'<table id="verification">{head}{body}</table>'


def _sides_table(report: Report) -> str:
    keys: list[str] = []
    for side in report.sides:
        keys += [k for k in side.details if k not in keys]
    head = "<tr><th></th>" + "".join(f"<th>{e(side.role)}</th>" for side in report.sides) + "</tr>"
    lines = [
        ("address", [side.address for side in report.sides]),
        ("host", [side.host for side in report.sides]),
        ("image", [side.image for side in report.sides]),
        ("version", [side.version for side in report.sides]),
    ] + [(k, [side.details.get(k) for side in report.sides]) for k in keys]
    body = "".join(
        f"<tr><th>{e(label)}</th>" + "".join(f"<td>{e(v)}</td>" for v in values) + "</tr>" for label, values in lines
    )
    return f'<table id="sides">{head}{body}</table>'


def render_html(report: Report) -> str:
    verdict = "—" if report.verification_ok is None else ("passed" if report.verification_ok else "FAILED")
    cards = [
        ("outcome", report.outcome),
        ("write freeze", report.write_freeze),
        (
            "total time",
            human_seconds(
                None if report.ended_at is None or report.started_at is None else report.ended_at - report.started_at
            ),
        ),
        ("verification", verdict),
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Migration report — {e(report.outcome)}</title><style>{CSS}</style></head><body>"
        "<h1>Time to DO — migration report</h1>"
        f'<p class="sub">{e(clock(report.started_at))} → {e(clock(report.ended_at))} · generated '
        f"{e(clock(report.generated_at))}</p>"
        '<div class="cards">'
        + "".join(f'<div class="card"><span>{e(k)}</span><b>{e(v)}</b></div>' for k, v in cards)
        + "</div>"
        + "<h2>Timeline</h2>"
        + timeline(report)
        + "<h2>Steps, in the order they ran</h2>"
        + _steps_table(report)
        + "<h2>What moved</h2>"
        + _moved_table(report)
        + "<h2>Verification</h2>"
        + _verification_table(report)
        + "<h2>Source and target</h2>"
        + _sides_table(report)
        + "</body></html>\n"
    )
