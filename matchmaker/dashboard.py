"""The operator dashboard (docs/observability.md, "Operator dashboard").

A static page (``matchmaker/dashboard/``, plain JS, no build step) at
``/api/v1/admin/dashboard/`` plus two data endpoints under the admin token:
``state`` (one JSON snapshot) and ``events`` (the same snapshot as server-sent events,
every ``period_s``). The page holds no data itself, so it is served without a
credential; the operator types the admin token into its form, the page keeps it in
``sessionStorage`` (this tab only, gone when the tab closes) and sends it as
``Authorization: Bearer`` on every request: no cookie, so no cross-site request can
use it. Hosts and sessions come a page at a time, so the snapshot's size is bounded
whatever the fleet's (500 hosts and 5,000 sessions are one page of each plus counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from matchmaker.http import MATCHMAKER, _admin, _store_errors
from matchmaker.join_trace import percentiles
from matchmaker.metrics import slot_state
from matchmaker.models import Host, Session, Slot
from matchmaker.service import Matchmaker
from matchmaker.store import StoreError

PREFIX = "/api/v1/admin/dashboard"
STATIC_DIR = Path(__file__).parent / "dashboard"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
QUEUE_TICKETS = 20  # waits listed per queue
SAMPLE_S = 10.0  # the chart's resolution
HISTORY_S = 3600.0
_HISTORY = web.AppKey("dashboard_history", deque)
_PERIOD = web.AppKey("dashboard_period_s", float)
# When an operator last looked (monotonic seconds). The chart is sampled only within an hour
# of a look: a sample reads and decodes every slot (one long read inside Redis), and every
# replica would pay it every 10 s for a page nobody has open.
_VIEWED = web.AppKey("dashboard_viewed_at", list)


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise web.HTTPBadRequest(text=f"{name} must be between {lo} and {hi}")
    return value


def _host_state(h: Host) -> str:
    return "dead" if h.dead else "draining" if h.draining else "live"


def _page(n: int, page: int, size: int) -> dict[str, int]:
    return {"page": page, "size": size, "total": n, "pages": max(1, -(-n // size))}


async def snapshot(
    mm: Matchmaker, history: deque[Any], *, hosts_page: int, sessions_page: int, size: int
) -> dict[str, Any]:
    """Counts of everything, one page of hosts (with their slots) and of sessions, the
    queues with their waits, join-time percentiles and the last hour's samples."""
    now = mm.clock()
    hosts = sorted(await mm.hosts(), key=lambda h: h.host_id)
    slots = await mm.store.slots()
    sessions = sorted(await mm.store.sessions(), key=lambda s: (-s.created_at, s.session_id))
    queues = []
    for tenant, app, length in await mm.store.queues():
        tickets = await mm.store.waiting(tenant, app, QUEUE_TICKETS)
        waits = [round(max(0.0, now - t.enqueued_at), 1) for t in tickets]
        queues.append({"tenant": tenant, "app": app, "length": length, "waits_s": waits})
    by_host: dict[str, list[Slot]] = {}
    for sl in slots:
        by_host.setdefault(sl.host_id, []).append(sl)
    host_states = {h.host_id: _host_state(h) for h in hosts}
    h0 = hosts_page * size
    s0 = sessions_page * size
    joins = mm.joins
    return {
        "now": now,
        "counts": {
            "hosts": dict(Counter(host_states.values())),
            # A READY slot of a draining or dead host is counted (and shown) as draining or dead.
            "slots": dict(Counter(slot_state(sl, host_states.get(sl.host_id)) for sl in slots)),
            "sessions": {str(st): n for st, n in Counter(s.state for s in sessions).items()},
            "waiting": sum(q["length"] for q in queues),
        },
        "hosts": {
            **_page(len(hosts), hosts_page, size),
            "items": [_host_row(h, host_states[h.host_id], by_host.get(h.host_id, [])) for h in hosts[h0 : h0 + size]],
        },
        "sessions": {
            **_page(len(sessions), sessions_page, size),
            "items": [_session_row(s, now) for s in sessions[s0 : s0 + size]],
        },
        "queues": queues,
        "join": {
            "queue_wait_s": percentiles([v for _, v in joins.recent(joins.waits)]),
            "first_frame_s": percentiles([v for _, v in joins.recent(joins.first_frames)]),
        },
        "history": list(history),
    }


def _host_row(h: Host, state: str, slots: list[Slot]) -> dict[str, Any]:
    return {
        "host_id": h.host_id,
        "state": state,
        "region": h.region,
        "gpu_model": h.gpu_model,
        "gpu_load": h.gpu_load,
        "nvenc_load": h.nvenc_load,
        "slots": [
            {
                "slot_id": sl.slot_id,
                "app": sl.app,
                "state": slot_state(sl, state),
                "gpu_load": sl.gpu_load,
                "nvenc_load": sl.nvenc_load,
                "session_id": sl.session_id,
            }
            for sl in sorted(slots, key=lambda x: x.slot_id)
        ],
    }


def _session_row(s: Session, now: float) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "tenant": s.tenant,
        "app": s.app,
        "host_id": s.host_id,
        "region": s.region,
        "state": str(s.state),
        "age_s": round(max(0.0, now - s.created_at), 1),
    }


async def _sample(mm: Matchmaker, history: deque[Any]) -> None:
    """One point of the chart: live sessions, waiting tickets, READY slots (of live hosts)."""
    slots = await mm.store.slots()
    queues = await mm.store.queues()
    host_states = {h.host_id: _host_state(h) for h in await mm.hosts()}
    history.append(
        {
            "t": round(mm.clock(), 1),
            "sessions": len(await mm.store.sessions()),
            "waiting": sum(n for _, _, n in queues),
            "ready": sum(1 for sl in slots if slot_state(sl, host_states.get(sl.host_id)) == "ready"),
        }
    )


def _params(request: web.Request) -> dict[str, int]:
    size = _int(request, "size", PAGE_SIZE, 1, MAX_PAGE_SIZE)
    return {
        "hosts_page": _int(request, "hosts_page", 0, 0, 1_000_000),
        "sessions_page": _int(request, "sessions_page", 0, 0, 1_000_000),
        "size": size,
    }


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


async def state(request: web.Request) -> web.Response:
    mm = _admin(request)
    request.app[_VIEWED][0] = time.monotonic()
    data = await snapshot(mm, request.app[_HISTORY], **_params(request))
    return web.Response(body=msgspec.json.encode(data), content_type="application/json")


async def events(request: web.Request) -> web.StreamResponse:
    """``event: state`` with the snapshot now and every ``period_s`` until the client goes."""
    mm = _admin(request)
    params = _params(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    period = request.app[_PERIOD]
    with contextlib.suppress(ConnectionError):
        while True:
            try:
                request.app[_VIEWED][0] = time.monotonic()
                data = await snapshot(mm, request.app[_HISTORY], **params)
                await response.write(b"event: state\ndata: " + msgspec.json.encode(data) + b"\n\n")
            except StoreError as exc:
                await response.write(b"event: problem\ndata: " + msgspec.json.encode({"message": str(exc)}) + b"\n\n")
            await asyncio.sleep(period)
    return response


def create_app(matchmaker: Matchmaker, *, period_s: float = 2.0, sample_s: float = SAMPLE_S) -> web.Application:
    """The dashboard as an app to mount at ``PREFIX`` next to the API."""
    app = web.Application(middlewares=[_store_errors])
    app[MATCHMAKER] = matchmaker
    app[_HISTORY] = deque(maxlen=int(HISTORY_S / sample_s))
    app[_PERIOD] = period_s
    app[_VIEWED] = [-math.inf]
    app.router.add_get("/", page)
    app.router.add_get("/state", state)
    app.router.add_get("/events", events)
    app.router.add_static("/static", STATIC_DIR)

    async def sampler(app: web.Application) -> AsyncIterator[None]:
        async def run() -> None:
            while True:
                if time.monotonic() - app[_VIEWED][0] <= HISTORY_S:
                    with contextlib.suppress(StoreError):
                        await _sample(matchmaker, app[_HISTORY])
                await asyncio.sleep(sample_s)

        task = asyncio.create_task(run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(sampler)
    return app
