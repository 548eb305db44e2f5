"""The broker carries encoded frames to connections, wherever they live.

A connection opens a mailbox under its id; anyone on the node (or, with a
distributed broker, on any node) delivers frames to that id.

Guarantees every implementation keeps:
- at-most-once delivery; frames from one sender to one endpoint keep their order;
- ``deliver`` never blocks, and never waits on a slow reader: the mailbox is
  bounded, and an overflowing mailbox closes its own connection (slow consumer)
  instead of holding up the sender;
- ``deliver`` returns False for an endpoint that is not open.
"""

from __future__ import annotations

from typing import Protocol

from signaling.protocol import ConnId


class Mailbox(Protocol):
    """The receiving end: one per open connection, owned by its adapter."""

    def push(self, frame: bytes) -> None: ...


class Broker(Protocol):
    def open(self, endpoint: ConnId, mailbox: Mailbox) -> None: ...
    def close(self, endpoint: ConnId) -> None: ...
    def deliver(self, to: ConnId, frame: bytes) -> bool: ...
    async def aclose(self) -> None: ...


def open_broker(state_url: str) -> Broker:
    """Pick the implementation from the URL scheme (one setting chooses the backend)."""
    scheme = state_url.split(":", 1)[0]
    if scheme == "memory":
        from signaling.broker_memory import MemoryBroker

        return MemoryBroker()
    raise ValueError(f"state URL scheme {scheme!r} is not supported by signalling yet (use memory://)")
