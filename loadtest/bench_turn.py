"""TURN credential benchmark: minting speed on one core, and what minting adds to a
player's connect against the real signalling server.

1. mint: ``turn.credentials.issue`` in a loop, then the whole per-peer path the
   server runs on connect (``TurnPeerOptions`` + encoding the ``config`` message),
   pinned to one CPU. Target: > 50,000 credentials/s.
2. connect: two ``pixelfleet signaling`` child processes, one without TURN and one
   with ``rest-secret``; players connect to them alternately, one at a time, and we
   time socket open -> ``config`` received, and connect start -> ``config``.

    python -m loadtest.bench_turn --seconds 2 --connects 1000 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from pixelfleet.net import free_port, wait_for_port

TARGET_PER_S = 50_000
SECRET = "bench-secret-0123456789abcdef"
URLS = (
    "stun:turn.example.com:3478",
    "turn:turn.example.com:3478?transport=udp",
    "turn:turn.example.com:3478?transport=tcp",
    "turns:turn.example.com:443?transport=tcp",
)


# --------------------------------------------------------------------------- minting
def _rate(fn: Callable[[int], None], seconds: float) -> tuple[float, float]:
    """(calls/s, µs/call) over at least ``seconds``, in batches to keep timing overhead out."""
    batch, done = 2000, 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn(batch)
        done += batch
    elapsed = time.perf_counter() - start
    return done / elapsed, elapsed / done * 1e6


def bench_mint(seconds: float) -> dict[str, Any]:
    cpu, cpus = None, None
    with contextlib.suppress(AttributeError, OSError):
        cpus = os.sched_getaffinity(0)
        cpu = min(cpus)
        os.sched_setaffinity(0, {cpu})
    try:
        return _mint(cpu, seconds)
    finally:
        if cpus is not None:  # the servers started later must not inherit one core
            os.sched_setaffinity(0, cpus)


def _mint(cpu: int | None, seconds: float) -> dict[str, Any]:
    from signaling import messages as m
    from signaling.protocol import Role
    from turn.config import TurnSettings
    from turn.credentials import issue
    from turn.wiring import wire_turn

    now = time.time()
    secret = SECRET.encode()

    def issue_n(n: int) -> None:
        for _ in range(n):
            issue(secret, "Player0", 3600, now)

    wiring = wire_turn(TurnSettings(provider="rest-secret", urls=URLS, secrets=(SECRET,)))
    assert wiring is not None
    options = wiring.peer_options

    def config_with_turn(n: int) -> None:  # what the server does per connect, with TURN
        for _ in range(n):
            m.encode(
                m.Config(peerConnectionOptions=options(Role.PLAYER, "Player0"), protocolVersion=m.PROTOCOL_VERSION)
            )

    def config_without(n: int) -> None:  # ... and without
        for _ in range(n):
            m.encode(m.Config(peerConnectionOptions={}, protocolVersion=m.PROTOCOL_VERSION))

    issue_rate, issue_us = _rate(issue_n, seconds)
    with_rate, with_us = _rate(config_with_turn, seconds)
    _, without_us = _rate(config_without, seconds)
    return {
        "cpu": cpu,
        "issue_per_s": round(issue_rate),
        "issue_us": round(issue_us, 2),
        "config_with_turn_per_s": round(with_rate),
        "config_with_turn_us": round(with_us, 2),
        "config_without_us": round(without_us, 2),
        "added_us_per_connect": round(with_us - without_us, 2),
        "target_per_s": TARGET_PER_S,
        "meets_target": issue_rate > TARGET_PER_S,
    }


# --------------------------------------------------------------------------- connecting
async def _start_server(turn: bool) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELFLEET_")}
    if turn:
        env.update(
            {
                "PIXELFLEET_TURN__PROVIDER": "rest-secret",
                "PIXELFLEET_TURN__SECRETS": SECRET,
                "PIXELFLEET_TURN__URLS": ",".join(URLS),
            }
        )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pixelfleet",
        "signaling",
        "--host",
        "127.0.0.1",
        "--player-port",
        str(port),
        "--streamer-port",
        str(free_port()),
        "--sfu-port",
        "-1",
        "--player-rate",
        "1000000",
        "--player-burst",
        "1000000",
        "--log-level",
        "warning",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await wait_for_port("127.0.0.1", port, 30.0, exited=lambda: proc.returncode is not None)
    return proc, port


async def _one_connect(session: aiohttp.ClientSession, url: str) -> tuple[float, float, bool]:
    """(connect start -> config, socket open -> config) in ms, and whether TURN was in it."""
    t0 = time.perf_counter()
    async with session.ws_connect(url) as ws:
        t1 = time.perf_counter()
        msg = await ws.receive()
        t2 = time.perf_counter()
    config = json.loads(msg.data)
    assert config["type"] == "config", config
    has_turn = any("username" in s for s in config["peerConnectionOptions"].get("iceServers", []))
    return (t2 - t0) * 1e3, (t2 - t1) * 1e3, has_turn


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


async def bench_connect(connects: int) -> dict[str, Any]:
    servers = {name: await _start_server(turn=name == "turn") for name in ("plain", "turn")}
    results: dict[str, dict[str, list[float]]] = {n: {"total": [], "open": []} for n in servers}
    try:
        async with aiohttp.ClientSession() as session:
            for _, port in servers.values():  # warm-up, not measured
                for _ in range(20):
                    await _one_connect(session, f"ws://127.0.0.1:{port}/")
            for i in range(connects * 2):  # alternate so drift hits both equally
                name = ("plain", "turn")[i % 2]
                total, opened, has_turn = await _one_connect(session, f"ws://127.0.0.1:{servers[name][1]}/")
                assert has_turn == (name == "turn")
                results[name]["total"].append(total)
                results[name]["open"].append(opened)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            await proc.wait()
    out: dict[str, Any] = {"connects_each": connects}
    for name, series in results.items():
        out[name] = {"connect_to_config_ms": _summary(series["total"]), "open_to_config_ms": _summary(series["open"])}
    for key in ("connect_to_config_ms", "open_to_config_ms"):
        out[f"added_{key}_p50"] = round(out["turn"][key]["p50"] - out["plain"][key]["p50"], 3)
    return out


# --------------------------------------------------------------------------- report
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_turn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="per minting measurement")
    parser.add_argument("--connects", type=int, default=1000, help="player connects per server")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    mint = bench_mint(args.seconds)
    connect = asyncio.run(bench_connect(args.connects))
    report = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "mint": mint,
        "connect": connect,
    }
    print(f"minting on one core (cpu {mint['cpu']}):")
    print(
        f"  issue():                      {mint['issue_per_s']:>10,} credentials/s  "
        f"({mint['issue_us']} us)  target > {TARGET_PER_S:,}: {'met' if mint['meets_target'] else 'MISSED'}"
    )
    print(
        f"  peer options + config encode: {mint['config_with_turn_per_s']:>10,} /s  "
        f"({mint['config_with_turn_us']} us; without TURN {mint['config_without_us']} us; "
        f"added {mint['added_us_per_connect']} us per connect)"
    )
    print(f"player connect against pixelfleet signaling ({connect['connects_each']} each, alternating):")
    for key, label in (
        ("open_to_config_ms", "socket open -> config"),
        ("connect_to_config_ms", "connect start -> config"),
    ):
        plain, turn = connect["plain"][key], connect["turn"][key]
        print(
            f"  {label:<24} plain p50 {plain['p50']:.3f} ms p99 {plain['p99']:.3f} ms | "
            f"TURN p50 {turn['p50']:.3f} ms p99 {turn['p99']:.3f} ms | "
            f"added p50 {connect[f'added_{key}_p50']:+.3f} ms"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
