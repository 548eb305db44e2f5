"""``pixelfleet.redis_timing``: round trips named by command or script, bucketed as
Prometheus reads them (cumulative ``le``), failures counted and re-raised."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pixelfleet.redis_timing import RoundTrips, instrument


class Client:
    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if args[0] == "GET":
            raise ConnectionError("gone")
        return 1


async def test_commands_and_scripts_are_named_and_failures_counted() -> None:
    client = Client()
    trips = instrument(client, {"beat": SimpleNamespace(sha="abc")})
    await client.execute_command("SPUBLISH", "ch", b"x")
    await client.execute_command(b"SPUBLISH", "ch", b"x")
    await client.execute_command("EVALSHA", "abc", 0)
    await client.execute_command("EVALSHA", "def", 0)
    with pytest.raises(ConnectionError):
        await client.execute_command("GET", "k")
    assert {op: sum(o.counts) for op, o in trips.ops.items()} == {"spublish": 2, "script_beat": 1, "script_other": 1}
    assert trips.errors == {"get": 1}


def test_families_are_cumulative_histograms() -> None:
    trips = RoundTrips((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.005, 0.5):
        trips.observe("set", seconds)
    trips.error("set")
    histogram, errors = list(trips.families("p_", "calls"))
    samples = {(s.name, s.labels.get("le")): s.value for s in histogram.samples}
    assert samples[("p_redis_round_trip_seconds_bucket", "0.001")] == 2  # le: 0.001 itself is in
    assert samples[("p_redis_round_trip_seconds_bucket", "0.01")] == 3
    assert samples[("p_redis_round_trip_seconds_bucket", "+Inf")] == 4
    assert samples[("p_redis_round_trip_seconds_count", None)] == 4
    assert samples[("p_redis_round_trip_seconds_sum", None)] == pytest.approx(0.5065)
    assert [(s.name, s.labels, s.value) for s in errors.samples] == [("p_redis_errors_total", {"op": "set"}, 1)]
