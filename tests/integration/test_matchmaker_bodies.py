"""Request bodies that arrive in pieces: a heartbeat or registration split over several
TCP segments (a 40 KB full heartbeat on a busy host) is read whole, and a body over the
limit is refused with 413 however it arrives (no Content-Length, chunked)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import orjson
import pytest

from matchmaker.config import MatchmakerSettings
from matchmaker.models import HostRegistration, SlotSpec
from matchmaker.server import MatchmakerServer, build_matchmaker

pytestmark = pytest.mark.integration

AGENT = "agent-token-" + "a" * 24
WAIT = 10.0


@pytest.fixture
async def port() -> AsyncIterator[int]:
    settings = MatchmakerSettings(
        port=0,
        state_url="memory://",
        agent_token=AGENT,
        admin_token="admin-" + "b" * 24,
        session_token_secret="session-" + "c" * 32,
    )
    server = MatchmakerServer(settings, build_matchmaker(settings))
    await server.start()
    yield server.port
    await server.stop()


def registration(slots: int) -> bytes:
    reg = HostRegistration(
        host_id="h1",
        boot_id="b1",
        signaling_url="ws://127.0.0.1:1",
        slots=[SlotSpec(index=i, tenant="acme", app="game", streamer_id=f"h1-{i}-" + "s" * 40) for i in range(slots)],
    )
    return msgspec.json.encode(reg)


async def send_in_pieces(port: int, head: bytes, pieces: list[bytes]) -> tuple[int, dict[str, object]]:
    """One request, its body written in ``pieces`` with a pause between them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.1)
        status_line = await asyncio.wait_for(reader.readline(), WAIT)
        headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        length = next(int(h.split(b":")[1]) for h in headers.split(b"\r\n") if h.lower().startswith(b"content-length"))
        body = await asyncio.wait_for(reader.readexactly(length), WAIT)
        return int(status_line.split()[1]), orjson.loads(body)
    finally:
        writer.close()


def head(length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST /api/v1/hosts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {AGENT}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n"
    ).encode()


def chunked(pieces: list[bytes]) -> list[bytes]:
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]


async def test_a_body_in_several_segments_is_read_whole(port: int) -> None:
    body = registration(200)  # about 20 KB
    assert len(body) > 16_000
    thirds = [body[: len(body) // 3], body[len(body) // 3 : 2 * len(body) // 3], body[2 * len(body) // 3 :]]
    status, reply = await send_in_pieces(port, head(len(body)), thirds)
    assert status == 201, reply
    status, reply = await send_in_pieces(port, head(None), chunked(thirds))  # the same, chunked
    assert status == 201, reply


async def test_a_body_over_the_limit_in_pieces_without_a_length_is_refused(port: int) -> None:
    body = registration(800)  # over 64 KiB
    assert len(body) > 64 * 1024
    status, reply = await send_in_pieces(port, head(None), chunked([body[:40_000], body[40_000:]]))
    assert (status, reply["error"]) == (413, "too_large")
