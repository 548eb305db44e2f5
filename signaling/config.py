"""The signalling server's settings: the top level of ``PIXELFLEET_*`` (``PIXELFLEET_PLAYER_PORT``).

Loaded with every other section by ``pixelfleet.settings.load_settings``; the shared
fields (state URL, session-token keys, logging) come from ``SharedSettings``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pixelfleet.shared_settings import ConfigError, SharedSettings

__all__ = ["ConfigError", "Settings"]


class Settings(SharedSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"  # bind address; "0.0.0.0" or "::" to serve a network
    player_port: int = 80  # HTTP: player page + player WebSocket (Epic default 80)
    streamer_port: int = 8888
    sfu_port: int = 8889  # -1 disables the SFU listener; 0 = any free port
    peer_connection_options: dict[str, Any] = msgspec.field(default_factory=dict)
    max_players_per_streamer: int = 0  # 0 = unlimited (Epic's --max_players)
    max_message_bytes: int = 64 * 1024  # larger frames: close 1009
    player_rate: float = 50.0  # messages/s allowed per player on average ...
    player_burst: float = 200.0  # ... with bursts up to this (ICE trickle)
    streamer_rate: float = 2000.0  # streamers serve many players
    streamer_burst: float = 5000.0
    max_protocol_errors: int = 20  # bad messages tolerated before close 1008
    send_queue_frames: int = 512  # frames queued for a slow reader before close 4408
    keepalive_s: float = 30.0  # WebSocket ping interval; 0 = off
    shutdown_grace_s: float = 5.0  # how long SIGTERM waits for peers to close
    static_dir: str | None = None  # player page; None = the bundled one
    # Matchmaker sessions: the key is the shared session_token_* (secret or public key file).
    require_session_token: bool | None = None  # default: required once a key is configured
    matchmaker_url: str | None = None  # where connect/disconnect reports go (HTTP)
    report_batch_max: int = 64  # reports per POST /sessions/events (1: each alone, the single route)
    # How long the first queued report waits for others. Nothing in a player's path waits on
    # a report (they are the records' and timeouts' bookkeeping), and at 5 ms a node's
    # reports mostly went one per request: 50 ms puts several in each, a third of the requests.
    report_linger_s: float = 0.05
    # A cluster (PIXELFLEET_STATE_URL=redis://...): how this node is named and found dead.
    node_id: str | None = None  # unique per process; None = a random one at start
    node_ttl_s: float = 5.0  # a node silent this long is dead; its peers' partners are told
    drain_delay_s: float = 0.0  # SIGTERM: time /readyz answers 503 before sockets are closed
    # Issue 11, docs/protocol.md "Access": streamer/SFU credentials, abuse limits, headers.
    streamer_host: str = "127.0.0.1"  # bind address of the streamer and SFU ports (not moved by host)
    require_streamer_token: bool | None = None  # default: required once a session-token key is set
    connect_rate_per_ip: float = 20.0  # WebSocket upgrades/s per client address (0 = off) ...
    connect_burst_per_ip: float = 100.0  # ... with bursts up to this
    max_connections_per_ip: int = 500  # open sockets per client address (0 = no cap)
    max_connections: int = 0  # open sockets on this node, all ports (0 = no cap)
    connect_limits_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # CIDRs the per-IP limits skip
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For names the client
    allowed_origins: tuple[str, ...] = ()  # Origins browsers may open the player port from; empty = any
    frame_ancestors: tuple[str, ...] = ("'self'",)  # CSP frame-ancestors of the player port
    page_csp: str = (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; media-src 'self' blob:; font-src 'self' data:; worker-src 'self' blob:; "
        "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'self'"
    )  # Content-Security-Policy of the player port (frame-ancestors is appended)
