"""A small typed client of the matchmaker's HTTP API (docs/matchmaker-api.md).

Every call sends and decodes the same msgspec models the server uses
(``matchmaker.models``), so a change of the contract is a type error here too. An
answer with an error status raises ``ApiError`` (status, code, message, and the end
reason of a 410); no answer at all (refused, reset, timed out) raises ``Unreachable``.

One ``MatchmakerApi`` may hold all three credentials: the caller's JWT for
``create_session``, the agent token for hosts and heartbeats, the admin token for the
listings; session events take that session's own token per call.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import aiohttp
import msgspec

from matchmaker.models import (
    Assigned,
    DrainRequest,
    EventAccepted,
    Heartbeat,
    HeartbeatReply,
    Host,
    HostRegistration,
    QueueListing,
    Session,
    SessionEvent,
    SessionEventBatch,
    SessionEventItem,
    SessionEventName,
    SessionEventResults,
    SessionRequest,
    Slot,
    TicketCancelled,
    TicketReply,
    Waiting,
)

__all__ = ["ApiError", "MatchmakerApi", "Unreachable"]

API_PREFIX = "/api/v1"
T = TypeVar("T")


class ApiError(Exception):
    """The matchmaker answered with an error status (``models.ErrorBody``: ``code`` is
    an ``ErrorCode``, or ``http_<status>`` for an answer that is not one, e.g. a proxy's;
    ``end_reason`` an ``EndReason`` value)."""

    def __init__(self, status: int, code: str, message: str, end_reason: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.end_reason = end_reason


class Unreachable(Exception):
    """No answer from the matchmaker: refused, reset or timed out. Worth a retry."""


class _AnyError(msgspec.Struct):
    """``ErrorBody`` read leniently: a newer server's new code or end reason still reads."""

    error: str
    message: str = ""
    end_reason: str | None = None


_error = msgspec.json.Decoder(_AnyError)
_created = msgspec.json.Decoder(Assigned | Waiting)
_ticket: msgspec.json.Decoder[TicketReply] = msgspec.json.Decoder(TicketReply)


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


class MatchmakerApi:
    """``base_url``: the matchmaker's root (``http://host:9999``), ``/api/v1`` is added.
    ``http``: a session to share (closed by its owner); else one is made and ``aclose``
    closes it."""

    def __init__(
        self,
        base_url: str,
        *,
        caller_token: str | None = None,
        agent_token: str | None = None,
        admin_token: str | None = None,
        timeout_s: float = 10.0,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base = base_url.rstrip("/") + API_PREFIX
        self.caller_token = caller_token
        self.agent_token = agent_token
        self.admin_token = admin_token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http = http
        self._own_http = http is None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self._http

    async def _call(self, method: str, path: str, token: str | None, body: Any, reply: type[T]) -> T:
        raw, _ = await self._raw(method, path, token, body)
        try:
            return msgspec.json.decode(raw, type=reply)
        except msgspec.DecodeError as exc:
            raise ApiError(200, "invalid_reply", f"unreadable reply to {method} {path}: {exc}") from None

    async def _raw(
        self, method: str, path: str, token: str | None, body: Any, extra: dict[str, str] | None = None
    ) -> tuple[bytes, int]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(extra or {})
        data = None
        if body is not None:
            data = msgspec.json.encode(body)
            headers["Content-Type"] = "application/json"
        try:
            async with self._session().request(
                method, self.base + path, data=data, headers=headers, timeout=self._timeout
            ) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if status >= 400:
            raise _api_error(status, raw)
        return raw, status

    # --- players ------------------------------------------------------------------------

    async def create_session(
        self,
        app: str,
        *,
        region: str | None = None,
        gpu_model: str | None = None,
        resolution: str | None = None,
        client_key: str | None = None,
        caller_token: str | None = None,
    ) -> Assigned | Waiting:
        """A slot (``Assigned``, 201) or a place in the queue (``Waiting``, 202).
        ``caller_token`` overrides the client's for this call."""
        body = SessionRequest(app=app, region=region, gpu_model=gpu_model, resolution=resolution, client_key=client_key)
        raw, _ = await self._raw("POST", "/sessions", caller_token or self.caller_token, body)
        return _created.decode(raw)

    async def ticket(self, ticket_id: str, *, caller_token: str | None = None) -> TicketReply:
        """A ticket is read (followed, cancelled) by the caller that made it."""
        raw, _ = await self._raw("GET", f"/queue/{_q(ticket_id)}", caller_token or self.caller_token, None)
        return _ticket.decode(raw)

    async def cancel_ticket(self, ticket_id: str, *, caller_token: str | None = None) -> TicketCancelled:
        token = caller_token or self.caller_token
        return await self._call("DELETE", f"/queue/{_q(ticket_id)}", token, None, TicketCancelled)

    async def ticket_events(self, ticket_id: str, *, caller_token: str | None = None) -> AsyncIterator[TicketReply]:
        """The ticket's event stream: each status as it changes, ending after the first
        one that is not ``Waiting``. Leaving the loop early closes the stream, which
        leaves the queue (see docs/matchmaker-api.md)."""
        try:
            token = caller_token or self.caller_token
            async with self._session().get(
                f"{self.base}/queue/{_q(ticket_id)}/events",
                headers={"Authorization": f"Bearer {token}"} if token else {},
                timeout=aiohttp.ClientTimeout(sock_connect=10.0),
            ) as r:
                if r.status >= 400:
                    raise _api_error(r.status, await r.read())
                async for line in r.content:
                    if line.startswith(b"data: "):
                        reply = _ticket.decode(line[6:])
                        yield reply
                        if not isinstance(reply, Waiting):
                            return
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"queue events of {ticket_id}: {type(exc).__name__}: {exc}") from None

    # --- signalling and the player page ----------------------------------------------------

    async def session_event(self, session_id: str, token: str, event: SessionEventName) -> EventAccepted:
        """Report with the session's own token; ``ApiError`` 410 ``session_ended`` is final."""
        path = f"/sessions/{_q(session_id)}/events"
        return await self._call("POST", path, token, SessionEvent(event=event), EventAccepted)

    async def session_events(
        self, events: list[SessionEventItem], *, report_token: str | None = None
    ) -> SessionEventResults:
        """Many sessions' reports in one request, each with its own session's token: an
        outcome per item, in order (a bad or ended item does not fail the others).
        ``report_token``: signalling's, sent as ``X-Pixelfleet-Report-Token``."""
        extra = {"X-Pixelfleet-Report-Token": report_token} if report_token else None
        raw, _ = await self._raw("POST", "/sessions/events", None, SessionEventBatch(events=events), extra)
        try:
            return msgspec.json.decode(raw, type=SessionEventResults)
        except msgspec.DecodeError as exc:
            raise ApiError(200, "invalid_reply", f"unreadable reply to POST /sessions/events: {exc}") from None

    # --- agents -------------------------------------------------------------------------

    async def register_host(self, registration: HostRegistration) -> Host:
        return await self._call("POST", "/hosts", self.agent_token, registration, Host)

    async def heartbeat(self, host_id: str, heartbeat: Heartbeat) -> HeartbeatReply:
        return await self._call("POST", f"/hosts/{_q(host_id)}/heartbeat", self.agent_token, heartbeat, HeartbeatReply)

    # --- operators ------------------------------------------------------------------------

    async def hosts(self) -> list[Host]:
        return await self._call("GET", "/admin/hosts", self.admin_token, None, list[Host])

    async def slots(self) -> list[Slot]:
        return await self._call("GET", "/admin/slots", self.admin_token, None, list[Slot])

    async def sessions(self) -> list[Session]:
        return await self._call("GET", "/admin/sessions", self.admin_token, None, list[Session])

    async def queues(self) -> list[QueueListing]:
        return await self._call("GET", "/admin/queue", self.admin_token, None, list[QueueListing])

    async def drain(self, host_id: str, draining: bool = True) -> Host:
        body = DrainRequest(draining=draining)
        return await self._call("POST", f"/admin/hosts/{_q(host_id)}/drain", self.admin_token, body, Host)

    async def end_session(self, session_id: str) -> Session:
        """Force-end a live session (end reason ``force_ended``)."""
        return await self._call("DELETE", f"/admin/sessions/{_q(session_id)}", self.admin_token, None, Session)

    async def openapi(self) -> dict[str, Any]:
        return await self._call("GET", "/openapi.json", None, None, dict[str, Any])

    async def aclose(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None


def _api_error(status: int, raw: bytes) -> ApiError:
    try:
        body = _error.decode(raw)
    except msgspec.DecodeError:
        return ApiError(status, f"http_{status}", raw[:200].decode(errors="replace"))
    return ApiError(status, body.error, body.message, body.end_reason)
