"""TURN settings: the ``turn`` section (``PIXELFLEET_TURN__*``), loaded by
``pixelfleet.settings.load_settings``.

    PIXELFLEET_TURN__PROVIDER=rest-secret
    PIXELFLEET_TURN__URLS=stun:turn.example.com:3478,turn:turn.example.com:3478?transport=udp,turns:turn.example.com:443?transport=tcp
    PIXELFLEET_TURN__SECRETS=new-secret,old-secret      # newest first; all accepted by coturn
    PIXELFLEET_TURN__TTL_S=3600

Secrets come from the environment (or a file the deployment renders), never from a
command-line flag: flags are visible to every user in ``ps``.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from turn.credentials import split_urls

__all__ = ["Provider", "TurnSettings"]

Provider = Literal["none", "static", "rest-secret", "aws-kvs"]

DAY_S = 86_400


class TurnSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    provider: Provider = "none"
    # stun:/turn:/turns: URLs handed to peers, e.g. turn:host:3478?transport=udp
    urls: tuple[str, ...] = ()
    # rest-secret: coturn static-auth-secret values, newest first; new credentials are
    # signed with the first, all stay valid at coturn until removed there (rotation)
    secrets: tuple[str, ...] = ()
    # players (and the standalone route): must outlast the wait between connecting and
    # the last peer connection of that socket; a reconnect gets fresh ones
    ttl_s: int = 3600
    # streamers and SFUs: their config is sent once per signalling connection and each
    # new player means a new TURN allocation, so this must outlast the connection.
    # Epic uses ten years; 30 days, and retiring a secret ends them sooner anyway.
    streamer_ttl_s: int = 30 * DAY_S
    realm: str = "pixelfleet"  # coturn --realm (clients learn it from the 401)
    # static: one fixed username/credential pair for every TURN url (development only)
    username: str | None = None
    credential: str | None = None
    # aws-kvs: a Kinesis Video Streams signalling channel lends its TURN servers
    aws_region: str | None = None
    aws_channel_arn: str | None = None
    aws_client_id: str = "pixelfleet"
    aws_refresh_margin_s: int = 60  # refetch this long before the credentials expire
    # testing relay paths only: adds iceTransportPolicy "relay" (browsers and our aiortc
    # peers honour it, UE ignores it)
    force_relay: bool = False

    def __post_init__(self) -> None:
        try:
            split_urls(self.urls)
        except ValueError as exc:
            raise msgspec.ValidationError(f"{exc} - at `$.urls`") from None
        if self.ttl_s <= 0 or self.streamer_ttl_s <= 0:
            raise msgspec.ValidationError("ttl_s and streamer_ttl_s must be positive")
        if self.provider == "rest-secret" and not self.secrets:
            raise msgspec.ValidationError("provider rest-secret needs secrets (PIXELFLEET_TURN__SECRETS)")
        if self.provider in ("static", "rest-secret") and not self.urls:
            raise msgspec.ValidationError(f"provider {self.provider} needs urls (PIXELFLEET_TURN__URLS)")
        if self.provider == "aws-kvs" and not (self.aws_region and self.aws_channel_arn):
            raise msgspec.ValidationError("provider aws-kvs needs aws_region and aws_channel_arn")

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        return (
            f"TurnSettings(provider={self.provider!r}, urls={self.urls!r}, "
            f"secrets=<{len(self.secrets)} hidden>, ttl_s={self.ttl_s})"
        )
