"""Epic's stock frontend (UE5.7) recovers by itself when its signalling node drains.

Three ``pixelfleet signaling`` processes on one real Redis. The synthetic streamer is on
node S; the player port of nodes A and B sits behind ``pixelfleet.balancer`` (least
connections over nodes whose ``/readyz`` says ok), as an NLB stands in front of the
Fargate tasks. The page reaches signalling only through the balancer. SIGTERM to the
page's node drains it: ``/readyz`` turns 503 (the balancer stops picking it), then its
sockets are closed with 1012. Epic's library reconnects on any close code but 1001 when
``MaxReconnectAttempts`` > 0; the harness page pins that to 0 for the other tests, so
this page passes the library's own default (3) back as a URL setting. Nothing in the
test touches the page after it opened: the reconnect, the new subscription and the new
stream are the library's own doing.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web

from pixelfleet.balancer import Balancer
from pixelfleet.balancer import Node as BalancedNode
from pixelfleet.net import free_port
from tests.conftest import StartProcess
from tests.e2e.conftest import OpenPage, _frontend_app
from tests.e2e.test_epic_frontend import epic_state, wait_js, wait_streaming
from tests.support.processes import Child

pytestmark = pytest.mark.e2e

WAIT_S = 60.0
RESTART = 1012  # a draining node's close code (signaling/errors.py SERVICE_RESTART)
EPIC_DEFAULT_RECONNECTS = "3"  # MaxReconnectAttempts' default in Epic's Config.ts (5.5 and 5.7)


class SigNode(NamedTuple):
    name: str
    child: Child
    player_port: int
    streamer_port: int

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.player_port}{path}"


async def get_json(node: SigNode, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(node.http(path)) as resp:
        return resp.status, await resp.json(content_type=None)


async def start_node(start_process: StartProcess, redis_url: str, name: str) -> SigNode:
    player, streamer, sfu = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "PIXELFLEET_NODE_TTL_S": "3",
        # Unready for a while before the sockets close, so the balancer (checking every
        # 0.2 s) has dropped the node before Epic's frontend comes back 2 s after the close.
        "PIXELFLEET_DRAIN_DELAY_S": "1.0",
    }
    child = await start_process(
        "signaling",
        *("--state-url", redis_url, "--node-id", name, "--log-format", "json"),
        *("--player-port", str(player), "--streamer-port", str(streamer), "--sfu-port", str(sfu)),
        env=env,
    )
    for port in (player, streamer):
        await child.wait_for_port(port, WAIT_S)
    node = SigNode(name, child, player, streamer)

    async def ready() -> bool:
        status, _ = await get_json(node, "/readyz")
        return status == 200

    await child.wait_until(ready, "/readyz 200", WAIT_S)
    return node


@pytest.fixture
async def frontend_origin() -> AsyncIterator[str]:
    """The Epic harness pages, served from their own origin (as from a CDN)."""
    runner = web.AppRunner(_frontend_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_epic_frontend_reconnects_by_itself_when_its_node_drains(
    epic_bundles: Path, redis_url: str, start_process: StartProcess, frontend_origin: str, open_page: OpenPage
) -> None:
    run = uuid.uuid4().hex[:6]  # the session's Redis is shared: names of our own
    a, b, s = [await start_node(start_process, redis_url, f"drain{run}{n}") for n in "abs"]
    cam = f"Cam{run}"
    streamer = await start_process(
        *("--url", f"ws://127.0.0.1:{s.streamer_port}", "--id", cam),
        *("--width", "320", "--height", "240", "--fps", "15", "--log-format", "json"),
        module="streamer",
    )

    async def listed_on_a_and_b() -> bool:
        for node in (a, b):
            _, body = await get_json(node, "/api/streamers")
            if not any(x.get("streamerId") == cam and x.get("streaming") for x in body):
                return False
        return True

    await streamer.wait_until(listed_on_a_and_b, f"{cam} listed on A and B", WAIT_S)

    behind = {n.name: BalancedNode(n.name, {"player": n.player_port}, health_port=n.player_port) for n in (a, b)}
    balancer = Balancer(list(behind.values()), {"player": 0}, health_period_s=0.2)
    await balancer.start()
    try:
        url = f"ws://127.0.0.1:{balancer.port('player')}"
        page, log = await open_page(
            f"{frontend_origin}/epic-ue5.7.html?ss={url}&StreamerId={cam}"
            f"&KeepaliveDelay=1000&MaxReconnectAttempts={EPIC_DEFAULT_RECONNECTS}"
        )
        await wait_streaming(page, log)
        assert (await epic_state(page))["closes"] == []

        # The page's only socket went to one of A and B: drain that one.
        [first] = [n for n in (a, b) if behind[n.name].connections == 1]
        [other] = [n for n in (a, b) if n is not first]
        assert behind[other.name].connections == 0
        _, status = await get_json(first, "/api/status")
        assert status["player_count"] == 1, status
        decoded_before = await page.evaluate("window.epic.framesDecoded")

        first.child.send(signal.SIGTERM)

        # The library sees its socket closed with the drain code...
        await wait_js(page, "window.epic.closes.length >= 1", log)
        assert (await epic_state(page))["closes"][0] == RESTART
        assert await first.child.wait(WAIT_S) == 0
        # ...comes back through the balancer to the survivor, subscribes and streams again.
        await wait_js(page, "window.epic.events.filter(e => e === 'webRtcConnected').length >= 2", log)
        await wait_js(page, "window.epic.events.filter(e => e === 'dataChannelOpen').length >= 2", log)
        # The old connection's stats stopped with it: a new value is the new stream's.
        await wait_js(page, f"window.epic.framesDecoded !== {decoded_before}", log)
        again = await page.evaluate("window.epic.framesDecoded")
        await wait_js(page, f"window.epic.framesDecoded > {again}", log)

        state = await epic_state(page)
        assert state["closes"] == [RESTART], state  # one drop, and the new socket holds
        assert state["subscribeFailed"] is None, state
        assert state["signallingIn"].count("offer") == 2, state
        assert behind[other.name].forwarded.get("player") == 1
        assert behind[first.name].forwarded.get("player") == 1  # never picked again
        _, status = await get_json(other, "/api/status")
        assert status["player_count"] == 1, status
        assert "[pageerror]" not in log.text(), log.text()
    finally:
        await balancer.stop()
