"""``POST /api/v1/sessions/events`` against a real matchmaker on memory and Redis: each item
authorized and applied as the single route would, an outcome per item in order, one
session's items in list order, and the request refused only for its body or the report
token."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from matchmaker.client import MatchmakerApi
from matchmaker.config import MatchmakerSettings
from matchmaker.models import Assigned, SessionEventItem, SessionState
from matchmaker.records import MemorySink
from matchmaker.server import MatchmakerServer, build_matchmaker
from pixelfleet.audit import set_audit_sink
from tests.support.hosts import heartbeat, register_host

pytestmark = pytest.mark.integration

AGENT = "agent-token-0123456789"
ADMIN = "admin-token-0123456789"
CALLER_SECRET = "caller-secret-" + "x" * 32
REPORT = "report-token-0123456789"
HEADER = {"X-Pixelfleet-Report-Token": REPORT}


class Target:
    def __init__(self, server: MatchmakerServer, sink: MemorySink, http: aiohttp.ClientSession) -> None:
        self.base = f"http://127.0.0.1:{server.port}"
        self.sink = sink
        self.http = http
        caller = jwt.encode(
            {"tenant": "acme", "sub": "p1", "exp": int(time.time()) + 300}, CALLER_SECRET, algorithm="HS256"
        )
        self.api = MatchmakerApi(self.base, caller_token=caller, agent_token=AGENT, admin_token=ADMIN, http=http)

    async def sessions(self, n: int) -> list[Assigned]:
        await register_host(self.api, "h1", slots=n)
        await self.api.heartbeat("h1", heartbeat(["ready"] * n))
        out = []
        for _ in range(n):
            a = await self.api.create_session("game")
            assert isinstance(a, Assigned)
            out.append(a)
        return out

    async def post(self, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else orjson.dumps(body)
        async with self.http.post(f"{self.base}/api/v1/sessions/events", data=data, headers=headers or {}) as r:
            return r.status, orjson.loads(await r.read())

    async def states(self) -> dict[str, SessionState]:
        return {s.session_id: s.state for s in await self.api.sessions()}


@pytest.fixture(params=["memory", "redis"])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    state_url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    settings = MatchmakerSettings(
        port=0,
        state_url=state_url,
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        session_token_secret="session-secret-" + "y" * 32,
        agent_token=AGENT,
        admin_token=ADMIN,
        caller_jwt_secret=CALLER_SECRET,
        report_token=REPORT,
        reconnect_grace_s=0.0,  # a disconnect ends the session at once: its record shows the order
        sweep_interval_s=0.05,
    )
    sink = MemorySink()
    server = MatchmakerServer(settings, build_matchmaker(settings, sink=sink))
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield Target(server, sink, http)
    await server.stop()


def item(a: Assigned, event: str, token: str | None = None) -> dict[str, str]:
    return {"session_id": a.session_id, "token": a.token if token is None else token, "event": event}


async def test_each_item_gets_its_own_outcome_in_order(target: Target) -> None:
    a, b, c = await target.sessions(3)
    await target.api.end_session(c.session_id)
    lines: list[dict[str, Any]] = []
    set_audit_sink(lines.append)
    try:
        status, body = await target.post(
            {
                "events": [
                    item(a, "connected"),
                    item(b, "connected", token=a.token),  # another session's token
                    item(b, "connected", token=b.token[:-4] + "AAAA"),  # forged
                    item(c, "connected"),  # ended by the operator
                    item(b, "activity", token=""),
                    item(b, "connected"),
                ]
            },
            HEADER,
        )
    finally:
        set_audit_sink(None)
    assert status == 200
    outcomes = [(r["status"], r.get("error"), r.get("end_reason")) for r in body["results"]]
    assert outcomes == [
        (200, None, None),
        (403, "wrong_session", None),
        (401, "invalid_token", None),
        (410, "session_ended", "force_ended"),
        (401, "unauthorized", None),
        (200, None, None),
    ]
    assert await target.states() == {a.session_id: SessionState.CONNECTED, b.session_id: SessionState.CONNECTED}
    refused = [(line["reason"], line["session_id"]) for line in lines if line.get("outcome") == "refused"]
    assert refused == [
        ("wrong_session", b.session_id),
        ("invalid_token", b.session_id),
        ("unauthorized", b.session_id),
    ]
    assert {line["route"] for line in lines if line.get("outcome") == "refused"} == {"POST /sessions/events"}


async def test_one_sessions_items_apply_in_list_order(target: Target) -> None:
    a, b, c, d = await target.sessions(4)
    results = await target.api.session_events(
        [
            SessionEventItem(session_id=a.session_id, token=a.token, event="connected"),
            SessionEventItem(session_id=b.session_id, token=b.token, event="connected"),
            SessionEventItem(session_id=a.session_id, token=a.token, event="disconnected"),
            SessionEventItem(session_id=c.session_id, token=c.token, event="connected"),
            SessionEventItem(session_id=b.session_id, token=b.token, event="disconnected"),
            SessionEventItem(session_id=a.session_id, token=a.token, event="activity"),
            SessionEventItem(session_id=d.session_id, token=d.token, event="disconnected"),
        ],
        report_token=REPORT,
    )
    assert [(r.status, r.end_reason) for r in results.results] == [
        (200, None),
        (200, None),
        (200, None),
        (200, None),
        (200, None),
        (410, "player_left"),  # after its own disconnect, never before
        (200, None),  # never connected: a leave leaves it to its connect timeout, as the single route
    ]
    # Connected before disconnected: a connect applied after the leave would have left them live.
    records = {r.session_id: r for r in target.sink.records}
    assert set(records) == {a.session_id, b.session_id}
    assert all(records[s.session_id].connected_at is not None for s in (a, b))
    assert {records[s.session_id].end_reason for s in (a, b)} == {"player_left"}
    assert await target.states() == {c.session_id: SessionState.CONNECTED, d.session_id: SessionState.ASSIGNED}


async def test_connects_and_leaves_need_the_report_token(target: Target) -> None:
    (a,) = await target.sessions(1)
    for headers in (None, {"X-Pixelfleet-Report-Token": "x" + REPORT}):
        status, body = await target.post({"events": [item(a, "activity"), item(a, "connected")]}, headers)
        assert (status, body["error"]) == (403, "report_token_required")
    assert await target.states() == {a.session_id: SessionState.ASSIGNED}  # nothing of it was applied
    status, body = await target.post({"events": [item(a, "activity")]})  # the page's own report
    assert (status, body["results"]) == (200, [{"status": 200}])
    status, body = await target.post({"events": [item(a, "connected")]}, HEADER)
    assert (status, body["results"]) == (200, [{"status": 200}])
    assert await target.states() == {a.session_id: SessionState.CONNECTED}


async def test_the_request_fails_only_for_its_body(target: Target) -> None:
    (a,) = await target.sessions(1)
    cases: list[tuple[dict[str, Any] | None, bytes | None, int, str]] = [
        ({"events": [item(a, "connected", token="t")] * 257}, None, 400, "invalid_body"),  # over 256 items
        ({"events": [item(a, "dance")]}, None, 400, "invalid_body"),
        ({"events": [{"session_id": a.session_id, "event": "connected"}]}, None, 400, "invalid_body"),
        ({"events": [item(a, "connected")], "extra": 1}, None, 400, "invalid_body"),
        (None, b"{not json", 400, "invalid_body"),
        ({"events": [item(a, "activity", token="t" * 1000)] * 70}, None, 413, "too_large"),  # over 64 KiB
    ]
    for body, raw, status, code in cases:
        got, reply = await target.post(body, HEADER, raw=raw)
        assert (got, reply["error"]) == (status, code)
    assert await target.states() == {a.session_id: SessionState.ASSIGNED}
    assert await target.post({"events": []}, HEADER) == (200, {"results": []})
    # As many as fit in 64 KiB with real tokens (256 short items would fit, but never real ones).
    many = 60_000 // len(orjson.dumps(item(a, "connected")))
    assert await target.post({"events": [item(a, "connected")] * many}, HEADER) == (
        200,
        {"results": [{"status": 200}] * many},
    )
    assert await target.states() == {a.session_id: SessionState.CONNECTED}
