"""Plugs the TURN section into a signalling server: the provider (and its lifecycle),
the per-peer ``peerConnectionOptions``, and the credentials route on the player port.

    wiring = wire_turn(turn_settings, base_options=settings.peer_connection_options)
    server = SignalingServer(settings, **wiring.server_kwargs()) if wiring else SignalingServer(settings)
    await wiring.start(); await server.start() ... await server.stop(); await wiring.aclose()
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pixelfleet.tokens import TokenKeys
from turn.config import TurnSettings
from turn.http import credentials_route
from turn.metrics import TurnCollector, TurnCounts
from turn.peer_options import TurnPeerOptions, UserId, peer_user_id
from turn.providers import ClientFactory, IceServerProvider, build_provider

__all__ = ["TurnWiring", "wire_turn"]


@dataclass(frozen=True, slots=True)
class TurnWiring:
    settings: TurnSettings
    provider: IceServerProvider
    peer_options: TurnPeerOptions
    routes: tuple[web.RouteDef, ...]
    counts: TurnCounts

    def server_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SignalingServer`` (its ``/metrics`` counts the credentials)."""
        return {
            "peer_options": self.peer_options,
            "player_routes": self.routes,
            "collectors": (TurnCollector(self.counts),),
        }

    async def start(self) -> None:
        await self.provider.start()

    async def aclose(self) -> None:
        await self.provider.aclose()


def wire_turn(
    settings: TurnSettings,
    *,
    base_options: Mapping[str, Any] | None = None,
    user_id: UserId = peer_user_id,
    client_factory: ClientFactory | None = None,
    keys: TokenKeys | None = None,
) -> TurnWiring | None:
    """None when the provider is ``none`` (peers then get ``base_options`` unchanged).
    ``keys``: the credentials route then answers only a valid session token."""
    provider = build_provider(settings, client_factory=client_factory)
    if provider is None:
        return None
    counts = TurnCounts()
    options = TurnPeerOptions(provider, settings, base=base_options, user_id=user_id, counts=counts)
    route = credentials_route(provider, settings, keys=keys, counts=counts)
    return TurnWiring(settings, provider, options, (route,), counts)
