"""The matchmaker's auth parts without a server: JWKS caching, agent tokens, buckets, addresses."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from matchmaker.auth import Refused, client_address, mint_agent_token, owned_client_key, verify_agent_token
from matchmaker.limits import TokenBuckets
from matchmaker.streamer_creds import StreamerCredentials
from pixelfleet.oidc import InvalidCaller, JwksCache
from pixelfleet.tokens import TokenKeys, verify_streamer

SECRET = "agent-key-" + "a" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _jwks(kids: list[str]) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return {"keys": [{**json.loads(RSAAlgorithm.to_jwk(key)), "kid": kid, "use": "sig"} for kid in kids]}


async def test_an_unknown_kid_refetches_at_most_once_per_interval() -> None:
    clock, published, reads = Clock(), {"keys": ["k1"]}, []

    async def fetch(url: str) -> dict[str, Any]:
        reads.append(url)
        return _jwks(published["keys"])

    cache = JwksCache("http://idp/jwks", ttl_s=300, min_refetch_s=10, fetch=fetch, clock=clock)
    assert (await cache.key("k1")).key_type == "RSA"
    for _ in range(5):
        with pytest.raises(InvalidCaller):
            await cache.key("made-up")
    assert len(reads) == 1  # within the interval: no refetch at all
    published["keys"] = ["k2"]
    clock.now += 10
    assert (await cache.key("k2")).key_type == "RSA"  # rotation: one refetch finds it
    assert len(reads) == 2
    with pytest.raises(InvalidCaller):
        await cache.key("k1")  # rotated out
    clock.now += 301
    await cache.key("k2")  # stale after the TTL: read again
    assert len(reads) == 3


def test_agent_tokens_carry_their_host_and_tenants_and_nothing_else_passes() -> None:
    token = mint_agent_token(SECRET, host_id="h1", tenants=["b", "a", "a"], ttl_s=60)
    grant = verify_agent_token(SECRET, token)
    assert (grant.host_id, grant.tenants, grant.subject) == ("h1", frozenset({"a", "b"}), "host:h1")
    with pytest.raises(Refused) as wrong:
        verify_agent_token("x" * 42, token)
    assert (wrong.value.status, wrong.value.code) == (401, "invalid_token")
    with pytest.raises(Refused) as old:
        verify_agent_token(SECRET, mint_agent_token(SECRET, host_id="h1", tenants=["a"], ttl_s=1, now=0))
    assert old.value.code == "token_expired"
    with pytest.raises(ValueError, match="host id"):
        mint_agent_token(SECRET, host_id="h1", tenants=[], ttl_s=60)


def test_token_buckets_refill_at_their_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(4)] == [True, True, True, False]
    assert buckets.take("b")  # its own bucket
    clock.now += 0.5  # one token back
    assert [buckets.take("a") for _ in range(2)] == [True, False]
    assert TokenBuckets(rate=0, burst=1).take("a")  # rate 0: off


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("198.51.100.1", "203.0.113.5", [], "198.51.100.1"),  # no trusted proxies: the peer
        ("198.51.100.1", "203.0.113.5", ["10.0.0.0/8"], "198.51.100.1"),  # an untrusted peer's header is ignored
        ("10.0.0.2", "203.0.113.5, 10.0.0.9", ["10.0.0.0/8"], "203.0.113.5"),  # nearest untrusted hop
        ("10.0.0.2", "1.1.1.1, 203.0.113.5", ["10.0.0.0/8"], "203.0.113.5"),  # a client's own prefix is not believed
        ("10.0.0.2", "", ["10.0.0.0/8"], "10.0.0.2"),
    ],
)
def test_client_address_believes_only_trusted_proxies(
    peer: str, forwarded: str, trusted: list[str], expected: str
) -> None:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    request = make_mocked_request("GET", "/", headers=headers, transport=_Transport(peer))
    assert client_address(request, trusted) == expected


class _Transport:
    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default


def test_client_keys_are_namespaced_by_subject() -> None:
    assert owned_client_key("alice", "seat") != owned_client_key("bob", "seat")
    assert owned_client_key("alice", "seat") == owned_client_key("alice", "seat")
    assert owned_client_key("alice", None) is None


def test_streamer_credentials_are_reused_until_half_their_life_then_renewed() -> None:
    clock = Clock()
    clock.now = time.time()
    keys = TokenKeys.hs256("session-secret-" + "s" * 32)
    creds = StreamerCredentials(keys, ttl_s=900, clock=clock)
    creds.remember("h1", [(0, "acme", "h1-0"), (1, "acme", "h1-1")])
    first = creds.for_host("h1")
    claims = verify_streamer(keys, first["1"], now=clock.now)
    assert (claims.streamer_id, claims.host_id, claims.tenant) == ("h1-1", "h1", "acme")
    clock.now += 449
    assert creds.for_host("h1") == first  # more than half its life left: the same one
    clock.now += 2
    renewed = creds.for_host("h1")
    assert renewed["0"] != first["0"]
    later = jwt.decode(renewed["0"], options={"verify_signature": False})  # its iat is in this test's future
    assert (later["stid"], later["exp"]) == ("h1-0", int(clock.now) + 900)
    assert creds.for_host("unknown") == {}
    assert not StreamerCredentials(None, ttl_s=900).enabled
