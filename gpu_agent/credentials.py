"""Streamer credentials on the agent's side: when a slot may launch, and when to renew.

Signalling checks a streamer's credential only when the streamer connects, and a UE
process cannot be handed a new URL while it runs, so the agent renews a credential by
restarting the slot's streamer with the newest one (docs/protocol.md "Streamer
credentials"). The decisions are pure functions here; ``slots.py`` acts on them.

- **Launch**: with a credential that has not expired, or without one only where
  signalling answered that it takes streamers without (open mode). A slot waits, rather
  than launching a streamer signalling would refuse and restarting it over and over.
- **Renew before expiry**: an idle streamer (READY, no player since its last reset,
  no reset pending) that signalling lists, whose launch credential has
  ``credential_renew_margin_s`` or less left, once a newer credential is known.
- **Renew at once**: an idle streamer whose launch credential has expired and that
  signalling does not list (it could never reconnect), once a newer one is known.
- A streamer in a session is never restarted for its credential: the session's end
  restarts (or resets) it, and that launch takes the newest.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

import jwt

__all__ = ["Credential", "CredentialGate", "Renewal", "may_launch", "read", "renewal"]


@dataclass(frozen=True, slots=True)
class Credential:
    token: str
    jti: str
    expires_at: float  # the credential's ``exp`` (Unix seconds, the matchmaker's clock)


def read(token: str) -> Credential | None:
    """The credential's id and expiry, read, not verified (signalling verifies it);
    None for a token that does not read as a JWT with a numeric ``exp``."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        return Credential(token, str(claims.get("jti", "")), float(claims["exp"]))
    except (jwt.InvalidTokenError, KeyError, TypeError, ValueError):
        return None


class Renewal(enum.StrEnum):
    KEEP = "keep"
    BEFORE_EXPIRY = "before_expiry"  # idle and connected, its credential about to expire
    EXPIRED = "expired"  # idle, not connected, its credential expired: it could never reconnect


def renewal(
    launched: Credential | None,
    newest: Credential | None,
    *,
    now: float,
    margin_s: float,
    idle: bool,
    connected: bool | None,
) -> Renewal:
    """Whether to restart a slot's streamer with ``newest`` now.

    ``launched``: the credential the running streamer got (None: launched without one);
    ``idle``: READY-able and in no session (no player since the last reset, no reset
    pending); ``connected``: signalling lists it (None: signalling could not be asked).
    """
    if launched is None or newest is None or not idle or connected is None:
        return Renewal.KEEP
    if newest.expires_at <= max(launched.expires_at, now):
        return Renewal.KEEP  # nothing better to restart with
    if not connected:
        return Renewal.EXPIRED if launched.expires_at <= now else Renewal.KEEP
    return Renewal.BEFORE_EXPIRY if launched.expires_at - now <= margin_s else Renewal.KEEP


def may_launch(newest: Credential | None, *, now: float, open_signalling: bool | None) -> bool:
    """A streamer starts with an unexpired credential, or with none only where signalling
    said it admits streamers without one (``open_signalling``; None: not known yet)."""
    return (newest is not None and newest.expires_at > now) or open_signalling is True


@dataclass
class CredentialGate:
    """What every slot of a host shares about credentials.

    ``matchmaker_tried``: set once the agent has tried to register (or has no
    matchmaker); before that a slot without a credential waits for the registration
    reply's instead of asking signalling. ``open_signalling``: signalling's answer to a
    listing request without credentials (True: 200/404, open mode; False: 401), asked
    once by a slot that has no credential after that try, and kept.
    """

    matchmaker_tried: asyncio.Event = field(default_factory=asyncio.Event)
    open_signalling: bool | None = None
