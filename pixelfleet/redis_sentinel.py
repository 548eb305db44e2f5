"""Redis behind Sentinel, named by a state URL: ``redis://<sentinel>[,<sentinel>…]/<db>?sentinel=<name>``.

With ``?sentinel=<name>`` the hosts in the URL are Sentinels, not Redis: the client asks
them for the current primary of ``<name>`` before each new connection, and a connection
to a primary that was demoted is dropped, so after a failover the next reconnection
reaches the promoted replica with no change of configuration. The scheme stays
``redis``/``rediss`` so every service that reads ``PIXELFLEET_STATE_URL`` picks its Redis
backend as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

__all__ = ["SentinelTarget", "parse_sentinel_url", "sentinel_primary"]

DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str  # the name the Sentinels monitor the primary under
    db: int = 0
    username: str | None = None  # credentials of the primary (Sentinels are reached without)
    password: str | None = None
    ssl: bool = False


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The Sentinel target of ``url``, or None when it has no ``sentinel`` parameter.
    Raises ``ValueError`` for a Sentinel URL that cannot work."""
    base, _, query = url.partition("?")
    params = parse_qsl(query, keep_blank_values=True)
    names = [value for key, value in params if key == "sentinel"]
    if not names:
        return None
    other = sorted({key for key, _ in params if key != "sentinel"})
    if other:
        raise ValueError(f"a Sentinel state URL takes only the 'sentinel' parameter, not {', '.join(other)}")
    if len(names) > 1 or not names[0]:
        raise ValueError("?sentinel= needs exactly one primary name, e.g. ?sentinel=mymaster")
    scheme, sep, rest = base.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError("Sentinels are reached over TCP: use redis:// or rediss:// with ?sentinel=<name>")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(item) for item in hosts.split(",") if item)
    if not sentinels:
        raise ValueError("a Sentinel state URL needs at least one Sentinel host")
    db_text = path.strip("/") or "0"
    if not db_text.isdigit():
        raise ValueError(f"the database in a Sentinel state URL must be a number, not {db_text!r}")
    return SentinelTarget(sentinels, names[0], int(db_text), username, password, scheme == "rediss")


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:26379
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError(f"bad Sentinel address {item!r}")
    if port and not port.isdigit():
        raise ValueError(f"bad Sentinel port in {item!r}")
    return host, int(port) if port else DEFAULT_SENTINEL_PORT


class SentinelPrimary(Redis):
    """A client of the current primary; closing it also closes its Sentinel clients."""

    owned_sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.owned_sentinel is not None:
            await self.owned_sentinel.aclose()


def sentinel_primary(target: SentinelTarget, **kwargs: Any) -> Redis:
    """An asyncio client that follows ``target``'s primary across failovers."""
    auth = {"username": target.username, "password": target.password, "ssl": target.ssl}
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs={}, db=target.db, **auth, **kwargs)  # type: ignore[no-untyped-call]
    client: SentinelPrimary = sentinel.master_for(target.service, redis_class=SentinelPrimary)
    client.owned_sentinel = sentinel
    return client
