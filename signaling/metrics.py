"""Prometheus metrics of one signalling process.

The relay path only bumps plain ints (``SignalingCore.accepted``/``refused`` per message,
``SocketStats`` per connection); ``SignalingCollector`` turns them into metric families
when ``/metrics`` is scraped, so a relayed message costs one dict increment and nothing
of prometheus-client. Labels are bounded: role, message type (the handled types only),
problem kind, close code (unknown codes are ``other``) and the door's refusal reasons
(``signaling.access.REFUSAL_REASONS``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pixelfleet.prometheus import bounded
from pixelfleet.redis_timing import RoundTrips
from signaling import errors
from signaling.access import REFUSAL_REASONS
from signaling.protocol import Role

if TYPE_CHECKING:
    from prometheus_client import Metric

    from signaling.ws import SignalingNode

PREFIX = "pixelfleet_signaling_"
KNOWN_CLOSE_CODES = frozenset(
    str(c)
    for c in (
        1000,
        1001,
        1005,
        1006,
        errors.POLICY_VIOLATION,
        errors.MESSAGE_TOO_BIG,
        errors.INTERNAL_ERROR,
        errors.SERVICE_RESTART,
        errors.TRY_AGAIN_LATER,
        errors.KEEPALIVE_TIMEOUT,
        errors.STREAMER_GONE,
        errors.SLOW_CONSUMER,
        errors.RATE_LIMITED,
    )
)
# Upgrade request to greeting sent: token check, single-use ledger (Redis in a cluster), prepare.
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class SocketStats:
    """Per-connection counts, bumped by ``SignalingNode`` (never per relayed message)."""

    __slots__ = ("opened", "closed", "rate_limited", "handshake")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.opened: dict[Role, int] = dict.fromkeys(Role, 0)
        self.closed: dict[tuple[Role, str], int] = {}
        self.rate_limited: dict[Role, int] = dict.fromkeys(Role, 0)
        histogram = Histogram(
            PREFIX + "handshake_seconds",
            "WebSocket upgrade request to the greeting (config or identify) sent",
            ["role"],
            buckets=HANDSHAKE_BUCKETS,
            registry=registry,
        )
        self.handshake = {role: histogram.labels(role.value) for role in Role}  # pre-bound children

    def close(self, role: Role, code: int | None) -> None:
        key = (role, bounded(str(code) if code is not None else "1006", KNOWN_CLOSE_CODES))
        self.closed[key] = self.closed.get(key, 0) + 1


class SignalingCollector(Collector):
    """Reads the node's counters and state at scrape time."""

    def __init__(self, node: SignalingNode) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node, core, stats = self.node, self.node.core, self.node.stats
        opened = CounterMetricFamily(PREFIX + "connections", "WebSockets accepted", labels=["role"])
        open_now = GaugeMetricFamily(PREFIX + "open_connections", "WebSockets open now", labels=["role"])
        now: dict[Role, int] = dict.fromkeys(Role, 0)
        for connection in list(node.connections.values()):
            now[connection.role] += 1
        for role in Role:
            opened.add_metric([role.value], stats.opened[role])
            open_now.add_metric([role.value], now[role])
        yield opened
        yield open_now
        accepted = CounterMetricFamily(
            PREFIX + "messages", "messages handled, by sender role and type", labels=["role", "type"]
        )
        for role, counts in core.accepted.items():
            for kind, n in list(counts.items()):
                accepted.add_metric([role.value, kind], n)
        yield accepted
        refused = CounterMetricFamily(
            PREFIX + "messages_refused",
            "messages refused, by sender role and reason (invalid_json, invalid_message, not_allowed, unknown_type)",
            labels=["role", "reason"],
        )
        for (role, reason), n in list(core.refused.items()):
            refused.add_metric([role.value, reason], n)
        yield refused
        limited = CounterMetricFamily(
            PREFIX + "rate_limit_hits", "connections closed 4429 for flooding", labels=["role"]
        )
        for role in Role:
            limited.add_metric([role.value], stats.rate_limited[role])
        yield limited
        door = CounterMetricFamily(
            PREFIX + "access_refusals",
            "upgrades and listings refused before any WebSocket message (limits, Origin, credentials), by reason",
            labels=["reason"],
        )
        counts = node.access.counts
        for reason in REFUSAL_REASONS:
            door.add_metric([reason], counts.get(reason, 0))
        yield door
        closes = CounterMetricFamily(PREFIX + "closes", "WebSockets closed, by close code", labels=["role", "code"])
        for (role, code), n in list(stats.closed.items()):
            closes.add_metric([role.value, code], n)
        yield closes
        yield GaugeMetricFamily(
            PREFIX + "draining", "1 while the node drains (refuses sockets)", int(not node.accepting)
        )
        yield GaugeMetricFamily(
            PREFIX + "cluster_ready", "1 while the node's shared state (Redis) is reachable", int(node.broker.ready)
        )
        streamers = sum(1 for p in core.peers() if p.streamer_id is not None and p.streaming)
        yield GaugeMetricFamily(PREFIX + "streaming_streamers", "streamers on this node with media", streamers)
        trips: RoundTrips | None = getattr(node.broker, "round_trips", None)  # a Redis broker only
        if trips is not None:
            yield from trips.families(PREFIX, "commands and script calls of this node")


def node_registry(node: SignalingNode) -> tuple[CollectorRegistry, SocketStats]:
    """The registry ``/metrics`` serves (the collector above plus the node's histograms)
    and the stats the node bumps."""
    registry = CollectorRegistry()
    stats = SocketStats(registry)
    registry.register(SignalingCollector(node))
    return registry, stats
