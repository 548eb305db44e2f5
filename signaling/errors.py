"""Close codes and the error tree of the signalling server.

::

    SignalingError                      code, reason
    ├─ RemoteProtocolError              the peer broke the protocol
    │   └─ InvalidMessage               bad JSON, not an object, bad fields
    └─ BackendUnavailable               the broker's store is down: try again later

Close codes follow RFC 6455 where one fits, and otherwise centrifuge's split of the
private range: 4000-4499 means the client may reconnect, 4500-4999 that it should not.
"""

from __future__ import annotations

# RFC 6455
NORMAL = 1000
GOING_AWAY = 1001            # Epic's frontend never reconnects after this one: we do not use it
SERVICE_RESTART = 1012       # server shutting down: clients reconnect (elsewhere, or after restart)
POLICY_VIOLATION = 1008      # too many protocol errors
MESSAGE_TOO_BIG = 1009       # frame over the size limit (aiohttp sends it)
INTERNAL_ERROR = 1011        # also what Epic uses for ``disconnectPlayer``
TRY_AGAIN_LATER = 1013       # nothing to serve yet (legacy auto-subscribe with no streamer)

# pixelfleet, may reconnect
KEEPALIVE_TIMEOUT = 4001     # no answer to our ping for a keepalive period
STREAMER_GONE = 4100         # the streamer (or SFU) this player watched disconnected
SLOW_CONSUMER = 4408         # send queue overflowed: the peer does not read fast enough
RATE_LIMITED = 4429          # message flood

# pixelfleet, should not reconnect
CLOSE_REASON_LIMIT = 123  # bytes allowed in a close reason


def clip_reason(reason: str) -> str:
    """Trim a close reason to the 123 bytes a close frame can carry, on a char boundary."""
    raw = reason.encode()
    if len(raw) <= CLOSE_REASON_LIMIT:
        return reason
    return raw[:CLOSE_REASON_LIMIT].decode(errors="ignore")


class SignalingError(Exception):
    code: int = INTERNAL_ERROR

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RemoteProtocolError(SignalingError):
    code = POLICY_VIOLATION


class InvalidMessage(RemoteProtocolError):
    pass


class BackendUnavailable(SignalingError):
    code = TRY_AGAIN_LATER
