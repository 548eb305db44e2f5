"""Signalling cluster benchmark: 1 node vs 3 nodes on one Redis, and the broker's cost.

Four set-ups, one after the other, each on fresh server processes and fresh generators
(`loadtest.bench_client`, the signalling benchmark's load generators):

- ``bare``: the bare aiohttp relay (`loadtest.bare_relay`), the ceiling;
- ``memory1``: one pixelfleet node with the in-memory broker;
- ``redis1``: one node with the Redis broker (every message still stays on the node);
- ``redis3``: three nodes on the same Redis.

Each generator puts its streamers on one node and its players on one node; generator g
uses node ``g % N`` for streamers and ``2g % N`` for players, so with three generators per
three nodes every node gets a share of each and two generators out of three cross nodes.
The share of relayed messages that crossed nodes is counted from what each generator
relayed, and the handshake latency is reported for same-node and cross-node generators
apart. What crossing a node adds is read in the same run, on the same processes: redis3's
cross-node generators against its same-node one, in a light phase (``--light`` handshakes,
one at a time, generator after generator, before the loaded ones) and in the loaded one.
CPU is the sum over the node processes (Redis apart), per 100,000 relayed messages.

    python -m loadtest.bench_cluster --streamers 30 --players 300 --relay-seconds 10 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.bench_signaling import (
    PIXELFLEET_ARGS,
    GenProc,
    ProcTree,
    ProcTrees,
    Server,
    Snapshot,
    machine_info,
    now,
    percentile,
    quiesce,
)
from pixelfleet.children import ChildProcess
from pixelfleet.net import free_port

TARGETS = {
    "cross_p99_added_light_ms": ("handshake p99 added by crossing a node, light load (ms)", "<", 2.0),
    "cross_p99_added_ms": ("handshake p99 added by crossing a node, loaded (ms)", "<", 2.0),
    "per_cpu_3_vs_1": ("relayed per node-CPU second, 3 nodes / 1 node", ">=", 0.8),
    "redis1_vs_bare": ("relayed msgs/s, 1 node with Redis / bare relay", ">=", 0.75),
}


@dataclass(frozen=True)
class Setup:
    name: str
    nodes: int
    broker: str  # bare | memory | redis


SETUPS = (
    Setup("bare", 1, "bare"),
    Setup("memory1", 1, "memory"),
    Setup("redis1", 1, "redis"),
    Setup("redis3", 3, "redis"),
)


class RunQueue:
    """How long the set-up's threads waited for a CPU while a phase ran, per group of
    processes: the mean wait each time a thread was given a CPU (``ms_per_turn``). A message
    that crosses nodes wakes two more processes (Redis, the other node) than one that does
    not, so on a box with fewer cores than busy processes each crossing adds about two such
    waits."""

    def __init__(self, groups: dict[str, ProcTree]) -> None:
        self.groups = groups
        self.before = {name: tree.run_queue() for name, tree in groups.items()}

    def since(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        total_wait, total_turns = 0.0, 0
        for name, tree in self.groups.items():
            wait, turns = tree.run_queue()
            wait -= self.before[name][0]
            turns -= self.before[name][1]
            total_wait += wait
            total_turns += turns
            out[f"{name}_ms_per_turn"] = wait / turns * 1000 if turns > 0 else None
        out["all_ms_per_turn"] = total_wait / total_turns * 1000 if total_turns > 0 else None
        return out


def node_command(setup: Setup, host: str, redis_url: str) -> tuple[list[str], dict[str, int]]:
    player, streamer = free_port(host), free_port(host)
    if setup.broker == "bare":
        return [sys.executable, "-m", "loadtest.bare_relay", "--host", host, "--player-port", str(player),
                "--streamer-port", str(streamer)], {"player": player, "streamer": streamer}  # fmt: skip
    state = redis_url if setup.broker == "redis" else "memory://"
    cmd = [sys.executable, "-m", "pixelfleet", "signaling", "--host", host, "--player-port", str(player),
           "--streamer-port", str(streamer), "--sfu-port", "-1", "--state-url", state, *PIXELFLEET_ARGS]  # fmt: skip
    return cmd, {"player": player, "streamer": streamer}


def placement(g: int, nodes: int) -> tuple[int, int]:
    """(streamer node, player node) of generator ``g``."""
    return g % nodes, (2 * g) % nodes


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1000


async def run_setup(
    setup: Setup, opts: argparse.Namespace, logdir: Path, redis_url: str, redis: ProcTree
) -> dict[str, Any]:
    S, P, G = opts.streamers, opts.players, opts.generators
    servers: list[Server] = []
    gens: list[GenProc] = []
    try:
        for i in range(setup.nodes):
            cmd, ports = node_command(setup, opts.host, redis_url)
            servers.append(
                Server(f"{setup.name}-node{i}", cmd, ports, opts.host, str(logdir / f"{setup.name}-node{i}.log"))
            )
        nodes = ProcTrees([await s.start() for s in servers])
        for g in range(G):
            cfg = {"host": opts.host, "streamers": [s for s in range(S) if s % G == g],
                   "players": [[i, i % S] for i in range(P + opts.light // G * G) if (i % S) % G == g], "client": "raw",
                   "timeout": opts.timeout}  # fmt: skip
            gens.append(await GenProc.start(g, cfg, str(logdir), setup.name))
        await asyncio.gather(*(g.call(30, "hello") for g in gens))
        where = [placement(g, setup.nodes) for g in range(G)]
        await asyncio.gather(*(
            g.call(opts.timeout + 5, "streamers", port=servers[s].ports["streamer"])
            for g, (s, _) in zip(gens, where, strict=True)
        ))  # fmt: skip
        await quiesce(nodes)
        crossing = [s != p for s, p in where]

        # The light phase: a few handshakes, one at a time across the whole run, so the cost of
        # crossing a node is read without the run queue of a saturated box in it.
        groups: dict[str, ProcTree] = {"nodes": nodes, "generators": ProcTrees([g.tree for g in gens])}
        if setup.broker == "redis":
            groups["redis"] = redis
        waits = RunQueue(groups)
        light: list[list[float]] = []
        for gen, (_, p) in zip(gens, where, strict=True):
            out = await gen.call(opts.timeout * 4 + opts.light, "handshake", port=servers[p].ports["player"],
                               start_at=now(), inflight=1, count=opts.light // G, close_after=True)  # fmt: skip
            light.append(out["latency"])
        handshake_light: dict[str, Any] = {"ok": sum(len(x) for x in light), "run_queue": waits.since()}
        for label, want in (("same_node", False), ("cross_node", True)):
            part = [x for lat, c in zip(light, crossing, strict=True) if c == want for x in lat]
            handshake_light[f"{label}_p50_ms"] = _ms(percentile(part, 0.5))
            handshake_light[f"{label}_p99_ms"] = _ms(percentile(part, 0.99))
        await quiesce(nodes)

        start_at = now() + 0.2
        waits = RunQueue(groups)
        inflight = max(1, opts.inflight // G)
        hs = await asyncio.gather(*(
            g.call(opts.timeout * 4 + P, "handshake", port=servers[p].ports["player"], start_at=start_at,
                   inflight=inflight)
            for g, (_, p) in zip(gens, where, strict=True)
        ))  # fmt: skip
        lat = [x for o in hs for x in o["latency"]]
        end = max(o["end"] for o in hs)
        handshake = {
            "ok": len(lat),
            "failed": sum(o["failed"] for o in hs),
            "per_s": len(lat) / (end - start_at) if end > start_at else None,
            "p50_ms": _ms(percentile(lat, 0.5)),
            "p99_ms": _ms(percentile(lat, 0.99)),
            "run_queue": waits.since(),
        }
        for label, want in (("same_node", False), ("cross_node", True)):
            part = [x for o, c in zip(hs, crossing, strict=True) if c == want for x in o["latency"]]
            handshake[f"{label}_p50_ms"] = _ms(percentile(part, 0.5))
            handshake[f"{label}_p99_ms"] = _ms(percentile(part, 0.99))

        await quiesce(nodes)
        warmup, grace = opts.relay_warmup, 5.0
        start_at = now() + warmup + 0.2
        calls = [asyncio.ensure_future(g.call(opts.relay_seconds + warmup + grace + 30, "relay", start_at=start_at,
                                              seconds=opts.relay_seconds, k=opts.k, warmup=warmup, grace=grace))
                 for g in gens]  # fmt: skip
        await asyncio.sleep(max(0.0, start_at - now()))
        before, redis_before = Snapshot(nodes, [g.tree for g in gens]), redis.cpu()
        await asyncio.sleep(max(0.0, start_at + opts.relay_seconds - now()))
        cpu = Snapshot(nodes, [g.tree for g in gens]).since(before)
        redis_cpu = redis.cpu() - redis_before if setup.broker == "redis" else None
        outs = await asyncio.gather(*calls)
        each = [o["hop_to_streamer"] + o["hop_to_player"] for o in outs]
        relayed = sum(each)
        relay = {
            "relayed": relayed,
            "per_s": relayed / opts.relay_seconds,
            "lost": sum(o["lost"] for o in outs),
            "node_cpu_s": cpu["server_cpu_s"],
            "node_cores": cpu["server_cores"],
            "node_cpu_per_100k": cpu["server_cpu_s"] / relayed * 1e5 if relayed else None,
            "redis_cpu_per_100k": redis_cpu / relayed * 1e5 if relayed and redis_cpu is not None else None,
            "crossed_share": sum(n for n, c in zip(each, crossing, strict=True) if c) / relayed if relayed else None,
            "machine_busy": cpu["machine_busy"],
        }
        stats = await asyncio.gather(*(g.call(30, "stats") for g in gens))
        return {
            "nodes": setup.nodes,
            "broker": setup.broker,
            "handshake": handshake,
            "handshake_light": handshake_light,
            "relay": relay,
            "client_errors": sum(s["errors"] for s in stats),
            "closed_by_server": sum(s["closed_by_server"] for s in stats),
        }
    finally:
        await asyncio.gather(*(g.stop() for g in gens), return_exceptions=True)
        for s in servers:
            await s.stop()


def ratios(res: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def get(name: str, *path: str) -> Any:
        value: Any = res.get(name)
        for key in path:
            value = None if value is None else value.get(key)
        return value

    def div(a: Any, b: Any) -> float | None:
        return a / b if a is not None and b else None

    def sub(a: Any, b: Any) -> float | None:
        return a - b if a is not None and b is not None else None

    one_cpu, three_cpu = get("redis1", "relay", "node_cpu_per_100k"), get("redis3", "relay", "node_cpu_per_100k")
    cross = get("redis3", "handshake", "cross_node_p99_ms")
    return {
        # Crossing a node, same run and same processes: redis3's cross-node generators against
        # its same-node one, light (one handshake at a time) and loaded.
        "cross_p99_added_light_ms": sub(
            get("redis3", "handshake_light", "cross_node_p99_ms"), get("redis3", "handshake_light", "same_node_p99_ms")
        ),
        "cross_p99_added_ms": sub(cross, get("redis3", "handshake", "same_node_p99_ms")),
        # Against one node on its own: three nodes' run queue on this box is in it too.
        "cross_p99_vs_1node_ms": sub(cross, get("redis1", "handshake", "p99_ms")),
        "per_cpu_3_vs_1": div(one_cpu, three_cpu),
        "throughput_3_vs_1": div(get("redis3", "relay", "per_s"), get("redis1", "relay", "per_s")),
        "redis1_vs_bare": div(get("redis1", "relay", "per_s"), get("bare", "relay", "per_s")),
        "memory1_vs_bare": div(get("memory1", "relay", "per_s"), get("bare", "relay", "per_s")),
        "redis1_vs_memory1": div(get("redis1", "relay", "per_s"), get("memory1", "relay", "per_s")),
    }


def median(items: list[Any]) -> Any:
    """The field-by-field median of several rounds' results (None where any round has none)."""
    first = items[0]
    if isinstance(first, dict):
        return {k: median([i.get(k) for i in items]) for k in first}
    if all(isinstance(x, int | float) and not isinstance(x, bool) for x in items):
        return statistics.median(items)
    return first if all(x == first for x in items) else None


def render(report: dict[str, Any]) -> str:
    def f(v: Any, fmt: str = "{:,.1f}") -> str:
        return "-" if v is None else fmt.format(v)

    lines = [f"{'setup':<8} {'hs/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'x-node p99':>10} {'msgs/s':>9} "
             f"{'node CPU s/100k':>15} {'Redis CPU s/100k':>16} {'crossed':>7}"]  # fmt: skip
    for name, r in report["setups"].items():
        h, x = r["handshake"], r["relay"]
        lines.append(
            f"{name:<8} {f(h['per_s'], '{:,.0f}'):>8} {f(h['p50_ms']):>7} {f(h['p99_ms']):>7} "
            f"{f(h['cross_node_p99_ms']):>10} {f(x['per_s'], '{:,.0f}'):>9} {f(x['node_cpu_per_100k'], '{:.2f}'):>15} "
            f"{f(x['redis_cpu_per_100k'], '{:.2f}'):>16} {f(x['crossed_share'], '{:.0%}'):>7}"
        )
    lines.append("")
    lines.append("run-queue wait per CPU turn, ms, light / loaded handshakes (the box's, not the code's):")
    for name, r in report["setups"].items():
        light, loaded = r["handshake_light"].get("run_queue") or {}, r["handshake"].get("run_queue") or {}
        keys = [g + "_ms_per_turn" for g in ("nodes", "redis", "generators", "all")]
        parts = [
            f"{key.split('_')[0]} {f(light.get(key), '{:.2f}')} / {f(loaded.get(key), '{:.2f}')}"
            for key in keys
            if loaded.get(key) is not None
        ]
        lines.append(f"  {name:<8} " + ", ".join(parts))
    lines.append("")
    ratio = report["ratios"]
    for key, (what, op, target) in TARGETS.items():
        value = ratio.get(key)
        met = None if value is None else (value < target if op == "<" else value >= target)
        verdict = "n/a" if met is None else ("met" if met else "MISSED")
        lines.append(f"{what}: {f(value, '{:.2f}')} (target {op} {target}: {verdict})")
    for key in ("cross_p99_vs_1node_ms", "throughput_3_vs_1", "memory1_vs_bare", "redis1_vs_memory1"):
        lines.append(f"{key.replace('_', ' ')}: {f(ratio.get(key), '{:.2f}')}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.bench_cluster", description=__doc__.split("\n")[0])
    ap.add_argument("--streamers", type=int, default=30, help="streamers (default 30)")
    ap.add_argument("--players", type=int, default=300, help="players (default 300)")
    ap.add_argument("--inflight", type=int, default=30, help="handshakes in flight, all generators (default 30)")
    ap.add_argument(
        "--light",
        type=int,
        default=300,
        help="light-phase handshakes, one at a time, players of their own (default 300)",
    )
    ap.add_argument("--relay-seconds", type=float, default=10.0, help="relay window, s (default 10)")
    ap.add_argument("--relay-warmup", type=float, default=1.0, help="relay warm-up before the window, s (default 1)")
    ap.add_argument("-k", "--k", type=int, default=1, help="relay messages in flight per pair (default 1)")
    ap.add_argument("--generators", type=int, default=3, help="generator processes (default 3: 2 of 3 cross nodes)")
    ap.add_argument("--setups", default=",".join(s.name for s in SETUPS), help="which set-ups, comma-separated")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-connection and per-handshake timeout, s")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of every set-up (order alternates); medians")
    ap.add_argument("--json", help="also write the full report to this file")
    opts = ap.parse_args(argv)
    by_name = {s.name: s for s in SETUPS}
    names = [n for n in opts.setups.split(",") if n]
    if not names or any(n not in by_name for n in names):
        ap.error(f"--setups: a comma-separated list of {', '.join(by_name)}")
    opts.setups = [by_name[n] for n in names]
    if opts.players < opts.streamers or opts.streamers < opts.generators:
        ap.error("need players >= streamers >= generators")
    if opts.light < 0:
        ap.error("--light: 0 or more")
    if opts.repeat < 1:
        ap.error("--repeat: at least 1")
    return opts


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    from pixelfleet.up_cluster import redis_argv

    logdir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "bench_cluster: redis-server is not installed (Debian/Ubuntu: apt-get install -y redis-server)"
        )
    port = free_port(opts.host)
    redis = await ChildProcess.start("redis-server", redis_argv(binary, port), logdir / "redis.log")
    try:
        await redis.wait_for_port(port, 30)
        rounds: list[dict[str, dict[str, Any]]] = []
        for r in range(opts.repeat):
            order = opts.setups if r % 2 == 0 else opts.setups[::-1]  # drift falls on both sides
            results: dict[str, dict[str, Any]] = {}
            for setup in order:
                what = f"round {r + 1}/{opts.repeat}, {setup.name}: {setup.nodes} node(s), {setup.broker}"
                print(f"[bench_cluster] {what}", file=sys.stderr, flush=True)
                results[setup.name] = await run_setup(
                    setup, opts, logdir, f"redis://{opts.host}:{port}/0", ProcTree(redis.proc.pid)
                )
            rounds.append({s.name: results[s.name] for s in opts.setups})
    finally:
        await redis.stop()
    return {
        "machine": machine_info(),
        "options": {k: v for k, v in vars(opts).items() if k != "setups"} | {"setups": [s.name for s in opts.setups]},
        "logs": str(logdir),
        "setups": median(rounds),
        "ratios": median([ratios(r) for r in rounds]),  # each round's ratios, then their median
        "rounds": rounds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    import uvloop

    opts = parse_args(argv)
    report = uvloop.run(run(opts))
    print(render(report))
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
