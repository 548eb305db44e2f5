"""A node's subscription read inside its socket's read, not by a task per message.

redis-py hands each pub/sub message to the task awaiting ``get_message()``; on a busy node
that task runs only once the event loop has finished the turn that read the socket, so
every frame from another node waited a turn there (docs/benchmarks.md, "Frames straight
from the parser"). Here, once SSUBSCRIBE is sent, the subscription's connection (made by
redis-py: the client's auth, TLS, Sentinel primary or shard primary) is taken over: its
transport gets a protocol that parses replies as they arrive, with the same hiredis
parser redis-py uses, and hands each message to the broker at once. The listening task
only watches: silence, pings, the connection's loss.

This uses redis-py's and asyncio's internals (the connection's stream reader and writer),
so it is done only where they are as expected; anywhere else ``take_over`` returns None
and the broker reads through ``get_message()`` as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError

try:
    import hiredis
except ImportError:  # pragma: no cover - redis-py's own parser then: get_message() as before
    hiredis = None  # type: ignore[assignment]

log = structlog.get_logger("signaling")

_PING = b"*1\r\n$4\r\nPING\r\n"


class TakenSubscription(asyncio.Protocol):
    """The subscription's connection after the take-over (see the module's docstring)."""

    def __init__(self, handle: Callable[[bytes], None], transport: asyncio.Transport) -> None:
        self._handle = handle
        self._previous = transport.get_protocol()  # told of the loss, so redis-py's own close completes
        self._reader = hiredis.Reader()
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._now = loop.time
        self.heard = loop.time()  # any reply at all: a message, a confirmation, a pong
        self.failure: BaseException | None = None
        self._failed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            self.heard = self._now()
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"smessage":
                try:
                    self._handle(reply[2])
                except Exception:  # noqa: BLE001 - one bad message must not end the subscription
                    log.exception("subscription_message_failed")
            elif isinstance(reply, Exception):
                self._fail(RedisConnectionError(f"the subscription was refused: {reply}"))
            elif isinstance(reply, list) and reply and reply[0] == b"sunsubscribe":
                self._fail(RedisConnectionError("Redis ended the subscription (its slot moved)"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"the subscription's connection closed: {exc or 'by Redis'}"))
        with contextlib.suppress(Exception):
            self._previous.connection_lost(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            self._failed.set()

    def ping(self) -> None:
        if not self._transport.is_closing():
            self._transport.write(_PING)

    async def wait_failed(self, timeout_s: float) -> None:
        """Return after ``timeout_s``, or at once when the subscription failed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._failed.wait(), timeout_s)

    def close(self) -> None:
        self._transport.close()


def _connection_of(pubsub: Any) -> Any:
    conn = getattr(pubsub, "connection", None)  # a plain client's PubSub
    if conn is None:  # a Cluster client's: one PubSub per shard, and this one uses one shard
        shards = getattr(pubsub, "node_pubsub_mapping", None)
        if isinstance(shards, dict) and len(shards) == 1:
            conn = getattr(next(iter(shards.values())), "connection", None)
    return conn


def take_over(pubsub: Any, handle: Callable[[bytes], None]) -> TakenSubscription | None:
    """Right after SSUBSCRIBE was sent on ``pubsub`` (nothing read from it yet): its
    connection, reading into ``handle``; None where the internals are not as expected."""
    if hiredis is None:
        return None
    conn = _connection_of(pubsub)
    reader = getattr(conn, "_reader", None)
    writer = getattr(conn, "_writer", None)
    buffered = getattr(reader, "_buffer", None)
    if not isinstance(reader, asyncio.StreamReader) or not isinstance(writer, asyncio.StreamWriter):
        return None
    if not isinstance(buffered, bytearray):
        return None
    transport: Any = writer.transport  # uvloop's transports are not asyncio.Transport subclasses
    if not all(hasattr(transport, name) for name in ("set_protocol", "is_reading", "resume_reading")):
        return None
    if transport.is_closing():
        return None
    taken = TakenSubscription(handle, transport)
    early = bytes(buffered)
    buffered.clear()
    transport.set_protocol(taken)
    if not transport.is_reading():  # paused by the stream's flow control: ours has none
        transport.resume_reading()
    if early:
        taken.data_received(early)
    return taken
