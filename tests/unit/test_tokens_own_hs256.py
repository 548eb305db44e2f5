"""The HS256 fast path of ``verify`` (``_own_hs256``) against pyjwt: for every token,
ours or not, well-formed or not, ``verify`` gives exactly what pyjwt alone gives."""

from __future__ import annotations

import base64
import hmac
import time
from typing import Any

import jwt
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelfleet import tokens
from pixelfleet.tokens import AUDIENCE, ISSUER, InvalidToken, SessionClaims, TokenKeys, mint, verify

SECRET = "k" * 32
KEYS = TokenKeys.hs256(SECRET)
NOW = int(time.time())
GOOD: dict[str, Any] = {
    "iss": ISSUER,
    "aud": AUDIENCE,
    "sub": "acme",
    "sid": "s-1",
    "stid": "h1-0",
    "iat": NOW - 10,
    "nbf": NOW - 15,
    "exp": NOW + 60,
    "jti": "j-1",
}


def ours(claims: Any, secret: str = SECRET) -> str:
    """Signed as ``_hs256`` signs (our header), whatever the claims are."""
    head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = head + b"." + base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.digest(secret.encode(), body, "sha256")).rstrip(b"=")
    return (body + b"." + signature).decode()


def outcome(token: str, fast: bool, monkeypatch: pytest.MonkeyPatch) -> SessionClaims | str:
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(tokens, "_own_hs256", lambda keys, token: None)
        try:
            return verify(KEYS, token, allow_expired=True)
        except InvalidToken:
            return "refused"


def same_answer(token: str, monkeypatch: pytest.MonkeyPatch) -> SessionClaims | str:
    fast, slow = outcome(token, True, monkeypatch), outcome(token, False, monkeypatch)
    assert fast == slow, token
    return fast


def without(name: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != name}


CLAIM_CASES: dict[str, Any] = {
    "good": GOOD,
    "extra claims": {**GOOD, "tp": "00-abc", "x": [1, 2]},
    "no nbf": without("nbf"),
    "audience list": {**GOOD, "aud": [AUDIENCE, "other"]},
    "wrong audience": {**GOOD, "aud": "elsewhere"},
    "wrong issuer": {**GOOD, "iss": "someone"},
    "issuer not a string": {**GOOD, "iss": 7},
    "sub not a string": {**GOOD, "sub": 7},
    "jti not a string": {**GOOD, "jti": 7},
    "iat as text": {**GOOD, "iat": str(NOW)},
    "iat as float": {**GOOD, "iat": NOW - 0.5},
    "iat as bool": {**GOOD, "iat": True},
    "iat in the future": {**GOOD, "iat": NOW + 3600},
    "nbf in the future": {**GOOD, "nbf": NOW + 3600},
    "nbf as float": {**GOOD, "nbf": NOW - 20.5},
    "exp as text": {**GOOD, "exp": "soon"},
    "exp as float": {**GOOD, "exp": NOW + 60.5},
    "sid null": {**GOOD, "sid": None},
    "not an object": [GOOD],
    **{f"no {name}": without(name) for name in ("exp", "iat", "sub", "sid", "stid", "jti", "aud", "iss")},
}


# pyjwt also takes times it can turn into integers (text, floats, booleans): the fast
# path leaves those to it.
ACCEPTED = {"good", "extra claims", "no nbf", "audience list"}
ACCEPTED |= {"iat as text", "iat as float", "iat as bool", "nbf as float", "exp as float"}


@pytest.mark.parametrize("case", sorted(CLAIM_CASES))
def test_claims_signed_as_ours_get_pyjwts_answer(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    answer = same_answer(ours(CLAIM_CASES[case]), monkeypatch)
    assert isinstance(answer, SessionClaims) == (case in ACCEPTED), answer


def test_the_good_token_takes_the_fast_path_and_a_minted_one_too() -> None:
    assert tokens._own_hs256(KEYS, ours(GOOD)) == GOOD
    minted = mint(KEYS, tenant="acme", session_id="s", streamer_id="x", ttl_s=60)
    assert tokens._own_hs256(KEYS, minted) is not None


def _resigned_by_pyjwt(**headers: Any) -> str:
    return jwt.encode(GOOD, SECRET, algorithm="HS256", headers=headers or None)


TOKEN_CASES: dict[str, str] = {
    "other key": ours(GOOD, "z" * 32),
    "pyjwt header with kid": _resigned_by_pyjwt(kid="k1"),
    "alg none": jwt.encode(GOOD, "", algorithm="none"),
    "padded signature": ours(GOOD) + "=",
    "no signature": ours(GOOD).rpartition(".")[0] + ".",
    "two parts": ours(GOOD).rpartition(".")[0],
    "four parts": ours(GOOD) + ".x",
    "non-ascii": ours(GOOD) + "é",
    "empty": "",
    "garbage": "not.a.token",
}


@pytest.mark.parametrize("case", sorted(TOKEN_CASES))
def test_tokens_not_written_as_ours_get_pyjwts_answer(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    same_answer(TOKEN_CASES[case], monkeypatch)


@settings(max_examples=300, deadline=None)
@given(at=st.integers(min_value=0), char=st.sampled_from("AQgw_-=.0aZ9é"))
def test_any_one_character_changed_gets_pyjwts_answer(at: int, char: str) -> None:
    token = ours(GOOD)
    i = at % len(token)
    changed = token[:i] + char + token[i + 1 :]
    with pytest.MonkeyPatch.context() as monkeypatch:
        same_answer(changed, monkeypatch)
