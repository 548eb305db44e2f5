"""TURN credentials handed out by a real ``pixelfleet signaling`` process are counted on
its ``/metrics`` by how (config greeting or the HTTP route) and to whom (role), exactly."""

from __future__ import annotations

import os

import aiohttp

from pixelfleet.net import free_port
from pixelfleet.tokens import TokenKeys, mint, mint_streamer
from tests.conftest import StartProcess
from tests.support.scrape import scrape, value
from tests.support.ws_peers import Peer

NAME = "pixelfleet_signaling_turn_credentials_issued_total"
SECRET = "s" * 40
KEYS = TokenKeys.hs256(SECRET)


def session_token(sid: str) -> str:
    return mint(KEYS, tenant="a", session_id=sid, streamer_id="Cam", ttl_s=300)


async def test_credentials_issued_are_counted_by_via_and_role(start_process: StartProcess) -> None:
    player, streamer = free_port(), free_port()
    env = {
        **os.environ,
        "PIXELFLEET_SESSION_TOKEN_SECRET": SECRET,
        "PIXELFLEET_TURN__PROVIDER": "rest-secret",
        "PIXELFLEET_TURN__URLS": "turn:127.0.0.1:3478?transport=udp",
        "PIXELFLEET_TURN__SECRETS": "t" * 32,
    }
    server = await start_process(
        "signaling", "--player-port", str(player), "--streamer-port", str(streamer), "--sfu-port", "-1", env=env
    )
    await server.wait_for_port(player)
    metrics = f"http://127.0.0.1:{player}/metrics"
    route = f"http://127.0.0.1:{player}/api/turn-credentials"
    async with aiohttp.ClientSession() as http:
        before = await scrape(http, metrics)
        for via, role in (("config", "player"), ("config", "streamer"), ("config", "sfu"), ("http", "player")):
            assert (NAME, frozenset({("via", via), ("role", role)})) in before  # 0 from the start
        cam_token = mint_streamer(KEYS, tenant="a", host_id="h1", streamer_id="Cam", ttl_s=300)
        cam = Peer(await http.ws_connect(f"ws://127.0.0.1:{streamer}/?token={cam_token}"))
        assert (await cam.recv())["type"] == "identify"
        config = await cam.recv()
        assert config["type"] == "config" and config["peerConnectionOptions"]["iceServers"]
        players = []
        for sid in ("s1", "s2"):
            p = Peer(await http.ws_connect(f"ws://127.0.0.1:{player}/?token={session_token(sid)}"))
            assert (await p.recv())["peerConnectionOptions"]["iceServers"][0]["username"].endswith(":" + sid)
            players.append(p)
        for sid in ("s3", "s4", "s5"):  # the route does not use the token up
            async with http.get(route, headers={"Authorization": f"Bearer {session_token(sid)}"}) as r:
                assert r.status == 200 and (await r.json())["iceServers"]
        async with http.get(route, headers={"Authorization": "Bearer forged"}) as r:
            assert r.status == 401  # refused: nothing handed out, nothing counted
        async with http.get(route) as r:
            assert r.status == 401
        after = await scrape(http, metrics)
        for peer in (cam, *players):
            await peer.ws.close()

    def moved(via: str, role: str) -> float:
        return value(after, NAME, via=via, role=role) - value(before, NAME, via=via, role=role)

    assert moved("config", "player") == 2
    assert moved("config", "streamer") == 1
    assert moved("config", "sfu") == 0
    assert moved("http", "player") == 3
