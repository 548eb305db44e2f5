"""One Redis connection kept for batches written back to back, replies matched in order.

redis-py's pipeline takes a pooled connection, packs every command in Python, reads each
reply under its own timeout and hands the connection back, for every round trip; under
load that bookkeeping cost more than Redis's own work (a matchmaker replica's profile had
a fifth of its CPU in it). A *pipe* is one connection of the client's own kind (its auth,
TLS, Sentinel primary), dedicated to this use: batches are written as they come, without
waiting for the replies to the ones before, and replies are matched to batches in order.
One connection keeps the order in which Redis applies them. Where redis-py's internals
allow (``pixelfleet.redis_takeover``), the connection is taken over once made: a batch is
written to the transport at once, and replies are read in the socket's read, not by a
task a loop turn later; elsewhere redis-py writes and a task reads.

An error reply (``ResponseError``: a script's error, NOSCRIPT, MOVED) is that command's
reply, not a failure of the pipe. A pipe that fails (the connection errs or closes, or the
oldest batch has no answer within ``bound_s``: a frozen Redis answers nothing and closes
nothing) fails every batch still waiting on it and is *broken*; its owner opens another.
At most ``window`` batches wait on one pipe; a sender beyond that waits for room.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from pixelfleet.redis_takeover import TakenConnection, take_over
from pixelfleet.redis_timing import RoundTrips

Done = Callable[[list[Any] | BaseException], None]
"""Called once per batch: its replies in order (an error reply is a ``ResponseError`` in
the list), or why the batch failed as a whole."""

Release = Callable[[], Awaitable[None]]


class PipeBroken(RedisConnectionError, ConnectionError):
    """The pipe a batch waited on failed before the batch's replies came: a connection
    error both as redis-py's own are (callers map it as they map those) and as Python's."""


class _Batch:
    __slots__ = ("sent_at", "due", "replies", "done")

    def __init__(self, due: int, done: Done) -> None:
        self.sent_at = time.perf_counter()
        self.due = due
        self.replies: list[Any] = []
        self.done = done


class Pipe:
    """Batches of commands on one dedicated connection (see the module's docstring)."""

    def __init__(
        self,
        conn: AbstractConnection,
        release: Release,
        *,
        bound_s: float,
        window: int = 256,
        round_trips: RoundTrips | None = None,
        op: str = "pipe",
    ) -> None:
        self._conn = conn
        self._release = release
        self._bound_s = bound_s
        self._window = window
        self._round_trips = round_trips  # one timing per batch, under ``op``
        self._op = op
        self._pending: deque[_Batch] = deque()
        self._timer: asyncio.TimerHandle | None = None  # the bound on the oldest reply
        self._room = asyncio.Event()  # fewer than ``window`` batches wait
        self._room.set()
        self.broken = False
        # Replies read in the socket's read where the connection can be taken over
        # (pixelfleet.redis_takeover), else by a task through redis-py.
        self._taken = take_over(conn, lambda transport, reader, sentinel: _Replies(self, transport, reader, sentinel))
        self._reader = None if self._taken else asyncio.create_task(self._read(), name="redis-pipe-replies")

    @property
    def reads_in_socket(self) -> bool:
        """Whether its connection was taken over (replies read as they arrive) or redis-py
        reads it from a task (where its internals are not as ``redis_takeover`` expects)."""
        return self._taken is not None

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def send(self, packed: Sequence[bytes], replies: int, done: Done) -> None:
        """Write one batch of ``replies`` commands (already packed). Returns once written;
        ``done`` gets the replies later (or the failure, also when the write fails)."""
        while len(self._pending) >= self._window and not self.broken:
            self._room.clear()
            await self._room.wait()
        taken = self._taken
        while taken is not None and not taken.can_write and not self.broken:
            await taken.writable()  # the kernel's buffer is full: wait, then write in order
        if self.broken:
            done(PipeBroken("the connection to Redis failed"))
            return
        self._pending.append(_Batch(replies, done))  # appended and written with no wait between
        self._arm(self._bound_s)
        if taken is not None:
            if taken.transport.is_closing():
                self._fail(PipeBroken("the connection to Redis is closing"))
            else:
                taken.transport.write(b"".join(packed))
            return
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
                except ResponseError as exc:  # an error reply: the connection is fine
                    reply = exc
                self._reply(reply)
                if self.broken:
                    return
        except asyncio.CancelledError:
            self._fail(PipeBroken("the pipe closed"))
            raise
        except BaseException as exc:  # noqa: BLE001 - any failure fails what waits, and the pipe
            self._fail(exc)

    def _reply(self, reply: Any) -> None:
        """One reply, in order. A connection error in its place (LOADING, a protocol error)
        fails the pipe, as redis-py raises it; any other error reply is the call's result."""
        if self.broken:
            return
        if isinstance(reply, RedisConnectionError | ConnectionError):
            self._fail(reply)
            return
        if not self._pending:
            self._fail(PipeBroken(f"a reply nothing waited for: {reply!r}"))
            return
        batch = self._pending[0]
        batch.replies.append(reply)
        if len(batch.replies) == batch.due:
            self._answer()

    def _answer(self) -> None:
        batch = self._pending.popleft()
        if len(self._pending) < self._window:
            self._room.set()
        if self._round_trips is not None:
            self._round_trips.observe(self._op, time.perf_counter() - batch.sent_at)
        batch.done(batch.replies)

    def _check_overdue(self) -> None:
        self._timer = None
        if self.broken or not self._pending:
            return
        waited = time.perf_counter() - self._pending[0].sent_at
        if waited >= self._bound_s:
            self._fail(TimeoutError(f"Redis did not answer within {self._bound_s} s"))
            if self._reader is not None:
                self._reader.cancel()
        else:
            self._arm(self._bound_s - waited)

    def _arm(self, delay_s: float) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay_s, self._check_overdue)

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
            batch = self._pending.popleft()
            if self._round_trips is not None:
                self._round_trips.error(self._op)
            batch.done(why)

    async def _close_connection(self) -> None:
        with contextlib.suppress(Exception):
            await self._release()

    async def drained(self) -> None:
        """Wait until no batch waits for its replies (or the pipe failed)."""
        while self._pending and not self.broken:
            self._room.clear()
            await self._room.wait()

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        else:
            self._fail(PipeBroken("the pipe closed"))
        await self._close_connection()


class _Replies(TakenConnection):
    """A pipe's connection once taken over: its replies go to the pipe as they arrive."""

    def __init__(self, pipe: Pipe, transport: Any, reader: Any, sentinel: Any) -> None:
        super().__init__(transport, reader, sentinel)
        self._pipe = pipe

    def on_reply(self, reply: Any) -> None:
        self._pipe._reply(reply)  # noqa: SLF001 - the pipe's own reader

    def on_lost(self, exc: Exception | None) -> None:
        self._pipe._fail(PipeBroken(f"the connection to Redis closed: {exc or 'by Redis'}"))  # noqa: SLF001


async def borrow(client: Redis, connect_within_s: float) -> tuple[AbstractConnection, Release]:
    """A connection from a plain (or Sentinel-managed) client's pool, connected and kept
    out of the pool for a pipe; ``release`` disconnects it and gives it back."""
    pool = client.connection_pool
    conn: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]

    async def release() -> None:
        await conn.disconnect()
        await pool.release(conn)

    try:
        async with asyncio.timeout(connect_within_s):
            # Connected afresh: a pooled connection may predate a Redis restart (it would
            # fail the pipe's first batch), and Sentinel names the primary anew.
            await conn.disconnect()
            await conn.connect()  # type: ignore[no-untyped-call]
    except BaseException:
        await release()
        raise
    return conn, release


def pack_command(args: Sequence[Any]) -> bytes:
    """One command in RESP, as redis-py's encoder writes it (str as UTF-8, int as digits,
    float by ``repr``); anything else is refused as redis-py refuses it."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is str:
            raw = arg.encode()
        elif kind is bytes:
            raw = arg
        elif kind is int:
            raw = b"%d" % arg
        else:
            raw = _encode_other(arg)
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _encode_other(arg: Any) -> bytes:
    if isinstance(arg, bool):
        raise TypeError("a Redis command argument cannot be a bool (send 0/1 or a string)")
    if isinstance(arg, bytes | memoryview):
        return bytes(arg)
    if isinstance(arg, int | float):
        return repr(arg).encode()
    if isinstance(arg, str):
        return arg.encode()
    raise TypeError(f"a Redis command argument must be bytes, str, int or float, not {type(arg).__name__}")
