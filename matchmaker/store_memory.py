"""In-process store: the embedded default. Single process only.

Every method is atomic because no ``await`` runs between its reads and its writes.
Records are copied on the way out so callers never mutate the store by accident.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Sequence
from typing import TypeVar

import msgspec

from matchmaker.models import (
    AllocationRequest,
    EndReason,
    Heartbeat,
    HeartbeatReply,
    Host,
    HostRegistration,
    Session,
    SessionState,
    Slot,
    SlotReset,
    SlotState,
    Ticket,
    TicketState,
    registered_slot,
    slot_id,
)
from matchmaker.placement import rank
from matchmaker.store import (
    ENDED_REASON_TTL_S,
    HostConflict,
    NoClaim,
    QueueFull,
    Returning,
    UnknownHost,
    in_sequence,
)
from matchmaker.timeouts import due_endings, overdue_by

_FINISHED_TICKETS_KEPT = 10_000
# The reports a slot that is neither ASSIGNED nor RESETTING takes as its state.
_TAKEN = (SlotState.READY, SlotState.STARTING, SlotState.DEAD, SlotState.DRAINING)


_T = TypeVar("_T", bound=msgspec.Struct)


def _copy(obj: _T) -> _T:
    return msgspec.structs.replace(obj)


def _overdue(host: Host, now: float, ttl_s: float | None) -> bool:
    """Past its heartbeat deadline: dead from then on, whether or not a sweep saw it
    (the rule of ``expire_hosts`` and the admin listing; None: no deadline)."""
    return ttl_s is not None and now - host.last_heartbeat > ttl_s


class MemoryStore:
    def __init__(self) -> None:
        self._hosts: dict[str, Host] = {}
        self._slots: dict[str, Slot] = {}
        self._sessions: dict[str, Session] = {}
        self._clients: dict[tuple[str, str], str] = {}  # (tenant, client_key) -> session id
        self._tickets: dict[str, Ticket] = {}
        self._queues: dict[tuple[str, str], collections.OrderedDict[str, None]] = {}
        self._qclients: dict[tuple[str, str, str], str] = {}  # (tenant, app, client_key) -> waiting ticket
        self._finished: collections.deque[str] = collections.deque()
        self._records: dict[str, tuple[float, Session]] = {}  # session id -> (due, ended session)
        # Sessions ended by a host death that a heartbeat or registration found (past its
        # deadline): those calls return no sessions, so the next expire_hosts does.
        self._outbox: list[Session] = []
        self._ended: collections.OrderedDict[str, tuple[float, EndReason]] = collections.OrderedDict()
        # host id -> the seq of the last numbered heartbeat applied to its live incarnation
        # (none after a registration, a death, or a beat without seq): the delta rule.
        self._seqs: dict[str, int] = {}

    # --- hosts ------------------------------------------------------------------------

    async def register_host(self, reg: HostRegistration, now: float, *, heartbeat_ttl_s: float | None = None) -> Host:
        old = self._hosts.get(reg.host_id)
        if old is not None and not old.dead and _overdue(old, now, heartbeat_ttl_s):
            self._outbox += self._kill(old, now)  # dead since its deadline: it comes back anew
        if old is not None and not old.dead:
            if old.boot_id != reg.boot_id:
                raise HostConflict(f"host {reg.host_id} is registered and alive under another boot id")
            old.last_heartbeat = now
            self._seqs.pop(reg.host_id, None)  # the agent numbers its heartbeats from 1 again
            return _copy(old)
        self._seqs.pop(reg.host_id, None)
        if old is not None:  # a dead host coming back: forget its old slots
            for sid in old.slot_ids:
                self._slots.pop(sid, None)
        host = Host(
            host_id=reg.host_id,
            boot_id=reg.boot_id,
            region=reg.region,
            az=reg.az,
            gpu_model=reg.gpu_model,
            signaling_url=reg.signaling_url,
            last_heartbeat=now,
            slot_ids=[slot_id(reg.host_id, s.index) for s in reg.slots],
        )
        self._hosts[host.host_id] = host
        for spec in reg.slots:
            self._slots[slot_id(reg.host_id, spec.index)] = registered_slot(reg, spec)
        return _copy(host)

    def _live_host(self, host_id: str, boot_id: str | None = None) -> Host:
        host = self._hosts.get(host_id)
        if host is None or host.dead:
            raise UnknownHost(f"host {host_id} is not registered")
        if boot_id is not None and host.boot_id != boot_id:
            raise HostConflict(f"host {host_id} is registered under another boot id")
        return host

    async def heartbeat(
        self, host_id: str, hb: Heartbeat, now: float, *, heartbeat_ttl_s: float | None = None
    ) -> tuple[list[Session], HeartbeatReply]:
        host = self._live_host(host_id)
        if _overdue(host, now, heartbeat_ttl_s):  # dead since its deadline: a late beat does not revive it
            self._outbox += self._kill(host, now)
            raise UnknownHost(f"host {host_id} missed its heartbeat deadline and is dead: register again")
        host = self._live_host(host_id, hb.boot_id)
        host.last_heartbeat = now
        host.nvenc_load, host.gpu_load = hb.nvenc_load, hb.gpu_load
        applies = in_sequence(hb, self._seqs.get(host_id))
        if applies and hb.seq > 0:
            self._seqs[host_id] = hb.seq
        elif applies:
            self._seqs.pop(host_id, None)
        ended: list[Session] = []
        busy: list[int] = []  # reported draining while a session holds them
        if applies and hb.gpus:
            loads = {g.index: (g.nvenc_load, g.gpu_load) for g in hb.gpus}
            for sid in host.slot_ids:
                slot = self._slots.get(sid)
                if slot is not None and slot.gpu in loads:
                    slot.nvenc_load, slot.gpu_load = loads[slot.gpu]
        for report in hb.slots if applies else ():
            slot = self._slots.get(slot_id(host_id, report.index))
            if slot is None:
                continue
            if slot.gpu is None:  # a slot on a registered GPU takes that GPU's reports
                slot.nvenc_load, slot.gpu_load = report.nvenc_load, report.gpu_load
            if slot.state is SlotState.ASSIGNED:
                if report.state in (SlotState.DEAD, SlotState.STARTING) and slot.session_id:
                    done = self._end(slot.session_id, EndReason.SLOT_FAILED, now)
                    if done is not None:
                        ended.append(done)
                    slot.state = report.state
                    slot.ended_session = None
                elif report.state is SlotState.DRAINING:
                    busy.append(report.index)  # the session keeps it: the agent must not restart it
                continue
            if slot.state is SlotState.RESETTING:
                if report.state is SlotState.READY and report.reset_for == slot.ended_session:
                    slot.state, slot.ended_session = SlotState.READY, None
                elif report.state is SlotState.DEAD:
                    slot.state, slot.ended_session = SlotState.DEAD, None
                continue
            if report.state in _TAKEN:  # DRAINING: out of placement until a ready report
                slot.state = report.state
        reply = HeartbeatReply(
            reset=[
                SlotReset(index=int(sid.rsplit("/", 1)[1]), session_id=slot.ended_session)
                for sid in host.slot_ids
                if (slot := self._slots[sid]).state is SlotState.RESETTING and slot.ended_session
            ],
            draining=host.draining,
        )
        if hb.seq > 0 and not applies:
            reply.snapshot = True
        if busy:
            reply.busy = busy
        return ended, reply

    async def set_draining(self, host_id: str, draining: bool) -> Host:
        host = self._live_host(host_id)
        host.draining = draining
        return _copy(host)

    async def expire_hosts(self, now: float, ttl_s: float) -> list[Session]:
        ended, self._outbox = self._outbox, []
        for host in self._hosts.values():
            if not host.dead and _overdue(host, now, ttl_s):
                ended += self._kill(host, now)
        return ended

    def _kill(self, host: Host, now: float) -> list[Session]:
        """The host is dead: its slots DEAD, their sessions ended (HOST_DEAD)."""
        host.dead = True
        self._seqs.pop(host.host_id, None)
        ended: list[Session] = []
        for sid in host.slot_ids:
            slot = self._slots[sid]
            if slot.session_id is not None:
                done = self._end(slot.session_id, EndReason.HOST_DEAD, now)
                if done is not None:
                    ended.append(done)
            slot.state = SlotState.DEAD
        return ended

    async def forget_hosts(self, now: float, retention_s: float) -> list[str]:
        gone = sorted(h.host_id for h in self._hosts.values() if h.dead and now - h.last_heartbeat > retention_s)
        for host_id in gone:
            for sid in self._hosts.pop(host_id).slot_ids:
                self._slots.pop(sid, None)
        return gone

    # --- pool -------------------------------------------------------------------------

    def _claimable(self, slot: Slot, now: float, ttl_s: float | None) -> bool:
        host = self._hosts[slot.host_id]
        return slot.state is SlotState.READY and not host.dead and not host.draining and not _overdue(host, now, ttl_s)

    def _ready(self, tenant: str, app: str, now: float, ttl_s: float | None) -> list[Slot]:
        return [
            s for s in self._slots.values() if s.tenant == tenant and s.app == app and self._claimable(s, now, ttl_s)
        ]

    async def serves(self, tenant: str, app: str) -> bool:
        return any(s.tenant == tenant and s.app == app for s in self._slots.values())

    async def slot_count(self, tenant: str, app: str) -> int:
        return sum(
            s.tenant == tenant and s.app == app and not self._hosts[s.host_id].dead for s in self._slots.values()
        )

    async def allocate(
        self,
        request: AllocationRequest,
        session_id: str,
        now: float,
        *,
        policy: str,
        ticket_id: str | None = None,
        heartbeat_ttl_s: float | None = None,
    ) -> Session | Returning | NoClaim:
        tenant, app = request.tenant, request.app
        ticket = None
        if ticket_id is not None:
            ticket = self._waiting_ticket(ticket_id, tenant, app)
            if ticket is None:
                return NoClaim.REFUSED
        else:
            if request.client_key:
                live = self._sessions.get(self._clients.get((tenant, request.client_key), ""))
                if live is not None and live.state is not SessionState.ENDED and live.app == app:
                    return Returning(live.session_id)
            if self._queues.get((tenant, app)):
                return NoClaim.QUEUE_AHEAD
        ranked = rank(self._ready(tenant, app, now, heartbeat_ttl_s), request, policy)
        if not ranked:
            return NoClaim.NO_SLOT if await self.serves(tenant, app) else NoClaim.UNKNOWN_APP
        slot = ranked[0]
        session = Session(
            session_id=session_id,
            tenant=tenant,
            app=app,
            slot_id=slot.slot_id,
            host_id=slot.host_id,
            streamer_id=slot.streamer_id,
            signaling_url=slot.signaling_url,
            region=slot.region,
            gpu_share=slot.gpu_share,
            client_key=request.client_key,
            subject=request.subject,
            trace=request.trace,
            created_at=now,
            last_activity=now,
        )
        self._claim(slot, session, ticket)
        return _copy(session)

    def _waiting_ticket(self, ticket_id: str, tenant: str, app: str) -> Ticket | None:
        ticket = self._tickets.get(ticket_id)
        if (
            ticket is None
            or ticket.state is not TicketState.WAITING
            or ticket.left_at is not None
            or (ticket.request.tenant, ticket.request.app) != (tenant, app)
        ):
            return None
        return ticket

    def _claim(self, slot: Slot, session: Session, ticket: Ticket | None) -> None:
        slot.state = SlotState.ASSIGNED
        slot.session_id = session.session_id
        self._sessions[session.session_id] = _copy(session)
        if session.client_key:
            self._clients[(session.tenant, session.client_key)] = session.session_id
        if ticket is not None:
            ticket.state = TicketState.SERVED
            ticket.session_id = session.session_id
            self._dequeue(ticket)

    # --- sessions ---------------------------------------------------------------------

    async def session(self, session_id: str) -> Session | None:
        s = self._sessions.get(session_id)
        return None if s is None else _copy(s)

    async def reattach(self, session_id: str, now: float) -> Session | None:
        s = self._sessions.get(session_id)
        if s is None or s.state is SessionState.ENDED:
            return None
        if s.state is SessionState.DISCONNECTED:
            s.state = SessionState.ASSIGNED
            s.disconnected_at = None
        s.last_activity = now
        return _copy(s)

    def note_tenant(self, session_id: str, tenant: str) -> None:
        pass  # sessions are found by id alone here

    async def mark_connected(self, session_id: str, now: float) -> Session | None:
        s = self._sessions.get(session_id)
        if s is None or s.state is SessionState.ENDED:
            return None
        s.state = SessionState.CONNECTED
        s.connected_at = s.connected_at or max(now, s.created_at)  # ordered whatever clock reports it
        s.disconnected_at = None
        s.last_activity = now
        return _copy(s)

    async def mark_disconnected(self, session_id: str, now: float) -> Session | None:
        s = self._sessions.get(session_id)
        if s is None or s.state is not SessionState.CONNECTED:
            return None
        s.state = SessionState.DISCONNECTED
        s.disconnected_at = max(now, s.connected_at or now)
        return _copy(s)

    async def touch(self, session_id: str, now: float) -> None:
        s = self._sessions.get(session_id)
        if s is not None and s.state is not SessionState.ENDED:
            s.last_activity = now

    async def end_reason(self, tenant: str, session_id: str) -> EndReason | None:
        known = self._ended.get(session_id)
        return None if known is None or known[0] < time.time() - ENDED_REASON_TTL_S else known[1]

    async def end_session(
        self, session_id: str, reason: EndReason, now: float, *, if_unchanged: Session | None = None
    ) -> Session | None:
        if if_unchanged is not None:
            s = self._sessions.get(session_id)
            if s is None or (s.state, s.last_activity, s.disconnected_at) != (
                if_unchanged.state,
                if_unchanged.last_activity,
                if_unchanged.disconnected_at,
            ):
                return None
        return self._end(session_id, reason, now)

    def _end(self, session_id: str, reason: EndReason, now: float) -> Session | None:
        s = self._sessions.get(session_id)
        if s is None or s.state is SessionState.ENDED:
            return None
        # Never before it began, whatever clock ends it (a sweep's clock may be read before
        # another caller created or connected it): created_at <= connected_at <= ended_at.
        now = max(now, s.created_at, s.connected_at or now, s.disconnected_at or now)
        s.state = SessionState.ENDED
        s.ended_at = now
        s.end_reason = reason
        if s.client_key and self._clients.get((s.tenant, s.client_key)) == session_id:
            del self._clients[(s.tenant, s.client_key)]
        slot = self._slots.get(s.slot_id)
        if slot is not None and slot.session_id == session_id:
            slot.session_id = None
            if slot.state is SlotState.ASSIGNED:
                slot.state = SlotState.RESETTING
                slot.ended_session = session_id
        ended = _copy(s)
        del self._sessions[session_id]  # ended sessions live on in the record sink
        self._records[session_id] = (now, _copy(s))
        # Kept by wall time (the caller's clock may be a test's): oldest first, pruned here.
        t = time.time()
        self._ended[session_id] = (t, reason)
        while self._ended and next(iter(self._ended.values()))[0] < t - ENDED_REASON_TTL_S:
            self._ended.popitem(last=False)
        return ended

    # --- records ----------------------------------------------------------------------

    async def take_records(self, now: float, lease_s: float, limit: int) -> list[Session]:
        due = sorted((at, sid) for sid, (at, _) in self._records.items() if at <= now)[: max(limit, 0)]
        out = []
        for _, sid in due:
            session = self._records[sid][1]
            self._records[sid] = (now + lease_s, session)
            out.append(_copy(session))
        return out

    async def ack_records(self, sessions: Sequence[Session]) -> None:
        for s in sessions:
            self._records.pop(s.session_id, None)

    async def due_sessions(
        self,
        now: float,
        *,
        connect_timeout_s: float,
        reconnect_grace_s: float,
        idle_timeout_s: float,
        max_session_s: float,
        limit: int,
    ) -> list[Session]:
        """A scan of every live session: fine in one process, and exact by construction."""
        rules = {
            "connect_timeout_s": connect_timeout_s,
            "reconnect_grace_s": reconnect_grace_s,
            "idle_timeout_s": idle_timeout_s,
            "max_session_s": max_session_s,
        }
        due = [self._sessions[sid] for sid, _ in due_endings(self._sessions.values(), now, **rules)]
        due.sort(key=lambda s: (-overdue_by(s, now, **rules), s.session_id))
        return [_copy(s) for s in due[: max(limit, 0)]]

    # --- queue ------------------------------------------------------------------------

    async def enqueue(self, ticket: Ticket, max_length: int) -> tuple[Ticket, int]:
        tenant, app, client = ticket.request.tenant, ticket.request.app, ticket.request.client_key
        if client:
            mine = self._tickets.get(self._qclients.get((tenant, app, client), ""))
            if mine is not None and mine.state is TicketState.WAITING:
                mine.seen_at, mine.left_at = ticket.enqueued_at, None
                return _copy(mine), list(self._queues[(tenant, app)]).index(mine.ticket_id) + 1
        queue = self._queues.setdefault((tenant, app), collections.OrderedDict())
        if len(queue) >= max_length:
            raise QueueFull(f"the queue for {app} is full ({max_length} waiting)")
        self._tickets[ticket.ticket_id] = _copy(ticket)
        queue[ticket.ticket_id] = None
        if client:
            self._qclients[(tenant, app, client)] = ticket.ticket_id
        return _copy(ticket), len(queue)

    async def ticket(self, ticket_id: str) -> Ticket | None:
        t = self._tickets.get(ticket_id)
        return None if t is None else _copy(t)

    async def ticket_heard(self, ticket_id: str, now: float) -> bool:
        t = self._tickets.get(ticket_id)
        if t is None or t.state is not TicketState.WAITING:
            return False
        t.seen_at, t.left_at = now, None
        return True

    async def ticket_left(self, ticket_id: str, now: float) -> bool:
        t = self._tickets.get(ticket_id)
        if t is None or t.state is not TicketState.WAITING:
            return False
        if t.left_at is None:
            t.left_at = now
        return True

    async def position(self, ticket_id: str) -> int | None:
        t = self._tickets.get(ticket_id)
        if t is None or t.state is not TicketState.WAITING:
            return None
        for i, tid in enumerate(self._queues[(t.request.tenant, t.request.app)], 1):
            if tid == ticket_id:
                return i
        return None

    async def waiting(self, tenant: str, app: str, limit: int) -> list[Ticket]:
        queue = self._queues.get((tenant, app))
        if not queue or limit <= 0:
            return []
        return [_copy(self._tickets[tid]) for tid in itertools.islice(queue, limit)]

    async def queues(self) -> list[tuple[str, str, int]]:
        return [(t, a, len(q)) for (t, a), q in self._queues.items() if q]

    async def finish_ticket(
        self, ticket_id: str, state: str, reason: str, *, if_unchanged: Ticket | None = None
    ) -> bool:
        t = self._tickets.get(ticket_id)
        if t is None or t.state is not TicketState.WAITING:
            return False
        final = TicketState(state)
        if if_unchanged is not None and (t.seen_at, t.left_at) != (if_unchanged.seen_at, if_unchanged.left_at):
            return False
        t.state = final
        t.reason = reason
        self._dequeue(t)
        return True

    def _dequeue(self, ticket: Ticket) -> None:
        queue = self._queues.get((ticket.request.tenant, ticket.request.app))
        if queue is not None:
            queue.pop(ticket.ticket_id, None)
        client = (ticket.request.tenant, ticket.request.app, ticket.request.client_key or "")
        if self._qclients.get(client) == ticket.ticket_id:
            del self._qclients[client]
        self._finished.append(ticket.ticket_id)
        if len(self._finished) > _FINISHED_TICKETS_KEPT:
            self._tickets.pop(self._finished.popleft(), None)

    # --- listings ---------------------------------------------------------------------

    async def hosts(self) -> list[Host]:
        return [_copy(h) for h in self._hosts.values()]

    async def slots(self) -> list[Slot]:
        return [_copy(s) for s in self._slots.values()]

    async def sessions(self) -> list[Session]:
        return [_copy(s) for s in self._sessions.values()]

    async def aclose(self) -> None:
        pass
