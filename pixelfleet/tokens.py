"""Session tokens: the matchmaker mints them, signalling verifies them.

A token admits one player to one streamer for one session. Claims: ``iss``
(``pixelfleet``), ``aud`` (``pixelfleet-signaling``), ``sub`` (tenant), ``sid``
(session id), ``stid`` (streamer id), ``iat``, ``exp``, ``jti``, and ``tp`` (the session's
trace context) when tracing is on. HS256 with a shared
secret, or EdDSA (Ed25519) where signalling nodes should only hold a public key.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

ISSUER = "pixelfleet"
AUDIENCE = "pixelfleet-signaling"


class InvalidToken(Exception):
    """Forged, expired, malformed or out-of-scope token; the text says which."""


@dataclass(frozen=True, slots=True)
class SessionClaims:
    tenant: str
    session_id: str
    streamer_id: str
    expires_at: int
    token_id: str
    trace: str | None = None  # ``tp``: the session's W3C traceparent (pixelfleet.tracing), when traced


@dataclass(frozen=True, slots=True)
class TokenKeys:
    """Signing and verification keys. For HS256 both are the shared secret."""

    algorithm: str  # "HS256" or "EdDSA"
    signing_key: Any | None  # None on nodes that only verify
    verify_key: Any

    @classmethod
    def hs256(cls, secret: str | bytes) -> TokenKeys:
        if len(secret) < 32:
            raise ValueError("an HS256 secret needs at least 32 bytes")
        return cls("HS256", secret, secret)

    @classmethod
    def eddsa(cls, private_pem: bytes | None, public_pem: bytes) -> TokenKeys:
        from cryptography.hazmat.primitives.serialization import (
            load_pem_private_key,
            load_pem_public_key,
        )

        private = load_pem_private_key(private_pem, password=None) if private_pem else None
        return cls("EdDSA", private, load_pem_public_key(public_pem))


LEEWAY_S = 5
"""Seconds a token is still taken past its expiry (and before its not-before): clock skew between hosts."""


def mint(
    keys: TokenKeys,
    *,
    tenant: str,
    session_id: str,
    streamer_id: str,
    ttl_s: int,
    now: float | None = None,
    trace: str | None = None,
) -> str:
    extra = {"sid": session_id, "stid": streamer_id} | ({"tp": trace} if trace else {})
    return _sign(keys, AUDIENCE, tenant, extra, ttl_s, now)


def _sign(keys: TokenKeys, audience: str, tenant: str, extra: dict[str, Any], ttl_s: int, now: float | None) -> str:
    """Every token pixelfleet mints: the shared claims, then the kind's own."""
    if keys.signing_key is None:
        raise ValueError("these keys can only verify")
    issued = int(time.time() if now is None else now)
    claims = {"iss": ISSUER, "aud": audience, "sub": tenant, **extra}
    claims |= {"iat": issued, "nbf": issued - 5, "exp": issued + ttl_s, "jti": secrets.token_urlsafe(12)}
    if keys.algorithm == "HS256":
        return _hs256(claims, keys.signing_key)
    return jwt.encode(claims, keys.signing_key, algorithm=keys.algorithm)


_HS256_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


def _hs256(claims: dict[str, Any], secret: str | bytes) -> str:
    """RFC 7515 compact HS256, as pyjwt writes it. Every allocation mints one, and
    pyjwt's generic encoder took 15 us of a ~170 us allocation; this takes 4. Checking
    tokens is pyjwt's (``verify``) but for the exact tokens written here (``_own_hs256``),
    and the tests hold the two to the same answers."""
    key = secret.encode() if isinstance(secret, str) else secret
    signed = _HS256_HEADER + b"." + base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.digest(key, signed, "sha256")).rstrip(b"=")
    return (signed + b"." + signature).decode()


def verify(
    keys: TokenKeys, token: str, *, now: float | None = None, leeway_s: int = LEEWAY_S, allow_expired: bool = False
) -> SessionClaims:
    """Check signature, algorithm, issuer, audience and (unless ``allow_expired``) expiry.

    ``allow_expired`` is for events about a session that was admitted with this token
    while it was valid (a disconnect hours later still names its session).
    """
    claims = _own_hs256(keys, token) if keys.algorithm == "HS256" else None
    try:
        if claims is None:
            claims = jwt.decode(
                token,
                keys.verify_key,
                algorithms=[keys.algorithm],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"verify_exp": False, "require": _REQUIRED},
            )
        expires_at = int(claims["exp"])
    except (jwt.InvalidTokenError, TypeError, ValueError) as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    if not allow_expired and expires_at + leeway_s < (time.time() if now is None else now):
        raise InvalidToken("token expired")
    tp = claims.get("tp")
    return SessionClaims(
        str(claims["sub"]),
        str(claims["sid"]),
        str(claims["stid"]),
        expires_at,
        str(claims["jti"]),
        tp if isinstance(tp, str) else None,
    )


_REQUIRED = ["exp", "iat", "sub", "sid", "stid", "jti"]


def _own_hs256(keys: TokenKeys, token: str) -> dict[str, Any] | None:
    """The claims of a session token exactly as ``_hs256`` writes it, when pyjwt would
    accept it too; None for anything else, which pyjwt then checks (and words the
    refusal of). Every session report and player connection checks one; the two paths
    are timed side by side by ``python -m loadtest.bench_tokens``.

    Accepted only with our own header byte for byte, the signature's canonical encoding
    equal (in constant time) to the HMAC of header and payload, and claims that pass the
    checks pyjwt makes with ``verify``'s options: every required claim present, ``aud``
    and ``iss`` ours, ``sub`` and ``jti`` strings, ``iat``/``nbf``/``exp`` integers and
    neither ``iat`` nor ``nbf`` in the future."""
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        return None
    head, _, rest = raw.partition(b".")
    body, _, signature = rest.partition(b".")
    if head != _HS256_HEADER or not signature:
        return None
    key = keys.verify_key.encode() if isinstance(keys.verify_key, str) else keys.verify_key
    expected = base64.urlsafe_b64encode(hmac.digest(key, head + b"." + body, "sha256")).rstrip(b"=")
    if not hmac.compare_digest(signature, expected):
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(claims, dict) or any(claims.get(name) is None for name in _REQUIRED):
        return None
    if claims.get("aud") != AUDIENCE or claims.get("iss") != ISSUER:
        return None
    if not isinstance(claims["sub"], str) or not isinstance(claims["jti"], str):
        return None
    issued, not_before = claims["iat"], claims.get("nbf", claims["iat"])
    if any(type(t) is not int for t in (issued, not_before, claims["exp"])):
        return None
    if max(issued, not_before) > time.time():
        return None
    return claims


# Streamer credentials: what a slot's streamer (or an SFU) presents on the streamer and
# SFU ports. Same keys as session tokens, another audience, so neither kind passes for
# the other: a player's session token is refused on the streamer port and vice versa.
STREAMER_AUDIENCE = "pixelfleet-streamer"
STREAMER_TTL_S = 900


@dataclass(frozen=True, slots=True)
class StreamerClaims:
    tenant: str
    host_id: str
    streamer_id: str
    expires_at: int
    token_id: str


def mint_streamer(
    keys: TokenKeys, *, tenant: str, host_id: str, streamer_id: str, ttl_s: int, now: float | None = None
) -> str:
    """A credential for the streamer ``streamer_id`` of host ``host_id`` (minted by the matchmaker)."""
    if not streamer_id:
        raise ValueError("a streamer credential names a streamer id")
    return _sign(keys, STREAMER_AUDIENCE, tenant, {"hid": host_id, "stid": streamer_id}, ttl_s, now)


def verify_streamer(
    keys: TokenKeys, token: str, *, now: float | None = None, leeway_s: int = LEEWAY_S
) -> StreamerClaims:
    """Check signature, algorithm, issuer, streamer audience and expiry (``now`` for nbf too)."""
    at = time.time() if now is None else now
    try:
        claims = jwt.decode(
            token,
            keys.verify_key,
            algorithms=[keys.algorithm],
            audience=STREAMER_AUDIENCE,
            issuer=ISSUER,
            leeway=leeway_s,
            options={"verify_exp": False, "verify_nbf": False, "require": _STREAMER_REQUIRED},
        )
        expires_at = int(claims["exp"])
        not_before = int(claims.get("nbf", claims["iat"]))
        streamer_id = claims["stid"]
    except (jwt.InvalidTokenError, TypeError, ValueError) as exc:
        raise InvalidToken(f"invalid streamer credential: {exc}") from None
    if not isinstance(streamer_id, str) or not streamer_id:
        raise InvalidToken("invalid streamer credential: stid must be a non-empty string")
    if expires_at + leeway_s < at:
        raise InvalidToken("streamer credential expired")
    if not_before - leeway_s > at:
        raise InvalidToken("streamer credential not yet valid")
    return StreamerClaims(str(claims["sub"]), str(claims["hid"]), streamer_id, expires_at, str(claims["jti"]))


_STREAMER_REQUIRED = ["exp", "iat", "sub", "hid", "stid", "jti"]
