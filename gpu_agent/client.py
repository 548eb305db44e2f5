"""How the agent talks to the matchmaker: one small interface, two implementations.

``HttpMatchmakerClient`` is a fleet host's (the agent API over HTTP, agent bearer
token); ``LocalMatchmakerClient`` calls a ``matchmaker.service.Matchmaker`` in the same
process (``pixelfleet up``). Both raise the same errors, so the reporter cannot tell
them apart.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol, TypeVar

import aiohttp
import msgspec

from matchmaker.models import Heartbeat, HeartbeatReply, HostRegistration

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
    async def register(self, registration: HostRegistration) -> None: ...

    async def heartbeat(self, host_id: str, heartbeat: Heartbeat) -> HeartbeatReply: ...

    async def drain(self, host_id: str) -> bool:
        """Mark the host draining in the matchmaker, where this client may; False if not."""

    async def aclose(self) -> None: ...


_reply = msgspec.json.Decoder(HeartbeatReply)
T = TypeVar("T")


class HttpMatchmakerClient:
    def __init__(
        self, base_url: str, agent_token: str | None, *, admin_token: str | None = None, timeout_s: float = 5.0
    ) -> None:
        self.base = base_url.rstrip("/") + "/api/v1"
        self._agent = {"Authorization": f"Bearer {agent_token}"} if agent_token else {}
        self._admin = {"Authorization": f"Bearer {admin_token}"} if admin_token else None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._http.post(
                self.base + path, data=body, headers={**headers, "Content-Type": "application/json"}
            ) as r:
                text = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from None
        if status < 300:
            return text
        detail = f"{status} {text[:200].decode(errors='replace')}"
        if status == 404:
            raise UnknownHost(detail)
        if status == 409:
            raise HostConflict(detail)
        if status in (400, 401, 403, 413):
            raise Rejected(detail)
        raise Unavailable(detail)

    async def register(self, registration: HostRegistration) -> None:
        await self._post("/hosts", msgspec.json.encode(registration), self._agent)

    async def heartbeat(self, host_id: str, heartbeat: Heartbeat) -> HeartbeatReply:
        path = f"/hosts/{urllib.parse.quote(host_id, safe='')}/heartbeat"
        raw = await self._post(path, msgspec.json.encode(heartbeat), self._agent)
        try:
            return _reply.decode(raw)
        except msgspec.DecodeError as exc:
            raise Unavailable(f"unreadable heartbeat reply: {exc}") from None

    async def drain(self, host_id: str) -> bool:
        if self._admin is None:
            return False
        path = f"/admin/hosts/{urllib.parse.quote(host_id, safe='')}/drain"
        await self._post(path, b'{"draining": true}', self._admin)
        return True

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()


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

    async def register(self, registration: HostRegistration) -> None:
        await self._call(self.mm.register_host(registration))
        return None

    async def heartbeat(self, host_id: str, heartbeat: Heartbeat) -> HeartbeatReply:
        return await self._call(self.mm.heartbeat(host_id, heartbeat))

    async def drain(self, host_id: str) -> bool:
        await self._call(self.mm.drain(host_id, True))
        return True

    async def aclose(self) -> None:
        pass
