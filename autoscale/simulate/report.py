"""The simulator's outputs: a Markdown table, JSON, and an HTML page of SVG plots (no
plotting library: the page is self-contained)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import msgspec

from autoscale.simulate.engine import Result

COLUMNS = (
    ("trace", "trace"),
    ("pool", "sizer"),
    ("sessions", "sessions"),
    ("GPU-h", "gpu_hours"),
    ("idle GPU-h", "idle_gpu_hours"),
    ("cost $", "cost"),
    ("wait p50 s", "wait_p50_s"),
    ("p95 s", "wait_p95_s"),
    ("p99 s", "wait_p99_s"),
    ("waited", "waited_share"),
    ("cold-start waits", "cold_start_share"),
    ("Spot interruptions (absorbed)", "spot_interruptions"),
    ("sessions cut", "sessions_cut"),
)
LABELS = {"static": "static peak", "reactive": "reactive", "forecast": "ours (forecast)"}


def _cell(r: Result, field: str) -> str:
    v = getattr(r, field)
    if field == "sizer":
        return LABELS.get(str(v), str(v))
    if field == "spot_interruptions":
        return f"{v} ({r.spot_absorbed})"
    if field.endswith("_share"):
        return f"{100 * v:.2f} %"
    if isinstance(v, float):
        return f"{v:,.1f}" if field.startswith("wait") else f"{v:,.0f}"
    return str(v)


def table(results: Sequence[Result]) -> str:
    """Markdown table, then each pool's idle GPU-hours against static and reactive."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r, f) for _, f in COLUMNS) + " |" for r in results]
    by = {r.sizer: r for r in results}
    ours = by.get("forecast")
    if ours is not None:
        for other in ("static", "reactive"):
            base = by.get(other)
            if base is not None and base.idle_gpu_hours > 0:
                saved = 1 - ours.idle_gpu_hours / base.idle_gpu_hours
                lines.append(f"\nours vs {LABELS[other]}: {100 * saved:.1f} % fewer idle GPU-hours")
    return "\n".join(lines)


def as_json(results: Sequence[Result], with_samples: bool = False) -> bytes:
    rows = [r if with_samples else msgspec.structs.replace(r, samples=[]) for r in results]
    return msgspec.json.format(msgspec.json.encode(rows))


_COLORS = {"static": "#888", "reactive": "#d62728", "forecast": "#1f77b4", "demand": "#000"}


def _polyline(points: list[tuple[float, float]], sx: float, sy: float, h: int, color: str) -> str:
    path = " ".join(f"{x * sx:.1f},{h - y * sy:.1f}" for x, y in points)
    return f'<polyline fill="none" stroke="{color}" stroke-width="1" points="{path}"/>'


def _chart(title: str, series: dict[str, list[tuple[float, float]]], unit: str, w: int = 1100, h: int = 220) -> str:
    xmax = max((p[0] for pts in series.values() for p in pts), default=1.0) or 1.0
    ymax = max((p[1] for pts in series.values() for p in pts), default=1.0) or 1.0
    sx, sy = w / xmax, (h - 10) / ymax
    lines = [_polyline(pts, sx, sy, h, _COLORS.get(name, "#2ca02c")) for name, pts in series.items()]
    days = int(xmax // 86400)
    ticks = "".join(
        f'<line x1="{d * 86400 * sx:.1f}" y1="0" x2="{d * 86400 * sx:.1f}" y2="{h}" stroke="#eee"/>'
        for d in range(1, days + 1)
    )
    legend = ", ".join(
        f'<span style="color:{_COLORS.get(n, "#2ca02c")}">{html.escape(LABELS.get(n, n))}</span>' for n in series
    )
    return (
        f"<h3>{html.escape(title)} ({unit}; max {ymax:,.0f}; grid: days)</h3><p>{legend}</p>"
        f'<svg width="{w}" height="{h}" style="border:1px solid #ccc">{ticks}{"".join(lines)}</svg>'
    )


def _thin(points: list[tuple[float, float]], most: int = 2000) -> list[tuple[float, float]]:
    """At most ``most`` points: the peak of each run, so spikes stay visible."""
    step = max(1, len(points) // most)
    return [max(points[i : i + step], key=lambda p: p[1]) for i in range(0, len(points), step)]


def html_page(results: Sequence[Result], command: str) -> str:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>pixelfleet simulate</title>",
        "<body style='font-family:sans-serif'>",
        f"<h1>pixelfleet simulate</h1><p><code>{html.escape(command)}</code></p>",
    ]
    for trace in dict.fromkeys(r.trace for r in results):
        rs = [r for r in results if r.trace == trace]
        demand = _thin([(s.t, float(s.demand)) for s in rs[0].samples])
        ready = {r.sizer: _thin([(s.t, float(s.ready_slots)) for s in r.samples]) for r in rs}
        waits = {r.sizer: _thin([(s.t, s.oldest_wait_s) for s in r.samples]) for r in rs}
        parts.append(f"<h2>trace: {html.escape(trace)}</h2><pre>{html.escape(table(rs))}</pre>")
        parts.append(_chart("demand (players playing or queued) and READY slots", {"demand": demand, **ready}, "slots"))
        parts.append(_chart("longest wait in the queue", waits, "s"))
    return "\n".join(parts) + "</body>"
