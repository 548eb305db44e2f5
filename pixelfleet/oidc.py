"""Caller tokens: OIDC (RS256/ES256 against the identity provider's JWKS) or HS256.

A caller is whoever asks the matchmaker for sessions: a game backend, or a browser
holding its user's ID or access token. The token says who it is (``sub``) and for which
tenant (a configurable claim). Two ways of signing are accepted, each only with its
own key material, so no token can pass with a key meant for the other way (algorithm
confusion: an HS256 token "signed" with the provider's public key is refused because
HS256 is checked with the configured secret only; ``none`` and every other algorithm
are refused before any key is looked at):

- RS256 / ES256 with a key from the JWKS at ``jwks_url``, picked by the token's ``kid``
  and held for ``ttl_s``. A ``kid`` not in the cached set triggers one refetch (the
  provider rotated its keys), at most once per ``min_refetch_s``, so a flood of made-up
  ``kid``s costs the provider one request per interval, not one per token.
- HS256 with a shared secret, for simple setups.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt

__all__ = ["ASYMMETRIC", "Caller", "CallerPolicy", "InvalidCaller", "JwksCache", "verify_caller"]

ASYMMETRIC = {"RS256": "RSA", "ES256": "EC"}  # algorithm -> the JWK key type it needs
MAX_LEEWAY_S = 300.0


class InvalidCaller(Exception):
    """Refused caller token. ``code`` is the API error code (``invalid_token``, ``token_expired``)."""

    def __init__(self, message: str, code: str = "invalid_token") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    subject: str
    expires_at: float


Fetch = Callable[[str], Awaitable[dict[str, Any]]]


async def _http_fetch(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
        http.get(url) as response,
    ):
        if response.status != 200:
            raise InvalidCaller(f"the JWKS endpoint answered {response.status}")
        body = await response.json(content_type=None)
    if not isinstance(body, dict):
        raise InvalidCaller("the JWKS endpoint answered no JSON object")
    return body


@dataclass
class JwksCache:
    """The provider's signing keys by ``kid``, fetched on demand and refreshed on rotation."""

    url: str
    ttl_s: float = 300.0
    min_refetch_s: float = 10.0
    fetch: Fetch = _http_fetch
    clock: Callable[[], float] = time.monotonic
    fetches: int = 0  # how often the provider was asked (tests, metrics)
    _keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    _fetched_at: float | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def key(self, kid: str) -> jwt.PyJWK:
        now = self.clock()
        stale = self._fetched_at is None or now - self._fetched_at > self.ttl_s
        if kid in self._keys and not stale:
            return self._keys[kid]
        async with self._lock:
            now = self.clock()
            due = self._fetched_at is None or now - self._fetched_at >= self.min_refetch_s
            if (stale or kid not in self._keys) and due:
                await self._refresh(now)
        if kid not in self._keys:
            raise InvalidCaller(f"no key {kid!r} in the identity provider's JWKS")
        return self._keys[kid]

    async def _refresh(self, now: float) -> None:
        self.fetches += 1
        self._fetched_at = now  # a failed fetch also waits min_refetch_s before the next
        try:
            body = await self.fetch(self.url)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if not self._keys:
                raise InvalidCaller(f"the identity provider's JWKS could not be read: {exc}") from None
            return  # keep the keys we have
        keys: dict[str, jwt.PyJWK] = {}
        for data in body.get("keys", []):
            if not isinstance(data, dict) or not isinstance(data.get("kid"), str) or data.get("use", "sig") != "sig":
                continue
            try:
                keys[data["kid"]] = jwt.PyJWK(data)
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                continue  # a key type this library cannot use is no key for us
        self._keys = keys


@dataclass(frozen=True)
class CallerPolicy:
    """How caller tokens are checked (the matchmaker's ``caller_*`` settings)."""

    hs256_secret: str | None = None
    jwks: JwksCache | None = None
    algorithms: Sequence[str] = ("RS256", "ES256")
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = 30.0
    tenant_claim: str = "tenant"
    subject_claim: str = "sub"

    def __post_init__(self) -> None:
        if not 0 <= self.leeway_s <= MAX_LEEWAY_S:
            raise ValueError(f"caller token leeway must be within 0..{MAX_LEEWAY_S:g} s")
        unknown = set(self.algorithms) - set(ASYMMETRIC)
        if unknown:
            raise ValueError(f"caller JWKS algorithms must be among {sorted(ASYMMETRIC)}, not {sorted(unknown)}")


async def verify_caller(policy: CallerPolicy, token: str) -> Caller:
    """The token's tenant and subject, or ``InvalidCaller`` saying why not."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise InvalidCaller(f"invalid caller token: {exc}") from None
    alg = header.get("alg")
    key: Any
    if alg == "HS256" and policy.hs256_secret:
        key = policy.hs256_secret
    elif isinstance(alg, str) and alg in policy.algorithms and policy.jwks is not None:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidCaller("invalid caller token: no kid in its header")
        jwk = await policy.jwks.key(kid)
        if jwk.key_type != ASYMMETRIC[alg]:
            raise InvalidCaller(f"invalid caller token: key {kid!r} is not an {ASYMMETRIC[alg]} key")
        key = jwk.key
    else:
        raise InvalidCaller(f"invalid caller token: algorithm {alg!r} is not accepted here")
    required = ["exp", policy.tenant_claim, policy.subject_claim]
    if policy.issuer:
        required.append("iss")
    if policy.audience:
        required.append("aud")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            issuer=policy.issuer,
            audience=policy.audience,
            leeway=policy.leeway_s,
            options={"require": required, "verify_aud": policy.audience is not None},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidCaller("the caller token has expired", "token_expired") from None
    except jwt.InvalidTokenError as exc:
        raise InvalidCaller(f"invalid caller token: {exc}") from None
    tenant, subject = claims[policy.tenant_claim], claims[policy.subject_claim]
    if not isinstance(tenant, str) or not tenant:
        raise InvalidCaller("the caller token names no tenant")
    if not isinstance(subject, str) or not subject:
        raise InvalidCaller("the caller token names no subject")
    return Caller(tenant, subject, float(claims["exp"]))
