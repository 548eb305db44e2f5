"""The load-test report as one HTML page: headline tables and inline SVG plots."""

from __future__ import annotations

from html import escape
from typing import Any

from loadtest import svg

STYLE = """body{font:14px system-ui,sans-serif;margin:24px;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:8px 16px 8px 0}
figcaption{font-weight:600;margin-bottom:4px}.bad{color:#b00}.good{color:#070}.empty{color:#888}"""


def _f(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 1e5 else f"{v:,.0f}"
    return escape(str(v))


def table(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{_f(v)}</td></tr>" for k, v in rows) + "</table>"


def pct_table(title: str, items: dict[str, dict[str, Any]]) -> str:
    head = "<tr><th>" + escape(title) + "</th><th>n</th><th>p50</th><th>p95</th><th>p99</th><th>max</th></tr>"
    body = "".join(
        f"<tr><td>{escape(name)}</td>"
        + "".join(f"<td>{_f(p.get(k))}</td>" for k in ("n", "p50", "p95", "p99", "max"))
        + "</tr>"
        for name, p in items.items()
    )
    return f"<table>{head}{body}</table>"


def render(r: dict[str, Any]) -> str:
    s, tl, gen, srv, w = r["sessions"], r["timeline"], r["generator"], r["server"], r["webrtc"]

    def col(key: str, scale: float = 1.0) -> list[tuple[float, float | None]]:
        return [(row["t"], None if row.get(key) is None else row[key] * scale) for row in tl]

    plots = [
        svg.line_chart("join latency over time (ms)", [(f"p{q}", col(f"join_p{q}_ms")) for q in (50, 95, 99)]),
        svg.line_chart(
            "throughput (sessions per second)",
            [("arrived", col("arrivals")), ("ok", col("ok")), ("failed", col("failed"))],
        ),
        svg.line_chart(
            "open sessions and the server's players",
            [("tester open", col("open")), ("signalling players", col("sig_players"))],
        ),
        svg.bar_chart(
            "errors by kind", sorted(((k, float(v)) for k, v in r["errors_by_kind"].items()), key=lambda kv: -kv[1])
        ),
        svg.line_chart(
            "matchmaker queue length and live sessions",
            [("queue", col("queue_length")), ("live sessions", col("mm_sessions"))],
        ),
        svg.line_chart(
            "server CPU (cores)",
            [
                ("server", col("server_cpu")),
                ("with children", col("server_tree_cpu")),
                ("generator max", col("gen_cpu_max")),
            ],
        ),
        svg.line_chart(
            "server RSS (MB)", [("server", col("server_rss", 1e-6)), ("with children", col("server_tree_rss", 1e-6))]
        ),
    ]
    ttff = w["ttff_ms"]
    abuse_rows = "".join(
        f"<tr><td>{escape(k)}</td><td>{a['runs']}</td><td>{a['answered_as_documented']}</td><td>{escape(str(a['outcomes']))}</td></tr>"
        for k, a in r["abuse"].items()
    )
    counters = r["counters"]
    where = escape(str({k: v for k, v in r["target"].items() if k != "kind"}))
    abuse_head = "<tr><th>kind</th><th>runs</th><th>answered as documented</th><th>outcomes</th></tr>"
    rtc_pcts = {"first frame (ms)": ttff, "frames/s": w["fps"], "input round trip (ms)": w["input_rtt_ms"]}
    sections = [
        f"<h1>pixelfleet load test: {escape(r['scenario']['name'])}</h1>",
        f"<p>target {escape(r['target']['kind'])}: {where}; "
        f"{_f(r['duration_s'])} s; {escape(str(r['machine'].get('platform', '')))}</p>",
        "<h2>Sessions</h2>",
        table([(k.replace("_", " "), v) for k, v in s.items()]),
        pct_table("latency (ms)", r["latency_ms"]),
        "<h2>WebRTC sample (aiortc)</h2>",
        table([("sampled", w["sample"]), ("connected", w["connected"]), ("connect success", w["connect_success"]),
               ("input probes lost", w["input_probes_lost"]), ("errors", w["errors_by_kind"] or None)]),
        pct_table("webrtc", rtc_pcts),
        "<h2>Abusive clients</h2>",
        f"<table>{abuse_head}{abuse_rows}</table>"
        if abuse_rows else "<p class='empty'>none in this scenario</p>",
        "<h2>Generator and server</h2>",
        f"<p class='{'bad' if gen['saturated'] else 'good'}'>{escape(gen['verdict'])}</p>",
        table([(k.replace("_", " "), v) for k, v in gen.items() if k != "verdict"]),
        table([(k.replace("_", " "), v) for k, v in srv.items()]),
        "<h2>The servers' own counters</h2>",
        f"<p>tolerance: {escape(counters['tolerance'])}</p>",
        *(f"<h3>{escape(name)}</h3>" + table(list(c.items())) for name, c in counters.items() if isinstance(c, dict)),
        "<h2>Plots</h2>",
        *plots,
    ]  # fmt: skip
    if w["sample"]:
        sections.append(svg.cdf_chart("time to first frame (ms)", [("ttff", w["ttff_values_ms"])]))
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
        "<title>pixelfleet load test</title>"
        f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )


def render_benchmark(r: dict[str, Any]) -> str:
    """A benchmark scenario's page: its figures, a chart of the rates, the command."""
    figures = r["figures"]
    rows = "".join(
        f"<tr><td>{escape(label)}</td><td>{_f(f['value'])}</td>"
        f"<td>{'lower' if f['lower_is_better'] else 'higher'}</td></tr>"
        for label, f in figures.items()
    )
    rates = [(label, f["value"]) for label, f in figures.items() if label.endswith("/s")]
    sections = [
        f"<h1>Benchmark {escape(r['scenario']['name'])} ({escape(r['target']['benchmark'])})</h1>",
        f"<p>{_f(r['wall_s'])} s; <code>{escape(r['command'])}</code></p>",
        table([(k.replace("_", " "), v) for k, v in r["machine"].items()]),
        "<h2>Figures</h2>",
        f"<table><tr><th>figure</th><th>value</th><th>better</th></tr>{rows}</table>",
        "<h2>Rates</h2>",
        svg.bar_chart("rates (per second)", rates),
    ]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
        "<title>pixelfleet benchmark</title>"
        f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )
