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
        "alg-none": jwt.encode(claims, "", algorithm="none"),  # PyJWT takes "" as the none-algorithm key
        "tampered": jwt.encode({**claims, "stid": "someone-else"}, "k" * 31 + "x", algorithm="HS256"),
        "garbage": "not.a.token",
        "wrong-audience": jwt.encode({**claims, "aud": "elsewhere"}, "k" * 32, algorithm="HS256"),
    }[forge]
    with pytest.raises(InvalidToken):
        verify(KEYS, token)


def test_eddsa_verify_only_nodes() -> None:
    private = Ed25519PrivateKey.generate()
    priv_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
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


def test_hs256_tokens_are_what_pyjwt_writes_and_reads() -> None:
    """Minting HS256 is done by hand (speed); pyjwt must read every field back (UTF-8
    and quotes included), with the header it writes itself, and a changed signature
    must be refused."""
    import jwt as pyjwt

    keys = TokenKeys.hs256("k" * 40)
    token = mint(keys, tenant='ac"me/ü', session_id="s-1", streamer_id="h1-0", ttl_s=120, now=1_800_000_000.7)
    assert pyjwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    claims = pyjwt.decode(
        token,
        "k" * 40,
        algorithms=["HS256"],
        audience="pixelfleet-signaling",
        issuer="pixelfleet",
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert (claims["sub"], claims["sid"], claims["stid"]) == ('ac"me/ü', "s-1", "h1-0")
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (1_800_000_000, 1_799_999_995, 1_800_000_120)
    assert len(claims["jti"]) == 16
    head, body, sig = token.split(".")
    assert "=" not in token  # unpadded base64url, as RFC 7515 wants
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(
            f"{head}.{body}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}",
            "k" * 40,
            algorithms=["HS256"],
            options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
