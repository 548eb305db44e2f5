"""What waiting for a replica (``PIXELFLEET_MATCHMAKER__REDIS_WAIT_REPLICAS``) costs an allocation.

Starts a redis-server primary and one replica of it (loopback TCP between them; the store
reaches the primary on its unix socket, as the matchmaker benchmark does), fills a pool of
READY slots through the store, then claims them through ``RedisStore.allocate`` with
``--concurrency`` callers at a time: once with a store that does not wait, once with one
whose every round trip ends with ``WAIT 1``. The two alternate, ``--repeat`` times each,
on a fresh pool each time, so the machine's drift falls on both alike. Meanwhile every
pool host (50 slots each) heartbeats through the same store every ``--heartbeat-period``
seconds, as a replica's fleet does between allocations (their round trips wait too). With
``--replica-delay-ms`` the replica reaches its primary through ``loadtest.delay_proxy``, as
one in another availability zone would. Reported per mode:
allocations a second, latency p50/p99, the primary's CPU per allocation (the heartbeats'
included) and the heartbeats applied a second.

    python -m loadtest.bench_replica_wait --claims 4000 --concurrency 1,32 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from loadtest.bench_matchmaker_procs import TENANT, RedisServer, fill_pool
from loadtest.bench_matchmaker_raw import pool_layout
from loadtest.bench_redis_distance import start_proxy
from loadtest.bench_signaling import percentile
from matchmaker.models import AllocationRequest, Heartbeat, Session
from matchmaker.store_redis import RedisStore
from pixelfleet.net import free_port

APP = "wait-app"
HOST_SLOTS = 50  # slots per pool host: 80 hosts heartbeating for 4,000 slots
MODES = {"no wait": 0, "WAIT 1": 1}


async def start_pair(folder: Path, delay_ms: float) -> tuple[RedisServer, RedisServer, list[Any]]:
    """A primary and its replica, once the replica's link is up and it has synced; with a
    delay, the replica reaches the primary through ``delay_proxy`` (another zone's distance)."""
    port = free_port()
    (folder / "primary").mkdir()  # noqa: ASYNC240 - before anything runs
    (folder / "replica").mkdir()  # noqa: ASYNC240
    primary = RedisServer(None, str(folder / "primary"), tcp_port=port, args=["--repl-diskless-sync-delay", "0"])
    primary.start()
    children: list[Any] = []
    if delay_ms > 0:
        proxy, url = await start_proxy(f"tcp://127.0.0.1:{port}", delay_ms)
        children.append(proxy)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    replica = RedisServer(None, str(folder / "replica"), args=["--replicaof", "127.0.0.1", str(port)])
    replica.start()
    for _ in range(400):  # bounded: 20 s
        if replica.client.info("replication").get("master_link_status") == "up":
            return primary, replica, children
        await asyncio.sleep(0.05)
    raise RuntimeError("the replica did not sync with its primary within 20 s")


async def beat_host(store: RedisStore, host: str, period_s: float, offset_s: float, beats: list[int]) -> None:
    """One pool host's heartbeat (no slot changes) once a period, through the claims' own
    store, as a matchmaker replica takes its fleet's heartbeats between allocations; on its
    own schedule, whatever the replies take (each agent beats on its own). Runs until
    cancelled; ``beats`` counts them."""
    due = time.perf_counter() + offset_s
    while True:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        due += period_s
        await store.heartbeat(host, Heartbeat(boot_id="b1", slots=[]), time.time())
        beats[0] += 1


async def claim_all(
    url: str, prefix: str, wait: int, claims: int, concurrency: int, hb_period_s: float
) -> dict[str, Any]:
    store = RedisStore.from_url(url, prefix=prefix, timeout_s=30, wait_replicas=wait, wait_ms=4000)
    latencies: list[float] = []
    claimed = 0
    beats = [0]
    hosts = [host for host, _, _ in pool_layout([APP], claims, HOST_SLOTS)]
    beating = [
        asyncio.create_task(beat_host(store, host, hb_period_s, hb_period_s * k / len(hosts), beats))
        for k, host in enumerate(hosts)
        if hb_period_s > 0
    ]

    async def caller(k: int) -> None:
        nonlocal claimed
        for n in range(k, claims, concurrency):
            t0 = time.perf_counter()
            got = await store.allocate(
                AllocationRequest(tenant=TENANT, app=APP), f"s-{prefix}-{n}", time.time(), policy="spread"
            )
            latencies.append(time.perf_counter() - t0)
            claimed += isinstance(got, Session)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    finally:
        for task in beating:
            task.cancel()
        failed = [r for r in await asyncio.gather(*beating, return_exceptions=True) if isinstance(r, Exception)]
        if failed:  # a heartbeat that failed fails the run (CancelledError is no Exception)
            raise failed[0]
        await store.aclose()
    if claimed != claims:
        raise RuntimeError(f"{prefix}: {claimed} of {claims} claims took a slot")
    return {
        "heartbeats_per_s": beats[0] / wall,
        "per_s": claims / wall,
        "p50_ms": 1e3 * (percentile(latencies, 0.5) or 0.0),
        "p99_ms": 1e3 * (percentile(latencies, 0.99) or 0.0),
    }


async def run(opts: argparse.Namespace, primary: RedisServer) -> list[dict[str, Any]]:
    assert primary.url is not None
    rows: list[dict[str, Any]] = []
    for concurrency in opts.concurrency:
        for r in range(opts.repeat):
            for mode, wait in MODES.items():
                prefix = f"bw{concurrency}r{r}w{wait}"
                await fill_pool(primary.url, prefix, [APP], opts.claims, HOST_SLOTS)
                cpu0 = primary.cpu()
                row = await claim_all(primary.url, prefix, wait, opts.claims, concurrency, opts.heartbeat_period)
                row.update(mode=mode, concurrency=concurrency, run=r)
                row["redis_cpu_us_per_alloc"] = 1e6 * (primary.cpu() - cpu0) / opts.claims
                rows.append(row)
                primary.clear(prefix)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median of the runs per concurrency and mode, and the waiting mode against the other."""
    out = []
    for concurrency in sorted({r["concurrency"] for r in rows}):
        med = {}
        for mode in MODES:
            mine = [r for r in rows if r["concurrency"] == concurrency and r["mode"] == mode]
            med[mode] = {k: statistics.median(r[k] for r in mine) for k in ("per_s", "p50_ms", "p99_ms")}
            med[mode]["redis_cpu_us_per_alloc"] = statistics.median(r["redis_cpu_us_per_alloc"] for r in mine)
        base, wait = med["no wait"], med["WAIT 1"]
        out.append({"concurrency": concurrency, **{m: med[m] for m in MODES}, "ratio": wait["per_s"] / base["per_s"]})
    return out


def print_report(rows: list[dict[str, Any]], table: list[dict[str, Any]], version: str, delay_ms: float) -> None:
    away = f", {delay_ms:g} ms each way between them" if delay_ms else ""
    print(f"allocation with and without WAIT 1 - Redis {version}, primary + 1 replica on loopback{away}")
    head = f"{'conc':>4}  {'run':>3}  {'mode':<8} {'allocs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'redis us/alloc':>15}"
    print(f"{head} {'heartbeats/s':>13}")
    for r in rows:
        print(
            f"{r['concurrency']:>4}  {r['run']:>3}  {r['mode']:<8} {r['per_s']:>9.0f} {r['p50_ms']:>8.3f}"
            f" {r['p99_ms']:>8.3f} {r['redis_cpu_us_per_alloc']:>15.1f} {r['heartbeats_per_s']:>13.1f}"
        )
    for t in table:
        base, wait = t["no wait"], t["WAIT 1"]
        print(
            f"concurrency {t['concurrency']} (medians): {base['per_s']:.0f} -> {wait['per_s']:.0f} allocations/s"
            f" ({t['ratio']:.2f}x), p50 {base['p50_ms']:.3f} -> {wait['p50_ms']:.3f} ms,"
            f" p99 {base['p99_ms']:.3f} -> {wait['p99_ms']:.3f} ms"
        )


async def bench(opts: argparse.Namespace, folder: Path) -> tuple[str, list[dict[str, Any]]]:
    primary, replica, children = await start_pair(folder, opts.replica_delay_ms)
    try:
        return str(primary.client.info("server")["redis_version"]), await run(opts, primary)
    finally:
        for child in children:
            child.kill()
            await child.wait()
        replica.stop()
        primary.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--claims", type=int, default=4000, help="allocations per run (and slots in its pool)")
    p.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 32])
    p.add_argument("--repeat", type=int, default=3, help="runs of each mode, alternating")
    p.add_argument("--replica-delay-ms", type=float, default=0.0, help="each way between primary and replica")
    p.add_argument(
        "--heartbeat-period", type=float, default=2.0, help="each pool host beats this often during the claims; 0: none"
    )
    p.add_argument("--json", help="write the runs and the medians here")
    opts = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-wait-") as folder:
        try:
            version, rows = asyncio.run(bench(opts, Path(folder)))
        except redis.exceptions.RedisError as exc:
            print(f"redis failed: {exc}", file=sys.stderr)
            return 1
    table = summary(rows)
    print_report(rows, table, version, opts.replica_delay_ms)
    if opts.json:
        report = {"redis": version, "replica_delay_ms": opts.replica_delay_ms, "runs": rows, "medians": table}
        Path(opts.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
