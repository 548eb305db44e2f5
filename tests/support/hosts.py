"""A GPU host as the matchmaker's agent API sees it, for tests that play the agent.

The bodies follow ``POST /api/v1/hosts`` and its heartbeat; the defaults are the
smallest valid host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson

__all__ = ["heartbeat_body", "register_host", "registration_body"]


def registration_body(
    host: str = "h1",
    *,
    boot: str = "b1",
    slots: int | Sequence[tuple[str, str]] = 1,
    tenant: str = "acme",
    app: str = "game",
) -> dict[str, Any]:
    """``slots``: a number of slots all serving ``(tenant, app)``, or one ``(tenant, app)``
    per slot."""
    served = [(tenant, app)] * slots if isinstance(slots, int) else list(slots)
    return {
        "host_id": host,
        "boot_id": boot,
        "region": "eu",
        "gpu_model": "L4",
        "signaling_url": "ws://127.0.0.1:1",
        "slots": [{"index": i, "tenant": t, "app": a, "streamer_id": f"{host}-{i}"} for i, (t, a) in enumerate(served)],
    }


def heartbeat_body(
    states: Sequence[str] = ("ready",), *, boot: str = "b1", reset_for: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """One entry per slot, in index order."""
    return {
        "boot_id": boot,
        "slots": [{"index": i, "state": s, "reset_for": (reset_for or {}).get(i)} for i, s in enumerate(states)],
    }


async def register_host(
    http: aiohttp.ClientSession, api_url: str, agent_token: str, host: str = "h1", **registration: Any
) -> tuple[int, Any]:
    """``POST {api_url}/hosts`` as the agent: (status, parsed body or None)."""
    async with http.post(
        f"{api_url}/hosts",
        data=orjson.dumps(registration_body(host, **registration)),
        headers={"Authorization": f"Bearer {agent_token}"},
    ) as r:
        raw = await r.read()
        return r.status, (orjson.loads(raw) if raw else None)
