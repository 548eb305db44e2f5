"""Close codes of the signalling server, one place for the whole table.

The core never raises for a peer's mistakes: it returns ``Problem`` and ``Close``
actions carrying these codes, and the adapter carries them out. Codes follow RFC 6455
where one fits, and otherwise centrifuge's split of the private range: 4000-4499
means the client may reconnect, 4500-4999 that it should not (none used yet).

1001 (going away) is deliberately not used: Epic's frontend never reconnects after it.
"""

from __future__ import annotations

# RFC 6455
PROTOCOL_ERROR = 1002  # a client frame that breaks RFC 6455 (unmasked)
INVALID_TEXT = 1007  # a text frame that is not UTF-8 (RFC 6455 8.1)
POLICY_VIOLATION = 1008  # too many protocol errors
MESSAGE_TOO_BIG = 1009  # frame over the size limit (aiohttp sends it)
INTERNAL_ERROR = 1011  # also what Epic uses for ``disconnectPlayer``
SERVICE_RESTART = 1012  # server shutting down: clients reconnect (elsewhere, or after restart)
TRY_AGAIN_LATER = 1013  # nothing to serve yet (legacy auto-subscribe with no streamer)

# pixelfleet, may reconnect
KEEPALIVE_TIMEOUT = 4001  # no answer to our ping for a keepalive period
STREAMER_GONE = 4100  # the streamer (or SFU) this player watched disconnected
SLOW_CONSUMER = 4408  # send queue overflowed: the peer does not read fast enough
RATE_LIMITED = 4429  # message flood
# Streamer ids (docs/protocol.md "Streamer credentials"): reconnecting with the same id
# and credential does not help for the first two, but UE reconnects anyway.
INVALID_ID = 4400  # endpointId too long, or with control characters or HTML
ID_NOT_ALLOWED = 4403  # endpointId is not the id the streamer credential names
ID_TAKEN = 4409  # the credential's id is held by another connection (reconnect once it left)

CLOSE_REASON_LIMIT = 123  # bytes a close frame can carry as its reason


def clip_reason(reason: str) -> str:
    """Trim a close reason to what a close frame can carry, on a character boundary."""
    raw = reason.encode()
    if len(raw) <= CLOSE_REASON_LIMIT:
        return reason
    return raw[:CLOSE_REASON_LIMIT].decode(errors="ignore")
