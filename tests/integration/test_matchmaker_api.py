"""The matchmaker over HTTP, on both backends: allocation, queue, lifecycle, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import msgspec
import orjson
import pytest

from matchmaker import service
from matchmaker.client import ApiError, MatchmakerApi
from matchmaker.config import MatchmakerSettings
from matchmaker.models import (
    AllocationRequest,
    EndReason,
    Heartbeat,
    HeartbeatReply,
    Host,
    HostRegistration,
    Session,
    SessionEventName,
    SlotReport,
    SlotReset,
    SlotSpec,
    SlotState,
    Ticket,
    TicketState,
)
from matchmaker.records import MemorySink
from matchmaker.server import MatchmakerServer, build_matchmaker
from matchmaker.service import Matchmaker
from matchmaker.store import BackendUnavailable
from matchmaker.store_redis import RedisStore
from pixelfleet.audit import set_audit_sink
from pixelfleet.tokens import TokenKeys, verify
from signaling.sessions import HttpReporter, SessionGate
from tests.conftest import StartSignaling
from tests.support.hosts import heartbeat, register_host
from tests.support.redis_peek import PipelineCount

pytestmark = pytest.mark.integration

AGENT = "agent-token-0123456789"
ADMIN = "admin-token-0123456789"
CALLER_SECRET = "caller-secret-" + "x" * 32
TOKEN_SECRET = "session-secret-" + "y" * 32
WAIT = 10.0


def caller_token(tenant: str = "acme", ttl: int = 300, secret: str = CALLER_SECRET, sub: str | None = None) -> str:
    claims = {"tenant": tenant, "sub": sub or f"player-of-{tenant}", "exp": int(time.time()) + ttl}
    return jwt.encode(claims, secret, algorithm="HS256")


class Clock:
    """The matchmaker's clock, moved on by the test instead of sleeping through timeouts."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Api:
    """The server under test: ``client`` (the typed client, agent and admin tokens) for
    agents and operators; ``call`` for raw requests (bad bodies, statuses read as such)."""

    def __init__(self, http: aiohttp.ClientSession, base: str, sink: MemorySink, mm: Matchmaker) -> None:
        self.http = http
        self.base = base
        self.sink = sink
        self.mm = mm
        self.client = MatchmakerApi(base, agent_token=AGENT, admin_token=ADMIN, http=http)

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        if token is None and path.startswith("/api/v1/queue/"):
            token = caller_token()  # a ticket is read by the caller that made it
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else (None if body is None else orjson.dumps(body))
        async with self.http.request(method, self.base + path, data=data, headers=headers) as r:
            text = await r.read()
            return r.status, (orjson.loads(text) if text else None)

    def sse(self, path: str) -> Any:
        """A ticket's event stream, opened by the caller that made the ticket."""
        return self.http.get(self.base + path, headers={"Authorization": f"Bearer {caller_token()}"})

    async def register(
        self, host: str = "h1", slots: int = 1, boot: str = "b1", tenant: str = "acme", app: str = "game"
    ) -> Host:
        return await register_host(self.client, host, boot=boot, slots=slots, tenant=tenant, app=app)

    async def beat(
        self,
        host: str = "h1",
        states: list[str] | None = None,
        boot: str = "b1",
        reset_for: dict[int, str] | None = None,
    ) -> HeartbeatReply:
        reply = await self.client.heartbeat(host, heartbeat(states or ["ready"], boot=boot, reset_for=reset_for))
        # Streamer credentials are checked in test_attacks_matchmaker; here, the rest of the reply.
        return msgspec.structs.replace(reply, streamer_tokens=msgspec.UNSET)

    async def allocate(self, app: str = "game", tenant: str = "acme", **extra: Any) -> tuple[int, Any]:
        return await self.call("POST", "/api/v1/sessions", {"app": app, **extra}, caller_token(tenant))

    async def event(self, session_id: str, token: str, event: str) -> tuple[int, Any]:
        return await self.call("POST", f"/api/v1/sessions/{session_id}/events", {"event": event}, token)


MakeApi = Callable[..., Awaitable[Api]]


@pytest.fixture(params=["memory", "redis"])
async def make_api(request: pytest.FixtureRequest) -> AsyncIterator[MakeApi]:
    servers: list[MatchmakerServer] = []
    state_url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    http = aiohttp.ClientSession()

    async def make(clock: Callable[[], float] = time.time, **overrides: Any) -> Api:
        settings = MatchmakerSettings(
            **{
                "port": 0,
                "state_url": state_url,
                "key_prefix": f"t{uuid.uuid4().hex[:8]}",
                "session_token_secret": TOKEN_SECRET,
                "agent_token": AGENT,
                "admin_token": ADMIN,
                "caller_jwt_secret": CALLER_SECRET,
                "sweep_interval_s": 0.05,
                **overrides,
            }
        )
        sink = MemorySink()
        server = MatchmakerServer(settings, build_matchmaker(settings, sink=sink, clock=clock))
        await server.start()
        servers.append(server)
        return Api(http, f"http://127.0.0.1:{server.port}", sink, server.matchmaker)

    yield make
    for server in servers:
        await server.stop()
    await http.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


async def test_allocation_mints_a_scoped_session_token(make_api: MakeApi) -> None:
    api = await make_api()
    assert (await api.register(slots=2)).slot_ids == ["h1/0", "h1/1"]
    assert await api.beat(states=["ready", "ready"]) == HeartbeatReply(reset=[], draining=False)
    status, a = await api.allocate(region="eu")
    assert status == 201 and a["status"] == "assigned"
    claims = verify(TokenKeys.hs256(TOKEN_SECRET), a["token"])
    assert (claims.tenant, claims.session_id, claims.streamer_id) == ("acme", a["session_id"], a["streamer_id"])
    status, b = await api.allocate()
    assert status == 201 and b["streamer_id"] != a["streamer_id"]


@pytest.mark.parametrize("case", ["no-token", "forged", "expired", "no-tenant"])
async def test_caller_tokens_are_checked(make_api: MakeApi, case: str) -> None:
    api = await make_api()
    await api.register()
    token = {
        "no-token": None,
        "forged": caller_token(secret="not-the-secret-" + "z" * 32),
        "expired": caller_token(ttl=-60),
        "no-tenant": jwt.encode({"exp": int(time.time()) + 60}, CALLER_SECRET, algorithm="HS256"),
    }[case]
    status, body = await api.call("POST", "/api/v1/sessions", {"app": "game"}, token)
    assert status == 401 and body["error"] in ("unauthorized", "invalid_token", "token_expired")


async def test_a_remembered_caller_token_still_expires(make_api: MakeApi) -> None:
    """Verified caller tokens are cached; a hit must still honour ``exp``, and a token
    signed with another secret must not pass through another app's cache."""
    api = await make_api(caller_leeway_s=0)
    await api.register()
    await api.beat(states=["dead"])  # served but nothing READY: requests queue, nothing is used up
    exp = int(time.time()) + 2
    token = jwt.encode({"tenant": "acme", "sub": "p1", "exp": exp}, CALLER_SECRET, algorithm="HS256")
    for _ in range(2):
        status, body = await api.call("POST", "/api/v1/sessions", {"app": "game"}, token)
        assert status == 202, body
    other = await make_api(caller_jwt_secret="another-secret-" + "q" * 32, caller_leeway_s=0)
    await other.register()
    status, body = await other.call("POST", "/api/v1/sessions", {"app": "game"}, token)
    assert status == 401 and body["error"] == "invalid_token"
    while time.time() <= exp + 0.05:  # past exp for pyjwt and the cache alike
        await asyncio.sleep(0.1)
    status, body = await api.call("POST", "/api/v1/sessions", {"app": "game"}, token)
    assert status == 401 and body["error"] == "token_expired"


async def test_bad_input_gets_clear_4xx_and_corrupts_nothing(make_api: MakeApi) -> None:
    api = await make_api()
    await api.register()
    await api.beat()
    cases: list[tuple[Awaitable[tuple[int, str]], int, str]] = [
        (_code(api.allocate(app="nope")), 404, "unknown_app"),
        (_code(api.allocate(tenant="other")), 404, "unknown_app"),
        (_code(api.call("POST", "/api/v1/sessions", raw=b"{not json", token=caller_token())), 400, "invalid_body"),
        (_code(api.call("POST", "/api/v1/sessions", {"app": 5}, caller_token())), 400, "invalid_body"),
        (_code(api.call("POST", "/api/v1/sessions", {"app": "game", "evil": 1}, caller_token())), 400, "invalid_body"),
        (
            _code(api.call("POST", "/api/v1/sessions", raw=b'{"app":"' + b"a" * 70000 + b'"}', token=caller_token())),
            413,
            "too_large",
        ),
        (_failure(api.beat(host="never-registered")), 404, "unknown_host"),
        (_failure(api.register(boot="other-boot")), 409, "host_conflict"),
        (_failure(api.beat(boot="other-boot")), 409, "host_conflict"),
        (_code(api.call("POST", "/api/v1/hosts", {"host_id": "h2"}, AGENT)), 400, "invalid_body"),
        (_code(api.call("POST", "/api/v1/hosts", _one_index_twice(), AGENT)), 400, "invalid_body"),
        (
            _code(api.call("POST", "/api/v1/hosts/h1/heartbeat", {"boot_id": "b1", "slots": []}, "wrong")),
            401,
            "unauthorized",
        ),
        (_code(api.call("GET", "/api/v1/admin/hosts", token=None)), 401, "unauthorized"),
        (_failure(api.client.ticket("t-nope", caller_token=caller_token())), 404, "unknown_session"),
    ]
    for call, status, code in cases:
        assert await call == (status, code)
    # Nothing was corrupted: the one slot is still there and still allocatable.
    status, a = await api.allocate()
    assert status == 201


def _one_index_twice() -> dict[str, Any]:
    spec = {"index": 0, "tenant": "acme", "app": "game", "streamer_id": "h3-0"}
    return {"host_id": "h3", "boot_id": "b", "signaling_url": "ws://h3", "slots": [spec, {**spec, "streamer_id": "x"}]}


async def _code(call: Awaitable[tuple[int, Any]]) -> tuple[int, str]:
    """A raw request's status and error code."""
    status, body = await call
    return status, body["error"]


async def _failure(call: Awaitable[object]) -> tuple[int, str]:
    """The typed client's ApiError, as (status, code)."""
    with pytest.raises(ApiError) as failed:
        await call
    return failed.value.status, failed.value.code


async def test_registration_is_idempotent_for_the_same_boot(make_api: MakeApi) -> None:
    api = await make_api()
    first, again = await api.register(), await api.register()
    assert again == msgspec.structs.replace(first, last_heartbeat=again.last_heartbeat)


async def test_queue_position_eta_live_updates_and_service(make_api: MakeApi) -> None:
    api = await make_api(reconnect_grace_s=0.0)
    await api.register()
    await api.beat()
    _, first = await api.allocate()
    status, queued = await api.allocate()
    assert status == 202 and queued["position"] == 1 and queued["eta_s"] > 0
    _, third = await api.allocate()
    assert third["position"] == 2
    events: list[dict[str, Any]] = []

    async def listen() -> None:
        async with api.sse(queued["events"]) as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    events.append(orjson.loads(line[6:]))
                    if events[-1]["status"] != "waiting":
                        return

    listener = asyncio.create_task(listen())
    await eventually(lambda: _async(bool(events)), "the first queue event")
    assert events[0]["position"] == 1
    # The first player connects, then leaves; the slot resets and goes to the queue head.
    assert (await api.event(first["session_id"], first["token"], "connected"))[0] == 200
    assert (await api.event(first["session_id"], first["token"], "disconnected"))[0] == 200
    reply = await api.beat()
    assert reply.reset == [SlotReset(index=0, session_id=first["session_id"])]
    await api.beat(reset_for={0: first["session_id"]})
    await asyncio.wait_for(listener, WAIT)
    assert events[-1]["status"] == "assigned" and events[-1]["token"]
    _, third_now = await api.call("GET", f"/api/v1/queue/{third['ticket_id']}")
    assert third_now["position"] == 1
    await eventually(lambda: _async(len(api.sink.records) == 1), "the record to be written")
    [record] = api.sink.records
    assert (record.session_id, record.end_reason, record.tenant) == (first["session_id"], "player_left", "acme")
    assert record.connected_at is not None


async def _async(value: bool) -> bool:
    return value


async def test_queue_limits(make_api: MakeApi) -> None:
    api = await make_api(queue_max_length=1, queue_max_wait_s=0.2)
    await api.register()
    await api.beat()
    await api.allocate()
    status, waiting = await api.allocate()
    assert status == 202
    status, body = await api.allocate()
    assert status == 429 and body["error"] == "queue_full"

    async def expired() -> bool:
        return bool((await api.call("GET", f"/api/v1/queue/{waiting['ticket_id']}"))[1]["status"] == "expired")

    await eventually(expired, "the ticket to expire")


async def test_closing_the_event_stream_cancels_the_ticket(make_api: MakeApi) -> None:
    """Without a client key nobody can take the place back, so it goes at hang-up."""
    api = await make_api()
    await api.register()
    await api.beat()
    await api.allocate()
    _, waiting = await api.allocate()
    async with api.sse(waiting["events"]) as r:
        await r.content.readline()

    async def cancelled() -> bool:
        return bool((await api.call("GET", f"/api/v1/queue/{waiting['ticket_id']}"))[1]["status"] == "cancelled")

    await eventually(cancelled, "cancel on disconnect")


async def test_reconnect_within_grace_keeps_the_slot(make_api: MakeApi) -> None:
    api = await make_api(reconnect_grace_s=30.0)
    await api.register(slots=2)
    await api.beat(states=["ready", "ready"])
    _, a = await api.allocate(client_key="alice")
    await api.event(a["session_id"], a["token"], "connected")
    await api.event(a["session_id"], a["token"], "disconnected")
    _, again = await api.allocate(client_key="alice")
    assert (again["session_id"], again["streamer_id"]) == (a["session_id"], a["streamer_id"])
    assert again["token"] != a["token"]
    _, other = await api.allocate(client_key="bob")
    assert other["streamer_id"] != a["streamer_id"]


async def test_never_connected_and_max_length_end_sessions_with_reasons(make_api: MakeApi) -> None:
    api = await make_api(connect_timeout_s=0.2, max_session_s=0.6)
    await api.register(slots=2)
    await api.beat(states=["ready", "ready"])
    _, lazy = await api.allocate()
    _, busy = await api.allocate()
    await api.event(busy["session_id"], busy["token"], "connected")
    await eventually(lambda: _async(len(api.sink.records) == 2), "both sessions to end")
    reasons = {r.session_id: r.end_reason for r in api.sink.records}
    assert reasons == {lazy["session_id"]: "never_connected", busy["session_id"]: "max_session_length"}


async def _ready_slots(mm: Matchmaker, n: int, t: float) -> None:
    """Host h1 with ``n`` READY slots of acme/game, straight in the store."""
    slots = [SlotSpec(index=i, tenant="acme", app="game", streamer_id=f"h1-{i}") for i in range(n)]
    await mm.store.register_host(
        HostRegistration(host_id="h1", boot_id="b1", signaling_url="ws://127.0.0.1:1", slots=slots), t
    )
    ready = [SlotReport(index=i, state=SlotState.READY) for i in range(n)]
    await mm.store.heartbeat("h1", Heartbeat(boot_id="b1", slots=ready), t)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_one_sweep_ends_more_due_sessions_than_one_store_read_returns(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """The sweep reads due sessions in bounded rounds and goes on while rounds come back full."""
    url = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
    settings = MatchmakerSettings(
        state_url=url,
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        session_token_secret=TOKEN_SECRET,
        heartbeat_ttl_s=1e9,
        connect_timeout_s=60.0,
    )
    sink = MemorySink()
    mm = build_matchmaker(settings, sink=sink)
    t = 1_800_000_000.25
    n = 2 * service._DUE_BATCH + 34
    try:
        await _ready_slots(mm, n + 1, t)
        ids = []
        for i in range(n + 1):
            s = await mm.store.allocate(
                AllocationRequest(tenant="acme", app="game"), f"s-{i}", t + i / 1000, policy="spread"
            )
            assert isinstance(s, Session)
            ids.append(s.session_id)
        await mm.store.mark_connected(ids[-1], t + 30.0)  # not due
        mm.clock = lambda: t + 61.0 + n / 1000
        pipelines = None
        if isinstance(mm.store, RedisStore):  # as a replica that did not allocate them: no lookup cached
            mm.store._session_tenant.clear()
            pipelines = PipelineCount(mm.store)
        await mm.sweep()
        if pipelines is not None:  # an end is its script and its lookup's DEL: the guard's tenant saves the GET
            assert pipelines.n < 2.2 * n, pipelines.n
        assert sorted(r.session_id for r in sink.records) == sorted(ids[:-1])
        assert {r.end_reason for r in sink.records} == {EndReason.NEVER_CONNECTED}
        assert [s.session_id for s in await mm.store.sessions()] == [ids[-1]]
    finally:
        await mm.aclose()


async def test_a_sweep_whose_ends_partly_fail_records_those_that_took_then_fails() -> None:
    """An end the store refuses stops the sweep and fails it (logged by its loop, the rest
    left to the next), but the sessions that did end are still counted and audited."""
    settings = MatchmakerSettings(
        state_url="memory://", session_token_secret=TOKEN_SECRET, heartbeat_ttl_s=1e9, connect_timeout_s=60.0
    )
    mm = build_matchmaker(settings, sink=MemorySink())
    t = 1_800_000_000.0
    audited: list[dict[str, Any]] = []
    set_audit_sink(audited.append)
    try:
        await _ready_slots(mm, 3, t)
        ids = []
        for i in range(3):
            s = await mm.store.allocate(AllocationRequest(tenant="acme", app="game"), f"s-{i}", t, policy="spread")
            assert isinstance(s, Session)
            ids.append(s.session_id)
        real = mm.store.end_session

        async def refusing(session_id: str, *args: Any, **kw: Any) -> Session | None:
            if session_id == ids[1]:
                raise BackendUnavailable("redis did not answer")
            return await real(session_id, *args, **kw)

        setattr(mm.store, "end_session", refusing)  # noqa: B010 - mypy forbids assigning to a method
        mm.clock = lambda: t + 61.0
        with pytest.raises(BackendUnavailable):
            await mm.sweep()
        ended = [e["session_id"] for e in audited if e["event"] == "session_end"]
        assert len(ended) == 1 and ended[0] != ids[1]  # the first in the sweep's order took
        assert sorted(s.session_id for s in await mm.store.sessions()) == sorted(set(ids) - set(ended))
        setattr(mm.store, "end_session", real)  # noqa: B010 - the next sweep ends the rest
        await mm.sweep()
        assert await mm.store.sessions() == []
    finally:
        set_audit_sink(None)
        await mm.aclose()


async def test_dead_host_ends_sessions_and_leaves_the_pool(make_api: MakeApi) -> None:
    api = await make_api(heartbeat_ttl_s=0.3)
    await api.register()
    await api.beat()
    _, a = await api.allocate()
    await eventually(lambda: _async(len(api.sink.records) == 1), "the host to die")
    assert api.sink.records[0].end_reason == "host_dead"
    assert await _failure(api.beat()) == (404, "unknown_host")
    status, queued = await api.allocate()
    assert status == 202  # the app is still known, but nothing is ready


async def test_an_agent_drains_its_own_host_with_its_heartbeat(make_api: MakeApi) -> None:
    """An agent shutting down (SIGTERM, Spot notice) says so in its heartbeat, with the
    agent token: the host takes no new sessions. A heartbeat never undoes a drain."""
    api = await make_api()
    await api.register(slots=2)
    await api.beat(states=["ready", "ready"])
    status, first = await api.allocate()
    assert status == 201
    beat = heartbeat(["ready", "ready"])
    reply = await api.client.heartbeat("h1", msgspec.structs.replace(beat, draining=True))
    assert reply.draining is True
    assert [h.draining for h in await api.client.hosts()] == [True]
    status, queued = await api.allocate()
    assert status == 202, queued  # the free slot is on a draining host
    assert (await api.client.heartbeat("h1", beat)).draining is True  # still draining
    assert (await api.client.drain("h1", False)).draining is False
    await eventually(lambda: _async_status(api, queued["ticket_id"], "assigned"), "the queued player to be served")


async def _async_status(api: Api, ticket_id: str, want: str) -> bool:
    return bool((await api.call("GET", f"/api/v1/queue/{ticket_id}"))[1]["status"] == want)


async def test_admin_lists_drains_and_force_ends(make_api: MakeApi) -> None:
    api = await make_api()
    await api.register(slots=2)
    await api.beat(states=["ready", "ready"])
    _, a = await api.allocate()
    assert [h.host_id for h in await api.client.hosts()] == ["h1"]
    assert sorted(s.state for s in await api.client.slots()) == ["assigned", "ready"]
    assert [s.session_id for s in await api.client.sessions()] == [a["session_id"]]
    assert (await api.client.drain("h1")).draining is True
    status, queued = await api.allocate()
    assert status == 202
    [queue] = await api.client.queues()
    assert (queue.tenant, queue.app, queue.length) == ("acme", "game", 1)
    assert [t.ticket_id for t in queue.tickets] == [queued["ticket_id"]]
    ended = await api.client.end_session(a["session_id"])
    assert ended.end_reason is EndReason.FORCE_ENDED
    assert await _failure(api.client.end_session(a["session_id"])) == (404, "unknown_session")
    await eventually(lambda: _async(len(api.sink.records) == 1), "the record to be written")
    assert [r.end_reason for r in api.sink.records] == ["force_ended"]
    assert await _failure(api.client.drain("ghost")) == (404, "unknown_host")


async def test_session_events_need_that_sessions_token(make_api: MakeApi) -> None:
    api = await make_api()
    await api.register(slots=2)
    await api.beat(states=["ready", "ready"])
    _, a = await api.allocate()
    _, b = await api.allocate()
    assert (await api.event(a["session_id"], b["token"], "connected"))[0] == 403
    assert (await api.event(a["session_id"], a["token"] + "x", "connected"))[0] == 401
    assert (await api.event(a["session_id"], a["token"], "dance"))[0] == 400


@pytest.mark.parametrize("reconnect_grace_s", [0.0, 30.0])
async def test_an_event_for_an_ended_session_answers_410_with_the_reason(
    make_api: MakeApi, reconnect_grace_s: float
) -> None:
    """Final, not 200: the reporter stops, and learns why the session went."""
    api = await make_api(reconnect_grace_s=reconnect_grace_s)
    await api.register(slots=2)
    await api.beat(states=["ready", "ready"])
    _, a = await api.allocate()
    _, b = await api.allocate()
    await api.client.session_event(a["session_id"], a["token"], "connected")
    await api.client.end_session(a["session_id"])
    events: tuple[SessionEventName, ...] = ("disconnected", "activity", "connected")
    for event in events:
        with pytest.raises(ApiError) as refused:
            await api.client.session_event(a["session_id"], a["token"], event)
        assert (refused.value.status, refused.value.code, refused.value.end_reason) == (
            410,
            "session_ended",
            "force_ended",
        )
    status, body = await api.event(a["session_id"], a["token"], "activity")
    assert status == 410 and body["end_reason"] == "force_ended" and body["message"]
    # A live session that is not connected takes a disconnect or activity as before.
    assert (await api.client.session_event(b["session_id"], b["token"], "disconnected")).ok
    assert (await api.client.session_event(b["session_id"], b["token"], "activity")).ok


async def test_signalling_admits_by_token_and_reports_to_the_matchmaker(
    make_api: MakeApi, start_signaling: StartSignaling
) -> None:
    """Signalling and matchmaker as separate services, meeting through the token."""
    api = await make_api(reconnect_grace_s=0.0)
    await api.register(slots=1)
    await api.beat()
    gate = SessionGate(TokenKeys.hs256(TOKEN_SECRET), required=True, reporter=HttpReporter(api.base))
    server = await start_signaling(session_gate=gate)
    http = api.http
    streamer = await http.ws_connect(f"ws://127.0.0.1:{server.streamer_port}/")
    await streamer.receive()
    await streamer.receive()
    await streamer.send_str('{"type":"endpointId","id":"h1-0"}')
    await streamer.receive()
    other = await http.ws_connect(f"ws://127.0.0.1:{server.streamer_port}/")
    await other.receive()
    await other.receive()
    await other.send_str('{"type":"endpointId","id":"someone-else"}')
    _, a = await api.allocate()
    url = f"ws://127.0.0.1:{server.player_port}/"
    for bad in ("", "?token=garbage", "?token=" + a["token"][:-2] + "xx"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url + bad)
        assert refused.value.status == 401
    player = await http.ws_connect(url + "?token=" + a["token"])
    assert msgspec.json.decode((await player.receive()).data)["type"] == "config"
    with pytest.raises(aiohttp.WSServerHandshakeError) as replayed:  # tokens are single-use
        await http.ws_connect(url + "?token=" + a["token"])
    assert replayed.value.status == 401
    await player.send_str('{"type":"subscribe","streamerId":"someone-else"}')
    assert msgspec.json.decode((await player.receive()).data)["type"] == "subscribeFailed"
    await player.send_str('{"type":"subscribe","streamerId":"h1-0"}')
    assert msgspec.json.decode((await streamer.receive()).data)["type"] == "playerConnected"

    async def state_is(state: str) -> bool:
        _, sessions = await api.call("GET", "/api/v1/admin/sessions", token=ADMIN)
        return bool(sessions) and sessions[0]["state"] == state

    await eventually(lambda: state_is("connected"), "the connect report")
    await player.close()
    await eventually(lambda: _async(len(api.sink.records) == 1), "the disconnect report to end the session")
    assert api.sink.records[0].end_reason == "player_left"
    await streamer.close()
    await other.close()


async def test_hanging_up_before_the_event_stream_starts_cancels_the_ticket(make_api: MakeApi) -> None:
    """The client is gone before the SSE headers go out (seen under load): the ticket must
    still be cancelled, not left waiting until it expires."""
    api = await make_api()
    await api.register()
    await api.beat()
    await api.allocate()
    _, waiting = await api.allocate()
    host, port = api.base.removeprefix("http://").split(":")
    for _ in range(3):  # whichever way the race goes, the ticket ends cancelled
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        sock.sendall(
            f"GET {waiting['events']} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {caller_token()}\r\n\r\n".encode()
        )
        sock.close()

    async def cancelled() -> bool:
        return bool((await api.call("GET", f"/api/v1/queue/{waiting['ticket_id']}"))[1]["status"] == "cancelled")

    await eventually(cancelled, "cancel on an early hang-up")


# --- queue liveness: gone clients, reloads ---------------------------------------------


async def _stored(api: Api, ticket_id: str) -> Ticket:
    """The ticket as stored (reading it over HTTP would count as hearing its client)."""
    ticket = await api.mm.store.ticket(ticket_id)
    assert ticket is not None
    return ticket


async def _free_the_slot(api: Api, session: dict[str, Any]) -> None:
    """The player on the only slot leaves (no reconnect grace); the agent resets the slot."""
    await api.event(session["session_id"], session["token"], "connected")
    await api.event(session["session_id"], session["token"], "disconnected")
    await api.beat()
    await api.beat(reset_for={0: session["session_id"]})


async def _open_and_close_the_stream(api: Api, events: str) -> None:
    async with api.sse(events) as r:
        assert (await r.content.readline()).startswith(b"event: waiting")


async def test_a_client_never_heard_after_queueing_is_cancelled_and_the_next_served(make_api: MakeApi) -> None:
    clock = Clock()
    api = await make_api(clock=clock, queue_client_ttl_s=3.0, reconnect_grace_s=0.0)
    await api.register()
    await api.beat()
    _, first = await api.allocate()
    _, silent = await api.allocate()  # never opens its stream nor asks again
    _, polling = await api.allocate()  # reads its status now and then
    assert (silent["position"], polling["position"]) == (1, 2)
    clock.now += 2.5
    _, status = await api.call("GET", f"/api/v1/queue/{polling['ticket_id']}")
    assert (status["status"], status["position"]) == ("waiting", 2)
    clock.now += 1.0  # silent: 3.5 s unheard; polling: 1 s

    async def silent_cancelled() -> bool:
        return (await _stored(api, silent["ticket_id"])).state is TicketState.CANCELLED

    await eventually(silent_cancelled, "the silent client's ticket to be cancelled")
    assert "client gone" in ((await _stored(api, silent["ticket_id"])).reason or "")
    await _free_the_slot(api, first)

    async def polling_served() -> bool:
        return bool((await api.call("GET", f"/api/v1/queue/{polling['ticket_id']}"))[1]["status"] == "assigned")

    await eventually(polling_served, "the next ticket to be served instead")
    _, gone = await api.call("GET", f"/api/v1/queue/{silent['ticket_id']}")
    assert gone["status"] == "cancelled" and "client gone" in gone["reason"]


async def test_an_open_event_stream_keeps_its_client_heard(make_api: MakeApi) -> None:
    clock = Clock()
    api = await make_api(clock=clock, queue_client_ttl_s=3.0)
    await api.register()
    await api.beat()
    await api.allocate()
    _, me = await api.allocate()
    opened = asyncio.Event()

    async def listen() -> None:
        async with api.sse(me["events"]) as r:
            async for _ in r.content:
                opened.set()

    listener = asyncio.create_task(listen())
    await asyncio.wait_for(opened.wait(), WAIT)
    clock.now += 1.5  # past a third of the TTL: the stream's next heartbeat records the client
    heard_at = clock.now

    async def heard() -> bool:
        return (await _stored(api, me["ticket_id"])).seen_at == heard_at

    await eventually(heard, "the stream to record its client")
    clock.now += 2.0  # 3.5 s since the POST, 2 s since the stream last said so
    await api.mm.dispatch()
    assert (await _stored(api, me["ticket_id"])).state is TicketState.WAITING
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listener


async def test_a_reload_keeps_the_ticket_and_its_place(make_api: MakeApi) -> None:
    clock = Clock()
    api = await make_api(clock=clock, queue_rejoin_grace_s=2.0, queue_client_ttl_s=60.0)
    await api.register()
    await api.beat()
    await api.allocate()
    _, ahead = await api.allocate(client_key="tab-ahead")
    _, me = await api.allocate(client_key="tab-me")
    assert me["position"] == 2

    async def left() -> bool:
        return (await _stored(api, me["ticket_id"])).left_at is not None

    # The reload: the page's stream closes, then the new page posts again with its key.
    await _open_and_close_the_stream(api, me["events"])
    await eventually(left, "the closed stream to mark the ticket left")
    assert (await _stored(api, me["ticket_id"])).state is TicketState.WAITING
    status, again = await api.allocate(client_key="tab-me")
    assert status == 202 and (again["ticket_id"], again["position"]) == (me["ticket_id"], 2)
    assert again["events"] == me["events"]
    assert (await _stored(api, me["ticket_id"])).left_at is None
    clock.now += 5.0  # well past the grace: a client that came back keeps its place
    await api.mm.dispatch()
    assert await api.mm.store.position(me["ticket_id"]) == 2
    # Opening the stream again also takes the place back.
    await _open_and_close_the_stream(api, me["events"])
    await eventually(left, "the closed stream to mark the ticket left")
    async with api.sse(me["events"]) as r:
        assert (await r.content.readline()).startswith(b"event: waiting")
        assert (await _stored(api, me["ticket_id"])).left_at is None
    _, still = await api.call("GET", f"/api/v1/queue/{ahead['ticket_id']}")
    assert still["position"] == 1


async def test_a_left_ticket_is_skipped_then_cancelled_after_the_grace(make_api: MakeApi) -> None:
    clock = Clock()
    api = await make_api(clock=clock, queue_rejoin_grace_s=2.0, queue_client_ttl_s=60.0, reconnect_grace_s=0.0)
    await api.register()
    await api.beat()
    _, first = await api.allocate()
    _, gone = await api.allocate(client_key="tab-gone")
    _, behind = await api.allocate()
    await _open_and_close_the_stream(api, gone["events"])

    async def left() -> bool:
        return (await _stored(api, gone["ticket_id"])).left_at is not None

    await eventually(left, "the closed stream to mark the ticket left")
    # A slot frees while the head of the queue is away: the ticket behind it gets it.
    await _free_the_slot(api, first)

    async def behind_served() -> bool:
        return bool((await api.call("GET", f"/api/v1/queue/{behind['ticket_id']}"))[1]["status"] == "assigned")

    await eventually(behind_served, "the ticket behind the left one to be served")
    assert await api.mm.store.position(gone["ticket_id"]) == 1
    clock.now += 2.5  # nobody came back within the grace

    async def cancelled() -> bool:
        return (await _stored(api, gone["ticket_id"])).state is TicketState.CANCELLED

    await eventually(cancelled, "the left ticket to be cancelled after the grace")
    _, body = await api.call("GET", f"/api/v1/queue/{gone['ticket_id']}")
    assert body["status"] == "cancelled" and "client gone" in body["reason"]
    # Coming back now is a new ticket.
    status, fresh = await api.allocate(client_key="tab-gone")
    assert status == 202 and fresh["ticket_id"] != gone["ticket_id"]
