"""The typed client (matchmaker.client) against a real matchmaker, on every backend: every
route of the OpenAPI document is called through it, and its replies decode into the
models the document names."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import jwt
import pytest
from aiohttp import web

from matchmaker.client import ApiError, MatchmakerApi
from matchmaker.config import MatchmakerSettings
from matchmaker.models import (
    Assigned,
    EndReason,
    SessionEventItem,
    SlotState,
    TicketCancelled,
    Waiting,
)
from matchmaker.openapi import ROUTES, build_document
from matchmaker.server import MatchmakerServer, build_matchmaker
from pixelfleet.tokens import SessionClaims
from signaling.sessions import HttpReporter
from tests.support.hosts import heartbeat, register_host

pytestmark = pytest.mark.integration

AGENT = "agent-token-0123456789"
ADMIN = "admin-token-0123456789"
CALLER_SECRET = "caller-secret-" + "x" * 32


def _caller(tenant: str = "acme") -> str:
    return jwt.encode(
        {"tenant": tenant, "sub": "caller-1", "exp": int(time.time()) + 300}, CALLER_SECRET, algorithm="HS256"
    )


def _route_of(method: str, path: str) -> str | None:
    """The documented operation a request reached (paths under /api/v1)."""
    for route in ROUTES:
        pattern = "^/api/v1" + re.sub(r"\{\w+\}", "[^/]+", route.path) + "$"
        if route.method == method and re.match(pattern, path):
            return route.operation
    return None


@pytest.fixture(params=["memory", "redis", "cluster"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[MatchmakerServer]:
    fixture = {"redis": "redis_url", "cluster": "redis_cluster_url"}.get(request.param)
    state_url = "memory://" if fixture is None else request.getfixturevalue(fixture)
    settings = MatchmakerSettings(
        port=0,
        state_url=state_url,
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        session_token_secret="session-secret-" + "y" * 32,
        agent_token=AGENT,
        admin_token=ADMIN,
        caller_jwt_secret=CALLER_SECRET,
        reconnect_grace_s=0.0,
        sweep_interval_s=0.05,
    )
    srv = MatchmakerServer(settings, build_matchmaker(settings))
    await srv.start()
    yield srv
    await srv.stop()


async def test_the_client_calls_every_documented_route(server: MatchmakerServer) -> None:
    called: set[str] = set()

    async def on_request_start(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        operation = _route_of(params.method, params.url.path)
        assert operation is not None, f"{params.method} {params.url.path} is not documented"
        called.add(operation)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        api = MatchmakerApi(
            f"http://127.0.0.1:{server.port}",
            caller_token=_caller(),
            agent_token=AGENT,
            admin_token=ADMIN,
            http=http,
        )
        assert await api.openapi() == build_document()

        host = await register_host(api, "h1", slots=1)
        assert host.slot_ids == ["h1/0"]
        assert (await api.heartbeat("h1", heartbeat(["ready"]))).reset == []

        first = await api.create_session("game", region="eu", client_key="alice")
        assert isinstance(first, Assigned) and first.ticket_id is None
        queued = await api.create_session("game")
        assert isinstance(queued, Waiting) and queued.position == 1
        assert queued.events == f"/api/v1/queue/{queued.ticket_id}/events"
        leaving = await api.create_session("game")
        assert isinstance(leaving, Waiting) and leaving.position == 2
        assert await api.cancel_ticket(leaving.ticket_id) == TicketCancelled(
            ticket_id=leaving.ticket_id, reason="cancelled by the client"
        )
        assert isinstance(await api.ticket(leaving.ticket_id), TicketCancelled)

        assert [s.state for s in await api.slots()] == [SlotState.ASSIGNED]
        assert [s.session_id for s in await api.sessions()] == [first.session_id]
        [queue] = await api.queues()
        assert [t.ticket_id for t in queue.tickets] == [queued.ticket_id]
        assert (await api.drain("h1", False)).draining is False
        assert [h.host_id for h in await api.hosts()] == ["h1"]

        # The waiting player's stream: waiting now, assigned once the first player leaves
        # and the agent has reset the slot.
        events = api.ticket_events(queued.ticket_id)
        now = await anext(events)
        assert isinstance(now, Waiting) and now.position == 1
        assert (await api.session_event(first.session_id, first.token, "connected")).ok
        assert (await api.session_event(first.session_id, first.token, "disconnected")).ok
        reset = await api.heartbeat("h1", heartbeat(["ready"]))
        assert [(r.index, r.session_id) for r in reset.reset] == [(0, first.session_id)]
        await api.heartbeat("h1", heartbeat(["ready"], reset_for={0: first.session_id}))
        served = [reply async for reply in events]
        assert isinstance(served[-1], Assigned) and served[-1].ticket_id == queued.ticket_id
        assert all(isinstance(r, Waiting) for r in served[:-1])

        mine, theirs = served[-1], first  # a batch: one item taken, one with another session's token
        batch = await api.session_events(
            [
                SessionEventItem(session_id=mine.session_id, token=mine.token, event="connected"),
                SessionEventItem(session_id=mine.session_id, token=theirs.token, event="activity"),
            ]
        )
        assert [(r.status, r.error) for r in batch.results] == [(200, None), (403, "wrong_session")]
        ended = await api.end_session(served[-1].session_id)
        assert ended.end_reason is EndReason.FORCE_ENDED
        with pytest.raises(ApiError) as gone:
            await api.session_event(ended.session_id, served[-1].token, "connected")
        assert (gone.value.status, gone.value.code, gone.value.end_reason) == (410, "session_ended", "force_ended")
        with pytest.raises(ApiError) as unknown:
            await api.ticket("t-nope")
        assert (unknown.value.status, unknown.value.code) == (404, "unknown_session")
    assert called == {route.operation for route in ROUTES}


async def test_errors_are_typed(server: MatchmakerServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    api = MatchmakerApi(base, caller_token=_caller(), agent_token="wrong", admin_token=None)
    try:
        cases = [
            (api.create_session("nope"), 404, "unknown_app"),
            (api.heartbeat("h1", heartbeat()), 401, "unauthorized"),
            (api.hosts(), 401, "unauthorized"),
            (api.create_session("game", caller_token="not-a-jwt"), 401, "invalid_token"),
        ]
        for call, status, code in cases:
            with pytest.raises(ApiError) as failed:
                await call
            assert (failed.value.status, failed.value.code) == (status, code)
            assert failed.value.message
    finally:
        await api.aclose()


async def test_signalling_does_not_retry_a_410() -> None:
    """The session ended: signalling's reporter takes the answer as final."""
    hits = 0

    async def ended(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        body = {"error": "session_ended", "message": "session s-1 has ended", "end_reason": "host_dead"}
        return web.json_response(body, status=410)

    app = web.Application()
    app.router.add_post("/api/v1/sessions/{session_id}/events", ended)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reporter = HttpReporter(f"http://127.0.0.1:{port}", attempts=3)
    claims = SessionClaims(tenant="acme", session_id="s-1", streamer_id="h1-0", token_id="j", expires_at=0)
    try:
        await reporter.report("disconnected", claims, "token")
        assert hits == 1
    finally:
        await reporter.aclose()
        await runner.cleanup()
