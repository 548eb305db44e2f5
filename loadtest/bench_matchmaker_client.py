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
  With ``ends`` (the fleet at work), each allocated session then lives as a player's
  does: the signalling side reports it ``connected`` shortly after, and ``disconnected``
  after an exponential time, batched as signalling does (``POST /api/v1/sessions/events``,
  each item with the session's token; ``batch`` 0: ``POST /api/v1/sessions/{id}/events``
  each alone), on connections of their own; the matchmaker ends it after its reconnect
  grace and the simulated agent resets the slot.
- ``raw``: allocations straight on Redis (``loadtest.bench_matchmaker_raw``).

Commands: ``prepare`` (connect), ``run`` (answers when done), ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
import heapq
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import orjson

from loadtest.bench_matchmaker_raw import RawClaims

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

    __slots__ = (
        "transport",
        "buf",
        "need",
        "status",
        "t_sent",
        "t_due",
        "on_done",
        "lost",
        "busy",
        "keep",
        "body",
        "body_at",
    )

    def __init__(self, on_done: OnDone, keep: bool = False) -> None:
        self.keep = keep  # keep a 200's or 201's body (``body``): the session's ends, a batch's outcomes
        self.body = b""
        self.body_at = 0
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
            self.body_at = end + 4
        if len(buf) >= self.need:
            if self.keep and self.status in (200, 201):  # a 201's session, a batch's outcomes
                self.body = bytes(buf[self.body_at : self.need])
            del buf[: self.need]
            self.need = -1
            self.busy = False
            self.on_done(self, self.status)


class SessionEnds:
    """The signalling side of allocated sessions: ``connected`` after ``connect_s``,
    ``disconnected`` after an exponential time of mean ``mean_s`` (the matchmaker then
    ends the session after its reconnect grace).

    ``batch`` > 0 (the default, as signalling reports): each connection is one signalling
    node's reporter (``signaling.session_reports.HttpReporter``), and each session reports
    through one of them. As there, a report that finds its reporter idle waits ``linger_s``
    for others, then they go together in one ``POST /api/v1/sessions/events`` (at once when
    ``batch`` wait), one request in flight; what queued meanwhile waits ``linger_s`` from the
    answer. So one session's events keep their order. Times are kept to a 5 ms tick.
    ``batch`` 0: each event alone on the single route (``POST /api/v1/sessions/{id}/events``),
    on any idle connection."""

    def __init__(self, cfg: dict[str, Any], seed: int) -> None:
        self.cfg = cfg
        self.rnd = random.Random(seed)
        self.batch: int = cfg.get("batch", 0)
        self.linger_s: float = cfg.get("linger_s", 0.0)
        self.due: list[tuple[float, int, int, bytes]] = []  # (time, tie-break, lane, request or item)
        self.backlog: collections.deque[bytes] = collections.deque()
        self.idle: collections.deque[HttpConn] = collections.deque()
        self.lanes: list[tuple[HttpConn, collections.deque[bytes]]] = []  # batch: one reporter per connection
        self.ready_at: dict[HttpConn, float] = {}  # batch: when a reporter's lingering ends
        self.in_flight: dict[HttpConn, int] = {}  # batch: items of the request a connection awaits
        self.n = 0
        self.sent = 0
        self.requests = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.task: asyncio.Task[None] | None = None

    async def prepare(self, ports: list[int]) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.cfg["connections"]):
            _, conn = await loop.create_connection(
                lambda: HttpConn(self._done, keep=self.batch > 0), "127.0.0.1", ports[i % len(ports)]
            )
            self.idle.append(conn)
            self.lanes.append((conn, collections.deque()))
        self.task = asyncio.create_task(self._pump())

    @staticmethod
    def _event(session_id: str, token: str, event: bytes) -> bytes:
        body = b'{"event":"' + event + b'"}'
        return (
            b"POST /api/v1/sessions/"
            + session_id.encode()
            + b"/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + token.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

    @staticmethod
    def _item(session_id: str, token: str, event: bytes) -> bytes:
        return (
            b'{"session_id":"' + session_id.encode() + b'","token":"' + token.encode() + b'","event":"' + event + b'"}'
        )

    @staticmethod
    def _batch_request(items: list[bytes]) -> bytes:
        body = b'{"events":[' + b",".join(items) + b"]}"
        return (
            b"POST /api/v1/sessions/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    def schedule(self, assigned: bytes) -> None:
        """A 201's body: the session's id and token."""
        d = orjson.loads(assigned)
        sid, token = d["session_id"], d["token"]
        t = now() + self.cfg["connect_s"]
        end = t + self.rnd.expovariate(1.0 / self.cfg["mean_s"])
        self.n += 2
        make = self._item if self.batch else self._event
        lane = (self.n // 2) % max(1, len(self.lanes))
        heapq.heappush(self.due, (t, self.n - 1, lane, make(sid, token, b"connected")))
        heapq.heappush(self.due, (end, self.n, lane, make(sid, token, b"disconnected")))

    def _send(self, request: bytes) -> None:
        if self.idle:
            self.sent += 1
            self.requests += 1
            self.idle.popleft().send(request, now())
        else:
            self.backlog.append(request)

    def _send_batch(self, conn: HttpConn, queue: collections.deque[bytes]) -> None:
        items: list[bytes] = []
        size = 0
        while queue and len(items) < self.batch and size + len(queue[0]) < 60_000:  # the 64 KiB body limit
            size += len(queue[0]) + 1
            items.append(queue.popleft())
        self.in_flight[conn] = len(items)
        self.sent += len(items)
        self.requests += 1
        conn.send(self._batch_request(items), now())

    def _done(self, conn: HttpConn, status: int) -> None:
        if self.batch:
            items = self.in_flight.pop(conn, 0)
            if status == 200:
                for r in orjson.loads(conn.body)["results"]:
                    self.statuses[r["status"]] += 1
            else:
                self.statuses[status] += items
            self.ready_at[conn] = now() + self.linger_s  # what queued meanwhile lingers from here
            return  # a later tick sends what this connection's reporter has queued
        self.statuses[status] += 1
        if conn.lost:
            return
        if self.backlog:
            self.sent += 1
            self.requests += 1
            conn.send(self.backlog.popleft(), now())
        else:
            self.idle.append(conn)

    async def _pump(self) -> None:
        while True:
            t = now()
            while self.due and self.due[0][0] <= t:
                _, _, lane, request = heapq.heappop(self.due)
                if self.batch:
                    conn, queue = self.lanes[lane]
                    if not queue and not conn.busy:
                        self.ready_at[conn] = t + self.linger_s
                    queue.append(request)
                else:
                    self._send(request)
            if self.batch:
                for conn, queue in self.lanes:
                    if queue and not conn.busy and not conn.lost:
                        if len(queue) >= self.batch or t >= self.ready_at.get(conn, t):
                            self._send_batch(conn, queue)
            await asyncio.sleep(0.005)

    def take(self) -> dict[str, Any]:
        out = {
            "sent": self.sent,
            "requests": self.requests,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "pending": len(self.due) + sum(len(q) for _, q in self.lanes),
        }
        self.sent = self.requests = 0
        self.statuses.clear()
        return out

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for c, _ in self.lanes:
            if c.transport is not None:
                c.transport.close()


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
        ends = cfg.get("ends")
        self.ends = SessionEnds(ends, cfg.get("app_offset", 0)) if ends else None

    def _ended(self) -> dict[str, Any]:
        return {"ends": self.ends.take()} if self.ends is not None else {}

    def next_request(self) -> bytes:
        r = self.requests[self.app_index % len(self.requests)]
        self.app_index += self.app_step
        return r

    async def prepare(self, connections: int) -> None:
        loop = asyncio.get_running_loop()
        ports = self.cfg["ports"]
        for i in range(connections):
            _, conn = await loop.create_connection(
                lambda: HttpConn(self._on_done, keep=self.ends is not None), "127.0.0.1", ports[i % len(ports)]
            )
            self.conns.append(conn)
        if self.ends is not None:
            await self.ends.prepare(ports)

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
            if status == 201 and self.ends is not None:
                self.ends.schedule(conn.body)
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
            **self._ended(),
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
            if status == 201 and self.ends is not None:
                self.ends.schedule(conn.body)
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
            **self._ended(),
        }

    def close(self) -> None:
        if self.ends is not None:
            self.ends.close()
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()


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
