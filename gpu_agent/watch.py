"""Signalling's view of a slot's streamer, from its REST API (``GET /api/streamers/{id}``
on the player port): listed and streaming, its players, and the id of the credential
its holder connected with (docs/protocol.md "Streamer credentials")."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = ["UNKNOWN_HOLDER", "SignalingWatch", "StreamerStatus"]


UNKNOWN_HOLDER = ""  # a credential id that matches no credential (see ``SignalingWatch.status``)


@dataclass(frozen=True, slots=True)
class StreamerStatus:
    streaming: bool
    subscribers: int = 0
    credential_id: str | None = None  # the holder's credential jti (signalling with streamer credentials)


class SignalingWatch:
    """Asks signalling's REST API whether a streamer id is connected and streaming."""

    def __init__(self, api_url: str, timeout_s: float = 2.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None
        self._keyed = False  # signalling refused a listing without credentials: it keeps them

    async def _get(self, streamer_id: str, token: str | None) -> tuple[int, Any] | None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        url = f"{self.api_url}/api/streamers/{urllib.parse.quote(streamer_id, safe='')}"
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            async with self._http.get(url, headers=headers) as r:
                return r.status, (await r.json(content_type=None) if r.status == 200 else None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def open_to_streamers(self, streamer_id: str) -> bool | None:
        """Whether signalling admits streamers without a credential: a listing asked without
        one answers 401 exactly where it has a key (docs/protocol.md, Access); None: no answer."""
        got = await self._get(streamer_id, None)
        return None if got is None or got[0] not in (200, 401, 404) else got[0] != 401

    async def status(self, streamer_id: str, token: str | None = None) -> StreamerStatus | None:
        """None when signalling cannot be asked (down, or an answer that makes no sense).
        ``token``: the slot's streamer credential, which lets it read its own listing.

        A listing without ``credentialId`` where signalling keeps credentials (a holder that
        presented none, or one a cluster node of an older release listed) has
        ``credential_id`` ``UNKNOWN_HOLDER``, which matches no credential: only open-mode
        signalling lists every holder without one (docs/signaling-cluster.md, upgrades)."""
        got = await self._get(streamer_id, token)
        if got is not None and got[0] == 404:
            return StreamerStatus(streaming=False)
        if got is None or got[0] != 200:
            return None
        body = got[1]
        if not isinstance(body, dict):
            return None
        subscribers = body.get("subscribers")
        credential_id = body.get("credentialId")
        if not isinstance(credential_id, str):
            credential_id = UNKNOWN_HOLDER if token and await self._keeps_credentials(streamer_id) else None
        return StreamerStatus(
            streaming=body.get("streaming") is True,
            subscribers=len(subscribers) if isinstance(subscribers, list) else 0,
            credential_id=credential_id,
        )

    async def _keeps_credentials(self, streamer_id: str) -> bool:
        """Asked only when a listing lacks ``credentialId``, and kept once signalling said
        yes (a key is not taken away from a running cluster); no answer counts as yes, the
        safe side (not READY), and is asked again."""
        if not self._keyed:
            opened = await self.open_to_streamers(streamer_id)
            self._keyed = opened is False
            return opened is not True
        return True

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
