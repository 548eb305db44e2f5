"""The signalling server's settings: one frozen object, loaded once at start-up.

Sources, later ones winning: defaults, ``PIXELFLEET_*`` environment variables
(``PIXELFLEET_PLAYER_PORT=80``; nested sections with ``__``), command-line flags.
No other module reads the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from pixelfleet.settings import ConfigError, load_section

__all__ = ["ConfigError", "Settings", "load_settings"]


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"              # bind address; "0.0.0.0" or "::" to serve a network
    player_port: int = 80                # HTTP: player page + player WebSocket (Epic default 80)
    streamer_port: int = 8888
    sfu_port: int = 8889                 # -1 disables the SFU listener; 0 = any free port
    state_url: str = "memory://"         # broker backend: memory:// (one node) or redis://
    peer_connection_options: dict[str, Any] = msgspec.field(default_factory=dict)
    max_players_per_streamer: int = 0    # 0 = unlimited (Epic's --max_players)
    max_message_bytes: int = 64 * 1024   # larger frames: close 1009
    player_rate: float = 50.0            # messages/s allowed per player on average ...
    player_burst: float = 200.0          # ... with bursts up to this (ICE trickle)
    streamer_rate: float = 2000.0        # streamers serve many players
    streamer_burst: float = 5000.0
    max_protocol_errors: int = 20        # bad messages tolerated before close 1008
    send_queue_frames: int = 512         # frames queued for a slow reader before close 4408
    keepalive_s: float = 30.0            # WebSocket ping interval; 0 = off
    shutdown_grace_s: float = 5.0        # how long SIGTERM waits for peers to close
    static_dir: str | None = None        # player page; None = the bundled one
    # Matchmaker sessions: players present the session token the matchmaker minted.
    session_token_secret: str | None = None      # HS256 secret shared with the matchmaker
    session_token_public_key_file: str | None = None  # EdDSA: verify-only PEM
    require_session_token: bool | None = None    # default: required once a key is configured
    matchmaker_url: str | None = None            # where connect/disconnect reports go (HTTP)
    log_level: str = "info"
    log_format: str = "auto"             # json | console | auto (console on a TTY)


def load_settings(environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Build settings from the environment plus explicit overrides (e.g. CLI flags)."""
    return load_section(Settings, environ, **overrides)
