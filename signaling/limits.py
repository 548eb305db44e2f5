"""Per-connection flood control, as a pure token bucket (the caller passes the clock)."""

from __future__ import annotations


class TokenBucket:
    """``rate`` messages per second on average, bursts up to ``burst``."""

    __slots__ = ("rate", "burst", "_tokens", "last")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self.last = now  # when the sender last sent: the keepalive sweep reads it

    def take(self, now: float) -> bool:
        """Spend one token; False means the sender is over its rate."""
        tokens = self._tokens + (now - self.last) * self.rate
        self.last = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
