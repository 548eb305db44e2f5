"""The broker carries frames and link messages to connections, wherever they live, and
keeps the cluster's streamer directory and single-use token ledger.

A connection opens a mailbox under its address; anyone on the node (or, with a
distributed broker, on any node) delivers frames to that address.

Guarantees every implementation keeps:
- at-most-once delivery; frames from one sender to one endpoint keep their order;
- ``deliver`` never blocks, and never waits on a slow reader: the mailbox is
  bounded, and an overflowing mailbox closes its own connection (slow consumer)
  instead of holding up the sender;
- ``deliver`` returns False for an endpoint it knows cannot be reached now; a frame
  that turns out undeliverable later (its node is gone, Redis failed) is reported to
  the node through ``NodeEvents.on_undeliverable`` with the sender's address, so no
  routed message is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from signaling.peer_links import Address, AnyLink, DirectoryEntry, Holder


@dataclass(frozen=True, slots=True)
class NodeCounts:
    """A node's connections, as ``/api/status`` counts them: peers with a player id,
    peers with a streamer id, and each of its streamers' subscribers (on any node)."""

    players: int = 0
    streamers: int = 0
    subscribers: dict[str, int] = field(default_factory=dict)


class Mailbox(Protocol):
    """The receiving end: one per open connection, owned by its adapter."""

    def push(self, frame: bytes) -> None: ...


class NodeEvents(Protocol):
    """What a distributed broker tells its node (``ws.SignalingNode`` implements it)."""

    def on_link(self, link: AnyLink) -> None: ...
    def accepts(self, to: Address, origin: Address) -> bool: ...  # may a routed frame from origin reach to?
    def on_listing(  # streaming None: unlisted; holder None: no credential, or unknown (an older node)
        self, streamer_id: str, conn: Address, streaming: bool | None, holder: Holder | None = None
    ) -> None: ...
    def on_directory(self, listings: list[DirectoryEntry]) -> None: ...  # a full snapshot
    def on_node_lost(self, node: str) -> None: ...
    def on_cut_off(self) -> None: ...
    def on_undeliverable(self, origin: Address, to: Address, reason: str) -> None: ...
    def local_listings(self) -> Iterable[DirectoryEntry]: ...  # to list again after a loss
    def local_counts(self) -> NodeCounts: ...  # what this node reports to the others


class BrokerUnavailable(Exception):
    """The shared state cannot be reached right now."""


class Broker(Protocol):
    node_id: str
    distributed: bool  # peers on other nodes exist: ids are claimed, links relayed

    @property
    def ready(self) -> bool:
        """Whether the node can serve cluster traffic now (readiness checks)."""
        ...

    async def start(self, events: NodeEvents) -> None: ...
    def open(self, endpoint: Address, mailbox: Mailbox) -> None: ...
    def close(self, endpoint: Address) -> None: ...
    def deliver(self, to: Address, frame: bytes, origin: Address | None = None) -> bool: ...
    def relay(self, link: AnyLink) -> bool: ...
    async def claim(
        self,
        conn: Address,
        wanted: str,
        old: str | None,
        streaming: bool,
        exact: bool = False,
        holder: Holder | None = None,
    ) -> str:
        """Commit ``wanted`` (or Epic's rename of it) for ``conn``, releasing ``old``;
        ``exact``: ``wanted`` or nothing ("" when another connection holds it). ``holder``
        (the connection's credential) is listed with the id in the same atomic step, so
        no node ever sees the id with another holder's credential."""
        ...

    def announce(self, streamer_id: str, conn: Address, streaming: bool, holder: Holder | None = None) -> None: ...
    def withdraw(self, streamer_id: str, conn: Address) -> None: ...
    async def first_use(self, token_id: str, expires_at: int) -> bool: ...
    def node_counts(self) -> dict[str, NodeCounts]:
        """Each live node's counts: this node's as of now, the others' as of their last
        beat that this node has read (at most about 2 x TTL/3 old); none of the others'
        while this node is out of touch with the cluster."""
        ...

    async def aclose(self) -> None: ...


def open_broker(state_url: str, *, node_id: str | None = None, node_ttl_s: float = 5.0) -> Broker:
    """Pick the implementation from the URL scheme (one setting chooses the backend)."""
    scheme = state_url.split(":", 1)[0]
    if scheme == "memory":
        from signaling.broker_memory import MemoryBroker

        return MemoryBroker()
    if scheme in ("redis", "rediss", "unix"):
        from signaling.broker_redis import RedisBroker

        return RedisBroker.from_url(state_url, node_id=node_id, node_ttl_s=node_ttl_s)
    raise ValueError(f"state URL scheme {scheme!r} is not supported (use memory://, redis:// or rediss://)")
