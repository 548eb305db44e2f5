"""In-process broker: the embedded default, one node. Every address is local, so
links never need relaying and ids are claimed by the core itself."""

from __future__ import annotations

import time

from signaling.broker import Mailbox, NodeCounts, NodeEvents
from signaling.peer_links import Address, AnyLink, Holder

_LEDGER_SWEEP = 1024


class MemoryBroker:
    __slots__ = ("_boxes", "_events", "_used", "node_id")

    distributed = False
    ready = True

    def __init__(self, node_id: str = "local") -> None:
        self.node_id = node_id
        self._boxes: dict[Address, Mailbox] = {}
        self._used: dict[str, int] = {}  # token id -> expiry
        self._events: NodeEvents | None = None

    async def start(self, events: NodeEvents) -> None:
        self._events = events

    def open(self, endpoint: Address, mailbox: Mailbox) -> None:
        self._boxes[endpoint] = mailbox

    def close(self, endpoint: Address) -> None:
        self._boxes.pop(endpoint, None)

    def deliver(self, to: Address, frame: bytes, origin: Address | None = None) -> bool:
        box = self._boxes.get(to)
        if box is None:
            return False
        box.push(frame)
        return True

    def relay(self, link: AnyLink) -> bool:
        return False  # one node: the core handles every link itself

    async def claim(
        self,
        conn: Address,
        wanted: str,
        old: str | None,
        streaming: bool,
        exact: bool = False,
        holder: Holder | None = None,
    ) -> str:
        raise NotImplementedError("one node: the core claims ids itself (and lists each holder's credential)")

    def announce(self, streamer_id: str, conn: Address, streaming: bool, holder: Holder | None = None) -> None:
        return None

    def withdraw(self, streamer_id: str, conn: Address) -> None:
        return None

    async def first_use(self, token_id: str, expires_at: int) -> bool:
        """Kept until the token expires (swept once the ledger grows)."""
        if len(self._used) > _LEDGER_SWEEP:
            now = time.time()
            self._used = {jti: exp for jti, exp in self._used.items() if exp >= now}
        if token_id in self._used:
            return False
        self._used[token_id] = expires_at
        return True

    def node_counts(self) -> dict[str, NodeCounts]:
        """One node: its own counts."""
        return {} if self._events is None else {self.node_id: self._events.local_counts()}

    async def aclose(self) -> None:
        self._boxes.clear()
