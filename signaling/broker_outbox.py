"""Batches for other nodes, each sent without waiting for the reply to the one before.

The broker's writer used to await every SPUBLISH before sending the next batch, so a frame
queued just after a batch left waited a whole round trip, plus the event loop's delay in
reading that reply, before it could go; under load this was most of what crossing a node
added to a handshake. Here each Redis server that batches go to (the one server, or each
shard primary of a Redis Cluster) gets one dedicated connection, a *pipe*: batches are
written as they come and one reader matches the replies to them in order. One connection
per server keeps the order in which Redis applies them (and so delivers them), and each
batch still learns how many subscribers received it (0: its node is gone).

A pipe that fails (an error, a closed connection, no reply within the bound) fails every
batch still waiting on it and is dropped; the next batch opens a new one. On a Redis
Cluster, a batch refused with MOVED or ASK (its slot moved) is failed, never re-sent on
another connection where it could overtake the batches behind it; that, or a batch that
no subscriber heard (a primary demoted by a failover still takes SPUBLISH, and counts
only its own subscribers), has the slot map read anew before the next batch, at most once
per third of the bound. At most ``window`` batches wait on one pipe; a sender beyond that
waits for room.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AskError, MovedError

from pixelfleet.redis_timing import RoundTrips

Reply = Callable[[int | BaseException], None]
"""Called once per batch: the number of subscribers that got it, or why it failed."""

_OP = "spublish"  # the round trips' operation name, as the plain client's calls are named


class PipeBroken(ConnectionError):
    """The pipe a batch waited on failed before the batch's reply came."""


class _Pipe:
    def __init__(
        self,
        conn: AbstractConnection,
        release: Callable[[], Awaitable[None]],
        bound_s: float,
        window: int,
        round_trips: RoundTrips,
    ) -> None:
        self._conn = conn
        self._release = release
        self._bound_s = bound_s
        self._window = window
        self._round_trips = round_trips
        self._pending: deque[tuple[float, Reply]] = deque()
        self._timer: asyncio.TimerHandle | None = None  # the bound on the oldest reply
        self._room = asyncio.Event()  # fewer than ``window`` batches wait
        self._room.set()
        self.broken = False
        # MOVED/ASK, or a batch nobody heard: on a Redis Cluster the slot map may be out of
        # date (a demoted primary still takes SPUBLISH, and counts only its own subscribers).
        self.stale = False
        self._reader = asyncio.create_task(self._read(), name="sig-batch-replies")

    async def send(self, packed: list[bytes], done: Reply) -> None:
        while len(self._pending) >= self._window and not self.broken:
            self._room.clear()
            await self._room.wait()
        if self.broken:
            done(PipeBroken("the connection to Redis failed"))
            return
        self._pending.append((time.perf_counter(), done))
        self._arm(self._bound_s)
        try:
            await self._conn.send_packed_command(packed, check_health=False)
        except BaseException as exc:
            self._fail(exc)  # this batch is in ``_pending``: answered there
            raise

    async def _read(self) -> None:
        """Always reading, even with nothing due: a connection the server closed (a Redis
        restart) is found out at once, not by the next batch sent on it."""
        try:
            while True:
                try:
                    reply: Any = await self._conn.read_response(timeout=math.inf)
                except (MovedError, AskError) as exc:  # an error reply: the connection is fine
                    reply = exc
                if not self._pending:
                    raise PipeBroken(f"a reply nothing waited for: {reply!r}")
                self._answer(reply)
        except asyncio.CancelledError:
            self._fail(PipeBroken("the batch sender closed"))
            raise
        except BaseException as exc:  # noqa: BLE001 - any failure fails what waits, and the pipe
            self._fail(exc)

    def _check_overdue(self) -> None:
        """The bound on a reply: the oldest batch waited ``bound_s`` with no answer (a frozen
        Redis answers nothing and closes nothing), so the pipe is given up."""
        self._timer = None
        if self.broken or not self._pending:
            return
        waited = time.perf_counter() - self._pending[0][0]
        if waited >= self._bound_s:
            self._fail(TimeoutError(f"Redis did not answer within {self._bound_s} s"))
            self._reader.cancel()
        else:
            self._arm(self._bound_s - waited)

    def _arm(self, delay_s: float) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay_s, self._check_overdue)

    def _answer(self, reply: Any) -> None:
        sent_at, done = self._pending.popleft()
        if len(self._pending) < self._window:
            self._room.set()
        if isinstance(reply, BaseException):
            self.stale = True
            self._round_trips.error(_OP)
            done(reply)
            return
        self._round_trips.observe(_OP, time.perf_counter() - sent_at)
        if not reply:
            self.stale = True
        done(int(reply))

    def _fail(self, exc: BaseException) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.broken:
            self.broken = True
            with contextlib.suppress(RuntimeError):  # no running loop: closing at exit
                asyncio.get_running_loop().create_task(self._close_connection())
        self._room.set()
        why = exc if isinstance(exc, Exception) else PipeBroken(str(exc) or type(exc).__name__)
        while self._pending:
            _sent_at, done = self._pending.popleft()
            self._round_trips.error(_OP)
            done(why)

    async def _close_connection(self) -> None:
        with contextlib.suppress(Exception):
            await self._release()

    async def drained(self) -> None:
        while self._pending and not self.broken:
            self._room.clear()
            await self._room.wait()

    async def aclose(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self._close_connection()


class BatchSender:
    """Batches to other nodes, over pipes to the Redis servers they go to (opened on first use)."""

    def __init__(self, redis: Redis | RedisCluster, round_trips: RoundTrips, *, bound_s: float, window: int = 256):
        self._r = redis
        self._round_trips = round_trips
        self._bound_s = bound_s
        self._window = window
        self._pipes: dict[str, _Pipe] = {}  # by server name ("" for the one server)
        self._refreshed_at = -math.inf  # when the Cluster slot map was last read anew

    async def send(self, channel: str, payload: bytes, done: Reply) -> None:
        """Write one batch. Returns once it is written (or failed: ``done`` says which);
        ``done`` gets the reply later. Raises only when cancelled."""
        try:
            pipe = await self._pipe(channel)
        except Exception as exc:  # noqa: BLE001 - cannot connect: the batch fails, clearly
            self._round_trips.error(_OP)
            done(exc)
            return
        with contextlib.suppress(Exception):  # answered through ``done`` (the pipe failed)
            await pipe.send(pipe_command(channel, payload), done)

    async def _pipe(self, channel: str) -> _Pipe:
        name = self._server_of(channel)
        pipe = self._pipes.get(name)
        if pipe is not None and pipe.stale and isinstance(self._r, RedisCluster):
            pipe.stale = False
            now = time.monotonic()
            if now - self._refreshed_at >= self._bound_s / 3:  # at most once a beat
                self._refreshed_at = now
                await self._r.nodes_manager.initialize()
                name = self._server_of(channel)
                pipe = self._pipes.get(name)
        if pipe is None or pipe.broken:
            conn, release = await self._connect(channel)
            pipe = self._pipes[name] = _Pipe(conn, release, self._bound_s, self._window, self._round_trips)
        return pipe

    def _server_of(self, channel: str) -> str:
        """The name of the server that takes the channel's SPUBLISH ("" for the one server)."""
        if not isinstance(self._r, RedisCluster):
            return ""
        node = self._r.get_node_from_key(channel)
        if node is None:
            raise PipeBroken(f"no Redis Cluster node serves {channel}")
        return str(node.name)

    async def _connect(self, channel: str) -> tuple[AbstractConnection, Callable[[], Awaitable[None]]]:
        """A connection of the client's own kind (its auth, TLS, Sentinel primary lookup),
        kept for this pipe alone."""
        if isinstance(self._r, RedisCluster):
            node = self._r.get_node_from_key(channel)
            assert node is not None
            conn: AbstractConnection = node.connection_class(**node.connection_kwargs)

            async def close() -> None:
                await conn.disconnect()

        else:
            pool = self._r.connection_pool
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]

            async def close() -> None:
                await conn.disconnect()
                await pool.release(conn)

        async with asyncio.timeout(self._bound_s):
            await conn.connect()  # type: ignore[no-untyped-call]
        return conn, close

    async def aclose(self, within_s: float = 0.0) -> None:
        """Close every pipe, after waiting up to ``within_s`` for the replies still due."""
        pipes, self._pipes = list(self._pipes.values()), {}
        if pipes and within_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.drained() for p in pipes)), within_s)
        for pipe in pipes:
            await pipe.aclose()


def pipe_command(channel: str, payload: bytes) -> list[bytes]:
    """``SPUBLISH channel payload`` in RESP, as one write."""
    name = channel.encode()
    return [
        b"*3\r\n$8\r\nSPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n" % (len(name), name, len(payload)),
        payload,
        b"\r\n",
    ]
