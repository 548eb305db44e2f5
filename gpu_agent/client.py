"""How the agent talks to the matchmaker: one small interface, two implementations.

``HttpMatchmakerClient`` is a fleet host's (the agent API over HTTP through
``matchmaker.client``, agent bearer token); ``LocalMatchmakerClient`` calls a
``matchmaker.service.Matchmaker`` in the same process (``pixelfleet up``).
Both raise the same errors, so the reporter cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol, TypeVar

from matchmaker.client import ApiError, MatchmakerApi, Unreachable
from matchmaker.models import Heartbeat, HeartbeatReply, Host, HostRegistration

if TYPE_CHECKING:
    from matchmaker.service import Matchmaker


class MatchmakerError(Exception):
    """Any failure to get an answer from the matchmaker."""


class Unavailable(MatchmakerError):
    """Down, unreachable, timed out or 5xx: try again later with the latest state."""


class UnknownHost(MatchmakerError):
    """404: the matchmaker forgot this host (restart, or declared dead): register again."""


class HostConflict(MatchmakerError):
    """409: the host id is alive under another boot id (an older agent not yet expired)."""


class Rejected(MatchmakerError):
    """400/401/403: bad body or wrong token. Retrying will not help until config changes."""


class MatchmakerClient(Protocol):
    async def register(self, registration: HostRegistration) -> Host | None:
        """Register; the matchmaker's reply (with ``streamer_tokens`` where it mints them)."""

    async def heartbeat(self, host_id: str, heartbeat: Heartbeat) -> HeartbeatReply: ...

    async def drain(self, host_id: str) -> bool:
        """Mark the host draining in the matchmaker, where this client may; False if not."""

    async def aclose(self) -> None: ...


T = TypeVar("T")


class HttpMatchmakerClient:
    """The agent API through ``matchmaker.client.MatchmakerApi`` (the typed client),
    its errors turned into this module's."""

    def __init__(
        self, base_url: str, agent_token: str | None, *, admin_token: str | None = None, timeout_s: float = 5.0
    ) -> None:
        self.api = MatchmakerApi(base_url, agent_token=agent_token, admin_token=admin_token, timeout_s=timeout_s)

    async def _call(self, coro: Awaitable[T]) -> T:
        try:
            return await coro
        except Unreachable as exc:
            raise Unavailable(str(exc)) from None
        except ApiError as exc:
            detail = f"{exc.status} {exc.code}: {exc.message}"
            if exc.status == 404:
                raise UnknownHost(detail) from None
            if exc.status == 409:
                raise HostConflict(detail) from None
            if exc.status in (400, 401, 403, 413):
                raise Rejected(detail) from None
            raise Unavailable(detail) from None  # 5xx, and a reply that does not read

    async def register(self, registration: HostRegistration) -> Host | None:
        return await self._call(self.api.register_host(registration))

    async def heartbeat(self, host_id: str, heartbeat: Heartbeat) -> HeartbeatReply:
        return await self._call(self.api.heartbeat(host_id, heartbeat))

    async def drain(self, host_id: str) -> bool:
        if self.api.admin_token is None:
            return False
        await self._call(self.api.drain(host_id, True))
        return True

    async def aclose(self) -> None:
        await self.api.aclose()


class LocalMatchmakerClient:
    """The matchmaker object in this process: same calls, same errors, no HTTP."""

    def __init__(self, matchmaker: Matchmaker) -> None:
        self.mm = matchmaker

    async def _call(self, coro: Awaitable[T]) -> T:
        from matchmaker import store

        try:
            return await coro
        except store.UnknownHost as exc:
            raise UnknownHost(str(exc)) from None
        except store.HostConflict as exc:
            raise HostConflict(str(exc)) from None
        except store.StoreError as exc:
            raise Unavailable(str(exc)) from None

    async def register(self, registration: HostRegistration) -> Host | None:
        return await self._call(self.mm.register_host(registration))

    async def heartbeat(self, host_id: str, heartbeat: Heartbeat) -> HeartbeatReply:
        return await self._call(self.mm.heartbeat(host_id, heartbeat))

    async def drain(self, host_id: str) -> bool:
        await self._call(self.mm.drain(host_id, True))
        return True

    async def aclose(self) -> None:
        pass
