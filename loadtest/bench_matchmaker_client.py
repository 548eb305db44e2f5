"""Load-generator process for the matchmaker benchmark (one of several).

``loadtest.bench_matchmaker`` starts it and drives it with one JSON command per line on
stdin; each answer is one JSON line on stdout. A generator must cost far less CPU per
allocation than what it loads, so it is lean:

- ``http``: a minimal HTTP/1.1 keep-alive client on a raw asyncio ``Protocol`` (uvloop),
  one request in flight per connection, requests pre-encoded once per app; a response
  is parsed only as far as its status line and ``Content-Length``. This hot path stays
  raw on purpose, not ``matchmaker.client`` (aiohttp and a decode per reply would cost
  the generator more CPU than the allocations it measures).
  ``closed``: every connection sends its next request as soon as the last one is
  answered, until ``count`` requests are done. ``open``: requests are due at a fixed
  rate (open loop: a slow answer does not delay the next request); a request that finds
  no idle connection waits in a backlog, and its latency then counts from when it was
  due.
- ``raw``: the matchmaker's allocation (``RedisStore.allocate``: ``SET`` of the
  session's tenant lookup + ``EVALSHA`` of the allocation script, which places and
  claims, with the same keys and arguments) sent straight to Redis. ``script`` mode
  hand-packs RESP and pipelines ``batch`` allocations per round trip on one Unix-socket
  or TCP connection (the script's ceiling: Redis, not the client, should saturate);
  ``store`` mode calls ``RedisStore.allocate`` from ``concurrency`` tasks (the store's
  own client path).

Commands: ``prepare`` (connect), ``run`` (answers when done), ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlparse

import orjson

now = time.perf_counter


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# ----------------------------------------------------------------------------- HTTP

OnDone = Callable[["HttpConn", int], None]


def _no_run(conn: HttpConn, status: int) -> None:  # replaced per run
    raise AssertionError("no run in progress")


class HttpConn(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    __slots__ = ("transport", "buf", "need", "status", "t_sent", "t_due", "on_done", "lost", "busy")

    def __init__(self, on_done: OnDone) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        self.status = 0
        self.t_sent = 0.0
        self.t_due = 0.0
        self.on_done = on_done
        self.lost = False
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a TCP connection's transport is a full Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.busy:
            self.busy = False
            self.on_done(self, -1)

    def send(self, data: bytes, t_due: float) -> None:
        assert self.transport is not None
        self.t_due = t_due
        self.t_sent = now()
        self.busy = True
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(buf[9:12])
            at = buf.find(b"Content-Length: ", 0, end)
            length = int(buf[at + 16 : buf.find(b"\r\n", at)]) if at >= 0 else 0
            self.need = end + 4 + length
        if len(buf) >= self.need:
            del buf[: self.need]
            self.need = -1
            self.busy = False
            self.on_done(self, self.status)


class HttpLoad:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.conns: list[HttpConn] = []
        apps = cfg["apps"]
        token = cfg["token"]
        self.requests: list[bytes] = []
        for app in apps:
            body = orjson.dumps({"app": app})
            self.requests.append(
                b"POST /api/v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                + token.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
        self.app_index: int = cfg.get("app_offset", 0)
        self.app_step: int = cfg.get("app_step", 1)
        self._on_done: OnDone = _no_run

    def next_request(self) -> bytes:
        r = self.requests[self.app_index % len(self.requests)]
        self.app_index += self.app_step
        return r

    async def prepare(self, connections: int) -> None:
        loop = asyncio.get_running_loop()
        ports = self.cfg["ports"]
        for i in range(connections):
            _, conn = await loop.create_connection(lambda: HttpConn(self._on_done), "127.0.0.1", ports[i % len(ports)])
            self.conns.append(conn)

    async def closed(self, count: int) -> dict[str, Any]:
        """Closed loop over every prepared connection until ``count`` answers."""
        lat: list[float] = []
        statuses: collections.Counter[int] = collections.Counter()
        issued = 0
        finished = asyncio.get_running_loop().create_future()

        def on_done(conn: HttpConn, status: int) -> None:
            nonlocal issued
            t = now()
            lat.append(t - conn.t_due)
            statuses[status] += 1
            if issued < count and not conn.lost:
                issued += 1
                conn.send(self.next_request(), t)
            elif len(lat) >= count and not finished.done():
                finished.set_result(None)

        self._on_done = on_done
        for c in self.conns:
            c.on_done = on_done
        t0 = now()
        for c in self.conns[:count]:
            issued += 1
            c.send(self.next_request(), t0)
        await asyncio.wait_for(finished, self.cfg.get("timeout", 120))
        t1 = now()
        return {
            "wall_s": t1 - t0,
            "lat_ms": [round(x * 1e3, 3) for x in lat],
            "statuses": {str(k): v for k, v in statuses.items()},
        }

    async def open(self, rate: float, count: int) -> dict[str, Any]:
        """Open loop: request i is due at t0 + i / rate, sent on an idle connection."""
        lat: list[float] = []
        service: list[float] = []
        statuses: collections.Counter[int] = collections.Counter()
        idle = collections.deque(self.conns)
        backlog: collections.deque[float] = collections.deque()
        finished = asyncio.get_running_loop().create_future()
        max_backlog = 0
        lag_max = 0.0

        def on_done(conn: HttpConn, status: int) -> None:
            t = now()
            lat.append(t - conn.t_due)
            service.append(t - conn.t_sent)
            statuses[status] += 1
            if len(lat) >= count:
                if not finished.done():
                    finished.set_result(None)
                return
            if conn.lost:
                return
            if backlog:
                conn.send(self.next_request(), backlog.popleft())
            else:
                idle.append(conn)

        for c in self.conns:
            c.on_done = on_done
        t0 = now()
        issued = 0
        while issued < count:
            t = now()
            due = min(count, int((t - t0) * rate) + 1)
            while issued < due:
                t_due = t0 + issued / rate
                lag_max = max(lag_max, t - t_due)
                if idle:
                    conn = idle.popleft()
                    conn.send(self.next_request(), t_due)
                else:
                    backlog.append(t_due)
                    max_backlog = max(max_backlog, len(backlog))
                issued += 1
            next_due = t0 + issued / rate
            await asyncio.sleep(max(0.0, next_due - now()))
        await asyncio.wait_for(finished, self.cfg.get("timeout", 120))
        t1 = now()
        return {
            "wall_s": t1 - t0,
            "lat_ms": [round(x * 1e3, 3) for x in lat],
            "service_ms": [round(x * 1e3, 3) for x in service],
            "statuses": {str(k): v for k, v in statuses.items()},
            "max_backlog": max_backlog,
            "max_send_lag_ms": round(lag_max * 1e3, 3),
        }

    def close(self) -> None:
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()


# ----------------------------------------------------------------------------- raw Redis


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
                request, sid, t, policy=self.cfg["policy"], rnd=random.random()
            )
            assert script is not None, "the second call of an allocation is its script"
            out.append(
                _resp(*(str(a).encode() for a in set_args))
                + _resp(
                    b"EVALSHA",
                    script.sha.encode(),
                    str(len(keys)).encode(),
                    *(str(k).encode() for k in keys),
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
                out = await self.store.allocate(request, sid, time.time(), policy=self.cfg["policy"])
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


# ----------------------------------------------------------------------------- main


async def serve(cfg: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    worker: Any = HttpLoad(cfg) if cfg["kind"] == "http" else RawClaims(cfg)

    def answer(obj: dict[str, Any]) -> None:
        out.write(orjson.dumps(obj) + b"\n")
        out.flush()

    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = orjson.loads(line)
        try:
            if cmd["cmd"] == "prepare":
                if cfg["kind"] == "http":
                    await worker.prepare(cmd["connections"])
                else:
                    await worker.prepare()
                answer({"ok": True})
            elif cmd["cmd"] == "run":
                if cfg["kind"] == "http":
                    res = await (
                        worker.closed(cmd["count"])
                        if cmd["mode"] == "closed"
                        else worker.open(cmd["rate"], cmd["count"])
                    )
                else:
                    res = await worker.run()
                answer({"ok": True, **res})
            elif cmd["cmd"] == "quit":
                answer({"ok": True})
                break
            else:
                answer({"ok": False, "error": f"unknown command {cmd['cmd']!r}"})
        except Exception as exc:  # reported to the orchestrator, which fails the phase
            answer({"ok": False, "error": repr(exc)})
    if cfg["kind"] == "http":
        worker.close()
    else:
        await worker.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="JSON configuration from the orchestrator")
    args = p.parse_args(argv)
    _die_with_parent()
    import uvloop

    uvloop.run(serve(orjson.loads(args.config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
