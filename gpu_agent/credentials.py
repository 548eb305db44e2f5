"""Streamer credentials on the agent's side: when a slot may launch, and when to renew.

Signalling checks a streamer's credential only when the streamer connects, and a UE
process cannot be handed a new URL while it runs, so the agent renews a credential by
restarting the slot's streamer with the newest one (docs/protocol.md "Streamer
credentials"). The decisions are pure functions here; ``slots.py`` acts on them.

- **Launch**: with a credential that has not expired, or without one only where
  signalling answered that it takes streamers without (open mode). A slot waits, rather
  than launching a streamer signalling would refuse and restarting it over and over.
- **Renew before expiry**: an idle streamer (READY, no player since its last reset,
  no reset pending) that signalling lists, whose launch credential has ``lead_s`` or
  less left, once a newer credential is known.
- **Renew at once**: an idle streamer whose launch credential has expired and that
  signalling does not list (it could never reconnect), once a newer one is known.
- A streamer in a session is never restarted for its credential: the session's end
  restarts (or resets) it, and that launch takes the newest.

A renewal before expiry has two phases, so it never ends a session the agent cannot see
yet (assigned, its player not connected): the slot is first reported ``draining``; the
matchmaker takes it out of placement and acknowledges, or names it in the reply's
``busy`` when a session already holds it. Only an acknowledged, not busy slot restarts
(``acknowledged``); a busy one keeps its streamer (the session's end renews it). Renewals
take turns (``RenewalTurns``): at most ``credential_renew_concurrency`` slots of a host at
once, oldest credential first, each from ``draining`` until READY again; so that they all
fit before expiry, a slot is due ``lead_s`` before its credential expires, which grows
with the host's slot count and its longest measured cold start.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import jwt
import msgspec
import structlog

from matchmaker.models import HeartbeatReply, SlotReport, SlotState

log = structlog.get_logger("gpu_agent.credentials")

# A slot the matchmaker answered busy for is not asked for again before this: its player
# usually connects by then (the slot is then in session), or its session ends (a reset).
KEPT_RETRY_S = 30.0

__all__ = [
    "KEPT_RETRY_S",
    "Credential",
    "CredentialGate",
    "Renewal",
    "RenewalTurns",
    "RenewStep",
    "SlotRenewal",
    "acknowledged",
    "may_launch",
    "read",
    "renewal",
]


@dataclass(frozen=True, slots=True)
class Credential:
    token: str
    jti: str
    expires_at: float  # the credential's ``exp`` (Unix seconds, the matchmaker's clock)


def read(token: str) -> Credential | None:
    """The credential's id and expiry, read, not verified (signalling verifies it);
    None for a token that does not read as a JWT with a numeric ``exp``."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        return Credential(token, str(claims.get("jti", "")), float(claims["exp"]))
    except (jwt.InvalidTokenError, KeyError, TypeError, ValueError):
        return None


class Renewal(enum.StrEnum):
    KEEP = "keep"
    BEFORE_EXPIRY = "before_expiry"  # idle and connected, its credential about to expire
    EXPIRED = "expired"  # idle, not connected, its credential expired: it could never reconnect


def renewal(
    launched: Credential | None,
    newest: Credential | None,
    *,
    now: float,
    margin_s: float,
    idle: bool,
    connected: bool | None,
) -> Renewal:
    """Whether to restart a slot's streamer with ``newest`` now.

    ``launched``: the credential the running streamer got (None: launched without one);
    ``idle``: READY-able and in no session (no player since the last reset, no reset
    pending); ``connected``: signalling lists it (None: signalling could not be asked).
    """
    if launched is None or newest is None or not idle or connected is None:
        return Renewal.KEEP
    if newest.expires_at <= max(launched.expires_at, now):
        return Renewal.KEEP  # nothing better to restart with
    if not connected:
        return Renewal.EXPIRED if launched.expires_at <= now else Renewal.KEEP
    return Renewal.BEFORE_EXPIRY if launched.expires_at - now <= margin_s else Renewal.KEEP


def may_launch(newest: Credential | None, *, now: float, open_signalling: bool | None) -> bool:
    """A streamer starts with an unexpired credential, or with none only where signalling
    said it admits streamers without one (``open_signalling``; None: not known yet)."""
    return (newest is not None and newest.expires_at > now) or open_signalling is True


class RenewStep(enum.StrEnum):
    """Where a slot's renewal before expiry is (slots.py)."""

    DRAINING = "draining"  # reported draining, waiting for the matchmaker's answer
    CLEARED = "cleared"  # acknowledged, not busy: out of placement, restart now
    RESTARTING = "restarting"  # the streamer restarts with the newest credential, until READY


def acknowledged(sent: Iterable[SlotReport], reply: HeartbeatReply) -> dict[int, bool]:
    """The matchmaker's answer to the ``draining`` reports of the heartbeat ``reply``
    answers: slot index -> busy (a session holds it: keep the streamer). Empty when the
    reports were not applied (``snapshot``): the next, full heartbeat carries them again."""
    if reply.snapshot is True:
        return {}
    busy = set() if reply.busy is msgspec.UNSET else set(reply.busy)
    return {r.index: r.index in busy for r in sent if r.state is SlotState.DRAINING}


@dataclass
class RenewalTurns:
    """Which of a host's slots may renew now: at most ``limit`` at once, the oldest launch
    credential first, so a host never has more than ``limit`` READY slots out for renewal.

    A slot ``ask``s while its renewal is due and holds a turn from ``draining`` until its
    streamer is READY again (or the renewal is cancelled, or the slot fails): ``release``.
    """

    limit: int = 1
    slots: int = 1  # the host's slot count
    restart_s: float = 0.0  # the longest cold start measured on this host
    holders: set[int] = field(default_factory=set)
    wanting: dict[int, float] = field(default_factory=dict)  # slot index -> its credential's expiry

    def lead_s(self, margin_s: float) -> float:
        """How long before its credential expires a slot is due: the margin, plus one
        restart for each round of turns the host's slots take (``ceil(slots / limit)``),
        so the last of them still renews ``margin_s`` ahead. Renewal never starts before
        a newer credential exists (about half the lifetime), whatever this says."""
        return margin_s + math.ceil(self.slots / max(self.limit, 1)) * self.restart_s

    def note_cold_start(self, seconds: float) -> None:
        self.restart_s = max(self.restart_s, seconds)

    def ask(self, index: int, expires_at: float) -> bool:
        """A due slot asks for a turn: True when it has one (then it holds it)."""
        if index in self.holders:
            return True
        self.wanting[index] = expires_at
        if len(self.holders) >= self.limit:
            return False
        first = min(self.wanting, key=lambda i: (self.wanting[i], i))
        if first != index:
            return False
        del self.wanting[index]
        self.holders.add(index)
        return True

    def withdraw(self, index: int) -> None:
        """No longer due (in a session, renewed, restarting for another reason)."""
        self.wanting.pop(index, None)

    def release(self, index: int) -> None:
        self.holders.discard(index)
        self.wanting.pop(index, None)


@dataclass
class CredentialGate:
    """What every slot of a host shares about credentials.

    ``matchmaker_tried``: set once the agent has tried to register (or has no
    matchmaker); before that a slot without a credential waits for the registration
    reply's instead of asking signalling. ``open_signalling``: signalling's answer to a
    listing request without credentials (True: 200/404, open mode; False: 401), asked
    once by a slot that has no credential after that try, and kept. ``turns``: the
    host's renewal turns. ``drain_first``: a renewal waits for the matchmaker to
    acknowledge the slot ``draining`` (False only without a matchmaker: nobody to ask,
    and nobody to place sessions).
    """

    matchmaker_tried: asyncio.Event = field(default_factory=asyncio.Event)
    open_signalling: bool | None = None
    turns: RenewalTurns = field(default_factory=RenewalTurns)
    drain_first: bool = True


@dataclass
class SlotRenewal:
    """One slot's renewal before expiry, from its turn to READY again (slots.py acts on it).

    ``due`` each time the slot checks, ``answer`` with the matchmaker's acknowledgement
    (``acknowledged``), ``restarting`` once its streamer is stopped for the renewal,
    ``end`` when it is READY again or no renewal can go on (reset, failure, stop).
    """

    index: int
    gate: CredentialGate
    step: RenewStep | None = None
    kept: int = 0  # renewals the matchmaker answered busy
    kept_until: float = 0.0  # monotonic: no turn asked before (a session held the slot)

    @property
    def reports_draining(self) -> bool:
        return self.step in (RenewStep.DRAINING, RenewStep.CLEARED)

    def due(self, why: Renewal, expires_at: float, now: float) -> tuple[bool, bool]:
        """A READY, connected slot's decision (``why`` from ``renewal``; ``expires_at``: its
        launch credential's; ``now``: monotonic). Returns (restart now, its report changed)."""
        turns = self.gate.turns
        if why is not Renewal.BEFORE_EXPIRY:
            turns.withdraw(self.index)
            if self.reports_draining:  # no longer due (a player came, ...): back into placement
                log.info("slot_credential_renewal_cancelled", slot=self.index)
                self.end()
                return False, True
            return False, False
        changed = False
        if self.step is None and now >= self.kept_until and turns.ask(self.index, expires_at):
            self.step = RenewStep.DRAINING if self.gate.drain_first else RenewStep.CLEARED
            changed = self.step is RenewStep.DRAINING
            if changed:
                log.info("slot_credential_renewal_draining", slot=self.index)
        return self.step is RenewStep.CLEARED, changed

    def answer(self, busy: bool, now: float) -> bool:
        """The matchmaker applied this slot's ``draining`` report. Busy: a session holds it,
        so the streamer stays (the session's end restarts or resets it with the newest
        credential), and the turn goes to the next slot; else the slot is out of placement
        and restarts. True when the slot must look again now."""
        if self.step is not RenewStep.DRAINING:
            return False  # cancelled meanwhile: its next report (ready) puts it back
        if busy:
            self.kept += 1
            self.kept_until = now + KEPT_RETRY_S
            log.info("slot_credential_renewal_kept", slot=self.index)
            self.end()
        else:
            self.step = RenewStep.CLEARED
        return True

    def restarting(self) -> None:
        if self.step is RenewStep.CLEARED:
            self.step = RenewStep.RESTARTING  # keeps its turn until READY again

    def launching(self) -> None:
        """A new process starts: a renewal's restart keeps its turn; for anything else
        (a reset, a retry after a failure) no renewal waits any more."""
        if self.step is not RenewStep.RESTARTING:
            self.end()
        self.kept_until = 0.0
        self.gate.turns.withdraw(self.index)

    def end(self) -> None:
        self.step = None
        self.gate.turns.release(self.index)
