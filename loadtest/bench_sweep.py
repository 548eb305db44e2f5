"""Sweep benchmark: what one replica's timeout sweep costs with many live sessions.

The sweep used to list every live session (``Store.sessions()``: an HVALS per tenant
and a decode of all) to find the few that are due; it now asks only for the due ones
(``Store.due_sessions``, over per-tenant deadline indexes). This measures both reads in
the same run, on the same Redis and the same sessions, with none due and with some due,
so the figures compare directly:

    python -m loadtest.bench_sweep --sessions 2000,8000,32000 --due 0,50 --json out.json

Sessions are made as the matchmaker makes them (a pool registered through the store,
then ``RedisStore.allocate``); "due" ones are made first and then left: at the measured
clock they are past the connect timeout, the others are not. Each figure is the median
of ``--repeat`` reads (wall time of the awaited call, client decode included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from typing import Any

from loadtest.bench_matchmaker_procs import TENANT, RedisServer, fill_pool
from loadtest.bench_signaling import machine_info

CONNECT_TIMEOUT_S = 60.0
RULES = {
    "connect_timeout_s": CONNECT_TIMEOUT_S,
    "reconnect_grace_s": 30.0,
    "idle_timeout_s": 0.0,
    "max_session_s": 4 * 3600.0,
}


async def _make_sessions(url: str, prefix: str, live: int, due: int, t0: float) -> None:
    from matchmaker.models import AllocationRequest, Session
    from matchmaker.store_redis import RedisStore

    apps = [f"app{i}" for i in range(-(-(live + due) // 32))]
    await fill_pool(url, prefix, apps, 64)
    store = RedisStore.from_url(url, prefix=prefix, timeout_s=60)
    try:

        async def one(n: int) -> None:
            at = t0 - CONNECT_TIMEOUT_S - 5 if n < due else t0  # the first `due` are overdue
            out = await store.allocate(
                AllocationRequest(tenant=TENANT, app=apps[n % len(apps)]), f"s-{n}", at, policy="spread"
            )
            assert isinstance(out, Session), out

        for i in range(0, live + due, 256):
            await asyncio.gather(*(one(n) for n in range(i, min(i + 256, live + due))))
    finally:
        await store.aclose()


async def _measure(url: str, prefix: str, now: float, repeat: int) -> dict[str, Any]:
    from matchmaker.store_redis import RedisStore

    store = RedisStore.from_url(url, prefix=prefix, timeout_s=60)
    try:
        listed: list[float] = []
        due: list[float] = []
        n_listed = n_due = 0
        for _ in range(repeat):
            t = time.perf_counter()
            n_listed = len(await store.sessions())
            listed.append(time.perf_counter() - t)
            t = time.perf_counter()
            n_due = len(await store.due_sessions(now, limit=500, **RULES))
            due.append(time.perf_counter() - t)
        return {
            "listed": n_listed,
            "due": n_due,
            "sessions_ms": round(statistics.median(listed) * 1e3, 3),
            "due_sessions_ms": round(statistics.median(due) * 1e3, 3),
        }
    finally:
        await store.aclose()


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="bench-sweep-")
    redis = RedisServer(opts.redis_url, folder)
    url = await asyncio.to_thread(redis.start)
    rows = []
    try:
        for live in opts.sessions:
            for due in opts.due:
                prefix = f"bsw{live}x{due}"
                t0 = time.time()
                await _make_sessions(url, prefix, live - due, due, t0)
                row = {"live": live, "due_made": due, **await _measure(url, prefix, t0 + 1, opts.repeat)}
                print(
                    f"{live:>7} live, {due:>4} due: sessions() {row['sessions_ms']:>8.2f} ms "
                    f"({row['listed']} listed)   due_sessions() {row['due_sessions_ms']:>6.2f} ms "
                    f"({row['due']} due)",
                    flush=True,
                )
                rows.append(row)
                redis.clear(prefix)
    finally:
        redis.stop()
    return {"machine": machine_info(), "repeat": opts.repeat, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=lambda s: [int(x) for x in s.split(",")], default=[2000, 8000, 32000])
    p.add_argument("--due", type=lambda s: [int(x) for x in s.split(",")], default=[0, 50])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--redis-url", help="use this Redis (default: start redis-server on a Unix socket)")
    p.add_argument("--json", help="write the report here")
    opts = p.parse_args(argv)
    report = asyncio.run(run(opts))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
