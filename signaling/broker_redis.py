"""The Redis broker: signalling on many nodes (docs/signaling-cluster.md).

- **Delivery** is sharded pub/sub (SPUBLISH/SSUBSCRIBE; plain Redis 7 accepts them too):
  each node listens on its own channel, and frames for an address go to the channel of
  the node the address names. Frames bound for one node are batched (all those queued
  while the writer was busy) into one message, and one writer task sends batches in
  order, without waiting for replies (``broker_outbox``: one connection per Redis server),
  so frames from one sender to one endpoint keep their order. A batch no node received
  (its node died) or that Redis refused is reported back to each frame's sender. A node
  reads its channel inside the socket's read (``broker_subscription``).
- **The directory** (streamer id -> address, streaming flag) is a hash, changed only by
  Lua scripts that also publish each change on the directory channel; every node keeps
  a view of it, reloaded whole after any reconnection. The credential each id's holder
  connected with (jti, tenant) is listed beside it, in a second hash written by the same
  scripts, so listings show it for a streamer on any node; the entry itself keeps the
  format older nodes read, so nodes of two releases share one cluster while it is upgraded.
- **Liveness**: each node renews a deadline (in Redis's clock) every TTL/3; a node that
  has beaten without a gap for a whole TTL removes nodes past their deadline (and their
  streamers), and every node tells its peers about nodes that left its view. A node
  that finds itself removed was cut off: it drops its cross-node links and lists its
  streamers again. An epoch key tells a Redis that lost its data (restart without
  persistence) from one that removed us.
- **A silent subscription** (left on a frozen or demoted Redis or shard primary, where no
  reset ever comes) is found out whatever the client: every TTL/3 a node sends a heartbeat
  record to its own inbox, and an inbox that heard nothing for a TTL, or a heartbeat that
  no subscriber got, means subscribing anew (not ready meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, MovedError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from pixelfleet.redis_sentinel import parse_sentinel_url, sentinel_primary
from pixelfleet.redis_timing import instrument
from pixelfleet.redis_url import split_cluster_flag
from signaling.broker import BrokerUnavailable, Mailbox, NodeCounts, NodeEvents
from signaling.broker_outbox import BatchSender
from signaling.broker_records import (
    FRAME,
    HEARTBEAT,
    LINK,
    ORIGIN,
    decode_counts,
    held_by,
    holder_args,
    holder_of,
    pack,
    unpack,
)
from signaling.broker_subscription import TakenSubscription, take_over_subscription
from signaling.peer_links import Address, AnyLink, DirectoryEntry, Holder, decode_link, encode_link, node_of

log = structlog.get_logger("signaling.cluster")

RedisClient = Redis | RedisCluster
RedisClusterMoved = (MovedError, AskError)  # a slot moved: the cluster is fine, the map was old
_RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0)


def _script(name: str) -> str:
    folder = resources.files("signaling").joinpath("lua")
    body = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return folder.joinpath("prelude.lua").read_text(encoding="utf-8") + body


class _Silent(Exception):  # a subscription that looks alive but cannot be trusted: make it anew
    pass


class RedisBroker:
    distributed = True

    def __init__(self, redis: RedisClient, *, node_id: str | None = None, node_ttl_s: float = 5.0, prefix: str = "pf"):
        self.node_id = node_id or secrets.token_hex(4)
        if "/" in self.node_id:
            raise ValueError("a node id cannot contain '/'")
        self._r = redis
        self._cluster = isinstance(redis, RedisCluster)
        self._ttl_ms = max(int(node_ttl_s * 1000), 300)
        tag = f"{{{prefix}:sig}}"
        self._k_dir, self._k_nodes, self._k_epoch = f"{tag}:dir", f"{tag}:nodes", f"{tag}:epoch"
        self._k_holders, self._k_counts = f"{tag}:holders", f"{tag}:counts"
        self._events_channel = f"{tag}:ev"
        self._jti = f"{prefix}:sig:jti:"
        self._prefix = prefix
        self._scripts = {
            n: redis.register_script(_script(n)) for n in ("claim", "announce", "withdraw", "beat", "leave", "snapshot")
        }
        self.round_trips = instrument(redis, self._scripts)  # every command timed, failures counted (/metrics)
        self._outbox = BatchSender(redis, self.round_trips, bound_s=self._ttl_ms / 1000)
        self._boxes: dict[Address, Mailbox] = {}
        self._events: NodeEvents | None = None
        self._outgoing: dict[str, list[tuple[int, str, bytes, Address | None]]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._up = False  # the last round trip worked
        self._registered = False
        self._inbox_up = False  # subscribed to this node's channel: it can be sent to
        self._inbox_subs = 0  # inbox subscriptions made so far
        self._inbox_lost = False  # a heartbeat sent while subscribed reached no subscriber
        self._rejoins = 0  # times this node came back in touch with the cluster
        self._epoch: str | None = None
        self._stable_since: float | None = None  # loop time of the first beat of the current unbroken run
        self._seen: set[str] = set()  # nodes alive at the last beat (this one included)
        self._counts: dict[str, NodeCounts] = {}  # other live nodes' counts, as of the last beat
        self._closing = False
        self._joined = asyncio.Event()  # the first beat went through
        counted: tuple[str, ...] = ("batches", "frames_out", "frames_in", "undeliverable", "lost_nodes")
        counted += ("resubscribed", "read_in_socket")  # read_in_socket: taken over (broker_subscription)
        self.stats = dict.fromkeys(counted, 0)

    @classmethod
    def from_url(
        cls, url: str, *, node_id: str | None = None, node_ttl_s: float = 5.0, prefix: str = "pf"
    ) -> RedisBroker:
        url, cluster = split_cluster_flag(url)
        sentinel = parse_sentinel_url(url)  # ?sentinel=<name>: follow the primary across failovers
        if sentinel is not None and cluster:
            raise ValueError("a state URL names Redis Cluster or Sentinel, not both")
        client: RedisClient = (
            sentinel_primary(sentinel)
            if sentinel
            # Bounded sockets, under a beat's own bound (2 TTL/3), so the client itself sees a
            # frozen node time out and asks others first for the slot map from then on.
            else RedisCluster.from_url(url, socket_timeout=node_ttl_s / 2, socket_connect_timeout=node_ttl_s / 2)
            if cluster
            else Redis.from_url(url)
        )
        return cls(client, node_id=node_id, node_ttl_s=node_ttl_s, prefix=prefix)

    def inbox(self, node: str) -> str:
        return f"{{{self._prefix}:sig:{node}}}:in"

    @property
    def ready(self) -> bool:
        return self._up and self._registered and self._inbox_up

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, events: NodeEvents) -> None:
        """Register and listen; returns once the node is in the cluster (or Redis is down:
        the node still serves its own peers and joins when Redis answers)."""
        self._events = events
        if isinstance(self._r, RedisCluster):  # a cluster client knows its slots only once asked
            with contextlib.suppress(RedisError, OSError):
                await self._r.initialize()
        joined = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._listen([self.inbox(self.node_id)], self._on_batch, joined), name="sig-inbox"),
            asyncio.create_task(self._listen([self._events_channel], self._on_directory_event, None), name="sig-dir"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(joined.wait(), self._ttl_ms / 1000)
        self._tasks.append(asyncio.create_task(self._beat_forever(), name="sig-beat"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._joined.wait(), self._ttl_ms / 1000)

    async def aclose(self) -> None:
        """Leave the cluster at once (the others need not wait for the deadline)."""
        self._closing = True
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:  # bounded: a task stuck in a client call must not hold up shutdown
            _done, stuck = await asyncio.wait(tasks, timeout=2.0)
            if stuck:
                log.warning("broker_tasks_stuck", node=self.node_id, tasks=sorted(t.get_name() for t in stuck))
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._writer, 1.0)
        await self._outbox.aclose(within_s=1.0)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(
                self._scripts["leave"](
                    keys=[self._k_nodes, self._k_dir, self._k_holders, self._k_counts],
                    args=[self.node_id, self._events_channel],
                ),
                1.0,
            )
        self._boxes.clear()
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self._r.aclose(), 2.0)

    # --- mailboxes and delivery -------------------------------------------------------

    def open(self, endpoint: Address, mailbox: Mailbox) -> None:
        self._boxes[endpoint] = mailbox

    def close(self, endpoint: Address) -> None:
        self._boxes.pop(endpoint, None)

    def deliver(self, to: Address, frame: bytes, origin: Address | None = None) -> bool:
        box = self._boxes.get(to)  # this node's endpoints only: the usual case, no parsing
        if box is not None:
            box.push(frame)
            return True
        node = node_of(to)
        if node == self.node_id:
            return False
        return self._enqueue(node, FRAME, to if origin is None else f"{to}{ORIGIN}{origin}", frame, origin)

    def relay(self, link: AnyLink) -> bool:
        return self._enqueue(node_of(link.to), LINK, link.to, encode_link(link), None)

    def _enqueue(self, node: str, kind: int, to: str, payload: bytes, origin: Address | None) -> bool:
        if not self._up or self._closing:
            return False
        self._outgoing.setdefault(node, []).append((kind, to, payload, origin))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return True

    async def _write(self) -> None:
        """The one writer: batches go out in order, each without waiting for the reply to
        the one before (``broker_outbox``); replies come back through ``_sent``."""
        try:
            while self._outgoing:
                batch, self._outgoing = self._outgoing, {}
                for node, items in batch.items():
                    payload = pack([i[:3] for i in items])
                    await self._outbox.send(self.inbox(node), payload, functools.partial(self._sent, node, items))
        finally:
            self._writer = None

    def _sent(self, node: str, items: list[tuple[int, str, bytes, Address | None]], reply: int | BaseException) -> None:
        self.stats["batches"] += 1
        self.stats["frames_out"] += len(items)
        if isinstance(reply, BaseException) and not isinstance(reply, RedisClusterMoved):
            self._went_down(reply)
        if isinstance(reply, RedisClusterMoved):
            self._undeliverable(items, f"node {node}'s inbox moved to another Redis shard; send again")
        elif isinstance(reply, BaseException) or not reply:
            why = f"node {node} is gone" if reply == 0 and self._up else "signalling is out of touch with the cluster"
            self._undeliverable(items, why)

    async def _publish(self, channel: str, payload: bytes) -> Any:
        return await self._r.spublish(channel, payload)

    def _undeliverable(self, items: list[tuple[int, str, bytes, Address | None]], why: str) -> None:
        assert self._events is not None
        for _kind, to, _payload, origin in items:
            self.stats["undeliverable"] += 1
            if origin is not None:
                self._events.on_undeliverable(origin, Address(to.partition(ORIGIN)[0]), why)

    def _on_batch(self, data: bytes) -> None:
        assert self._events is not None
        try:
            items = unpack(data)
        except ValueError as exc:
            log.warning("bad_batch", error=str(exc))
            return
        for kind, to, payload in items:
            if kind == FRAME:
                self.stats["frames_in"] += 1
                to, _, origin = to.partition(ORIGIN)
                if origin and not self._events.accepts(Address(to), Address(origin)):
                    continue  # not (or no longer) linked: e.g. a player the streamer's node refused
                box = self._boxes.get(Address(to))
                if box is not None:
                    box.push(payload)
            elif kind == LINK:  # anything else (HEARTBEAT, a later kind) is skipped
                try:
                    link = decode_link(payload)
                except ValueError as exc:
                    log.warning("bad_link", error=str(exc))
                    continue
                self._events.on_link(link)

    # --- directory --------------------------------------------------------------------

    async def _bounded(self, call: Awaitable[Any]) -> Any:
        """One round trip that a connection's task waits on: never longer than a TTL (a
        frozen Redis answers nothing and raises nothing), and a failure is BrokerUnavailable."""
        try:
            async with asyncio.timeout(self._ttl_ms / 1000):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_down(exc)
            raise BrokerUnavailable(str(exc) or type(exc).__name__) from None

    async def claim(
        self,
        conn: Address,
        wanted: str,
        old: str | None,
        streaming: bool,
        exact: bool = False,
        holder: Holder | None = None,
    ) -> str:
        flags = ("1" if streaming else "0", self._events_channel, "1" if exact else "0")
        raw = await self._bounded(
            self._scripts["claim"](
                keys=[self._k_dir, self._k_holders, self._k_nodes],
                args=[conn, wanted, old or "", *flags, *holder_args(holder), self._judge()],
            )
        )
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def announce(self, streamer_id: str, conn: Address, streaming: bool, holder: Holder | None = None) -> None:
        self._background(self._announce(DirectoryEntry(streamer_id, conn, streaming, holder)))

    async def _announce(self, entry: DirectoryEntry) -> None:
        sid, conn, streaming, holder = entry
        ok = await self._scripts["announce"](
            keys=[self._k_dir, self._k_holders, self._k_nodes],
            args=[conn, sid, "1" if streaming else "0", self._events_channel, *holder_args(holder), self._judge()],
        )
        if not int(ok):
            log.warning("streamer_id_conflict", streamer=sid, conn=conn)

    def _judge(self) -> str:
        """'1' when this node may take an id from a node past its deadline: the rule a
        reaper keeps (a whole TTL of beats without a gap), so right after Redis returns
        with old deadlines no node that is alive but has not beaten yet loses its ids."""
        since = self._stable_since
        stable = since is not None and asyncio.get_running_loop().time() - since >= self._ttl_ms / 1000
        return "1" if self._up and stable else "0"

    def withdraw(self, streamer_id: str, conn: Address) -> None:
        self._background(
            self._scripts["withdraw"](
                keys=[self._k_dir, self._k_holders], args=[conn, streamer_id, self._events_channel]
            )
        )

    def _background(self, call: Awaitable[Any]) -> None:
        """Directory writes that nobody waits for; a failure is healed by the next re-listing."""

        async def run() -> None:
            with contextlib.suppress(BrokerUnavailable):
                await self._bounded(call)

        if self._up:
            task = asyncio.create_task(run())
            self._tasks.append(task)
            task.add_done_callback(self._forget)
        elif asyncio.iscoroutine(call):
            call.close()

    def _forget(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    def _on_directory_event(self, data: bytes) -> None:
        assert self._events is not None
        try:
            event = orjson.loads(data)
            op, sid, conn = event[0], str(event[1]), Address(str(event[2]))
        except (orjson.JSONDecodeError, IndexError, TypeError) as exc:
            log.warning("bad_directory_event", error=str(exc))
            return
        if node_of(conn) == self.node_id:
            return
        listed = op == "+" and len(event) > 3
        # An older node's event has no holder: unknown, so trusted as no credential at all.
        holder = holder_of(event[4:6]) if listed else None
        self._events.on_listing(sid, conn, (str(event[3]) == "1") if listed else None, holder)

    async def _reload_directory(self) -> None:
        assert self._events is not None
        entries, held = await self._scripts["snapshot"](keys=[self._k_dir, self._k_holders], args=[])
        holders: dict[bytes, Any] = dict(zip(held[::2], held[1::2], strict=True))
        listings = []
        for sid, entry in zip(entries[::2], entries[1::2], strict=True):
            conn, _, streaming = entry.decode().rpartition("|")
            listings.append(
                DirectoryEntry(sid.decode(), Address(conn), streaming == "1", held_by(holders.get(sid), conn))
            )
        self._events.on_directory(listings)

    # --- single-use tokens ------------------------------------------------------------

    async def first_use(self, token_id: str, expires_at: int) -> bool:
        """SET NX until the token expires: used once in the whole cluster."""
        return bool(await self._bounded(self._r.set(self._jti + token_id, b"1", nx=True, exat=max(int(expires_at), 1))))

    # --- liveness ---------------------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        if self._up:
            log.warning("cluster_unreachable", node=self.node_id, error=str(exc))
        self._up = False
        self._stable_since = None

    async def _beat_forever(self) -> None:
        loop = asyncio.get_running_loop()
        period = self._ttl_ms / 3000
        # Until closing, not only until cancelled: Python 3.11's wait_for can swallow a
        # cancel that lands as the beat completes, and a beat after leave.lua listed the
        # closed node again (its counts too) until its deadline passed.
        while not self._closing:
            started = loop.time()
            heartbeat = asyncio.create_task(self._heartbeat(period))  # on its own shard's time
            try:
                await asyncio.wait_for(self._beat(loop.time()), period * 2)
            except (RedisError, OSError, TimeoutError) as exc:
                self._went_down(exc)
            await heartbeat
            await asyncio.sleep(max(0.0, period - (loop.time() - started)))

    async def _heartbeat(self, within_s: float) -> None:
        """A record to this node's own inbox that ``_listen`` only notes it heard (see top)."""
        subscription = self._inbox_subs if self._inbox_up else None
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            record = pack([(HEARTBEAT, self.node_id, b"")])
            got = await asyncio.wait_for(self._publish(self.inbox(self.node_id), record), within_s)
            if not got and subscription == self._inbox_subs and self._inbox_up:
                self._inbox_lost = True

    async def _beat(self, now: float) -> None:
        assert self._events is not None
        stable = self._stable_since is not None and now - self._stable_since >= self._ttl_ms / 1000
        fresh = secrets.token_hex(8)
        epoch, present, alive, reaped, counted = await self._scripts["beat"](
            keys=[self._k_nodes, self._k_epoch, self._k_dir, self._k_holders, self._k_counts],
            args=[self.node_id, self._ttl_ms, fresh, "1" if stable else "0", self._events_channel, self._own_counts()],
        )
        self._counts = decode_counts(counted, self.node_id)
        epoch = epoch.decode()
        alive_now = {n.decode() for n in alive}
        rejoined = not self._up
        if self._registered and epoch == self._epoch and not int(present):
            log.warning("cut_off_from_cluster", node=self.node_id)
            self._events.on_cut_off()
            rejoined = True
        elif self._epoch is not None and epoch != self._epoch:
            log.warning("cluster_state_lost", node=self.node_id)  # Redis came back empty: list again
            self._stable_since = None
            stable = False
            rejoined = True
        self._rejoins += rejoined and self._registered
        if rejoined or not self._registered:
            await self._relist()
            await self._reload_directory()
        if self._stable_since is None:
            self._stable_since = now
        if stable:
            for node in sorted(self._seen - alive_now - {self.node_id}):
                self.stats["lost_nodes"] += 1
                log.warning("node_lost", node=node, reaped=node.encode() in reaped)
                self._events.on_node_lost(node)
            self._seen = alive_now
        else:
            self._seen |= alive_now  # no verdicts until this node has a whole TTL of beats
        self._epoch, self._registered, self._up = epoch, True, True
        self._joined.set()

    def _own_counts(self) -> bytes:
        counts = self._events.local_counts() if self._events is not None else NodeCounts()
        return orjson.dumps({"p": counts.players, "s": counts.streamers, "sub": counts.subscribers})

    def node_counts(self) -> dict[str, NodeCounts]:
        own = {self.node_id: self._events.local_counts()} if self._events is not None else {}
        return {**self._counts, **own} if self._up else own

    async def _relist(self) -> None:
        listings = getattr(self._events, "local_listings", None)
        if listings is None:
            return
        for entry in listings():
            await self._announce(entry)

    # --- subscriptions ----------------------------------------------------------------

    async def _listen(self, channels: list[str], handle: Callable[[bytes], None], joined: asyncio.Event | None) -> None:
        """Sharded subscription kept up across Redis restarts and failovers."""
        attempt = 0
        while True:
            pubsub: PubSub | None = None
            try:
                pubsub = self._r.pubsub()
                await pubsub.ssubscribe(*channels)
                if joined is not None:
                    await self._reload_directory_safely()
                    joined.set()
                    self._inbox_subs, self._inbox_lost, self._inbox_up = self._inbox_subs + 1, False, True
                elif self._up:
                    await self._reload_directory()  # events may have been missed while away
                attempt, rejoins = 0, self._rejoins
                taken = take_over_subscription(pubsub, handle)
                if taken is not None:
                    self.stats["read_in_socket"] += 1  # subscriptions read in their socket's read
                    try:
                        await self._watch(taken, joined is not None, rejoins)
                    finally:
                        taken.close()
                heard = pinged = asyncio.get_running_loop().time()
                while True:  # where the connection could not be taken over: redis-py reads
                    msg = await self._next_message(pubsub)
                    now = asyncio.get_running_loop().time()
                    if msg is not None:
                        heard = now
                        if msg.get("type") == "smessage":
                            handle(msg["data"])
                    if joined is not None and (self._inbox_lost or now - heard > self._ttl_ms / 1000):
                        raise _Silent("this node's inbox heard nothing, not even its own heartbeat")
                    if joined is None and self._cluster and rejoins != self._rejoins:  # no heartbeat here:
                        raise _Silent("back in touch with the cluster")  # its primary may have changed
                    if not self._cluster and now - pinged >= self._ttl_ms / 3000:
                        # A ping is heard on a quiet channel too (the directory's has no
                        # heartbeat): nothing back within a TTL means subscribe anew.
                        if now - heard > self._ttl_ms / 1000:
                            raise RedisConnectionError("no answer on the subscription connection")
                        pinged = now
                        await pubsub.ping()
            except (_Silent, RedisError, OSError) as exc:
                self.stats["resubscribed"] += 1  # silent or failed, found out either way
                if isinstance(exc, _Silent):
                    log.warning("resubscribing", node=self.node_id, channel=channels[0], why=str(exc))
                else:
                    self._went_down(exc)
                if joined is not None:
                    self._inbox_up = False
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            if isinstance(self._r, RedisCluster):  # a subscription's failure tells the client nothing:
                with contextlib.suppress(RedisError, OSError, TimeoutError):  # ask for the slot map anew
                    await asyncio.wait_for(self._r.nodes_manager.initialize(), self._ttl_ms / 1000)
            await asyncio.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
            attempt += 1

    async def _watch(self, taken: TakenSubscription, inbox: bool, rejoins: int) -> None:
        """A taken-over subscription (``broker_subscription``) is read in its socket's read;
        this raises once it fails or falls silent, by the same rules as ``_listen``'s loop."""
        loop = asyncio.get_running_loop()
        period = min(1.0, self._ttl_ms / 3000)
        pinged = loop.time()
        while True:
            await taken.wait_failed(period)
            if taken.failure is not None:
                raise taken.failure
            now = loop.time()
            if inbox and (self._inbox_lost or now - taken.heard > self._ttl_ms / 1000):
                raise _Silent("this node's inbox heard nothing, not even its own heartbeat")
            if not inbox and self._cluster and rejoins != self._rejoins:
                raise _Silent("back in touch with the cluster")
            if not self._cluster and now - pinged >= self._ttl_ms / 3000:
                if now - taken.heard > self._ttl_ms / 1000:
                    raise RedisConnectionError("no answer on the subscription connection")
                pinged = now
                taken.ping()

    async def _next_message(self, pubsub: PubSub) -> dict[str, Any] | None:
        # Wait at most the ping period: a quiet subscription is pinged every TTL/3, and a
        # longer wait (1 s against a TTL under 1 s) left no pong heard within the TTL.
        wait = min(1.0, self._ttl_ms / 3000)
        if self._cluster:
            msg: dict[str, Any] | None = await pubsub.get_sharded_message(  # type: ignore[attr-defined]
                ignore_subscribe_messages=True, timeout=wait
            )
            return msg
        plain: dict[str, Any] | None = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
        return plain

    async def _reload_directory_safely(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._reload_directory()
