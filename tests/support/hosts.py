"""A GPU host as the matchmaker's agent API sees it, for tests that play the agent.

The bodies follow ``POST /api/v1/hosts`` and its heartbeat (as dicts for tests that send
raw requests, as models for the typed client); the defaults are the smallest valid host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from matchmaker.client import MatchmakerApi
from matchmaker.models import Heartbeat, Host, HostRegistration

__all__ = ["heartbeat", "heartbeat_body", "register_host", "registration", "registration_body"]


def registration_body(
    host: str = "h1",
    *,
    boot: str = "b1",
    slots: int | Sequence[tuple[str, str]] = 1,
    tenant: str = "acme",
    app: str = "game",
    gpu_share: float | None = None,
) -> dict[str, Any]:
    """``slots``: a number of slots all serving ``(tenant, app)``, or one ``(tenant, app)``
    per slot. ``gpu_share``: sent for every slot (None: left to the matchmaker's default)."""
    served = [(tenant, app)] * slots if isinstance(slots, int) else list(slots)
    share = {} if gpu_share is None else {"gpu_share": gpu_share}
    return {
        "host_id": host,
        "boot_id": boot,
        "region": "eu",
        "gpu_model": "L4",
        "signaling_url": "ws://127.0.0.1:1",
        "slots": [
            {"index": i, "tenant": t, "app": a, "streamer_id": f"{host}-{i}", **share}
            for i, (t, a) in enumerate(served)
        ],
    }


def heartbeat_body(
    states: Sequence[str] = ("ready",), *, boot: str = "b1", reset_for: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """One entry per slot, in index order."""
    return {
        "boot_id": boot,
        "slots": [{"index": i, "state": s, "reset_for": (reset_for or {}).get(i)} for i, s in enumerate(states)],
    }


def registration(host: str = "h1", **kw: Any) -> HostRegistration:
    """``registration_body`` as the typed model the client sends."""
    return msgspec.convert(registration_body(host, **kw), HostRegistration)


def heartbeat(
    states: Sequence[str] = ("ready",), *, boot: str = "b1", reset_for: Mapping[int, str] | None = None
) -> Heartbeat:
    """``heartbeat_body`` as the typed model the client sends."""
    return msgspec.convert(heartbeat_body(states, boot=boot, reset_for=reset_for), Heartbeat)


async def register_host(api: MatchmakerApi, host: str = "h1", **kw: Any) -> Host:
    """``POST /api/v1/hosts`` as the agent, through the typed client (``api`` holds the
    agent token); an error answer raises ``matchmaker.client.ApiError``."""
    return await api.register_host(registration(host, **kw))
