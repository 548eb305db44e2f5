"""End-to-end fixtures: a real Chromium against a real signalling server and real
synthetic streamers, all on 127.0.0.1.

Per test (all in the test's own event loop, ports chosen by the OS):
- ``stack`` / ``start_stack(**settings)``: the signalling server (player page +
  player WebSocket, streamer port) and a static server for the Epic test pages and a
  second-origin copy of our player page; with a ``session_token_secret`` it checks
  session tokens and streamer credentials as ``pixelfleet signaling`` does;
- ``streamer`` / ``start_streamer(id, stack=, token=)``: a synthetic streamer (``token``:
  its streamer credential, as ``?token=`` on its URL), returned once the server lists it (Epic's frontend with ``MaxReconnectAttempts: 0`` lists
  streamers only once, so it must be there before the page loads);
- ``open_page(url)``: a fresh Chromium context with camera and microphone granted to
  the page's origin, returning the page and its console log.

Once per session, ``epic_bundles`` builds Epic's frontend library into
``tests/e2e/frontend/dist/`` (``npm ci`` when ``node_modules`` is missing).

Missing Chromium, Node or npm packages skip these tests, except under ``CI=true``
or ``PIXELFLEET_TEST__STRICT=1``, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import aiohttp
import pytest
from aiohttp import web

if TYPE_CHECKING:  # the modules themselves are imported where used: playwright may be missing
    from playwright.async_api import Browser, BrowserContext, Page, ViewportSize

    from signaling.app import SignalingServer
    from streamer import input_messages as im
    from streamer.synthetic import SyntheticStreamer

# CI=true (CI) or PIXELFLEET_TEST__STRICT=1 (scripts/test): a missing prerequisite fails.
STRICT = os.environ.get("CI", "").lower() == "true" or os.environ.get("PIXELFLEET_TEST__STRICT") == "1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
FRONTEND_DIR = Path(__file__).parent / "frontend"
DIST_DIR = FRONTEND_DIR / "dist"
PLAYER_STATIC_DIR = Path(__file__).parents[2] / "signaling" / "static"
EPIC_VERSIONS = ("5.7", "5.5")

# Generous: these bound how long a broken run hangs, they are not performance limits.
WAIT_MS = 60_000
SETUP_S = 60.0

EPIC_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>Epic frontend (UE{version}) - pixelfleet e2e</title>
<style>html,body{{margin:0;height:100%;background:#000}}
#player{{position:relative;width:100vw;height:100vh}}</style></head>
<body><div id="player"></div><script src="/epic-ue{version}.js"></script></body></html>
"""


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail under CI, where everything must be installed."""
    if STRICT:
        pytest.fail(f"e2e prerequisite missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


# ---- the Epic frontend bundles ----------------------------------------------------


@pytest.fixture(scope="session")
def epic_bundles() -> Path:
    """Builds Epic's frontend (one IIFE bundle per UE version) into frontend/dist/."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed to bundle Epic's frontend")
    if not (FRONTEND_DIR / "node_modules" / "esbuild").is_dir():
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--omit-lockfile-registry-resolved"],
            cwd=FRONTEND_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            unavailable(f"npm ci failed in {FRONTEND_DIR}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    proc = subprocess.run([node, "build.js"], cwd=FRONTEND_DIR, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"bundling Epic's frontend failed:\n{proc.stdout}{proc.stderr}", pytrace=False)
    for version in EPIC_VERSIONS:
        assert (DIST_DIR / f"epic-ue{version}.js").is_file()
    return DIST_DIR


# ---- servers ----------------------------------------------------------------------


@dataclass
class Stack:
    """What a test talks to. URLs are all on 127.0.0.1."""

    server: SignalingServer
    frontend_port: int

    @property
    def player_origin(self) -> str:
        return f"http://127.0.0.1:{self.server.player_port}"

    @property
    def signalling_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.player_port}"

    @property
    def streamer_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.streamer_port}"

    @property
    def frontend_origin(self) -> str:
        return f"http://127.0.0.1:{self.frontend_port}"

    def epic_page(self, version: str, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in {"ss": self.signalling_url, **query}.items())
        return f"{self.frontend_origin}/epic-ue{version}.html?{params}"

    async def listed_streamers(self) -> list[str]:
        admin = self.server.settings.admin_token  # the listing needs it once tokens are on
        headers = {"Authorization": f"Bearer {admin}"} if admin else {}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.player_origin}/api/streamers", headers=headers) as resp,
        ):
            resp.raise_for_status()
            body: list[dict[str, Any]] = await resp.json()
        return [s["streamerId"] for s in body if s.get("streaming")]


def _frontend_app() -> web.Application:
    async def page(request: web.Request) -> web.Response:
        version = request.match_info["version"]
        if version not in EPIC_VERSIONS:
            raise web.HTTPNotFound()
        return web.Response(text=EPIC_PAGE.format(version=version), content_type="text/html")

    app = web.Application()
    app.router.add_get("/epic-ue{version}.html", page)
    # Our player page from another origin than the signalling server.
    app.router.add_static("/player/", PLAYER_STATIC_DIR)
    DIST_DIR.mkdir(parents=True, exist_ok=True)
    app.router.add_static("/", DIST_DIR)
    return app


class StartStack(Protocol):
    async def __call__(self, **overrides: Any) -> Stack: ...


@pytest.fixture
async def start_stack() -> AsyncIterator[StartStack]:
    """``await start_stack(**settings)``: a signalling server (with these Settings
    overrides) plus the static server for the Epic test pages. A token key among the
    settings turns auth on, wired as ``pixelfleet signaling`` wires it."""
    from signaling.app import SignalingServer
    from signaling.config import Settings
    from signaling.sessions import gate_from_settings, verify_keys

    cleanups: list[Callable[[], Any]] = []

    async def start(**overrides: Any) -> Stack:
        settings = Settings(
            **{
                "host": "127.0.0.1",
                "player_port": 0,
                "streamer_port": 0,
                "sfu_port": -1,
                "shutdown_grace_s": 1.0,
                **overrides,
            }
        )
        keys = verify_keys(settings)  # None: open mode
        server = SignalingServer(settings, session_gate=gate_from_settings(settings, keys=keys), streamer_keys=keys)
        await server.start()
        cleanups.append(server.stop)
        runner = web.AppRunner(_frontend_app(), access_log=None)
        await runner.setup()
        cleanups.append(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port: int = runner.addresses[0][1]
        return Stack(server=server, frontend_port=port)

    try:
        yield start
    finally:
        for cleanup in reversed(cleanups):
            with contextlib.suppress(Exception):
                await cleanup()


@pytest.fixture
async def stack(start_stack: StartStack) -> Stack:
    return await start_stack()


# ---- synthetic streamers ------------------------------------------------------------


@dataclass
class RunningStreamer:
    streamer: SyntheticStreamer
    streamer_id: str
    task: asyncio.Task[None]

    def inputs(self, player_id: str | None = None) -> list[im.InputMessage]:
        """Decoded input messages received so far (``streamer.input_messages`` types)."""
        return [m for p, m in list(self.streamer.input_events) if player_id in (None, p)]

    def input_names(self, player_id: str | None = None) -> list[str]:
        return [type(m).__name__ for m in self.inputs(player_id)]

    def input_players(self) -> set[str]:
        return {p for p, _ in list(self.streamer.input_events)}


class StartStreamer(Protocol):
    async def __call__(
        self,
        streamer_id: str | None = None,
        *,
        stack: Stack | None = None,
        width: int = 640,
        height: int = 360,
        fps: int = 30,
        token: str | None = None,
    ) -> RunningStreamer: ...


@pytest.fixture
async def start_streamer(request: pytest.FixtureRequest) -> AsyncIterator[StartStreamer]:
    """``await start_streamer(id=None, stack=None, token=None)``: a synthetic streamer on
    ``stack`` (the ``stack`` fixture by default), returned once the server lists it.
    ``token`` is its streamer credential, carried as ``?token=`` on its URL exactly as
    UE's ``-PixelStreamingURL`` carries it (docs/protocol.md "Streamer credentials")."""
    from gpu_agent.slot_plan import with_token
    from streamer.synthetic import SyntheticStreamer

    running: list[RunningStreamer] = []

    async def start(
        streamer_id: str | None = None,
        *,
        stack: Stack | None = None,
        width: int = 640,
        height: int = 360,
        fps: int = 30,
        token: str | None = None,
    ) -> RunningStreamer:
        if stack is None:
            stack = request.getfixturevalue("stack")
        assert stack is not None
        sid = streamer_id or f"e2e-{uuid.uuid4().hex[:8]}"
        streamer = SyntheticStreamer(with_token(f"{stack.streamer_url}/", token), sid, width, height, fps)
        task = asyncio.create_task(streamer.run(), name=f"streamer {sid}")
        entry = RunningStreamer(streamer, sid, task)
        running.append(entry)
        async with asyncio.timeout(SETUP_S):
            entry.streamer_id = await streamer.wait_identified(timeout=SETUP_S)
            while entry.streamer_id not in await stack.listed_streamers():
                await asyncio.sleep(0.05)
        return entry

    try:
        yield start
    finally:
        for entry in running:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(entry.streamer.stop(), 10)
            entry.task.cancel()
            with contextlib.suppress(BaseException):
                await entry.task


@pytest.fixture
async def streamer(start_streamer: StartStreamer) -> RunningStreamer:
    return await start_streamer()


# ---- the browser ------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        unavailable("the playwright Python package is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"{CHROMIUM} not found (apt-get install -y chromium)")
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class PageLog:
    """Console output and page errors, for failure messages."""

    lines: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(self.lines[-60:])


class OpenPage(Protocol):
    async def __call__(
        self, url: str, *, viewport: ViewportSize | None = None, init_script: str | None = None
    ) -> tuple[Page, PageLog]: ...


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[OpenPage]:
    """``await open_page(url)`` -> (page, log) in a fresh context with camera and
    microphone granted to the page's origin (without that grant Chromium gathers no
    ICE candidates on a loopback-only host)."""
    contexts: list[BrowserContext] = []

    async def open_(
        url: str, *, viewport: ViewportSize | None = None, init_script: str | None = None
    ) -> tuple[Page, PageLog]:
        origin = "/".join(url.split("/", 3)[:3])
        context = await browser.new_context(viewport=viewport or {"width": 1280, "height": 720})
        contexts.append(context)
        await context.grant_permissions(["camera", "microphone"], origin=origin)
        if init_script:
            await context.add_init_script(init_script)
        page = await context.new_page()
        log = PageLog()
        page.on("console", lambda m: log.lines.append(f"[{m.type}] {m.text[:500]}"))
        page.on("pageerror", lambda e: log.lines.append(f"[pageerror] {e}"))
        await page.goto(url)
        return page, log

    try:
        yield open_
    finally:
        for context in contexts:
            with contextlib.suppress(Exception):
                await context.close()


async def _wait_until(
    predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_MS / 1000, detail: Callable[[], str] = lambda: ""
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{detail()}")
        await asyncio.sleep(0.1)


class WaitUntil(Protocol):
    async def __call__(
        self, predicate: Callable[[], bool], what: str, timeout_s: float = ..., detail: Callable[[], str] = ...
    ) -> None: ...


@pytest.fixture
def wait_until() -> WaitUntil:
    """``await wait_until(predicate, what, detail=...)``: polls a Python-side condition
    (such as the streamer's recorded input) with a generous deadline."""
    return _wait_until
