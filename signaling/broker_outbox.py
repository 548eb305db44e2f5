"""Batches for other nodes, each sent without waiting for the reply to the one before.

The broker's writer used to await every SPUBLISH before sending the next batch, so a frame
queued just after a batch left waited a whole round trip, plus the event loop's delay in
reading that reply, before it could go; under load this was most of what crossing a node
added to a handshake. Here each Redis server that batches go to (the one server, or each
shard primary of a Redis Cluster) gets one dedicated connection, a *pipe*
(``pixelfleet.redis_pipe``): batches are
written as they come and one reader matches the replies to them in order. One connection
per server keeps the order in which Redis applies them (and so delivers them), and each
batch still learns how many subscribers received it (0: its node is gone).

A pipe that fails (an error, a closed connection, no reply within the bound) fails every
batch still waiting on it and is dropped; the next batch opens a new one. On a Redis
Cluster, a batch refused with MOVED or ASK (its slot moved) is failed, never re-sent on
another connection where it could overtake the batches behind it; that, or a batch that
no subscriber heard (a primary demoted by a failover still takes SPUBLISH, and counts
only its own subscribers), has the slot map read anew before the next batch
(``pixelfleet.redis_node_pipes``). At most ``window`` batches wait on one pipe; a sender beyond that
waits for room.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, MovedError

from pixelfleet.redis_node_pipes import NodePipes
from pixelfleet.redis_timing import RoundTrips

Reply = Callable[[int | BaseException], None]
"""Called once per batch: the number of subscribers that got it, or why it failed."""

_OP = "spublish"  # the round trips' operation name, as the plain client's calls are named


class BatchSender:
    """Batches to other nodes, over pipes to the Redis servers they go to (opened on first use)."""

    def __init__(self, redis: Redis | RedisCluster, round_trips: RoundTrips, *, bound_s: float, window: int = 256):
        self._round_trips = round_trips
        self._pipes = NodePipes(redis, bound_s=bound_s, window=window, round_trips=round_trips, op=_OP)

    async def send(self, channel: str, payload: bytes, done: Reply) -> None:
        """Write one batch. Returns once it is written (or failed: ``done`` says which);
        ``done`` gets the reply later. Raises only when cancelled."""
        try:
            name, pipe = await self._pipes.get(channel)
        except Exception as exc:  # noqa: BLE001 - cannot connect: the batch fails, clearly
            self._round_trips.error(_OP)
            done(exc)
            return

        def answered(replies: list[Any] | BaseException) -> None:
            reply = replies if isinstance(replies, BaseException) else replies[0]
            if isinstance(reply, BaseException):
                if isinstance(reply, MovedError | AskError):
                    self._pipes.stale(name)
                    self._round_trips.error(_OP)
                done(reply)
                return
            if not reply:  # nobody heard it: its node is gone, or the slot map is old
                self._pipes.stale(name)
            done(int(reply))

        with contextlib.suppress(Exception):  # answered through ``answered`` (the pipe failed)
            await pipe.send(pipe_command(channel, payload), 1, answered)

    async def aclose(self, within_s: float = 0.0) -> None:
        """Close every pipe, after waiting up to ``within_s`` for the replies still due."""
        await self._pipes.aclose(within_s)


def pipe_command(channel: str, payload: bytes) -> list[bytes]:
    """``SPUBLISH channel payload`` in RESP, as one write."""
    name = channel.encode()
    return [
        b"*3\r\n$8\r\nSPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n" % (len(name), name, len(payload)),
        payload,
        b"\r\n",
    ]
