"""The matchmaker's shared state, behind one interface with two implementations.

``MemoryStore`` (``memory://``) is the embedded default for one process;
``RedisStore`` (``redis://``, ``rediss://``, ``unix://``) lets any number of
matchmaker replicas share one Redis (or Redis Cluster).

Guarantees every implementation keeps (the conformance suite in
``tests/integration/test_store_conformance.py`` checks them on both):

- ``claim_slot`` is a compare-and-set: it succeeds only while the slot is READY on a
  live, non-draining host, and then the slot is ASSIGNED to exactly that session. No
  sequence of calls from any number of processes gives one slot to two sessions.
- Session transitions are idempotent and only move forward
  (``assigned -> connected -> disconnected -> ended``; a reconnect may take a
  disconnected session back to ``assigned``). Ending an ended session is a no-op that
  returns None, so an end is recorded exactly once.
- A ticket leaves WAITING exactly once (served, cancelled or expired).
- Host and slot records are replaced as a whole by registration and heartbeat; a
  host whose boot id differs from the registered one is refused while it is alive.

Placement (which READY slot to try first) is not the store's business: the service
reads candidates with ``ready_slots`` and ranks them (``placement.py``), then claims.
"""

from __future__ import annotations

from typing import Protocol

from matchmaker.models import (
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
    status = 400


class UnknownHost(StoreError):
    status = 404


class HostConflict(StoreError):
    status = 409


class QueueFull(StoreError):
    status = 429


class BackendUnavailable(StoreError):
    status = 503


class Store(Protocol):
    # --- hosts (from agents) -----------------------------------------------------------
    async def register_host(self, reg: HostRegistration, now: float) -> Host:
        """New host, a restarted agent (new boot id after death), or an idempotent repeat.

        Raises HostConflict when a live host has the id under another boot id.
        """

    async def heartbeat(self, host_id: str, hb: Heartbeat, now: float) -> tuple[list[Session], HeartbeatReply]:
        """Apply the agent's slot states and loads.

        A slot the agent reports ``ready`` becomes READY from STARTING or DEAD, and from
        RESETTING only when the report's ``reset_for`` names the session that ended
        there; an ASSIGNED slot stays assigned. A slot reported ``dead`` or ``starting``
        while ASSIGNED ends its session (SLOT_FAILED). Returns the sessions that ended
        and the reply (slots to reset). Raises UnknownHost / HostConflict.
        """

    async def set_draining(self, host_id: str, draining: bool) -> Host:
        """A draining host takes no new sessions; current ones finish."""

    async def expire_hosts(self, now: float, ttl_s: float) -> list[Session]:
        """Hosts silent for ``ttl_s`` are dead: slots DEAD, sessions ended (HOST_DEAD)."""

    # --- the pool ---------------------------------------------------------------------
    async def ready_slots(self, tenant: str, app: str) -> list[Slot]:
        """READY slots of live, non-draining hosts that serve this tenant and app."""

    async def serves(self, tenant: str, app: str) -> bool:
        """Whether any registered slot (whatever its state) serves this tenant and app."""

    async def claim_slot(self, slot_id: str, session: Session, ticket_id: str | None = None) -> bool:
        """Atomically: slot READY -> ASSIGNED to ``session`` (stored), and, with a ticket,
        that ticket WAITING -> SERVED. The slot and the ticket must be of the session's
        tenant and app. False, changing nothing, if any precondition fails."""

    # --- sessions ---------------------------------------------------------------------
    async def session(self, session_id: str) -> Session | None:
        """A session that has not ended (ended ones live on in the record sink)."""

    async def session_for_client(self, tenant: str, client_key: str) -> Session | None:
        """The client's session that has not ended, if any (reconnect within grace)."""

    async def reattach(self, session_id: str, now: float) -> Session | None:
        """A reconnecting client takes its not-yet-ended session back: -> ASSIGNED."""

    async def mark_connected(self, session_id: str, now: float) -> Session | None: ...

    async def mark_disconnected(self, session_id: str, now: float) -> Session | None: ...

    async def touch(self, session_id: str, now: float) -> None: ...

    async def end_session(self, session_id: str, reason: EndReason, now: float, *,
                          if_unchanged: Session | None = None) -> Session | None:
        """End it once; its slot goes RESETTING (the agent resets it, then reports READY).

        Returns the ended session, or None when it was unknown or had already ended.
        With ``if_unchanged`` (the record a timeout verdict was based on), end it only if
        its state, ``last_activity`` and ``disconnected_at`` are still those: a player who
        connected or came back meanwhile is not timed out on a stale listing.
        """

    async def due_sessions(self, now: float, *, connect_timeout_s: float, reconnect_grace_s: float,
                           idle_timeout_s: float, max_session_s: float, limit: int) -> list[Session]:
        """The live sessions that ``timeouts.due_endings`` would end at ``now`` (a timeout
        of 0 is off; the reconnect grace applies even when 0): exactly those, at most
        ``limit``, the most overdue first (``timeouts.overdue_by``; best effort).

        The sweep's read: it costs what is due, not what is live, so a sweep of a big
        fleet does not block the event loop. The verdict still comes from the returned
        records, which may be stale by the time they are acted on (``if_unchanged``).
        """

    # --- queue ------------------------------------------------------------------------
    async def enqueue(self, ticket: Ticket, max_length: int) -> int:
        """Append to the FIFO of (tenant, app); returns the 1-based position.

        Raises QueueFull when that queue already holds ``max_length`` tickets."""

    async def ticket(self, ticket_id: str) -> Ticket | None: ...

    async def position(self, ticket_id: str) -> int | None:
        """1-based place in its queue, or None once it is no longer waiting."""

    async def waiting(self, tenant: str, app: str, limit: int) -> list[Ticket]:
        """The first ``limit`` waiting tickets of one queue, oldest first."""

    async def queues(self) -> list[tuple[str, str, int]]:
        """Every non-empty queue: (tenant, app, length)."""

    async def finish_ticket(self, ticket_id: str, state: str, reason: str) -> bool:
        """WAITING -> CANCELLED or EXPIRED; False if it had already left WAITING."""

    # --- listings (admin API) ---------------------------------------------------------
    async def hosts(self) -> list[Host]: ...

    async def slots(self) -> list[Slot]: ...

    async def sessions(self) -> list[Session]:
        """Sessions that have not ended."""

    async def aclose(self) -> None: ...


def open_store(url: str, *, prefix: str = "pf") -> Store:
    """The URL scheme picks the backend; one setting (``PIXELFLEET_STATE_URL``) rules both."""
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        from matchmaker.store_memory import MemoryStore

        return MemoryStore()
    if scheme in ("redis", "rediss", "unix"):
        from matchmaker.store_redis import RedisStore

        return RedisStore.from_url(url, prefix=prefix)
    raise ValueError(f"unsupported state URL scheme {scheme!r} (memory://, redis://, rediss://, unix://)")
