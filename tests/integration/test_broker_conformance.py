"""One conformance suite for every broker: in memory, on Redis, and on a real Redis Cluster.

The guarantees are those in ``signaling/broker.py``; the cluster-only ones (relaying,
claims, the directory, node loss) run on the distributed brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from signaling.broker import Broker, NodeCounts
from signaling.broker_memory import MemoryBroker
from signaling.broker_records import pack, unpack
from signaling.broker_redis import RedisBroker
from signaling.config import Settings
from signaling.peer_links import Address, AnyLink, DirectoryEntry, Holder, Unsubscribe
from signaling.protocol import Action, Credential, Role, SignalingCore
from signaling.ws import SignalingNode

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
        self.holders: dict[str, Holder | None] = {}
        self.lost: list[str] = []
        self.cut_offs = 0
        self.undeliverable: list[tuple[Address, Address]] = []
        self.changed = asyncio.Event()
        self.linked: set[tuple[Address, Address]] = set()  # (to, origin) pairs allowed
        self.counts = NodeCounts()

    def _tick(self) -> None:
        self.changed.set()

    def on_link(self, link: AnyLink) -> None:
        self.links.append(link)
        self._tick()

    def accepts(self, to: Address, origin: Address) -> bool:
        return (to, origin) in self.linked

    def on_listing(self, streamer_id: str, conn: Address, streaming: bool | None, holder: Holder | None = None) -> None:
        if streaming is None:
            self.listings.pop(streamer_id, None)
            self.holders.pop(streamer_id, None)
        else:
            self.listings[streamer_id] = (conn, streaming)
            self.holders[streamer_id] = holder
        self._tick()

    def on_directory(self, listings: list[DirectoryEntry]) -> None:
        self.listings = {e.streamer_id: (e.address, e.streaming) for e in listings}
        self.holders = {e.streamer_id: e.holder for e in listings}
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

    def local_listings(self) -> list[DirectoryEntry]:
        return []

    def local_counts(self) -> NodeCounts:
        return self.counts

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
        broker = _broker(url, node_id, prefix)
        node = Node()
        await broker.start(node)
        made.append(broker)
        return broker, node

    yield make
    for broker in made:
        with contextlib.suppress(Exception):
            await broker.aclose()


def _broker(url: str | None, node_id: str, prefix: str) -> Broker:
    if url is None:
        return MemoryBroker(node_id)
    return RedisBroker.from_url(url, node_id=node_id, node_ttl_s=0.9, prefix=prefix)


MakeNode = Callable[[str], Awaitable[SignalingNode]]


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def make_node(request: pytest.FixtureRequest) -> AsyncIterator[MakeNode]:
    """A real ``SignalingNode`` (core and broker, no sockets) per call, on one broker kind."""
    kind = request.param
    url = None if kind == "memory" else request.getfixturevalue("redis_url" if kind == "redis" else "redis_cluster_url")
    made: list[Broker] = []
    prefix = f"node{id(request)}"

    async def make(node_id: str) -> SignalingNode:
        broker = _broker(url, node_id, prefix)
        core = SignalingCore(node=node_id, cluster=broker.distributed, player_id_prefix=f"P{node_id}-")
        node = SignalingNode(Settings(), core, broker)
        await broker.start(node)
        made.append(broker)
        return node

    yield make
    for broker in made:
        with contextlib.suppress(Exception):
            await broker.aclose()


async def drive(node: SignalingNode, actions: list[Action]) -> None:
    """Carry out a core's actions as ``SignalingNode`` does for a socket, claims included."""
    for c in node.run(actions):
        peer = node.core.peer(c.conn)
        committed = await node.broker.claim(c.conn, c.wanted, peer.streamer_id, peer.streaming, c.exact, c.holder)
        await drive(node, node.core.claimed(c.conn, committed))


async def identified(node: SignalingNode, role: Role, streamer_id: str, credential: Credential | None) -> Address:
    conn, actions = node.core.connect(role, credential=credential)
    await drive(node, actions)
    await drive(node, node.core.receive(conn, {"type": "endpointId", "id": streamer_id}))
    assert node.core.peer(conn).streamer_id == streamer_id
    return conn


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not check():
            await asyncio.sleep(0.02)


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
    await _stop(b._tasks)  # noqa: SLF001 - a crash: no goodbye, the beats just stop
    await node_a.until(lambda: node_a.lost == ["b"])
    await node_a.until(lambda: "OnB" not in node_a.listings)
    a.deliver(Address("b/1"), b"{}", Address("a/3"))
    await node_a.until(lambda: node_a.undeliverable == [(Address("a/3"), Address("b/1"))])


async def test_every_live_nodes_counts_are_seen_and_a_gone_nodes_are_dropped(make_broker: MakeBroker) -> None:
    a, node_a = await make_broker("a")
    node_a.counts = NodeCounts(2, 1, {"CamA": 1})
    assert a.node_counts() == {"a": NodeCounts(2, 1, {"CamA": 1})}  # its own, as of now
    if not isinstance(a, RedisBroker):
        return
    b, node_b = await make_broker("b")
    c, node_c = await make_broker("c")
    node_b.counts, node_c.counts = NodeCounts(3, 2, {"CamB": 3, "Idle": 0}), NodeCounts(1, 0, {})
    await node_a.until(lambda: a.node_counts().get("b") == node_b.counts)
    await node_a.until(lambda: a.node_counts().get("c") == node_c.counts)
    assert b.node_counts()["a"] == node_a.counts
    redis, counts = a._r, a._k_counts  # noqa: SLF001
    await c.aclose()  # leaving: its record goes at once
    assert not await redis.hexists(counts, "c")
    assert isinstance(b, RedisBroker)
    await _stop(b._tasks)  # noqa: SLF001 - a crash: no goodbye
    await node_a.until(lambda: "b" in node_a.lost)
    assert set(a.node_counts()) == {"a"}
    assert await redis.hkeys(counts) == [b"a"]


def test_batches_round_trip_and_truncation_is_refused() -> None:
    items: list[tuple[int, str, bytes]] = [(0, "n/1\x00m/2", b"{}"), (1, "n/2", b'{"op":"unsub"}'), (0, "n/3", b"")]
    assert unpack(pack(items)) == items
    with pytest.raises(ValueError, match="truncated"):
        unpack(pack(items)[:-3])


# --- the holder's credential in the directory (issue 11) -----------------------------------


def holder_of(node: SignalingNode, streamer_id: str) -> tuple[str | None, str | None] | None:
    """What a node's view says of an id's holder: (credential id, tenant); None: not listed."""
    listing = node.core.listing(streamer_id)
    return None if listing is None else (listing.credential_id, listing.tenant)


def streaming(node: SignalingNode, streamer_id: str) -> bool:
    listing = node.core.listing(streamer_id)
    return listing is not None and listing.streaming


def sfu_sees(node: SignalingNode, sfu: Address) -> set[str]:
    return set(node.core.listed_streamer_ids(node.core.peer(sfu)))


async def test_every_nodes_view_lists_the_holders_credential_and_tenant(make_node: MakeNode) -> None:
    """A streamer's credential id and tenant are in every node's view of the directory, so
    listings answer the same wherever the streamer is; one node (memory) is its own view."""
    a = await make_node("a")
    far = await make_node("b") if a.broker.distributed else a  # the view of another node
    conn = await identified(a, Role.STREAMER, "cam-x", Credential("cam-x", "acme", "jti-x", 4_000_000_000))
    await identified(a, Role.STREAMER, "cam-open", None)
    await identified(a, Role.SFU, "sfu-1", Credential("sfu-1", "acme", "jti-s", 4_000_000_000))
    for view in {a, far}:
        # Streaming is listed by an announce that nobody waits for: it may come after sfu-1's claim.
        await until(lambda v=view: holder_of(v, "sfu-1") is not None and streaming(v, "cam-x"))  # type: ignore[misc]
        assert holder_of(view, "cam-x") == ("jti-x", "acme")
        assert holder_of(view, "cam-open") == (None, None)
        listing = view.core.listing("cam-x")
        assert listing is not None and listing.address == conn and listing.streaming
    # An SFU on the far node lists its own tenant's streamers there, as on one node.
    ours = await identified(far, Role.SFU, "sfu-3", Credential("sfu-3", "acme", "jti-3", 4_000_000_000))
    theirs = await identified(far, Role.SFU, "sfu-2", Credential("sfu-2", "other", "jti-o", 4_000_000_000))
    assert sfu_sees(far, ours) == {"cam-x", "sfu-1", "sfu-3"}
    assert sfu_sees(far, theirs) == {"sfu-2"}
    # The id's next holder, without a credential, is never listed with the old one's.
    await drive(a, a.core.disconnect(conn))
    await until(lambda: holder_of(far, "cam-x") is None)
    await identified(a, Role.STREAMER, "cam-x", None)
    for view in {a, far}:
        await until(lambda v=view: holder_of(v, "cam-x") is not None)  # type: ignore[misc]
        assert holder_of(view, "cam-x") == (None, None)


async def test_the_holder_travels_with_claims_and_reloads_and_an_older_nodes_entry_is_unknown(
    make_broker: MakeBroker,
) -> None:
    a, _ = await make_broker("a")
    if not isinstance(a, RedisBroker):
        pytest.skip("one node: no directory to share (the core lists its own streamers' holders)")
    b, node_b = await make_broker("b")
    redis, holders = a._r, a._k_holders  # noqa: SLF001 - what an older node writes, and what is left
    acme = Holder("jti-1", "acme")
    assert await a.claim(Address("a/1"), "cam", None, True, exact=True, holder=acme) == "cam"
    await node_b.until(lambda: node_b.holders.get("cam") == acme)
    # The entry keeps the one format older nodes parse (everything before the last '|' is the address).
    assert await redis.hget(a._k_dir, "cam") == b"a/1|1"  # noqa: SLF001
    c, node_c = await make_broker("c")  # a node joining now reloads the holder with the entry
    await node_c.until(lambda: node_c.holders.get("cam") == acme)
    a.announce("cam", Address("a/1"), False, acme)  # a streaming change keeps it
    await node_b.until(lambda: node_b.listings.get("cam") == (Address("a/1"), False))
    assert node_b.holders["cam"] == acme
    # An older node lists an id: no holder in its entry or event, so no credential is known.
    await redis.hset(a._k_dir, "old-cam", "z/1|1")  # noqa: SLF001
    await redis.spublish(a._events_channel, orjson.dumps(["+", "old-cam", "z/1", "1"]))  # noqa: SLF001
    await node_b.until(lambda: "old-cam" in node_b.listings)
    assert node_b.holders["old-cam"] is None
    # A holder naming another address is stale (an older node took the id over): ignored.
    await redis.hset(holders, "old-cam", orjson.dumps(["q/9", "jti-stale", "acme"]))
    assert isinstance(c, RedisBroker)
    await c._reload_directory()  # noqa: SLF001 - what any reconnection does
    assert node_c.holders == {"cam": acme, "old-cam": None}
    a.withdraw("cam", Address("a/1"))  # the holder leaves with the id
    await node_b.until(lambda: "cam" not in node_b.listings)
    assert not await redis.hexists(holders, "cam")


async def test_a_dead_nodes_holders_and_stale_ones_are_reaped(make_broker: MakeBroker) -> None:
    a, node_a = await make_broker("a")
    if not isinstance(a, RedisBroker):
        pytest.skip("one node")
    b, _ = await make_broker("b")
    assert isinstance(b, RedisBroker)
    redis, holders = a._r, a._k_holders  # noqa: SLF001
    await b.claim(Address("b/1"), "OnB", None, True, exact=True, holder=Holder("jti-b", "t"))
    await redis.hset(holders, "gone", orjson.dumps(["x/1", "jti-g", "t"]))  # an older node removed its entry
    await node_a.until(lambda: "OnB" in node_a.listings)
    assert await redis.hexists(holders, "OnB")
    await _stop(b._tasks)  # noqa: SLF001 - a crash: no goodbye
    await node_a.until(lambda: node_a.lost == ["b"])
    assert await redis.hgetall(holders) == {}


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel until they have ended: 3.11's wait_for may swallow a cancel that races its result."""
    async with asyncio.timeout(WAIT):
        while pending := [t for t in tasks if not t.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.1)


async def _past_deadline(broker: RedisBroker, node: str) -> bool:
    """Whether ``node``'s deadline has passed in Redis's clock (the one deadlines are in)."""
    script = "local d = redis.call('ZSCORE', KEYS[1], ARGV[1]); local t = redis.call('TIME'); "
    script += "return d and tonumber(d) < tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) and 1 or 0"
    return bool(await broker._r.eval(script, 1, broker._k_nodes, node))  # noqa: SLF001


async def test_a_dead_nodes_streamer_id_is_claimable_at_once(make_broker: MakeBroker) -> None:
    """A streamer whose node was killed reconnects to another node: once the dead node's
    deadline has passed its ids are free, before any node reaps it (exact or not)."""
    a, _ = await make_broker("a")
    if not isinstance(a, RedisBroker):
        pytest.skip("one node: no other node holds ids (the memory broker has no node liveness)")
    b, _ = await make_broker("b")
    c, node_c = await make_broker("c")
    assert isinstance(b, RedisBroker) and isinstance(c, RedisBroker)
    redis = a._r  # noqa: SLF001
    await b.claim(Address("b/1"), "Cam", None, True, exact=True, holder=Holder("jti-old", "t"))
    await b.claim(Address("b/2"), "Open", None, True)
    await node_c.until(lambda: {"Cam", "Open"} <= set(node_c.listings))
    await until(lambda: a._judge() == "1")  # noqa: SLF001 - a has beaten for a whole TTL
    # While b is alive its ids are held: refused exactly, renamed in open mode (Epic's rule).
    assert await a.claim(Address("a/9"), "Cam", None, True, exact=True) == ""
    assert await a.claim(Address("a/9"), "Open", None, True) == "Open1"
    # Nobody reaps from now on, so only a claim can free b's ids; then b crashes.
    await _stop([t for broker in (a, c) for t in broker._tasks if t.get_name() == "sig-beat"])  # noqa: SLF001
    await _stop(b._tasks)  # noqa: SLF001 - a crash: no goodbye
    async with asyncio.timeout(WAIT):
        while not await _past_deadline(a, "b"):
            await asyncio.sleep(0.05)
    fresh = Holder("jti-new", "t")
    assert await a.claim(Address("a/1"), "Cam", None, True, exact=True, holder=fresh) == "Cam"
    assert await a.claim(Address("a/9"), "Open", "Open1", True) == "Open"
    await node_c.until(
        lambda: (
            node_c.listings.get("Cam") == (Address("a/1"), True)
            and node_c.listings.get("Open") == (Address("a/9"), True)
            and "Open1" not in node_c.listings
        )
    )
    assert node_c.holders["Cam"] == fresh
    listed = await redis.hget(a._k_holders, "Cam")  # noqa: SLF001
    assert isinstance(listed, bytes) and orjson.loads(listed) == ["a/1", "jti-new", "t"]
    assert await redis.zscore(a._k_nodes, "b") is not None  # noqa: SLF001 - b was never reaped
    # A node that has not beaten for a whole TTL does not judge: b's last id stays held.
    await redis.hset(a._k_dir, "Last", "b/3|1")  # noqa: SLF001 - what b listed before it died
    c._stable_since = None  # noqa: SLF001 - as after an outage: no unbroken run of beats
    assert await c.claim(Address("c/1"), "Last", None, True, exact=True) == ""
    assert await c.claim(Address("c/1"), "Last", None, True) == "Last1"
