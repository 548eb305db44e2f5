"""Epic's stock frontend against signalling with auth on (issue 11, "Close every door").

The same stock library as ``test_epic_frontend.py``, unchanged, against a signalling
server with a session-token key, so every door checks its credential:

- the streamer presents a streamer credential as ``?token=`` on its URL, minted with
  ``pixelfleet streamer-token`` and carried exactly as UE's
  ``-PixelStreamingURL="ws://HOST:8888/?token=<credential>"`` carries it;
- the frontend presents a session token as ``?token=`` on its ``ss`` setting, which the
  library opens verbatim (docs/protocol.md, "Epic's frontend with a session token").

Refusals are asserted as a browser and UE see them: HTTP 401 at the upgrade, no socket,
no offer, and no player at the streamer.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import aiohttp
import jwt
import pytest

from pixelfleet.tokens import TokenKeys, mint
from tests.e2e.conftest import OpenPage, RunningStreamer, Stack, StartStack, StartStreamer, WaitUntil
from tests.e2e.test_epic_frontend import epic_state, wait_js, wait_streaming

if TYPE_CHECKING:
    from playwright.async_api import Page, WebSocket

pytestmark = pytest.mark.e2e

SECRET = "e2e-session-token-secret-" + "k" * 24
ADMIN = "e2e-admin-token-" + "a" * 24
KEYS = TokenKeys.hs256(SECRET)
TENANT = "e2e"
# How Chromium reports an upgrade answered 401 (its net::ERR_INVALID_AUTH_CREDENTIALS).
BROWSER_401 = "HTTP Authentication failed"


async def streamer_credential(streamer_id: str) -> str:
    """What an operator runs for a UE build started by hand (docs/protocol.md)."""
    env = {**os.environ, "PIXELFLEET_SESSION_TOKEN_SECRET": SECRET}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "pixelfleet", "streamer-token", "--streamer", streamer_id, "--host", "e2e-host", "--tenant", TENANT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


def session_token(streamer_id: str, keys: TokenKeys = KEYS) -> str:
    """What the matchmaker hands a player for a slot (``POST /api/v1/sessions``)."""
    return mint(keys, tenant=TENANT, session_id=f"s-{uuid.uuid4().hex[:8]}", streamer_id=streamer_id, ttl_s=120)


def epic_page(stack: Stack, version: str, token: str | None, streamer_id: str) -> str:
    """The frontend's ``ss`` carries the session token in its own query string."""
    ss = f"{stack.signalling_url}/" + (f"?token={token}" if token else "")
    query = urlencode({"ss": ss, "StreamerId": streamer_id, "KeepaliveDelay": "1000"})
    return f"{stack.frontend_origin}/epic-ue{version}.html?{query}"


async def upgrade_status(url: str) -> int:
    """The HTTP status of a WebSocket upgrade (101 when it opens)."""
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


@pytest.fixture
async def auth_stack(start_stack: StartStack) -> Stack:
    stack = await start_stack(session_token_secret=SECRET, admin_token=ADMIN)
    assert stack.server.node.access.keys is not None  # auth on, not open mode
    return stack


@pytest.fixture
async def auth_streamer(auth_stack: Stack, start_streamer: StartStreamer) -> RunningStreamer:
    sid = f"e2e-{uuid.uuid4().hex[:8]}"
    return await start_streamer(sid, stack=auth_stack, token=await streamer_credential(sid))


@pytest.mark.parametrize("version", ["5.7", "5.5"])
async def test_epic_frontend_streams_with_auth_on(
    version: str,
    epic_bundles: Path,
    auth_stack: Stack,
    auth_streamer: RunningStreamer,
    open_page: OpenPage,
    wait_until: WaitUntil,
) -> None:
    sid = auth_streamer.streamer_id
    page, log = await open_page(epic_page(auth_stack, version, session_token(sid), sid))

    await wait_streaming(page, log)
    await page.keyboard.press("a")
    await wait_until(
        lambda: "KeyDown" in auth_streamer.input_names(),
        "Epic frontend input at the streamer",
        detail=lambda: f"received {auth_streamer.input_names()}\n{log.text()}",
    )
    state = await epic_state(page)
    assert state["closes"] == [] and state["subscribeFailed"] is None, state
    assert "offer" in state["signallingIn"] and "answer" in state["signallingOut"], state
    assert "[pageerror]" not in log.text(), log.text()


async def refused_page(open_page: OpenPage, url: str) -> tuple[Page, list[str]]:
    """Opens ``url`` and returns once its signalling socket failed; the list holds what
    Chromium said about each failed upgrade (its handshake error, with the status)."""
    errors: list[str] = []

    def watch(ws: WebSocket) -> None:
        ws.on("socketerror", lambda error: errors.append(error))

    # Listen before the page's script runs: the frontend connects at once (AutoConnect).
    page, log = await open_page(url.split("/epic-", 1)[0] + "/")  # the page's origin, no script
    page.on("websocket", watch)
    await page.goto(url)
    await wait_js(page, "window.epic.closes.length > 0", log)
    return page, errors


@pytest.mark.parametrize("case", ["no token", "forged", "streamer credential", "reused"])
async def test_epic_frontend_without_a_valid_session_token_is_refused(
    case: str, epic_bundles: Path, auth_stack: Stack, auth_streamer: RunningStreamer, open_page: OpenPage
) -> None:
    """Refused at the upgrade (HTTP 401): the library sees its socket fail, never an
    offer, and the streamer never hears of a player."""
    sid = auth_streamer.streamer_id
    tokens = {
        "no token": None,
        "forged": session_token(sid, TokenKeys.hs256("forged-" + "z" * 32)),
        "streamer credential": await streamer_credential(sid),  # the other door's credential
        "reused": session_token(sid),
    }
    token = tokens[case]
    if case == "reused":  # single-use: a token leaked from a URL opens no second socket
        assert await upgrade_status(f"{auth_stack.signalling_url}/?token={token}") == 101
    page, errors = await refused_page(open_page, epic_page(auth_stack, "5.7", token, sid))

    assert any(BROWSER_401 in e for e in errors), errors
    state = await epic_state(page)
    assert state["signallingIn"] == [] and state["signallingOut"] == [], state  # no socket, so no offer
    assert state["framesDecoded"] == 0 and "webRtcConnected" not in state["events"], state
    assert auth_streamer.streamer.peers == {} and auth_streamer.input_players() == set()
    # The same upgrade outside the browser, for the status itself.
    suffix = f"?token={token}" if token else ""
    assert await upgrade_status(f"{auth_stack.signalling_url}/{suffix}") == 401


async def test_streamer_needs_its_credential_on_the_streamer_url(
    auth_stack: Stack, auth_streamer: RunningStreamer
) -> None:
    """What UE's WebSocket sees on the streamer port, with the URL forms of its
    ``-PixelStreamingURL``: 401 without a valid streamer credential."""
    sid = "e2e-ue"
    base = f"{auth_stack.streamer_url}/"
    good = await streamer_credential(sid)
    assert await upgrade_status(base) == 401  # no credential
    assert await upgrade_status(f"{base}?token=") == 401
    assert await upgrade_status(f"{base}?token={session_token(sid)}") == 401  # a player's session token
    claims = jwt.decode(good, options={"verify_signature": False})
    forged = jwt.encode({**claims, "stid": "someone-else"}, "forged-" + "z" * 32, algorithm="HS256")
    assert await upgrade_status(f"{base}?token={forged}") == 401
    assert await upgrade_status(f"{base}?token={good}") == 101
    assert await upgrade_status(f"{auth_stack.streamer_url}?token={good}") == 101  # no path, as the agent writes it

    # The admitted streamer is listed with its credential's id (what the agent checks).
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as http,
        http.get(f"{auth_stack.player_origin}/api/streamers/{auth_streamer.streamer_id}") as resp,
    ):
        assert resp.status == 200
        listing = await resp.json()
    presented = auth_streamer.streamer.url.partition("?token=")[2]
    assert listing["streaming"] is True, listing
    assert listing["credentialId"] == jwt.decode(presented, options={"verify_signature": False})["jti"], listing
