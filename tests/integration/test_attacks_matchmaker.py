"""Attacks on the matchmaker (issue 11), against a real ``pixelfleet matchmaker`` process
on memory and on Redis, with a local OIDC stand-in whose JWKS rotates mid-test.

Every refusal answers the status and error code docs/matchmaker-api.md promises and
leaves its audit line (``"log":"audit"``) in the process's output."""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import jwt
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from matchmaker.auth import REPORT_HEADER, mint_agent_token
from pixelfleet.net import free_port
from pixelfleet.tokens import TokenKeys, verify_streamer
from tests.support.hosts import heartbeat_body, registration_body
from tests.support.processes import Child

pytestmark = pytest.mark.integration

ISSUER = "https://idp.example.test/"
AUDIENCE = "pixelfleet-matchmaker"
HS_SECRET = "caller-hs256-" + "h" * 52
SESSION_SECRET = "session-secret-" + "s" * 32
ADMIN = "admin-token-0123456789"
REPORT = "report-token-0123456789"
AGENT_KEY = "agent-key-" + "a" * 32
FLEET_TOKEN = "fleet-agent-token-0123456789"
SIGNALING = "wss://sig.example.test/"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_by_hand(claims: dict[str, Any], key: bytes, *, kid: str) -> str:
    """HS256 with any bytes as the key (pyjwt refuses a PEM key; an attacker does not)."""
    signed = f"{_b64(orjson.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': kid}))}.{_b64(orjson.dumps(claims))}"
    return f"{signed}.{_b64(hmac.digest(key, signed.encode(), 'sha256'))}"


@dataclass
class Idp:
    """The identity provider: signing keys by kid, the published set, a count of JWKS reads."""

    keys: dict[str, Any] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    reads: int = 0

    def add(self, kid: str, kind: str = "RSA") -> None:
        self.keys[kid] = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "RSA"
            else ec.generate_private_key(ec.SECP256R1())
        )

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid in self.published:
            key = self.keys[kid]
            if isinstance(key, rsa.RSAPrivateKey):
                jwk, alg = json.loads(RSAAlgorithm.to_jwk(key.public_key())), "RS256"
            else:
                jwk, alg = json.loads(ECAlgorithm.to_jwk(key.public_key())), "ES256"
            out.append({**jwk, "kid": kid, "use": "sig", "alg": alg})
        return {"keys": out}

    def token(self, kid: str, *, sub: str, tenant: str, key: Any = None, **claims: Any) -> str:
        private = key or self.keys[kid]
        alg = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
        now = int(time.time())
        # A fresh jti, as identity providers put in every token: two tokens made in the same
        # second must differ, or the matchmaker's cache of verified tokens would take one for the other.
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "tenant": tenant,
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_hex(8),
            **claims,
        }
        return jwt.encode(body, private, algorithm=alg, headers={"kid": kid})


@pytest.fixture
async def idp() -> AsyncIterator[tuple[Idp, str]]:
    provider = Idp()
    provider.add("k1")
    provider.add("e1", "EC")
    provider.published = ["k1", "e1"]

    async def jwks(_: web.Request) -> web.Response:
        provider.reads += 1
        return web.json_response(provider.jwks())

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield provider, f"http://127.0.0.1:{port}/jwks.json"
    await runner.cleanup()


@dataclass
class Target:
    child: Child
    base: str
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, token: str | None = None, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        h = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
        data = None if body is None else orjson.dumps(body)
        async with self.http.request(method, self.base + path, data=data, headers=h) as r:
            raw = await r.read()
            try:
                return r.status, orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                return r.status, raw

    async def audited(self, *parts: str) -> dict[str, Any]:
        """The audit line carrying every one of ``parts`` (waits for it)."""

        def find() -> dict[str, Any] | None:
            for line in self.child.output(None).splitlines():
                if '"log":"audit"' in line and all(p in line for p in parts):
                    parsed: dict[str, Any] = orjson.loads(line[line.index("{") :])
                    return parsed
            return None

        await self.child.wait_until(lambda: find() is not None, f"an audit line with {parts}", timeout_s=10)
        found = find()
        assert found is not None
        return found


Launch = Callable[..., Awaitable[Target]]


@pytest.fixture
async def launch(start_process: Any, idp: tuple[Idp, str], request: pytest.FixtureRequest) -> AsyncIterator[Launch]:
    http = aiohttp.ClientSession()

    async def start(backend: str = "memory", **extra: str) -> Target:
        port = free_port()
        state = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
        env = {
            **os.environ,
            "PIXELFLEET_STATE_URL": state,
            "PIXELFLEET_MATCHMAKER__PORT": str(port),
            "PIXELFLEET_MATCHMAKER__KEY_PREFIX": f"atk{uuid.uuid4().hex[:8]}",
            "PIXELFLEET_SESSION_TOKEN_SECRET": SESSION_SECRET,
            "PIXELFLEET_ADMIN_TOKEN": ADMIN,
            "PIXELFLEET_AGENT_TOKEN": FLEET_TOKEN,  # legacy: refused once the agent key is set
            "PIXELFLEET_REPORT_TOKEN": REPORT,
            "PIXELFLEET_MATCHMAKER__CALLER_JWT_SECRET": HS_SECRET,
            "PIXELFLEET_MATCHMAKER__CALLER_JWKS_URL": idp[1],
            "PIXELFLEET_MATCHMAKER__CALLER_ISSUER": ISSUER,
            "PIXELFLEET_MATCHMAKER__CALLER_AUDIENCE": AUDIENCE,
            "PIXELFLEET_MATCHMAKER__CALLER_JWKS_MIN_REFETCH_S": "0.3",
            "PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET": AGENT_KEY,
            "PIXELFLEET_MATCHMAKER__SIGNALING_URLS": SIGNALING + "*",
            "PIXELFLEET_MATCHMAKER__DEDICATED_TENANTS": "acme",
            "PIXELFLEET_LOG_FORMAT": "json",
            **extra,
        }
        child = await start_process("matchmaker", env=env)
        await child.wait_for_port(port)
        return Target(child, f"http://127.0.0.1:{port}/api/v1", http)

    yield start
    await http.close()


def agent_token(host: str, *tenants: str, secret: str = AGENT_KEY, ttl_s: int = 3600, now: float | None = None) -> str:
    return mint_agent_token(secret, host_id=host, tenants=list(tenants), ttl_s=ttl_s, now=now)


def host_body(host: str, tenant: str, slots: int = 1, url: str = SIGNALING + "node-1") -> dict[str, Any]:
    return {**registration_body(host, slots=slots, tenant=tenant), "signaling_url": url}


async def ready_host(t: Target, host: str, tenant: str, slots: int = 1) -> dict[str, Any]:
    token = agent_token(host, tenant)
    status, reg = await t.call("POST", "/hosts", token, host_body(host, tenant, slots))
    assert status == 201, reg
    status, reply = await t.call("POST", f"/hosts/{host}/heartbeat", token, heartbeat_body(["ready"] * slots))
    assert status == 200, reply
    return {"registration": reg, "heartbeat": reply}


def hs_caller(sub: str, tenant: str, **claims: Any) -> str:
    """An HS256 caller token; issuer and audience apply to these too once configured."""
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "tenant": tenant, "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, HS_SECRET, "HS256")


# --- caller tokens ------------------------------------------------------------------------


async def test_forged_caller_tokens_are_refused_and_the_jwks_rotates(launch: Launch, idp: tuple[Idp, str]) -> None:
    provider, _ = idp
    t = await launch()
    await ready_host(t, "h1", "acme")
    ok = provider.token("k1", sub="alice", tenant="acme")
    assert (await t.call("POST", "/sessions", ok, {"app": "game"}))[0] == 201  # RS256
    assert (await t.call("POST", "/sessions", provider.token("e1", sub="erin", tenant="acme"), {"app": "game"}))[
        0
    ] == 202  # ES256 (the one slot is taken: queued)
    assert (await t.call("POST", "/sessions", hs_caller("hank", "acme"), {"app": "game"}))[0] == 202  # HS256

    now = int(time.time())
    header_none = _b64(b'{"alg":"none","typ":"JWT"}')
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "tenant": "acme", "exp": now + 300}
    rsa_public_pem = (
        provider.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = {
        "alg_none": f"{header_none}.{_b64(orjson.dumps(claims))}.",
        # Algorithm confusion: HS256 "signed" with the provider's public key.
        "confusion": _hs256_by_hand(claims, rsa_public_pem, kid="k1"),
        "wrong_key": provider.token("k1", sub="mallory", tenant="acme", key=stranger),
        "expired": provider.token("k1", sub="mallory", tenant="acme", exp=now - 120, iat=now - 600),
        "wrong_iss": provider.token("k1", sub="mallory", tenant="acme", iss="https://evil.example.test/"),
        "wrong_aud": provider.token("k1", sub="mallory", tenant="acme", aud="someone-else"),
        "hs_wrong_secret": jwt.encode({**claims}, "x" * 64, algorithm="HS256"),
        "hs384": jwt.encode({**claims}, HS_SECRET, algorithm="HS384"),
        "no_tenant": provider.token("k1", sub="mallory", tenant=""),
        "garbage": "not.a.jwt",
    }
    for name, token in forged.items():
        status, body = await t.call("POST", "/sessions", token, {"app": "game"})
        expected = "token_expired" if name == "expired" else "invalid_token"
        assert (status, body["error"]) == (401, expected), (name, body)
    await t.audited('"event":"auth_refused"', '"reason":"token_expired"')
    await t.audited('"event":"auth_refused"', "algorithm 'none'")
    await t.audited('"event":"auth_refused"', "Invalid issuer")
    await t.audited('"event":"auth_refused"', "Audience doesn't match")
    assert (await t.call("POST", "/sessions", None, {"app": "game"}))[0] == 401

    # Made-up kids cost the provider one read per refetch interval at most, not one per token.
    reads = provider.reads
    for i in range(20):
        made_up = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": f"made-up-{i}"})
        assert (await t.call("POST", "/sessions", made_up, {"app": "game"}))[0] == 401
    assert provider.reads - reads <= 3

    # Rotation: k2 replaces k1; a k2 token passes once the set is read again, k1 no longer does.
    provider.add("k2")
    provider.published = ["k2", "e1"]
    fresh = provider.token("k2", sub="alice", tenant="acme")

    async def k2_accepted() -> bool:
        return (await t.call("GET", "/queue/t-0000", fresh))[0] == 404  # authenticated: no such ticket

    await t.child.wait_until(k2_accepted, "the rotated key to be accepted", timeout_s=10)
    # (A token already verified is remembered until its exp; a new one with k1 is refused.)
    status, body = await t.call("GET", "/queue/t-0000", provider.token("k1", sub="alice", tenant="acme"))
    assert (status, body["error"]) == (401, "invalid_token")


# --- tenants and subjects --------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_nothing_of_another_caller_can_be_read_followed_cancelled_or_taken(
    launch: Launch, idp: tuple[Idp, str], backend: str
) -> None:
    provider, _ = idp
    t = await launch(
        backend,
        PIXELFLEET_MATCHMAKER__QUOTA_TENANT_TICKETS="3",
        PIXELFLEET_MATCHMAKER__QUOTA_SUBJECT_SESSIONS="1",
        PIXELFLEET_MATCHMAKER__QUOTA_SUBJECT_STREAMS="1",
    )
    await ready_host(t, "ha", "acme")
    await ready_host(t, "hb", "beta")
    alice, anna = provider.token("k1", sub="alice", tenant="acme"), provider.token("k1", sub="anna", tenant="acme")
    bob = provider.token("k1", sub="bob", tenant="beta")

    status, first = await t.call("POST", "/sessions", alice, {"app": "game", "client_key": "seat-1"})
    assert status == 201, first
    await t.audited('"event":"session_start"', '"subject":"alice"', first["session_id"])
    status, waiting = await t.call("POST", "/sessions", anna, {"app": "game"})
    assert status == 202, waiting
    ticket = waiting["ticket_id"]

    for intruder in (bob, alice):  # another tenant, and another subject of the same tenant
        for method, path in (
            ("GET", f"/queue/{ticket}"),
            ("GET", f"/queue/{ticket}/events"),
            ("DELETE", f"/queue/{ticket}"),
        ):
            status, body = await t.call(method, path, intruder)
            assert (status, body["error"]) == (404, "unknown_session"), (method, path, body)
        status, _ = await t.call("GET", f"/queue/{ticket}/events?access_token={intruder}")
        assert status == 404
    await t.audited('"event":"access_refused"', '"reason":"not_owner"', '"subject":"bob"', ticket)
    await t.audited('"event":"access_refused"', '"reason":"not_owner"', '"subject":"alice"', ticket)
    for guess in ("t-0000000000000000", ticket[:-1] + ("0" if ticket[-1] != "0" else "1")):
        assert (await t.call("GET", f"/queue/{guess}", bob))[0] == 404

    # None of that touched it: the owner still reads it waiting.
    status, mine = await t.call("GET", f"/queue/{ticket}", anna)
    assert (status, mine["status"]) == (200, "waiting")

    # Someone else's client key names nothing of theirs: no session, no token.
    status, other = await t.call("POST", "/sessions", anna, {"app": "game", "client_key": "seat-1"})
    assert status == 202 and other.get("session_id") is None and "token" not in other
    # ... while the key's owner gets its own session back, its session quota (1) notwithstanding;
    # a second session it is refused.
    status, again = await t.call("POST", "/sessions", alice, {"app": "game", "client_key": "seat-1"})
    assert (status, again["session_id"]) == (201, first["session_id"])
    status, body = await t.call("POST", "/sessions", alice, {"app": "game"})
    assert (status, body["error"]) == (429, "quota_exceeded")
    await t.audited('"limit":"quota_subject_sessions"', '"subject":"alice"')

    # Tenant A at its ticket quota (3) does not block tenant B.
    amy = provider.token("k1", sub="amy", tenant="acme")
    status, amy_ticket = await t.call("POST", "/sessions", amy, {"app": "game", "client_key": "amy-1"})
    assert status == 202
    status, body = await t.call("POST", "/sessions", provider.token("k1", sub="ava", tenant="acme"), {"app": "game"})
    assert (status, body["error"]) == (429, "quota_exceeded")
    await t.audited('"event":"limit_refused"', '"limit":"quota_tenant_tickets"', '"tenant":"acme"')
    status, back = await t.call("POST", "/sessions", amy, {"app": "game", "client_key": "amy-1"})  # a reload
    assert (status, back["ticket_id"]) == (202, amy_ticket["ticket_id"])
    status, bobs = await t.call("POST", "/sessions", bob, {"app": "game"})
    assert status == 201
    # Nor can B's own session token send anything to A's session.
    status, body = await t.call(
        "POST",
        f"/sessions/{first['session_id']}/events",
        bobs["token"],
        {"event": "disconnected"},
        {REPORT_HEADER: REPORT},
    )
    assert (status, body["error"]) == (403, "wrong_session")
    await t.audited('"reason":"wrong_session"', '"tenant":"beta"')

    # The owner follows it (a browser's EventSource passes access_token) ...
    async with t.http.get(f"{t.base}/queue/{ticket}/events?access_token={anna}") as r:
        assert r.status == 200
        assert (await r.content.readline()).startswith(b"event: waiting")

    # ... and when its stream closes (no client key) the ticket is cancelled, by its owner's doing.
    async def cancelled() -> bool:
        status, body = await t.call("GET", f"/queue/{ticket}", anna)
        return bool(status == 200 and body["status"] == "cancelled")

    await t.child.wait_until(cancelled, "the owner's ticket cancelled after its stream closed", timeout_s=10)

    # One open event stream per subject: amy's second is refused while the first is open.
    events = f"{t.base}/queue/{amy_ticket['ticket_id']}/events?access_token={amy}"
    async with t.http.get(events) as first_stream:
        assert first_stream.status == 200
        await first_stream.content.readline()
        async with t.http.get(events) as second_stream:
            assert second_stream.status == 429
    await t.audited('"limit":"quota_subject_streams"', '"subject":"amy"')


# --- signalling's reports ------------------------------------------------------------------


async def test_a_player_cannot_report_its_own_connect(launch: Launch) -> None:
    t = await launch()
    await ready_host(t, "h1", "acme")
    status, got = await t.call("POST", "/sessions", hs_caller("pat", "acme"), {"app": "game"})
    assert status == 201
    path = f"/sessions/{got['session_id']}/events"
    for event in ("connected", "disconnected"):
        status, body = await t.call("POST", path, got["token"], {"event": event})
        assert (status, body["error"]) == (403, "report_token_required")
    await t.audited('"reason":"report_token_required"', got["session_id"])
    assert (await t.call("POST", path, got["token"], {"event": "activity"}))[0] == 200  # the page's own report
    headers = {REPORT_HEADER: REPORT}
    assert (await t.call("POST", path, got["token"], {"event": "connected"}, headers))[0] == 200
    wrong = {REPORT_HEADER: "x" + REPORT}
    assert (await t.call("POST", path, got["token"], {"event": "disconnected"}, wrong))[0] == 403


# --- agents -----------------------------------------------------------------------------------


async def test_a_host_token_speaks_for_its_host_and_tenants_only(launch: Launch) -> None:
    t = await launch()
    h1 = agent_token("h1", "acme")
    expired = agent_token("h1", "acme", ttl_s=10, now=time.time() - 100)
    none_header = _b64(b'{"alg":"none"}')
    alg_none = f"{none_header}.{_b64(orjson.dumps({'hid': 'h1', 'tenants': ['acme']}))}."
    both = agent_token("h3", "acme", "beta")
    mixed = registration_body("h3", slots=[("acme", "game"), ("beta", "game")]) | {"signaling_url": SIGNALING}
    cases: list[tuple[str, str | None, dict[str, Any], int, str]] = [
        ("another host", h1, host_body("h2", "acme"), 403, "forbidden"),
        ("another tenant", h1, host_body("h1", "beta"), 403, "forbidden"),
        ("the fleet token", FLEET_TOKEN, host_body("h1", "acme"), 401, "invalid_token"),
        ("a forged token", agent_token("h1", "acme", secret="z" * 40), host_body("h1", "acme"), 401, "invalid_token"),
        ("an expired token", expired, host_body("h1", "acme"), 401, "token_expired"),
        ("a caller token", hs_caller("h1", "acme"), host_body("h1", "acme"), 401, "invalid_token"),
        ("alg none", alg_none, host_body("h1", "acme"), 401, "invalid_token"),
        ("no token", None, host_body("h1", "acme"), 401, "unauthorized"),
        ("a foreign signaling_url", h1, host_body("h1", "acme", url="wss://evil.test/"), 400, "signaling_url_refused"),
        ("a dedicated tenant mixed with another", both, mixed, 403, "forbidden"),
    ]
    for name, token, body, status, code in cases:
        got, reply = await t.call("POST", "/hosts", token, body)
        assert (got, reply["error"]) == (status, code), (name, reply)
    await t.audited('"event":"access_refused"', '"subject":"host:h1"', '"host_id":"h2"')
    await t.audited('"reason":"signaling_url_refused"', "evil.test")

    # Its own host: registered, with a streamer credential per slot, renewed on heartbeats.
    status, reg = await t.call("POST", "/hosts", h1, host_body("h1", "acme", slots=2))
    assert status == 201, reg
    keys = TokenKeys.hs256(SESSION_SECRET)
    for index in ("0", "1"):
        claims = verify_streamer(keys, reg["streamer_tokens"][index])
        assert (claims.streamer_id, claims.host_id, claims.tenant) == (f"h1-{index}", "h1", "acme")
    await t.audited('"event":"admin_action"', '"action":"register_host"', '"host_id":"h1"')
    status, reply = await t.call("POST", "/hosts/h1/heartbeat", h1, heartbeat_body(["ready", "ready"]))
    assert status == 200 and verify_streamer(keys, reply["streamer_tokens"]["1"]).streamer_id == "h1-1"
    # An agent that says what it holds gets credentials again only when they are needed.
    held = min(verify_streamer(keys, tok).expires_at for tok in reply["streamer_tokens"].values())

    async def delta(seq: int, held_until: float) -> dict[str, Any]:
        body = {**heartbeat_body([]), "seq": seq, "full": False, "credentials_expire_at": held_until}
        status, reply = await t.call("POST", "/hosts/h1/heartbeat", h1, body)
        assert status == 200, reply
        return cast("dict[str, Any]", reply)

    await t.call("POST", "/hosts/h1/heartbeat", h1, {**heartbeat_body(["ready", "ready"]), "seq": 1})
    assert "streamer_tokens" not in await delta(2, held)  # more than half a lifetime left
    assert "streamer_tokens" in await delta(3, time.time() + 10)  # less: renewed
    assert "streamer_tokens" in await delta(4, 0.0)  # a slot holds none
    # Nobody else heartbeats it dead.
    h2 = agent_token("h2", "acme")
    status, reply = await t.call("POST", "/hosts/h1/heartbeat", h2, heartbeat_body(["dead", "dead"]))
    assert (status, reply["error"]) == (403, "forbidden")
    status, slots = await t.call("GET", "/admin/slots", ADMIN)
    assert {s["state"] for s in slots} == {"ready"}


# --- rate limits, trusted proxies, admin ------------------------------------------------------


async def test_rate_limits_per_address_and_subject_behind_a_trusted_proxy(launch: Launch) -> None:
    t = await launch(
        PIXELFLEET_MATCHMAKER__RATE_IP_PER_S="0.001",
        PIXELFLEET_MATCHMAKER__RATE_IP_BURST="2",
        PIXELFLEET_MATCHMAKER__RATE_SUBJECT_PER_S="0.001",
        PIXELFLEET_MATCHMAKER__RATE_SUBJECT_BURST="3",
        PIXELFLEET_MATCHMAKER__TRUSTED_PROXIES="127.0.0.1/32",
    )
    sam, sue = hs_caller("sam", "acme"), hs_caller("sue", "acme")

    async def ask(token: str, client: str) -> int:
        status, _ = await t.call("GET", "/queue/t-none", token, headers={"X-Forwarded-For": f"{client}, 127.0.0.1"})
        return status

    assert [await ask(sam, "203.0.113.7") for _ in range(3)] == [404, 404, 429]  # the address's burst is 2
    await t.audited('"limit":"rate_limited_ip"', '"source":"203.0.113.7"')
    assert await ask(sue, "203.0.113.8") == 404  # another address: its own bucket
    assert await ask(sam, "203.0.113.9") == 404  # sam's third request passes the subject's burst of 3
    assert await ask(sam, "203.0.113.10") == 429  # the fourth does not, from any address
    await t.audited('"limit":"rate_limited_subject"', '"subject":"sam"')

    # Operators: a wrong admin token is refused and audited, an action is audited.
    assert (await t.call("GET", "/admin/hosts", "wrong-admin-token"))[0] == 401
    await t.audited('"event":"auth_refused"', '"subject":"admin"')
    await ready_host(t, "h9", "acme")
    assert (await t.call("POST", "/admin/hosts/h9/drain", ADMIN, {"draining": True}))[0] == 200
    await t.audited('"event":"admin_action"', '"action":"admin_drain"', '"host_id":"h9"')
