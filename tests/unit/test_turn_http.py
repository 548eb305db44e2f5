"""``GET /api/turn-credentials`` on an in-process aiohttp app."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from turn.config import TurnSettings
from turn.credentials import verify
from turn.http import PATH, credentials_route
from turn.providers import RestSecretProvider, StaticProvider

NOW = 1_795_809_212.0
URLS = ("stun:t:3478", "turn:t:3478?transport=udp", "turn:t:3478?transport=tcp")
SETTINGS = TurnSettings(provider="rest-secret", urls=URLS, secrets=("s",), ttl_s=900)


def app_with(route: web.RouteDef) -> web.Application:
    app = web.Application()
    app.add_routes([route])
    return app


async def test_fresh_rest_credentials(aiohttp_client: Any) -> None:
    provider = RestSecretProvider(URLS, ["s"], clock=lambda: NOW)
    client = await aiohttp_client(app_with(credentials_route(provider, SETTINGS, clock=lambda: NOW)))
    resp = await client.get(PATH)
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["ttl"] == 900 and body["expiresAt"] == int(NOW) + 900
    stun, turn = body["iceServers"]
    assert stun == {"urls": ["stun:t:3478"]} and turn["urls"] == list(URLS[1:])
    assert verify(["s"], turn["username"], turn["credential"], NOW)
    user = turn["username"].split(":", 1)[1]
    assert user.startswith("http-")  # opaque, never the client's address
    again = await (await client.get(PATH)).json()
    assert again["iceServers"][1]["username"] != turn["username"]


async def test_user_hook_and_static_provider(aiohttp_client: Any) -> None:
    route = credentials_route(
        StaticProvider(URLS, "dev", "pw"), SETTINGS, path="/ice", user_for=lambda request: "ignored"
    )
    client = await aiohttp_client(app_with(route))
    body = await (await client.get("/ice")).json()
    assert body["ttl"] is None and body["expiresAt"] is None
    assert body["iceServers"][1]["username"] == "dev"
