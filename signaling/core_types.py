"""What the signalling core works with: roles, the actions it returns, and each
connection's state (``Peer``). Kept apart from the state machine in ``protocol`` so that
file holds behaviour only; ``protocol`` re-exports these names."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from signaling import messages as m
from signaling import peer_links as links
from signaling.peer_links import Address

Json = dict[str, Any]


class Role(enum.Enum):
    STREAMER = "streamer"
    PLAYER = "player"
    SFU = "sfu"


class Phase(enum.Enum):
    """Where a connection stands. Players are ``READY`` at once; a streamer (or SFU) is
    ``CLAIMING`` until the directory commits its id (at once on one node)."""

    CLAIMING = "claiming"
    READY = "ready"


class Send(NamedTuple):
    to: Address
    message: m.Message | Json
    origin: Address | None = None  # the peer a routed message came from (told if it cannot arrive)


class Close(NamedTuple):
    conn: Address
    code: int
    reason: str


class Problem(NamedTuple):
    """Something the adapter should log (once per connection and kind)."""

    conn: Address
    kind: str
    detail: str


class Relay(NamedTuple):
    """A link message for a peer on another node."""

    link: links.Link


class Claim(NamedTuple):
    """Ask the directory for ``wanted`` (renamed by Epic's rule if taken; ``exact``: refused
    if taken, for a credential's id); the answer comes back as ``claimed``. Only in a cluster."""

    conn: Address
    wanted: str
    exact: bool = False
    holder: links.Holder | None = None  # the connection's credential: listed with the id, atomically


class Announce(NamedTuple):
    streamer_id: str
    conn: Address
    streaming: bool
    holder: links.Holder | None = None


class Withdraw(NamedTuple):
    streamer_id: str
    conn: Address


Action = Send | Close | Problem | Relay | Claim | Announce | Withdraw
PeerOptions = Callable[..., Json]  # (role, peer_id) -> options; also called with not_after=<unix s>


class Subscriber(NamedTuple):
    address: Address
    sfu: bool


@dataclass(slots=True)
class Listing:
    """A streamer in the directory (this node's and, in a cluster, every node's)."""

    address: Address
    streaming: bool
    tenant: str | None = None  # its holder's credential tenant (None: open mode, or listed by an older node)
    credential_id: str | None = None  # its holder's credential jti (the same)

    @property
    def holder(self) -> links.Holder | None:
        if self.credential_id is None or self.tenant is None:
            return None
        return links.Holder(self.credential_id, self.tenant)

    @classmethod
    def of(cls, address: Address, streaming: bool, holder: links.Holder | None) -> Listing:
        if holder is None:
            return cls(address, streaming)
        return cls(address, streaming, holder.tenant, holder.credential_id)


class Credential(NamedTuple):
    """What a streamer's (or SFU's) verified credential allows: exactly one id, one tenant."""

    streamer_id: str
    tenant: str
    credential_id: str  # the credential's jti: /api/streamers reports it, so an agent knows its own streamer
    expires_at: int  # unix seconds: TURN credentials in its config end no later

    @property
    def holder(self) -> links.Holder:
        """What the directory lists with the id this credential holds."""
        return links.Holder(self.credential_id, self.tenant)


STREAMER_ID_MAX = 128


def streamer_id_problem(streamer_id: str) -> str | None:
    """Why an ``endpointId`` is refused in any mode (it ends up in listings, logs and pages)."""
    if len(streamer_id) > STREAMER_ID_MAX:
        return f"streamer id longer than {STREAMER_ID_MAX} characters"
    if any(ord(c) < 32 or ord(c) == 127 or c in "<>\"&`'" for c in streamer_id):
        return "streamer id contains control characters or HTML"
    return None


@dataclass(slots=True, eq=False)
class Peer:
    conn: Address
    role: Role
    phase: Phase = Phase.READY
    player_id: str | None = None  # players, and SFUs in their downstream role
    streamer_id: str | None = None  # streamers and SFUs, once claimed
    streaming: bool = False  # listed in streamerList
    subscribed_to: Address | None = None
    subscribed_name: str | None = None  # the streamer id it subscribed with
    subscribers: dict[str, Subscriber] = field(default_factory=dict)  # player id -> where (ordered)
    allowed_streamer: str | None = None  # session-token scope; None = any
    credential: Credential | None = None  # streamer/SFU credential scope; None = open mode
    errors: int = 0
    # Its role's handled-message counts (``SignalingCore.accepted[role]``, /metrics): reached
    # through the peer, so counting a relayed message hashes no Role (Enum hashes in Python).
    counts: dict[str, int] = field(default_factory=dict)
    # Its role's handlers (``signaling.handlers.HANDLERS[role]``), for the same reason.
    handlers: dict[str, Callable[..., list[Any]]] = field(default_factory=dict)

    @property
    def holder(self) -> links.Holder | None:
        """The credential it claims and lists its id with (None: open mode)."""
        return None if self.credential is None else self.credential.holder
