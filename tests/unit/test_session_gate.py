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


def test_gate_from_settings(tmp_path: object) -> None:
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from signaling.config import Settings
    from signaling.sessions import gate_from_settings

    assert gate_from_settings(Settings()) is None  # no key: Epic's open mode
    hs = gate_from_settings(Settings(session_token_secret="s" * 32))
    assert hs is not None and hs.required and hs.keys.algorithm == "HS256"
    optional = gate_from_settings(Settings(session_token_secret="s" * 32, require_session_token=False))
    assert optional is not None and not optional.required
    private = Ed25519PrivateKey.generate()
    pem = Path(str(tmp_path)) / "pub.pem"
    pem.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    ed = gate_from_settings(Settings(session_token_public_key_file=str(pem)))
    assert ed is not None and ed.keys.algorithm == "EdDSA" and ed.keys.signing_key is None
