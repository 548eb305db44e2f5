"""Round trips to a Redis that is far away: the pipe against what it replaced, same run.

``pixelfleet/redis_pipe.py`` keeps one connection on which batches are written without
waiting for the replies to the ones before. On loopback a reply takes tens of
microseconds, so waiting for it costs little; a managed Redis in another zone is a few
hundred microseconds away. This benchmark puts ``loadtest.delay_proxy`` (a child process
holding every chunk ``--delays-ms`` each way) in front of a redis-server it starts, and
compares, at each delay, in alternating order over ``--repeat`` rounds (``direct``: no
proxy, the redis-server's own Unix socket; the proxy's thread hand-offs add a tail of
their own, which the ``0`` delay shows against ``direct``):

- **signalling's batch writer** (``signaling.broker_outbox.BatchSender``, SPUBLISH to an
  inbox): records arrive at ``--rate`` per second (open loop) and one writer sends what
  has queued as one batch, as ``RedisBroker._write`` does. ``pipe``: the window of 256
  batches the broker uses; ``one-at-a-time``: a window of 1, which waits for each reply
  before the next batch, as the writer before the pipe did. Per record: enqueue to reply,
  p50/p99; records/s.
- **the matchmaker store's round trips** (a ``SET`` and a ``GET``, the shape of an
  allocation's round trip), ``--concurrency`` tasks in a closed loop for ``--seconds``.
  The calls of one event-loop turn go as one round trip in both modes, as the store's
  ``_batch`` does; ``pipe``: written on the store's pipe, without waiting for the round
  trips before; ``redis-py``: a redis-py pipeline per round trip on the pooled client, as
  the store did before.
  Round trips/s, p50/p99, and this process's CPU per round trip.

    python -m loadtest.bench_redis_distance --delays-ms 0,0.25,1 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import uvloop
from redis.asyncio import BlockingConnectionPool, Redis

from loadtest.bench_cluster import median
from loadtest.bench_matchmaker_procs import RedisServer
from loadtest.report import percentile
from pixelfleet.redis_pipe import Pipe, borrow, pack_command
from pixelfleet.redis_timing import RoundTrips
from signaling.broker_outbox import BatchSender

CHANNEL = "{bench}:in"


def _pct(values: list[float], q: float) -> float | None:
    """The ``q`` percentile of seconds, in ms."""
    found = percentile(values, q)
    return None if found is None else found * 1000


async def start_proxy(target: str, delay_ms: float) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.delay_proxy",
        "--target",
        target,
        "--delay-ms",
        str(delay_ms),
        "--parent-pid",
        str(os.getpid()),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 15)
    return proc, f"redis://127.0.0.1:{json.loads(line)['port']}/0"


async def writer_phase(url: str, window: int, rate: float, seconds: float, payload: int) -> dict[str, Any]:
    """Records at ``rate``/s; one writer sends what queued as one batch per send."""
    client = Redis.from_url(url)
    sender = BatchSender(client, RoundTrips(), bound_s=10.0, window=window)
    queued: list[float] = []
    latencies: list[float] = []
    wake = asyncio.Event()
    stop = False

    async def write() -> None:
        nonlocal queued
        while not stop or queued:
            if not queued:
                wake.clear()
                await wake.wait()
                continue
            batch, queued = queued, []
            body = b"x" * (payload * len(batch))

            def done(reply: int | BaseException, batch: list[float] = batch) -> None:
                now = time.perf_counter()
                if not isinstance(reply, BaseException):
                    latencies.extend(now - t for t in batch)

            await sender.send(CHANNEL, body, done)

    warm = asyncio.get_running_loop().create_future()
    await sender.send(CHANNEL, b"warm", warm.set_result)  # the pipe is open before the clock starts
    await warm
    task = asyncio.create_task(write())
    t0 = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - t0 < seconds:
        due = int((now - t0) * rate) - sent
        if due > 0:
            queued.extend([now] * due)
            sent += due
            wake.set()
        await asyncio.sleep(0.0005)
    stop = True
    wake.set()
    await task
    await sender.aclose(within_s=5.0)
    await client.aclose()
    return {
        "records": sent,
        "answered": len(latencies),
        "records_per_s": len(latencies) / seconds,
        "p50_ms": _pct(latencies, 50),
        "p99_ms": _pct(latencies, 99),
    }


async def store_phase(url: str, mode: str, concurrency: int, seconds: float) -> dict[str, Any]:
    client = Redis.from_pool(BlockingConnectionPool.from_url(url, timeout=None, max_connections=200))
    pipe: Pipe | None = None
    queued: list[tuple[list[tuple[str, ...]], asyncio.Future[list[Any]]]] = []
    loop = asyncio.get_running_loop()

    async def by_redis_py(calls: list[tuple[str, ...]]) -> list[Any]:
        p = client.pipeline(transaction=False)
        for args in calls:
            p.execute_command(*args)
        return list(await p.execute(raise_on_error=False))

    def send_queued() -> None:  # the store's _batch: the calls of one loop turn, one round trip
        nonlocal queued
        mine, queued = queued, []
        calls = [c for batch, _ in mine for c in batch]

        def answered(replies: list[Any] | BaseException) -> None:
            at = 0
            for batch, fut in mine:
                if isinstance(replies, BaseException):
                    fut.set_exception(replies)
                else:
                    fut.set_result(replies[at : at + len(batch)])
                at += len(batch)

        if pipe is not None:
            loop.create_task(pipe.send([pack_command(c) for c in calls], len(calls), answered))
            return

        async def via_redis_py() -> None:
            try:
                answered(await by_redis_py(calls))
            except Exception as exc:  # noqa: BLE001 - every caller in it hears why
                answered(exc)

        loop.create_task(via_redis_py())

    async def trip(calls: list[tuple[str, ...]]) -> list[Any]:
        fut: asyncio.Future[list[Any]] = loop.create_future()
        queued.append((calls, fut))
        if len(queued) == 1:
            loop.call_soon(send_queued)
        return await fut

    if mode == "pipe":
        conn, release = await borrow(client, 5.0)
        pipe = Pipe(conn, release, bound_s=10.0)
    latencies: list[float] = []
    t_end = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        key = f"bench:{i}"
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            await trip([("SET", key, "v" * 40), ("GET", key)])
            latencies.append(time.perf_counter() - t)

    await trip([("PING",)])  # connected before the clock starts
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    if pipe is not None:
        await pipe.aclose()
    await client.aclose()
    return {
        "round_trips": len(latencies),
        "per_s": len(latencies) / wall,
        "p50_ms": _pct(latencies, 50),
        "p99_ms": _pct(latencies, 99),
        "client_cpu_us": 1e6 * cpu / max(1, len(latencies)),
    }


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="bench-distance-")
    server = RedisServer(None, folder)
    target = server.start()
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(opts.repeat):
            results: dict[str, Any] = {}
            for delay in opts.delays_ms:
                proxy, url = (None, target) if delay is None else await start_proxy(target, delay)
                name = "direct" if delay is None else delay
                try:
                    order = ["pipe", "one-at-a-time"] if r % 2 == 0 else ["one-at-a-time", "pipe"]
                    for mode in order:
                        window = 256 if mode == "pipe" else 1
                        results[f"writer/{name}/{mode}"] = await writer_phase(
                            url, window, opts.rate, opts.seconds, opts.payload
                        )
                    for mode in ["pipe", "redis-py"] if r % 2 == 0 else ["redis-py", "pipe"]:
                        results[f"store/{name}/{mode}"] = await store_phase(url, mode, opts.concurrency, opts.seconds)
                finally:
                    if proxy is not None:
                        proxy.kill()
                        await proxy.wait()
            rounds.append(results)
            print(f"round {r + 1}/{opts.repeat} done", file=sys.stderr, flush=True)
    finally:
        server.stop()
    keys = rounds[0].keys()
    merged = {k: {f: median([rd[k][f] for rd in rounds]) for f in rounds[0][k]} for k in keys}
    return {"options": vars(opts), "rounds": rounds, "median": merged}


def render(report: dict[str, Any]) -> str:
    def f(v: Any, fmt: str = "{:,.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    lines = [f"{'phase (one-way delay ms / mode)':44} {'per s':>10} {'p50 ms':>8} {'p99 ms':>8} {'client CPU µs':>14}"]
    for key, m in report["median"].items():
        per_s = m.get("records_per_s", m.get("per_s"))
        lines.append(
            f"{key:44} {f(per_s, '{:,.0f}'):>10} {f(m['p50_ms']):>8} {f(m['p99_ms']):>8} "
            f"{f(m.get('client_cpu_us'), '{:,.1f}'):>14}"
        )
    return "\n".join(lines)


def _delays(text: str) -> list[float | None]:
    return [None if x.strip() == "direct" else float(x) for x in text.split(",")]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.bench_redis_distance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--delays-ms",
        type=_delays,
        default=[None, 0.0, 0.25, 1.0],
        help="one-way delays to add, ms; 'direct': no proxy at all (default direct,0,0.25,1)",
    )
    ap.add_argument("--rate", type=float, default=20_000, help="writer: records offered per second (default 20,000)")
    ap.add_argument("--payload", type=int, default=300, help="writer: bytes per record (default 300)")
    ap.add_argument("--concurrency", type=int, default=32, help="store: tasks in the closed loop (default 32)")
    ap.add_argument("--seconds", type=float, default=3.0, help="each phase, s (default 3)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds, modes alternating in order; medians")
    ap.add_argument("--json", help="write the report here")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    report = uvloop.run(run(opts))
    print(render(report))
    if opts.json:
        with open(opts.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
