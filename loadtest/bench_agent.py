"""GPU agent benchmark: the agent's own CPU, per sample cycle, per heartbeat, per
readiness poll, and in steady state with N slots at a 1 s period.

The agent runs in this process; the matchmaker (``pixelfleet matchmaker``), the
signalling server (``pixelfleet signaling``) and the synthetic streamers are child
processes, so this process's CPU time (all threads: the NVML worker included) is the
agent's alone. NVML is the recorded sampler (``tests/data/nvml_l4x4.json``: 4 x L4, two
encode sessions each): the figures count the agent's parsing and bookkeeping, not the
driver's ioctls, which only a GPU host can time (``scripts/gpu-check`` prints them).

1. sample: ``Telemetry.sample_once()`` (worker-thread hop + NvmlSampler over 4 GPUs);
2. heartbeat: build the heartbeat for N slots + POST it to the matchmaker + apply the reply;
3. poll: one ``GET /api/streamers/{id}`` readiness/health check against signalling;
4. steady: the whole agent (N real synthetic streamer slots READY, sampling and
   heartbeating every ``--period`` s, health polls every 2 s, /metrics server up) for
   ``--seconds``: CPU seconds / wall seconds. Target: well under 1 % of one core.

    python -m loadtest.bench_agent --slots 8 --period 1 --seconds 30 --json out.json
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
from pathlib import Path
from typing import Any

import aiohttp

from pixelfleet.net import free_port

ROOT = Path(__file__).parents[1]
FIXTURE = ROOT / "tests" / "data" / "nvml_l4x4.json"
AGENT_TOKEN = "bench-agent-token-0123456789"
TARGET_PCT = 1.0


async def _wait_http(url: str, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as r:
                    if r.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {within_s} s")


def _cpu() -> float:
    return time.process_time()  # this process, every thread


def _per_op(samples: list[float]) -> dict[str, float]:
    return {"median_us": round(statistics.median(samples) * 1e6, 1), "max_us": round(max(samples) * 1e6, 1)}


async def _measure(op: Any, n: int, repeats: int) -> dict[str, float]:
    """CPU seconds per call: ``repeats`` runs of ``n`` calls; median and worst run."""
    runs = []
    for _ in range(repeats):
        start = _cpu()
        for _ in range(n):
            await op()
        runs.append((_cpu() - start) / n)
    return _per_op(runs)


async def bench(slots: int, period: float, seconds: float, iterations: int, repeats: int) -> dict[str, Any]:
    from gpu_agent.agent import Agent
    from gpu_agent.client import HttpMatchmakerClient
    from gpu_agent.config import AgentSettings
    from tests.support.nvml_replay import RecordedSampler

    mm_port, player_port, streamer_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "PIXELFLEET_AGENT_TOKEN": AGENT_TOKEN,
        "PIXELFLEET_SESSION_TOKEN_SECRET": "bench-secret-" + "x" * 32,
    }
    quiet: dict[str, Any] = {"stdout": asyncio.subprocess.DEVNULL, "stderr": asyncio.subprocess.DEVNULL}
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pixelfleet",
            "matchmaker",
            "--port",
            str(mm_port),
            "--log-level",
            "warning",
            env=env,
            **quiet,
        ),
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pixelfleet",
            "signaling",
            "--host",
            "127.0.0.1",
            "--player-port",
            str(player_port),
            "--streamer-port",
            str(streamer_port),
            "--sfu-port",
            "-1",
            "--log-level",
            "warning",
            **quiet,
        ),
    ]
    agent: Agent | None = None
    try:
        await _wait_http(f"http://127.0.0.1:{mm_port}/healthz")
        await _wait_http(f"http://127.0.0.1:{player_port}/healthz")
        settings = AgentSettings(
            host_id="bench",
            app="bench",
            matchmaker_url=f"http://127.0.0.1:{mm_port}",
            agent_token=AGENT_TOKEN,
            signaling_url=f"ws://127.0.0.1:{player_port}",
            streamer_url=f"ws://127.0.0.1:{streamer_port}",
            signaling_api_url=f"http://127.0.0.1:{player_port}",
            slots=slots,
            res_x=320,
            res_y=240,
            fps=10,
            heartbeat_period_s=period,
            sample_period_s=period,
            health_poll_s=2.0,
            metrics_port=0,
            log_level="warning",
            startup_timeout_s=120.0,
        )
        client = HttpMatchmakerClient(settings.matchmaker_url, AGENT_TOKEN)
        agent = Agent(settings, client, sampler=RecordedSampler(FIXTURE))
        await agent.start()
        if not await agent.wait_ready(180):
            raise RuntimeError(f"slots not READY: {agent.slots.summary()}")
        assert agent.reporter is not None
        await agent.reporter.beat_now()
        gpus = len(agent.telemetry.latest.gpus)

        # Micro figures, with the background loops paused so only the measured call runs.
        await agent.reporter.stop()
        await agent.telemetry.stop()
        sample = await _measure(agent.telemetry.sample_once, iterations, repeats)
        before = agent.reporter.delivered
        heartbeat = await _measure(agent.reporter.beat_now, iterations, repeats)
        if agent.reporter.delivered - before != iterations * repeats:
            raise RuntimeError(f"heartbeats not delivered: {agent.reporter.last_error}")
        watch = agent.slots.watch
        poll = await _measure(lambda: watch.status("bench-0"), iterations, repeats)
        agent.reporter.start()
        agent.telemetry.start()

        # Steady state: everything running as in production.
        await asyncio.sleep(2 * period)
        delivered, samples = agent.reporter.delivered, agent.telemetry.samples
        cpu0, wall0 = _cpu(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
        beats, cycles = agent.reporter.delivered - delivered, agent.telemetry.samples - samples
        pct = 100 * cpu / wall
        return {
            "slots": slots,
            "gpus": gpus,
            "period_s": period,
            "sample_cycle": sample,
            "heartbeat": heartbeat,
            "readiness_poll": poll,
            "steady": {
                "seconds": round(wall, 2),
                "cpu_s": round(cpu, 4),
                "cpu_pct_of_one_core": round(pct, 3),
                "heartbeats": beats,
                "sample_cycles": cycles,
                "target_pct": TARGET_PCT,
                "pass": pct < TARGET_PCT,
            },
            "ready_slots": sum(s.phase.value == "ready" for s in agent.slots),
            "cold_start_s": {
                "median": round(
                    statistics.median([s.cold_start_s for s in agent.slots if s.cold_start_s is not None]), 3
                )
            },
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
            },
        }
    finally:
        if agent is not None:
            await agent.stop()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wait(), 10)
            if child.returncode is None:
                child.kill()
                await child.wait()


def _report(r: dict[str, Any]) -> str:
    st = r["steady"]
    return "\n".join(
        [
            f"GPU agent, {r['slots']} slots on {r['gpus']} recorded GPUs, period {r['period_s']:g} s "
            f"({r['machine']['cpus']} CPUs, Python {r['machine']['python']})",
            f"  sample cycle (NVML parse, recorded)   {r['sample_cycle']['median_us']:>9.1f} µs CPU "
            f"(worst run {r['sample_cycle']['max_us']:.1f})",
            f"  heartbeat (build + POST + reply)      {r['heartbeat']['median_us']:>9.1f} µs CPU "
            f"(worst run {r['heartbeat']['max_us']:.1f})",
            f"  readiness poll (GET /api/streamers)   {r['readiness_poll']['median_us']:>9.1f} µs CPU "
            f"(worst run {r['readiness_poll']['max_us']:.1f})",
            f"  steady state: {st['cpu_s']:.3f} CPU s in {st['seconds']:.1f} s = {st['cpu_pct_of_one_core']:.3f} % "
            f"of one core ({st['heartbeats']} heartbeats, {st['sample_cycles']} samples); target < {TARGET_PCT:g} %: "
            f"{'PASS' if st['pass'] else 'FAIL'}",
            f"  slot cold start (synthetic streamer, median): {r['cold_start_s']['median']} s",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_agent", description=__doc__.split("\n")[0])
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--period", type=float, default=1.0, help="sample and heartbeat period, s")
    p.add_argument("--seconds", type=float, default=30.0, help="steady-state window, s")
    p.add_argument("--iterations", type=int, default=200, help="calls per micro run")
    p.add_argument("--repeats", type=int, default=5, help="micro runs (median reported)")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    import uvloop

    from pixelfleet.logs import configure_logging

    configure_logging("warning", "console")
    result = uvloop.run(bench(args.slots, args.period, args.seconds, args.iterations, args.repeats))
    print(_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
