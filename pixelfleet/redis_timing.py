"""Redis round trips timed where they happen, counted as plain numbers and exported as
Prometheus families only when ``/metrics`` is scraped.

``RoundTrips`` keeps, per operation name, a histogram in plain ints (one ``bisect`` and
two additions per round trip, nothing of prometheus-client) and a count of failed ones.
Two choke points feed it: ``instrument`` wraps a redis-py client's ``execute_command``
(signalling's broker: every command and script call of the node, published batches
included, one observation per round trip however many frames a batch carries), and the
matchmaker store's ``guarded`` decorator times each store operation. Operation names
are bounded by the code: the Redis command (``spublish``), the broker's script names
(``script_beat``), or the store's operation (``heartbeat``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import Metric
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

__all__ = ["BUCKETS", "RoundTrips", "instrument"]

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_EVAL = frozenset({"EVALSHA", "EVALSHA_RO", b"EVALSHA", b"EVALSHA_RO"})


class _Op:
    __slots__ = ("counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * n  # per bucket (the last: over every bound), not cumulative
        self.sum = 0.0


class RoundTrips:
    """Round-trip times and failures by operation."""

    __slots__ = ("bounds", "errors", "ops")

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = bounds
        self.ops: dict[str, _Op] = {}
        self.errors: dict[str, int] = {}

    def observe(self, op: str, seconds: float) -> None:
        o = self.ops.get(op)
        if o is None:
            o = self.ops[op] = _Op(len(self.bounds) + 1)
        o.counts[bisect_left(self.bounds, seconds)] += 1
        o.sum += seconds

    def error(self, op: str) -> None:
        self.errors[op] = self.errors.get(op, 0) + 1

    def families(self, prefix: str, what: str) -> Iterator[Metric]:
        """``<prefix>redis_round_trip_seconds{op}`` and ``<prefix>redis_errors_total{op}``."""
        histogram = HistogramMetricFamily(
            prefix + "redis_round_trip_seconds", f"{what} that Redis answered, by operation", labels=["op"]
        )
        for op, o in list(self.ops.items()):
            running, buckets = 0, []
            for bound, n in zip((*map(str, self.bounds), "+Inf"), o.counts, strict=True):
                running += n
                buckets.append((bound, running))
            histogram.add_metric([op], buckets, o.sum)
        yield histogram
        errors = CounterMetricFamily(
            prefix + "redis_errors",
            f"{what} that failed: an error, no answer, or abandoned (timed out), by operation",
            labels=["op"],
        )
        for op, n in list(self.errors.items()):
            errors.add_metric([op], n)
        yield errors


def _op_name(args: tuple[Any, ...], scripts: Mapping[str, str]) -> str:
    command = args[0] if args else ""
    if command in _EVAL and len(args) > 1:
        sha = args[1].decode() if isinstance(args[1], bytes) else str(args[1])
        return scripts.get(sha, "script_other")
    return (command.decode() if isinstance(command, bytes) else str(command)).lower()


def instrument(client: Any, scripts: Mapping[str, Any] = {}) -> RoundTrips:  # noqa: B006 - read only
    """Time every command ``client`` sends (redis-py ``Redis`` or ``RedisCluster``; not its
    pub/sub connections, which only listen). ``scripts``: name -> registered script, so a
    script call is named ``script_<name>`` rather than ``evalsha``."""
    trips = RoundTrips()
    names = {script.sha: f"script_{name}" for name, script in scripts.items()}
    plain: dict[Any, str] = {}  # command -> op, for every command but a script call
    inner = client.execute_command
    clock = time.perf_counter

    def op_of(args: tuple[Any, ...]) -> str:
        op = plain.get(args[0]) if args else None
        if op is None:
            op = _op_name(args, names)
            if args and args[0] not in _EVAL:
                plain[args[0]] = op
        return op

    async def execute_command(*args: Any, **options: Any) -> Any:
        started = clock()
        try:
            result = await inner(*args, **options)
        except BaseException:  # an error, a dropped connection, or a caller's timeout
            trips.error(op_of(args))
            raise
        trips.observe(op_of(args), clock() - started)
        return result

    client.execute_command = execute_command
    return trips
