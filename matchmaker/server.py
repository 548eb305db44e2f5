"""``pixelfleet matchmaker``: the matchmaker as its own service (one replica of many)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import structlog
from aiohttp import web

from matchmaker.auth import open_doors
from matchmaker.config import MatchmakerSettings
from matchmaker.health import add_health_routes
from matchmaker.http import API_PREFIX, create_app
from matchmaker.records import RecordSink, open_sink
from matchmaker.service import Matchmaker
from matchmaker.store import open_store
from pixelfleet.shared_settings import ConfigError
from pixelfleet.tokens import TokenKeys

log = structlog.get_logger("matchmaker")


def token_keys(s: MatchmakerSettings) -> TokenKeys:
    """The keys session tokens are minted with (signalling verifies with the same settings)."""
    if s.session_token_algorithm == "EdDSA":
        if not (s.session_token_private_key_file and s.session_token_public_key_file):
            raise ConfigError(
                "EdDSA session tokens need PIXELFLEET_SESSION_TOKEN_PRIVATE_KEY_FILE and "
                "PIXELFLEET_SESSION_TOKEN_PUBLIC_KEY_FILE"
            )
        try:
            return TokenKeys.eddsa(
                Path(s.session_token_private_key_file).read_bytes(), Path(s.session_token_public_key_file).read_bytes()
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"session token key files: {exc}") from None
    if not s.session_token_secret:
        raise ConfigError("set PIXELFLEET_SESSION_TOKEN_SECRET (shared with signalling, >= 32 bytes)")
    try:
        return TokenKeys.hs256(s.session_token_secret)
    except ValueError as exc:
        raise ConfigError(f"PIXELFLEET_SESSION_TOKEN_SECRET: {exc}") from None


def build_matchmaker(
    s: MatchmakerSettings, *, sink: RecordSink | None = None, clock: Callable[[], float] = time.time
) -> Matchmaker:
    """``clock``: tests move time on by hand rather than sleeping through timeouts."""
    keys = token_keys(s)
    try:
        store = open_store(
            s.state_url, prefix=s.key_prefix, wait_replicas=s.redis_wait_replicas, wait_ms=s.redis_wait_ms
        )
    except ValueError as exc:
        raise ConfigError(f"PIXELFLEET_STATE_URL: {exc}") from None
    if sink is None:
        sink = open_sink(
            s.records_path, s.records_memory_max, table=s.records_table, retention_days=s.records_retention_days
        )
    return Matchmaker(store, s, keys, sink, clock=clock)


class MatchmakerServer:
    """The API at ``/api/v1`` plus ``/healthz``, and the sweep loop."""

    def __init__(self, settings: MatchmakerSettings, matchmaker: Matchmaker | None = None) -> None:
        self.settings = settings
        self.matchmaker = matchmaker or build_matchmaker(settings)
        self._runner: web.AppRunner | None = None
        self.port = settings.port
        self.draining = False  # set on stop(): /readyz answers 503 from then on

    async def start(self) -> None:
        app = web.Application()

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app.router.add_get("/healthz", healthz)
        add_health_routes(app, self)  # /livez, /readyz, /metrics (matchmaker.health)
        for door in open_doors(self.settings):
            log.warning("open_mode", detail=door)
        s = self.settings
        if self.matchmaker.keys.signing_key is not None and s.streamer_token_ttl_s < 4 * s.heartbeat_ttl_s:
            # Renewed at half life, heard at least every heartbeat_ttl_s: a fresh credential
            # must reach the agent well before the one its streamer was launched with expires.
            log.warning(
                "streamer_token_ttl_short",
                streamer_token_ttl_s=s.streamer_token_ttl_s,
                heartbeat_ttl_s=s.heartbeat_ttl_s,
                detail="keep it at least 4 x heartbeat_ttl_s (docs/protocol.md, Streamer credentials)",
            )
        app.add_subapp(API_PREFIX, create_app(self.matchmaker))
        from matchmaker import dashboard  # the operator dashboard (docs/observability.md)

        app.add_subapp(dashboard.PREFIX, dashboard.create_app(self.matchmaker))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        await site.start()
        server = cast(asyncio.Server | None, site._server)  # noqa: SLF001 - read back port 0
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        self.matchmaker.start()
        log.info(
            "matchmaker_listening",
            host=self.settings.host,
            port=self.port,
            backend=self.settings.state_url.split(":", 1)[0],
            records=_records_where(self.settings),
        )

    async def stop(self) -> None:
        self.draining = True
        if self.settings.drain_delay_s > 0 and self._runner is not None:
            log.info("matchmaker_draining", delay_s=self.settings.drain_delay_s)
            await asyncio.sleep(self.settings.drain_delay_s)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.matchmaker.aclose()
        log.info("matchmaker_stopped")


def _records_where(s: MatchmakerSettings) -> str:
    where = [w for w in (s.records_path, s.records_table and f"dynamodb:{s.records_table}") if w]
    return " + ".join(where) or f"memory (last {s.records_memory_max})"
