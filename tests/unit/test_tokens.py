"""Session tokens: what signalling admits, and what it refuses."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pixelfleet.tokens import InvalidToken, TokenKeys, mint, verify

KEYS = TokenKeys.hs256("k" * 32)


def test_round_trip() -> None:
    token = mint(KEYS, tenant="acme", session_id="s-1", streamer_id="h1-0", ttl_s=60, now=1000)
    claims = verify(KEYS, token, now=1030)
    assert (claims.tenant, claims.session_id, claims.streamer_id, claims.expires_at) == ("acme", "s-1", "h1-0", 1060)
    assert claims.token_id


def test_expired_refused_unless_allowed() -> None:
    token = mint(KEYS, tenant="acme", session_id="s", streamer_id="x", ttl_s=60, now=1000)
    with pytest.raises(InvalidToken, match="expired"):
        verify(KEYS, token, now=2000)
    assert verify(KEYS, token, now=2000, allow_expired=True).session_id == "s"


@pytest.mark.parametrize("forge", ["other-key", "alg-none", "tampered", "garbage", "wrong-audience"])
def test_forgeries_refused(forge: str) -> None:
    good = mint(KEYS, tenant="acme", session_id="s", streamer_id="x", ttl_s=60)
    claims = jwt.decode(good, options={"verify_signature": False})
    token = {
        "other-key": mint(TokenKeys.hs256("z" * 32), tenant="acme", session_id="s", streamer_id="x", ttl_s=60),
        "alg-none": jwt.encode(claims, None, algorithm="none"),
        "tampered": jwt.encode({**claims, "stid": "someone-else"}, "k" * 31 + "x", algorithm="HS256"),
        "garbage": "not.a.token",
        "wrong-audience": jwt.encode({**claims, "aud": "elsewhere"}, "k" * 32, algorithm="HS256"),
    }[forge]
    with pytest.raises(InvalidToken):
        verify(KEYS, token)


def test_eddsa_verify_only_nodes() -> None:
    private = Ed25519PrivateKey.generate()
    priv_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    pub_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    signer = TokenKeys.eddsa(priv_pem, pub_pem)
    verifier = TokenKeys.eddsa(None, pub_pem)
    token = mint(signer, tenant="t", session_id="s", streamer_id="x", ttl_s=60)
    assert verify(verifier, token).session_id == "s"
    with pytest.raises(ValueError):
        mint(verifier, tenant="t", session_id="s", streamer_id="x", ttl_s=60)
    with pytest.raises(InvalidToken):  # an HS256 token cannot pass as EdDSA
        verify(verifier, mint(KEYS, tenant="t", session_id="s", streamer_id="x", ttl_s=60))


def test_short_secret_rejected() -> None:
    with pytest.raises(ValueError):
        TokenKeys.hs256("short")

