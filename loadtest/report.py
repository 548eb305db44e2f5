"""The load-test report: every figure computed from the sessions' results and the
samples, as one JSON-able dict (the fields are described in docs/loadtest.md). Pure."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

# The report's numbers and the servers' own counters must agree within this (docs/loadtest.md).
AGREE_FRACTION = 0.05
AGREE_ABSOLUTE = 2
# A generator above this part of one core (or with its loop this late) is the bottleneck.
GEN_CPU_LIMIT = 0.85
GEN_LAG_LIMIT_MS = 100.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def pcts(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "mean": sum(values) / len(values) if values else None,
    }


def slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x (seconds), per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return None
    return 60.0 * sum((p[0] - mx) * (p[1] - my) for p in points) / sxx


def agrees(tester: float, server: float) -> bool:
    return abs(tester - server) <= AGREE_FRACTION * max(tester, server) + AGREE_ABSOLUTE


def held_at(results: Sequence[dict[str, Any]], t: float) -> int:
    """Player sockets the tester held at ``t`` (sessions in their hold)."""
    return sum(r["held"] for r in results if r["held"] and r["hold_from"] <= t < (r["hold_until"] or r["end"]))


def _vals(results: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in results if r.get(key) is not None]


def timeline(
    results: Sequence[dict[str, Any]],
    progress: Sequence[dict[str, Any]],
    samples: Sequence[dict[str, Any]],
    start: float,
    end: float,
) -> list[dict[str, Any]]:
    """One row per second: arrivals, outcomes, join latency, load and the servers' view."""
    n = max(1, math.ceil(end - start))
    rows: list[dict[str, Any]] = [{"t": i, "arrivals": 0, "ok": 0, "failed": 0, "join": []} for i in range(n)]

    def row(t: float) -> dict[str, Any]:
        return rows[min(n - 1, max(0, int(t - start)))]

    for r in results:
        row(r["t0"])["arrivals"] += 1
        row(r["end"])["ok" if r["ok"] else "failed"] += 1
        if r["kind"] != "abuse" and r.get("join_ms") is not None:
            row(r["t0"])["join"].append(r["join_ms"])
    by_sec: dict[int, dict[int, dict[str, Any]]] = {}
    for p in progress:
        by_sec.setdefault(int(p["t"] - start), {})[p["worker"]] = p
    for i, rw in enumerate(rows):
        joins = rw.pop("join")
        rw.update({f"join_{k}_ms": v for k, v in pcts(joins).items() if k in ("p50", "p95", "p99")})
        workers = by_sec.get(i, {})
        rw["open"] = sum(p["open"] for p in workers.values()) if workers else None
        rw["gen_cpu_max"] = max((p["cpu"] for p in workers.values()), default=None)
        inside = [s for s in samples if int(s["t"] - start) == i]
        for key in (
            "sig_players",
            "queue_length",
            "mm_sessions",
            "server_cpu",
            "server_rss",
            "server_tree_cpu",
            "server_tree_rss",
        ):
            vals = [s[key] for s in inside if s.get(key) is not None]
            rw[key] = max(vals) if vals else None
    return rows


def build(
    scenario: dict[str, Any],
    target: dict[str, Any],
    results: Sequence[dict[str, Any]],
    progress: Sequence[dict[str, Any]],
    samples: Sequence[dict[str, Any]],
    *,
    start: float,
    end: float,
    planned: int,
    workers: int,
    records: dict[str, Any] | None = None,
    server_pid: int | None = None,
    observer_errors: dict[str, int] | None = None,
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    normal = [r for r in results if r["kind"] != "abuse"]
    proto = [r for r in normal if r["kind"] == "protocol"]
    rtc = [r for r in normal if r["kind"] == "webrtc"]
    abusive = [r for r in results if r["kind"] == "abuse"]
    ok = [r for r in normal if r["ok"]]
    arrival_s = sum(p["duration_s"] for p in scenario["phases"])
    report: dict[str, Any] = {
        "version": 1,
        "scenario": scenario,
        "target": target,
        "machine": machine or {},
        "started_at": start,
        "duration_s": end - start,
        "sessions": {
            "planned": planned,
            "finished": len(results),
            "normal": len(normal),
            "ok": len(ok),
            "failed": len(normal) - len(ok),
            "abusive": len(abusive),
            "ok_per_s": len(ok) / arrival_s if arrival_s else None,
            "queued": sum(1 for r in normal if r["queued"]),
            "reconnects": sum(r["reconnects"] for r in normal),
            "reconnects_ok": sum(r["reconnects_ok"] for r in normal),
            "player_sockets": sum(r["players"] for r in normal),
            "relayed_messages": sum(r["relayed"] for r in normal),
        },
        "latency_ms": {
            "join": pcts(_vals(proto, "join_ms")),
            "connect": pcts(_vals(normal, "connect_ms")),
            "session_request": pcts(_vals(normal, "request_ms")),
            "queue_wait": pcts(_vals(normal, "queue_ms")),
        },
        "errors_by_kind": dict(Counter(r["error"] for r in normal if r["error"])),
        "abuse": {
            kind: {
                "runs": sum(1 for r in abusive if r["abuse"] == kind),
                "answered_as_documented": sum(1 for r in abusive if r["abuse"] == kind and r["abuse_expected"]),
                "outcomes": dict(Counter(r["abuse_outcome"] or r["error"] for r in abusive if r["abuse"] == kind)),
            }
            for kind in sorted({r["abuse"] for r in abusive})
        },
        "webrtc": {
            "sample": len(rtc),
            "connected": sum(1 for r in rtc if r["ttff_ms"] is not None),
            "connect_success": (sum(1 for r in rtc if r["ok"]) / len(rtc)) if rtc else None,
            "ttff_ms": pcts(_vals(rtc, "ttff_ms")),
            "ttff_values_ms": sorted(_vals(rtc, "ttff_ms")),
            "fps": pcts(_vals(rtc, "fps")),
            "input_rtt_ms": pcts([x for r in rtc for x in r["input_rtt_ms"]]),
            "input_probes_lost": sum(scenario["webrtc"]["input_probes"] for r in rtc if r["ok"])
            - sum(len(r["input_rtt_ms"]) for r in rtc if r["ok"]),
            "errors_by_kind": dict(Counter(r["error"] for r in rtc if r["error"])),
        },
        "timeline": timeline(results, progress, samples, start, end),
        "generator": generator_summary(progress, workers),
        "server": server_summary(samples, server_pid),
        "counters": counters(results, samples, records, target),
        "observer_errors": observer_errors or {},
    }
    return report


def generator_summary(progress: Sequence[dict[str, Any]], workers: int) -> dict[str, Any]:
    cpu = [p["cpu"] for p in progress]
    lag = [p["lag_ms"] for p in progress]
    top_cpu = max(cpu, default=0.0)
    top_lag = max(lag, default=0.0)
    saturated = top_cpu >= GEN_CPU_LIMIT or top_lag >= GEN_LAG_LIMIT_MS
    return {
        "workers": workers,
        "cpu_max": top_cpu,
        "cpu_p95": percentile(cpu, 95),
        "loop_lag_ms_max": top_lag,
        "rss_max": max((p["rss"] for p in progress), default=None),
        "saturated": saturated,
        "verdict": (
            "the generator was the bottleneck: its CPU or event loop was at its limit; add --workers"
            if saturated
            else "the generator kept up (its CPU and loop lag stayed under the limits)"
        ),
    }


def server_summary(samples: Sequence[dict[str, Any]], pid: int | None) -> dict[str, Any]:
    if pid is None or not any("server_rss" in s for s in samples):
        return {"pid": pid, "local": False}
    out: dict[str, Any] = {"pid": pid, "local": True}
    for key in ("", "tree_"):
        rss = [(s["t"], float(s[f"server_{key}rss"])) for s in samples if f"server_{key}rss" in s]
        cpu = [s[f"server_{key}cpu"] for s in samples if f"server_{key}cpu" in s][1:]  # the first has no delta
        out[f"{key}cpu_mean"] = sum(cpu) / len(cpu) if cpu else None
        out[f"{key}cpu_max"] = max(cpu, default=None)
        out[f"{key}rss_start"] = rss[0][1] if rss else None
        out[f"{key}rss_end"] = rss[-1][1] if rss else None
        out[f"{key}rss_max"] = max((v for _, v in rss), default=None)
        slope = slope_per_min([(t - rss[0][0], v / 1e6) for t, v in rss]) if rss else None
        out[f"{key}rss_slope_mb_per_min"] = slope
    return out


def counters(
    results: Sequence[dict[str, Any]],
    samples: Sequence[dict[str, Any]],
    records: dict[str, Any] | None,
    target: dict[str, Any],
) -> dict[str, Any]:
    """The tester's counts beside the servers' own, and whether they agree."""
    out: dict[str, Any] = {"tolerance": f"|tester - server| <= {AGREE_FRACTION:.0%} of the larger + {AGREE_ABSOLUTE}"}
    pairs = [(held_at(results, s["t"]), s["sig_players"]) for s in samples if s.get("sig_players") is not None]
    if pairs:
        tester_peak = max(p[0] for p in pairs)
        server_peak = max(p[1] for p in pairs)
        out["signaling"] = {
            "peak_players_server": server_peak,
            "peak_players_tester": tester_peak,
            "players_after_run": pairs[-1][1],
            "agree": agrees(tester_peak, server_peak),
        }
    ids = {r["session_id"] for r in results if r["session_id"]}
    if target.get("kind") == "platform":
        mm = [s["mm_sessions"] for s in samples if s.get("mm_sessions") is not None]
        out["matchmaker"] = {
            "sessions_tester": len(ids),
            "peak_live_sessions_server": max(mm, default=None),
            "records_matched": records["matched"] if records else None,
            "records_end_reasons": records["end_reasons"] if records else None,
            "agree": (records["matched"] == len(ids)) if records else None,
        }
    return out
