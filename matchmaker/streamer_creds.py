"""Streamer credentials for a host's slots, handed out in registration and heartbeat replies.

Each slot's streamer presents its credential (``pixelfleet.tokens.mint_streamer``: audience
``pixelfleet-streamer``, scoped to the slot's streamer id, host and tenant) on the
signalling streamer and SFU ports. A credential is reused until less than half of its
lifetime is left, then replaced, so an agent that heartbeats every few seconds holds a
valid one at all times and the streamer's next (re)connect uses the newest. The cache is
this replica's; a heartbeat answered by another replica gets that replica's credentials,
which are just as valid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pixelfleet.tokens import TokenKeys, mint_streamer

__all__ = ["SlotIdentity", "StreamerCredentials"]

SlotIdentity = tuple[int, str, str]  # (slot index, tenant, streamer id)
_HOSTS_MAX = 50_000
_SLOTS_FRESH_S = 60.0  # a host's slots learnt from another replica's registration are read again after this


@dataclass
class StreamerCredentials:
    keys: TokenKeys | None
    ttl_s: int
    clock: Callable[[], float] = time.time
    _slots: dict[str, tuple[float, list[SlotIdentity]]] = field(default_factory=dict)  # host -> (at, its slots)
    _minted: dict[tuple[str, int, str], tuple[str, float]] = field(default_factory=dict)  # -> (jwt, exp)

    @property
    def enabled(self) -> bool:
        return self.keys is not None and self.keys.signing_key is not None

    def remember(self, host_id: str, slots: Iterable[SlotIdentity]) -> None:
        if len(self._slots) >= _HOSTS_MAX:
            self._slots.clear()
            self._minted.clear()
        self._slots[host_id] = (self.clock(), list(slots))

    def known(self, host_id: str) -> bool:
        """Whether this replica knows the host's slots, recently enough (a registration
        through another replica may have changed them)."""
        held = self._slots.get(host_id)
        return held is not None and self.clock() - held[0] < _SLOTS_FRESH_S

    def wanted(self, full: bool, held_until: float | None) -> bool:
        """Whether a heartbeat's reply carries the host's credentials: on a full heartbeat,
        for an agent that does not say what it holds, and once its earliest credential has
        less than half its lifetime left (what ``for_host`` hands out has at least that)."""
        return full or held_until is None or held_until - self.clock() < self.ttl_s / 2

    def for_host(self, host_id: str) -> dict[str, str]:
        """The host's current credentials by slot index (renewed past half their life)."""
        if self.keys is None or host_id not in self._slots:
            return {}
        now = self.clock()
        out: dict[str, str] = {}
        for index, tenant, streamer_id in self._slots[host_id][1]:
            key = (host_id, index, streamer_id)
            held = self._minted.get(key)
            if held is None or held[1] - now < self.ttl_s / 2:
                token = mint_streamer(
                    self.keys, tenant=tenant, host_id=host_id, streamer_id=streamer_id, ttl_s=self.ttl_s, now=now
                )
                held = (token, now + self.ttl_s)
                self._minted[key] = held
            out[str(index)] = held[0]
        return out
