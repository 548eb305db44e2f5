"""Matchmaker sessions as signalling sees them: admit players by session token, and
report when they connect and leave.

Signalling never imports the matchmaker: the token carries everything it needs
(tenant, session, the one streamer the player may watch), and reports go through a
small interface — in-process callbacks in ``pixelfleet up``, HTTP to the matchmaker
when they run apart. A report that fails is logged and dropped: the matchmaker's own
timeouts (connect timeout, reconnect grace) recover from a lost report, while a
signalling server that waited on a down matchmaker would strand its players.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp
import msgspec
import structlog
from aiohttp import web

from pixelfleet.tokens import InvalidToken, SessionClaims, TokenKeys, verify
from signaling.broker import BrokerUnavailable
from signaling.broker_memory import MemoryBroker
from signaling.config import ConfigError, Settings

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


class HttpReporter:
    """POST ``/api/v1/sessions/{id}/events`` on the matchmaker, authenticated by the token.

    Only a 5xx or no answer is retried: a 410 (the session ended, e.g. its host died or an
    operator ended it) is final, like any other answer."""

    def __init__(
        self, base_url: str, *, attempts: int = 3, timeout_s: float = 2.0, report_token: str | None = None
    ) -> None:
        # The report token tells the matchmaker a connect/disconnect comes from signalling,
        # not from a player holding its own session token (PIXELFLEET_REPORT_TOKEN).
        self._report = {"X-Pixelfleet-Report-Token": report_token} if report_token else {}
        self._base = base_url.rstrip("/")
        self._attempts = attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None

    async def report(self, event: str, claims: SessionClaims, token: str) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        url = f"{self._base}/api/v1/sessions/{claims.session_id}/events"
        for attempt in range(self._attempts):
            try:
                async with self._http.post(
                    url,
                    data=msgspec.json.encode({"event": event}),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **self._report},
                ) as r:
                    if r.status < 500:  # an answer: final, 410 (the session has ended) included
                        if r.status == 410:
                            log.info(
                                "session_report_after_end",
                                report=event,
                                session=claims.session_id,
                                end_reason=_end_reason(await r.read()),
                            )
                        elif r.status >= 400:
                            log.warning("session_report_refused", status=r.status, session=claims.session_id)
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2 * 2**attempt)
        raise ConnectionError(f"matchmaker did not take the {event} report")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()


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


class _Ended(msgspec.Struct):
    end_reason: str | None = None


def _end_reason(raw: bytes) -> str | None:
    """The ``end_reason`` of the matchmaker's 410 body (signalling does not import its models)."""
    try:
        return msgspec.json.decode(raw, type=_Ended).end_reason
    except msgspec.DecodeError:
        return None


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
        reporter = HttpReporter(settings.matchmaker_url, report_token=settings.report_token)
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
