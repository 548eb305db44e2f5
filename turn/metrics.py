"""TURN credentials handed out by this signalling process, for ``/metrics``.

Both ways signalling mints ICE servers bump one plain int (``TurnCounts.issue``): the
``config`` greeting of every connecting peer (``via="config"``, by the peer's role) and
``GET /api/turn-credentials`` (``via="http"``, on the player port so ``role="player"``).
``TurnCollector`` turns the ints into ``pixelfleet_signaling_turn_credentials_issued_total``
when scraped. Labels are fixed sets; every pair is exported from the start (0), so a rate
exists before the first credential.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from signaling.protocol import Role

if TYPE_CHECKING:
    from prometheus_client import Metric

__all__ = ["NAME", "TurnCollector", "TurnCounts"]

NAME = "pixelfleet_signaling_turn_credentials_issued"
# (via, role) pairs that can happen: the route serves only the player port.
PAIRS = tuple(("config", role) for role in Role) + (("http", Role.PLAYER),)


class TurnCounts:
    """Credentials handed out, by (via, role)."""

    __slots__ = ("issued",)

    def __init__(self) -> None:
        self.issued: dict[tuple[str, Role], int] = dict.fromkeys(PAIRS, 0)

    def issue(self, via: str, role: Role) -> None:
        self.issued[(via, role)] += 1


class TurnCollector(Collector):
    def __init__(self, counts: TurnCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            NAME,
            "TURN credentials handed out: in a config greeting (via=config) or by GET /api/turn-credentials (via=http)",
            labels=["via", "role"],
        )
        for (via, role), n in list(self.counts.issued.items()):
            family.add_metric([via, role.value], n)
        yield family
