"""The player page through the matchmaker, against ``pixelfleet up`` run as a child
process exactly as a user runs it (embedded matchmaker, synthetic streamers as slots).

Set ``E2E_SCREENSHOTS=/some/dir`` to keep screenshots of the queue panel
and of a streaming page.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import pytest

from pixelfleet.net import free_port
from tests.conftest import StartProcess
from tests.e2e.conftest import OpenPage, PageLog, RunningStreamer, Stack
from tests.e2e.test_player_page import state, wait_for_rising_frames
from tests.support.processes import Child

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = pytest.mark.e2e

WAIT_MS = 60_000
UP_READY_S = 90.0
# Short enough that a closed tab frees its slot quickly, long enough for a reload.
GRACE_S = 6.0
SCREENSHOTS = os.environ.get("E2E_SCREENSHOTS")


@dataclass
class Up:
    child: Child
    player_port: int

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.player_port}"

    def log(self) -> str:
        return self.child.output(6000)

    async def listed_streamers(self) -> list[str]:
        async with aiohttp.ClientSession() as http, http.get(f"{self.origin}/api/streamers") as resp:
            resp.raise_for_status()
            body: list[dict[str, Any]] = await resp.json()
            return sorted(s["streamerId"] for s in body if s.get("streaming"))


class StartUp(Protocol):
    async def __call__(self, streamers: int = 2, **matchmaker: Any) -> Up: ...


@pytest.fixture
async def start_up(start_process: StartProcess) -> AsyncIterator[StartUp]:
    """``await start_up(streamers=2, **matchmaker_env)``: ``pixelfleet up`` on free ports,
    returned once it says it is up and signalling lists every streamer. The child and
    its streamers (its own process group) are always stopped (SIGTERM: up stops its
    streamers; then SIGKILL for anything left in the group)."""

    async def start(streamers: int = 2, **matchmaker: Any) -> Up:
        player_port = free_port()
        # Only our settings: up refuses unknown PIXELFLEET_* names (PIXELFLEET_TEST__STRICT is the tests').
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PIXELFLEET_")},
            "PIXELFLEET_LOG_FORMAT": "console",
            **{f"PIXELFLEET_MATCHMAKER__{k.upper()}": str(v) for k, v in matchmaker.items()},
        }
        child = await start_process(
            "up",
            "--player-port",
            str(player_port),
            "--streamer-port",
            str(free_port()),
            "--sfu-port",
            str(free_port()),
            "--streamers",
            str(streamers),
            "--width",
            "320",
            "--height",
            "180",
            "--fps",
            "15",
            env=env,
            new_session=True,
        )
        up = Up(child, player_port)
        want = sorted(f"Streamer{i}" for i in range(1, streamers + 1))

        async def ready() -> bool:
            # The banner comes after the local fleet has registered its slots.
            if "pixelfleet is up" not in child.output(None):
                return False
            with contextlib.suppress(aiohttp.ClientError):
                return await up.listed_streamers() == want
            return False

        await child.wait_until(ready, "'pixelfleet is up' with every streamer listed", UP_READY_S, period_s=0.2)
        return up

    yield start


async def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))


def first_frames_logged(up: Up, session_id: str) -> int:
    """How often up's matchmaker took a first decoded frame of the session: its
    ``first_frame`` line is logged where ``time_to_first_frame_seconds`` is observed, once
    per session (a reload reports again and is not counted again)."""
    line = re.compile(rf"\] first_frame\s.*\bsession={re.escape(session_id)}(\s|$)", re.MULTILINE)
    return len(line.findall(up.child.output(None)))


async def wait_first_frame_reported(page: Page, log: PageLog) -> None:
    """The page's ``first_frame`` POST was answered 2xx (the matchmaker logged it first)."""
    await wait_state(page, log, "window.pixelfleet.firstFrameReported === true", "the page's first_frame report")


async def wait_state(page: Page, log: PageLog, js: str, what: str) -> None:
    try:
        await page.wait_for_function(f"() => ({js})", timeout=WAIT_MS, polling=100)
    except Exception as exc:  # noqa: BLE001 - playwright's timeout, reported with the page state
        raise AssertionError(
            f"timed out waiting for {what}: {exc}\nstate={await state(page)}\nconsole:\n{log.text()}"
        ) from None


async def test_slots_then_queue_then_the_freed_slot(start_up: StartUp, open_page: OpenPage) -> None:
    """Two slots: two tabs stream, a third waits first in line; a reload within the
    grace period keeps its slot (and does not let the queue take it); a closed tab's
    slot is reset and goes to the waiting tab."""
    up = await start_up(streamers=2, reconnect_grace_s=GRACE_S)
    try:
        a, a_log = await open_page(f"{up.origin}/")
        await wait_for_rising_frames(a, a_log)
        b, b_log = await open_page(f"{up.origin}/")
        await wait_for_rising_frames(b, b_log)
        sa, sb = await state(a), await state(b)
        for s in (sa, sb):
            assert s["mode"] == "matchmaker" and s["app"] == "default", s
            assert s["sessionId"] and s["clientKey"], s
            assert "token=" in s["signallingUrl"], s["signallingUrl"]
        assert {sa["streamerId"], sb["streamerId"]} == {"Streamer1", "Streamer2"}
        assert sa["clientKey"] != sb["clientKey"], "each tab has a key of its own"
        await screenshot(a, "streaming")
        # Each page reported its first decoded frame itself; the matchmaker took it once.
        for page, log, s in ((a, a_log, sa), (b, b_log, sb)):
            await wait_first_frame_reported(page, log)
            assert first_frames_logged(up, s["sessionId"]) == 1, up.log()

        # All slots taken: the third tab queues, first in line, and shows it.
        c, c_log = await open_page(f"{up.origin}/")
        await wait_state(
            c,
            c_log,
            "window.pixelfleet.state === 'queued' && window.pixelfleet.queue && window.pixelfleet.queue.position === 1",
            "the third tab in the queue",
        )
        assert await c.locator("#queue").is_visible()
        assert (await c.locator("#queue-position").inner_text()).strip() == "1"
        assert (await c.locator("#queue-eta").inner_text()).strip() not in ("", "unknown")
        await screenshot(c, "queue")

        # A reload within the grace period: same tab key, same session, same streamer.
        await a.reload()
        await wait_for_rising_frames(a, a_log)
        again = await state(a)
        assert again["clientKey"] == sa["clientKey"]
        assert again["sessionId"] == sa["sessionId"]
        assert again["streamerId"] == sa["streamerId"]
        await wait_first_frame_reported(a, a_log)  # the reloaded page reports again: not counted
        assert first_frames_logged(up, sa["sessionId"]) == 1, up.log()
        sc = await state(c)
        assert sc["state"] == "queued" and sc["queue"]["position"] == 1, sc

        # Tab B goes; after the grace period its slot is reset (streamer restarted) and
        # handed to the waiting tab, which connects at once and streams.
        await b.context.close()
        await wait_state(
            c,
            c_log,
            "window.pixelfleet.queue === null && window.pixelfleet.sessionId",
            "the waiting tab to be assigned the freed slot",
        )
        await wait_for_rising_frames(c, c_log)
        sc = await state(c)
        assert sc["streamerId"] == sb["streamerId"], (sc, sb)
        assert sc["mode"] == "matchmaker"
        await wait_first_frame_reported(c, c_log)
        assert first_frames_logged(up, sc["sessionId"]) == 1, up.log()
        assert await c.locator("#queue").is_hidden()
        # A keeps streaming throughout.
        await wait_for_rising_frames(a, a_log)
        for log in (a_log, c_log):
            assert "[pageerror]" not in log.text(), log.text()
    except BaseException:
        print(f"pixelfleet up log:\n{up.log()}")
        raise


async def test_input_keeps_the_session_and_idling_ends_it(start_up: StartUp, open_page: OpenPage) -> None:
    """With ``IDLE_TIMEOUT_S`` on, the page reports its input to the matchmaker: a player
    who keeps moving the mouse keeps the slot past several timeouts; one who stops loses
    it (the session ends IDLE, the slot is reset, and the page gets a new session)."""
    idle_s = 6.0
    up = await start_up(streamers=1, idle_timeout_s=idle_s)
    try:
        page, log = await open_page(f"{up.origin}/")
        await wait_for_rising_frames(page, log)
        first = await state(page)
        assert first["sessionId"], first
        box = await page.locator("#video").bounding_box()
        assert box is not None
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.5 * idle_s
        step = 0
        while loop.time() < end:  # active: input all along, for more than two timeouts
            step += 1
            await page.mouse.move(box["x"] + 10 + step % 50, box["y"] + 10 + step % 30)
            await asyncio.sleep(0.25)
        now = await state(page)
        assert now["sessionId"] == first["sessionId"], (first, now)
        assert now["activityReports"] >= 2, now
        # Idle: no input. The session ends and the page comes back on a new one.
        await wait_state(
            page,
            log,
            f"window.pixelfleet.sessionId && window.pixelfleet.sessionId !== '{first['sessionId']}'",
            "the idle session to end and a new one to start",
        )
        assert "[pageerror]" not in log.text(), log.text()
    except BaseException:
        print(f"pixelfleet up log:\n{up.log()}")
        raise


async def test_matchmaker_errors_are_shown(start_up: StartUp, open_page: OpenPage) -> None:
    """Unknown app, a full queue and an expired wait each end in a clear message and a
    Try again button, not in silent retries."""
    up = await start_up(streamers=1, queue_max_length=1, queue_max_wait_s=8)
    try:
        nope, _ = await open_page(f"{up.origin}/?app=nope")
        await nope.wait_for_function("() => window.pixelfleet.state === 'error'", timeout=WAIT_MS)
        assert 'no app "nope"' in await nope.locator("#overlay-text").inner_text()
        assert await nope.locator("#overlay-button").is_visible()

        first, first_log = await open_page(f"{up.origin}/")
        await wait_state(first, first_log, "window.pixelfleet.sessionId !== null", "the only slot")
        waiting, waiting_log = await open_page(f"{up.origin}/")
        await wait_state(waiting, waiting_log, "window.pixelfleet.state === 'queued'", "a place in the queue")

        full, _ = await open_page(f"{up.origin}/")
        await full.wait_for_function("() => window.pixelfleet.state === 'error'", timeout=WAIT_MS)
        assert "queue is full" in await full.locator("#overlay-text").inner_text()
        await screenshot(full, "queue-full")

        # The one waiting gives up after queue_max_wait_s.
        await wait_state(waiting, waiting_log, "window.pixelfleet.state === 'error'", "the queue to expire")
        text = await waiting.locator("#overlay-text").inner_text()
        assert "longer than the queue allows" in text, text
        assert await waiting.locator("#overlay-button").is_visible()
        assert await waiting.locator("#queue").is_hidden()
        await screenshot(waiting, "queue-expired")

        # The queue has room again: Try again queues; Leave the queue gives the place
        # up and offers to join again, which queues once more.
        await full.locator("#overlay-button").click()
        await full.wait_for_function("() => window.pixelfleet.state === 'queued'", timeout=WAIT_MS)
        await full.locator("#queue-leave").click()
        await full.wait_for_function("() => window.pixelfleet.state === 'stopped'", timeout=WAIT_MS)
        assert await full.locator("#overlay-button").inner_text() == "Join the queue again"
        assert await full.locator("#queue").is_hidden()
        await full.locator("#overlay-button").click()
        await full.wait_for_function(
            "() => window.pixelfleet.state === 'queued' && window.pixelfleet.queue && window.pixelfleet.queue.position === 1",
            timeout=WAIT_MS,
        )
        assert (await state(first))["state"] == "streaming"
    except BaseException:
        print(f"pixelfleet up log:\n{up.log()}")
        raise


async def test_no_matchmaker_means_direct_mode(stack: Stack, streamer: RunningStreamer, open_page: OpenPage) -> None:
    """A signalling server without a matchmaker answers the slot request 405: the page
    connects directly, as it always did."""
    page, log = await open_page(f"{stack.player_origin}/?StreamerId={streamer.streamer_id}")
    await wait_for_rising_frames(page, log)
    info = await state(page)
    assert info["mode"] == "direct" and info["sessionId"] is None
    assert "token=" not in info["signallingUrl"]


async def test_session_socket_url_and_eta_words(stack: Stack, open_page: OpenPage) -> None:
    """The token goes in the query; a loopback signalling URL (``pixelfleet up --host
    0.0.0.0`` hands out ws://127.0.0.1) becomes the page's own origin for a page that was
    not loaded from loopback."""
    page, _ = await open_page(f"{stack.player_origin}/", init_script="window.pixelfleetOptions = {autoStart: false};")
    url = "PixelfleetPlayer.sessionSocketUrl"
    lan = {"host": "192.168.1.5:8080", "hostname": "192.168.1.5", "protocol": "http:"}
    local = {"host": "127.0.0.1:8080", "hostname": "127.0.0.1", "protocol": "http:"}
    tls = {"host": "play.example.com", "hostname": "play.example.com", "protocol": "https:"}
    cases = [
        (("ws://127.0.0.1:8080", "a.b.c", local), "ws://127.0.0.1:8080/?token=a.b.c"),
        (("ws://127.0.0.1:8080", "a.b.c", lan), "ws://192.168.1.5:8080/?token=a.b.c"),
        (("ws://localhost:8080/", "t", tls), "wss://play.example.com/?token=t"),
        (("wss://sig.example.com/eu/", "t+/=", lan), "wss://sig.example.com/eu/?token=t%2B%2F%3D"),
    ]
    for args, want in cases:
        assert await page.evaluate(f"(a) => {url}(...a)", list(args)) == want, args
    words = await page.evaluate("[5, 59, 60, 299, 3600, 4800].map(PixelfleetPlayer.formatEta)")
    assert words == ["under a minute", "under a minute", "about 1 min", "about 5 min", "about 1 h", "about 1 h 20 min"]
