"""The one interface every fleet provider implements; the controller needs nothing else."""

from __future__ import annotations

from typing import Protocol

import msgspec


class ProviderHost(msgspec.Struct, frozen=True, kw_only=True):
    host_id: str  # the host_id its agent registers with (EC2: the instance id)
    spot: bool = False
    draining: bool = False  # the provider itself stopped it taking sessions (e.g. a Spot notice)


class FleetProvider(Protocol):
    name: str

    async def hosts(self) -> list[ProviderHost]:
        """Every host launched and not yet terminated."""
        ...

    async def launch(self, count: int) -> list[str]:
        """Start ``count`` more hosts; their ids (they register with the matchmaker when up)."""
        ...

    async def terminate(self, host_id: str) -> None:
        """Stop a host the controller drained and saw empty."""
        ...

    async def protect(self, busy: set[str]) -> None:
        """Hosts with live sessions: the provider's own scale-in must not take them."""
        ...

    async def poll_notices(self) -> list[str]:
        """Read the provider's notices (e.g. Spot interruptions) since the last call; the
        hosts they mark draining in ``hosts`` from now on. Called once per control step."""
        ...

    async def aclose(self) -> None: ...
