"""The matchmaker benchmark's processes: its Redis, the matchmaker replicas, the load
generators, and the CPU each of them used in a measured window."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil

from loadtest.bench_matchmaker_raw import pool_layout
from loadtest.bench_signaling import ProcTree, ProcTrees, percentile, run_queue
from loadtest.children import JsonLineChild, die_with_parent, tail
from pixelfleet.net import NotListening, free_port, wait_for_port

TENANT = "bench"
AGENT = "bench-agent-token-" + "a" * 16
ADMIN = "bench-admin-token-" + "b" * 16
CALLER_SECRET = "bench-caller-secret-" + "c" * 32
TOKEN_SECRET = "bench-session-secret-" + "d" * 32
NCPU = psutil.cpu_count() or 1
now = time.monotonic


# ----------------------------------------------------------------------------- Redis


class RedisServer:
    """Ours (started here, stopped in ``finally``) or someone else's (``--redis-url``)."""

    def __init__(self, url: str | None, folder: str, *, tcp_port: int = 0, args: Sequence[str] = ()) -> None:
        """``tcp_port``: also listen there on loopback (a replica reaches its primary over
        TCP); ``args``: more of redis-server's options (``--replicaof``)."""
        self.url = url
        self.own = url is None
        self.folder = folder
        self.tcp_port, self.args = tcp_port, list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        import redis

        if self.own:
            binary = shutil.which("redis-server")
            if binary is None:
                raise RuntimeError("redis-server is not installed (apt-get install redis-server), or pass --redis-url")
            sock = os.path.join(self.folder, "redis.sock")
            with open(os.path.join(self.folder, "redis.log"), "wb") as log:  # the child keeps its own copy
                self.proc = subprocess.Popen(
                    [
                        binary,
                        "--port",
                        str(self.tcp_port),
                        "--bind",
                        "127.0.0.1",
                        "--unixsocket",
                        sock,
                        "--unixsocketperm",
                        "700",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        self.folder,
                        *self.args,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                )
            self.url = f"unix://{sock}"
        assert self.url is not None
        self.client = redis.Redis.from_url(self.url)
        for _ in range(200):
            with contextlib.suppress(redis.exceptions.ConnectionError):
                if self.client.ping():
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"redis at {self.url} does not answer PING")
        info = self.client.info("server")
        self.version, self.pid = info["redis_version"], int(info["process_id"])
        return self.url

    def cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def clear(self, prefix: str) -> None:
        """Forget a phase's keys: FLUSHALL on our own server, by prefix on another."""
        if self.own:
            self.client.flushall()
            return
        for pattern in (f"{{{prefix}}}*", f"{{{prefix}:*", f"{prefix}:*"):
            batch = []
            for key in self.client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self.client.unlink(*batch)
                    batch = []
            if batch:
                self.client.unlink(*batch)

    def commandstats(self) -> dict[str, tuple[int, float]]:
        """Calls and microseconds per command (commands run by scripts count too)."""
        out = {}
        for name, st in self.client.info("commandstats").items():
            out[name.removeprefix("cmdstat_")] = (int(st["calls"]), float(st["usec"]))
        return out

    def io_events(self) -> tuple[int, int]:
        """Socket reads and writes Redis has processed (every client's): a read is one
        round trip in (however many commands it carried), which CPU per call hides."""
        st = self.client.info("stats")
        return int(st.get("total_reads_processed", 0)), int(st.get("total_writes_processed", 0))

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def fill_pool(url: str, prefix: str, apps: Sequence[str], slots_per_app: int, host_slots: int = 100) -> int:
    """Register READY slots through the store (register + one heartbeat per host, as an
    agent does). Returns how many."""
    from matchmaker.models import (
        Heartbeat,
        HostRegistration,
        SlotReport,
        SlotSpec,
        SlotState,
    )
    from matchmaker.store_redis import RedisStore

    store = RedisStore.from_url(url, prefix=prefix, timeout_s=60)
    jobs = pool_layout(list(apps), slots_per_app, host_slots)

    async def one(host: str, app: str, n: int) -> None:
        t = time.time()
        await store.register_host(
            HostRegistration(
                host_id=host,
                boot_id="b1",
                region="eu",
                gpu_model="L4",
                signaling_url="ws://127.0.0.1:1",
                slots=[SlotSpec(index=i, tenant=TENANT, app=app, streamer_id=f"{host}-{i}") for i in range(n)],
            ),
            t,
        )
        await store.heartbeat(
            host, Heartbeat(boot_id="b1", slots=[SlotReport(index=i, state=SlotState.READY) for i in range(n)]), t
        )

    try:
        for i in range(0, len(jobs), 16):
            await asyncio.gather(*(one(*j) for j in jobs[i : i + 16]))
    finally:
        await store.aclose()
    return sum(n for _, _, n in jobs)


# ----------------------------------------------------------------------------- processes


def _has_exited(proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: proc.poll() is not None


def replica_timeouts(opts: argparse.Namespace) -> dict[str, str]:
    """With the fleet at work, production timeouts but a short reconnect grace (a
    disconnected session ends after it); without a fleet nothing heartbeats or
    connects, so the timeouts are a day."""
    if opts.fleet is None:
        return {
            "PIXELFLEET_MATCHMAKER__HEARTBEAT_TTL_S": "86400",
            "PIXELFLEET_MATCHMAKER__CONNECT_TIMEOUT_S": "86400",
            "PIXELFLEET_MATCHMAKER__MAX_SESSION_S": "86400",
        }
    return {
        "PIXELFLEET_MATCHMAKER__HEARTBEAT_TTL_S": str(opts.heartbeat_ttl),
        "PIXELFLEET_MATCHMAKER__RECONNECT_GRACE_S": str(opts.reconnect_grace),
    }


def heartbeat_ttl(opts: argparse.Namespace) -> float:
    return 86400.0 if opts.fleet is None else float(opts.heartbeat_ttl)


class Matchmakers:
    def __init__(self, n: int, url: str, prefix: str, folder: str, opts: argparse.Namespace) -> None:
        self.n, self.url, self.prefix, self.folder, self.opts = n, url, prefix, folder, opts
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.logs: list[str] = []

    def spawn(self) -> None:
        env = {
            **os.environ,
            "PIXELFLEET_STATE_URL": self.url,
            "PIXELFLEET_MATCHMAKER__KEY_PREFIX": self.prefix,
            "PIXELFLEET_SESSION_TOKEN_SECRET": TOKEN_SECRET,
            "PIXELFLEET_AGENT_TOKEN": AGENT,
            "PIXELFLEET_ADMIN_TOKEN": ADMIN,
            "PIXELFLEET_MATCHMAKER__CALLER_JWT_SECRET": CALLER_SECRET,
            "PIXELFLEET_MATCHMAKER__SWEEP_INTERVAL_S": str(self.opts.sweep_interval),
            **replica_timeouts(self.opts),
        }
        for i in range(self.n):
            port = free_port()
            log = os.path.join(self.folder, f"{self.prefix}-mm{i}.log")
            with open(log, "wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "pixelfleet",
                            "matchmaker",
                            "--port",
                            str(port),
                            "--log-level",
                            self.opts.mm_log_level,
                            "--log-format",
                            "json",
                        ],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        preexec_fn=die_with_parent,
                    )
                )
            self.ports.append(port)
            self.logs.append(log)

    async def start(self, wait_s: float = 30.0) -> list[ProcTree]:
        self.spawn()
        deadline = now() + wait_s
        for i, (proc, port) in enumerate(zip(self.procs, self.ports, strict=True)):
            try:
                await wait_for_port("127.0.0.1", port, max(0.0, deadline - now()), exited=_has_exited(proc))
            except NotListening as exc:
                raise RuntimeError(f"matchmaker {i}: {exc}:\n{tail(self.logs[i])}") from None
        return [ProcTree(p.pid) for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


class Generator(JsonLineChild):
    """One ``loadtest.bench_matchmaker_client`` child, one JSON line each way."""

    def __init__(self, proc: asyncio.subprocess.Process, log: str) -> None:
        super().__init__("generator", proc, log)
        self.tree = ProcTree(proc.pid)

    @classmethod
    async def start(cls, cfg: dict[str, Any], log: str) -> Generator:
        return cls(await cls.spawn("loadtest.bench_matchmaker_client", cfg, log, limit=256 << 20), log)


class Cpu:
    """CPU seconds of Redis, each matchmaker, each generator, and the machine; and how long
    each group's threads waited runnable for a CPU (Linux schedstat). On a box with fewer
    cores than busy processes an allocation waits that way at every hop of its path
    (generator, replica, Redis, replica, generator), which is what its tail is made of."""

    def __init__(
        self, redis: RedisServer, mms: Sequence[ProcTree], gens: Sequence[ProcTree], fleet: Sequence[ProcTree] = ()
    ) -> None:
        self.redis, self.mms, self.gens, self.fleet = redis, mms, gens, fleet

    def _waits(self) -> dict[str, tuple[float, int]]:
        ours = self.redis.proc is not None  # the pid of a Redis we did not start may name another box's process
        groups = {"matchmakers": self.mms, "generators": self.gens, "fleet": self.fleet}
        return {"redis": run_queue([self.redis.pid] if ours else [])} | {
            name: ProcTrees(trees).run_queue() for name, trees in groups.items()
        }

    def snap(self) -> dict[str, Any]:
        m = psutil.cpu_times()
        return {
            "waits": self._waits(),
            "t": now(),
            "redis": self.redis.cpu(),
            "mms": [p.cpu() for p in self.mms],
            "gens": [g.cpu() for g in self.gens],
            "fleet": sum(f.cpu() for f in self.fleet),
            "idle": m.idle + getattr(m, "iowait", 0.0),
            "total": sum(m),
        }

    @staticmethod
    def since(a: dict[str, Any], b: dict[str, Any], ops: int) -> dict[str, Any]:
        wall = b["t"] - a["t"]
        redis = b["redis"] - a["redis"]
        mms = [y - x for x, y in zip(a["mms"], b["mms"], strict=True)]
        gens = [y - x for x, y in zip(a["gens"], b["gens"], strict=True)]
        total = b["total"] - a["total"]
        busy = 1.0 - (b["idle"] - a["idle"]) / total if total > 0 else 0.0
        fleet = b["fleet"] - a["fleet"]
        ours = redis + sum(mms) + sum(gens) + fleet

        def per_op(x: float) -> float | None:
            return round(x / ops * 1e3, 4) if ops else None

        return {
            "wall_s": round(wall, 3),
            "redis_cores": round(redis / wall, 3),
            "matchmaker_cores": [round(x / wall, 3) for x in mms],
            "matchmakers_cores": round(sum(mms) / wall, 3),
            "generator_cores": [round(x / wall, 3) for x in gens],
            "generators_cores": round(sum(gens) / wall, 3),
            "fleet_cores": round(fleet / wall, 3),
            "machine_busy": round(busy, 3),
            "other_cores": round(max(0.0, busy * NCPU - ours / wall), 3),
            "cpu_ms_per_op": {"redis": per_op(redis), "matchmakers": per_op(sum(mms)), "generators": per_op(sum(gens))},
            "run_queue": _run_queue_since(a["waits"], b["waits"], ops),
        }


def _run_queue_since(a: dict[str, tuple[float, int]], b: dict[str, tuple[float, int]], ops: int) -> dict[str, Any]:
    """Per group: the mean wait for a CPU each time a thread got one (ms), and the wait in
    all over the operations made (ms per op). None where the kernel keeps no schedstat."""
    out: dict[str, Any] = {}
    for name, (wait, turns) in b.items():
        wait, turns = wait - a[name][0], turns - a[name][1]
        out[name] = {
            "ms_per_turn": round(wait / turns * 1e3, 3) if turns > 0 else None,
            "ms_per_op": round(wait / ops * 1e3, 3) if ops and turns > 0 else None,
        }
    return out


def saturation(cpu: dict[str, Any]) -> str:
    """Which side ran out of CPU."""
    r, mm, g = cpu["redis_cores"], cpu["matchmaker_cores"], cpu["generator_cores"]
    shares = (
        f"redis {r:.2f}, matchmakers {cpu['matchmakers_cores']:.2f}"
        f"{' (' + ' '.join(f'{x:.2f}' for x in mm) + ')' if len(mm) > 1 else ''}, "
        f"generators {cpu['generators_cores']:.2f}, fleet {cpu['fleet_cores']:.2f}, "
        f"other {cpu['other_cores']:.2f} cores"
    )
    if max(g, default=0.0) >= 0.9:
        return f"generator: a generator holds a full core, the figure is the client's ({shares})"
    if r >= 0.9:
        return f"redis: its one core is busy ({shares})"
    if mm and max(mm) >= 0.9:
        return f"matchmaker: {sum(x >= 0.9 for x in mm)} of {len(mm)} replicas hold a full core ({shares})"
    if cpu["machine_busy"] >= 0.9:
        top = max(
            [("redis", r), ("matchmakers", cpu["matchmakers_cores"]), ("generators", cpu["generators_cores"])],
            key=lambda kv: kv[1],
        )[0]
        return f"machine: all {NCPU} cores busy, mostly {top} ({shares})"
    return f"neither: latency-bound ({shares})"


def latency_summary(ms: Sequence[float]) -> dict[str, float | None]:
    def p(q: float) -> float | None:
        v = percentile(ms, q)
        return None if v is None else round(v, 3)

    return {"p50_ms": p(0.50), "p90_ms": p(0.90), "p99_ms": p(0.99), "max_ms": round(max(ms), 3) if ms else None}


def _per_alloc(
    before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]], ops: int, top: int = 10
) -> list[dict[str, Any]]:
    """Redis commands per allocation and their Redis-side microseconds, biggest first."""
    rows: list[dict[str, Any]] = []
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0.0))
        if calls > c0 and ops:
            rows.append({"command": name, "calls": round((calls - c0) / ops, 2), "usec": round((usec - u0) / ops, 1)})
    rows.sort(key=lambda r: -r["usec"])
    return rows[:top]


def _merge_statuses(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        for k, v in r.get("statuses", {}).items():
            out[k] = out.get(k, 0) + v
    return out


def code_identity() -> dict[str, Any]:
    """Which matchmaker code ran: the commit, and whether matchmaker/ differed from it."""
    import hashlib

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out: dict[str, Any] = {"root": here}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        out["matchmaker_dirty"] = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--", "matchmaker"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    digest = hashlib.sha256()
    folder = os.path.join(here, "matchmaker")
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + f.read())
    out["matchmaker_sha256"] = digest.hexdigest()[:12]
    return out
