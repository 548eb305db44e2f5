"""The matchmaker's shared state, behind one interface with two implementations.

``MemoryStore`` (``memory://``) is the embedded default for one process;
``RedisStore`` (``redis://``, ``rediss://``, ``unix://``) lets any number of
matchmaker replicas share one Redis (or Redis Cluster).

Guarantees every implementation keeps (the conformance suite in
``tests/integration/test_store_conformance.py`` checks them on both):

- ``allocate`` claims only a slot that is READY on a live, non-draining host, and then
  the slot is ASSIGNED to exactly that session (a compare-and-set). No sequence of calls
  from any number of processes gives one slot to two sessions.
- A host is dead from its heartbeat deadline on: at any ``now`` with ``now -
  last_heartbeat > heartbeat_ttl_s`` (those doubles, exactly), whether or not
  ``expire_hosts`` has marked it yet. With ``heartbeat_ttl_s``, ``allocate`` never
  returns its slots, a late ``heartbeat`` raises UnknownHost (its sessions end; the next
  ``expire_hosts`` returns them) and ``register_host`` starts a new incarnation. The
  admin listing applies the same rule (``Matchmaker.hosts``), so no session is created
  on a host after the moment it is listed dead.
- A session's times are ordered whatever clock each step read: ``created_at <=
  connected_at <= disconnected_at`` and each ``<= ended_at`` (a later step's time is
  raised to an earlier one's when a replica's clock lags).
- Session transitions are idempotent and only move forward
  (``assigned -> connected -> disconnected -> ended``; a reconnect may take a
  disconnected session back to ``assigned``). Ending an ended session is a no-op that
  returns None. The end also queues the session's record (``take_records``), in the
  same atomic step.
- A ticket leaves WAITING exactly once (served, cancelled or expired). A client key
  has at most one waiting ticket per tenant and app: enqueueing again with that key
  returns that ticket, in its place, rather than a second one.
- A ticket whose client left (``left_at`` set) is never served until it is heard again.
- Host and slot records are replaced as a whole by registration and heartbeat; a
  host whose boot id differs from the registered one is refused while it is alive.
- ``allocate`` places and claims in one atomic step, with the order of
  ``placement.rank`` (the Redis store evaluates the same order server-side over score
  indexes, comparing up to 32 equally ranked candidates at a time), so an allocation is
  one round trip and never decodes the whole pool.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from matchmaker.models import (
    AllocationRequest,
    EndReason,
    Heartbeat,
    HeartbeatReply,
    Host,
    HostRegistration,
    Session,
    Slot,
    Ticket,
)


class StoreError(Exception):
    """A store operation refused (matchmaker/http.py STORE_ERRORS maps each to an HTTP answer)."""


class UnknownHost(StoreError):
    """No live host has this id."""


class HostConflict(StoreError):
    """A live host has this id under another boot id."""


class QueueFull(StoreError):
    """The queue of this tenant and app is at its limit."""


class BackendUnavailable(StoreError):
    """The shared store did not answer (Redis away or too slow)."""


class NotReplicated(BackendUnavailable):
    """A round trip's writes took on the Redis primary, but fewer replicas than asked for
    (``REDIS_WAIT_REPLICAS``) held them within the wait: a failover now could lose them,
    so the caller is not told they took."""


ENDED_REASON_TTL_S = 300
"""How long a store remembers why a session ended, so that a late event (signalling's
disconnect, the page's activity) is answered 410 with the reason."""


def in_sequence(hb: Heartbeat, last: int | None) -> bool:
    """Whether a heartbeat's slot reports apply, given the seq of the last numbered one
    applied to this incarnation (None: no record). heartbeat_slots.lua has the same rule.

    A full heartbeat applies unless it is numbered and not above ``last`` (an older one,
    reordered); a delta only as exactly the next one, since it lists only what changed
    since that. One that does not apply changes no slot; the agent is asked for a full one."""
    if hb.full:
        return hb.seq == 0 or last is None or hb.seq > last
    return last is not None and hb.seq == last + 1


class NoClaim(enum.Enum):
    """Why ``allocate`` claimed nothing."""

    QUEUE_AHEAD = "queue_ahead"  # someone already waits for this app: nobody overtakes
    NO_SLOT = "no_slot"  # the app is served, but no slot is claimable now
    UNKNOWN_APP = "unknown_app"  # no registered slot serves this tenant and app
    REFUSED = "refused"  # the given ticket failed its precondition


@dataclass(frozen=True, slots=True)
class Returning:
    """The client already holds a live session of this app (reconnect within grace)."""

    session_id: str


class Store(Protocol):
    # --- hosts (from agents) -----------------------------------------------------------
    async def register_host(self, reg: HostRegistration, now: float, *, heartbeat_ttl_s: float | None = None) -> Host:
        """New host, a restarted agent (new boot id after death), or an idempotent repeat.

        Raises HostConflict when a live host has the id under another boot id. A host
        past its heartbeat deadline (``heartbeat_ttl_s``; None: none) is dead: it comes
        back as a new incarnation.
        """

    async def heartbeat(
        self, host_id: str, hb: Heartbeat, now: float, *, heartbeat_ttl_s: float | None = None
    ) -> tuple[list[Session], HeartbeatReply]:
        """Apply the agent's slot states and loads.

        A full heartbeat lists every slot; a delta (``hb.full`` false) only those that
        changed, and applies only in sequence (``in_sequence``, with the seq of the last
        numbered heartbeat applied to this incarnation; a registration forgets it). One
        out of sequence changes no slot but still keeps the host alive (its deadline and
        host loads move), and the reply says ``snapshot``. Applying is atomic with that
        check.

        A host past its heartbeat deadline is dead now (UnknownHost; its sessions end and
        the next ``expire_hosts`` returns them); the agent registers again, and that new
        incarnation's first heartbeat's reports apply at once.

        A slot the agent reports ``ready`` becomes READY from STARTING, DEAD or DRAINING,
        and from RESETTING only when the report's ``reset_for`` names the session that
        ended there; an ASSIGNED slot stays assigned. A slot reported ``dead`` or
        ``starting`` while ASSIGNED ends its session (SLOT_FAILED). A slot reported
        ``draining`` (the agent will restart it) becomes DRAINING, out of placement, from
        READY, STARTING or DEAD; an ASSIGNED one keeps its session and is listed in the
        reply's ``busy`` (left out when empty); a RESETTING one stays so. Returns the
        sessions that ended and the reply (slots to reset). Raises UnknownHost /
        HostConflict.
        """

    async def set_draining(self, host_id: str, draining: bool) -> Host:
        """A draining host takes no new sessions; current ones finish."""

    async def expire_hosts(self, now: float, ttl_s: float) -> list[Session]:
        """Hosts silent for ``ttl_s`` are dead: slots DEAD, sessions ended (HOST_DEAD).
        Also returns the sessions a late heartbeat or registration ended."""

    async def forget_hosts(self, now: float, retention_s: float) -> list[str]:
        """Remove hosts dead for longer than ``retention_s`` (by their last heartbeat)
        from the registry: record, slots, listings. Returns their ids, sorted. Under
        autoscaling hosts come and go with new ids; without this the registry grows
        forever. A forgotten host that registers again is simply new."""

    # --- the pool ---------------------------------------------------------------------
    async def serves(self, tenant: str, app: str) -> bool:
        """Whether any registered slot (whatever its state) serves this tenant and app."""

    async def slot_count(self, tenant: str, app: str) -> int:
        """How many slots of live hosts (whatever the slot's state) serve this tenant and
        app; an O(1) read on Redis, for queue ETAs."""

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
        """Atomically: pick the best claimable slot for ``request`` (``placement.rank``
        order under ``policy``) and claim it for a new session ``session_id``. With
        ``heartbeat_ttl_s``, a slot of a host past its heartbeat deadline at ``now`` is
        not claimable (the check is in the same atomic step).

        Without a ticket, a client key holding a live session of this app gives
        ``Returning`` and a non-empty queue gives ``QUEUE_AHEAD``, before any slot is
        looked at. With one, the ticket must be WAITING (else ``REFUSED``) and is SERVED
        by the same step."""

    # --- sessions ---------------------------------------------------------------------
    async def session(self, session_id: str) -> Session | None:
        """A session that has not ended (ended ones live on in the record sink)."""

    async def reattach(self, session_id: str, now: float) -> Session | None:
        """A reconnecting client takes its not-yet-ended session back: -> ASSIGNED."""

    def note_tenant(self, session_id: str, tenant: str) -> None:
        """The tenant a verified session token names for this session, so the store
        need not look it up (a wrong one could only make the session look unknown)."""

    async def mark_connected(self, session_id: str, now: float) -> Session | None: ...

    async def mark_disconnected(self, session_id: str, now: float) -> Session | None: ...

    async def touch(self, session_id: str, now: float) -> None: ...

    async def end_reason(self, tenant: str, session_id: str) -> EndReason | None:
        """Why this session of ``tenant`` ended, for ``ENDED_REASON_TTL_S`` after its end;
        None for a live, unknown or long-ended session."""

    async def end_session(
        self, session_id: str, reason: EndReason, now: float, *, if_unchanged: Session | None = None
    ) -> Session | None:
        """End it once; its slot goes RESETTING (the agent resets it, then reports READY).

        Returns the ended session, or None when it was unknown or had already ended.
        With ``if_unchanged`` (the record a timeout verdict was based on), end it only if
        its state, ``last_activity`` and ``disconnected_at`` are still those: a player who
        connected or came back meanwhile is not timed out on a stale listing. It must be
        this store's own record of the session (``due_sessions``): its tenant is trusted.
        """

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
        """The live sessions that ``timeouts.due_endings`` would end at ``now`` (a timeout
        of 0 is off; the reconnect grace applies even when 0): exactly those, at most
        ``limit``, the most overdue first (``timeouts.overdue_by``; best effort).

        The sweep's read: it costs what is due, not what is live, so a sweep of a big
        fleet does not block the event loop. The verdict still comes from the returned
        records, which may be stale by the time they are acted on (``if_unchanged``).
        """

    # --- queue ------------------------------------------------------------------------
    async def enqueue(self, ticket: Ticket, max_length: int) -> tuple[Ticket, int]:
        """Append to the FIFO of (tenant, app); returns the ticket and its 1-based position.

        When the ticket's client key already has a WAITING ticket of this tenant and app
        (a page reload), that ticket is returned instead, in its place, heard at
        ``ticket.enqueued_at`` and no longer left; nothing is appended. Otherwise raises
        QueueFull when that queue already holds ``max_length`` tickets."""

    async def ticket(self, ticket_id: str) -> Ticket | None: ...

    async def ticket_heard(self, ticket_id: str, now: float) -> bool:
        """Its client is there: ``seen_at = now``, ``left_at`` cleared. False if not WAITING."""

    async def ticket_left(self, ticket_id: str, now: float) -> bool:
        """Its client's event stream closed: ``left_at = now`` unless already left.
        False if not WAITING."""

    async def position(self, ticket_id: str) -> int | None:
        """1-based place in its queue, or None once it is no longer waiting."""

    async def waiting(self, tenant: str, app: str, limit: int) -> list[Ticket]:
        """The first ``limit`` waiting tickets of one queue, oldest first."""

    async def queues(self) -> list[tuple[str, str, int]]:
        """Every non-empty queue: (tenant, app, length)."""

    async def finish_ticket(
        self, ticket_id: str, state: str, reason: str, *, if_unchanged: Ticket | None = None
    ) -> bool:
        """WAITING -> CANCELLED or EXPIRED; False if it had already left WAITING.

        With ``if_unchanged`` (the record a liveness verdict was based on), only if its
        ``seen_at`` and ``left_at`` are still those: a client heard meanwhile stays."""

    # --- records (each ended session reaches the sink at least once) -------------------
    async def take_records(self, now: float, lease_s: float, limit: int) -> list[Session]:
        """Ended sessions whose record is due, leased to the caller until ``now + lease_s``.

        Ending a session makes its record due in the same atomic step, so a replica dying
        between the end and the sink write loses nothing: the record is taken by the
        next caller, or again once the lease runs out unacknowledged. Concurrent callers
        get disjoint records."""

    async def ack_records(self, sessions: Sequence[Session]) -> None:
        """These records are in the sink: never take them again."""

    # --- listings (admin API) ---------------------------------------------------------
    async def hosts(self) -> list[Host]: ...

    async def slots(self) -> list[Slot]: ...

    async def sessions(self) -> list[Session]:
        """Sessions that have not ended."""

    async def aclose(self) -> None: ...


def open_store(url: str, *, prefix: str = "pf", wait_replicas: int = 0, wait_ms: int = 1000) -> Store:
    """The URL scheme picks the backend; one setting (``PIXELFLEET_STATE_URL``) rules both.
    ``wait_replicas``/``wait_ms``: Redis only (``RedisStore.from_url``)."""
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        if wait_replicas:
            raise ValueError("waiting for Redis replicas needs a Redis state URL, not memory://")
        from matchmaker.store_memory import MemoryStore

        return MemoryStore()
    if scheme in ("redis", "rediss", "unix"):
        from matchmaker.store_redis import RedisStore

        return RedisStore.from_url(url, prefix=prefix, wait_replicas=wait_replicas, wait_ms=wait_ms)
    raise ValueError(f"unsupported state URL scheme {scheme!r} (memory://, redis://, rediss://, unix://)")
