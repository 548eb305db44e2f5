"""Signalling's ``/metrics`` on a real process moves by exactly what scripted peers did."""

from __future__ import annotations

import os

import aiohttp

from pixelfleet.net import free_port
from signaling.access import REFUSAL_REASONS
from tests.conftest import StartProcess
from tests.support.scrape import scrape, value
from tests.support.ws_peers import connect_player, connect_streamer

P = "pixelfleet_signaling_"


async def test_counters_and_histograms_move_by_what_peers_did(start_process: StartProcess) -> None:
    player, streamer = free_port(), free_port()
    server = await start_process(
        "signaling", "--player-port", str(player), "--streamer-port", str(streamer), "--sfu-port", "-1",
        "--player-rate", "5", "--player-burst", "5",
    )  # fmt: skip
    await server.wait_for_port(player)
    url = f"http://127.0.0.1:{player}/metrics"
    async with aiohttp.ClientSession() as http:
        before = await scrape(http, url)
        cam = await connect_streamer(http, streamer, "Cam")
        p1, pid = await connect_player(http, player, cam, "Cam")  # listStreamers + subscribe
        await p1.send(type="answer", sdp="v=0")  # relayed to the streamer
        await cam.recv_type("answer")
        await p1.send(type="nonsense")  # unknown type: refused, connection kept
        await p1.recv_type("error")
        await p1.ws.send_str("{not json")
        await p1.recv_type("error")
        during = await scrape(http, url)
        assert value(during, P + "open_connections", role="player") == 1
        assert value(during, P + "open_connections", role="streamer") == 1
        flood, _ = await connect_player(http, player)  # 1 message so far; 5 allowed in a burst
        for _ in range(10):
            await flood.send(type="ping", time=1)
        assert (await flood.closed())[0] == 4429
        await p1.ws.close()
        await cam.ws.close()
        after = await scrape(http, url)
        for _ in range(50):  # the server notes a close after the client sees it
            if value(after, P + "open_connections", role="streamer") == 0:
                break
            after = await scrape(http, url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(P + "connections_total", role="player") == 2
    assert moved(P + "connections_total", role="streamer") == 1
    assert moved(P + "messages_total", role="player", type="listStreamers") == 2
    assert moved(P + "messages_total", role="player", type="subscribe") == 1
    assert moved(P + "messages_total", role="player", type="answer") == 1
    assert moved(P + "messages_total", role="streamer", type="endpointId") == 1
    assert moved(P + "messages_refused_total", role="player", reason="unknown_type") == 1
    assert moved(P + "messages_refused_total", role="player", reason="invalid_json") == 1
    assert moved(P + "rate_limit_hits_total", role="player") == 1
    assert moved(P + "closes_total", role="player", code="4429") == 1
    assert moved(P + "closes_total", role="player", code="1000") == 1
    assert moved(P + "closes_total", role="streamer", code="1000") == 1
    assert moved(P + "handshake_seconds_count", role="player") == 2
    assert moved(P + "handshake_seconds_count", role="streamer") == 1
    assert value(after, P + "open_connections", role="player") == 0
    assert value(after, P + "draining") == 0
    assert value(after, P + "cluster_ready") == 1
    assert pid


async def refused(http: aiohttp.ClientSession, url: str, **headers: str) -> int:
    try:
        ws = await http.ws_connect(url, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_refusals_at_the_door_are_counted_by_reason(start_process: StartProcess) -> None:
    """Each limit and check refused at the upgrade moves ``access_refusals_total`` by one
    under its reason; every known reason is exported from the start (0), for alert rules."""
    player, streamer = free_port(), free_port()
    env = {
        **os.environ,
        "PIXELFLEET_CONNECT_LIMITS_EXEMPT": "",  # loopback is limited like anyone
        "PIXELFLEET_CONNECT_RATE_PER_IP": "0.001",
        "PIXELFLEET_CONNECT_BURST_PER_IP": "3",
        "PIXELFLEET_ALLOWED_ORIGINS": "https://play.example.com",
        "PIXELFLEET_SESSION_TOKEN_SECRET": "s" * 40,
    }
    server = await start_process(
        "signaling", "--player-port", str(player), "--streamer-port", str(streamer), "--sfu-port", "-1", env=env
    )
    await server.wait_for_port(player)
    url = f"http://127.0.0.1:{player}/metrics"
    async with aiohttp.ClientSession() as http:
        before = await scrape(http, url)
        for reason in REFUSAL_REASONS:
            assert (P + "access_refusals_total", frozenset({("reason", reason)})) in before
        ws = f"ws://127.0.0.1:{player}/"
        assert await refused(http, ws, Origin="https://evil.example.com") == 403  # before the rate: no token spent
        assert await refused(http, f"ws://127.0.0.1:{streamer}/") == 401  # no credential: 1 token
        assert await refused(http, ws + "?token=forged") == 401  # a bad session token: 1 token
        assert await refused(http, f"ws://127.0.0.1:{streamer}/?token=forged") == 401  # 1 token: the burst is spent
        assert await refused(http, ws) == 429
        after = await scrape(http, url)

    def moved(reason: str) -> float:
        name = P + "access_refusals_total"
        return value(after, name, reason=reason) - value(before, name, reason=reason)

    assert {r: moved(r) for r in REFUSAL_REASONS if moved(r)} == {
        "origin_not_allowed": 1,
        "streamer_credential_missing": 1,
        "session_token_refused": 1,
        "streamer_credential_invalid": 1,
        "connect_rate": 1,
    }
