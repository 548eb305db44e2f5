"""Raw WebSocket clients for every signalling role, as tests drive them."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

WAIT = 10.0  # generous: tests never fail on timing alone


class Peer:
    """A raw WebSocket client that reads JSON messages."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, **msg: Any) -> None:
        await self.ws.send_str(orjson.dumps(msg).decode())

    async def recv(self) -> dict[str, Any]:
        msg = await asyncio.wait_for(self.ws.receive(), WAIT)
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        decoded: dict[str, Any] = orjson.loads(msg.data)
        return decoded

    async def recv_type(self, kind: str) -> dict[str, Any]:
        while True:
            msg = await self.recv()
            if msg["type"] == kind:
                return msg

    async def closed(self) -> tuple[int | None, str]:
        """Wait for the server to close us; returns (code, reason)."""
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), WAIT)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                return msg.data, (msg.extra or "")
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code, ""
            if msg.type is aiohttp.WSMsgType.ERROR:
                return self.ws.close_code, str(msg.data)

    async def still_served(self) -> None:
        await self.send(type="ping", time=42)
        assert await self.recv_type("pong") == {"type": "pong", "time": 42}


async def connect_streamer(http: aiohttp.ClientSession, port: int, name: str = "Cam") -> Peer:
    s = Peer(await http.ws_connect(f"ws://127.0.0.1:{port}/"))
    assert (await s.recv())["type"] == "identify"
    assert (await s.recv())["type"] == "config"
    await s.send(type="endpointId", id=name)
    assert (await s.recv()) == {"type": "endpointIdConfirm", "committedId": name}
    return s


async def connect_player(
    http: aiohttp.ClientSession,
    port: int,
    streamer: Peer | None = None,
    name: str = "Cam",
    path: str = "/",
) -> tuple[Peer, str]:
    p = Peer(await http.ws_connect(f"ws://127.0.0.1:{port}{path}"))
    await p.send(type="listStreamers")  # Epic's frontend sends before config arrives
    assert (await p.recv())["type"] == "config"
    await p.recv_type("streamerList")
    if streamer is None:
        return p, ""
    await p.send(type="subscribe", streamerId=name)
    connected = await streamer.recv_type("playerConnected")
    return p, connected["playerId"]
