"""Epic's stock Pixel Streaming frontend library (npm, UE5.7 and UE5.5 lines) in a
real Chromium against our signalling server and a synthetic streamer.

The page comes from another origin than the signalling server (as it would from a
CDN), so it is told where to connect with ``ss`` — Epic's default is the page's own
host and port. ``StreamerId`` picks the streamer; ``KeepaliveDelay`` makes the
frontend ping every second instead of every 30 s, and it drops its socket when a
pong is missing, so a passing test proves we answer pings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from streamer import input_messages as im
from tests.e2e.conftest import OpenPage, PageLog, RunningStreamer, Stack, StartStack, StartStreamer, WaitUntil

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = pytest.mark.e2e

WAIT_MS = 60_000

STATE_JS = "(() => { const s = Object.assign({}, window.epic); delete s.ps; return s; })()"


async def epic_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate(STATE_JS)
    return state


async def wait_js(page: Page, expression: str, log: PageLog) -> None:
    try:
        await page.wait_for_function(f"() => ({expression})", timeout=WAIT_MS, polling=200)
    except Exception as exc:
        raise AssertionError(f"{expression}: {exc}\nepic={await epic_state(page)}\nconsole:\n{log.text()}") from None


async def wait_streaming(page: Page, log: PageLog) -> None:
    """Signalling and media: the library's own events, then frames from its stats
    (statsReceived, once a second), rising, and the video element playing."""
    await wait_js(page, "window.epic.events.includes('webRtcConnected')", log)
    await wait_js(page, "window.epic.events.includes('dataChannelOpen')", log)
    await wait_js(page, "window.epic.framesDecoded > 0", log)
    first = await page.evaluate("window.epic.framesDecoded")
    await wait_js(page, f"window.epic.framesDecoded > {first}", log)
    await wait_js(
        page,
        "(() => { const v = document.querySelector('video'); return v && v.videoWidth > 0 && v.currentTime > 0; })()",
        log,
    )


@pytest.mark.parametrize("version", ["5.7", "5.5"])
async def test_epic_frontend_streams_and_sends_input(
    version: str,
    epic_bundles: Path,
    stack: Stack,
    streamer: RunningStreamer,
    open_page: OpenPage,
    wait_until: WaitUntil,
) -> None:
    page, log = await open_page(stack.epic_page(version, StreamerId=streamer.streamer_id, KeepaliveDelay="1000"))

    await wait_streaming(page, log)

    # Input through Epic's own controllers (hovering mouse; keyboard on document).
    video = page.locator("video")
    box = await video.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.75
    await page.mouse.move(x - 40, y - 20)
    await page.mouse.move(x, y, steps=4)
    await page.mouse.click(x, y)
    await page.keyboard.press("a")

    wanted = {"MouseMove", "MouseDown", "MouseUp", "KeyDown", "KeyUp"}
    await wait_until(
        lambda: wanted <= set(streamer.input_names()),
        "Epic frontend input at the streamer",
        detail=lambda: f"received {streamer.input_names()}\n{log.text()}",
    )
    assert len(streamer.input_players()) == 1
    inputs = streamer.inputs()
    assert im.KeyDown(key_code=65, is_repeat=False) in inputs
    assert im.KeyUp(key_code=65) in inputs
    down = next(m for m in inputs if isinstance(m, im.MouseDown))
    assert down.button == 0 and 0 < down.x < 65535 and 0 < down.y < 65535
    # The streamer sent its Protocol table, so the frontend asked for these.
    assert {"RequestInitialSettings", "RequestQualityControl"} <= set(streamer.input_names())

    # Keepalive: the frontend pinged, we answered, it kept its socket.
    await wait_js(page, "window.epic.signallingIn.filter(t => t === 'pong').length >= 2", log)
    state = await epic_state(page)
    assert state["closes"] == [], state
    assert state["subscribeFailed"] is None
    assert "ping" in state["signallingOut"]
    assert "answer" in state["signallingOut"] and "offer" in state["signallingIn"]
    assert "[pageerror]" not in log.text(), log.text()


async def test_epic_frontend_hears_subscribe_failed(
    epic_bundles: Path, start_stack: StartStack, start_streamer: StartStreamer, open_page: OpenPage
) -> None:
    """A full streamer: the second Epic player gets subscribeFailed (and the library
    stops trying)."""
    stack = await start_stack(max_players_per_streamer=1)
    only = await start_streamer(stack=stack)
    first, log1 = await open_page(stack.epic_page("5.7", StreamerId=only.streamer_id))
    await wait_js(first, "window.epic.framesDecoded > 0", log1)

    second, log2 = await open_page(stack.epic_page("5.7", StreamerId=only.streamer_id))
    await wait_js(second, "window.epic.subscribeFailed !== null", log2)
    assert "full" in (await epic_state(second))["subscribeFailed"]


async def test_epic_frontend_streams_from_a_streamer_on_another_node(
    epic_bundles: Path,
    redis_url: str,
    start_stack: StartStack,
    start_streamer: StartStreamer,
    open_page: OpenPage,
    wait_until: WaitUntil,
) -> None:
    """Two signalling nodes on one Redis: the page talks to one, the streamer to the other."""
    near = await start_stack(state_url=redis_url, node_id="e2e-near")
    far = await start_stack(state_url=redis_url, node_id="e2e-far")
    streamer = await start_streamer(stack=far)
    page, log = await open_page(near.epic_page("5.7", StreamerId=streamer.streamer_id, KeepaliveDelay="1000"))
    await wait_js(page, "window.epic.events.includes('dataChannelOpen')", log)
    await wait_js(page, "window.epic.framesDecoded > 0", log)
    await page.keyboard.press("b")
    await wait_until(
        lambda: "KeyDown" in streamer.input_names(),
        "input across nodes",
        detail=lambda: f"received {streamer.input_names()}\n{log.text()}",
    )
    assert [p.split("-", 1)[0] for p in streamer.input_players()] == ["Playere2e"]  # a player of the near node
    state = await epic_state(page)
    assert state["closes"] == [] and state["subscribeFailed"] is None, state
