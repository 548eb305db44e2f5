"""Streamer credentials: scoped to one streamer id, short-lived, never a session token."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pixelfleet.tokens import InvalidToken, TokenKeys, mint, mint_streamer, verify, verify_streamer

KEYS = TokenKeys.hs256("k" * 32)


def test_round_trip() -> None:
    token = mint_streamer(KEYS, tenant="acme", host_id="h1", streamer_id="h1-0", ttl_s=900, now=1000)
    claims = verify_streamer(KEYS, token, now=1500)
    assert (claims.tenant, claims.host_id, claims.streamer_id, claims.expires_at) == ("acme", "h1", "h1-0", 1900)
    assert claims.token_id
    decoded = jwt.decode(
        token, "k" * 32, algorithms=["HS256"], audience="pixelfleet-streamer", options={"verify_exp": False}
    )
    assert decoded["iss"] == "pixelfleet" and decoded["hid"] == "h1"


def test_expired_and_not_yet_valid_refused() -> None:
    token = mint_streamer(KEYS, tenant="acme", host_id="h", streamer_id="s", ttl_s=60, now=1000)
    with pytest.raises(InvalidToken, match="expired"):
        verify_streamer(KEYS, token, now=1100)
    with pytest.raises(InvalidToken, match="not yet valid"):
        verify_streamer(KEYS, token, now=900)


def test_session_token_and_streamer_credential_do_not_cross() -> None:
    session = mint(KEYS, tenant="acme", session_id="s", streamer_id="h1-0", ttl_s=60)
    streamer = mint_streamer(KEYS, tenant="acme", host_id="h1", streamer_id="h1-0", ttl_s=60)
    with pytest.raises(InvalidToken):
        verify_streamer(KEYS, session)
    with pytest.raises(InvalidToken):
        verify(KEYS, streamer)


@pytest.mark.parametrize("forge", ["other-key", "alg-none", "tampered", "garbage", "no-stid", "stid-not-string"])
def test_forgeries_refused(forge: str) -> None:
    good = mint_streamer(KEYS, tenant="acme", host_id="h", streamer_id="x", ttl_s=60)
    claims = jwt.decode(good, options={"verify_signature": False})
    token = {
        "other-key": mint_streamer(TokenKeys.hs256("z" * 32), tenant="acme", host_id="h", streamer_id="x", ttl_s=60),
        "alg-none": jwt.encode(claims, "", algorithm="none"),
        "tampered": jwt.encode({**claims, "stid": "someone-else"}, "k" * 31 + "x", algorithm="HS256"),
        "garbage": "not.a.token",
        "no-stid": jwt.encode({k: v for k, v in claims.items() if k != "stid"}, "k" * 32, algorithm="HS256"),
        "stid-not-string": jwt.encode({**claims, "stid": ["x"]}, "k" * 32, algorithm="HS256"),
    }[forge]
    with pytest.raises(InvalidToken):
        verify_streamer(KEYS, token)


def test_eddsa_verify_only_nodes_and_no_algorithm_confusion() -> None:
    private = Ed25519PrivateKey.generate()
    priv_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signer = TokenKeys.eddsa(priv_pem, pub_pem)
    verifier = TokenKeys.eddsa(None, pub_pem)
    token = mint_streamer(signer, tenant="t", host_id="h", streamer_id="x", ttl_s=60)
    assert verify_streamer(verifier, token).streamer_id == "x"
    with pytest.raises(ValueError):
        mint_streamer(verifier, tenant="t", host_id="h", streamer_id="x", ttl_s=60)
    with pytest.raises(InvalidToken):
        verify_streamer(verifier, mint_streamer(KEYS, tenant="t", host_id="h", streamer_id="x", ttl_s=60))
    with pytest.raises(InvalidToken):  # HS256 signed with the public key's PEM
        hs = jwt.decode(token, options={"verify_signature": False})
        verify_streamer(verifier, jwt.encode(hs, "p" * 64, algorithm="HS256"))


def test_streamer_token_command_mints_a_credential_signalling_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    """``pixelfleet streamer-token``: the credential a UE build started by hand carries."""
    from pixelfleet.cli import main

    argv = ["streamer-token", "--streamer", "MyApp", "--host", "ue-1", "--tenant", "acme", "--ttl-s", "600"]
    assert main(argv, environ={"PIXELFLEET_SESSION_TOKEN_SECRET": "k" * 32}) == 0
    token = capsys.readouterr().out.strip()
    claims = verify_streamer(KEYS, token)
    assert (claims.tenant, claims.host_id, claims.streamer_id) == ("acme", "ue-1", "MyApp")
    assert claims.expires_at - jwt.decode(token, options={"verify_signature": False})["iat"] == 600


def test_streamer_token_command_mints_an_sfus_credential(capsys: pytest.CaptureFixture[str]) -> None:
    """``--sfu``: the same credential, naming the SFU's own id (its ``endpointId``) and the
    one tenant it may subscribe to; the host defaults to the id. One of the two is required."""
    from pixelfleet.cli import main

    env = {"PIXELFLEET_SESSION_TOKEN_SECRET": "k" * 32}
    assert main(["streamer-token", "--sfu", "sfu-eu-1", "--tenant", "acme"], environ=env) == 0
    claims = verify_streamer(KEYS, capsys.readouterr().out.strip())
    assert (claims.tenant, claims.host_id, claims.streamer_id) == ("acme", "sfu-eu-1", "sfu-eu-1")
    for argv in (["--tenant", "acme"], ["--sfu", "a", "--streamer", "b", "--tenant", "acme"]):
        with pytest.raises(SystemExit):
            main(["streamer-token", *argv], environ=env)


def test_streamer_token_command_needs_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    from pixelfleet.cli import main

    assert main(["streamer-token", "--streamer", "s", "--host", "h", "--tenant", "t"], environ={}) == 2
    assert "PIXELFLEET_SESSION_TOKEN_SECRET" in capsys.readouterr().err
