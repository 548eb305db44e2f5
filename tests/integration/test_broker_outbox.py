"""The broker's outbox (signaling/broker_outbox.py) on real Redis servers: batches written
without waiting for replies arrive in order, each answered once; a restarted, frozen or
failed-over Redis fails what waits on it, clearly, and the next batch gets a new pipe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.exceptions import MovedError

from pixelfleet.redis_timing import RoundTrips
from pixelfleet.redis_url import split_cluster_flag
from signaling.broker_outbox import BatchSender, Reply
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

CHANNEL = "{pf:sig:X}:in"
WITHIN_S = 60.0  # a hang guard, never a timing assertion


class Replies:
    """Every batch's answer, in the order the answers came."""

    def __init__(self) -> None:
        self.got: list[tuple[int, int | BaseException]] = []

    def for_batch(self, n: int) -> Reply:
        return lambda reply: self.got.append((n, reply))

    def of(self, n: int) -> int | BaseException:
        return next(reply for i, reply in self.got if i == n)


@pytest.fixture
async def client(redis_tcp: RedisServer) -> AsyncIterator[Redis]:
    r = Redis.from_url(redis_tcp.url)
    yield r
    await r.aclose()


async def test_batches_arrive_in_order_and_each_is_answered_once(client: Redis) -> None:
    sub = client.pubsub()
    await sub.ssubscribe(CHANNEL)
    trips = RoundTrips()
    outbox = BatchSender(client, trips, bound_s=10.0, window=8)  # a small window: senders wait for room
    replies = Replies()
    n = 2000
    for i in range(n):
        await outbox.send(CHANNEL, b"%d" % i + b"x" * (i % 300), replies.for_batch(i))
    received: list[int] = []
    async with asyncio.timeout(WITHIN_S):
        while len(received) < n:
            msg = await sub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None and msg["type"] == "smessage":
                received.append(int(msg["data"].rstrip(b"x")))
    await eventually(lambda: len(replies.got) == n, "every reply", WITHIN_S)
    await outbox.aclose()
    await sub.aclose()  # type: ignore[no-untyped-call]
    assert received == list(range(n))
    assert replies.got == [(i, 1) for i in range(n)]  # in order, one subscriber each
    assert sum(trips.ops["spublish"].counts) == n and not trips.errors


async def test_a_restarted_redis_fails_the_batch_in_flight_and_the_next_gets_a_new_pipe(
    redis_tcp: RedisServer, client: Redis
) -> None:
    outbox = BatchSender(client, RoundTrips(), bound_s=5.0)
    replies = Replies()
    await outbox.send(CHANNEL, b"before", replies.for_batch(0))
    await eventually(lambda: replies.got == [(0, 0)], "an answer (nobody subscribed)", WITHIN_S)

    await redis_tcp.kill()
    await outbox.send(CHANNEL, b"while away", replies.for_batch(1))
    await eventually(lambda: len(replies.got) == 2, "the failure", WITHIN_S)
    assert isinstance(replies.of(1), (ConnectionError, OSError)) or "onnect" in str(replies.of(1))

    await redis_tcp.start()
    sub = client.pubsub()
    await sub.ssubscribe(CHANNEL)
    await outbox.send(CHANNEL, b"after", replies.for_batch(2))
    await eventually(lambda: len(replies.got) == 3, "the answer after the restart", WITHIN_S)
    assert replies.of(2) == 1  # a new connection: delivered, not failed on the stale one
    await outbox.aclose()
    await sub.aclose()  # type: ignore[no-untyped-call]


async def test_a_frozen_redis_fails_what_waits_within_the_bound_and_the_window_holds(
    redis_tcp: RedisServer, client: Redis
) -> None:
    outbox = BatchSender(client, RoundTrips(), bound_s=1.0, window=4)
    replies = Replies()
    await outbox.send(CHANNEL, b"warm", replies.for_batch(0))
    await eventually(lambda: len(replies.got) == 1, "the pipe open", WITHIN_S)

    redis_tcp.freeze()
    for i in range(1, 5):  # the window's worth is written at once
        await outbox.send(CHANNEL, b"frozen", replies.for_batch(i))
    fifth = asyncio.create_task(outbox.send(CHANNEL, b"over the window", replies.for_batch(5)))
    await asyncio.sleep(0)
    assert not fifth.done()  # waits for room
    await asyncio.wait_for(fifth, WITHIN_S)  # room came: the bound failed the pipe
    await eventually(lambda: len(replies.got) == 6, "every batch answered", WITHIN_S)
    assert all(isinstance(replies.of(i), (TimeoutError, ConnectionError)) for i in range(1, 6)), replies.got

    await redis_tcp.stop()
    await redis_tcp.start()
    await outbox.send(CHANNEL, b"after", replies.for_batch(6))
    await eventually(lambda: len(replies.got) == 7, "the answer after", WITHIN_S)
    assert replies.of(6) == 0  # answered on a new pipe (nobody subscribed)
    await outbox.aclose()


@pytest.mark.parametrize("how", ["failover", "resharded"])
async def test_after_a_failover_or_a_moved_slot_the_next_batch_goes_to_the_new_owner(
    how: str, failover_cluster: RedisCluster
) -> None:
    """A failover leaves the old primary taking SPUBLISH and counting only its own
    subscribers (0); a slot moved to another shard answers MOVED. Either way the batch is
    answered as it was, and the next goes to the slot's new owner."""
    client = ClusterClient.from_url(split_cluster_flag(failover_cluster.url)[0])
    await client.initialize()
    outbox = BatchSender(client, RoundTrips(), bound_s=0.3)  # the slot map may be read anew every 0.1 s
    replies = Replies()
    old, replicas = await asyncio.to_thread(failover_cluster.shard_of, CHANNEL)
    first = Redis(port=old)  # heard, so the pipe has no reason yet to read the slot map anew
    first_sub = first.pubsub()
    await first_sub.ssubscribe(CHANNEL)
    await outbox.send(CHANNEL, b"before", replies.for_batch(0))
    await eventually(lambda: len(replies.got) == 1, "the pipe open", WITHIN_S)
    assert replies.of(0) == 1

    if how == "failover":
        await asyncio.to_thread(failover_cluster.failover, replicas[0])
    else:
        await asyncio.to_thread(_move_slot, failover_cluster, old)
    await eventually(lambda: _moved_off(failover_cluster, old), "the new owner", WITHIN_S)
    new = (await asyncio.to_thread(failover_cluster.shard_of, CHANNEL))[0]
    listener = Redis(port=new)
    sub = listener.pubsub()
    await sub.ssubscribe(CHANNEL)

    await outbox.send(CHANNEL, b"to the old owner", replies.for_batch(1))
    await eventually(lambda: len(replies.got) == 2, "its answer", WITHIN_S)
    assert isinstance(replies.of(1), MovedError) if how == "resharded" else replies.of(1) in (0, 1), replies.got

    async def delivered_to_the_new_owner() -> bool:
        await asyncio.sleep(0.15)  # past the refresh's throttle
        n = len(replies.got)
        await outbox.send(CHANNEL, b"after", replies.for_batch(n))
        await eventually(lambda: len(replies.got) == n + 1, "the answer after", WITHIN_S)
        return replies.of(n) == 1

    await eventually(delivered_to_the_new_owner, "a batch heard on the new owner", WITHIN_S)
    heard: list[bytes] = []

    async def heard_after() -> bool:
        msg = await sub.get_message(ignore_subscribe_messages=True, timeout=0.5)  # None: a confirmation
        if msg is not None:
            heard.append(msg["data"])
        return b"after" in heard

    await eventually(heard_after, "the batch on the new owner's subscription", WITHIN_S)
    for closing in (sub, first_sub):
        await closing.aclose()  # type: ignore[no-untyped-call]
    for r in (listener, first):
        await r.aclose()
    await outbox.aclose()
    await client.aclose()


def _move_slot(cluster: RedisCluster, source: int) -> None:
    """The channel's (empty) slot handed to another shard's primary, on every primary."""
    slot = int(cluster.ask(source, "CLUSTER KEYSLOT", CHANNEL))
    target = next(p for p in cluster.procs if p != source and cluster.primary_of(p) == p)
    target_id = cluster.ask(target, "CLUSTER MYID")
    target_id = target_id.decode() if isinstance(target_id, bytes) else target_id
    primaries = {cluster.primary_of(p) for p in cluster.procs}
    for port in [target, *(p for p in primaries if p != target)]:
        cluster.ask(port, "CLUSTER SETSLOT", str(slot), "NODE", target_id)


def _moved_off(cluster: RedisCluster, old: int) -> bool:
    try:
        return cluster.shard_of(CHANNEL)[0] != old
    except Exception:  # noqa: BLE001 - the cluster may answer nothing mid-promotion
        return False
