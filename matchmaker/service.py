"""The matchmaker service: allocation, the queue, and the session lifecycle.

Any number of replicas may run this over one store. Correctness never depends on a
replica's memory: slots are taken only by the store's atomic place-and-claim
(``Store.allocate``), each session end is taken by exactly one replica, records are
leased from the store, and each replica's sweep (host expiry and retention, timeouts,
record flush, queue dispatch) is safe to run concurrently with the others'. The only
per-replica state is the ETA estimate, cached slot counts and wake-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import msgspec
import structlog

from matchmaker import join_trace
from matchmaker.config import MatchmakerSettings
from matchmaker.metrics import MatchmakerMetrics
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
from matchmaker.records import RecordSink
from matchmaker.store import NoClaim, NotReplicated, Returning, Store, StoreError
from matchmaker.timeouts import due_endings
from pixelfleet import tracing
from pixelfleet.audit import audit
from pixelfleet.tokens import TokenKeys, mint

log = structlog.get_logger("matchmaker")

_SLOT_COUNTS_TTL_S = 1.0  # how stale the slot count behind an ETA may be
_REATTACH_ROUNDS = 2
_RECORD_LEASE_S = 30.0  # a record taken but not acknowledged within this is taken again
_RECORD_BATCH = 500
_RECORD_ROUNDS = 20
_DUE_BATCH = 500  # sessions a sweep reads and ends per round
_DUE_ROUNDS = 8  # rounds per sweep at most; the next sweep goes on


class UnknownApp(StoreError):
    """No registered slot serves this tenant and app."""


class UnknownSession(StoreError):
    """No such ticket (or session) is known."""


class SessionEnded(StoreError):
    """An event for a session that has ended (HTTP 410): final, the reporter stops there.
    ``reason`` is None once the store no longer remembers it (``ENDED_REASON_TTL_S``)."""

    def __init__(self, session_id: str, reason: EndReason | None) -> None:
        super().__init__(f"session {session_id} has ended" + (f" ({reason})" if reason else ""))
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Allocation:
    session: Session
    token: str
    idle_timeout_s: float = 0.0  # the client reports input activity when this is on


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
    def __init__(
        self,
        store: Store,
        settings: MatchmakerSettings,
        keys: TokenKeys,
        sink: RecordSink,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.keys = keys
        self.sink = sink
        self.clock = clock
        self._changed = asyncio.Condition()
        self._mean_session_s = settings.expected_session_s
        self._task: asyncio.Task[None] | None = None
        self._counts: dict[tuple[str, str], tuple[float, int]] = {}  # (tenant, app) -> (read at, slots)
        self._closing = False
        self._flushing: asyncio.Task[None] | None = None
        self._flush_again = False
        self.metrics = MatchmakerMetrics()  # /metrics (matchmaker.metrics)
        self.joins = join_trace.JoinTimes(clock)  # recent join times (the operator dashboard)

    # --- allocation -------------------------------------------------------------------

    async def allocate(self, request: AllocationRequest) -> Allocation | Queued:
        """A READY slot now, the same slot again for a reconnecting client, or a queue ticket.

        The common case is one store round trip: ``Store.allocate`` checks the client's
        live session and the queue, places and claims together."""
        if request.trace is None and (trace := join_trace.current_traceparent()) is not None:
            request = msgspec.structs.replace(request, trace=trace)  # the session's join trace
        for _ in range(_REATTACH_ROUNDS):
            session_id = _new_id("s")
            try:
                outcome = await self.store.allocate(
                    request,
                    session_id,
                    self.clock(),
                    policy=self.settings.policy,
                    heartbeat_ttl_s=self.settings.heartbeat_ttl_s,
                )
            except NotReplicated:
                await self._withdraw(session_id)
                raise
            if isinstance(outcome, Session):
                log.info(
                    "assigned",
                    session=outcome.session_id,
                    slot=outcome.slot_id,
                    tenant=request.tenant,
                    app=request.app,
                    queued=False,
                )
                return self._allocation(outcome)
            if not isinstance(outcome, Returning):
                break
            again = await self.store.reattach(outcome.session_id, self.clock())
            if again is not None:
                join_trace.reattached(again, self.clock())
                return self._allocation(again)
            # It ended in between: allocate afresh.
        if outcome is NoClaim.UNKNOWN_APP or (
            outcome is NoClaim.QUEUE_AHEAD and not await self.store.serves(request.tenant, request.app)
        ):
            raise UnknownApp(f"no slot serves app {request.app!r} for this tenant")
        now = self.clock()
        new = Ticket(ticket_id=_new_id("t"), request=request, enqueued_at=now, seen_at=now)
        # A client that already waits here (a page reload) gets its own ticket back, in place.
        ticket, position = await self.store.enqueue(new, self.settings.queue_max_length)
        if ticket.ticket_id == new.ticket_id:
            log.info("queued", ticket=ticket.ticket_id, tenant=request.tenant, app=request.app, position=position)
        else:
            log.info("rejoined", ticket=ticket.ticket_id, tenant=request.tenant, app=request.app, position=position)
        await self._notify()
        return Queued(ticket, position, await self._eta(request, position))

    async def _withdraw(self, session_id: str) -> None:
        """An allocation the replicas did not confirm stands on the primary, while its player
        is answered 503 and asks again: end it now, as never connected, rather than hold its
        slot until the connect timeout. The end stands on the primary even when it is not
        confirmed either (its record waits in the store for a later flush)."""
        try:
            await self.end(session_id, EndReason.NEVER_CONNECTED)
        except StoreError as exc:
            log.warning("unconfirmed_allocation_end", session=session_id, error=str(exc))

    async def _claim(self, request: AllocationRequest, ticket_id: str) -> tuple[Session | None, bool]:
        """Serve a waiting ticket with the best claimable slot, if there is one.

        Returns the session, or None and whether that was the ticket's doing (it left
        the queue, or its client left meanwhile) rather than a lack of claimable slots."""
        outcome = await self.store.allocate(
            request,
            _new_id("s"),
            self.clock(),
            policy=self.settings.policy,
            ticket_id=ticket_id,
            heartbeat_ttl_s=self.settings.heartbeat_ttl_s,
        )
        if not isinstance(outcome, Session):
            return None, outcome is NoClaim.REFUSED
        log.info(
            "assigned",
            session=outcome.session_id,
            slot=outcome.slot_id,
            tenant=request.tenant,
            app=request.app,
            queued=True,
        )
        audit(
            "session_start",
            outcome="ok",
            tenant=request.tenant,
            subject=request.subject,
            session_id=outcome.session_id,
            slot_id=outcome.slot_id,
            host_id=outcome.host_id,
            ticket_id=ticket_id,
        )
        return outcome, False

    def _allocation(self, session: Session) -> Allocation:
        token = mint(
            self.keys,
            tenant=session.tenant,
            session_id=session.session_id,
            streamer_id=session.streamer_id,
            ttl_s=self.settings.session_token_ttl_s,
            now=self.clock(),
            trace=session.trace,
        )
        return Allocation(session, token, self.settings.idle_timeout_s)

    async def _eta(self, request: AllocationRequest, position: int) -> float:
        slots = await self._slot_count(request.tenant, request.app)
        return round(position * self._mean_session_s / max(slots, 1), 1)

    async def _slot_count(self, tenant: str, app: str) -> int:
        """Slots of live hosts serving (tenant, app), for ETAs: one store read per queue
        and ``_SLOT_COUNTS_TTL_S`` (every waiting client's stream re-reads its ETA)."""
        t = time.monotonic()
        key = (tenant, app)
        known = self._counts.get(key)
        if known is not None and t - known[0] <= _SLOT_COUNTS_TTL_S:
            return known[1]
        n = await self.store.slot_count(tenant, app)
        if len(self._counts) > 10_000:
            self._counts.clear()
        self._counts[key] = (t, n)
        return n

    # --- the queue, seen by a waiting client ---------------------------------------------

    async def ticket_status(self, ticket_id: str, *, heard: bool = False) -> TicketStatus:
        """``heard``: the ticket's own client asks (a status read, its event stream), so it
        is still there: recorded when it had left, or when its last record is a third of
        ``queue_client_ttl_s`` old (so a stream does not write every second)."""
        ticket = await self.store.ticket(ticket_id)
        if ticket is None:
            raise UnknownSession(f"no ticket {ticket_id}")
        if heard and ticket.state is TicketState.WAITING:
            now = self.clock()
            ttl = self.settings.queue_client_ttl_s
            if (
                ticket.left_at is not None or (ttl > 0 and now - _heard_at(ticket) >= ttl / 3)
            ) and await self.store.ticket_heard(ticket_id, now):
                ticket = msgspec.structs.replace(ticket, seen_at=now, left_at=None)
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
            # Each re-read also says that the client is there (it takes back a place that
            # another stream of the same client, closed during a reload, marked as left).
            status = await self.ticket_status(ticket_id, heard=True)
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

    async def stream_closed(self, ticket_id: str) -> None:
        """The event stream of a still-waiting ticket closed.

        A client with a key may be reloading its page and will ask again with that key:
        its ticket is only marked left (skipped, not served) and ``dispatch`` cancels it
        if nobody comes back within ``queue_rejoin_grace_s``. A client without a key can
        never find its ticket again, so it is cancelled at once."""
        ticket = await self.store.ticket(ticket_id)
        if ticket is None or ticket.state is not TicketState.WAITING:
            return
        if ticket.request.client_key and self.settings.queue_rejoin_grace_s > 0:
            if await self.store.ticket_left(ticket_id, self.clock()):
                log.info("ticket_left", ticket=ticket_id)
            return
        await self.cancel(ticket_id)

    # --- session lifecycle (signalling and operators) ------------------------------------

    async def player_connected(self, session_id: str) -> None:
        await self._connected(session_id)

    async def player_disconnected(self, session_id: str) -> None:
        await self._disconnected(session_id)

    async def _connected(self, session_id: str) -> bool:
        if await self.store.mark_connected(session_id, self.clock()) is None:
            return False
        log.info("player_connected", session=session_id)
        return True

    async def _disconnected(self, session_id: str) -> bool:
        if await self.store.mark_disconnected(session_id, self.clock()) is None:
            return False
        log.info("player_disconnected", session=session_id)
        if not self.settings.reconnect_grace_s:
            await self.end(session_id, EndReason.PLAYER_LEFT)
        return True

    async def activity(self, session_id: str) -> None:
        await self.store.touch(session_id, self.clock())

    async def session_event(self, tenant: str, session_id: str, event: str) -> None:
        """A report over the API (signalling, the player page), from the session's own
        token. Raises SessionEnded when the session is no longer live: the token proves
        it existed, so it has ended, and a retry can never succeed."""
        self.store.note_tenant(session_id, tenant)  # from the verified token: no lookup
        if event == "first_frame":
            changed = await self._first_frame(session_id)
        elif event == "connected":
            changed = await self._connected(session_id)
        elif event == "disconnected":
            changed = await self._disconnected(session_id)
        else:
            await self.store.touch(session_id, self.clock())
            changed = False
        if not changed and await self.store.session(session_id) is None:
            raise SessionEnded(session_id, await self.store.end_reason(tenant, session_id))

    async def _first_frame(self, session_id: str) -> bool:
        """The page decoded its first frame: time to first frame (once per session), and
        the last span of the join trace. Counts as activity too."""
        session = await self.store.session(session_id)
        if session is None:
            return False
        now = self.clock()
        await self.store.touch(session_id, now)
        seconds = max(0.0, now - session.created_at)
        if self.joins.first_frame(session_id, seconds):
            # A session's app is one some slot serves: a bounded label, as the queue wait's.
            self.metrics.first_frame.labels(session.app, session.region).observe(seconds)
            join_trace.first_frame(session, now)
            log.info(
                "first_frame",
                session=session_id,
                seconds=round(seconds, 3),
                trace_id=tracing.trace_id_of(session.trace),
            )
        return True

    async def end(self, session_id: str, reason: EndReason) -> Session | None:
        ended = await self.store.end_session(session_id, reason, self.clock())
        if ended is not None:
            await self._record([ended])
        return ended

    async def _record(self, ended: list[Session]) -> None:
        if not ended:
            return
        self.metrics.ended(ended)
        for s in ended:
            log.info("session_ended", session=s.session_id, reason=str(s.end_reason), slot=s.slot_id)
            audit(
                "session_end",
                outcome="ok",
                tenant=s.tenant,
                subject=s.subject,
                session_id=s.session_id,
                reason=str(s.end_reason),
            )
            if s.ended_at is not None:
                self._mean_session_s = 0.9 * self._mean_session_s + 0.1 * (s.ended_at - s.created_at)
        self._kick_records()
        await self._notify()

    def _kick_records(self) -> None:
        """Flush due records soon, in the background: ends that come close together share
        one take/write/ack, and no caller waits for the sink."""
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_records())
            self._flushing.add_done_callback(lambda t: t.cancelled() or t.exception())
        else:
            self._flush_again = True

    async def _flush_records(self) -> None:
        """Write the due records and acknowledge them: at least once. Ending a session
        queues its record in the store in the same step, so a replica that dies before
        writing it, or a sink that fails, leaves it to a later flush (any replica's,
        after the lease runs out); the record's session id tells a repeat."""
        rounds = 0
        while True:
            self._flush_again = False
            batch = await self.store.take_records(self.clock(), _RECORD_LEASE_S, _RECORD_BATCH)
            if batch:
                try:
                    await self.sink.write(batch)
                except Exception as exc:  # noqa: BLE001 - any sink failure: retried after the lease
                    log.warning("record_sink_failed", error=repr(exc), records=len(batch))
                    return
                await self.store.ack_records(batch)
            rounds += 1
            if not (self._flush_again or len(batch) == _RECORD_BATCH) or rounds >= _RECORD_ROUNDS:
                return

    # --- agents ---------------------------------------------------------------------------

    async def register_host(self, registration: HostRegistration) -> Host:
        host = await self.store.register_host(registration, self.clock(), heartbeat_ttl_s=self.settings.heartbeat_ttl_s)
        log.info("host_registered", host=host.host_id, slots=len(host.slot_ids), region=host.region)
        return host

    async def heartbeat(self, host_id: str, heartbeat: Heartbeat) -> HeartbeatReply:
        ended, reply = await self.store.heartbeat(
            host_id, heartbeat, self.clock(), heartbeat_ttl_s=self.settings.heartbeat_ttl_s
        )
        await self._record(ended)
        if heartbeat.draining and not reply.draining:  # the agent's own drain, with its own token
            await self.drain(host_id, True)
            reply = msgspec.structs.replace(reply, draining=True)
        if any(r.state == "ready" for r in heartbeat.slots):
            await self.dispatch()
        return reply

    async def hosts(self) -> list[Host]:
        """The admin listing. A host is listed dead from its heartbeat deadline on (``now -
        last_heartbeat > heartbeat_ttl_s``), before any sweep marks it: the rule and the
        clock allocation uses, so no session is created on a host after it is listed dead."""
        now, ttl = self.clock(), self.settings.heartbeat_ttl_s
        return [
            h if h.dead or now - h.last_heartbeat <= ttl else msgspec.structs.replace(h, dead=True)
            for h in await self.store.hosts()
        ]

    async def drain(self, host_id: str, draining: bool = True) -> Host:
        host = await self.store.set_draining(host_id, draining)
        log.info("host_draining" if draining else "host_undrained", host=host_id)
        return host

    # --- the sweep ------------------------------------------------------------------------

    async def dispatch(self) -> int:
        """Serve queue heads while READY slots exist; expire tickets that waited too long
        and cancel those whose client is gone (not heard for ``queue_client_ttl_s``, or
        left and not back within ``queue_rejoin_grace_s``), so no slot goes to nobody."""
        served = finished = 0
        now = self.clock()
        for tenant, app, length in await self.store.queues():
            for ticket in await self.store.waiting(tenant, app, length):
                verdict = self._ticket_verdict(ticket, now)
                if verdict is not None:
                    state, reason = verdict
                    # A liveness verdict holds only if the client was not heard since the listing.
                    guard = None if state is TicketState.EXPIRED else ticket
                    if await self.store.finish_ticket(ticket.ticket_id, state, reason, if_unchanged=guard):
                        log.info("ticket_finished", ticket=ticket.ticket_id, state=str(state), reason=reason)
                        finished += 1
                    continue
                if ticket.left_at is not None:
                    continue  # its client is reloading: it keeps its place but takes no slot now
                session, ticket_gone = await self._claim(ticket.request, ticket.ticket_id)
                if session is None:
                    if ticket_gone:
                        continue
                    break  # no READY slot for this queue: later tickets cannot do better
                served += 1
                self.metrics.queue_wait.labels(tenant, app).observe(max(0.0, now - ticket.enqueued_at))
                self.joins.waited(max(0.0, now - ticket.enqueued_at))
                join_trace.queue_served(ticket, session, now)
        if served or finished:
            await self._notify()
        return served

    def _ticket_verdict(self, ticket: Ticket, now: float) -> tuple[TicketState, str] | None:
        s = self.settings
        if now - ticket.enqueued_at > s.queue_max_wait_s:
            return TicketState.EXPIRED, "waited longer than the queue allows"
        if ticket.left_at is not None and now - ticket.left_at > s.queue_rejoin_grace_s:
            return TicketState.CANCELLED, "client gone: it left the queue and did not come back"
        if s.queue_client_ttl_s > 0 and now - _heard_at(ticket) > s.queue_client_ttl_s:
            return TicketState.CANCELLED, "client gone: not heard from while waiting"
        return None

    async def sweep(self) -> None:
        now = self.clock()
        s = self.settings
        ended = await self.store.expire_hosts(now, s.heartbeat_ttl_s)
        if s.dead_host_retention_s > 0:
            for host_id in await self.store.forget_hosts(now, s.dead_host_retention_s):
                log.info("host_forgotten", host=host_id)
        rules = {
            "connect_timeout_s": s.connect_timeout_s,
            "reconnect_grace_s": s.reconnect_grace_s,
            "idle_timeout_s": s.idle_timeout_s,
            "max_session_s": s.max_session_s,
        }
        failed: StoreError | None = None
        for _ in range(_DUE_ROUNDS):  # only the due sessions: a sweep costs what ends
            listed = {x.session_id: x for x in await self.store.due_sessions(now, limit=_DUE_BATCH, **rules)}
            took, failed = await self._end_due(listed, due_endings(listed.values(), now, **rules), now)
            ended += took
            if failed is not None or len(listed) < _DUE_BATCH:
                break
        await self._record(ended)  # also when some ends failed: those that took are recorded
        if failed is not None:
            raise failed
        await self._flush_records()  # also what other replicas left behind
        await self.dispatch()

    async def _end_due(
        self, listed: dict[str, Session], verdicts: Iterable[tuple[str, EndReason]], now: float
    ) -> tuple[list[Session], StoreError | None]:
        """End the listed sessions the verdicts name: those that ended, and the store error
        that stopped it if one did (returned, so that those that took are still recorded).

        One at a time on purpose: each end waits for its round trip, which spreads a
        sweep's work (and the slot resets it sets off) between the allocations around it.
        Sending them 32 at a time cut Redis's reads per allocation by half but doubled the
        benchmark's open-loop p99 (docs/benchmarks.md)."""
        ended: list[Session] = []
        for sid, reason in verdicts:
            # A verdict came from the listing: it holds only if the session has not moved on.
            guard = None if reason is EndReason.MAX_LENGTH else listed[sid]
            try:
                done = await self.store.end_session(sid, reason, now, if_unchanged=guard)
            except StoreError as exc:
                return ended, exc
            if done is not None:
                ended.append(done)
        return ended, None

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
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing
        with contextlib.suppress(StoreError):
            await self._flush_records()  # what this replica ended last
        await self.store.aclose()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _heard_at(ticket: Ticket) -> float:
    return ticket.enqueued_at if ticket.seen_at is None else ticket.seen_at


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"
