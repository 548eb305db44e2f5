"""A node's subscription read inside its socket's read, not by a task per message.

redis-py hands each pub/sub message to the task awaiting ``get_message()``; on a busy node
that task runs only once the event loop has finished the turn that read the socket, so
every frame from another node waited a turn there (docs/benchmarks.md, "Frames straight
from the parser"). Here, once SSUBSCRIBE is sent, the subscription's connection (made by
redis-py: the client's auth, TLS, Sentinel primary or shard primary) is taken over: its
transport gets a protocol that parses replies as they arrive, with the same hiredis
parser redis-py uses, and hands each message to the broker at once. The listening task
only watches: silence, pings, the connection's loss.

The take-over itself is ``pixelfleet.redis_takeover``'s; where it cannot be made, the
broker reads through ``get_message()`` as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError

from pixelfleet.redis_takeover import TakenConnection, take_over

log = structlog.get_logger("signaling")

_PING = b"*1\r\n$4\r\nPING\r\n"


class TakenSubscription(TakenConnection):
    """The subscription's connection after the take-over (see the module's docstring)."""

    def __init__(self, handle: Callable[[bytes], None], transport: Any, reader: Any, not_enough: Any) -> None:
        super().__init__(transport, reader, not_enough)
        self._handle = handle
        loop = asyncio.get_running_loop()
        self._now = loop.time
        self.heard = loop.time()  # any reply at all: a message, a confirmation, a pong
        self.failure: BaseException | None = None
        self._failed = asyncio.Event()

    def on_reply(self, reply: Any) -> None:
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

    def on_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"the subscription's connection closed: {exc or 'by Redis'}"))

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
            self._failed.set()

    def ping(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(_PING)

    async def wait_failed(self, timeout_s: float) -> None:
        """Return after ``timeout_s``, or at once when the subscription failed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._failed.wait(), timeout_s)

    def close(self) -> None:
        self.transport.close()


def _connection_of(pubsub: Any) -> Any:
    conn = getattr(pubsub, "connection", None)  # a plain client's PubSub
    if conn is None:  # a Cluster client's: one PubSub per shard, and this one uses one shard
        shards = getattr(pubsub, "node_pubsub_mapping", None)
        if isinstance(shards, dict) and len(shards) == 1:
            conn = getattr(next(iter(shards.values())), "connection", None)
    return conn


def take_over_subscription(pubsub: Any, handle: Callable[[bytes], None]) -> TakenSubscription | None:
    """Right after SSUBSCRIBE was sent on ``pubsub`` (nothing read from it yet): its
    connection, reading into ``handle``; None where the internals are not as expected."""
    conn = _connection_of(pubsub)
    if conn is None:
        return None
    return take_over(conn, lambda transport, reader, sentinel: TakenSubscription(handle, transport, reader, sentinel))
