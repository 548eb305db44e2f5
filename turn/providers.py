"""Where ICE servers come from: one interface, three providers.

- ``static``: configured URLs with one fixed username/credential (development only: a
  static TURN password gets copied and the relay stolen).
- ``rest-secret``: coturn ``use-auth-secret`` credentials minted per peer (the default
  for production: self-hosted coturn, full bitrate).
- ``aws-kvs``: TURN servers lent by an Amazon Kinesis Video Streams signalling channel.
  A **low-bitrate fallback only**: KVS caps TURN at about 5 Mbps per allocation (below a
  1080p60 stream), 50 allocations per channel, and its credentials live 5 minutes,
  streamers included, so a streamer's own relay candidates only work for players that
  arrive within minutes of its connect (players still relay from their side).

``ice_servers()`` runs on the signalling connect path inside the event loop, so it is
synchronous and never blocks; a provider that needs the network (KVS) refreshes a
cache in the background between ``start()`` and ``aclose()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from turn.config import TurnSettings
from turn.credentials import SEPARATOR, Credential, ice_servers, issue, split_urls

__all__ = [
    "AwsKvsProvider",
    "IceServerProvider",
    "IceServers",
    "RestSecretProvider",
    "StaticProvider",
    "build_provider",
]

log = structlog.get_logger("turn")

Clock = Callable[[], float]
IceServerList = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class IceServers:
    servers: IceServerList  # RTCConfiguration.iceServers
    expires_at: int | None  # unix seconds when the TURN credentials stop working; None = never


class IceServerProvider(Protocol):
    """Hands out ``iceServers`` for one peer.

    Guarantees: ``ice_servers`` never blocks and never raises for a well-formed
    ``user``; it never hands out credentials that are already expired (a provider
    whose credentials are unavailable returns STUN only). ``ttl_s`` is a request:
    providers that cannot choose the lifetime (static, KVS) ignore it.
    """

    def ice_servers(self, user: str, ttl_s: int) -> IceServers: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class StaticProvider:
    """The same servers and credentials for everyone."""

    def __init__(self, urls: Sequence[str], username: str | None, credential: str | None) -> None:
        stun, turn = split_urls(urls)
        cred = Credential(username or "", credential or "", 0)
        entries = ice_servers(stun, turn, cred)
        if not (username and credential):  # TURN without credentials: pass the URLs bare
            entries = [{"urls": list(stun) + list(turn)}] if stun or turn else []
        self._servers = IceServers(entries, None)

    def ice_servers(self, user: str, ttl_s: int) -> IceServers:
        return self._servers

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RestSecretProvider:
    """coturn REST API credentials, signed with the newest secret, per peer."""

    def __init__(self, urls: Sequence[str], secrets: Sequence[str], *, clock: Clock = time.time) -> None:
        if not secrets:
            raise ValueError("rest-secret needs at least one secret")
        self._stun, self._turn = split_urls(urls)
        self._secret = secrets[0].encode()  # newest first: sign with it, coturn also accepts the rest
        self._clock = clock

    def ice_servers(self, user: str, ttl_s: int) -> IceServers:
        cred = issue(self._secret, user.replace(SEPARATOR, "_"), ttl_s, self._clock())
        return IceServers(ice_servers(self._stun, self._turn, cred), cred.expires_at)

    def __repr__(self) -> str:
        return f"RestSecretProvider(turn={self._turn!r})"

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


_KICK_INTERVAL_S = 5.0
ClientFactory = Callable[..., Any]  # boto3.client-like: (service_name, region_name=, endpoint_url=)


class AwsKvsProvider:
    """TURN servers from KVS ``GetIceServerConfig``, shared by every peer and cached.

    Two calls (botocore's service models): ``kinesisvideo.get_signaling_channel_endpoint`` for
    the channel's HTTPS endpoint (fetched once), then ``kinesis-video-signaling
    .get_ice_server_config`` on it. The answer is handed out until ``refresh_margin_s``
    before it expires, and refetched in the background before then.
    """

    def __init__(
        self,
        region: str,
        channel_arn: str,
        *,
        client_id: str = "pixelfleet",
        refresh_margin_s: int = 60,
        client_factory: ClientFactory | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.region = region
        self.channel_arn = channel_arn
        self.client_id = client_id
        self.refresh_margin_s = refresh_margin_s
        self._factory = client_factory
        self._clock = clock
        self._stun = {"urls": [f"stun:stun.kinesisvideo.{region}.amazonaws.com:443"]}
        self._signaling: Any = None
        self._cached: IceServerList = []
        self._expires_at = 0.0
        self._refreshing: asyncio.Task[bool] | None = None
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None

    # --- the connect path (sync) -----------------------------------------------------

    def ice_servers(self, user: str, ttl_s: int) -> IceServers:
        if self._fresh():
            return IceServers([self._stun, *self._cached], int(self._expires_at))
        self._refresh_soon()
        return IceServers([self._stun], None)

    def _fresh(self) -> bool:
        return self._clock() < self._expires_at - self.refresh_margin_s

    # --- blocking fetch, run in a thread ----------------------------------------------

    def fetch(self) -> tuple[IceServerList, float]:
        """One ``GetIceServerConfig`` call: (iceServers, ttl in seconds)."""
        if self._signaling is None:
            factory = self._factory or _boto3_client
            video = factory("kinesisvideo", region_name=self.region)
            endpoints = video.get_signaling_channel_endpoint(
                ChannelARN=self.channel_arn,
                SingleMasterChannelEndpointConfiguration={"Protocols": ["HTTPS"], "Role": "VIEWER"},
            )["ResourceEndpointList"]
            https = next(e["ResourceEndpoint"] for e in endpoints if e["Protocol"] == "HTTPS")
            self._signaling = factory("kinesis-video-signaling", region_name=self.region, endpoint_url=https)
        resp = self._signaling.get_ice_server_config(
            ChannelARN=self.channel_arn, ClientId=self.client_id, Service="TURN"
        )
        entries = resp.get("IceServerList") or []
        if not entries:
            raise ValueError("GetIceServerConfig returned no ICE servers")
        servers = [{"urls": list(e["Uris"]), "username": e["Username"], "credential": e["Password"]} for e in entries]
        ttl = min((int(e.get("Ttl", 300)) for e in entries), default=0)
        return servers, float(ttl)

    # --- background refresh -----------------------------------------------------------

    async def refresh(self, *, only_if_stale: bool = False) -> None:
        """Fetch now (one fetch at a time; a waiting stale-only refresh is skipped once
        another one has succeeded)."""
        async with self._lock:
            if only_if_stale and self._fresh():
                return
            started = self._clock()
            servers, ttl = await asyncio.to_thread(self.fetch)
            self._cached, self._expires_at = servers, started + ttl
        log.info("kvs_ice_servers_refreshed", servers=len(servers), ttl_s=ttl)

    def _refresh_soon(self) -> None:
        """Stale cache on the connect path: one refetch, at most every few seconds."""
        if self._refreshing is not None and not self._refreshing.done():
            return
        if self._clock() - self._last_attempt < _KICK_INTERVAL_S:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule on
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_logged(only_if_stale=True))

    async def _refresh_logged(self, *, only_if_stale: bool = False) -> bool:
        self._last_attempt = self._clock()
        try:
            await self.refresh(only_if_stale=only_if_stale)
            return True
        except Exception as exc:  # boto errors, network, bad response: keep STUN, retry later
            log.warning("kvs_ice_servers_failed", error=f"{type(exc).__name__}: {exc}")
            return False

    async def _refresh_forever(self) -> None:
        backoff = 1.0
        while True:
            lifetime = self._expires_at - self._clock()
            delay = max(lifetime - 2 * self.refresh_margin_s, lifetime / 2, backoff)
            await asyncio.sleep(delay)
            ok = await self._refresh_logged()
            backoff = 1.0 if ok else min(backoff * 2, 60.0)

    async def start(self) -> None:
        await self._refresh_logged()
        self._loop_task = asyncio.create_task(self._refresh_forever(), name="kvs-ice-refresh")

    async def aclose(self) -> None:
        for task in (self._loop_task, self._refreshing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._loop_task = self._refreshing = None


def _boto3_client(service: str, **kwargs: Any) -> Any:
    import boto3

    return boto3.client(service, **kwargs)


def build_provider(
    settings: TurnSettings, *, clock: Clock = time.time, client_factory: ClientFactory | None = None
) -> IceServerProvider | None:
    """The provider the settings name; None for ``none``."""
    match settings.provider:
        case "none":
            return None
        case "static":
            return StaticProvider(settings.urls, settings.username, settings.credential)
        case "rest-secret":
            return RestSecretProvider(settings.urls, settings.secrets, clock=clock)
        case "aws-kvs":
            assert settings.aws_region and settings.aws_channel_arn  # checked by TurnSettings
            return AwsKvsProvider(
                settings.aws_region,
                settings.aws_channel_arn,
                client_id=settings.aws_client_id,
                refresh_margin_s=settings.aws_refresh_margin_s,
                client_factory=client_factory,
                clock=clock,
            )
    raise AssertionError(settings.provider)
