"""Matchmaker sessions as signalling sees them: admit players by session token, and
report when they connect and leave.

Signalling never imports the matchmaker: the token carries everything it needs
(tenant, session, the one streamer the player may watch), and reports go through a
small interface — in-process callbacks in ``pixelfleet up``, HTTP to the matchmaker
when they run apart (batched: ``signaling.session_reports``). A report that fails is
logged and dropped: the matchmaker's own timeouts (connect timeout, reconnect grace)
recover from a lost report, while a signalling server that waited on a down matchmaker
would strand its players.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgspec
import structlog
from aiohttp import web

from pixelfleet.tokens import InvalidToken, SessionClaims, TokenKeys, verify
from signaling.broker import BrokerUnavailable
from signaling.broker_memory import MemoryBroker
from signaling.config import ConfigError, Settings
from signaling.session_reports import HttpReporter

__all__ = ["CallbackReporter", "HttpReporter", "SessionGate", "SessionReporter", "gate_from_settings", "verify_keys"]

log = structlog.get_logger("signaling")


class SessionReporter(Protocol):
    async def report(self, event: str, claims: SessionClaims, token: str) -> None:
        """``event`` is ``connected`` or ``disconnected``."""


class CallbackReporter:
    """In-process: call the matchmaker's methods directly (``pixelfleet up``)."""

    def __init__(self, callbacks: dict[str, Callable[[str], Awaitable[None]]]) -> None:
        self._callbacks = callbacks

    async def report(self, event: str, claims: SessionClaims, token: str) -> None:
        await self._callbacks[event](claims.session_id)


@dataclass
class SessionGate:
    """Checks a player's session token at the WebSocket upgrade (401 before ``config``)."""

    keys: TokenKeys
    required: bool = True
    reporter: SessionReporter | None = None
    # Tokens are single-use, so one leaked from a URL cannot open a second socket: the
    # ledger is the broker's (per node in memory, cluster-wide on Redis); the server sets it.
    first_use: Callable[[str, int], Awaitable[bool]] = field(default_factory=lambda: MemoryBroker().first_use)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _sockets: dict[str, int] = field(default_factory=dict)  # session id -> open sockets here

    async def admit(self, request: web.Request) -> tuple[SessionClaims, str] | None:
        """Claims of a valid token; None for no token where none is required."""
        token = request.query.get("token") or _bearer(request)
        if token is None:
            if self.required:
                raise _unauthorized("a session token is required (?token= or Authorization: Bearer)")
            return None
        try:
            claims = verify(self.keys, token)
        except InvalidToken as exc:  # a bad token is refused even where none is required
            raise _unauthorized(str(exc)) from None
        try:
            first = await self.first_use(claims.token_id, claims.expires_at)
        except BrokerUnavailable:  # fail closed: a single-use check that cannot be made
            raise web.HTTPServiceUnavailable(
                text=msgspec.json.encode(
                    {"error": "unavailable", "message": "cannot check the session token now: try again"}
                ).decode(),
                content_type="application/json",
                headers={"Retry-After": "1"},
            ) from None
        if not first:
            raise _unauthorized("token already used: ask the matchmaker for a fresh one")
        return claims, token

    def report(self, event: str, admitted: tuple[SessionClaims, str] | None) -> None:
        """Report the session's first socket opening and its last one closing.

        One session may hold several sockets on this node (a duplicated browser tab
        reattaches to the same session): only the edges reach the matchmaker, so closing
        one tab does not start the reconnect grace under the other.
        """
        if admitted is None:
            return
        sid = admitted[0].session_id
        count = self._sockets.get(sid, 0) + (1 if event == "connected" else -1)
        if count > 0:
            self._sockets[sid] = count
        else:
            self._sockets.pop(sid, None)
        edge = (event == "connected" and count == 1) or (event == "disconnected" and count <= 0)
        if not edge or self.reporter is None:
            return
        task = asyncio.create_task(self._report(event, *admitted))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, event: str, claims: SessionClaims, token: str) -> None:
        assert self.reporter is not None
        try:
            await self.reporter.report(event, claims, token)
        except Exception as exc:  # noqa: BLE001 - a report must never take signalling down
            log.warning("session_report_failed", event=event, session=claims.session_id, error=str(exc))

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        closer = getattr(self.reporter, "aclose", None)
        if closer is not None:
            await closer()


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() or None if header[:7].lower() == "bearer " else None


def _unauthorized(message: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text=msgspec.json.encode({"error": "unauthorized", "message": message}).decode(),
        content_type="application/json",
    )


def gate_from_settings(
    settings: Settings, *, reporter: SessionReporter | None = None, keys: TokenKeys | None = None
) -> SessionGate | None:
    """The gate the settings ask for, or None when no key is configured (Epic's open mode)."""
    if keys is None:
        keys = _verify_keys(settings)
        if keys is None:
            return None
    if reporter is None and settings.matchmaker_url:
        reporter = HttpReporter(
            settings.matchmaker_url,
            report_token=settings.report_token,
            batch_max=settings.report_batch_max,
            linger_s=settings.report_linger_s,
        )
    required = True if settings.require_session_token is None else settings.require_session_token
    return SessionGate(keys, required=required, reporter=reporter)


def verify_keys(settings: Settings) -> TokenKeys | None:
    """The session-token keys signalling verifies with (also streamer credentials); None = open mode."""
    return _verify_keys(settings)


def _verify_keys(settings: Settings) -> TokenKeys | None:
    """A public key file means EdDSA (signalling never holds the private key); else the HS256 secret."""
    public, secret = settings.session_token_public_key_file, settings.session_token_secret
    if settings.session_token_algorithm == "EdDSA" and not public:
        raise ConfigError("EdDSA session tokens need PIXELFLEET_SESSION_TOKEN_PUBLIC_KEY_FILE on signalling")
    try:
        if public:
            return TokenKeys.eddsa(None, Path(public).read_bytes())
        return TokenKeys.hs256(secret) if secret else None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"session token key: {exc}") from None
