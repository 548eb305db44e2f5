"""Signalling's batching reporter (signaling.session_reports) against a small stand-in for
the matchmaker's two report routes on 127.0.0.1: what goes out, together, in which order,
and what happens on a refusal, an error, or a matchmaker without the batch route."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from pixelfleet.tokens import SessionClaims
from signaling.session_reports import HttpReporter
from tests.support.waiting import eventually

REPORT = "report-token-0123456789"


def claims(session_id: str) -> SessionClaims:
    return SessionClaims(tenant="acme", session_id=session_id, streamer_id="h1-0", token_id="j", expires_at=0)


class Matchmaker:
    """Records every request; ``batch`` answers the batch route (None: it has none)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, str]]] = []  # (session, event) per item, per request
        self.singles: list[tuple[str, str]] = []
        self.headers: list[str | None] = []
        self.batch: Callable[[list[dict[str, str]]], Awaitable[web.Response]] | None = self.take_all
        self.single_status = 200
        self.url = ""

    async def take_all(self, items: list[dict[str, str]]) -> web.Response:
        return web.json_response({"results": [{"status": 200} for _ in items]})

    async def on_batch(self, request: web.Request) -> web.Response:
        if self.batch is None:
            raise web.HTTPNotFound()
        items = orjson.loads(await request.read())["events"]
        self.batches.append([(i["session_id"], i["event"]) for i in items])
        self.headers.append(request.headers.get("X-Pixelfleet-Report-Token"))
        return await self.batch(items)

    async def on_single(self, request: web.Request) -> web.Response:
        event = orjson.loads(await request.read())["event"]
        self.singles.append((request.match_info["session_id"], event))
        return web.json_response({"ok": True} if self.single_status == 200 else {}, status=self.single_status)


@pytest.fixture
async def mm() -> AsyncIterator[Matchmaker]:
    fake = Matchmaker()
    app = web.Application()
    app.router.add_post("/api/v1/sessions/events", fake.on_batch)
    app.router.add_post("/api/v1/sessions/{session_id}/events", fake.on_single)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


async def report_all(reporter: HttpReporter, reports: list[tuple[str, str]]) -> list[Any]:
    """Every report made at once (as the gate's tasks do), in list order."""
    return await asyncio.gather(
        *(reporter.report(event, claims(sid), f"tok-{sid}") for sid, event in reports), return_exceptions=True
    )


async def test_reports_made_together_go_in_one_batch_in_order(mm: Matchmaker) -> None:
    reporter = HttpReporter(mm.url, report_token=REPORT, batch_max=64, linger_s=0.05)
    reports = [("s1", "connected"), ("s2", "connected"), ("s1", "disconnected"), ("s3", "connected")]
    try:
        assert await report_all(reporter, reports) == [None] * 4
    finally:
        await reporter.aclose()
    assert mm.batches == [reports]
    assert mm.headers == [REPORT] and mm.singles == []


async def test_a_full_batch_leaves_without_lingering_and_order_holds_across_batches(mm: Matchmaker) -> None:
    # A linger far longer than the test's own limit: only a full batch can leave in time.
    reporter = HttpReporter(mm.url, batch_max=2, linger_s=3600)
    reports = [("s1", "connected"), ("s2", "connected"), ("s1", "disconnected"), ("s2", "disconnected")]
    try:
        assert await asyncio.wait_for(report_all(reporter, reports), 30) == [None] * 4
    finally:
        await reporter.aclose()
    assert mm.batches == [reports[:2], reports[2:]]


async def test_close_sends_what_is_queued(mm: Matchmaker) -> None:
    reporter = HttpReporter(mm.url, batch_max=64, linger_s=3600)
    pending = asyncio.gather(*(reporter.report("connected", claims(s), "t") for s in ("s1", "s2")))
    await asyncio.sleep(0)  # both queued, the batch lingering
    assert mm.batches == []
    await asyncio.wait_for(reporter.aclose(), 30)
    assert await pending == [None, None]
    assert mm.batches == [[("s1", "connected"), ("s2", "connected")]]


async def test_a_matchmaker_without_the_batch_route_gets_single_reports_from_then_on(mm: Matchmaker) -> None:
    mm.batch = None
    reporter = HttpReporter(mm.url, batch_max=64, linger_s=0.01)
    first = [("s1", "connected"), ("s2", "connected"), ("s1", "disconnected")]
    try:
        assert await report_all(reporter, first) == [None] * 3
        assert not reporter.batches
        assert await report_all(reporter, [("s3", "connected")]) == [None]
    finally:
        await reporter.aclose()
    assert mm.batches == []
    assert sorted(mm.singles[:3]) == sorted(first) and mm.singles[3] == ("s3", "connected")
    assert mm.singles.index(("s1", "connected")) < mm.singles.index(("s1", "disconnected"))


async def test_refusals_and_ended_sessions_are_final_and_only_5xx_items_are_retried(mm: Matchmaker) -> None:
    answers = iter(
        [
            [{"status": 200}, {"status": 410, "error": "session_ended", "end_reason": "host_dead"}, {"status": 503}],
            [{"status": 403, "error": "wrong_session"}],
        ]
    )

    async def once_each(items: list[dict[str, str]]) -> web.Response:
        return web.json_response({"results": next(answers)})

    mm.batch = once_each
    reporter = HttpReporter(mm.url, batch_max=64, linger_s=0.01, attempts=3)
    reports = [("s1", "connected"), ("s2", "disconnected"), ("s3", "connected")]
    try:
        assert await report_all(reporter, reports) == [None] * 3
    finally:
        await reporter.aclose()
    assert mm.batches == [reports, [("s3", "connected")]]


async def test_a_batch_without_an_answer_is_retried_then_given_up(mm: Matchmaker) -> None:
    calls = 0

    async def failing(items: list[dict[str, str]]) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({"error": "backend_unavailable", "message": "down"}, status=503)

    mm.batch = failing
    reporter = HttpReporter(mm.url, batch_max=64, linger_s=0.0, attempts=2)
    try:
        [outcome] = await report_all(reporter, [("s1", "connected")])
    finally:
        await reporter.aclose()
    assert isinstance(outcome, ConnectionError) and calls == 2


async def test_batch_max_one_uses_the_single_route(mm: Matchmaker) -> None:
    reporter = HttpReporter(mm.url, batch_max=1)
    try:
        assert await report_all(reporter, [("s1", "connected")]) == [None]
    finally:
        await reporter.aclose()
    assert (mm.batches, mm.singles) == ([], [("s1", "connected")])


async def test_close_gives_up_on_a_matchmaker_that_does_not_answer(mm: Matchmaker) -> None:
    release = asyncio.Event()

    async def hanging(items: list[dict[str, str]]) -> web.Response:
        await release.wait()
        return web.json_response({"results": [{"status": 200} for _ in items]})

    mm.batch = hanging
    reporter = HttpReporter(mm.url, batch_max=64, linger_s=0.0, timeout_s=3600)
    pending = asyncio.gather(*(reporter.report("connected", claims(s), "t") for s in ("s1", "s2")))
    await eventually(lambda: mm.batches, "the batch in flight", within_s=30)
    await reporter.aclose(timeout_s=0.05)
    release.set()
    assert [type(e) for e in await asyncio.gather(pending, return_exceptions=True)] == [ConnectionError]
