"""Matchmaker settings (``PIXELFLEET_MATCHMAKER__*``). The backend (``PIXELFLEET_STATE_URL``),
the session-token keys and the agent and admin tokens are shared: see ``SharedSettings``."""

from __future__ import annotations

from matchmaker.placement import POLICIES
from pixelfleet.shared_settings import SharedSettings

RECORDS_MEMORY_MAX = 10_000


class MatchmakerSettings(SharedSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 9999
    key_prefix: str = "pf"  # Redis key prefix; keys carry the tenant
    policy: str = "spread"  # spread | pack
    # Who may call what (agents and operators: the shared agent_token and admin_token).
    caller_jwt_secret: str | None = None  # HS256 key of callers' JWTs (tenant claim)
    caller_tenant_claim: str = "tenant"
    allow_anonymous: bool = False  # dev: callers without a JWT are anonymous_tenant
    anonymous_tenant: str = "default"
    # Lifecycle.
    heartbeat_ttl_s: float = 10.0  # a host silent this long is dead
    dead_host_retention_s: float = 3600.0  # a dead host is listed this long, then forgotten; 0 = never
    connect_timeout_s: float = 60.0  # assigned but never connected
    reconnect_grace_s: float = 30.0  # a player who reconnects within it keeps the slot
    idle_timeout_s: float = 0.0  # connected, no activity reported; 0 = off
    max_session_s: float = 4 * 3600.0
    # Queue.
    queue_max_length: int = 200  # per tenant and app
    queue_max_wait_s: float = 900.0
    queue_client_ttl_s: float = 15.0  # a waiting client not heard this long is gone; 0 = off
    queue_rejoin_grace_s: float = 5.0  # a keyed client's place kept after its stream closed; 0 = none
    expected_session_s: float = 600.0  # ETA before any session has ended here
    sweep_interval_s: float = 0.5
    # Ended-session records: appended to this JSON-lines file; None = only the last
    # records_memory_max kept in memory (lost on exit; the count of dropped ones is logged).
    records_path: str | None = None
    records_memory_max: int = RECORDS_MEMORY_MAX
    drain_delay_s: float = 0.0  # SIGTERM: time /readyz answers 503 before the port closes

    def __post_init__(self) -> None:
        # The Redis store's script would read an unknown policy as spread: refuse it here.
        if self.policy not in POLICIES:
            raise ValueError(f"unknown placement policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        if self.records_memory_max < 1:
            raise ValueError("records_memory_max must be at least 1")
