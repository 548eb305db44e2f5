"""TURN REST API credentials as coturn's ``use-auth-secret`` checks them. Pure: no clock,
no I/O, so the scheme is tested with plain calls and minted on the connect path.

    username = f"{expiry_unix_s}:{user}"                       # an expiry, not an issue time
    password = base64(HMAC-SHA1(key=secret, msg=username))     # 28 chars, '=' padded

coturn recomputes the password from the username with each configured secret in turn
(rotation: several secrets valid at once) and accepts it while ``expiry >= now``. The
user part is opaque to coturn (logs, ``--user-quota``); it travels in clear, so it
should be an opaque id (player id, session id), never an e-mail address.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["SEPARATOR", "Credential", "expiry_of", "ice_servers", "issue", "password_for", "split_urls", "verify"]

SEPARATOR = ":"  # coturn's default --rest-api-separator
_STUN = ("stun:", "stuns:")
_TURN = ("turn:", "turns:")


@dataclass(frozen=True, slots=True)
class Credential:
    username: str
    password: str
    expires_at: int  # unix seconds; coturn refuses new allocations after this

    def __repr__(self) -> str:  # never print the password by accident
        return f"Credential(username={self.username!r}, expires_at={self.expires_at})"


def password_for(secret: str | bytes, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)), the password coturn derives from the username."""
    key = secret.encode() if isinstance(secret, str) else secret
    return base64.b64encode(hmac.digest(key, username.encode(), "sha1")).decode("ascii")


def issue(secret: str | bytes, user: str, ttl_s: int, now_s: float) -> Credential:
    """A credential valid until ``now_s + ttl_s`` for ``user`` (may be empty).

    ``user`` must not contain the separator: coturn splits at the first one and would
    read the rest as the user, so ``a:b`` is refused here rather than at coturn.
    """
    if SEPARATOR in user:
        raise ValueError(f"TURN user part must not contain {SEPARATOR!r}: {user!r}")
    expires_at = int(now_s) + int(ttl_s)
    username = f"{expires_at}{SEPARATOR}{user}" if user else str(expires_at)
    return Credential(username, password_for(secret, username), expires_at)


def expiry_of(username: str) -> int | None:
    """The expiry coturn reads from a username (``expiry:user``, ``user:expiry`` or a bare
    number), or None when there is none."""
    head, sep, tail = username.partition(SEPARATOR)
    for part in (head, tail) if sep else (head,):
        if part.isdigit():
            return int(part)
    return None


def verify(secrets: Iterable[str | bytes], username: str, password: str, now_s: float) -> bool:
    """coturn's acceptance rule: not expired and signed by any configured secret."""
    expiry = expiry_of(username)
    if expiry is None or expiry < int(now_s):
        return False
    given = password.encode()
    return any(hmac.compare_digest(password_for(s, username).encode(), given) for s in secrets)


def split_urls(urls: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(STUN urls, TURN urls); raises ValueError for any other scheme."""
    stun: list[str] = []
    turn: list[str] = []
    for url in urls:
        lowered = url.strip().lower()
        if lowered.startswith(_STUN):
            stun.append(url.strip())
        elif lowered.startswith(_TURN):
            turn.append(url.strip())
        else:
            raise ValueError(f"not a stun:, stuns:, turn: or turns: URL: {url!r}")
    return tuple(stun), tuple(turn)


def ice_servers(
    stun_urls: Sequence[str], turn_urls: Sequence[str], credential: Credential | None
) -> list[dict[str, Any]]:
    """The ``RTCConfiguration.iceServers`` list: one STUN entry (no credentials), one TURN
    entry carrying the credential. ``urls`` is always an array: Epic's frontend ForceTURN
    check iterates it and misreads a plain string."""
    servers: list[dict[str, Any]] = []
    if stun_urls:
        servers.append({"urls": list(stun_urls)})
    if turn_urls and credential is not None:
        servers.append({"urls": list(turn_urls), "username": credential.username, "credential": credential.password})
    return servers
