"""Serving a ``prometheus-client`` registry from aiohttp, shared by every service.

Each server owns its own ``CollectorRegistry`` (never the process-wide default), so two
servers in one process (``pixelfleet up``, the tests) never share or clash on metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CollectorRegistry", "exposition_handler", "bounded"]

Refresh = Callable[[], Awaitable[None]]


def exposition_handler(
    registry: CollectorRegistry, refresh: Refresh | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A ``GET /metrics`` handler. ``refresh`` runs first, for gauges that need an
    await to read (the matchmaker's store), so they are read only when scraped."""

    async def metrics(request: web.Request) -> web.Response:
        if refresh is not None:
            await refresh()
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


def bounded(value: str, known: frozenset[str], other: str = "other") -> str:
    """A label value from a fixed set: anything else is ``other`` (labels stay bounded)."""
    return value if value in known else other
