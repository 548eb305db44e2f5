"""``pixelfleet loadtest compare A.json B.json``: two reports side by side, with ratios."""

from __future__ import annotations

import argparse
import sys
from html import escape
from pathlib import Path
from typing import Any

import orjson

# (label, path in the report, True when lower is better)
FIGURES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("sessions ok/s", ("sessions", "ok_per_s"), False),
    ("sessions failed", ("sessions", "failed"), True),
    ("join p50 ms", ("latency_ms", "join", "p50"), True),
    ("join p95 ms", ("latency_ms", "join", "p95"), True),
    ("join p99 ms", ("latency_ms", "join", "p99"), True),
    ("connect p95 ms", ("latency_ms", "connect", "p95"), True),
    ("session request p95 ms", ("latency_ms", "session_request", "p95"), True),
    ("queue wait p95 ms", ("latency_ms", "queue_wait", "p95"), True),
    ("first frame p50 ms", ("webrtc", "ttff_ms", "p50"), True),
    ("first frame p95 ms", ("webrtc", "ttff_ms", "p95"), True),
    ("webrtc fps p50", ("webrtc", "fps", "p50"), False),
    ("input rtt p50 ms", ("webrtc", "input_rtt_ms", "p50"), True),
    ("server CPU mean (cores)", ("server", "cpu_mean"), True),
    ("server RSS max", ("server", "rss_max"), True),
    ("server RSS slope MB/min", ("server", "rss_slope_mb_per_min"), True),
    ("generator CPU max", ("generator", "cpu_max"), True),
)


def pick(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
    cur: Any = report
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return float(cur) if isinstance(cur, int | float) and not isinstance(cur, bool) else None


def compare(base: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    if "figures" in base or "figures" in new:  # benchmark scenarios: the figures they name
        return _compare_figures(base.get("figures", {}), new.get("figures", {}))
    rows = []
    for label, path, lower_better in FIGURES:
        a, b = pick(base, path), pick(new, path)
        ratio = b / a if a not in (None, 0) and b is not None else None
        rows.append({"figure": label, "base": a, "new": b, "ratio": ratio, "lower_is_better": lower_better})
    return rows


def _compare_figures(base: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for label in list(base) + [k for k in new if k not in base]:
        a, b = base.get(label, {}).get("value"), new.get(label, {}).get("value")
        lower_better = bool((base.get(label) or new.get(label) or {}).get("lower_is_better"))
        ratio = b / a if a not in (None, 0) and b is not None else None
        rows.append({"figure": label, "base": a, "new": b, "ratio": ratio, "lower_is_better": lower_better})
    return rows


def regressions(rows: list[dict[str, Any]], max_ratio: float) -> list[str]:
    """Lower-is-better figures that grew past ``max_ratio``, higher-is-better ones that shrank below 1/it."""
    out = []
    for r in rows:
        if r["ratio"] is None:
            continue
        worse = r["ratio"] > max_ratio if r["lower_is_better"] else r["ratio"] < 1 / max_ratio
        if worse:
            out.append(f"{r['figure']}: {r['base']:.4g} -> {r['new']:.4g} (x{r['ratio']:.2f})")
    return out


def _f(v: float | None, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def render_text(rows: list[dict[str, Any]]) -> str:
    w = max([28, *(len(r["figure"]) for r in rows)])
    lines = [f"{'figure':<{w}} {'base':>12} {'new':>12} {'new/base':>9}"]
    lines += [f"{r['figure']:<{w}} {_f(r['base']):>12} {_f(r['new']):>12} {_f(r['ratio'], '.2f'):>9}" for r in rows]
    return "\n".join(lines)


def render_html(rows: list[dict[str, Any]], names: tuple[str, str]) -> str:
    body = "".join(
        f"<tr><td>{escape(r['figure'])}</td><td>{_f(r['base'])}</td><td>{_f(r['new'])}</td>"
        f"<td>{_f(r['ratio'], '.2f')}</td></tr>"
        for r in rows
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>pixelfleet load test comparison</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:24px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
        "</style></head><body>"
        f"<h1>Comparison</h1><p>base {escape(names[0])}, new {escape(names[1])}</p>"
        f"<table><tr><th>figure</th><th>base</th><th>new</th><th>new/base</th></tr>{body}</table></body></html>"
    )


def run_compare(opts: argparse.Namespace) -> int:
    try:
        base = orjson.loads(Path(opts.base).read_bytes())
        new = orjson.loads(Path(opts.new).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        print(f"pixelfleet loadtest compare: {exc}", file=sys.stderr)
        return 2
    rows = compare(base, new)
    print(render_text(rows))
    if opts.html:
        Path(opts.html).write_text(render_html(rows, (opts.base, opts.new)))
    if opts.max_ratio is not None:
        worse = regressions(rows, opts.max_ratio)
        for line in worse:
            print(f"regression: {line}", file=sys.stderr)
        return 1 if worse else 0
    return 0
