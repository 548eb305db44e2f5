"""Batched session reports (``POST /api/v1/sessions/events``): each item authorized and
applied exactly as ``POST /sessions/{id}/events`` would take it alone.

A bad item (a wrong or missing token, a token of another session, an ended session) is
an outcome in the reply, with the status and error code the single route would answer and
the same audit line; it never fails the other items. Items of one session are applied in
list order; different sessions concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from matchmaker import guard
from matchmaker.auth import Refused
from matchmaker.models import ErrorCode, SessionEventItem, SessionEventOutcome
from matchmaker.service import Matchmaker, SessionEnded
from matchmaker.store import StoreError
from pixelfleet.tokens import InvalidToken, verify

ROUTE = "POST /sessions/events"
TAKEN = SessionEventOutcome(status=200)
ErrorReply = Callable[[StoreError], tuple[int, ErrorCode]]


def report_token_needed(items: list[SessionEventItem]) -> SessionEventItem | None:
    """The first item that needs signalling's report token (a connect or disconnect)."""
    return next((item for item in items if item.event in ("connected", "disconnected")), None)


async def apply_all(
    mm: Matchmaker, items: list[SessionEventItem], source: str | None, error_reply: ErrorReply
) -> list[SessionEventOutcome]:
    """Every item's outcome, in order. ``error_reply``: a store error's (status, code)."""
    by_session: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_session.setdefault(item.session_id, []).append(i)
    results: list[SessionEventOutcome] = [TAKEN] * len(items)

    async def one_session(indexes: list[int]) -> None:
        for i in indexes:
            results[i] = await _apply(mm, items[i], source, error_reply)

    await asyncio.gather(*(one_session(indexes) for indexes in by_session.values()))
    return results


async def _apply(
    mm: Matchmaker, item: SessionEventItem, source: str | None, error_reply: ErrorReply
) -> SessionEventOutcome:
    try:
        tenant = authorize(mm, item.session_id, item.token, source)
        await mm.session_event(tenant, item.session_id, item.event)
    except Refused as exc:
        return SessionEventOutcome(status=exc.status, error=exc.code, message=str(exc))  # type: ignore[arg-type]
    except StoreError as exc:
        status, code = error_reply(exc)
        reason = exc.reason if isinstance(exc, SessionEnded) else None
        return SessionEventOutcome(status=status, error=code, message=str(exc), end_reason=reason)
    return TAKEN


def authorize(mm: Matchmaker, session_id: str, token: str | None, source: str | None, route: str = ROUTE) -> str:
    """A session report's own token (expired too), for that very session: the one check of
    both routes. Returns the token's tenant; a refusal is audited and raised (``Refused``)."""
    if not token:
        guard.refuse(
            Refused(401, "unauthorized", "the session token is required"),
            route=route,
            source=source,
            session_id=session_id,
        )
    try:
        claims = verify(mm.keys, token, allow_expired=True)
    except InvalidToken as exc:
        guard.refuse(Refused(401, "invalid_token", str(exc)), route=route, source=source, session_id=session_id)
    if claims.session_id != session_id:
        guard.refuse(
            Refused(403, "wrong_session", "the token is for another session"),
            route=route,
            source=source,
            tenant=claims.tenant,
            session_id=session_id,
        )
    return claims.tenant
