"""The orchestrator's side of the simulated fleet (``loadtest.fleet_sim`` children).

A fleet is ``HOSTSxSLOTS`` (``--fleet 96x500``): hosts of one app each, the apps
``fleet-app0..`` taking the hosts in turn, plus one small host of the ``queue`` app
(``--queue-slots`` slots for ``--queue-players`` players) so that a queue forms. The
hosts are shared round-robin over ``--fleet-procs`` processes; each host talks to one
replica (host ``i`` to replica ``i mod n``), as agents behind a load balancer would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from collections.abc import Sequence
from typing import Any

from loadtest.bench_signaling import ProcTree, percentile
from loadtest.children import JsonLineChild
from loadtest.fleet_sim import GPU_PROTOCOL

QUEUE_APP = "queue-app"


class FleetShape:
    def __init__(self, hosts: int, slots: int, apps: int) -> None:
        self.hosts, self.slots, self.napps = hosts, slots, max(1, min(apps, hosts))

    @property
    def apps(self) -> list[str]:
        return [f"fleet-app{i}" for i in range(self.napps)]

    def layout(self, queue_slots: int) -> list[tuple[str, str, int]]:
        """(host id, app, slots) of every simulated host."""
        out = [(f"fh{h}", f"fleet-app{h % self.napps}", self.slots) for h in range(self.hosts)]
        if queue_slots > 0:
            out.append(("fq0", QUEUE_APP, queue_slots))
        return out

    def __str__(self) -> str:
        return f"{self.hosts}x{self.slots}"


def parse_fleet(text: str) -> FleetShape | None:
    """``none`` or ``HOSTSxSLOTS`` (``96x500``)."""
    if text.strip().lower() == "none":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise argparse.ArgumentTypeError(f"--fleet {text!r}: expected none or HOSTSxSLOTS, like 96x500")
    return FleetShape(int(m[1]), int(m[2]), 1)


class FleetProc(JsonLineChild):
    def __init__(self, proc: asyncio.subprocess.Process, log: str) -> None:
        super().__init__("fleet", proc, log)
        self.tree = ProcTree(proc.pid)


def gpu_reports(requested: str) -> bool:
    """Whether the simulated agents report loads per GPU (``--loads``)."""
    if requested == "per-gpu" and not GPU_PROTOCOL:
        raise ValueError("--loads per-gpu: this matchmaker's Heartbeat has no gpus field yet")
    return requested == "per-gpu" or (requested == "auto" and GPU_PROTOCOL)


class FleetRun:
    """The fleet of one phase: started against that phase's replicas, stopped after it."""

    def __init__(self, opts: argparse.Namespace, shape: FleetShape, ports: Sequence[int], tokens: dict[str, str]):
        self.opts, self.shape, self.ports, self.tokens = opts, shape, list(ports), tokens
        self.procs: list[FleetProc] = []

    async def start(self, folder: str, name: str, mode: str) -> dict[str, Any]:
        """Spawn, register every host, deliver first beats, start beating. Returns the
        counters of the registration round."""
        o = self.opts
        hosts = self.shape.layout(o.queue_slots if o.queue_players else 0)
        n = max(1, min(o.fleet_procs, len(hosts)))
        for i in range(n):
            cfg = {
                "ports": self.ports,
                "agent_token": self.tokens["agent"],
                "caller_token": self.tokens["caller"],
                "tenant": self.tokens["tenant"],
                "hosts": hosts[i::n],
                "period": o.heartbeat_period,
                "mode": mode,
                "full_every": o.full_heartbeat_every,
                "gpus_per_host": o.gpus_per_host,
                "gpu_reports": gpu_reports(getattr(o, "loads", "auto")),
                "load_churn": o.load_churn,
                "reset_s": o.reset_s,
                "seed": f"{name}-{i}",
                "queue": (
                    {"app": QUEUE_APP, "players": o.queue_players, "session_mean_s": o.session_mean, "poll_s": 1.0}
                    if i == 0 and o.queue_players and o.queue_slots
                    else None
                ),
            }
            log = os.path.join(folder, f"{name}-fleet{i}.log")
            self.procs.append(FleetProc(await FleetProc.spawn("loadtest.fleet_sim", cfg, log, limit=64 << 20), log))
        first = await asyncio.gather(*(p.call(300, "prepare") for p in self.procs))
        await asyncio.gather(*(p.call(30, "start") for p in self.procs))
        return merge(first)

    @property
    def trees(self) -> list[ProcTree]:
        return [p.tree for p in self.procs]

    async def stats(self) -> dict[str, Any]:
        return merge(await asyncio.gather(*(p.call(60, "stats") for p in self.procs)))

    async def stop(self) -> None:
        for p in self.procs:
            await p.stop()


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The processes' counters added up (lists joined, error counts summed)."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, list):
                out.setdefault(k, []).extend(v)
            elif isinstance(v, dict):
                d = out.setdefault(k, {})
                for kk, vv in v.items():
                    d[kk] = d.get(kk, 0) + vv
            else:
                out[k] = out.get(k, 0) + v
    return out


def summary(stats: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """A window's fleet figures: heartbeats applied per second, their size and latency,
    resets, and the queue."""

    def p(xs: Sequence[float], q: float) -> float | None:
        v = percentile(xs, q)
        return None if v is None else round(v, 2)

    beats = stats.get("beats_ok", 0)
    samples = stats.get("body_samples", 0)
    return {
        "heartbeats": beats,
        "heartbeats_per_s": round(beats / wall_s, 1) if wall_s > 0 else None,
        "heartbeats_failed": stats.get("beats_failed", 0),
        "full_beats": stats.get("full_beats", 0),
        "delta_beats": stats.get("delta_beats", 0),
        "slot_reports_per_beat": round(stats.get("slot_reports", 0) / beats, 1) if beats else None,
        "gpu_reports_per_beat": round(stats.get("gpu_reports", 0) / beats, 1) if beats else None,
        "body_bytes_mean": round(stats["body_bytes"] / samples) if samples else None,
        "heartbeat_p50_ms": p(stats.get("beat_ms", []), 0.5),
        "heartbeat_p99_ms": p(stats.get("beat_ms", []), 0.99),
        "resets": stats.get("resets", 0),
        "snapshots_asked": stats.get("snapshots_asked", 0),
        "queue": {
            "asked": stats.get("queue_asked", 0),
            "waited": stats.get("queue_waited", 0),
            "served": stats.get("queue_served", 0),
            "refused": stats.get("queue_refused", 0),
            "polls": stats.get("queue_polls", 0),
            "sessions_ended": stats.get("queue_sessions_ended", 0),
            "wait_p50_ms": p(stats.get("queue_wait_ms", []), 0.5),
            "wait_p99_ms": p(stats.get("queue_wait_ms", []), 0.99),
        },
        "errors": stats.get("errors", {}),
    }
