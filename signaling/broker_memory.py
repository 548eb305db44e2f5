"""In-process broker: the embedded default. Single node only: endpoints on another
process are unknown to it."""

from __future__ import annotations

from signaling.broker import Mailbox
from signaling.protocol import ConnId


class MemoryBroker:
    __slots__ = ("_boxes",)

    def __init__(self) -> None:
        self._boxes: dict[ConnId, Mailbox] = {}

    def open(self, endpoint: ConnId, mailbox: Mailbox) -> None:
        self._boxes[endpoint] = mailbox

    def close(self, endpoint: ConnId) -> None:
        self._boxes.pop(endpoint, None)

    def deliver(self, to: ConnId, frame: bytes) -> bool:
        box = self._boxes.get(to)
        if box is None:
            return False
        box.push(frame)
        return True

    async def aclose(self) -> None:
        self._boxes.clear()
