"""The settings several services share, declared once.

Each service's section (signalling, matchmaker, agent) extends ``SharedSettings``, so a
service reads ``settings.agent_token`` from the one object it is given; the loader
(``pixelfleet.settings.load_settings``) fills these fields in every section from the one
top-level variable (``PIXELFLEET_AGENT_TOKEN``), so they cannot disagree.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["SECRET_FIELDS", "ConfigError", "LogFormat", "LogLevel", "SharedSettings", "TokenAlgorithm"]

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "console", "auto"]
TokenAlgorithm = Literal["HS256", "EdDSA"]

# Never printed: repr() shows whether they are set, not their value.
SECRET_FIELDS = frozenset(
    {
        "session_token_secret",
        "agent_token",
        "admin_token",
        "report_token",
        "caller_jwt_secret",
        "agent_key_secret",
        "secrets",
        "credential",
    }
)


class ConfigError(ValueError):
    """A setting is missing, has the wrong type or value, or an unknown name: start-up stops."""


class SharedSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Shared state: memory:// (one process) or redis://, rediss://, unix:// (?cluster=1 for Cluster).
    state_url: str = "memory://"
    # Session tokens: the matchmaker mints them, signalling verifies them.
    session_token_algorithm: TokenAlgorithm = "HS256"
    session_token_secret: str | None = None  # HS256, >= 32 bytes
    session_token_private_key_file: str | None = None  # EdDSA PEM: the matchmaker signs with it
    session_token_public_key_file: str | None = None  # EdDSA PEM: signalling verifies with it
    session_token_ttl_s: int = 120  # how long a player has to open signalling with it
    # Bearer tokens of the matchmaker's agent and admin APIs (the agent presents them).
    agent_token: str | None = None
    admin_token: str | None = None
    # Signalling presents it on connect/disconnect reports; once set, the matchmaker takes
    # those reports only with it (a player's own session token no longer suffices).
    report_token: str | None = None
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"  # auto: console on a TTY, JSON lines otherwise
    # OTLP/HTTP traces endpoint (pixelfleet.tracing); unset: no tracing at all.
    otlp_endpoint: str | None = None

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        parts = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            parts.append(f"{name}=<hidden>" if name in SECRET_FIELDS and value else f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def shared(self) -> dict[str, object]:
        """The shared fields, to fill a section with."""
        return {name: getattr(self, name) for name in SharedSettings.__struct_fields__}
