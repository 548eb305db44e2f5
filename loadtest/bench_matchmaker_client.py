"""Load-generator process for the matchmaker benchmark (one of several).

``loadtest.bench_matchmaker`` starts it and drives it with one JSON command per line on
stdin; each answer is one JSON line on stdout. A generator must cost far less CPU per
allocation than what it loads, so it is lean:

- ``http``: a minimal HTTP/1.1 keep-alive client on a raw asyncio ``Protocol`` (uvloop),
  one request in flight per connection, requests pre-encoded once per app; a response
  is parsed only as far as its status line and ``Content-Length``.
  ``closed``: every connection sends its next request as soon as the last one is
  answered, until ``count`` requests are done. ``open``: requests are due at a fixed
  rate (open loop: a slow answer does not delay the next request); a request that finds
  no idle connection waits in a backlog, and its latency then counts from when it was
  due.
- ``raw``: the matchmaker's claim (``RedisStore.claim_slot``: ``SET`` of the session's
  tenant lookup + ``EVALSHA`` of the claim script, with the same keys and arguments)
  sent straight to Redis. ``script`` mode hand-packs RESP and pipelines ``batch`` claims
  per round trip on one Unix-socket or TCP connection (the script's ceiling: Redis,
  not the client, should saturate); ``store`` mode calls ``RedisStore.claim_slot`` from
  ``concurrency`` tasks (the store's own client path).

Commands: ``prepare`` (connect), ``run`` (answers when done), ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import signal
import sys
import time
from typing import Any
from urllib.parse import urlparse

import orjson

now = time.perf_counter


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# ----------------------------------------------------------------------------- HTTP


class HttpConn(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    __slots__ = ("transport", "buf", "need", "status", "t_sent", "t_due", "on_done", "lost", "busy")

    def __init__(self, on_done: Any) -> None:
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
        self.transport = transport  # type: ignore[assignment]

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
            length = int(buf[at + 16:buf.find(b"\r\n", at)]) if at >= 0 else 0
            self.need = end + 4 + length
        if len(buf) >= self.need:
            del buf[:self.need]
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
                + token.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.app_index: int = cfg.get("app_offset", 0)
        self.app_step: int = cfg.get("app_step", 1)

    def next_request(self) -> bytes:
        r = self.requests[self.app_index % len(self.requests)]
        self.app_index += self.app_step
        return r

    async def prepare(self, connections: int) -> None:
        loop = asyncio.get_running_loop()
        ports = self.cfg["ports"]
        for i in range(connections):
            _, conn = await loop.create_connection(lambda: HttpConn(self._on_done), "127.0.0.1",
                                                   ports[i % len(ports)])
            self.conns.append(conn)

    def _on_done(self, conn: HttpConn, status: int) -> None:  # replaced per run
        raise AssertionError("no run in progress")

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

        self._on_done = on_done  # type: ignore[method-assign]
        for c in self.conns:
            c.on_done = on_done
        t0 = now()
        for c in self.conns[:count]:
            issued += 1
            c.send(self.next_request(), t0)
        await asyncio.wait_for(finished, self.cfg.get("timeout", 120))
        t1 = now()
        return {"wall_s": t1 - t0, "lat_ms": [round(x * 1e3, 3) for x in lat],
                "statuses": {str(k): v for k, v in statuses.items()}}

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
        return {"wall_s": t1 - t0, "lat_ms": [round(x * 1e3, 3) for x in lat],
                "service_ms": [round(x * 1e3, 3) for x in service],
                "statuses": {str(k): v for k, v in statuses.items()}, "max_backlog": max_backlog,
                "max_send_lag_ms": round(lag_max * 1e3, 3)}

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


def pool_slots(apps: list[str], slots_per_app: int, host_slots: int) -> list[tuple[str, str]]:
    return [(f"{host}/{i}", app) for host, app, n in pool_layout(apps, slots_per_app, host_slots) for i in range(n)]


def _resp(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out += (b"$%d\r\n" % len(a), a, b"\r\n")
    return b"".join(out)


class RespConn(asyncio.Protocol):
    """Counts replies; every reply the claim path gets is one line (+OK, :0, :1, -ERR)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.ones = 0
        self.zeros = 0
        self.errors: list[bytes] = []
        self.want = 0
        self.waiter: asyncio.Future[None] | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.tail:
            data = self.tail + data
        cut = data.rfind(b"\r\n") + 2
        self.tail = data[cut:]
        block = data[:cut]
        self.received += block.count(b"\r\n")
        self.ones += block.count(b":1\r\n")
        self.zeros += block.count(b":0\r\n")
        if b"-" in block and len(self.errors) < 3:
            self.errors += [line for line in block.split(b"\r\n") if line.startswith(b"-")][:3]
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
    """Claims the slots ``slot_ids`` (all READY, app ``app``, tenant ``tenant``) directly."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from matchmaker.store_redis import RedisStore

        self.cfg = cfg
        self.store = RedisStore.from_url(cfg["redis_url"], prefix=cfg["prefix"])
        pool = pool_slots(cfg["apps"], cfg["slots_per_app"], cfg["host_slots"])[:cfg["claims"]]
        self.slots = pool[cfg["index"]::cfg["procs"]]  # each process claims its own slots

    def _session(self, slot: str, app: str, sid: str, t: float) -> Any:
        from matchmaker.models import Session

        host = slot.rsplit("/", 1)[0]
        return Session(session_id=sid, tenant=self.cfg["tenant"], app=app, slot_id=slot, host_id=host,
                       streamer_id=slot.replace("/", "-"), signaling_url="ws://127.0.0.1:1", region="eu",
                       created_at=t, last_activity=t)

    def _claims(self) -> list[bytes]:
        """Per claim, exactly what ``RedisStore.claim_slot`` sends (no ticket)."""
        from matchmaker.store_redis import _CLAIM, FINISHED_TICKET_TTL_S, _enc

        st = self.store
        sha = st._claim.sha.encode()  # noqa: SLF001 - the registered claim script itself
        assert st._claim.script == _CLAIM  # noqa: SLF001
        tenant = self.cfg["tenant"]
        tag = st._tag(tenant)  # noqa: SLF001
        t = time.time()
        out = []
        for n, (slot, app) in enumerate(self.slots):
            sid = f"s-raw{self.cfg['index']}-{n}"
            keys = [f"{tag}:slots", f"{tag}:hosts", f"{tag}:sessions", f"{tag}:clients", f"{tag}:ready:{app}",
                    f"{tag}:ticket:", f"{tag}:queue:{app}", f"{tag}:queues",
                    f"{tag}:qclients:{app}"]
            args: list[bytes] = [slot.encode(), sid.encode(), _enc.encode(self._session(slot, app, sid, t)), b"",
                                 app.encode(), b"0", b"", str(FINISHED_TICKET_TTL_S).encode()]
            out.append(_resp(b"SET", st._sid_key(sid).encode(), tenant.encode())  # noqa: SLF001
                       + _resp(b"EVALSHA", sha, str(len(keys)).encode(), *(k.encode() for k in keys), *args))
        return out

    async def prepare(self) -> None:
        await self.store._r.script_load(self.store._claim.script)  # noqa: SLF001
        if self.cfg["mode"] == "script":
            self.packed = self._claims()
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
        batches = [(b"".join(packed[i:i + batch]), 2 * len(packed[i:i + batch])) for i in range(0, len(packed), batch)]
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
        return {"wall_s": t1 - t0, "claims": len(packed), "claimed": conn.ones, "refused": conn.zeros,
                "errors": [e.decode(errors="replace") for e in conn.errors[:3]],
                "batch_ms": [round(x * 1e3, 3) for x in lat]}

    async def _store(self) -> dict[str, Any]:
        slots = self.slots
        conc = self.cfg.get("concurrency", 32)
        t = time.time()
        sessions = [self._session(slot, app, f"s-rst{self.cfg['index']}-{n}", t)
                    for n, (slot, app) in enumerate(slots)]
        lat: list[float] = []
        results = collections.Counter[bool]()

        async def worker(k: int) -> None:
            for n in range(k, len(sessions), conc):
                s = sessions[n]
                t1 = now()
                results[await self.store.claim_slot(s.slot_id, s)] += 1
                lat.append(now() - t1)

        t0 = now()
        await asyncio.gather(*(worker(k) for k in range(conc)))
        t1 = now()
        return {"wall_s": t1 - t0, "claims": len(sessions), "claimed": results[True], "refused": results[False],
                "errors": [], "lat_ms": [round(x * 1e3, 3) for x in lat]}

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
                    res = await (worker.closed(cmd["count"]) if cmd["mode"] == "closed"
                                 else worker.open(cmd["rate"], cmd["count"]))
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
