"""The signalling side of matchmaker sessions: what reaches the matchmaker."""

from __future__ import annotations

import asyncio

from pixelfleet.tokens import TokenKeys, mint, verify
from signaling.sessions import SessionGate

KEYS = TokenKeys.hs256("k" * 32)


def test_gate_reports_only_the_first_open_and_the_last_close() -> None:
    events: list[tuple[str, str]] = []

    class Recorder:
        async def report(self, event: str, claims: object, token: str) -> None:
            events.append((event, claims.session_id))  # type: ignore[attr-defined]

    async def run() -> None:
        gate = SessionGate(KEYS, reporter=Recorder())
        a = verify(KEYS, mint(KEYS, tenant="t", session_id="s1", streamer_id="x", ttl_s=60)), "tok"
        for event in ("connected", "connected", "disconnected", "disconnected", "connected"):
            gate.report(event, a)
        await gate.aclose()

    asyncio.run(run())
    assert events == [("connected", "s1"), ("disconnected", "s1"), ("connected", "s1")]
