"""Abuse limits on the session API: rate limits, quotas, and the count of their hits.

- Rate limits: a token bucket per client address and one per caller subject, per
  replica (``rate_ip_per_s``/``rate_ip_burst``, ``rate_subject_per_s``/``rate_subject_burst``).
- Quotas, per tenant and per subject: live sessions and waiting tickets (counted from
  the store, so across replicas; the count is at most ``_COUNTS_TTL_S`` old and this
  replica's own admissions since are added), and open ticket event streams (per replica:
  a stream is a connection to this replica). A tenant's quota counts only its own, so
  tenant A at its quota never blocks tenant B.
Every refusal is counted in ``hits`` by limit and tenant, a plain ``Counter`` that
``/metrics`` reads at scrape time (``pixelfleet_matchmaker_limit_refusals_total``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from matchmaker.config import MatchmakerSettings
from matchmaker.models import SessionState, TicketState
from matchmaker.store import Store

__all__ = ["Limits", "TokenBuckets"]

_COUNTS_TTL_S = 1.0
_BUCKETS_MAX = 100_000  # keys kept per bucket set; full buckets are dropped first


@dataclass
class TokenBuckets:
    """One bucket per key: ``rate`` tokens a second up to ``burst``; a request takes one."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, at)

    def take(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        if len(self._buckets) >= _BUCKETS_MAX:
            self._prune(now)
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def _prune(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        if len(self._buckets) >= _BUCKETS_MAX:
            self._buckets.clear()


@dataclass
class _Counts:
    sessions: Counter[tuple[str, str | None]] = field(default_factory=Counter)  # (tenant, subject|None)
    tickets: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    read_at: float = float("-inf")


class Limits:
    def __init__(
        self,
        settings: MatchmakerSettings,
        store: Store,
        clock: Callable[[], float] = time.monotonic,
        hits: Counter[tuple[str, str]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.by_ip = TokenBuckets(settings.rate_ip_per_s, settings.rate_ip_burst, clock)
        self.by_subject = TokenBuckets(settings.rate_subject_per_s, settings.rate_subject_burst, clock)
        self.streams: Counter[tuple[str, str | None]] = Counter()
        self.hits: Counter[tuple[str, str]] = Counter() if hits is None else hits  # (limit, tenant) -> refusals
        self._counts = _Counts()

    def rate(self, source: str | None, tenant: str, subject: str) -> str | None:
        """The refusal reason, or None when the request may go on."""
        if source is not None and not self.by_ip.take(source):
            return self._hit("rate_limited_ip", tenant)
        if not self.by_subject.take(f"{tenant}\x00{subject}"):
            return self._hit("rate_limited_subject", tenant)
        return None

    def _hit(self, reason: str, tenant: str) -> str:
        self.hits[(reason, tenant)] += 1
        return reason

    async def admission(self, tenant: str, subject: str, client_key: str | None) -> str | None:
        """Quotas for a new session or ticket: the refusal reason, or None. A request over
        a quota that only takes back what the caller holds (``resuming``) is let through."""
        s = self.settings
        if not (
            s.quota_tenant_sessions or s.quota_subject_sessions or s.quota_tenant_tickets or s.quota_subject_tickets
        ):
            return None
        counts = await self._read()
        checks = (
            (s.quota_tenant_sessions, counts.sessions[(tenant, None)], "quota_tenant_sessions"),
            (s.quota_subject_sessions, counts.sessions[(tenant, subject)], "quota_subject_sessions"),
            (s.quota_tenant_tickets, counts.tickets[(tenant, None)], "quota_tenant_tickets"),
            (s.quota_subject_tickets, counts.tickets[(tenant, subject)], "quota_subject_tickets"),
        )
        for limit, used, reason in checks:
            if limit and used >= limit:
                if await self.resuming(tenant, subject, client_key):
                    return None
                return self._hit(reason, tenant)
        return None

    async def resuming(self, tenant: str, subject: str, client_key: str | None) -> bool:
        """Whether a request over quota only takes back what the caller already holds (its
        live session, or its waiting ticket after a reload, by its client key): that adds
        nothing, so it is never refused."""
        if not client_key:
            return False
        for s in await self.store.sessions():
            if (s.tenant, s.subject, s.client_key) == (
                tenant,
                subject,
                client_key,
            ) and s.state is not SessionState.ENDED:
                return True
        for queue_tenant, app, length in await self.store.queues():
            if queue_tenant == tenant:
                for t in await self.store.waiting(tenant, app, length):
                    if (t.request.subject, t.request.client_key) == (subject, client_key):
                        return True
        return False

    def admitted(self, tenant: str, subject: str, *, queued: bool) -> None:
        """Count an admission at once, so a burst within one count's lifetime is held too."""
        counter = self._counts.tickets if queued else self._counts.sessions
        counter[(tenant, None)] += 1
        counter[(tenant, subject)] += 1

    async def _read(self) -> _Counts:
        if self.clock() - self._counts.read_at <= _COUNTS_TTL_S:
            return self._counts
        counts = _Counts(read_at=self.clock())
        for session in await self.store.sessions():
            if session.state is not SessionState.ENDED:
                counts.sessions[(session.tenant, None)] += 1
                counts.sessions[(session.tenant, session.subject)] += 1
        if self.settings.quota_tenant_tickets or self.settings.quota_subject_tickets:
            for tenant, app, length in await self.store.queues():
                for ticket in await self.store.waiting(tenant, app, length):
                    if ticket.state is TicketState.WAITING:
                        counts.tickets[(tenant, None)] += 1
                        counts.tickets[(tenant, ticket.request.subject)] += 1
        self._counts = counts
        return counts

    def open_stream(self, tenant: str, subject: str) -> str | None:
        s = self.settings
        if s.quota_tenant_streams and self.streams[(tenant, None)] >= s.quota_tenant_streams:
            return self._hit("quota_tenant_streams", tenant)
        if s.quota_subject_streams and self.streams[(tenant, subject)] >= s.quota_subject_streams:
            return self._hit("quota_subject_streams", tenant)
        self.streams[(tenant, None)] += 1
        self.streams[(tenant, subject)] += 1
        return None

    def close_stream(self, tenant: str, subject: str) -> None:
        for key in ((tenant, None), (tenant, subject)):
            self.streams[key] -= 1
            if self.streams[key] <= 0:
                del self.streams[key]
