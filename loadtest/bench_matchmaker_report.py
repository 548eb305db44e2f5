"""The matchmaker benchmark's verdicts and its printed report."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

TARGETS = {
    "ceiling_ratio": ("4 replicas allocations/s / raw claim ceiling", ">=", 0.5),
    "fixed_p99_ms": ("p99 allocation latency at the fixed offered load (ms)", "<", 10.0),
}


def ratios(phases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    raw = [p for p in phases if p["phase"].startswith("raw")]
    ceiling = max((p["per_s"] or 0.0 for p in raw), default=None)
    closed = {p["replicas"]: p for p in phases if p["phase"] == "http closed"}
    fixed = [p for p in phases if p["phase"] == "http open"]
    four = closed.get(4) or (closed[max(closed)] if closed else None)
    out: dict[str, Any] = {"raw_ceiling_per_s": ceiling}
    out["ceiling_ratio"] = round(four["per_s"] / ceiling, 4) if four and ceiling else None
    out["ceiling_ratio_replicas"] = four["replicas"] if four else None
    if 1 in closed and four is not None and four is not closed[1] and closed[1]["per_s"]:
        out["scaling_1_to_4"] = round(four["per_s"] / closed[1]["per_s"], 3)
    if fixed:
        f = max(fixed, key=lambda p: p["replicas"])
        out["fixed_p99_ms"] = f["p99_ms"]
        out["fixed_replicas"] = f["replicas"]
        out["fixed_achieved_per_s"] = f["per_s"]
    else:
        out["fixed_p99_ms"] = None
    met = {}
    for key, (_, op, target) in TARGETS.items():
        v = out.get(key)
        met[key] = None if v is None else (v >= target if op == ">=" else v < target)
    out["met"] = met
    return out


# ----------------------------------------------------------------------------- report


def _print_phase(p: dict[str, Any]) -> None:
    name = p["phase"] + (f" x{p['replicas']}" if "replicas" in p else f" ({p['processes']} procs)")
    print(f"  done: {name}: {p['per_s']}/s; {p['saturated']}", file=sys.stderr, flush=True)


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    where = "unix socket" if report["redis"]["url"].startswith("unix") else report["redis"]["url"]
    code = report.get("code", {})
    lines = [
        f"matchmaker benchmark — {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, "
        f"Redis {report['redis']['version']} ({where}); code {code.get('commit')}"
        f"{' + uncommitted matchmaker/ changes' if code.get('matchmaker_dirty') else ''}"
        f" (matchmaker/ sha256 {code.get('matchmaker_sha256')})",
        fleet_title(report.get("fleet")),
        "",
    ]
    head = (
        f"{'phase':<26}{'allocs/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  "
        f"{'CPU cores: redis':>16} {'mm (each)':>26}{'gen':>6}{'busy':>6}  "
        f"{'CPU ms/alloc redis/mm/gen':>27}"
    )
    lines += [head, "-" * len(head)]
    for p in report["phases"]:
        c = p["cpu"]
        if p["phase"].startswith("raw"):
            name = f"{p['phase']} ({p['processes']} proc)"
            lat = p.get("latency") or {}
            p50, p99, mx = lat.get("p50_ms"), lat.get("p99_ms"), lat.get("max_ms")
        else:
            name = f"{p['phase']} x{p['replicas']}" + (f" @{p['offered_per_s']:g}/s" if "offered_per_s" in p else "")
            p50, p99, mx = p["p50_ms"], p["p99_ms"], p["max_ms"]
        mm = c["matchmaker_cores"]
        mm_s = (
            f"{c['matchmakers_cores']:.2f}" + (f" ({' '.join(f'{x:.2f}' for x in mm)})" if len(mm) > 1 else "")
            if mm
            else "-"
        )
        per = c["cpu_ms_per_op"]

        def f(x: float | None, spec: str = ".2f") -> str:
            return "-" if x is None else format(x, spec)

        lines.append(
            f"{name:<26}{f(p['per_s'], '.0f'):>10}{f(p50):>9}{f(p99):>9}{f(mx):>9}  "
            f"{c['redis_cores']:>16.2f} {mm_s:>26}{c['generators_cores']:>6.2f}{c['machine_busy']:>6.2f}  "
            f"{f(per['redis'], '.3f'):>9}/{f(per['matchmakers'], '.3f')}/{f(per['generators'], '.3f')}"
        )
    lines.append("")
    for p in report["phases"]:
        name = p["phase"] + (f" x{p['replicas']}" if "replicas" in p else "")
        lines.append(f"saturated ({name}): {p['saturated']}")
        if p.get("cpu_speed_ms") is not None:
            speed = p["cpu_speed_ms"]
            lines.append(f"  the VM just before: a fixed Python workload took {speed} CPU ms (lower is faster)")
        if len(p.get("runs", [])) > 1:
            lines.append(
                "  runs (allocs/s, p99 ms, other cores): "
                + "; ".join(
                    f"{r['per_s']}, {r['p99_ms']}, {r['other_cores']}{' <- reported' if r['chosen'] else ''}"
                    for r in p["runs"]
                )
            )
        if p.get("warning"):
            lines.append(f"  WARNING: {p['warning']}")
        if "offered_per_s" in p:
            s = p["service"]
            lines.append(
                f"  open loop: offered {p['offered_per_s']:g}/s, achieved {p['per_s']}/s, latency from due "
                f"time p50 {p['p50_ms']} / p99 {p['p99_ms']} ms, from send p99 {s['p99_ms']} ms; "
                f"max backlog {p['max_backlog']}, max send lag {p['max_send_lag_ms']} ms"
            )
        if p["phase"].startswith("http") and p.get("slots_per_app"):
            lines.append(
                f"  pool: {p['apps']} apps x {p['slots_per_app']} READY slots, about "
                f"{p['ready_per_app_end']} left per app at the end; {p['live_sessions_end']} live sessions"
            )
        if rq := run_queue_line(p["cpu"].get("run_queue")):
            lines.append(rq)
        if p["phase"].startswith("http"):
            lines.append(
                "  redis per allocation (calls, us inside redis): "
                + ", ".join(
                    f"{r['command']} {r['calls']:g}x {r['usec']:g}us" for r in p["redis_commands_per_alloc"][:8]
                )
            )
            if io := p.get("redis_io_per_alloc"):
                lines.append(
                    f"  redis socket reads / writes per allocation (every client's round trips in, replies out): "
                    f"{io['reads']} / {io['writes']}"
                )
        lines += fleet_lines(p)
    r = report["ratios"]
    lines.append("")
    lines.append(f"raw claim ceiling: {r['raw_ceiling_per_s']}/s")
    if r.get("scaling_1_to_4") is not None:
        lines.append(f"scaling 1 -> {r['ceiling_ratio_replicas']} replicas: x{r['scaling_1_to_4']}")
    lines.append("targets:")
    for key, (label, op, target) in TARGETS.items():
        v, met = r.get(key), r["met"].get(key)
        verdict = "n/a" if met is None else ("met" if met else "MISSED")
        lines.append(f"  {label}: {v} (target {op} {target}) -> {verdict}")
    for p in report["phases"]:
        prof = p.get("profile")
        if prof and prof.get("samples"):
            lines.append(
                f"hot spots, one matchmaker during {p['phase']} x{p['replicas']} "
                f"({prof['samples']} samples), inclusive %:"
            )
            lines += [f"  {pct:5.1f}  {fn}" for fn, pct in prof["inclusive_pct"]]
            lines.append("  self %:")
            lines += [f"  {pct:5.1f}  {fn}" for fn, pct in prof["self_pct"][:12]]
    return "\n".join(lines)


def run_queue_line(rq: dict[str, Any] | None) -> str | None:
    """How long each group waited runnable for a CPU: per turn on a CPU, and per allocation."""
    if not rq or all(g["ms_per_turn"] is None for g in rq.values()):
        return None
    parts = [
        f"{name} {_f(g['ms_per_turn'])} ms per turn, {_f(g['ms_per_op'])} ms per alloc"
        for name, g in rq.items()
        if g["ms_per_turn"] is not None
    ]
    return "  waiting for a CPU (run queue): " + "; ".join(parts)


def fleet_title(fleet: dict[str, Any] | None) -> str:
    if not fleet:
        return "fleet: none (allocations alone: no heartbeats, no session ends, no queue)"
    return (
        f"fleet at work: {fleet['shape']} hosts x slots in {fleet['apps']} apps, {fleet['heartbeats']} heartbeats "
        f"every {fleet['period_s']:g} s; CPU ms/alloc in the table is the whole window's (heartbeats included), "
        "the per-allocation cost with heartbeats taken out is under each phase"
    )


def _f(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def fleet_lines(p: dict[str, Any]) -> list[str]:
    """The fleet at work during a phase, and CPU per allocation and per heartbeat."""
    fl = p.get("fleet")
    if not fl:
        return []
    hb, win, cost = fl["heartbeats_only"], fl["window"], fl["cost"]
    q = win["queue"]
    out = [
        f"  fleet {fl['shape']} ({fl['mode']} heartbeats every {fl['period_s']:g} s): "
        f"{win['heartbeats_per_s']} heartbeats/s applied during the phase "
        f"({hb['heartbeats_per_s']}/s with no allocations), {win['slot_reports_per_beat']} slot reports, "
        f"{win.get('gpu_reports_per_beat')} GPU reports and "
        f"{win['body_bytes_mean']} bytes per beat, heartbeat p50/p99 {win['heartbeat_p50_ms']}/"
        f"{win['heartbeat_p99_ms']} ms, {win['full_beats']} full + {win['delta_beats']} delta, "
        f"{win['heartbeats_failed']} failed; {win['resets']} slot resets",
        f"  queue app: {q['asked']} asked, {q['waited']} queued (202), {q['served']} served from the queue "
        f"(wait p50/p99 {q['wait_p50_ms']}/{q['wait_p99_ms']} ms), {q['refused']} refused; "
        f"session ends: {p.get('ends', {}).get('sent', 0)} events sent in {p.get('ends', {}).get('requests', 0)} "
        f"requests {p.get('ends', {}).get('statuses', {})}",
        f"  CPU ms per heartbeat: redis {_f(cost['per_heartbeat_ms']['redis'])}, replicas "
        f"{_f(cost['per_heartbeat_ms']['matchmakers'])}; per allocation (heartbeats taken out): redis "
        f"{_f(cost['per_alloc_ms']['redis'])}, replicas {_f(cost['per_alloc_ms']['matchmakers'])}",
    ]
    if win.get("errors") or hb.get("errors"):
        out.append(f"  fleet errors: {win.get('errors')} (heartbeats only: {hb.get('errors')})")
    return out


def merge_ends(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The generators' session-event counts together: events, HTTP requests, per-event statuses."""
    statuses: dict[str, int] = {}
    for p in parts:
        for k, v in p.get("statuses", {}).items():
            statuses[k] = statuses.get(k, 0) + v
    requests = sum(p.get("requests", p.get("sent", 0)) for p in parts)
    return {"sent": sum(p.get("sent", 0) for p in parts), "requests": requests, "statuses": statuses}
