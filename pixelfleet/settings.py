"""The platform's one settings object, loaded once by the CLI and passed down.

Sources, later ones winning: defaults, a command's own defaults (``pixelfleet up``
serves port 8080), ``PIXELFLEET_*`` environment variables, command-line flags. Only
this loader reads the environment (the CLI hands it ``os.environ``).

Names: shared settings and the signalling server's are top level
(``PIXELFLEET_AGENT_TOKEN``, ``PIXELFLEET_PLAYER_PORT``); other sections use ``__``
(``PIXELFLEET_MATCHMAKER__POLICY``, ``PIXELFLEET_AGENT__SLOTS``,
``PIXELFLEET_TURN__SECRETS``). Lists are comma-separated, JSON-typed fields take JSON.
An unknown or renamed ``PIXELFLEET_*`` name, or a bad value, is a ``ConfigError`` whose
one-line message names the variable. docs/configuration.md lists every setting.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from typing import Any

import msgspec

from gpu_agent.config import AgentSettings
from matchmaker.config import MatchmakerSettings
from pixelfleet.shared_settings import ConfigError, SharedSettings
from signaling.config import Settings as SignalingSettings
from turn.config import TurnSettings

__all__ = [
    "ENV_PREFIX",
    "RENAMED",
    "SECTIONS",
    "ConfigError",
    "Overrides",
    "PixelfleetSettings",
    "env_name",
    "load_settings",
]

ENV_PREFIX = "PIXELFLEET_"
IGNORED_SECTIONS = frozenset({"test"})  # PIXELFLEET_TEST__*: the test suite's own switches

# Dotted setting name ("signaling.player_port", "agent.slots", "state_url") -> value; None = unset.
Overrides = Mapping[str, Any]


class PixelfleetSettings(SharedSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Shared settings at the top, one section per service (each holds the shared values too)."""

    signaling: SignalingSettings = msgspec.field(default_factory=SignalingSettings)
    matchmaker: MatchmakerSettings = msgspec.field(default_factory=MatchmakerSettings)
    agent: AgentSettings = msgspec.field(default_factory=AgentSettings)
    turn: TurnSettings = msgspec.field(default_factory=TurnSettings)


SECTIONS: dict[str, type[msgspec.Struct]] = {
    "signaling": SignalingSettings,
    "matchmaker": MatchmakerSettings,
    "agent": AgentSettings,
    "turn": TurnSettings,
}
_SHARED = frozenset(SharedSettings.__struct_fields__)

# Names that went away, and what replaced them: refused with that hint, never ignored.
RENAMED = {
    "PIXELFLEET_MATCHMAKER__TOKEN_SECRET": "PIXELFLEET_SESSION_TOKEN_SECRET",
    "PIXELFLEET_MATCHMAKER__TOKEN_ALGORITHM": "PIXELFLEET_SESSION_TOKEN_ALGORITHM",
    "PIXELFLEET_MATCHMAKER__TOKEN_PRIVATE_KEY_FILE": "PIXELFLEET_SESSION_TOKEN_PRIVATE_KEY_FILE",
    "PIXELFLEET_MATCHMAKER__TOKEN_PUBLIC_KEY_FILE": "PIXELFLEET_SESSION_TOKEN_PUBLIC_KEY_FILE",
    "PIXELFLEET_MATCHMAKER__TOKEN_TTL_S": "PIXELFLEET_SESSION_TOKEN_TTL_S",
    # Shared fields under a section prefix (PIXELFLEET_AGENT__AGENT_TOKEN, ...).
    **{
        f"PIXELFLEET_{section.upper()}__{name.upper()}": f"PIXELFLEET_{name.upper()}"
        for section in ("matchmaker", "agent")
        for name in sorted(_SHARED)
    },
}


def env_name(section: str, field: str) -> str:
    """The variable that sets ``section.field`` (section "" = shared)."""
    if section in ("", "signaling") or field in _SHARED:
        return f"{ENV_PREFIX}{field.upper()}"
    return f"{ENV_PREFIX}{section.upper()}__{field.upper()}"


def load_settings(
    environ: Mapping[str, str], *, defaults: Overrides | None = None, flags: Overrides | None = None
) -> PixelfleetSettings:
    """Everything every command needs, checked at once: a bad setting fails here."""
    data: dict[str, dict[str, Any]] = {"": {}, **{name: {} for name in SECTIONS}}
    _apply(data, defaults or {})
    for key in sorted(environ):
        if key.startswith(ENV_PREFIX):
            section, field = _locate(key)
            if section is not None:
                data[section][field] = _parse(key, environ[key], _field_type(section, field))
    _apply(data, flags or {})
    shared = _convert(SharedSettings, data[""], "")
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        values = data[name] if cls is TurnSettings else {**data[name], **shared.shared()}
        sections[name] = _convert(cls, values, name)
    return PixelfleetSettings(**shared.shared(), **sections)


def _locate(key: str) -> tuple[str | None, str]:
    """(section, field) a variable sets; section None for a name to skip."""
    if key in RENAMED:
        raise ConfigError(f"{key} is now {RENAMED[key]} (one name for every service): set that instead")
    name = key[len(ENV_PREFIX) :].lower()
    head, sep, rest = name.partition("__")
    if not sep:
        if name in _SHARED:
            return "", name
        if name in SignalingSettings.__struct_fields__:
            return "signaling", name
    elif head in IGNORED_SECTIONS:
        return None, ""
    elif head in SECTIONS and head != "signaling" and rest in SECTIONS[head].__struct_fields__:
        return head, rest
    raise ConfigError(f"unknown setting {key} (docs/configuration.md lists them all)")


def _apply(data: dict[str, dict[str, Any]], overrides: Overrides) -> None:
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, field = dotted.rpartition(".")
        if section not in data or field not in (
            SECTIONS[section].__struct_fields__ if section else SharedSettings.__struct_fields__
        ):
            raise ValueError(f"no setting {dotted!r}")  # a programming error, not the user's
        if field in _SHARED:
            section = ""
        data[section][field] = value


def _field_type(section: str, field: str) -> Any:
    cls = SECTIONS[section] if section and field not in _SHARED else SharedSettings
    return {f.name: f.type for f in msgspec.structs.fields(cls)}[field]


def _convert(cls: type[Any], values: dict[str, Any], section: str) -> Any:
    try:
        return msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc).splitlines()[0]
        at = re.search(r" - at `\$\.(\w+)", message)
        if at:
            field = at.group(1)
            kind = _field_type(section, field) if field in values else None
            choices = (
                f" (one of {', '.join(map(str, typing.get_args(kind)))})"
                if typing.get_origin(kind) is typing.Literal
                else ""
            )
            raise ConfigError(f"invalid {env_name(section, field)}: {message[: at.start()]}{choices}") from None
        where = f"PIXELFLEET_{section.upper()}__*" if section not in ("", "signaling") else "PIXELFLEET_*"
        raise ConfigError(f"invalid setting ({where}): {message}") from None


def _parse(key: str, value: str, annotation: Any) -> Any:
    text = str(annotation)
    if text.startswith(("dict", "typing.Dict")) or "dict[" in text:
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"invalid {key}: not JSON ({exc})") from None
    if text.startswith(("list", "tuple")) or "list[" in text or "tuple[" in text:
        return [item.strip() for item in value.split(",") if item.strip()]
    return value
