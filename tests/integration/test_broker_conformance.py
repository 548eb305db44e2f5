"""One conformance suite for every broker: in memory, on Redis, and on a real Redis Cluster.

The guarantees are those in ``signaling/broker.py``; the cluster-only ones (relaying,
claims, the directory, node loss) run on the distributed brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from signaling.broker import Broker
from signaling.broker_memory import MemoryBroker
from signaling.broker_redis import RedisBroker, pack, unpack
from signaling.peer_links import Address, AnyLink, Unsubscribe

pytestmark = pytest.mark.integration

WAIT = 10.0  # generous bound: never a timing assertion


class Box:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.arrived = asyncio.Event()

    def push(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.arrived.set()


class Node:
    """A stand-in for ``ws.SignalingNode``: records what its broker tells it."""

    def __init__(self) -> None:
        self.links: list[AnyLink] = []
        self.listings: dict[str, tuple[Address, bool]] = {}
        self.lost: list[str] = []
        self.cut_offs = 0
        self.undeliverable: list[tuple[Address, Address]] = []
        self.changed = asyncio.Event()
        self.linked: set[tuple[Address, Address]] = set()  # (to, origin) pairs allowed

    def _tick(self) -> None:
        self.changed.set()

    def on_link(self, link: AnyLink) -> None:
        self.links.append(link)
        self._tick()

    def accepts(self, to: Address, origin: Address) -> bool:
        return (to, origin) in self.linked

    def on_listing(self, streamer_id: str, conn: Address, streaming: bool | None) -> None:
        if streaming is None:
            self.listings.pop(streamer_id, None)
        else:
            self.listings[streamer_id] = (conn, streaming)
        self._tick()

    def on_directory(self, listings: list[tuple[str, Address, bool]]) -> None:
        self.listings = {sid: (conn, s) for sid, conn, s in listings}
        self._tick()

    def on_node_lost(self, node: str) -> None:
        self.lost.append(node)
        self._tick()

    def on_cut_off(self) -> None:
        self.cut_offs += 1
        self._tick()

    def on_undeliverable(self, origin: Address, to: Address, reason: str) -> None:
        self.undeliverable.append((origin, to))
        self._tick()

    def local_listings(self) -> list[tuple[str, Address, bool]]:
        return []

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not check():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.2)


MakeBroker = Callable[[str], Awaitable[tuple[Broker, Node]]]


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[MakeBroker]:
    kind = request.param
    url = None if kind == "memory" else request.getfixturevalue("redis_url" if kind == "redis" else "redis_cluster_url")
    made: list[Broker] = []
    prefix = f"conf{id(request)}"

    async def make(node_id: str) -> tuple[Broker, Node]:
        broker: Broker
        if url is None:
            broker = MemoryBroker(node_id)
        else:
            broker = RedisBroker.from_url(url, node_id=node_id, node_ttl_s=0.9, prefix=prefix)
        node = Node()
        await broker.start(node)
        made.append(broker)
        return broker, node

    yield make
    for broker in made:
        with contextlib.suppress(Exception):
            await broker.aclose()


async def test_local_frames_arrive_in_order_and_closed_ones_are_refused(make_broker: MakeBroker) -> None:
    broker, _ = await make_broker("a")
    box = Box()
    broker.open(Address("a/1"), box)
    for i in range(500):
        assert broker.deliver(Address("a/1"), b"%d" % i)
    assert box.frames == [b"%d" % i for i in range(500)]
    broker.close(Address("a/1"))
    assert not broker.deliver(Address("a/1"), b"late")


async def test_a_token_is_used_once(make_broker: MakeBroker) -> None:
    a, _ = await make_broker("a")
    b, _ = await make_broker("b")
    assert await a.first_use("jti-1", 4_000_000_000)
    assert not await a.first_use("jti-1", 4_000_000_000)
    if a.distributed:  # and once in the whole cluster
        assert not await b.first_use("jti-1", 4_000_000_000)
    assert await b.first_use("jti-2", 4_000_000_000)


async def test_frames_across_nodes_keep_their_order_and_only_cross_links(make_broker: MakeBroker) -> None:
    a, _ = await make_broker("a")
    if not a.distributed:
        pytest.skip("one node: nothing crosses")
    b, node_b = await make_broker("b")
    box = Box()
    b.open(Address("b/1"), box)
    node_b.linked.add((Address("b/1"), Address("a/7")))
    for i in range(2000):
        assert a.deliver(Address("b/1"), b"%d" % i, Address("a/7"))
    assert a.deliver(Address("b/1"), b"stranger", Address("a/8"))  # sent, but b/1 is not linked to a/8
    assert a.relay(Unsubscribe(to="b/1", player_id="p"))
    await node_b.until(lambda: len(node_b.links) == 1)
    assert box.frames == [b"%d" % i for i in range(2000)]  # the link came after every frame, in order
    assert node_b.links == [Unsubscribe(to="b/1", player_id="p")]


async def test_claims_are_unique_under_contention_and_every_node_sees_them(make_broker: MakeBroker) -> None:
    a, _ = await make_broker("a")
    if not a.distributed:
        pytest.skip("one node: the core claims ids itself")
    b, node_b = await make_broker("b")
    claims = [(a if i % 2 else b).claim(Address(f"{'a' if i % 2 else 'b'}/{i}"), "Cam", None, False) for i in range(12)]
    got = await asyncio.gather(*claims)
    assert sorted(got) == sorted(["Cam", *[f"Cam{i}" for i in range(1, 12)]])
    await node_b.until(
        lambda: (
            {s for s, (c, _) in node_b.listings.items() if c.startswith("a/")}
            == {sid for sid, i in zip(got, range(12), strict=True) if i % 2}
        )
    )
    renamed = await a.claim(Address("a/1"), "Other", got[1], True)
    assert renamed == "Other"
    await node_b.until(lambda: node_b.listings.get("Other") == (Address("a/1"), True) and got[1] not in node_b.listings)
    a.withdraw("Other", Address("a/1"))
    await node_b.until(lambda: "Other" not in node_b.listings)


async def test_a_dead_node_is_noticed_and_frames_for_it_are_reported(make_broker: MakeBroker) -> None:
    a, node_a = await make_broker("a")
    if not a.distributed:
        pytest.skip("one node")
    b, _ = await make_broker("b")
    assert isinstance(a, RedisBroker) and isinstance(b, RedisBroker)
    await b.claim(Address("b/1"), "OnB", None, True)
    await node_a.until(lambda: "OnB" in node_a.listings)
    for task in b._tasks:  # noqa: SLF001 - a crash: no goodbye, the beats just stop
        task.cancel()
    await node_a.until(lambda: node_a.lost == ["b"])
    await node_a.until(lambda: "OnB" not in node_a.listings)
    a.deliver(Address("b/1"), b"{}", Address("a/3"))
    await node_a.until(lambda: node_a.undeliverable == [(Address("a/3"), Address("b/1"))])


def test_batches_round_trip_and_truncation_is_refused() -> None:
    items: list[tuple[int, str, bytes]] = [(0, "n/1\x00m/2", b"{}"), (1, "n/2", b'{"op":"unsub"}'), (0, "n/3", b"")]
    assert unpack(pack(items)) == items
    with pytest.raises(ValueError, match="truncated"):
        unpack(pack(items)[:-3])
