"""Attacks on a real ``pixelfleet signaling`` process with a session-token key (issue 11):
each is refused with the status or close code docs/protocol.md promises, and leaves an
audit line (``"log": "audit"``) in the process's output."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from base64 import b64encode
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from pixelfleet.net import free_port
from pixelfleet.tokens import TokenKeys, mint, mint_streamer, verify_streamer
from tests.support.processes import Child

SECRET = "s" * 40
ADMIN = "admin-" + "a" * 30
KEYS = TokenKeys.hs256(SECRET)

pytestmark = pytest.mark.asyncio


class Box:
    def __init__(self, child: Child, ports: dict[str, int]) -> None:
        self.child = child
        self.ports = ports

    def url(self, port: str, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.ports[port]}{path}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['player']}{path}"

    async def audited(self, reason: str) -> None:
        await self.child.wait_for_line(f'"reason":"{reason}"', timeout_s=10)


@pytest.fixture
async def box(start_process: Any) -> AsyncIterator[Box]:
    ports = {"player": free_port(), "streamer": free_port(), "sfu": free_port()}
    env = {
        **os.environ,
        "PIXELFLEET_PLAYER_PORT": str(ports["player"]),
        "PIXELFLEET_STREAMER_PORT": str(ports["streamer"]),
        "PIXELFLEET_SFU_PORT": str(ports["sfu"]),
        "PIXELFLEET_SESSION_TOKEN_SECRET": SECRET,
        "PIXELFLEET_ADMIN_TOKEN": ADMIN,
        "PIXELFLEET_TURN__PROVIDER": "rest-secret",
        "PIXELFLEET_TURN__URLS": "turn:127.0.0.1:3478?transport=udp",
        "PIXELFLEET_TURN__SECRETS": "t" * 32,
        "PIXELFLEET_LOG_FORMAT": "json",
    }
    child = await start_process("signaling", env=env)
    for port in ports.values():
        await child.wait_for_port(port)
    yield Box(child, ports)


def streamer_token(stid: str, *, tenant: str = "a", ttl_s: int = 300, now: float | None = None) -> str:
    return mint_streamer(KEYS, tenant=tenant, host_id="h1", streamer_id=stid, ttl_s=ttl_s, now=now)


async def refused_upgrade(url: str) -> int:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(url)
    return caught.value.status


async def get(http: aiohttp.ClientSession, url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def close_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    async with asyncio.timeout(10):
        async for _ in ws:
            pass
    return ws.close_code


async def identified(http: aiohttp.ClientSession, url: str, stid: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(url)
    await ws.send_str(orjson.dumps({"type": "endpointId", "id": stid}).decode())
    async with asyncio.timeout(10):
        while True:
            msg = orjson.loads((await ws.receive()).data)
            if msg["type"] == "endpointIdConfirm":
                assert msg["committedId"] == stid
                return ws


async def test_streamer_and_sfu_ports_need_a_streamer_credential(box: Box) -> None:
    assert await refused_upgrade(box.url("sfu")) == 401  # the SFU-port subscribe without a token
    await box.audited("streamer_credential_missing")
    assert await refused_upgrade(box.url("streamer")) == 401
    session = mint(KEYS, tenant="a", session_id="s1", streamer_id="h1-0", ttl_s=60)
    assert await refused_upgrade(box.url("streamer", f"/?token={session}")) == 401  # a player's token
    await box.audited("streamer_credential_invalid")
    good = streamer_token("h1-0")
    claims = jwt.decode(good, options={"verify_signature": False})
    forged = {
        "other-key": mint_streamer(TokenKeys.hs256("z" * 32), tenant="a", host_id="h", streamer_id="h1-0", ttl_s=60),
        "expired": streamer_token("h1-0", ttl_s=60, now=1_000_000),
        "alg-none": jwt.encode(claims, "", algorithm="none"),
        "tampered": jwt.encode({**claims, "stid": "h1-1"}, "x" * 40, algorithm="HS256"),
    }
    for token in forged.values():
        assert await refused_upgrade(box.url("sfu", f"/?token={token}")) == 401
        assert await refused_upgrade(box.url("streamer", f"/?token={token}")) == 401
    assert await refused_upgrade(box.url("player", f"/?token={good}")) == 401  # a streamer credential as a session
    await box.audited("session_token_refused")


async def test_slot_hijack_and_absurd_ids_refused(box: Box) -> None:
    async with aiohttp.ClientSession() as http:
        owner = await identified(http, box.url("streamer", f"/?token={streamer_token('h1-0')}"), "h1-0")
        other = await http.ws_connect(box.url("streamer", f"/?token={streamer_token('h1-1')}"))
        await other.send_str('{"type":"endpointId","id":"h1-0"}')  # another slot's credential
        assert await close_code(other) == 4403
        twin = await http.ws_connect(box.url("streamer", f"/?token={streamer_token('h1-0')}"))
        await twin.send_str('{"type":"endpointId","id":"h1-0"}')  # the id is held: never renamed
        assert await close_code(twin) == 4409
        for bad in ("x" * 200, "h1\r\nSet-Cookie: a=b", "<script>alert(1)</script>"):
            ws = await http.ws_connect(box.url("streamer", f"/?token={streamer_token(bad)}"))
            await ws.send_str(orjson.dumps({"type": "endpointId", "id": bad}).decode())
            assert await close_code(ws) == 4400
        body = (await get(http, box.http("/api/streamers/h1-0"), ADMIN))[1]
        assert body["streaming"] is True and body["credentialId"]  # the real streamer still holds it
        await owner.close()


async def test_listings_and_turn_need_a_token(box: Box) -> None:
    async with aiohttp.ClientSession() as http:
        a = await identified(http, box.url("streamer", f"/?token={streamer_token('a-0')}"), "a-0")
        b = await identified(http, box.url("streamer", f"/?token={streamer_token('b-0', tenant='b')}"), "b-0")
        for path in ("/api/streamers", "/api/players", "/api/status", "/api/streamers/a-0"):
            assert (await get(http, box.http(path)))[0] == 401
        await box.audited("listing_unauthenticated")
        session = mint(KEYS, tenant="a", session_id="s1", streamer_id="a-0", ttl_s=60)
        seen = (await get(http, box.http("/api/streamers"), session))[1]
        assert [s["streamerId"] for s in seen] == ["a-0"]
        assert (await get(http, box.http(f"/api/streamers/b-0?token={session}")))[0] == 404
        everything = (await get(http, box.http("/api/streamers"), ADMIN))[1]
        assert {s["streamerId"] for s in everything} == {"a-0", "b-0"}
        player = await http.ws_connect(box.url("player", f"/?token={session}"))
        await player.send_str('{"type":"listStreamers"}')
        async with asyncio.timeout(10):
            while (msg := orjson.loads((await player.receive()).data))["type"] != "streamerList":
                pass
        assert msg["ids"] == ["a-0"]
        assert (await get(http, box.http("/api/turn-credentials")))[0] == 401
        await box.audited("turn_credentials_unauthenticated")
        fresh = mint(KEYS, tenant="a", session_id="s2", streamer_id="a-0", ttl_s=60)
        grant = (await get(http, box.http("/api/turn-credentials"), fresh))[1]
        assert grant["ttl"] <= 3600 and grant["iceServers"]
        for ws in (a, b, player):
            await ws.close()


async def test_streamer_turn_credentials_end_with_its_credential(box: Box) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(box.url("streamer", f"/?token={streamer_token('h1-5', ttl_s=120)}"))
        async with asyncio.timeout(10):
            while (msg := orjson.loads((await ws.receive()).data))["type"] != "config":
                pass
        turn = [s for s in msg["peerConnectionOptions"]["iceServers"] if "username" in s][0]
        expires = int(turn["username"].split(":")[0])
        import time

        assert expires <= time.time() + 125  # not Epic's ten years, nor the 30-day default
        await ws.close()


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


async def test_nul_path_is_400_and_headers_guard_the_page(box: Box) -> None:
    head = await asyncio.to_thread(raw_request, box.ports["player"], b"GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head[:80]
    async with aiohttp.ClientSession() as http:
        async with http.get(box.http("/")) as page:
            pass
        assert "frame-ancestors 'self'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Frame-Options"] == "SAMEORIGIN"
        assert page.headers["Server"] == "pixelfleet"  # no product version
    assert "Traceback" not in box.child.output(None)


async def test_unmasked_client_frame_closed_1002(box: Box) -> None:
    token = streamer_token("h1-7")

    def attack() -> bytes:
        key = b64encode(os.urandom(16)).decode()
        with socket.create_connection(("127.0.0.1", box.ports["streamer"]), timeout=10) as s:
            s.sendall(
                f"GET /?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(4096)
            payload = b'{"type":"ping","time":1}'
            s.sendall(bytes((0x81, len(payload))) + payload)  # no mask bit
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    return data
                data += chunk

    data = await asyncio.to_thread(attack)
    assert b"\x88" in data and (1002).to_bytes(2, "big") + b"client frames must be masked" in data
    await box.audited("unmasked_frame")


async def minted(*args: str) -> str:
    """A credential from ``pixelfleet streamer-token``, as an operator mints one."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pixelfleet", "streamer-token", *args,
        env={**os.environ, "PIXELFLEET_SESSION_TOKEN_SECRET": SECRET},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def received(ws: aiohttp.ClientWebSocketResponse, kind: str) -> list[dict[str, Any]]:
    """Every message up to and including the first of type ``kind``."""
    seen = []
    async with asyncio.timeout(10):
        while True:
            seen.append(orjson.loads((await ws.receive()).data))
            if seen[-1]["type"] == kind:
                return seen


async def test_an_sfu_with_a_minted_credential_serves_its_tenant_only(box: Box) -> None:
    """``pixelfleet streamer-token --sfu`` mints what the SFU port admits: the SFU registers
    its own id and subscribes to its tenant's streamer; another id is closed 4403, another
    tenant's streamer does not exist for it, and no or a forged credential is a 401."""
    credential = await minted("--sfu", "sfu-1", "--tenant", "a")
    assert verify_streamer(KEYS, credential).streamer_id == "sfu-1"
    forged = jwt.encode(jwt.decode(credential, options={"verify_signature": False}), "f" * 40, algorithm="HS256")
    for refused in ("/", f"/?token={forged}"):
        assert await refused_upgrade(box.url("sfu", refused)) == 401
    async with aiohttp.ClientSession() as http:
        mine = await identified(http, box.url("streamer", f"/?token={streamer_token('cam-a', tenant='a')}"), "cam-a")
        theirs = await identified(http, box.url("streamer", f"/?token={streamer_token('cam-b', tenant='b')}"), "cam-b")
        impostor = await http.ws_connect(box.url("sfu", f"/?token={credential}"))
        await impostor.send_str('{"type":"endpointId","id":"sfu-2"}')  # not the credential's id
        assert await close_code(impostor) == 4403
        sfu = await identified(http, box.url("sfu", f"/?token={credential}"), "sfu-1")
        await sfu.send_str('{"type":"subscribe","streamerId":"cam-b"}')  # another tenant's: nothing happens
        await sfu.send_str('{"type":"subscribe","streamerId":"cam-a"}')
        joined = (await received(mine, "playerConnected"))[-1]
        assert joined["sfu"] is True
        await theirs.send_str('{"type":"ping","time":1}')
        assert "playerConnected" not in [m["type"] for m in await received(theirs, "pong")]
        for ws in (sfu, mine, theirs):
            await ws.close()
