"""A connection redis-py made, handed over to a protocol of ours.

redis-py reads a connection from a task: a reply waits until the event loop has finished
the turn that read it, and each reply costs a coroutine chain. Where a connection is kept
for one use (a pub/sub subscription, a pipe of batches), the connection redis-py opened
(with the URL's auth, TLS, Sentinel primary or shard primary) is kept and its transport
is given a protocol that parses replies as they arrive, with redis-py's own hiredis
reader, so they read exactly as redis-py would have returned them.

This relies on redis-py's and asyncio's internals (the connection's stream reader and
writer, its parser's reader), so it is done only where they are as expected and nothing
is left unread in them; anywhere else ``take_over`` returns None and the caller reads
through redis-py as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

try:
    import hiredis
except ImportError:  # pragma: no cover - redis-py's own parser then: the caller reads through redis-py
    hiredis = None  # type: ignore[assignment]


class TakenConnection(asyncio.Protocol):
    """Replies as they arrive go to ``on_reply``; the loss to ``on_lost``. Subclasses set both."""

    def __init__(self, transport: Any, reader: Any, not_enough: Any) -> None:
        self.transport = transport
        self._reader = reader
        self._not_enough = not_enough
        self._previous = transport.get_protocol()  # told of the loss, so redis-py's own close completes
        self._writable = asyncio.Event()
        self._writable.set()

    def on_reply(self, reply: Any) -> None:
        raise NotImplementedError

    def on_lost(self, exc: Exception | None) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while (reply := reader.gets()) is not self._not_enough:
            self.on_reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        try:
            self.on_lost(exc)
        finally:
            with contextlib.suppress(Exception):
                self._previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    @property
    def can_write(self) -> bool:
        return self._writable.is_set()

    async def writable(self) -> None:
        """Until the transport takes writes again (the kernel's buffer drained)."""
        await self._writable.wait()


T = TypeVar("T", bound=TakenConnection)


def take_over(conn: Any, make: Callable[[Any, Any, Any], T]) -> T | None:
    """``conn``'s transport, read by ``make(transport, reader, not_enough)`` from now on;
    None where redis-py's internals are not as expected or it holds unparsed replies."""
    if hiredis is None:
        return None
    stream = getattr(conn, "_reader", None)
    writer = getattr(conn, "_writer", None)
    reader = getattr(getattr(conn, "_parser", None), "_reader", None)
    if not isinstance(stream, asyncio.StreamReader) or not isinstance(writer, asyncio.StreamWriter):
        return None
    buffered = getattr(stream, "_buffer", None)
    if not isinstance(buffered, bytearray) or not isinstance(reader, hiredis.Reader) or reader.has_data():
        return None
    transport: Any = writer.transport  # uvloop's transports are not asyncio.Transport subclasses
    if not all(hasattr(transport, name) for name in ("set_protocol", "is_reading", "resume_reading")):
        return None
    if transport.is_closing():
        return None
    from redis._parsers.hiredis import NOT_ENOUGH_DATA  # the sentinel redis-py's reader is made with

    taken = make(transport, reader, NOT_ENOUGH_DATA)
    early = bytes(buffered)
    buffered.clear()
    transport.set_protocol(taken)
    if not transport.is_reading():  # paused by the stream's flow control: ours has none
        transport.resume_reading()
    if early:
        taken.data_received(early)
    return taken
