"""Allocations straight on Redis for the matchmaker benchmark's ``raw`` phases.

``script`` mode hand-packs RESP and pipelines ``batch`` allocations per round trip on one
Unix-socket or TCP connection (the script's ceiling: Redis, not the client, should
saturate); ``store`` mode calls ``RedisStore.allocate`` from ``concurrency`` tasks (the
store's own client path). Both send exactly what the matchmaker sends per allocation,
heartbeat deadline check included (``heartbeat_ttl_s``), so that the ceiling runs the
production script path. Run inside a ``loadtest.bench_matchmaker_client`` process.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from typing import Any, cast
from urllib.parse import urlparse

now = time.perf_counter


def pool_layout(apps: list[str], slots_per_app: int, host_slots: int) -> list[tuple[str, str, int]]:
    """The benchmark pool's hosts: (host id, app, slots). Shared by the orchestrator
    (which registers them) and the raw generators (which claim them)."""
    out = []
    for app in apps:
        for h in range(-(-slots_per_app // host_slots)):
            out.append((f"{app}-h{h}", app, min(host_slots, slots_per_app - h * host_slots)))
    return out


def _resp(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out += (b"$%d\r\n" % len(a), a, b"\r\n")
    return b"".join(out)


class RespConn(asyncio.Protocol):
    """Counts replies (parsed by hiredis, the C parser redis-py uses): the allocation
    script answers an array whose first element is ``ok`` when it claimed a slot."""

    def __init__(self) -> None:
        import hiredis

        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.ones = 0
        self.zeros = 0
        self.errors: list[bytes] = []
        self.want = 0
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP connection's transport is a full Transport

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            self.received += 1
            if isinstance(reply, list):
                if reply and reply[0] == b"ok":
                    self.ones += 1
                else:
                    self.zeros += 1
            elif isinstance(reply, Exception) and len(self.errors) < 3:
                self.errors.append(str(reply).encode())
        if self.waiter is not None and self.received >= self.want and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"redis closed the connection: {exc}"))

    async def until(self, n: int) -> None:
        """Wait until ``n`` replies in all have arrived."""
        if self.received >= n:
            return
        self.want = n
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter


class RawClaims:
    """Allocations straight on Redis: process ``index`` of ``procs`` takes the apps
    ``apps[index::procs]`` and makes ``per_app`` allocations in each, round-robin over
    them (as the HTTP phases do), so processes never compete for a slot."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from matchmaker.store_redis import RedisStore

        self.cfg = cfg
        self.store = RedisStore.from_url(cfg["redis_url"], prefix=cfg["prefix"])
        self.ttl: float | None = cfg.get("heartbeat_ttl_s")  # as the matchmaker: dead hosts never placed on
        mine = cfg["apps"][cfg["index"] :: cfg["procs"]]
        self.apps = [app for _ in range(cfg["per_app"]) for app in mine]

    def _requests(self) -> list[tuple[Any, str]]:
        from matchmaker.models import AllocationRequest

        return [
            (AllocationRequest(tenant=self.cfg["tenant"], app=app), f"s-raw{self.cfg['index']}-{n}")
            for n, app in enumerate(self.apps)
        ]

    def _packed(self) -> list[bytes]:
        """Per allocation, exactly what ``RedisStore.allocate`` sends (its own
        ``_allocate_calls``: the tenant lookup's SET and the allocation script's EVALSHA)."""
        st = self.store
        t = time.time()
        out = []
        for request, sid in self._requests():
            (_, _, set_args), (script, keys, args) = st._allocate_calls(  # noqa: SLF001
                request, sid, t, policy=self.cfg["policy"], rnd=random.random(), heartbeat_ttl_s=self.ttl
            )
            assert script is not None, "the second call of an allocation is its script"
            out.append(
                _resp(*(str(a).encode() for a in set_args))
                + _resp(
                    b"EVALSHA",
                    script.sha.encode(),
                    str(len(keys)).encode(),
                    *(k if isinstance(k, bytes) else str(k).encode() for k in keys),
                    *(a if isinstance(a, bytes) else str(a).encode() for a in args),
                )
            )
        return out

    async def prepare(self) -> None:
        await self.store._r.script_load(self.store._scripts.allocate.script)  # noqa: SLF001
        if self.cfg["mode"] == "script":
            self.packed = self._packed()
            url = urlparse(self.cfg["redis_url"])
            loop = asyncio.get_running_loop()
            if url.scheme == "unix":
                _, self.conn = await loop.create_unix_connection(RespConn, url.path)
            else:
                _, self.conn = await loop.create_connection(RespConn, url.hostname or "127.0.0.1", url.port or 6379)

    async def run(self) -> dict[str, Any]:
        return await (self._script() if self.cfg["mode"] == "script" else self._store())

    async def _script(self) -> dict[str, Any]:
        conn, batch, window = self.conn, self.cfg["batch"], self.cfg.get("window", 2)
        assert conn.transport is not None
        packed = self.packed
        batches = [
            (b"".join(packed[i : i + batch]), 2 * len(packed[i : i + batch])) for i in range(0, len(packed), batch)
        ]
        lat: list[float] = []
        inflight: collections.deque[tuple[float, int]] = collections.deque()  # (sent, replies due by then)
        expected = 0
        t0 = now()
        for data, replies in batches:
            if len(inflight) >= window:
                sent, target = inflight.popleft()
                await conn.until(target)
                lat.append(now() - sent)
            expected += replies
            inflight.append((now(), expected))
            conn.transport.write(data)
        while inflight:
            sent, target = inflight.popleft()
            await conn.until(target)
            lat.append(now() - sent)
        t1 = now()
        return {
            "wall_s": t1 - t0,
            "claims": len(packed),
            "claimed": conn.ones,
            "refused": conn.zeros,
            "errors": [e.decode(errors="replace") for e in conn.errors[:3]],
            "batch_ms": [round(x * 1e3, 3) for x in lat],
        }

    async def _store(self) -> dict[str, Any]:
        from matchmaker.models import Session

        requests = self._requests()
        conc = self.cfg.get("concurrency", 32)
        lat: list[float] = []
        results = collections.Counter[bool]()

        async def worker(k: int) -> None:
            for n in range(k, len(requests), conc):
                request, sid = requests[n]
                t1 = now()
                out = await self.store.allocate(
                    request, sid, time.time(), policy=self.cfg["policy"], heartbeat_ttl_s=self.ttl
                )
                results[isinstance(out, Session)] += 1
                lat.append(now() - t1)

        t0 = now()
        await asyncio.gather(*(worker(k) for k in range(conc)))
        t1 = now()
        return {
            "wall_s": t1 - t0,
            "claims": len(requests),
            "claimed": results[True],
            "refused": results[False],
            "errors": [],
            "lat_ms": [round(x * 1e3, 3) for x in lat],
        }

    async def close(self) -> None:
        if self.cfg["mode"] == "script" and self.conn.transport is not None:
            self.conn.transport.close()
        await self.store.aclose()
