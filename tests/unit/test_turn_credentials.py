"""The coturn ``use-auth-secret`` scheme, as plain calls (turn/credentials.py is pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turn.credentials import (
    Credential,
    expiry_of,
    ice_servers,
    issue,
    password_for,
    split_urls,
    verify,
)

NOW = 1_795_809_212


def test_known_answer_matches_openssl() -> None:
    # echo -n "1795809272:Player0" | openssl dgst -sha1 -hmac north-secret -binary | base64
    cred = issue("north-secret", "Player0", 60, NOW)
    assert cred == Credential("1795809272:Player0", "JasWysRkWKWatNgpJzPyCsFBJ8o=", 1795809272)
    assert password_for(b"north-secret", "1795809272") == "2VhScXLPld/wDNQ/7F2JRnJFmBo="


def test_username_carries_the_expiry_not_the_issue_time() -> None:
    cred = issue("s", "sess-6f1c", 600, NOW + 0.9)
    assert cred.username == f"{NOW + 600}:sess-6f1c"
    assert cred.expires_at == NOW + 600 == expiry_of(cred.username)
    assert len(cred.password) == 28 and cred.password.endswith("=")


def test_empty_user_gives_a_bare_timestamp() -> None:
    assert issue("s", "", 10, NOW).username == str(NOW + 10)


def test_separator_in_user_is_refused() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        issue("s", "a:b", 10, NOW)


def test_repr_hides_the_password() -> None:
    cred = issue("s", "p", 10, NOW)
    assert cred.password not in repr(cred)


@pytest.mark.parametrize(
    "username,expiry",
    [
        ("1795809272:Player0", 1795809272),
        ("Player0:1795809272", 1795809272),
        ("1795809272", 1795809272),
        ("Player0", None),
        ("a:b", None),
        ("", None),
    ],
)
def test_expiry_is_read_like_coturn(username: str, expiry: int | None) -> None:
    assert expiry_of(username) == expiry


def test_verify_follows_coturn_rules() -> None:
    cred = issue("new", "p", 60, NOW)
    assert verify(["new", "old"], cred.username, cred.password, NOW)
    assert verify(["new", "old"], cred.username, cred.password, NOW + 60)  # expiry >= now
    assert not verify(["new", "old"], cred.username, cred.password, NOW + 61)  # expired
    old = issue("old", "p", 60, NOW)
    assert verify(["new", "old"], old.username, old.password, NOW)  # rotation
    assert not verify(["new"], old.username, old.password, NOW)  # retired
    tampered = cred.password[:-2] + ("A=" if cred.password[-2] != "A" else "B=")
    assert not verify(["new"], cred.username, tampered, NOW)
    assert not verify(["new"], cred.username.replace(":p", ":q"), cred.password, NOW)


@given(secret=st.text(min_size=1), user=st.text().filter(lambda u: ":" not in u), ttl=st.integers(1, 10 * 365 * 86400))
def test_issued_credentials_verify(secret: str, user: str, ttl: int) -> None:
    cred = issue(secret, user, ttl, NOW)
    assert verify([secret], cred.username, cred.password, NOW)
    assert not verify([secret], cred.username, cred.password, NOW + ttl + 1)


def test_split_urls() -> None:
    stun, turn = split_urls(["stun:h:3478", " turn:h:3478?transport=udp", "TURNS:h:443?transport=tcp"])
    assert stun == ("stun:h:3478",)
    assert turn == ("turn:h:3478?transport=udp", "TURNS:h:443?transport=tcp")
    with pytest.raises(ValueError, match="not a stun"):
        split_urls(["https://h"])


def test_ice_servers_shape() -> None:
    cred = issue("s", "p", 60, NOW)
    assert ice_servers(["stun:h"], ["turn:h", "turns:h:443?transport=tcp"], cred) == [
        {"urls": ["stun:h"]},
        {"urls": ["turn:h", "turns:h:443?transport=tcp"], "username": cred.username, "credential": cred.password},
    ]
    assert ice_servers([], ["turn:h"], None) == []
    assert ice_servers(["stun:h"], [], cred) == [{"urls": ["stun:h"]}]
