"""Matchmaker settings (``PIXELFLEET_MATCHMAKER__*``). The backend (``PIXELFLEET_STATE_URL``),
the session-token keys and the agent and admin tokens are shared: see ``SharedSettings``."""

from __future__ import annotations

import msgspec

from matchmaker.placement import POLICIES
from pixelfleet.shared_settings import SharedSettings

RECORDS_MEMORY_MAX = 10_000
REDIS_WAIT_MS_MAX = 4000


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
    # OIDC callers (matchmaker.auth, pixelfleet.oidc): RS256/ES256 checked against the JWKS.
    caller_jwks_url: str | None = None
    caller_issuer: str | None = None  # required claim when set (always set with a JWKS)
    caller_audience: str | None = None  # required claim when set (always set with a JWKS)
    caller_algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256"])
    caller_leeway_s: float = 30.0  # clock skew allowed on exp/nbf/iat, at most 300
    caller_subject_claim: str = "sub"
    caller_jwks_ttl_s: float = 300.0  # keys held this long, then fetched again
    caller_jwks_min_refetch_s: float = 10.0  # an unknown kid refetches at most this often
    # Agents: per-host tokens (``pixelfleet agent-token``) signed with this key; when set,
    # the fleet-wide agent_token is no longer accepted.
    agent_key_secret: str | None = None
    agent_token_ttl_s: int = 365 * 86400  # lifetime of a minted host token
    signaling_urls: list[str] = []  # allowed signaling_url of registrations; empty: any (warned)
    dedicated_tenants: list[str] = []  # a host serving one of these serves no other tenant
    streamer_token_ttl_s: int = 900  # streamer credentials in registration/heartbeat replies
    # Abuse limits on the session API (0 = off). Rates are tokens per second, bursts tokens.
    trusted_proxies: list[str] = []  # CIDRs whose X-Forwarded-For is believed
    rate_ip_per_s: float = 0.0
    rate_ip_burst: int = 20
    rate_subject_per_s: float = 0.0
    rate_subject_burst: int = 20
    quota_tenant_sessions: int = 0  # live sessions of one tenant
    quota_subject_sessions: int = 0  # live sessions of one caller subject
    quota_tenant_tickets: int = 0  # waiting tickets of one tenant
    quota_subject_tickets: int = 0  # waiting tickets of one caller subject
    quota_tenant_streams: int = 0  # open ticket event streams of one tenant, per replica
    quota_subject_streams: int = 0  # open ticket event streams of one subject, per replica
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
    # ... and/or put into this DynamoDB table (key session_id; needs the `aws` extra), each
    # item expiring (TTL attribute expires_at) records_retention_days after its end.
    records_table: str | None = None
    records_retention_days: float = 400.0
    drain_delay_s: float = 0.0  # SIGTERM: time /readyz answers 503 before the port closes
    # Redis replication: a write is confirmed to a caller only once this many replicas hold
    # it (WAIT), so a failover cannot lose a slot handed out; 0 = as Redis, asynchronous.
    redis_wait_replicas: int = 0
    redis_wait_ms: int = 1000  # at most this long; fewer replicas by then: 503 to the caller

    def __post_init__(self) -> None:
        # The Redis store's script would read an unknown policy as spread: refuse it here.
        if self.policy not in POLICIES:
            raise ValueError(f"unknown placement policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        if self.records_memory_max < 1:
            raise ValueError("records_memory_max must be at least 1")
        if self.records_retention_days <= 0:
            raise ValueError("records_retention_days must be > 0")
        if self.caller_jwks_url and not (self.caller_issuer and self.caller_audience):
            raise ValueError(
                "caller_jwks_url needs caller_issuer and caller_audience (OIDC tokens are checked for both)"
            )
        if not 0 <= self.caller_leeway_s <= 300:
            raise ValueError("caller_leeway_s must be within 0..300")
        if self.redis_wait_replicas < 0:
            raise ValueError("redis_wait_replicas must be >= 0")
        if not 1 <= self.redis_wait_ms <= REDIS_WAIT_MS_MAX:
            raise ValueError(f"redis_wait_ms must be within 1..{REDIS_WAIT_MS_MAX} (below the store's 5 s limit)")
        if self.redis_wait_replicas and self.state_url.startswith("memory:"):
            raise ValueError("redis_wait_replicas needs a Redis state URL (PIXELFLEET_STATE_URL), not memory://")
        if self.agent_key_secret is not None and len(self.agent_key_secret) < 32:
            raise ValueError("agent_key_secret needs at least 32 bytes")
