"""What a taken-over subscription does with the bytes Redis sends (broker_subscription):
messages in order however the reads split them, a bad message costing only itself, and
the replies that end a subscription ending it."""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import pytest
from redis._parsers.hiredis import NOT_ENOUGH_DATA

from signaling.broker_subscription import TakenSubscription


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.protocol: Any = Previous()

    def get_protocol(self) -> Any:
        return self.protocol

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


class Previous:
    def __init__(self) -> None:
        self.lost: list[Any] = []

    def connection_lost(self, exc: Any) -> None:
        self.lost.append(exc)


def push(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def smessage(payload: bytes) -> bytes:
    return push(b"smessage", b"{pf:sig:n1}:in", payload)


def taken(handle: Any) -> tuple[TakenSubscription, Transport]:
    """As pixelfleet.redis_takeover makes it: redis-py's own hiredis reader."""
    transport = Transport()
    reader = hiredis.Reader(notEnoughData=NOT_ENOUGH_DATA)
    return TakenSubscription(handle, transport, reader, NOT_ENOUGH_DATA), transport


@pytest.mark.parametrize("step", [1, 2, 7, 64, 10_000])
async def test_messages_arrive_in_order_however_the_reads_split_them(step: int) -> None:
    got: list[bytes] = []
    sub, _ = taken(got.append)
    confirmed = b"*3\r\n$10\r\nssubscribe\r\n$14\r\n{pf:sig:n1}:in\r\n:1\r\n"
    stream = confirmed + b"".join(smessage(b"m%d" % i) for i in range(30))
    for at in range(0, len(stream), step):
        sub.data_received(stream[at : at + step])
    assert got == [b"m%d" % i for i in range(30)]
    assert sub.failure is None


async def test_a_message_that_fails_costs_only_itself() -> None:
    got: list[bytes] = []

    def handle(payload: bytes) -> None:
        if payload == b"bad":
            raise ValueError("a bug")
        got.append(payload)

    sub, _ = taken(handle)
    sub.data_received(smessage(b"a") + smessage(b"bad") + smessage(b"b"))
    assert got == [b"a", b"b"] and sub.failure is None


async def test_a_pong_is_heard_and_a_ping_is_written() -> None:
    sub, transport = taken(lambda _: None)
    before = sub.heard
    await asyncio.sleep(0.01)
    sub.ping()
    sub.data_received(push(b"pong", b""))
    assert transport.written == [b"*1\r\n$4\r\nPING\r\n"] and sub.heard > before and sub.failure is None


@pytest.mark.parametrize(
    "reply",
    [push(b"sunsubscribe", b"{pf:sig:n1}:in", b"0"), b"-MOVED 1234 127.0.0.1:7001\r\n"],
    ids=["slot moved", "error"],
)
async def test_a_reply_that_ends_the_subscription_fails_it_at_once(reply: bytes) -> None:
    sub, _ = taken(lambda _: None)
    sub.data_received(reply)
    await sub.wait_failed(5)
    assert sub.failure is not None


async def test_the_connections_loss_fails_it_and_reaches_redis_pys_own_protocol() -> None:
    sub, transport = taken(lambda _: None)
    sub.connection_lost(None)
    await sub.wait_failed(5)
    assert sub.failure is not None and transport.protocol.lost == [None]
