"""``pixelfleet matchmaker``: the matchmaker as its own service (one replica of many)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

import structlog
from aiohttp import web

from matchmaker.config import MatchmakerSettings
from matchmaker.http import API_PREFIX, create_app
from matchmaker.records import JsonLinesSink, MemorySink, RecordSink
from matchmaker.service import Matchmaker
from matchmaker.store import open_store
from pixelfleet.settings import ConfigError, load_section
from pixelfleet.tokens import TokenKeys

log = structlog.get_logger("matchmaker")


def load_matchmaker_settings(environ: Mapping[str, str] = os.environ, **overrides: object) -> MatchmakerSettings:
    state_url = environ.get("PIXELFLEET_STATE_URL")
    if state_url and "state_url" not in overrides:
        overrides["state_url"] = state_url
    return load_section(MatchmakerSettings, environ, "matchmaker", **overrides)


def token_keys(s: MatchmakerSettings) -> TokenKeys:
    if s.token_algorithm == "EdDSA":
        if not (s.token_private_key_file and s.token_public_key_file):
            raise ConfigError("EdDSA session tokens need token_private_key_file and token_public_key_file")
        return TokenKeys.eddsa(Path(s.token_private_key_file).read_bytes(),
                               Path(s.token_public_key_file).read_bytes())
    if s.token_algorithm != "HS256":
        raise ConfigError(f"token_algorithm must be HS256 or EdDSA, not {s.token_algorithm!r}")
    if not s.token_secret:
        raise ConfigError("set PIXELFLEET_MATCHMAKER__TOKEN_SECRET (shared with signalling, >= 32 bytes)")
    try:
        return TokenKeys.hs256(s.token_secret)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_matchmaker(s: MatchmakerSettings, *, sink: RecordSink | None = None,
                     clock: Callable[[], float] = time.time) -> Matchmaker:
    """``clock``: tests move time on by hand rather than sleeping through timeouts."""
    if sink is None:
        sink = JsonLinesSink(s.records_path) if s.records_path else MemorySink()
    return Matchmaker(open_store(s.state_url, prefix=s.key_prefix), s, token_keys(s), sink, clock=clock)


class MatchmakerServer:
    """The API at ``/api/v1`` plus ``/healthz``, and the sweep loop."""

    def __init__(self, settings: MatchmakerSettings, matchmaker: Matchmaker | None = None) -> None:
        self.settings = settings
        self.matchmaker = matchmaker or build_matchmaker(settings)
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    async def start(self) -> None:
        app = web.Application()

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app.router.add_get("/healthz", healthz)
        app.add_subapp(API_PREFIX, create_app(self.matchmaker))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        await site.start()
        server = cast(asyncio.Server | None, site._server)  # noqa: SLF001 - read back port 0
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        self.matchmaker.start()
        log.info("matchmaker_listening", host=self.settings.host, port=self.port,
                 backend=self.settings.state_url.split(":", 1)[0])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.matchmaker.aclose()
        log.info("matchmaker_stopped")
