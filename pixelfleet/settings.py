"""Settings loading shared by every service.

Each service owns one frozen ``msgspec.Struct`` of settings. Values come from the
defaults, then ``PIXELFLEET_*`` environment variables, then explicit overrides (CLI
flags). The signalling server's settings are the top level (``PIXELFLEET_PLAYER_PORT``);
other services read their own section (``PIXELFLEET_TURN__SECRETS``). Lists are
comma-separated; JSON-typed fields take JSON. Nothing else reads the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

ENV_PREFIX = "PIXELFLEET_"
SECTIONS = frozenset({"turn", "matchmaker", "agent", "test"})  # "test": the test suite's own switches

T = TypeVar("T", bound=msgspec.Struct)


class ConfigError(ValueError):
    """A setting has the wrong type or an unknown name."""


def load_section(cls: type[T], environ: Mapping[str, str], section: str | None = None,
                 **overrides: Any) -> T:
    data: dict[str, Any] = {}
    fields = {f.name: f.type for f in msgspec.structs.fields(cls)}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):].lower()
        head, _, rest = name.partition("__")
        if section is None:
            if head in SECTIONS:
                continue
        elif head != section or not rest:
            continue
        else:
            name = rest
        data[name] = _parse(value, fields.get(name))
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(data, cls, strict=False)
    except msgspec.ValidationError as exc:
        where = f"PIXELFLEET_{section.upper()}__*" if section else "PIXELFLEET_*"
        raise ConfigError(f"invalid setting ({where}): {exc}") from None


def _parse(value: str, annotation: Any) -> Any:
    text = str(annotation)
    if text.startswith(("dict", "typing.Dict")) or "dict[" in text:
        return msgspec.json.decode(value)
    if text.startswith(("list", "tuple")) or "list[" in text or "tuple[" in text:
        return [item.strip() for item in value.split(",") if item.strip()]
    return value
