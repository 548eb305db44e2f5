"""Matchmaker benchmark: allocations through the HTTP API, with a fleet at work, against
the allocation script's ceiling measured under the same heartbeat load.

One run, one Redis (started here on a Unix socket unless ``--redis-url``), phases in order:

1. ``raw script``: the ceiling. An allocation exactly as ``RedisStore.allocate`` sends it
   (``SET`` of the session's tenant lookup + ``EVALSHA`` of the allocation script, which
   checks the queue and the hosts' heartbeat deadline, places and claims; built by the
   store's own ``_allocate_calls``, ``heartbeat_ttl_s`` included), hand-packed and
   pipelined by a lean generator process, so that Redis, not the client, is the
   bottleneck;
2. ``raw store``: ``RedisStore.allocate`` itself from generator processes;
3. ``http closed``: ``POST /api/v1/sessions`` with 1 and with 4 ``pixelfleet matchmaker``
   processes, a closed loop of keep-alive connections spread over the replicas;
4. ``http open``: a fixed offered load (default 1,000 allocations/s, open loop) against
   4 replicas; p99.

The fleet at work (default ``--fleet 96x500``; ``--fleet none`` gives the allocation-only
figures of before): every phase runs on a fresh key prefix with its own replicas (the
raw phases: ``--fleet-replicas``, which only take heartbeats) and its own simulated
fleet (``loadtest.fleet_sim``): hosts registered through the API, heartbeating over HTTP
on the agent's period and schedule with the agent's body, resetting the slots the
replies ask for; a small app with fewer slots than players, so a queue forms and is
served. Allocated sessions are reported connected and, after an exponential time,
disconnected by the HTTP generators (the signalling side's events), so they end after
the replicas' reconnect grace and their slots go through the agent's reset.

CPU per heartbeat and per allocation, separately for Redis and the replicas: each
phase first runs ``--hb-seconds`` with the fleet alone (no allocations); its CPU over
the heartbeats applied is the cost per heartbeat (everything the idle fleet costs: its
beats, the sweeps, the queue app). The measured window's CPU less that cost times the
heartbeats applied in the window, over the allocations made, is the cost per
allocation (its whole life: allocation, the two events, the end and the slot's reset).

    python -m loadtest.bench_matchmaker --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import jwt

from gpu_agent.config import AgentSettings
from loadtest.bench_fleet import FleetRun, FleetShape, parse_fleet, summary
from loadtest.bench_matchmaker_procs import (
    AGENT,
    CALLER_SECRET,
    TENANT,
    Cpu,
    Generator,
    Matchmakers,
    RedisServer,
    _merge_statuses,
    _per_alloc,
    code_identity,
    fill_pool,
    heartbeat_ttl,
    latency_summary,
    saturation,
)
from loadtest.bench_matchmaker_report import TARGETS, _print_phase, merge_ends, ratios, render
from loadtest.bench_signaling import ProcTree, cpu_speed_ms, hot_spots, machine_info, quiet_machine
from loadtest.children import die_with_parent
from loadtest.fleet_sim import heartbeat_mode
from signaling.config import Settings as SignalingSettings

__all__ = ["TARGETS", "main"]
now = time.monotonic
_SIGNALING = SignalingSettings()  # the session reporter's defaults, which the benchmark plays


class World:
    """A phase's replicas and fleet, started on its key prefix."""

    def __init__(self, bench: Bench, prefix: str, replicas: int) -> None:
        self.bench, self.prefix, self.replicas = bench, prefix, replicas
        self.mms = Matchmakers(replicas, bench.url, prefix, bench.folder, bench.opts)
        self.fleet: FleetRun | None = None
        self.trees: list[ProcTree] = []
        self.hb: dict[str, Any] | None = None

    async def start(self) -> None:
        b = self.bench
        self.trees = await self.mms.start()
        if b.shape is None:
            return
        tokens = {"agent": AGENT, "caller": b.token, "tenant": TENANT}
        self.fleet = FleetRun(b.opts, b.shape, self.mms.ports, tokens)
        await self.fleet.start(b.folder, self.prefix, b.mode)
        await asyncio.sleep(b.opts.heartbeat_period + 0.5)  # every host has beaten since
        self.hb = await self._heartbeats_only()

    async def _heartbeats_only(self) -> dict[str, Any]:
        assert self.fleet is not None
        o = self.bench.opts
        cpu = Cpu(self.bench.redis, self.trees, [], self.fleet.trees)
        await self.fleet.stats()
        before = cpu.snap()
        await asyncio.sleep(o.hb_seconds)
        after = cpu.snap()
        stats = summary(await self.fleet.stats(), after["t"] - before["t"])
        usage = Cpu.since(before, after, stats["heartbeats"])
        return {"cpu": usage, "fleet": stats}

    def cpu(self, gens: Sequence[ProcTree]) -> Cpu:
        return Cpu(self.bench.redis, self.trees, gens, self.fleet.trees if self.fleet else ())

    async def fleet_figures(self, usage: dict[str, Any], stats: dict[str, Any], allocs: int) -> dict[str, Any] | None:
        """The window's fleet figures and the CPU split (see the module's docstring)."""
        if self.fleet is None or self.hb is None:
            return None
        o, b = self.bench.opts, self.bench
        win = summary(stats, usage["wall_s"])
        hb_cpu = self.hb["cpu"]
        beats_hb = self.hb["fleet"]["heartbeats"]

        def seconds(c: dict[str, Any], key: str) -> float:
            return float(c[key]) * float(c["wall_s"])

        per_hb = {k: (seconds(hb_cpu, f"{k}_cores") / beats_hb if beats_hb else None) for k in ("redis", "matchmakers")}
        per_alloc: dict[str, float | None] = {}
        for k, v in per_hb.items():
            rest = seconds(usage, f"{k}_cores") - (v or 0.0) * win["heartbeats"]
            per_alloc[k] = round(rest / allocs * 1e3, 4) if allocs else None
        assert b.shape is not None
        return {
            "shape": str(b.shape),
            "mode": b.mode,
            "period_s": o.heartbeat_period,
            "heartbeats_only": {**self.hb["fleet"], "cpu": hb_cpu},
            "window": win,
            "cost": {
                "per_heartbeat_ms": {k: None if v is None else round(v * 1e3, 4) for k, v in per_hb.items()},
                "per_alloc_ms": per_alloc,
            },
        }

    async def stop(self) -> None:
        if self.fleet is not None:
            await self.fleet.stop()
        self.mms.stop()


# ----------------------------------------------------------------------------- phases


class Bench:
    def __init__(self, opts: argparse.Namespace, folder: str) -> None:
        self.opts = opts
        self.folder = folder
        self.redis = RedisServer(opts.redis_url, folder)
        self.url = ""
        self.token = jwt.encode(
            {"tenant": TENANT, "sub": "caller-1", "exp": int(time.time()) + 86400}, CALLER_SECRET, algorithm="HS256"
        )
        self.shape: FleetShape | None = opts.fleet
        if self.shape is not None:
            self.shape.napps = max(1, min(opts.fleet_apps, self.shape.hosts))
        self.mode = heartbeat_mode(opts.heartbeats) if self.shape is not None else "none"

    def _prefix(self, name: str) -> str:
        return f"bmm{uuid.uuid4().hex[:6]}{name}"

    async def _gens(self, cfgs: Sequence[dict[str, Any]], name: str) -> list[Generator]:
        gens = []
        for i, cfg in enumerate(cfgs):
            gens.append(await Generator.start(cfg, os.path.join(self.folder, f"{name}-gen{i}.log")))
        return gens

    async def raw(self, mode: str) -> dict[str, Any]:
        """Allocation without the matchmaker: pipelined script (ceiling) or RedisStore.allocate;
        with the fleet heartbeating through ``--fleet-replicas`` replicas meanwhile."""
        o = self.opts
        claims = o.raw_claims if mode == "script" else o.raw_store_claims
        procs = o.raw_procs if mode == "script" else o.raw_store_procs
        prefix = self._prefix("raw")
        world: World | None = None
        t_fill = now()
        if self.shape is None:
            # The HTTP phases' pool shape: apps of --slots-per-app slots, --pool-factor times
            # the allocations made in each, so the script places over the same READY sets.
            per_app = max(1, int(o.slots_per_app / o.pool_factor))
            apps = [f"app{i}" for i in range(max(procs, math.ceil(claims / per_app)))]
            registered = await fill_pool(self.url, prefix, apps, o.slots_per_app)
        else:
            # The fleet's own slots; raw sessions never end, so claim at most 60 % of them.
            registered = self.shape.hosts * self.shape.slots
            claims = min(claims, int(registered * 0.6))
            apps = self.shape.apps
            per_app = max(1, claims // len(apps))
            world = World(self, prefix, o.fleet_replicas)
            await world.start()
        t_fill = now() - t_fill
        gens: list[Generator] = []
        try:
            cfgs = [
                {
                    "kind": "raw",
                    "mode": mode,
                    "redis_url": self.url,
                    "prefix": prefix,
                    "tenant": TENANT,
                    "index": i,
                    "procs": procs,
                    "apps": apps,
                    "per_app": per_app,
                    "policy": "spread",
                    "heartbeat_ttl_s": heartbeat_ttl(o),
                    "batch": o.raw_batch,
                    "window": o.raw_window,
                    "concurrency": o.raw_store_concurrency,
                }
                for i in range(procs)
            ]
            gens = await self._gens(cfgs, f"raw-{mode}")
            await asyncio.gather(*(g.call(120, "prepare") for g in gens))
            busy = await quiet_machine(o.quiet_wait)
            speed = cpu_speed_ms()
            cpu = world.cpu([g.tree for g in gens]) if world else Cpu(self.redis, [], [g.tree for g in gens])
            if world and world.fleet:
                await world.fleet.stats()
            before = cpu.snap()
            results = await asyncio.gather(*(g.call(600, "run") for g in gens))
            after = cpu.snap()
            fleet_stats = await world.fleet.stats() if world and world.fleet else {}
        finally:
            for g in gens:
                await g.stop()
            if world is not None:
                await world.stop()
        claimed = sum(r["claimed"] for r in results)
        wall = max(r["wall_s"] for r in results)
        usage = Cpu.since(before, after, claimed)
        out: dict[str, Any] = {
            "phase": f"raw {mode}",
            "processes": procs,
            "claims": sum(r["claims"] for r in results),
            "claimed": claimed,
            "refused": sum(r["refused"] for r in results),
            "errors": [e for r in results for e in r["errors"]][:3],
            "per_s": round(claimed / wall, 1) if wall else None,
            "wall_s": round(wall, 3),
            "pool_slots": registered,
            "fill_s": round(t_fill, 2),
            "machine_busy_before": busy,
            "cpu_speed_ms": speed,
            "cpu": usage,
            "saturated": saturation(usage),
        }
        if world is not None:
            out["fleet_replicas"] = o.fleet_replicas
            out["fleet"] = await world.fleet_figures(usage, fleet_stats, claimed)
        if mode == "script":
            out.update(
                batch=o.raw_batch,
                window=o.raw_window,
                batch_latency=latency_summary([x for r in results for x in r["batch_ms"]]),
            )
        else:
            out.update(
                concurrency=o.raw_store_concurrency, latency=latency_summary([x for r in results for x in r["lat_ms"]])
            )
        self.redis.clear(prefix)
        return out

    async def http(self, replicas: int, mode: str) -> dict[str, Any]:
        o = self.opts
        G = o.generators
        if mode == "closed":
            measured = o.allocs
            connections = o.conns_per_replica * replicas
        else:
            measured = int(o.fixed_rate * o.fixed_seconds)
            connections = o.fixed_conns
        total = measured + o.warmup
        prefix = self._prefix(f"h{replicas}{mode[0]}")
        t_fill = now()
        if self.shape is None:
            napps = max(1, math.ceil(total * o.pool_factor / o.slots_per_app))
            apps = [f"app{i}" for i in range(napps)]
            await fill_pool(self.url, prefix, apps, o.slots_per_app)
        else:
            apps = self.shape.apps
        world = World(self, prefix, replicas)
        gens: list[Generator] = []
        profile: dict[str, Any] | None = None
        fleet_stats: dict[str, Any] = {}
        try:
            await world.start()
            t_fill = now() - t_fill
            ports = world.mms.ports
            ends = None
            if self.shape is not None:
                ends = {"connections": o.end_conns, "mean_s": o.session_mean, "connect_s": o.connect_after}
                ends["batch"] = _SIGNALING.report_batch_max if o.events == "batch" else 0
                ends["linger_s"] = o.report_linger
            cfgs = [
                {
                    "kind": "http",
                    "ports": ports[g % replicas :] + ports[: g % replicas],
                    "token": self.token,
                    "apps": apps,
                    "app_offset": g,
                    "app_step": G,
                    "timeout": 300,
                    "ends": ends,
                }
                for g in range(G)
            ]
            gens = await self._gens(cfgs, f"http{replicas}{mode}")
            per_gen = [max(1, connections // G + (1 if g < connections % G else 0)) for g in range(G)]
            await asyncio.gather(*(g.call(60, "prepare", connections=n) for g, n in zip(gens, per_gen, strict=True)))
            if o.warmup:
                await asyncio.gather(*(g.call(300, "run", mode="closed", count=max(1, o.warmup // G)) for g in gens))
            busy = await quiet_machine(o.quiet_wait)
            speed = cpu_speed_ms()
            spy = await self._profile_start(world.trees[0].proc.pid, f"http{replicas}-{mode}")
            cpu = world.cpu([g.tree for g in gens])
            if world.fleet is not None:
                await world.fleet.stats()
            stats_before, io_before = self.redis.commandstats(), self.redis.io_events()
            before = cpu.snap()
            counts = [measured // G + (1 if g < measured % G else 0) for g in range(G)]
            if mode == "closed":
                results = await asyncio.gather(
                    *(g.call(600, "run", mode="closed", count=n) for g, n in zip(gens, counts, strict=True))
                )
            else:
                results = await asyncio.gather(
                    *(
                        g.call(600, "run", mode="open", rate=o.fixed_rate / G, count=n)
                        for g, n in zip(gens, counts, strict=True)
                    )
                )
            after = cpu.snap()
            stats_after, io_after = self.redis.commandstats(), self.redis.io_events()
            if world.fleet is not None:
                fleet_stats = await world.fleet.stats()
            if spy is not None:
                profile = await self._profile_stop(spy)
            live = await self._live_sessions(prefix)
        finally:
            for g in gens:
                await g.stop()
            await world.stop()
        statuses = _merge_statuses(results)
        ok = statuses.get("201", 0)
        wall = max(r["wall_s"] for r in results)
        usage = Cpu.since(before, after, ok)
        out: dict[str, Any] = {
            "phase": f"http {mode}",
            "replicas": replicas,
            "connections": sum(per_gen),
            "generators": G,
            "requests": sum(counts),
            "allocated": ok,
            "statuses": statuses,
            "per_s": round(ok / wall, 1) if wall else None,
            "wall_s": round(wall, 3),
            **latency_summary([x for r in results for x in r["lat_ms"]]),
            "apps": len(apps),
            "live_sessions_end": live,
            "fill_s": round(t_fill, 2),
            "machine_busy_before": busy,
            "cpu_speed_ms": speed,
            "cpu": usage,
            "saturated": saturation(usage),
            "redis_commands_per_alloc": _per_alloc(stats_before, stats_after, ok),
            "redis_io_per_alloc": {
                "reads": round((io_after[0] - io_before[0]) / ok, 3) if ok else None,
                "writes": round((io_after[1] - io_before[1]) / ok, 3) if ok else None,
            },
        }
        if self.shape is None:
            out.update(slots_per_app=o.slots_per_app, ready_per_app_end=round(o.slots_per_app - total / len(apps), 1))
        else:
            out["ends"] = merge_ends([r.get("ends", {}) for r in results])
            out["fleet"] = await world.fleet_figures(usage, fleet_stats, ok)
        if mode == "open":
            out.update(
                offered_per_s=o.fixed_rate,
                max_backlog=max(r["max_backlog"] for r in results),
                max_send_lag_ms=max(r["max_send_lag_ms"] for r in results),
                service=latency_summary([x for r in results for x in r["service_ms"]]),
            )
        if profile is not None:
            out["profile"] = profile
        if ok != sum(counts):
            out["warning"] = f"{sum(counts) - ok} requests were not allocated: {statuses}"
        self.redis.clear(prefix)
        return out

    async def _live_sessions(self, prefix: str) -> int:
        from matchmaker.store_redis import RedisStore

        store = RedisStore.from_url(self.url, prefix=prefix, timeout_s=60)
        try:
            return int(await store._r.hlen(store._tag(TENANT) + ":sessions"))  # noqa: SLF001
        finally:
            await store.aclose()

    async def _profile_start(self, pid: int, name: str) -> tuple[asyncio.subprocess.Process, str] | None:
        if not self.opts.profile:
            return None
        exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        os.makedirs(self.opts.profile, exist_ok=True)
        out = os.path.join(self.opts.profile, f"matchmaker-{name}.txt")
        proc = await asyncio.create_subprocess_exec(
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--nonblocking",
            "--function",
            "--format",
            "raw",
            "-o",
            out,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        await asyncio.sleep(0.5)
        return proc, out

    async def _profile_stop(self, spy: tuple[asyncio.subprocess.Process, str]) -> dict[str, Any]:
        proc, out = spy
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
        return hot_spots(out, top=20)

    async def _repeat(self, phase: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Run a phase ``--repeat`` times; report the run least disturbed by other
        processes on the box (lowest ``other_cores``), with every run's figures."""
        runs = []
        for _ in range(max(1, self.opts.repeat)):
            runs.append(await phase())
            _print_phase(runs[-1])
        best = min(runs, key=lambda r: r["cpu"]["other_cores"])
        best["runs"] = [
            {
                "per_s": r["per_s"],
                "p99_ms": r.get("p99_ms"),
                "other_cores": r["cpu"]["other_cores"],
                "chosen": r is best,
            }
            for r in runs
        ]
        return best

    async def run(self) -> dict[str, Any]:
        o = self.opts
        options = {k: (str(v) if isinstance(v, FleetShape) else v) for k, v in vars(o).items()}
        report: dict[str, Any] = {"machine": machine_info(), "code": code_identity(), "options": options, "phases": []}
        self.url = await asyncio.to_thread(self.redis.start)
        report["redis"] = {"version": self.redis.version, "url": self.url, "own": self.redis.own}
        report["fleet"] = (
            None
            if self.shape is None
            else {
                "shape": str(self.shape),
                "apps": self.shape.napps,
                "heartbeats": self.mode,
                "period_s": o.heartbeat_period,
            }
        )
        try:
            phases = report["phases"]
            if o.raw_claims:
                phases.append(await self._repeat(lambda: self.raw("script")))
            if o.raw_store_claims:
                phases.append(await self._repeat(lambda: self.raw("store")))
            for n in o.replicas:
                phases.append(await self._repeat(lambda n=n: self.http(n, "closed")))  # type: ignore[misc]
            for n in o.fixed_replicas:
                phases.append(await self._repeat(lambda n=n: self.http(n, "open")))  # type: ignore[misc]
        finally:
            self.redis.stop()
        report["ratios"] = ratios(report["phases"])
        return report


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench_matchmaker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--redis-url", help="use this Redis (default: start redis-server on a Unix socket)")
    fleet = p.add_argument_group("the fleet at work")
    fleet.add_argument(
        "--fleet",
        type=parse_fleet,
        default=parse_fleet("96x500"),
        help="simulated hosts x slots heartbeating through the API (default 96x500); none: allocations alone",
    )
    fleet.add_argument("--fleet-apps", type=int, default=12, help="apps the fleet's hosts are shared among")
    fleet.add_argument("--fleet-procs", type=int, default=1, help="fleet simulator processes")
    fleet.add_argument("--fleet-replicas", type=int, default=4, help="replicas taking heartbeats in the raw phases")
    fleet.add_argument(
        "--heartbeat-period",
        type=float,
        default=AgentSettings().heartbeat_period_s,
        help="seconds between an agent's beats (default: the agent's own, PIXELFLEET_AGENT__HEARTBEAT_PERIOD_S)",
    )
    fleet.add_argument(
        "--heartbeats",
        choices=("auto", "full", "delta"),
        default="auto",
        help="full: every slot in every beat; delta: changes only (auto: delta where the protocol has it)",
    )
    fleet.add_argument(
        "--full-heartbeat-every",
        type=int,
        default=getattr(AgentSettings(), "full_heartbeat_every", 30),
        help="a delta agent's full beat every N beats (default: the agent's own)",
    )
    fleet.add_argument(
        "--loads",
        choices=("auto", "per-gpu", "per-slot"),
        default="auto",
        help="per-gpu: slots registered on their GPU, loads in the beat's gpus list (as the agent does); "
        "per-slot: each slot report carries its GPU's loads (auto: per-gpu where the protocol has it)",
    )
    fleet.add_argument("--gpus-per-host", type=int, default=8)
    fleet.add_argument(
        "--load-churn", type=float, default=0.1, help="chance per beat that a GPU's load moves by a few percent"
    )
    fleet.add_argument("--reset-s", type=float, default=0.5, help="time a simulated slot takes to reset")
    fleet.add_argument("--session-mean", type=float, default=3.0, help="mean session length in seconds (exponential)")
    fleet.add_argument("--connect-after", type=float, default=0.1, help="seconds from allocation to 'connected'")
    fleet.add_argument("--reconnect-grace", type=float, default=1.0, help="the replicas' reconnect grace (s)")
    fleet.add_argument("--heartbeat-ttl", type=float, default=10.0, help="the replicas' heartbeat TTL (production)")
    fleet.add_argument("--queue-slots", type=int, default=16, help="slots of the queue app (its own host)")
    fleet.add_argument("--queue-players", type=int, default=24, help="players of the queue app (0 = no queue)")
    fleet.add_argument("--end-conns", type=int, default=16, help="connections per generator for session events")
    fleet.add_argument("--events", choices=("batch", "single"), default="batch", help="batch: as signalling sends")
    fleet.add_argument(
        "--report-linger",
        type=float,
        default=_SIGNALING.report_linger_s,
        help="how long a batch of session events lingers (default: signalling's PIXELFLEET_REPORT_LINGER_S)",
    )
    fleet.add_argument("--hb-seconds", type=float, default=6.0, help="heartbeats-only window per phase (CPU split)")
    p.add_argument("--replicas", type=_ints, default=[1, 4], help="closed-loop phases (default 1,4)")
    p.add_argument("--allocs", type=int, default=6000, help="measured allocations per closed-loop phase")
    p.add_argument("--warmup", type=int, default=400, help="allocations before each HTTP measurement")
    p.add_argument("--conns-per-replica", type=int, default=8, help="closed-loop connections per replica")
    p.add_argument("--fixed-rate", type=float, default=1000.0, help="offered allocations/s of the open-loop phase")
    p.add_argument("--fixed-seconds", type=float, default=8.0)
    p.add_argument("--fixed-replicas", type=_ints, default=[4], help="open-loop phases (default 4)")
    p.add_argument("--fixed-conns", type=int, default=128, help="open-loop connections in all")
    p.add_argument("--generators", type=int, default=1, help="HTTP generator processes")
    p.add_argument("--slots-per-app", type=int, default=64, help="READY slots per app at the start of a phase")
    p.add_argument("--pool-factor", type=float, default=2.0, help="registered slots / allocations made")
    p.add_argument(
        "--raw-claims",
        type=int,
        default=100_000,
        help="pipelined script allocations (0 = skip; with a fleet at most 60%% of its slots)",
    )
    p.add_argument("--raw-procs", type=int, default=1)
    p.add_argument("--raw-batch", type=int, default=64, help="claims per pipelined round trip")
    p.add_argument("--raw-window", type=int, default=4, help="pipelined batches in flight per process")
    p.add_argument("--raw-store-claims", type=int, default=30_000, help="RedisStore.allocate calls (0 = skip)")
    p.add_argument("--raw-store-procs", type=int, default=2)
    p.add_argument("--raw-store-concurrency", type=int, default=32, help="claims in flight per process")
    p.add_argument("--sweep-interval", type=float, default=0.5, help="matchmakers' sweep interval (production 0.5)")
    p.add_argument("--mm-log-level", default="warning", help="matchmakers' log level (info logs every allocation)")
    p.add_argument("--quiet-wait", type=float, default=5.0, help="wait up to this long for an idle machine per phase")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each phase this many times; report the run least disturbed by other processes",
    )
    p.add_argument("--profile", metavar="DIR", help="py-spy one matchmaker in each HTTP phase (figures then noisy)")
    p.add_argument("--json", metavar="FILE", help="write the whole report here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    folder = tempfile.mkdtemp(prefix="bench-mm-")
    print(f"matchmaker benchmark: logs in {folder}", file=sys.stderr, flush=True)
    t0 = now()
    report = asyncio.run(Bench(opts, folder).run())
    report["wall_s"] = round(now() - t0, 1)
    report["command"] = "python -m loadtest.bench_matchmaker " + " ".join(sys.argv[1:] if argv is None else argv)
    print(render(report))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
