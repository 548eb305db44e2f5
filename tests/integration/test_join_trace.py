"""The join trace (docs/observability.md, "Join trace"): a matchmaker and a signalling
server on real sockets (one event loop, so the SDK's in-memory exporter sees both
sides), a raw streamer and player, and the page's ``first_frame`` report."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import jwt
import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

from matchmaker.config import MatchmakerSettings
from matchmaker.models import EndReason, Heartbeat, HostRegistration, SlotReport, SlotSpec, SlotState
from matchmaker.server import MatchmakerServer
from pixelfleet import tracing
from pixelfleet.logs import configure_logging
from pixelfleet.tokens import TokenKeys
from signaling.sessions import HttpReporter, SessionGate
from tests.conftest import StartSignaling
from tests.support.ws_peers import Peer, connect_streamer

pytestmark = pytest.mark.integration

SECRET = "t" * 32


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(previous)
    provider.shutdown()


@pytest.fixture
async def matchmaker() -> AsyncIterator[MatchmakerServer]:
    settings = MatchmakerSettings(
        port=0,
        session_token_secret=SECRET,
        admin_token="a" * 32,
        allow_anonymous=True,
        sweep_interval_s=0.05,
        reconnect_grace_s=30.0,
    )
    server = MatchmakerServer(settings)
    await server.start()
    mm = server.matchmaker
    reg = HostRegistration(
        host_id="h1",
        boot_id="b1",
        region="eu-west",
        signaling_url="ws://unused",
        slots=[SlotSpec(index=0, tenant="default", app="demo", streamer_id="Cam")],
    )
    await mm.register_host(reg)
    await mm.heartbeat("h1", Heartbeat(boot_id="b1", slots=[SlotReport(index=0, state=SlotState.READY)]))
    yield server
    await server.stop()


def by_name(spans: tuple[ReadableSpan, ...], trace_id: int) -> dict[str, ReadableSpan]:
    out: dict[str, ReadableSpan] = {}
    for s in spans:
        if s.context is not None and s.context.trace_id == trace_id:
            assert s.name not in out, f"two {s.name} spans in one trace"
            out[s.name] = s
    return out


def times(span: ReadableSpan) -> tuple[int, int]:
    assert span.start_time is not None and span.end_time is not None
    return span.start_time, span.end_time


async def test_one_trace_from_post_to_first_frame_with_queue_and_reconnect(
    spans: InMemorySpanExporter, matchmaker: MatchmakerServer, start_signaling: StartSignaling
) -> None:
    mm = matchmaker.matchmaker
    base = f"http://127.0.0.1:{matchmaker.port}/api/v1"
    gate = SessionGate(TokenKeys.hs256(SECRET), required=True, reporter=HttpReporter(base.removesuffix("/api/v1")))
    sig = await start_signaling(session_gate=gate)
    async with aiohttp.ClientSession() as http:
        streamer = await connect_streamer(http, sig.streamer_port, "Cam")
        before = time.time_ns()
        async with http.post(base + "/sessions", json={"app": "demo", "client_key": "k1"}) as r:
            assert r.status == 201
            first = await r.json()
        claims = jwt.decode(first["token"], options={"verify_signature": False})
        root = next(s for s in spans.get_finished_spans() if s.name == "pixelfleet.join")
        assert root.context is not None and root.parent is None
        trace_id = root.context.trace_id
        assert claims["tp"] == f"00-{trace_id:032x}-{root.context.span_id:016x}-{int(root.context.trace_flags):02x}"
        assert dict(root.attributes or {})["pixelfleet.outcome"] == "assigned"

        # Signalling: the player connects with the token, subscribes, gets the offer, answers.
        player = Peer(await http.ws_connect(f"ws://127.0.0.1:{sig.player_port}/?token={first['token']}"))
        assert (await player.recv())["type"] == "config"
        await player.send(type="subscribe", streamerId="Cam")
        pid = (await streamer.recv_type("playerConnected"))["playerId"]
        await streamer.send(type="offer", playerId=pid, sdp="v=0 offer")
        await player.recv_type("offer")
        await player.send(type="answer", sdp="v=0 answer")
        await streamer.recv_type("answer")

        # The page reports its first decoded frame with the session token, twice (a reload).
        url = f"{base}/sessions/{first['session_id']}/events"
        auth = {"Authorization": "Bearer " + first["token"]}
        for _ in range(2):
            async with http.post(url, json={"event": "first_frame"}, headers=auth) as r:
                assert r.status == 200, await r.text()
        histogram = mm.metrics.first_frame.labels("demo", "eu-west")
        assert histogram._sum.get() > 0  # noqa: SLF001 - the histogram's own sample
        count = [
            s for m in mm.metrics.registry.collect() for s in m.samples if s.name.endswith("first_frame_seconds_count")
        ]
        assert [s.value for s in count] == [1.0]  # counted once per session

        one = by_name(spans.get_finished_spans(), trace_id)
        assert set(one) == {"pixelfleet.join", "signaling.connect", "signaling.negotiate", "player.first_frame"}
        for name in ("signaling.connect", "signaling.negotiate", "player.first_frame"):
            parent = one[name].parent
            assert parent is not None and parent.span_id == root.context.span_id, name
        join, connect, negotiate, frame = (
            times(one[n]) for n in ("pixelfleet.join", "signaling.connect", "signaling.negotiate", "player.first_frame")
        )
        assert before <= join[0] <= join[1] <= connect[0] <= connect[1] <= negotiate[0] <= negotiate[1] <= frame[1]
        assert join[0] <= frame[0] <= join[1]  # from the session's creation, inside the request
        assert [e.name for e in one["signaling.negotiate"].events] == ["answer"]

        # A second player queues; the first session ends; the ticket is served.
        async with http.post(base + "/sessions", json={"app": "demo", "client_key": "k2"}) as r:
            assert r.status == 202
            ticket = await r.json()
        root2 = [s for s in spans.get_finished_spans() if s.name == "pixelfleet.join"][-1]
        assert root2.context is not None and root2.context.trace_id != trace_id
        assert dict(root2.attributes or {})["pixelfleet.outcome"] == "queued"
        await player.ws.close()
        await mm.end(first["session_id"], EndReason.FORCE_ENDED)
        await mm.heartbeat(
            "h1",
            Heartbeat(boot_id="b1", slots=[SlotReport(index=0, state=SlotState.READY, reset_for=first["session_id"])]),
        )
        second = await mm.ticket_status(ticket["ticket_id"])
        assert second.allocation is not None
        tp = jwt.decode(second.allocation.token, options={"verify_signature": False})["tp"]
        assert tp.split("-")[1] == f"{root2.context.trace_id:032x}"
        # The same client asks again (a reload): it gets its session back, in the same trace.
        async with http.post(base + "/sessions", json={"app": "demo", "client_key": "k2"}) as r:
            assert r.status == 201
        two = by_name(spans.get_finished_spans(), root2.context.trace_id)
        assert {"pixelfleet.join", "matchmaker.queue_wait", "matchmaker.reattach"} <= set(two)
        wait = two["matchmaker.queue_wait"]
        assert wait.parent is not None and wait.parent.span_id == root2.context.span_id
        assert times(root2)[0] <= times(wait)[0] <= times(root2)[1] <= times(wait)[1]
        assert [e.name for e in two["matchmaker.reattach"].events] == ["reconnect"]
        assert mm.joins.recent(mm.joins.waits) and mm.joins.recent(mm.joins.first_frames)


async def test_nothing_is_traced_or_carried_when_tracing_is_off(matchmaker: MatchmakerServer) -> None:
    assert not tracing.enabled()
    base = f"http://127.0.0.1:{matchmaker.port}/api/v1"
    async with aiohttp.ClientSession() as http, http.post(base + "/sessions", json={"app": "demo"}) as r:
        body = await r.json()
    assert "tp" not in jwt.decode(body["token"], options={"verify_signature": False})
    assert body["session_id"] and (await matchmaker.matchmaker.store.session(body["session_id"])).trace is None  # type: ignore[union-attr]


async def test_a_player_that_reconnects_adds_a_reconnect_event_to_the_session_trace(
    spans: InMemorySpanExporter, matchmaker: MatchmakerServer, start_signaling: StartSignaling
) -> None:
    """A reload: the page's socket closes, the same client asks the matchmaker again and
    gets its session back with a fresh token (tokens are single-use), and opens a second
    socket with it. Both ``signaling.connect`` spans are children of the session's root;
    only the second carries the ``reconnect`` event, as does the matchmaker's reattach."""
    base = f"http://127.0.0.1:{matchmaker.port}/api/v1"
    gate = SessionGate(TokenKeys.hs256(SECRET), required=True, reporter=HttpReporter(base.removesuffix("/api/v1")))
    sig = await start_signaling(session_gate=gate)
    async with aiohttp.ClientSession() as http:
        await connect_streamer(http, sig.streamer_port, "Cam")
        async with http.post(base + "/sessions", json={"app": "demo", "client_key": "k1"}) as r:
            assert r.status == 201
            first = await r.json()
        player = Peer(await http.ws_connect(f"ws://127.0.0.1:{sig.player_port}/?token={first['token']}"))
        assert (await player.recv())["type"] == "config"
        await player.ws.close()
        async with http.post(base + "/sessions", json={"app": "demo", "client_key": "k1"}) as r:
            assert r.status == 201
            again = await r.json()
        assert again["session_id"] == first["session_id"] and again["token"] != first["token"]
        player = Peer(await http.ws_connect(f"ws://127.0.0.1:{sig.player_port}/?token={again['token']}"))
        assert (await player.recv())["type"] == "config"
        await player.ws.close()

    root = next(s for s in spans.get_finished_spans() if s.name == "pixelfleet.join")
    assert root.context is not None
    mine = [
        s for s in spans.get_finished_spans() if s.context is not None and s.context.trace_id == root.context.trace_id
    ]
    # The fresh token names the session's own trace, not the reattach request's.
    assert jwt.decode(again["token"], options={"verify_signature": False})["tp"].split("-")[1] == (
        f"{root.context.trace_id:032x}"
    )
    connects = sorted((s for s in mine if s.name == "signaling.connect"), key=times)
    assert len(connects) == 2
    for span in connects:
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert dict(span.attributes or {})["pixelfleet.session"] == first["session_id"]
    assert times(connects[0])[1] <= times(connects[1])[0]
    assert list(connects[0].events) == []
    assert [(e.name, dict(e.attributes or {})) for e in connects[1].events] == [
        ("reconnect", {"pixelfleet.session": first["session_id"]})
    ]
    reattach = [s for s in mine if s.name == "matchmaker.reattach"]
    assert len(reattach) == 1 and [e.name for e in reattach[0].events] == ["reconnect"]
    assert reattach[0].parent is not None and reattach[0].parent.span_id == root.context.span_id
    assert times(connects[0])[1] <= times(reattach[0])[0] <= times(connects[1])[0]


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def processors_of_the_cli(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The processors ``configure_logging`` (what every service's CLI calls) installs,
    less the renderer, caught without configuring this test process."""
    seen: dict[str, Any] = {}
    with monkeypatch.context() as m:
        m.setattr(structlog, "configure", lambda **kw: seen.update(kw))
        m.setattr(logging, "basicConfig", lambda **kw: None)
        configure_logging("info", "json")
    return list(seen["processors"][:-1])


async def test_log_lines_of_a_join_carry_the_trace_id_of_its_spans(
    spans: InMemorySpanExporter,
    matchmaker: MatchmakerServer,
    start_signaling: StartSignaling,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The matchmaker's allocation line, signalling's lines of the traced player's socket
    and the matchmaker's first_frame line name the trace the session's spans are in."""
    base = f"http://127.0.0.1:{matchmaker.port}/api/v1"
    gate = SessionGate(TokenKeys.hs256(SECRET), required=True, reporter=HttpReporter(base.removesuffix("/api/v1")))
    sig = await start_signaling(session_gate=gate)
    with capture_logs(processors=processors_of_the_cli(monkeypatch)) as lines:
        async with aiohttp.ClientSession() as http:
            streamer = await connect_streamer(http, sig.streamer_port, "Cam")
            async with http.post(base + "/sessions", json={"app": "demo", "client_key": "k1"}) as r:
                assert r.status == 201
                session = await r.json()
            sid = session["session_id"]
            player = Peer(await http.ws_connect(f"ws://127.0.0.1:{sig.player_port}/?token={session['token']}"))
            assert (await player.recv())["type"] == "config"
            await player.send(type="subscribe", streamerId="Cam")
            await streamer.recv_type("playerConnected")
            auth = {"Authorization": "Bearer " + session["token"]}
            url = f"{base}/sessions/{session['session_id']}/events"
            async with http.post(url, json={"event": "first_frame"}, headers=auth) as r:
                assert r.status == 200, await r.text()
            await player.ws.close()
            # The socket's last line, once the server has seen the close.
            conn = next(li["conn"] for li in lines if li["event"] == "connected" and li.get("session") == sid)
            await asyncio.wait_for(
                until(lambda: any(li.get("conn") == conn for li in lines if li["event"] == "disconnected")), 10
            )

    finished = spans.get_finished_spans()
    root = next(s for s in finished if s.name == "pixelfleet.join")
    assert root.context is not None
    trace_id = f"{root.context.trace_id:032x}"
    assert {"signaling.connect", "player.first_frame"} <= {
        s.name for s in finished if s.context is not None and s.context.trace_id == root.context.trace_id
    }
    about = [line for line in lines if line.get("session") == session["session_id"]]
    by_event = {line["event"]: line for line in about}
    for event in ("assigned", "connected", "first_frame"):  # matchmaker, signalling, matchmaker
        assert event in by_event, about
        assert by_event[event].get("trace_id") == trace_id, by_event[event]
    # Every line of the traced player's socket is in the trace, its last one too.
    of_socket = [line for line in lines if line.get("conn") == conn]
    assert {"connected", "disconnected"} <= {line["event"] for line in of_socket}, of_socket
    assert all(line.get("trace_id") == trace_id for line in of_socket), of_socket
    # No line of the session names another trace.
    assert {line["trace_id"] for line in about if "trace_id" in line} == {trace_id}
