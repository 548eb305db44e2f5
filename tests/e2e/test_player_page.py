"""Our player page (signaling/static/player.html) in a real Chromium, served by the
signalling server itself, against synthetic streamers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pytest

from streamer import input_messages as im
from tests.e2e.conftest import OpenPage, PageLog, RunningStreamer, Stack, StartStack, StartStreamer, WaitUntil

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = pytest.mark.e2e

WAIT_MS = 60_000


async def state(page: Page) -> dict[str, Any]:
    """``window.pixelfleet`` as plain JSON; empty before the page's script has set it."""
    info: dict[str, Any] | None = await page.evaluate("JSON.parse(JSON.stringify(window.pixelfleet || null))")
    return info or {}


async def wait_for_rising_frames(page: Page, log: PageLog) -> None:
    """framesDecoded (from getStats, polled by the page every second) goes above 0 and
    then rises again: video is being decoded, not just one frame."""
    try:
        await page.wait_for_function(
            "() => window.pixelfleet && window.pixelfleet.framesDecoded > 0", timeout=WAIT_MS, polling=200
        )
        first = await page.evaluate("window.pixelfleet.framesDecoded")
        await page.wait_for_function(f"() => window.pixelfleet.framesDecoded > {first}", timeout=WAIT_MS, polling=200)
    except Exception as exc:
        raise AssertionError(
            f"no rising framesDecoded: {exc}\nstate={await state(page)}\nconsole:\n{log.text()}"
        ) from None


async def picture_point(page: Page, fx: float, fy: float) -> tuple[float, float, int, int]:
    """A point at (fx, fy) of the displayed picture (the video is letterboxed) and the
    coordinates Epic's protocol should carry for it."""
    box: dict[str, float] = await page.evaluate("""() => {
        const v = document.getElementById('video');
        const r = v.getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height,
                vw: v.videoWidth, vh: v.videoHeight};
    }""")
    scale = min(box["width"] / box["vw"], box["height"] / box["vh"])
    w, h = box["vw"] * scale, box["vh"] * scale
    left = box["left"] + (box["width"] - w) / 2
    top = box["top"] + (box["height"] - h) / 2
    x, y = left + fx * w, top + fy * h
    return x, y, math.floor(fx * 65536), math.floor(fy * 65536)


async def test_plays_video_and_sends_input(
    stack: Stack, streamer: RunningStreamer, open_page: OpenPage, wait_until: WaitUntil
) -> None:
    page, log = await open_page(f"{stack.player_origin}/?StreamerId={streamer.streamer_id}")
    await wait_for_rising_frames(page, log)
    await page.wait_for_function("() => window.pixelfleet.dataChannelOpen === true", timeout=WAIT_MS)

    info = await state(page)
    assert info["state"] == "streaming"
    assert info["streamerId"] == streamer.streamer_id
    assert info["signallingState"] == "open"
    assert info["peerState"] == "connected"
    player_id = info["playerId"]
    assert player_id, "the offer should tell the page its player id"
    stats = info["stats"]
    assert stats["width"] > 0 and stats["height"] > 0
    for key in ("bitrateKbps", "fps", "packetsLost", "rttMs"):
        assert key in stats, f"stat {key} missing: {stats}"

    # Input: move, click and type on the video; the streamer decodes what arrives.
    x, y, want_x, want_y = await picture_point(page, 0.25, 0.75)
    await page.mouse.move(x - 40, y - 20)
    await page.mouse.move(x, y, steps=4)
    await page.mouse.click(x, y)
    await page.keyboard.press("a")

    def names() -> list[str]:
        return streamer.input_names(player_id)

    await wait_until(
        lambda: {"MouseMove", "MouseDown", "MouseUp", "KeyDown", "KeyUp"} <= set(names()),
        "mouse and keyboard input at the streamer",
        detail=lambda: f"received {names()}; page {log.text()}",
    )

    inputs = streamer.inputs(player_id)
    down = next(m for m in inputs if isinstance(m, im.MouseDown))
    assert down.button == 0
    # A pixel of slack either way: 1/640 of the picture is ~102 units.
    assert abs(down.x - want_x) <= 300 and abs(down.y - want_y) <= 300, (down, want_x, want_y)
    moves = [m for m in inputs if isinstance(m, im.MouseMove)]
    assert any(m.delta_x > 0 and m.delta_y > 0 for m in moves), moves  # moved right and down
    assert im.KeyDown(key_code=65, is_repeat=False) in inputs  # 'a'
    assert im.KeyUp(key_code=65) in inputs
    assert im.KeyPress(char_code=ord("a")) in inputs
    assert not log.text().count("[pageerror]"), log.text()


async def test_waits_for_a_streamer_then_joins_the_only_one(
    stack: Stack, start_streamer: StartStreamer, open_page: OpenPage
) -> None:
    """No StreamerId and no streamer yet: the page keeps listing (every 2 s), then
    subscribes to the one that appears."""
    page, log = await open_page(f"{stack.player_origin}/")
    await page.wait_for_function("() => window.pixelfleet.state === 'waiting'", timeout=WAIT_MS)
    late = await start_streamer()
    await wait_for_rising_frames(page, log)
    assert (await state(page))["streamerId"] == late.streamer_id


async def test_answers_server_pings_and_keeps_its_own(
    stack: Stack, streamer: RunningStreamer, open_page: OpenPage
) -> None:
    """The page pings (here every 300 ms instead of 30 s) and the server's pongs
    come back; the socket stays open."""
    page, log = await open_page(f"{stack.player_origin}/?StreamerId={streamer.streamer_id}&KeepaliveDelay=300")
    await page.wait_for_function("() => window.pixelfleet.pongs >= 3", timeout=WAIT_MS)
    info = await state(page)
    assert info["signallingState"] == "open"
    assert info["closeCodes"] == []


async def test_signalling_address_from_a_hook(stack: Stack, streamer: RunningStreamer, open_page: OpenPage) -> None:
    """pixelfleetOptions.resolveSignalling (where a matchmaker will plug in) decides
    where to connect; here the page comes from another origin than the server."""
    hook = (
        "window.pixelfleetOptions = {resolveSignalling: async () => "
        f"({{url: '{stack.signalling_url}/', streamerId: '{streamer.streamer_id}'}})}};"
    )
    page, log = await open_page(f"{stack.frontend_origin}/player/player.html", init_script=hook)
    await wait_for_rising_frames(page, log)
    assert (await state(page))["signallingUrl"] == f"{stack.signalling_url}/"


async def test_shows_subscribe_failed(
    start_stack: StartStack, start_streamer: StartStreamer, open_page: OpenPage
) -> None:
    """A streamer that is full answers subscribeFailed; the page says so and stops."""
    stack = await start_stack(max_players_per_streamer=1)
    only = await start_streamer(stack=stack)
    first, first_log = await open_page(f"{stack.player_origin}/?StreamerId={only.streamer_id}")
    await wait_for_rising_frames(first, first_log)

    second, _ = await open_page(f"{stack.player_origin}/?StreamerId={only.streamer_id}")
    await second.wait_for_function("() => window.pixelfleet.state === 'error'", timeout=WAIT_MS)
    info = await state(second)
    assert any("full" in e for e in info["errors"]), info["errors"]
    assert "full" in await second.locator("#overlay-text").inner_text()


async def test_input_encoding_matches_epic_layouts(stack: Stack, open_page: OpenPage) -> None:
    """Byte layouts of the page's encoder, decoded by streamer.input_messages (both
    written from Epic's StreamMessageController.ts)."""
    page, _ = await open_page(f"{stack.player_origin}/", init_script="window.pixelfleetOptions = {autoStart: false};")
    assert (await state(page))["signallingState"] == "idle"
    cases: list[tuple[str, list[Any], Any]] = [
        ("MouseMove", [65535, 0, -32768, 32767], im.MouseMove(65535, 0, -32768, 32767)),
        ("MouseDown", [2, 1234, 54321], im.MouseDown(2, 1234, 54321)),
        ("MouseUp", [0, 1, 2], im.MouseUp(0, 1, 2)),
        ("MouseWheel", [-120, 100, 200], im.MouseWheel(-120, 100, 200)),
        ("MouseDouble", [0, 300, 400], im.MouseDouble(0, 300, 400)),
        ("KeyDown", [65, 1], im.KeyDown(65, True)),
        ("KeyUp", [253], im.KeyUp(253)),
        ("KeyPress", [0x263A], im.KeyPress(0x263A)),
        ("MouseEnter", [], im.MouseEnter()),
        ("RequestQualityControl", [], im.RequestQualityControl()),
    ]
    for name, values, expected in cases:
        raw = await page.evaluate(
            """([name, values]) => Array.from(new Uint8Array(
                PixelfleetPlayer.encodeMessage(PixelfleetPlayer.TO_STREAMER[name], values)))""",
            [name, values],
        )
        assert im.message_from_bytes(bytes(raw)) == expected, (name, raw)


async def test_rejoins_when_the_streamer_comes_back(
    stack: Stack, start_streamer: StartStreamer, open_page: OpenPage
) -> None:
    """The server closes a player's socket when its streamer leaves; the page
    reconnects, waits, and plays again once a streamer with that id is back."""
    first = await start_streamer()
    sid = first.streamer_id
    page, log = await open_page(f"{stack.player_origin}/?StreamerId={sid}")
    await wait_for_rising_frames(page, log)

    await first.streamer.stop()
    await page.wait_for_function(
        "() => ['reconnecting', 'waiting'].includes(window.pixelfleet.state)", timeout=WAIT_MS, polling=100
    )
    await start_streamer(sid)
    await page.wait_for_function("() => window.pixelfleet.state === 'streaming'", timeout=WAIT_MS)
    await wait_for_rising_frames(page, log)
    info = await state(page)
    assert info["streamerId"] == sid
