"""The matchmaker's nouns: hosts, slots, sessions, queue tickets, and the API bodies.

Slots: ``starting -> ready -> assigned -> resetting -> ready``, plus ``dead``, and
``ready -> draining -> starting`` (the agent restarting an idle streamer).
Sessions: ``assigned -> connected -> (disconnected: grace) -> ended``.
Every struct is plain data so that both stores (memory, Redis) hold exactly the same
thing and the conformance suite can compare them.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec


class SlotState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    ASSIGNED = "assigned"
    RESETTING = "resetting"
    DRAINING = "draining"
    DEAD = "dead"


class SessionState(enum.StrEnum):
    ASSIGNED = "assigned"  # slot claimed, player not connected yet
    CONNECTED = "connected"  # player's signalling socket is open
    DISCONNECTED = "disconnected"  # socket gone; slot kept for the reconnect grace period
    ENDED = "ended"


class EndReason(enum.StrEnum):
    """Why a session ended; each value is described in docs/records.md (a test compares)."""

    PLAYER_LEFT = "player_left"
    NEVER_CONNECTED = "never_connected"
    IDLE = "idle_timeout"
    MAX_LENGTH = "max_session_length"
    HOST_DEAD = "host_dead"
    SLOT_FAILED = "slot_failed"
    FORCE_ENDED = "force_ended"


class TicketState(enum.StrEnum):
    WAITING = "waiting"
    SERVED = "served"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Struct(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


# --- agent -> matchmaker ------------------------------------------------------------


class SlotSpec(Struct, kw_only=True):
    index: int
    tenant: str
    app: str
    streamer_id: str
    # The part of one GPU this slot holds while it runs (1/n when n slots share a GPU,
    # 0 for a slot without a GPU): a session's record bills its held time times this.
    gpu_share: Annotated[float, msgspec.Meta(ge=0.0)] = 1.0
    # The GPU this slot encodes on (its index on the host). Set, the slot's load is that
    # GPU's, from the heartbeats' ``gpus`` reports, and its slot reports' loads are
    # ignored: one GPU's load change is one report, not one per slot sharing that GPU.
    gpu: Annotated[int, msgspec.Meta(ge=0)] | None = None


class HostRegistration(Struct, kw_only=True):
    host_id: str
    boot_id: str  # changes when the agent restarts; tells a restart from a twin
    region: str = "local"
    az: str = ""
    gpu_model: str = ""
    signaling_url: str  # where this host's streamers' players connect
    slots: list[SlotSpec]

    def __post_init__(self) -> None:
        # A slot is named by its index (``<host>/<index>``): two specs with one index would
        # be one slot described twice, and the stores would keep one or both.
        seen: set[int] = set()
        for spec in self.slots:
            if spec.index in seen:
                raise ValueError(f"slot index {spec.index} appears twice: slot indexes must be unique")
            seen.add(spec.index)


class SlotReport(Struct, kw_only=True):
    index: int
    # The agent's view: starting, ready, resetting, dead; or draining: an idle slot the
    # agent wants out of placement before it restarts its streamer (a credential renewal),
    # answered in the reply's ``busy`` when a session already holds it.
    state: SlotState
    nvenc_load: float = 0.0  # 0..1
    gpu_load: float = 0.0  # 0..1
    # The session the agent last reset this slot after. A slot whose session ended only
    # becomes READY again once the agent reports the reset for that very session, so a
    # heartbeat sent before the agent heard of the end cannot skip the reset.
    reset_for: str | None = None


class GpuReport(Struct, kw_only=True):
    """One GPU's load: the load of every slot registered with this ``gpu`` index."""

    index: Annotated[int, msgspec.Meta(ge=0)]
    nvenc_load: float = 0.0  # 0..1
    gpu_load: float = 0.0  # 0..1


class Heartbeat(Struct, kw_only=True):
    """The agent's slot reports (docs/matchmaker-api.md, "Heartbeats: full and delta").

    ``full``: ``slots`` lists every slot of the host. A delta (``full=False``) lists only
    the slots whose state, ``reset_for`` or whole-percent loads changed since the previous
    heartbeat the matchmaker acknowledged; it applies only when ``seq`` is exactly the
    last applied one + 1, else the reply asks for a snapshot. An agent that sends neither
    field (``seq`` 0) is heard exactly as before deltas existed."""

    boot_id: str
    slots: list[SlotReport]
    # The agent's heartbeat counter for this registration: 1 for the first heartbeat after
    # each (re-)registration, +1 per heartbeat sent; 0: an agent without deltas.
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0
    full: bool = True

    def __post_init__(self) -> None:
        if not self.full and self.seq == 0:
            raise ValueError("a delta heartbeat (full: false) needs its seq (1 and up)")

    nvenc_load: float = 0.0
    gpu_load: float = 0.0
    # The agent drains its host (SIGTERM, Spot notice): no new sessions there. Only ever
    # sets draining, so an agent's heartbeat never undoes an operator's drain.
    draining: bool = False
    # The earliest ``exp`` of the streamer credentials the agent holds for its slots (0: a
    # slot has none). The reply carries ``streamer_tokens`` only when that is less than
    # half a lifetime away, on a full heartbeat, or when this is absent (an older agent):
    # 500 credentials are ~150 KB, too much to repeat every 2 s.
    credentials_expire_at: float | None = None
    # Per-GPU loads for slots registered with a ``gpu``: every GPU in a full heartbeat,
    # in a delta only those whose whole-percent loads changed. Applied with the slot
    # reports (in sequence, or not at all).
    gpus: list[GpuReport] = []


class SlotReset(Struct, kw_only=True):
    index: int
    session_id: str


class HeartbeatReply(Struct, kw_only=True):
    """What the agent must do: reset these slots (their sessions ended); send a full
    heartbeat next (``snapshot``); keep these slots' streamers (``busy``)."""

    reset: list[SlotReset] = []
    draining: bool = False
    # True: the slot reports were not applied (a delta out of sequence, or no record of
    # the host's previous report); the next heartbeat must be full. Only ever sent to an
    # agent that numbers its heartbeats (seq > 0), and left out unless true, so an agent
    # older than the field (it refuses unknown fields) reads every reply.
    snapshot: bool | msgspec.UnsetType = msgspec.UNSET
    # Each slot's current streamer credential by slot index; absent when the matchmaker
    # holds no session-token signing key (an agent older than the field never gets it).
    streamer_tokens: dict[str, str] | msgspec.UnsetType = msgspec.UNSET
    # The indexes of the slots this heartbeat reported ``draining`` that a session holds
    # (ASSIGNED): their streamers must not restart. Left out when empty, so an agent older
    # than the field (it never reports ``draining``) reads every reply.
    busy: list[int] | msgspec.UnsetType = msgspec.UNSET


class AllocationRequest(Struct, kw_only=True):
    tenant: str
    app: str
    region: str | None = None
    gpu_model: str | None = None
    resolution: str | None = None
    client_key: str | None = None  # stable per player: reconnects within grace get the same slot
    # The caller's subject (its JWT's ``sub``): only it may read, follow, cancel or resume
    # what this request becomes. None only for requests made before subjects were kept.
    subject: str | None = None
    trace: str | None = None  # W3C traceparent of its POST /sessions span, when traced (pixelfleet.tracing)


# --- state ------------------------------------------------------------------------


class Host(Struct, kw_only=True):
    host_id: str
    boot_id: str
    region: str
    az: str
    gpu_model: str
    signaling_url: str
    last_heartbeat: float
    draining: bool = False
    dead: bool = False
    nvenc_load: float = 0.0
    gpu_load: float = 0.0
    slot_ids: list[str] = []
    # Only in the registration reply: each slot's streamer credential by slot index
    # (docs/matchmaker-api.md, "Streamer credentials"); never stored.
    streamer_tokens: dict[str, str] | msgspec.UnsetType = msgspec.UNSET


class Slot(Struct, kw_only=True):
    slot_id: str  # "<host_id>/<index>"
    host_id: str
    tenant: str
    app: str
    region: str
    gpu_model: str
    streamer_id: str
    signaling_url: str
    state: SlotState = SlotState.STARTING
    session_id: str | None = None
    ended_session: str | None = None  # set while RESETTING: the session to reset after
    nvenc_load: float = 0.0
    gpu_load: float = 0.0
    gpu_share: float = 1.0  # from its SlotSpec
    gpu: int | None = None  # from its SlotSpec: its loads are this GPU's


# The fields a session copies from the slot it is placed on (same names on both models):
# the Redis allocation script fills exactly these into the session the model encodes.
SESSION_FROM_SLOT = ("slot_id", "host_id", "streamer_id", "signaling_url", "region", "gpu_share")


class Session(Struct, kw_only=True):
    session_id: str
    tenant: str
    app: str
    slot_id: str
    host_id: str
    streamer_id: str
    signaling_url: str
    region: str
    client_key: str | None = None
    state: SessionState = SessionState.ASSIGNED
    created_at: float
    connected_at: float | None = None
    last_activity: float
    disconnected_at: float | None = None
    ended_at: float | None = None
    end_reason: EndReason | None = None
    # The slot's GPU share (SlotSpec.gpu_share). None only for a session placed on a slot
    # stored before the field existed (the Redis script copies what the slot holds): 1.0.
    gpu_share: float | None = None
    subject: str | None = None  # the caller it belongs to (AllocationRequest.subject)
    trace: str | None = None  # its join trace (AllocationRequest.trace): the token's ``tp``


# --- records ----------------------------------------------------------------------

RECORD_FORMAT_VERSION = 1
Seconds = Annotated[float, msgspec.Meta(ge=0.0)]  # a record's figures never go below 0


class SessionRecord(msgspec.Struct, kw_only=True):
    """One ended session, as written to the records file (docs/records.md): the basis of
    usage billing. Unknown fields are allowed on reading, so adding one is not a new
    format; a change of meaning is, and bumps ``format_version``."""

    format_version: int  # RECORD_FORMAT_VERSION; required, so an older record is told apart
    session_id: str
    tenant: str
    app: str
    region: str
    host_id: str
    slot_id: str
    streamer_id: str
    client_key: str | None = None
    created_at: float  # allocated: the slot is held for the session from here
    connected_at: float | None  # the player's first connect; None: never connected
    ended_at: float
    end_reason: EndReason
    duration_s: Seconds  # billable: ended_at - connected_at (0 if never connected)
    held_s: Seconds  # the slot held: ended_at - created_at
    gpu_share: Annotated[float, msgspec.Meta(ge=0.0)]  # the part of a GPU the slot holds
    gpu_seconds: Seconds  # held_s * gpu_share


class Ticket(Struct, kw_only=True):
    ticket_id: str
    request: AllocationRequest
    enqueued_at: float
    state: TicketState = TicketState.WAITING
    session_id: str | None = None
    reason: str | None = None
    # Liveness of a waiting ticket's client. ``seen_at``: when it was last heard (enqueue,
    # its event stream, its status reads; None reads as ``enqueued_at``), so a client that
    # vanished does not hold its place or get a slot nobody uses. ``left_at``: when its
    # event stream closed, if it has not come back since (a page reload keeps the place).
    seen_at: float | None = None
    left_at: float | None = None


def slot_id(host_id: str, index: int) -> str:
    return f"{host_id}/{index}"


def registered_slot(reg: HostRegistration, spec: SlotSpec) -> Slot:
    """A slot as its host's registration declares it (STARTING until a heartbeat says more):
    the one place both stores build it."""
    return Slot(
        slot_id=slot_id(reg.host_id, spec.index),
        host_id=reg.host_id,
        tenant=spec.tenant,
        app=spec.app,
        region=reg.region,
        gpu_model=reg.gpu_model,
        streamer_id=spec.streamer_id,
        signaling_url=reg.signaling_url,
        gpu_share=spec.gpu_share,
        gpu=spec.gpu,
    )


# --- the HTTP API's bodies ---------------------------------------------------------------
# matchmaker/http.py decodes and encodes exactly these (with the agent and state models
# above), matchmaker/openapi.py generates the OpenAPI document from them, and
# matchmaker/client.py decodes with them: the published schema is the code's own.


class SessionRequest(Struct, kw_only=True):
    """``POST /sessions``. The tenant comes from the caller's JWT, never from the body."""

    app: str
    region: str | None = None  # preferred, not required
    gpu_model: str | None = None  # required when given
    resolution: str | None = None
    client_key: str | None = None  # stable per player: a reconnect or reload gets its slot or ticket back


SessionEventName = Literal["connected", "disconnected", "activity", "first_frame"]


class SessionEvent(Struct, kw_only=True):
    """``POST /sessions/{id}/events``: signalling reports connects and leaves, the player
    page its input activity (while ``idle_timeout_s`` is on) and its first decoded video
    frame (``first_frame``: time to first frame, the end of the join trace)."""

    event: SessionEventName


class EventAccepted(Struct, kw_only=True):
    ok: bool


MAX_BATCH_EVENTS = 256  # items of one ``POST /sessions/events`` (and the 64 KiB body limit)


class SessionEventItem(Struct, kw_only=True):
    """One report of a batch: as ``POST /sessions/{id}/events`` with ``token`` as its bearer."""

    session_id: str
    token: str  # that session's own token (accepted after it expires)
    event: SessionEventName


class SessionEventBatch(Struct, kw_only=True):
    """``POST /sessions/events``: many sessions' reports in one request (signalling batches
    its connects and leaves). Items of one session are applied in list order."""

    events: Annotated[list[SessionEventItem], msgspec.Meta(max_length=MAX_BATCH_EVENTS)]


class SessionEventOutcome(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One item's outcome: ``status`` is what ``POST /sessions/{id}/events`` would have
    answered (200 taken; 401/403 a bad token; 410 ended, with ``end_reason``; 503 retry)."""

    status: int
    error: ErrorCode | None = None
    message: str | None = None
    end_reason: EndReason | None = None


class SessionEventResults(Struct, kw_only=True):
    """The outcome of every item of a ``SessionEventBatch``, in its order."""

    results: list[SessionEventOutcome]


class DrainRequest(Struct, kw_only=True):
    draining: bool = True  # false takes the host back into service


class _StatusReply(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="status"):
    """A reply about a slot or a ticket; ``status`` tells which (a tagged union)."""


class Assigned(_StatusReply, tag="assigned"):
    """A slot: open ``signaling_url`` with ``token`` (single-use, short-lived)."""

    session_id: str
    streamer_id: str
    signaling_url: str
    token: str
    region: str
    idle_timeout_s: float  # > 0: report input activity at least every third of it
    ticket_id: str | None = None  # set when the slot was reached through the queue


class Waiting(_StatusReply, tag="waiting"):
    """A place in the queue; ``events`` is the ticket's event stream (path under the host)."""

    ticket_id: str
    events: str
    position: int | None = None  # 1-based; absent only in a race with the ticket leaving
    eta_s: float | None = None


class TicketServed(_StatusReply, tag="served"):
    """Served, but its session has ended since (the assignment is no longer available)."""

    ticket_id: str
    reason: str | None = None


class TicketCancelled(_StatusReply, tag="cancelled"):
    ticket_id: str
    reason: str | None = None  # "cancelled by the client", "client gone: ..."


class TicketExpired(_StatusReply, tag="expired"):
    ticket_id: str
    reason: str | None = None  # waited longer than QUEUE_MAX_WAIT_S


TicketReply = Assigned | Waiting | TicketServed | TicketCancelled | TicketExpired
"""``GET /queue/{id}`` and each event of its stream (the SSE ``event:`` is ``status``)."""

ErrorCode = Literal[
    "invalid_body",
    "too_large",
    "unauthorized",
    "invalid_token",
    "token_expired",
    "disabled",
    "wrong_session",
    "not_waiting",
    "session_ended",
    "store_error",
    "unknown_host",
    "unknown_app",
    "unknown_session",
    "host_conflict",
    "queue_full",
    "backend_unavailable",
    "forbidden",
    "report_token_required",
    "signaling_url_refused",
    "rate_limited",
    "quota_exceeded",
]


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every 4xx/5xx the API itself answers."""

    error: ErrorCode
    message: str
    end_reason: EndReason | None = None  # 410 session_ended: why it ended, while the store remembers


class QueuedTicket(msgspec.Struct, kw_only=True):
    ticket_id: str
    enqueued_at: float
    region: str | None = None  # the region its request prefers (None: any); absent from older matchmakers


class QueueListing(msgspec.Struct, kw_only=True):
    """``GET /admin/queue``: one entry per non-empty queue (tenant and app), oldest ticket first."""

    tenant: str
    app: str
    length: int
    tickets: list[QueuedTicket]
