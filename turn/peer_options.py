"""``config.peerConnectionOptions`` for each connecting peer, with fresh ICE servers.

The signalling core calls a ``PeerOptions`` (``(role, peer_id) -> dict``) once per
connection, synchronously, and sends the result in that peer's ``config`` message.
Players get ``ttl_s`` credentials; streamers and SFUs get ``streamer_ttl_s`` ones,
because their ``config`` is never re-sent and every new player means a new TURN
allocation on their side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from signaling.protocol import Role
from turn.config import TurnSettings
from turn.credentials import SEPARATOR
from turn.metrics import TurnCounts
from turn.providers import IceServerProvider

__all__ = ["TurnPeerOptions", "UserId", "peer_user_id"]

# (role, signalling peer id) -> TURN user part. The matchmaker will swap in one that
# returns the player's session id.
UserId = Callable[[Role, str], str]


def peer_user_id(role: Role, peer_id: str) -> str:
    """The signalling id (``Player3``, ``UnknownStreamer``) as the user part."""
    return peer_id.replace(SEPARATOR, "_")


class TurnPeerOptions:
    """A ``signaling.protocol.PeerOptions``: ``base`` options plus minted ICE servers.

    Minted servers come first, then any ``iceServers`` already in ``base`` (e.g. from
    ``--peer-options``); every other key of ``base`` is kept.
    """

    __slots__ = ("_base", "_base_servers", "_user_id", "counts", "provider", "settings")

    def __init__(
        self,
        provider: IceServerProvider,
        settings: TurnSettings,
        *,
        base: Mapping[str, Any] | None = None,
        user_id: UserId = peer_user_id,
        counts: TurnCounts | None = None,
    ) -> None:
        """``counts``: where each greeting's credentials are counted (``/metrics``)."""
        self.provider = provider
        self.counts = counts if counts is not None else TurnCounts()
        self.settings = settings
        base = dict(base or {})
        self._base_servers = list(base.pop("iceServers", None) or [])
        if settings.force_relay:
            base["iceTransportPolicy"] = "relay"
        self._base = base
        self._user_id = user_id

    def __call__(self, role: Role, peer_id: str, *, not_after: int | None = None) -> dict[str, Any]:
        """``not_after`` (unix s): the peer's own credential ends then, and so do these."""
        ttl = self.settings.ttl_s if role is Role.PLAYER else self.settings.streamer_ttl_s
        if not_after is not None:
            ttl = max(min(ttl, not_after - int(time.time())), 1)
        minted = self.provider.ice_servers(self._user_id(role, peer_id), ttl).servers
        self.counts.issue("config", role)
        options = dict(self._base)
        options["iceServers"] = minted + self._base_servers if self._base_servers else minted
        return options
