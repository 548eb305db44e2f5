"""The matchmaker service: allocation, the queue, and the session lifecycle.

Any number of replicas may run this over one store. Correctness never depends on a
replica's memory: slots are taken only through the store's compare-and-set
(``claim_slot``), each session end is taken by exactly one replica, and each replica's
sweep (host expiry, timeouts, queue dispatch) is safe to run concurrently with the
others'. The only per-replica state is the ETA estimate and wake-ups.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog

from matchmaker.config import MatchmakerSettings
from matchmaker.models import (
    AllocationRequest,
    EndReason,
    Heartbeat,
    HeartbeatReply,
    Host,
    HostRegistration,
    Session,
    Ticket,
    TicketState,
)
from matchmaker.placement import rank
from matchmaker.records import RecordSink
from matchmaker.store import Store, StoreError
from matchmaker.timeouts import due_endings
from pixelfleet.tokens import TokenKeys, mint

log = structlog.get_logger("matchmaker")

_CANDIDATES_TRIED = 8
_SLOT_COUNTS_TTL_S = 1.0  # how stale the slot count behind an ETA may be
_CLAIM_ROUNDS = 3
_DUE_BATCH = 500  # sessions a sweep reads and ends per round
_DUE_ROUNDS = 8   # rounds per sweep at most; the next sweep goes on


class UnknownApp(StoreError):
    status = 404


class UnknownSession(StoreError):
    status = 404


@dataclass(frozen=True, slots=True)
class Allocation:
    session: Session
    token: str


@dataclass(frozen=True, slots=True)
class Queued:
    ticket: Ticket
    position: int
    eta_s: float


@dataclass(frozen=True, slots=True)
class TicketStatus:
    ticket: Ticket
    position: int | None
    eta_s: float | None
    allocation: Allocation | None


class Matchmaker:
    def __init__(self, store: Store, settings: MatchmakerSettings, keys: TokenKeys, sink: RecordSink,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.keys = keys
        self.sink = sink
        self.clock = clock
        self._changed = asyncio.Condition()
        self._mean_session_s = settings.expected_session_s
        self._task: asyncio.Task[None] | None = None
        self._counts: tuple[float, asyncio.Future[collections.Counter[tuple[str, str]]]] | None = None
        self._closing = False

    # --- allocation -------------------------------------------------------------------

    async def allocate(self, request: AllocationRequest) -> Allocation | Queued:
        """A READY slot now, the same slot again for a reconnecting client, or a queue ticket."""
        now = self.clock()
        if request.client_key:
            existing = await self.store.session_for_client(request.tenant, request.client_key)
            if existing is not None and existing.app == request.app:
                again = await self.store.reattach(existing.session_id, now)
                if again is not None:
                    return self._allocation(again)
        # FIFO: nobody overtakes a waiting player.
        if not await self.store.waiting(request.tenant, request.app, 1):
            session = await self._claim(request, None)
            if session is not None:
                return self._allocation(session)
        # Whether the app exists at all matters only now: a live session or a READY slot
        # of it (above) already proves that it does. (One store round trip fewer on the
        # hot path than asking first.)
        if not await self.store.serves(request.tenant, request.app):
            raise UnknownApp(f"no slot serves app {request.app!r} for this tenant")
        ticket = Ticket(ticket_id=_new_id("t"), request=request, enqueued_at=now)
        position = await self.store.enqueue(ticket, self.settings.queue_max_length)
        log.info("queued", ticket=ticket.ticket_id, tenant=request.tenant, app=request.app, position=position)
        await self._notify()
        return Queued(ticket, position, await self._eta(request, position))

    async def _claim(self, request: AllocationRequest, ticket_id: str | None) -> Session | None:
        """Try the best candidates in order; the store's CAS settles races between replicas."""
        for _ in range(_CLAIM_ROUNDS):
            candidates = await self.store.ready_slots(request.tenant, request.app)
            ranked = rank(candidates, request, self.settings.policy)
            if not ranked:
                return None
            now = self.clock()
            for slot in ranked[:_CANDIDATES_TRIED]:
                session = Session(
                    session_id=_new_id("s"), tenant=request.tenant, app=request.app,
                    slot_id=slot.slot_id, host_id=slot.host_id, streamer_id=slot.streamer_id,
                    signaling_url=slot.signaling_url, region=slot.region,
                    client_key=request.client_key, created_at=now, last_activity=now)
                if await self.store.claim_slot(slot.slot_id, session, ticket_id):
                    log.info("assigned", session=session.session_id, slot=slot.slot_id,
                             tenant=request.tenant, app=request.app, queued=ticket_id is not None)
                    return session
                if ticket_id is not None:
                    ticket = await self.store.ticket(ticket_id)
                    if ticket is None or ticket.state is not TicketState.WAITING:
                        return None
        return None

    def _allocation(self, session: Session) -> Allocation:
        token = mint(self.keys, tenant=session.tenant, session_id=session.session_id,
                     streamer_id=session.streamer_id, ttl_s=self.settings.token_ttl_s, now=self.clock())
        return Allocation(session, token)

    async def _eta(self, request: AllocationRequest, position: int) -> float:
        slots = (await self._slot_counts())[(request.tenant, request.app)]
        return round(position * self._mean_session_s / max(slots, 1), 1)

    async def _slot_counts(self) -> collections.Counter[tuple[str, str]]:
        """Slots that are not dead, per (tenant, app), for ETAs. Listing every slot is
        costly and every waiting client's stream re-reads its ETA on each change, so one
        listing serves all callers for ``_SLOT_COUNTS_TTL_S`` (concurrent callers share it)."""
        t = time.monotonic()
        entry = self._counts
        if entry is None or t - entry[0] > _SLOT_COUNTS_TTL_S:
            future = asyncio.ensure_future(self._count_slots())
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, even if unawaited
            entry = self._counts = (t, future)
        try:
            return await asyncio.shield(entry[1])
        except StoreError:
            if self._counts is entry:
                self._counts = None  # the next caller asks again
            raise

    async def _count_slots(self) -> collections.Counter[tuple[str, str]]:
        return collections.Counter((s.tenant, s.app) for s in await self.store.slots() if s.state != "dead")

    # --- the queue, seen by a waiting client ---------------------------------------------

    async def ticket_status(self, ticket_id: str) -> TicketStatus:
        ticket = await self.store.ticket(ticket_id)
        if ticket is None:
            raise UnknownSession(f"no ticket {ticket_id}")
        if ticket.state is TicketState.SERVED and ticket.session_id:
            session = await self.store.session(ticket.session_id)
            return TicketStatus(ticket, None, None, None if session is None else self._allocation(session))
        position = await self.store.position(ticket_id)
        eta = None if position is None else await self._eta(ticket.request, position)
        return TicketStatus(ticket, position, eta, None)

    async def watch(self, ticket_id: str, period_s: float = 1.0) -> AsyncIterator[TicketStatus | None]:
        """The ticket's status now and whenever it changes, until it leaves the queue; None
        every ``period_s`` in between (a heartbeat, so a gone client is noticed).
        Other replicas' changes are picked up by that same periodic re-read."""
        last: tuple[object, ...] | None = None
        while True:
            status = await self.ticket_status(ticket_id)
            key = (status.ticket.state, status.position, status.eta_s)
            if key != last:
                last = key
                yield status
            else:
                yield None
            if status.ticket.state is not TicketState.WAITING:
                return
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), period_s)

    async def cancel(self, ticket_id: str) -> bool:
        done = await self.store.finish_ticket(ticket_id, TicketState.CANCELLED, "cancelled by the client")
        if done:
            await self._notify()
        return done

    # --- session lifecycle (signalling and operators) ------------------------------------

    async def player_connected(self, session_id: str) -> None:
        if await self.store.mark_connected(session_id, self.clock()) is not None:
            log.info("player_connected", session=session_id)

    async def player_disconnected(self, session_id: str) -> None:
        if await self.store.mark_disconnected(session_id, self.clock()) is not None:
            log.info("player_disconnected", session=session_id)
            if not self.settings.reconnect_grace_s:
                await self.end(session_id, EndReason.PLAYER_LEFT)

    async def activity(self, session_id: str) -> None:
        await self.store.touch(session_id, self.clock())

    async def end(self, session_id: str, reason: EndReason) -> Session | None:
        ended = await self.store.end_session(session_id, reason, self.clock())
        if ended is not None:
            await self._record([ended])
        return ended

    async def _record(self, ended: list[Session]) -> None:
        if not ended:
            return
        for s in ended:
            log.info("session_ended", session=s.session_id, reason=str(s.end_reason), slot=s.slot_id)
            if s.ended_at is not None:
                self._mean_session_s = 0.9 * self._mean_session_s + 0.1 * (s.ended_at - s.created_at)
        await self.sink.write(ended)
        await self._notify()

    # --- agents ---------------------------------------------------------------------------

    async def register_host(self, registration: HostRegistration) -> Host:
        host = await self.store.register_host(registration, self.clock())
        log.info("host_registered", host=host.host_id, slots=len(host.slot_ids), region=host.region)
        return host

    async def heartbeat(self, host_id: str, heartbeat: Heartbeat) -> HeartbeatReply:
        ended, reply = await self.store.heartbeat(host_id, heartbeat, self.clock())
        await self._record(ended)
        if any(r.state == "ready" for r in heartbeat.slots):
            await self.dispatch()
        return reply

    async def drain(self, host_id: str, draining: bool = True) -> Host:
        host = await self.store.set_draining(host_id, draining)
        log.info("host_draining" if draining else "host_undrained", host=host_id)
        return host

    # --- the sweep ------------------------------------------------------------------------

    async def dispatch(self) -> int:
        """Serve queue heads while READY slots exist; expire tickets that waited too long."""
        served = 0
        now = self.clock()
        for tenant, app, length in await self.store.queues():
            for ticket in await self.store.waiting(tenant, app, length):
                if now - ticket.enqueued_at > self.settings.queue_max_wait_s:
                    await self.store.finish_ticket(ticket.ticket_id, TicketState.EXPIRED,
                                                   "waited longer than the queue allows")
                    continue
                if await self._claim(ticket.request, ticket.ticket_id) is None:
                    break  # no READY slot for this queue: later tickets cannot do better
                served += 1
        if served:
            await self._notify()
        return served

    async def sweep(self) -> None:
        now = self.clock()
        s = self.settings
        ended = await self.store.expire_hosts(now, s.heartbeat_ttl_s)
        rules = {"connect_timeout_s": s.connect_timeout_s, "reconnect_grace_s": s.reconnect_grace_s,
                 "idle_timeout_s": s.idle_timeout_s, "max_session_s": s.max_session_s}
        for _ in range(_DUE_ROUNDS):  # only the due sessions: a sweep costs what ends
            listed = {x.session_id: x for x in await self.store.due_sessions(now, limit=_DUE_BATCH, **rules)}
            for session_id, reason in due_endings(listed.values(), now, **rules):
                # The verdict came from the listing: it holds only if the session has not moved on.
                guard = None if reason is EndReason.MAX_LENGTH else listed[session_id]
                done = await self.store.end_session(session_id, reason, now, if_unchanged=guard)
                if done is not None:
                    ended.append(done)
            if len(listed) < _DUE_BATCH:
                break
        await self._record(ended)
        await self.dispatch()

    async def _run(self) -> None:
        while not self._closing:
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("sweep_failed", error=str(exc))
            await asyncio.sleep(self.settings.sweep_interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def aclose(self) -> None:
        self._closing = True  # stops the sweep even if a cancellation gets lost on the way
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.store.aclose()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"

